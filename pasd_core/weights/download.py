"""Optional download of the PASD checkpoints and their base models, for users with internet access.

Files land in the models folder in the official on-disk layout (`<models>/pasd/pasd/checkpoint-100000/
{unet,controlnet}/…`, `<models>/diffusers/stable-diffusion-v1-5/…`), so a manual download put in the same
place works the same. When the download cannot happen (offline, no huggingface_hub, a network error), the
ModelError says which files to fetch from where and where to put them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import Interrupted, ModelError
from ..model_family import SD15, SDXL
from .hub_fetch import HubFetcher, fetch


@dataclass(frozen=True)
class HubFiles:
    """Some files of one folder of a Hugging Face repository."""

    repo_id: str
    folder: str  # inside the repository; "" for its root; may end in checkpoint-* (any step)
    files: tuple[str, ...]
    what: str  # for messages: "the PASD 'pasd' checkpoint"

    @property
    def repo_name(self) -> str:
        """The folder the download gives a whole repository's files: its name (stable-diffusion-v1-5)."""
        return self.repo_id.split("/")[1]

    @property
    def any_step(self) -> bool:
        return self.folder.endswith("checkpoint-*")

    def patterns(self) -> list[str]:
        # fnmatch patterns: '*' also matches '/', so checkpoint-* reaches the files below it
        return [f"{self.folder}/{name}" if self.folder else name for name in self.files]

    def local_folder(self, local_dir: Path) -> Path:
        """Where the files go under `local_dir`, as a message names it (a step the user picks shows as <step>)."""
        return local_dir / self.folder.replace("checkpoint-*", "checkpoint-<step>") if self.folder else local_dir

    def instructions(self, local_dir: Path) -> str:
        """What to fetch by hand, from where, and where to put it."""
        folder = self.folder.removesuffix("/checkpoint-*")
        url = f"https://huggingface.co/{self.repo_id}/tree/main/{folder}".rstrip("/")
        inside = " (inside its checkpoint-<step> folder)" if self.any_step else ""
        return (f"Download {', '.join(self.files)} from {url}{inside} and put them in "
                f"{self.local_folder(local_dir)}/, keeping the subfolders.")


PASD_FILES = ("unet/config.json", "unet/diffusion_pytorch_model.safetensors",
              "controlnet/config.json", "controlnet/diffusion_pytorch_model.safetensors")


def _pasd(repo_id: str, folder: str, variant: str, extra: tuple[str, ...] = ()) -> HubFiles:
    return HubFiles(repo_id, folder, PASD_FILES + extra, f"the PASD '{variant}' checkpoint")


# Folder of each variant in its Hugging Face repo. pasd and pasd_light are the checkpoints the official
# scripts name; for the others the step is not documented (the official zips used checkpoint-100000 for the
# rrdb ones, checkpoint-180000 for colorization), so any checkpoint-* is taken.
# pasd_sdxl: test_pasd_sdxl.py (yangxy/PASD) reads unet/, controlnet/ and its own Euler scheduler/ from
# runs/pasd_sdxl/checkpoint-200000, the folder yangtao9009/PASD-SDXL publishes. Assumed, not checked against
# the hub: its weights carry the diffusers safetensors names, as yangtao9009/PASD's do.
PASD_VARIANTS = {
    "pasd": _pasd("yangtao9009/PASD", "pasd/checkpoint-100000", "pasd"),
    "pasd_light": _pasd("yangtao9009/PASD", "pasd_light/checkpoint-120000", "pasd_light"),
    "pasd_rrdb": _pasd("yangtao9009/PASD", "pasd_rrdb/checkpoint-*", "pasd_rrdb"),
    "pasd_light_rrdb": _pasd("yangtao9009/PASD", "pasd_light_rrdb/checkpoint-*", "pasd_light_rrdb"),
    "pasd_light_color": _pasd("yangtao9009/PASD", "pasd_light_color/checkpoint-*", "pasd_light_color"),
    "pasd_sdxl": _pasd("yangtao9009/PASD-SDXL", "pasd_sdxl/checkpoint-200000", "pasd_sdxl",
                       ("scheduler/scheduler_config.json",)),
}
FAMILY_VARIANTS = {SD15: "pasd", SDXL: "pasd_sdxl"}  # the checkpoint each family downloads by default

