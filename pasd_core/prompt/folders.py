"""The prompt stage's model folders (models/pasd_prompt): what marks them, where they come from, the checks before a
run, and their download, which writes beside the published weights the files open_clip and the classifier need.

A CoCa captioner folder holds open_clip's `open_clip_config.json` (`model_cfg` + `preprocess_cfg`, the format
open_clip's hub models use) and its weights; a classifier folder holds a torchvision ResNet-50 `model.safetensors`
and `categories.txt`, one class name per line. Nothing here imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFoundError
from ..params import CAPTION, CLASSIFICATION
from ..weights.download import HubFiles, ensure_files
from ..weights.hub_fetch import HubFetcher

PROMPT_FOLDER = "pasd_prompt"  # under the models folder (ComfyUI's models/pasd_prompt)
CAPTIONER_CONFIG = "open_clip_config.json"
# open_clip's own file names for a model's weights, safetensors first; the published CoCa has the .bin only.
CAPTIONER_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                     "open_clip_pytorch_model.bin")
CLASSIFIER_WEIGHTS = "model.safetensors"
CATEGORIES_FILE = "categories.txt"


def write_captioner_config(folder: Path) -> None:
    """open_clip's own config of coca_ViT-L-14 and its pretrained preprocessing, beside the downloaded weights (the
    hub repository holds the weights only)."""
    from .open_clip_coca import official_config

    (folder / CAPTIONER_CONFIG).write_text(json.dumps(official_config(), indent=2))


def write_imagenet_categories(folder: Path) -> None:
    """torchvision's ImageNet category names, which the official classification names the top class with."""
    from torchvision.models import ResNet50_Weights

    (folder / CATEGORIES_FILE).write_text("\n".join(ResNet50_Weights.DEFAULT.meta["categories"]) + "\n")


@dataclass(frozen=True)
class PromptModelKind:
    """One of the prompt stage's two models: the high_level_info mode it serves, its hub source, its folder's marker
    files, the file its download adds, and the names the CLI and the nodes give it."""

    name: str  # "captioner", "classifier"
    what: str  # "the CoCa captioner", for messages
    mode: str  # the high_level_info value that needs it
    source: HubFiles
    folder_name: str  # where the download puts it, under models/pasd_prompt
    markers: tuple[str, ...]  # the files that mark its folder (dropdowns list folders by these alone)
    added_file: str  # what the download writes beside the published weights, with `write_added`
    write_added: Callable[[Path], None]
    download_flag: str  # python -m pasd_core download ...
    cli_option: str  # python -m pasd_core upscale ...
    node_input: str  # PASD Model Loader / PASD Prompt

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.source.repo_id}"

    @property
    def download_command(self) -> str:
        return f"python -m pasd_core download {self.download_flag}"

    @property
    def fix(self) -> str:
        """What to do about a broken folder of this kind, as a sentence."""
        return (f"get the official {self.name} with: {self.download_command} (its weights are "
                f"{self.source.files[0]} from {self.url}; the download writes {self.added_file} beside them).")

    def is_folder(self, folder: str | Path) -> bool:
        return all((Path(folder) / name).is_file() for name in self.markers)

    def default_folder(self, models_dir: str | Path) -> Path:
        return Path(models_dir) / PROMPT_FOLDER / self.folder_name

    def ensure(self, models_dir: str | Path, fetcher: HubFetcher | None = None) -> Path:
        """Its folder under `models_dir`, downloaded if absent, with the file the hub repository lacks."""
        return self.ensure_in(Path(models_dir) / PROMPT_FOLDER, fetcher)

    def ensure_in(self, prompt_folder: str | Path, fetcher: HubFetcher | None = None) -> Path:
        """Its folder inside `prompt_folder` (a models/pasd_prompt), downloaded if absent, completed."""
        folder = ensure_files(self.source, Path(prompt_folder) / self.folder_name, fetcher=fetcher)
        if not (folder / self.added_file).is_file():
            self.write_added(folder)
        return folder


# open_clip's coca_ViT-L-14 / mscoco_finetuned_laion2B-s13B-b90k, the captioner test_pasd*.py load by name; the repo
# holds the weights only, so the download writes open_clip's own config for that model beside them.
CAPTIONER = PromptModelKind(
    "captioner", "the CoCa captioner", CAPTION,
    HubFiles("laion/mscoco_finetuned_CoCa-ViT-L-14-laion2B-s13B-b90k", "", ("open_clip_pytorch_model.bin",),
             "the CoCa captioner (coca_ViT-L-14, mscoco_finetuned_laion2B-s13B-b90k)"),
    "coca_ViT-L-14", (CAPTIONER_CONFIG,), CAPTIONER_CONFIG, write_captioner_config,
    "--captioner", "--caption-model", "caption_model")
# torchvision's ResNet-50 IMAGENET1K_V2 weights (ResNet50_Weights.DEFAULT, what the official classification uses), as
# timm republishes them in safetensors with torchvision's key names; the categories come from torchvision itself.
CLASSIFIER = PromptModelKind(
    "classifier", "the ResNet-50 classifier", CLASSIFICATION,
    HubFiles("timm/resnet50.tv2_in1k", "", (CLASSIFIER_WEIGHTS,),
             "the ResNet-50 classifier (torchvision IMAGENET1K_V2)"),
    "resnet50", (CLASSIFIER_WEIGHTS, CATEGORIES_FILE), CATEGORIES_FILE, write_imagenet_categories,
    "--classifier", "--classifier-model", "classifier_model")
KINDS = {kind.mode: kind for kind in (CAPTIONER, CLASSIFIER)}  # high_level_info -> the model it needs


def check_prompt_model(folder: str | Path, high_level_info: str, *, given: bool = True) -> None:
    """Refuse, before anything loads, a run whose high_level_info needs a model folder that is not there."""
    kind = KINDS[high_level_info]
    if kind.is_folder(folder):
        return
    where = f"{folder}" + ("" if given else f" (the default {kind.cli_option})")
    state = "does not exist" if not Path(folder).exists() else f"lacks {' and '.join(kind.markers)}"
    raise ModelNotFoundError(
        f"high_level_info={high_level_info!r} needs {kind.source.what}, and {where} {state}. Get it from {kind.url} "
        f"with: {kind.download_command} --models-dir models (it writes <models>/{PROMPT_FOLDER}/...), then pass "
        f"{kind.cli_option} <folder>; or set --high-level-info none to sample from your prompt alone.")
