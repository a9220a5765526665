"""The model dropdowns of the PASD nodes, and what to tell a user whose choice is not on disk.

A fresh ComfyUI has no PASD weights. The lists offer the official models whether on disk or not (the loaders fetch
those on first use, model_downloads); any other name that is not on disk is answered, before anything runs, with the
folder to put it in (its real path), where to get it and the download command, instead of ComfyUI's "Value not in
list". Only names the lists hold pass, so model_path's confinement of names to the models folders stays the only way
to a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..pasd_core.errors import ModelNotFoundError
from ..pasd_core.prompt.folders import CAPTIONER, CLASSIFIER, PROMPT_FOLDER
from . import host
from .inputs import Input, combo
from .model_downloads import (
    AUTO_DOWNLOAD,
    AUTO_DOWNLOAD_TOOLTIP,
    OfficialModel,
    download_command,
    fetch_missing,
    official_choices,
    official_model,
)

NONE = "none"
# The same test as pasd_core.weights.pasd_folder.is_pasd_checkpoint, without importing torch to fill a dropdown.
PASD_CHECKPOINT_MARKERS = ("unet/config.json", "controlnet/config.json")
VAE_FOLDER_MARKERS = ("config.json",)  # a diffusers VAE folder (the download's fp16-fix VAE)
HUB = {"sd15": "https://huggingface.co/yangtao9009/PASD", "sdxl": "https://huggingface.co/yangtao9009/PASD-SDXL"}
BASE_HUB = {"sd15": "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5",
            "sdxl": "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0"}
TOONYOU = "https://civitai.com/models/30240/toonyou"  # the personalized model of the paper's stylization recipe


def pasd_models_on_disk() -> list[str]:
    return host.model_dirs(host.PASD_FOLDER, PASD_CHECKPOINT_MARKERS)


def bases_on_disk() -> list[str]:
    """SD1.5 and SDXL bases: diffusers folders from models/diffusers, single files from models/checkpoints."""
    folders = [f"diffusers/{name}" for name in host.model_dirs("diffusers", ("model_index.json",))]
    return folders + [f"checkpoints/{name}" for name in host.model_files("checkpoints")]


def vaes_on_disk() -> list[str]:
    """Diffusers VAE folders and single VAE files of models/vae (a folder's own weights not twice)."""
    folders = host.model_dirs("vae", VAE_FOLDER_MARKERS)
    return [*folders, *(f for f in host.model_files("vae") if not any(f.startswith(d + "/") for d in folders))]


def refiners_on_disk() -> list[str]:
    """diffusers/<folder> of models/diffusers whose model_index.json asks for aesthetic scores: SDXL refiners."""
    found = []
    for name in host.model_dirs("diffusers", ("model_index.json",)):
        try:
            index = json.loads(Path(host.model_path("diffusers", name, folder=True), "model_index.json").read_text())
        except (OSError, ValueError, ModelNotFoundError):
            continue
        if isinstance(index, dict) and index.get("requires_aesthetics_score") is True:
            found.append(f"diffusers/{name}")
    return found


def captioners_on_disk() -> list[str]:
    return host.model_dirs(PROMPT_FOLDER, CAPTIONER.markers)


def classifiers_on_disk() -> list[str]:
    return host.model_dirs(PROMPT_FOLDER, CLASSIFIER.markers)


ON_DISK = {"pasd_model": pasd_models_on_disk, "base_model": bases_on_disk, "vae": vaes_on_disk,
           "refiner": refiners_on_disk, "lcm_lora": lambda: host.model_files("loras"),
           CAPTIONER.node_input: captioners_on_disk, CLASSIFIER.node_input: classifiers_on_disk}


def _offered(input_name: str) -> list[str]:
    """What is on disk, then the official models that are not (yet)."""
    present = ON_DISK[input_name]()
    return [*present, *(name for name in official_choices(input_name) if name not in present)]


def pasd_model_choices() -> list[str]:
    return _offered("pasd_model")


def base_model_choices() -> list[str]:
    return _offered("base_model")


def vae_choices() -> list[str]:
    """none, the VAEs on disk, then the official fp16-fix SDXL VAE."""
    return [NONE, *_offered("vae")]


def lcm_lora_choices() -> list[str]:
    return [NONE, *_offered("lcm_lora")]


def refiner_choices() -> list[str]:
    """none, the SDXL refiners of models/diffusers, then the official one before it is fetched."""
    return [NONE, *_offered("refiner")]


def captioner_choices() -> list[str]:
    """The captioners of models/pasd_prompt (the official one even before it is fetched: the official scripts caption
    by default, so a new node's default is it), then none."""
    return [*_offered(CAPTIONER.node_input), NONE]


def classifier_choices() -> list[str]:
    return [NONE, *_offered(CLASSIFIER.node_input)]


def official_missing(chosen: Mapping[str, str]) -> list[OfficialModel]:
    """The official models among `chosen` ({input name: choice}) that are not on disk."""
    missing = []
    for input_name, choice in chosen.items():
        model = official_model(input_name, choice)
        if model is not None and not model.on_disk():
            missing.append(model)
    return missing


def fetch_if_missing(chosen: Mapping[str, str], auto_download: bool) -> None:
    """Before a loader resolves its paths: the official models among `chosen` not on disk yet, fetched when the
    switch is on (when it is off, VALIDATE_INPUTS refused them, and model_path names what is missing)."""
    fetchable = official_missing(chosen)
    if fetchable and auto_download:
        with host.cancellable() as should_stop:
            fetch_missing(fetchable, should_stop)


def on_disk_or_fetchable(input_name: str, choice: str, fetchable: Iterable[OfficialModel]) -> bool:
    """Whether `choice` can be used: on disk, or an official model this run fetches (a part of one is not enough)."""
    if any(m.choice == choice for m in fetchable if m.input_name == input_name):
        return True
    return choice in ON_DISK[input_name]()


def prompt_model_path(choice: str, input_name: str) -> str | None:
    """The folder of a caption_model / classifier_model choice, or None for none."""
    return None if choice == NONE else host.model_path(PROMPT_FOLDER, choice, folder=True, input_name=input_name)


def optional_choices(kind: str) -> list[str]:
    """none, then the model files of models/`kind` (checkpoints for style models, loras)."""
    return [NONE, *host.model_files(kind)]


# --- first-run help ------------------------------------------------------------------------------

def family_hint(name: str) -> str:
    """sdxl when the model's name says so, else sd15 (the download's default); only for choosing what to suggest."""
    return "sdxl" if "xl" in name.lower() else "sd15"


def _where(kind: str) -> str:
    """The folders of `kind` as a user finds them: the models folder's name and every real path searched."""
    return f"models/{kind} ({', '.join(os.path.realpath(f) for f in host.model_folders(kind))})"


def missing_pasd_model(name: str) -> str:
    from ..pasd_core.weights.download import PASD_VARIANTS

    family = family_hint(name)
    variant = name.split("/")[0] if isinstance(name, str) and name.split("/")[0] in PASD_VARIANTS else None
    what = "PASD-SDXL" if family == "sdxl" else "PASD-SD1.5"
    found = "it holds none" if not pasd_model_choices() else "pick one from the list"
    return (f"pasd_model {name!r} is not in {_where(host.PASD_FOLDER)}, where PASD checkpoint folders (each with "
            f"unet/ and controlnet/) go; {found}. Get {what} from {HUB[family]} into that folder (keeping "
            f"{variant or 'pasd'}/checkpoint-<step>/), or run: {download_command(family, variant)}. "
            "Then press R in ComfyUI to refresh the lists.")


def missing_base_model(name: str, pasd_model_missing: bool = False) -> str:
    family = family_hint(name)
    label = "SDXL" if family == "sdxl" else "SD1.5"
    download = ("the download command above fetches it with the PASD weights" if pasd_model_missing else
                f"the download fetches it: {download_command(family)}; then press R in ComfyUI to refresh the lists")
    return (f"base_model {name!r} is not in {_where('diffusers')} nor {_where('checkpoints')}. The PASD checkpoint "
            f"needs a {label} base: a diffusers folder from {BASE_HUB[family]} in models/diffusers, or any {label} "
            f"checkpoint .safetensors in models/checkpoints; {download}.")


def missing_file(input_name: str, kind: str, name: str) -> str:
    source = f" (ToonYou: {TOONYOU})" if "toonyou" in str(name).lower() else ""
    if kind == "vae":
        source = (" (the fp16-fix SDXL VAE: add --fp16-fix-vae to the download command "
                  f"{download_command('sdxl')})")
    return (f"{input_name} {name!r} is not in {_where(kind)}: put that file there{source} and press R in ComfyUI "
            f"to refresh the lists, or pick {NONE} to run without it.")


def missing_refiner(name: str) -> str:
    return (f"refiner {name!r} is not in {_where('diffusers')}: the SDXL refiner goes there as a diffusers folder "
            f"(stable-diffusion-xl-refiner-1.0 from https://huggingface.co/stabilityai/stable-diffusion-xl-refiner-1.0"
            f"), or run: {download_command('sdxl', extra='--refiner')}; then press R in ComfyUI. Or pick {NONE}.")


def missing_prompt_model(input_name: str, name: str) -> str:
    """caption_model / classifier_model `name` is not on disk: its folder, its link and the download command."""
    kind = CAPTIONER if input_name == CAPTIONER.node_input else CLASSIFIER
    return (f"{input_name} {name!r} is not in {_where(PROMPT_FOLDER)}, where {kind.source.what} goes as a folder "
            f"({kind.folder_name}/ with {' and '.join(kind.markers)}). Get it from {kind.url}, or run: "
            f"{download_command('sd15', extra=kind.download_flag)} (it also checks the PASD-SD1.5 weights); then "
            f"press R in ComfyUI. Or pick {NONE} here and set high_level_info to something else than {kind.mode}.")


def prompt_model_inputs(optional: bool = True) -> list[Input]:
    """The prompt stage's model dropdowns (models/pasd_prompt), shared by the loader and PASD Prompt."""
    return [
        combo(CAPTIONER.node_input, captioner_choices(),
              "CoCa captioner folder from models/pasd_prompt, for high_level_info caption (the official default: the "
              f"caption leads the prompt). None yet? {CAPTIONER.download_command} --models-dir <ComfyUI>/models, "
              "then press R; none loads no captioner.", optional=optional),
        combo(CLASSIFIER.node_input, classifier_choices(),
              "ResNet-50 classifier folder from models/pasd_prompt, for high_level_info classification "
              f"({CLASSIFIER.download_command}); none loads no classifier.", optional=optional),
    ]


def missing_prompt_models(caption_model: str, classifier_model: str,
                          fetchable: Iterable[OfficialModel] = ()) -> list[str | None]:
    """Why each prompt-model choice cannot be used (neither on disk nor fetched on first use), or None."""
    return [None if choice == NONE or on_disk_or_fetchable(name, choice, fetchable) else
            missing_prompt_model(name, choice)
            for name, choice in ((CAPTIONER.node_input, caption_model), (CLASSIFIER.node_input, classifier_model))]


def auto_download_input() -> Input:
    """The loaders' switch; optional and last, so workflows saved before it keep their widget positions."""
    return Input(AUTO_DOWNLOAD, "BOOLEAN", {"default": True, "tooltip": AUTO_DOWNLOAD_TOOLTIP}, optional=True)


class ModelsMissing(ModelNotFoundError):
    """Models a queued node names are not on disk; one sentence per missing model."""


def refuse(problems: Iterable[str | None]) -> bool:
    """True when no problem was found, else ModelsMissing with each problem once.

    Raised rather than returned: ComfyUI (0.3.64 and 0.38 alike, execution.py validate_inputs) repeats a string
    VALIDATE_INPUTS returns once per argument it takes ("<input> - <message>" for every one), but reports an exception
    raised there once ("Exception when validating (inner) node: <message>"). A VALIDATE_INPUTS of one argument
    returns its string as usual.
    """
    found = [p for p in problems if p]
    if found:
        raise ModelsMissing(" ".join(found))
    return True


