"""The official prompt stage (`high_level_info`): what leads the prompt before PASD samples.

test_pasd.py and test_pasd_sdxl.py describe every input first (CoCa caption by default, or its ImageNet class),
then build the prompt from that, the user's prompt and the added prompt; colorization rewrites the result. The
joins are the official ones, odd spacing included (tests/fixtures/pasd_caption_official_tiny/README.md):
- caption: the cleaned caption (open_clip's decode leaves a trailing space), then " " and the user's prompt;
- classification: "category, " (or "prompt, category, ") only when the top class scores at least 0.1: below
  that the user's prompt is dropped too;
- none: "prompt, " (or nothing), which is the engine's behaviour before the prompt stage existed;
then the added prompt is appended with no separator (realisr), or "black and white" becomes "color" and the
negative prompt is fixed (grayscale).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..model_family import SD15, SDXL
from ..params import CAPTION, CLASSIFICATION, GRAYSCALE, ParamError
from ..placement import CAPTIONER as CAPTIONER_PART
from ..placement import CLASSIFIER as CLASSIFIER_PART
from ..placement import AlreadyPlaced, Placement
from .folders import KINDS

if TYPE_CHECKING:
    from PIL import Image

    from .models import Captioner, Classifier

logger = logging.getLogger(__name__)

# official threshold: a class is named only when its softmax score reaches it
CLASS_THRESHOLD = 0.1
# Words test_pasd.py cleans out of a CoCa caption; test_pasd_sdxl.py also turns "painting" into "photo".
CAPTION_REPLACEMENTS = {
    SD15: (("blurry", "clear"), ("noisy", "clean")),
    SDXL: (("blurry", "clear"), ("noisy", "clean"), ("painting", "photo")),
}
# The grayscale branch's fixed negative prompt and its one rewrite of the prompt.
COLORIZE_NEGATIVE_PROMPT = "b&w, color bleeding"
COLORIZE_REWRITE = ("black and white", "color")


@dataclass(frozen=True)
class PromptSettings:
    """What the prompt stage reads of a run's resolved settings."""

    high_level_info: str
    prompt: str
    added_prompt: str
    negative_prompt: str
    family: str  # SD15 or SDXL: the caption's cleaning differs
    control_type: str  # REALISR or GRAYSCALE: colorization rewrites the prompt


@dataclass(frozen=True)
class RunPrompt:
    """The text one image is sampled with, and what the prompt stage contributed to it."""

    prompt: str
    negative_prompt: str
    description: str  # the cleaned caption, the class name, or "" (none, or a class below the threshold)


def clean_caption(caption: str, family: str) -> str:
    for word, replacement in CAPTION_REPLACEMENTS[family]:
        caption = caption.replace(word, replacement)
    return caption


def leading_text(high_level_info: str, prompt: str, description: str = "", score: float | None = None) -> str:
    """get_validation_prompt's result: the description joined with the user's prompt by the official rules."""
    if high_level_info == CAPTION:
        return description if prompt == "" else f"{description} {prompt}"
    if high_level_info == CLASSIFICATION:
        if score is None or score < CLASS_THRESHOLD:
            return ""
        return f"{description}, " if prompt == "" else f"{prompt}, {description}, "
    return "" if prompt == "" else f"{prompt}, "


def run_prompt(settings: PromptSettings, description: str = "", score: float | None = None) -> RunPrompt:
    """The prompt pair of one image from its description (already cleaned) and the run's settings."""
    text = leading_text(settings.high_level_info, settings.prompt, description, score)
    shown = description if settings.high_level_info == CAPTION or text else ""
    if settings.control_type == GRAYSCALE:  # the colorization branch ignores added_prompt and negative_prompt
        return RunPrompt(text.replace(*COLORIZE_REWRITE), COLORIZE_NEGATIVE_PROMPT, shown)
    return RunPrompt(text + settings.added_prompt, settings.negative_prompt, shown)


class PromptStage:
    """The captioner and the classifier of a loaded model, run where their placement puts them for their pass
    (pasd_core/placement.py: on the CPU until a pipeline or a node places them)."""

    def __init__(self, captioner: Captioner | None = None, classifier: Classifier | None = None,
                 placement: Placement | None = None) -> None:
        self.captioner = captioner
        self.classifier = classifier
        self.placement = placement or AlreadyPlaced()

    @classmethod
    def load(cls, caption_model: str | Path | None = None, classifier_model: str | Path | None = None) -> PromptStage:
        """The prompt stage with the models given (each loaded once, on the CPU)."""
        from .models import load_captioner, load_classifier

        return cls(load_captioner(caption_model) if caption_model is not None else None,
                   load_classifier(classifier_model) if classifier_model is not None else None)

    def parts(self) -> dict[str, list[Any]]:
        """The loaded models by placement part (CAPTION's model as "captioner", CLASSIFICATION's as "classifier")."""
        loaded = ((CAPTIONER_PART, self.captioner), (CLASSIFIER_PART, self.classifier))
        return {part: [model.model] for part, model in loaded if model is not None}

    def needs(self, high_level_info: str) -> None:
        """Refuse, before any work, a setting whose model was not loaded."""
        kind = KINDS.get(high_level_info)
        loaded = {CAPTION: self.captioner, CLASSIFICATION: self.classifier}.get(high_level_info)
        if kind is not None and loaded is None:
            default = " (the default, as the official PASD)" if high_level_info == CAPTION else ""
            raise ParamError(
                f"high_level_info={high_level_info!r}{default} needs {kind.what}, and none was loaded: give "
                f"{kind.cli_option} / {kind.node_input} (get it with: {kind.download_command}), or set high_level_info "
                "to 'none' to sample from your prompt alone.")

    def describe(self, image: Image.Image, settings: PromptSettings) -> RunPrompt:
        """The prompt pair for `image` as opened (RGB, before any resize; in grayscale mode its luminance)."""
        return self.describe_batch([image], settings)[0]

    def describe_batch(self, images: Sequence[Image.Image], settings: PromptSettings) -> list[RunPrompt]:
        """The prompt pair of each image, its model placed once for the whole batch."""
        mode = settings.high_level_info
        self.needs(mode)
        if mode == CAPTION:
            captions = self._pass(CAPTIONER_PART, lambda: [self.captioner.caption(image) for image in images])
            results = [run_prompt(settings, clean_caption(caption, settings.family)) for caption in captions]
        elif mode == CLASSIFICATION:
            classes = self._pass(CLASSIFIER_PART, lambda: [self.classifier.classify(image) for image in images])
            for category, score in classes:
                logger.info("PASD: classified as %r (score %.3f; named from %.1f)", category, score, CLASS_THRESHOLD)
            results = [run_prompt(settings, category, score) for category, score in classes]
        else:
            results = [run_prompt(settings) for _ in images]
        for result in results:
            logger.info("PASD: prompt %r", result.prompt)
        return results

    def _pass(self, part: str, work: Callable[[], Any]) -> Any:
        """`work()` with `part` made ready where it runs, then handed back."""
        self.placement.load(part)
        try:
            return work()
        finally:
            self.placement.done(part)