# Only what PASD reads from each base (weights/bases.py FOLDER_PARTS), plus model_index.json, by which
# ComfyUI's models/diffusers lists a folder. No UNet: PASD brings its own.
_TOKENIZER = ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")
SD15_FILES = ("model_index.json", "text_encoder/config.json", "text_encoder/model.safetensors",
              *(f"tokenizer/{name}" for name in _TOKENIZER), "vae/config.json",
              "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json")
SDXL_FILES = ("model_index.json", "text_encoder/config.json", "text_encoder/model.safetensors",
              "text_encoder_2/config.json", "text_encoder_2/model.safetensors",
              *(f"{part}/{name}" for part in ("tokenizer", "tokenizer_2") for name in _TOKENIZER),
              "vae/config.json", "vae/diffusion_pytorch_model.safetensors")
# runwayml/stable-diffusion-v1-5 was taken down in 2024; this is the maintained copy of the same files
BASES = {
    SD15: HubFiles("stable-diffusion-v1-5/stable-diffusion-v1-5", "", SD15_FILES, "the Stable Diffusion 1.5 base"),
    SDXL: HubFiles("stabilityai/stable-diffusion-xl-base-1.0", "", SDXL_FILES, "the SDXL 1.0 base"),
}
# The VAE test_pasd_sdxl.py swaps in for fp16 (SDXL's own overflows there).
FP16_FIX_VAE = HubFiles("madebyollin/sdxl-vae-fp16-fix", "", ("config.json", "diffusion_pytorch_model.safetensors"),
                        "the fp16-fix SDXL VAE")


def _complete(folder: Path, files: tuple[str, ...]) -> bool:
    return all((folder / name).is_file() for name in files)


def _local(source: HubFiles, local_dir: Path) -> Path | None:
    """The complete folder of `source` under `local_dir`; of several checkpoint-* steps, the highest."""
    if not source.folder:
        return local_dir if _complete(local_dir, source.files) else None

    def step(folder: Path) -> int:
        found = re.search(r"(\d+)$", folder.name)
        return int(found[1]) if found else -1

    candidates = [f for f in local_dir.glob(source.folder) if f.is_dir() and _complete(f, source.files)]
    return max(candidates, key=step) if candidates else None


def ensure_files(source: HubFiles, local_dir: str | Path, hint: str = "", fetcher: HubFetcher | None = None) -> Path:
    """The folder holding `source`'s files under `local_dir`, downloaded if absent (each file checked against the
    hub's checksum before it is kept); `hint` ends the offline message (another way to get there)."""
    fetcher = fetcher or HubFetcher()
    local_dir = Path(local_dir)
    found = _local(source, local_dir)
    if found is not None and not fetcher.recheck:
        return found
    instructions = source.instructions(local_dir) + hint
    try:
        import huggingface_hub  # noqa: F401  (only to say so when it is missing)
    except ImportError:
        raise ModelError(f"cannot download {source.what}: the huggingface_hub package is not installed "
                         f"(pip install huggingface_hub). {instructions}") from None
    try:
        damaged = fetch(source.repo_id, source.patterns(), local_dir, fetcher)
    except (ModelError, Interrupted):
        raise
    except Exception as error:  # offline mode, DNS, HTTP, disk: all end the same way for the user
        detail = " ".join(str(error).split())  # one line: the client's messages run over several
        if found is not None:  # only the re-check failed: what is there was checked when it came
            fetcher.on_file(f"could not check {found} against the hub ({type(error).__name__}: {detail}); kept")
            return found
        raise ModelError(f"cannot download {source.what} ({type(error).__name__}: {detail}). {instructions} Or "
                         f"{fetcher.again}: the files already checked are kept, so it resumes.") from None
    if damaged:
        one = len(damaged) == 1
        raise ModelError(f"{', '.join(damaged)} of {source.what} arrived damaged (its bytes differ from the hub's "
                         f"checksum) and {'was' if one else 'were'} deleted: {fetcher.again} to download "
                         f"{'it' if one else 'them'} again (the files already checked are kept).")
    found = _local(source, local_dir)
    if found is None:
        raise ModelError(f"the download of {source.what} finished without its files (the repository layout may "
                         f"have changed). {instructions}")
    return found


