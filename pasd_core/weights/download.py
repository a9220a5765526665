"""Optional download of the PASD checkpoints and the SD1.5 base, for users with internet access.

Files land in the models folder in the official on-disk layout (`<models>/pasd/checkpoint-100000/
{unet,controlnet}/…`), so a manual download put in the same place works the same. When the
download cannot happen (offline, no huggingface_hub, a network error), the ModelError says which
files to fetch from where and where to put them.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ModelError

PASD_REPO = "yangtao9009/PASD"
# runwayml/stable-diffusion-v1-5 was taken down in 2024; this is the maintained copy of the same files
SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_FOLDER = "stable-diffusion-v1-5"

# Folder of each variant in the Hugging Face repo. pasd and pasd_light are the checkpoints the
# official scripts name; for the others the step is not documented (the official zips used
# checkpoint-100000 for the rrdb ones, checkpoint-180000 for colorization), so any checkpoint-* is taken.
PASD_VARIANTS = {
    "pasd": "pasd/checkpoint-100000",
    "pasd_light": "pasd_light/checkpoint-120000",
    "pasd_rrdb": "pasd_rrdb/checkpoint-*",
    "pasd_light_rrdb": "pasd_light_rrdb/checkpoint-*",
    "pasd_light_color": "pasd_light_color/checkpoint-*",
}
PASD_FILES = ("unet/config.json", "unet/diffusion_pytorch_model.safetensors",
              "controlnet/config.json", "controlnet/diffusion_pytorch_model.safetensors")
SD15_FILES = ("text_encoder/config.json", "text_encoder/model.safetensors",
              "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
              "tokenizer/vocab.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
              "scheduler/scheduler_config.json")


def _complete(folder: Path, files: tuple[str, ...]) -> bool:
    return all((folder / name).is_file() for name in files)


def _local_pasd_checkpoint(models_dir: Path, subfolder: str) -> Path | None:
    """The complete checkpoint folder matching `subfolder` (a glob); of several, the highest step."""
    def step(folder: Path) -> int:
        found = re.search(r"(\d+)$", folder.name)
        return int(found[1]) if found else -1

    candidates = [f for f in models_dir.glob(subfolder) if f.is_dir() and _complete(f, PASD_FILES)]
    return max(candidates, key=step) if candidates else None


def _snapshot(repo_id: str, patterns: list[str], models_dir: Path, what: str, instructions: str) -> None:
    """snapshot_download into `models_dir`; any failure becomes a ModelError carrying `instructions`."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelError(f"cannot download {what}: the huggingface_hub package is not installed "
                         f"(pip install huggingface_hub). {instructions}") from None
    try:
        snapshot_download(repo_id, allow_patterns=patterns, local_dir=str(models_dir))
    except Exception as error:  # offline mode, DNS, HTTP, disk: all end the same way for the user
        raise ModelError(f"cannot download {what} ({type(error).__name__}: {error}). {instructions}") from None


def _instructions(repo_id: str, subfolder: str, files: tuple[str, ...], target: Path) -> str:
    """What to fetch by hand; `subfolder` may end in checkpoint-* (any step of that variant)."""
    url = f"https://huggingface.co/{repo_id}/tree/main/{subfolder.replace('/checkpoint-*', '')}".rstrip("/")
    inside = " (inside its checkpoint-<step> folder)" if subfolder.endswith("checkpoint-*") else ""
    return (f"Download {', '.join(files)} from {url}{inside} and put them in {target}/, keeping the "
            "subfolders.")


def ensure_pasd_checkpoint(variant: str, models_dir: str | Path) -> Path:
    """The folder (with unet/ and controlnet/) of a PASD checkpoint in `models_dir`, downloaded if absent."""
    if variant not in PASD_VARIANTS:
        raise ModelError(f"unknown PASD variant {variant!r}: use one of {', '.join(PASD_VARIANTS)}.")
    models_dir = Path(models_dir)
    subfolder = PASD_VARIANTS[variant]
    found = _local_pasd_checkpoint(models_dir, subfolder)
    if found is not None:
        return found
    instructions = _instructions(PASD_REPO, subfolder, PASD_FILES,
                                 models_dir / subfolder.replace("checkpoint-*", "checkpoint-<step>"))
    # fnmatch patterns: '*' also matches '/', so checkpoint-* reaches the files below it
    patterns = [f"{subfolder}/{name}" for name in PASD_FILES]
    _snapshot(PASD_REPO, patterns, models_dir, f"the PASD '{variant}' checkpoint", instructions)
    found = _local_pasd_checkpoint(models_dir, subfolder)
    if found is None:
        raise ModelError(f"the download of the PASD '{variant}' checkpoint finished without its files "
                         f"(the repository layout may have changed). {instructions}")
    return found


def ensure_sd15_base(models_dir: str | Path) -> Path:
    """An SD1.5 diffusers folder (text_encoder, tokenizer, vae, scheduler) in `models_dir`, downloaded if absent."""
    target = Path(models_dir) / SD15_FOLDER
    if _complete(target, SD15_FILES):
        return target
    instructions = (_instructions(SD15_REPO, "", SD15_FILES, target)
                    + " An SD1.5 single-file checkpoint (.safetensors) works as a base too.")
    _snapshot(SD15_REPO, list(SD15_FILES), target, "the Stable Diffusion 1.5 base", instructions)
    missing = [name for name in SD15_FILES if not (target / name).is_file()]
    if missing:
        raise ModelError(f"the download of the Stable Diffusion 1.5 base finished without {', '.join(missing)}. "
                         f"{instructions}")
    return target
