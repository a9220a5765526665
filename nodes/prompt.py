"""PASD Prompt: the official prompt stage alone, so a graph of core nodes encodes what the exact engine encodes."""

from __future__ import annotations

from typing import Any

from ..pasd_core import params as table
from ..pasd_core.model_family import LABELS, SD15, SDXL
from ..pasd_core.prompt.folders import CAPTIONER, CLASSIFIER, KINDS
from ..pasd_core.prompt.stage import PromptSettings
from . import host, images
from . import model_choices as choices
from .inputs import DeclaredNode, Input, combo, declare, socket
from .model_choices import NONE, missing_prompt_models, prompt_model_inputs
from .model_downloads import download_problem

PROMPT_PARAMS = ("prompt", "high_level_info", "added_prompt")
# The prompt stage PASD Prompt last ran with, by its models' folders: it keeps those models (shared with the loaders,
# loaded to the device by ComfyUI's model manager) alive between runs, since a V3 node keeps no instance state.
_STAGES: dict[tuple, Any] = {}


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
            choices.auto_download_input(),
        )

    @classmethod
    def VALIDATE_INPUTS(cls, high_level_info: str, caption_model: str, classifier_model: str,  # noqa: N802
                        family: str = SD15, auto_download: bool = True) -> bool:
        """Before the run: the official model high_level_info needs passes when it is on disk or this run can fetch
        it (else the short refusal); any other missing captioner or classifier is named with its folder, link and
        download command; a high_level_info whose model is set to none is refused; each once (choices.refuse)."""
        official = choices.official_missing({CAPTIONER.node_input: caption_model,
                                             CLASSIFIER.node_input: classifier_model})
        needed = _needed(high_level_info, caption_model, classifier_model)
        problems = [*missing_prompt_models(caption_model, classifier_model, official),  # official names are valid
                    download_problem([m for m in official if m.input_name in needed], auto_download,
                                     family if family in (SD15, SDXL) else SD15)]
        if family not in (SD15, SDXL):  # ComfyUI skips its list check for an input named here
            problems.append(f"family={family!r} is not allowed: use {SD15!r} or {SDXL!r}.")
        try:
            table.BY_NAME["high_level_info"].check(high_level_info)  # ComfyUI skips its list check for this input
        except table.ParamError as error:
            problems.append(str(error))
        else:
            kind = KINDS.get(high_level_info)
            chosen = {CAPTIONER.node_input: caption_model, CLASSIFIER.node_input: classifier_model}
            if kind is not None and chosen[kind.node_input] == NONE and not any(problems):
                problems.append(f"high_level_info={high_level_info!r} needs {kind.node_input}, which is {NONE}: pick "
                                "one from the list, or set high_level_info to 'none' to keep your prompt only.")
        return choices.refuse(problems)

    def build(self, image: Any, family: str, caption_model: str, classifier_model: str, auto_download: bool = True,
              **params: Any) -> tuple[str, str]:
        if family not in (SD15, SDXL):
            raise table.ParamError(f"family={family!r} is not allowed: use {SD15!r} or {SDXL!r}.")
        text = table.validate(params, [table.BY_NAME[name] for name in PROMPT_PARAMS])
        choices.fetch_if_missing(_needed(text["high_level_info"], caption_model, classifier_model), auto_download)
        settings = table.for_family({**text, "negative_prompt": table.BY_NAME["negative_prompt"].default}, family)
        request = PromptSettings(settings["high_level_info"], settings["prompt"], settings["added_prompt"],
                                 settings["negative_prompt"], family, table.REALISR)
        stage = self._stage(request.high_level_info, caption_model, classifier_model)
        prompts = stage.describe_batch(images.to_pil(images.checked(image)), request)
        return prompts[0].prompt, "\n".join(p.description for p in prompts)

    def _stage(self, high_level_info: str, caption_model: str, classifier_model: str) -> Any:
        """The prompt stage with the one model `high_level_info` needs (loaded once per file and shared with every
        node that uses it), placed where this node runs; held between runs (_STAGES)."""
        kind = KINDS.get(high_level_info)
        chosen = {CAPTIONER: caption_model, CLASSIFIER: classifier_model}
        folders = tuple(choices.prompt_model_path(chosen[each], each.node_input)
                        if each is kind and chosen[each] != NONE else None for each in (CAPTIONER, CLASSIFIER))
        import torch

        from .host_models import placement, shared_prompt_stage

        _STAGES.clear()  # one at a time, as a classic node held its last one: an unused model is let go
        _STAGES[folders] = stage = shared_prompt_stage(*folders)
        stage.placement = placement()(stage.parts(), torch.device(host.torch_device()))
        return stage


def _needed(high_level_info: str, caption_model: str, classifier_model: str) -> dict[str, str]:
    """The prompt model `high_level_info` uses, by input name: only it is fetched on first use."""
    kind = KINDS.get(high_level_info)
    chosen = {CAPTIONER.node_input: caption_model, CLASSIFIER.node_input: classifier_model}
    return {} if kind is None else {kind.node_input: chosen[kind.node_input]}