# The colour checkpoint samples with its own zero-terminal-SNR scheduler, which the official grayscale branch reads
# from scheduler/ beside the checkpoint folder (runs/pasd_color/scheduler in the official README).
COLOR_VARIANT = "pasd_light_color"
COLOR_SCHEDULER = HubFiles("yangtao9009/PASD", COLOR_VARIANT, ("scheduler/scheduler_config.json",),
                           "the colour checkpoint's scheduler")


def ensure_pasd_checkpoint(variant: str, models_dir: str | Path, fetcher: HubFetcher | None = None) -> Path:
    """The folder (unet/, controlnet/; PASD-SDXL also scheduler/) of a PASD checkpoint in `models_dir`
    (ComfyUI's models/pasd), downloaded if absent; the colour checkpoint comes with its sibling scheduler/."""
    if variant not in PASD_VARIANTS:
        raise ModelError(f"unknown PASD variant {variant!r}: use one of {', '.join(PASD_VARIANTS)}.")
    folder = ensure_files(PASD_VARIANTS[variant], models_dir, fetcher=fetcher)
    if variant == COLOR_VARIANT:
        ensure_files(COLOR_SCHEDULER, models_dir, fetcher=fetcher)
    return folder


def ensure_base(models_dir: str | Path, family: str = SD15, fetcher: HubFetcher | None = None) -> Path:
    """The diffusers base folder of `family` (text encoders, tokenizers, VAE; SD1.5 also its scheduler) in
    `models_dir` (ComfyUI's models/diffusers), downloaded if absent."""
    source = BASES[family]
    hint = (" An SD1.5 single-file checkpoint (.safetensors) works as a base too." if family == SD15 else
            " An SDXL base single-file checkpoint (.safetensors, with both text encoders) works as a base too.")
    return ensure_files(source, Path(models_dir) / source.repo_name, hint, fetcher)


def ensure_fp16_fix_vae(models_dir: str | Path, fetcher: HubFetcher | None = None) -> Path:
    """madebyollin/sdxl-vae-fp16-fix as a diffusers VAE folder in `models_dir` (ComfyUI's models/vae)."""
    return ensure_files(FP16_FIX_VAE, Path(models_dir) / FP16_FIX_VAE.repo_name, fetcher=fetcher)


# The SDXL refiner of test_pasd_sdxl.py --use_refiner (its --pretrained_refiner_path), the parts diffusers'
# StableDiffusionXLImg2ImgPipeline loads (it has no first text encoder), as full-precision safetensors; the official
# script loads the fp16 variant instead, which engine/refiner.py also takes when a folder holds only that.
REFINER_FILES = ("model_index.json", "scheduler/scheduler_config.json", "text_encoder_2/config.json",
                 "text_encoder_2/model.safetensors", *(f"tokenizer_2/{name}" for name in _TOKENIZER),
                 "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                 "vae/diffusion_pytorch_model.safetensors")
REFINER = HubFiles("stabilityai/stable-diffusion-xl-refiner-1.0", "", REFINER_FILES, "the SDXL 1.0 refiner")


def ensure_refiner(models_dir: str | Path, fetcher: HubFetcher | None = None) -> Path:
    """The SDXL refiner as a diffusers folder in `models_dir` (ComfyUI's models/diffusers), downloaded if absent."""
    return ensure_files(REFINER, Path(models_dir) / REFINER.repo_name, fetcher=fetcher)


# The LoRA of the official LCM fast mode (test_pasd.py --use_lcm_lora; SD1.5 only), into ComfyUI's models/loras.
LCM_LORA = HubFiles("latent-consistency/lcm-lora-sdv1-5", "", ("pytorch_lora_weights.safetensors",),
                    "the SD1.5 LCM-LoRA")


def ensure_lcm_lora(models_dir: str | Path, fetcher: HubFetcher | None = None) -> Path:
    """The LCM-LoRA file in `models_dir` (ComfyUI's models/loras), under lcm-lora-sdv1-5/, downloaded if absent."""
    folder = ensure_files(LCM_LORA, Path(models_dir) / LCM_LORA.repo_name, fetcher=fetcher)
    return folder / LCM_LORA.files[0]
