"""The prompt stage's model folders (models/pasd_prompt): what marks them, the checks before a run, and the files
the download writes beside the published weights.

A CoCa captioner folder holds open_clip's `open_clip_config.json` (`model_cfg` + `preprocess_cfg`, the format
open_clip's hub models use) and its weights; a classifier folder holds a torchvision ResNet-50 `model.safetensors`
and `categories.txt`, one class name per line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelNotFoundError

if TYPE_CHECKING:
    from ..engine.prompt_stage import PromptStage

CAPTIONER_CONFIG = "open_clip_config.json"
CATEGORIES_FILE = "categories.txt"
CLASSIFIER_WEIGHTS = "model.safetensors"
CAPTIONER_MARKERS = (CAPTIONER_CONFIG,)
CLASSIFIER_MARKERS = (CLASSIFIER_WEIGHTS, CATEGORIES_FILE)
# The official captioner's name in open_clip, and its pretrained tag's preprocessing (open_clip's pretrained.py:
# OpenAI mean/std, bicubic, shortest-side resize, 224 px).
OFFICIAL_CAPTIONER = "coca_ViT-L-14"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def is_captioner_folder(folder: str | Path) -> bool:
    return all((Path(folder) / name).is_file() for name in CAPTIONER_MARKERS)


def is_classifier_folder(folder: str | Path) -> bool:
    return all((Path(folder) / name).is_file() for name in CLASSIFIER_MARKERS)


def check_prompt_model(folder: str | Path, high_level_info: str, *, given: bool = True) -> None:
    """Refuse, before anything loads, a run whose high_level_info needs a model folder that is not there."""
    from .download import CAPTIONER, CLASSIFIER

    caption = high_level_info == "caption"
    if (is_captioner_folder if caption else is_classifier_folder)(folder):
        return
    source, flag, option = ((CAPTIONER, "--captioner", "--caption-model") if caption else
                            (CLASSIFIER, "--classifier", "--classifier-model"))
    markers = CAPTIONER_MARKERS if caption else CLASSIFIER_MARKERS
    where = f"{folder}" + ("" if given else f" (the default {option})")
    state = "does not exist" if not Path(folder).exists() else f"lacks {' and '.join(markers)}"
    raise ModelNotFoundError(
        f"high_level_info={high_level_info!r} needs {source.what}, and {where} {state}. Get it from "
        f"https://huggingface.co/{source.repo_id} with: python -m pasd_core download {flag} --models-dir models "
        f"(it writes <models>/pasd_prompt/...), then pass {option} <folder>; or set --high-level-info none to "
        "sample from your prompt alone.")


def load_prompt_stage(caption_model: str | Path | None, classifier_model: str | Path | None,
                      make_room: Callable[[int, str], None] | None = None) -> PromptStage:
    """The prompt stage with the models given (each loaded once, on the CPU)."""
    from ..engine.prompt_stage import PromptStage

    captioner = classifier = None
    if caption_model is not None:
        from .captioners import load_captioner

        captioner = load_captioner(caption_model)
    if classifier_model is not None:
        from .captioners import load_classifier

        classifier = load_classifier(classifier_model)
    return PromptStage(captioner, classifier, make_room)


def write_captioner_config(folder: Path) -> None:
    """open_clip's own config of coca_ViT-L-14 and its pretrained preprocessing, beside the downloaded weights (the
    hub repository holds the weights only)."""
    import open_clip

    config = {"model_cfg": open_clip.get_model_config(OFFICIAL_CAPTIONER),
              "preprocess_cfg": {"size": 224, "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
                                 "interpolation": "bicubic", "resize_mode": "shortest"}}
    (folder / CAPTIONER_CONFIG).write_text(json.dumps(config, indent=2))


def write_imagenet_categories(folder: Path) -> None:
    """torchvision's ImageNet category names, which the official classification names the top class with."""
    from torchvision.models import ResNet50_Weights

    (folder / CATEGORIES_FILE).write_text("\n".join(ResNet50_Weights.DEFAULT.meta["categories"]) + "\n")
