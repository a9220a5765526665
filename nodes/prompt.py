"""PASD Prompt: the official prompt stage alone, so a graph of core nodes encodes what the exact engine encodes."""

from __future__ import annotations

from typing import Any

from ..pasd_core import params as table
from ..pasd_core.model_family import LABELS, SD15, SDXL
from . import host, images
from . import model_choices as choices
from .inputs import DeclaredNode, Input, combo, declare, socket
from .local import missing_prompt_models, prompt_model_inputs
from .model_choices import NONE

PROMPT_PARAMS = ("prompt", "high_level_info", "added_prompt")
KINDS = {"caption": "caption_model", "classification": "classifier_model"}  # high_level_info -> the model it needs


class PASDPrompt(DeclaredNode):
    """Build the prompt the official PASD samples with: the image's CoCa caption (or ImageNet class), then your
    prompt, then the added prompt, joined as test_pasd.py / test_pasd_sdxl.py do. Feed `prompt` to CLIP Text Encode
    (convert its text widget to an input) so a native PASD graph encodes what the exact engine encodes. For a batch,
    `prompt` is the first image's (one conditioning serves the batch); `caption` has one line per image."""

    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("prompt", "caption")
    OUTPUT_TOOLTIPS = ("The positive prompt of the first image, exactly as the exact engine builds it.",
                       "The cleaned caption or class name of each image, one line per image (empty for none).")
    FUNCTION = "build"
    SEARCH_ALIASES = (*DeclaredNode.SEARCH_ALIASES, "caption", "coca", "prompt", "interrogate")

    def __init__(self) -> None:
        self._models: dict[str, tuple[str, Any]] = {}  # input name -> (folder, loaded model), kept between runs

    @classmethod
    def inputs(cls) -> list[Input]:
        return declare(
            socket("image", "IMAGE", "The image(s) to describe, as PASD gets them (the low-resolution input)."),
            table.BY_NAME["prompt"],
            combo("family", (SD15, SDXL), "The PASD model family the prompt is for: its added prompt and its caption "
                  f"cleaning differ ({LABELS[SDXL]} also turns 'painting' into 'photo')."),
            table.BY_NAME["high_level_info"],
            table.BY_NAME["added_prompt"],
            *prompt_model_inputs(optional=False),
        )

    @classmethod
    def VALIDATE_INPUTS(cls, high_level_info: str, caption_model: str, classifier_model: str) -> bool:  # noqa: N802
        """Before the run: a missing captioner or classifier named with its folder, link and download command, and
        a high_level_info whose model is set to none; each once (choices.refuse)."""
        problems = missing_prompt_models(caption_model, classifier_model)
        try:
            table.BY_NAME["high_level_info"].check(high_level_info)  # ComfyUI skips its list check for this input
        except table.ParamError as error:
            problems.append(str(error))
        else:
            needed = KINDS.get(high_level_info)
            chosen = {"caption_model": caption_model, "classifier_model": classifier_model}.get(needed)
            if needed and chosen == NONE and not any(problems):
                problems.append(f"high_level_info={high_level_info!r} needs {needed}, which is {NONE}: pick "
                                "one from the list, or set high_level_info to 'none' to keep your prompt only.")
        return choices.refuse(problems)

    def build(self, image: Any, family: str, caption_model: str, classifier_model: str,
              **params: Any) -> tuple[str, str]:
        if family not in (SD15, SDXL):
            raise table.ParamError(f"family={family!r} is not allowed: use {SD15!r} or {SDXL!r}.")
        text = table.validate(params, [table.BY_NAME[name] for name in PROMPT_PARAMS])
        settings = table.for_family({**text, "negative_prompt": table.BY_NAME["negative_prompt"].default}, family)
        stage = self._stage(settings["high_level_info"], {"caption_model": caption_model,
                                                          "classifier_model": classifier_model})
        import torch

        from ..pasd_core.engine.prompt_stage import REALISR

        device = torch.device(host.torch_device())
        prompts = [stage.describe(picture, settings, family, REALISR, device)
                   for picture in images.to_pil(images.checked(image))]
        return prompts[0].prompt, "\n".join(p.description for p in prompts)

    def _stage(self, high_level_info: str, chosen: dict[str, str]) -> Any:
        """The prompt stage with the one model `high_level_info` needs, loaded once per folder on this node."""
        from ..pasd_core.engine.prompt_stage import PromptStage

        needed = KINDS.get(high_level_info)
        if needed is not None and chosen[needed] != NONE:
            folder = choices.prompt_model_path(chosen[needed], needed)
            if self._models.get(needed, (None,))[0] != folder:
                from ..pasd_core.weights.captioners import load_captioner, load_classifier

                load = load_captioner if needed == "caption_model" else load_classifier
                self._models[needed] = (folder, load(folder))
        loaded = {name: self._models[name][1] for name in self._models if name == needed}
        return PromptStage(loaded.get("caption_model"), loaded.get("classifier_model"), host.free_memory)

