"""Finding and loading checkpoints: official PASD folders, SD1.5 bases, personalized models.

Weights are read with safetensors (or `torch.load(weights_only=True)` for a `.bin`): never pickle.
Models are built on the meta device and the weights assigned, so nothing is initialised twice.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ModelError
from .models import PASDControlNet, PASDUNet

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class BaseModel:
    """What PASD takes from the SD1.5 base: text encoder, tokenizer, VAE and scheduler config."""

    tokenizer: Any
    text_encoder: Any
    vae: Any
    scheduler_config: dict


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device='cuda' was asked for but torch sees no CUDA GPU: use device='auto' or 'cpu'.")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError("device='mps' was asked for but Apple MPS is not available: use device='auto' or 'cpu'.")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"dtype={dtype!r} is not one of auto, {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def check_path(path: Path, what: str, *, folder: bool, fix: str) -> None:
    """Raise ModelError unless `path` is a readable folder (`folder`) or file, saying which of missing, a folder
    where a file belongs (or the reverse), a dangling link or unreadable it is; `fix` tells what to give instead."""
    try:
        mode = os.stat(path).st_mode
    except PermissionError:
        raise ModelError(f"{what} {path} cannot be reached (permission denied on a folder above it): {fix}") from None
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            raise ModelError(f"{what} {path} is a link to something that does not exist: {fix}") from None
        raise ModelError(f"{what} {path} does not exist: {fix}") from None
    except OSError as error:
        raise ModelError(f"{what} {path} cannot be read ({error.strerror}): {fix}") from None
    if folder and not stat.S_ISDIR(mode):
        raise ModelError(f"{what} {path} is a file, not a folder: {fix}")
    if not folder and stat.S_ISDIR(mode):
        raise ModelError(f"{what} {path} is a folder, not a file: {fix}")
    if not folder and not stat.S_ISREG(mode):
        raise ModelError(f"{what} {path} is not a regular file: {fix}")
    if not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
        raise ModelError(f"{what} {path} cannot be read (permission denied): give this user read access to it.")


def read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"missing {path}") from None
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot read {path}: {error}") from None


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file, or a .bin read without executing pickled code."""
    check_path(path, "weight file", folder=False, fix="download the checkpoint again.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused an object: unpickling it could run code
        raise ModelError(f"weight file {path} holds Python objects besides weights and was not loaded, because "
                         "unpickling them could run code: use the .safetensors version.") from None
    except Exception as error:  # safetensors and torch raise several types for a damaged file
        raise ModelError(f"weight file {path} is damaged or not a weight file ({type(error).__name__}: "
                         f"{error}); download it again.") from None


def _few(names: list[str], limit: int = 8) -> str:
    """At most `limit` names, for a message."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _component_weights(folder: Path) -> Path:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise ModelError(f"no weights in {folder}: expected {WEIGHT_NAMES[0]}; found {_few(found) or 'nothing'}.")


def _build(factory: Any, state: dict[str, torch.Tensor], source: Path) -> torch.nn.Module:
    """Build a model on the meta device, then assign the checkpoint's tensors to it."""
    with torch.device("meta"):
        model = factory()
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(
            f"{source} does not fit its config.json: {len(result.missing_keys)} missing weights "
            f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected "
            f"(e.g. {result.unexpected_keys[:3]})."
        )
    return model.eval().requires_grad_(False)


def detect_variant(unet_keys: set[str], source: Path) -> str:
    """`pasd` has `pixel_attentions`, `pasd_light` has `attn2_plus`; a plain SD UNet has neither."""
    if any(".pixel_attentions." in k for k in unet_keys):
        return "pasd"
    if any(".attn2_plus." in k for k in unet_keys):
        return "pasd_light"
    raise ModelError(f"{source} is a plain Stable Diffusion UNet, not a PASD one (no pixel-aware attention "
                     "weights): pick a PASD checkpoint folder such as pasd/checkpoint-100000.")


def is_pasd_checkpoint(folder: Path) -> bool:
    return (folder / "unet" / "config.json").is_file() and (folder / "controlnet" / "config.json").is_file()


def load_pasd_checkpoint(folder: str | Path) -> tuple[PASDUNet, PASDControlNet]:
    """The UNet and ControlNet of an official PASD checkpoint folder (`unet/`, `controlnet/`), in fp32 on CPU."""
    folder = Path(folder)
    check_path(folder, "PASD checkpoint folder", folder=True,
               fix="give the folder holding unet/ and controlnet/ (e.g. pasd/checkpoint-100000).")
    for part in ("unet", "controlnet"):  # there but unusable (a file, a dangling link, unreadable): say so
        if os.path.lexists(folder / part):
            check_path(folder / part, "PASD checkpoint part", folder=True,
                       fix=f"{part}/ should be a folder with config.json and {WEIGHT_NAMES[0]}.")
    if not is_pasd_checkpoint(folder):
        found = sorted(p.name for p in folder.iterdir())  # the user's chosen folder, named to show what it is
        raise ModelError(f"{folder} is not a PASD checkpoint: expected unet/ and controlnet/ folders, each with "
                         f"config.json and {WEIGHT_NAMES[0]}; found {_few(found) or 'an empty folder'}.")
    unet_state = read_weights(_component_weights(folder / "unet"))
    variant = detect_variant(set(unet_state), folder / "unet")
    unet_config = read_config(folder / "unet" / "config.json")
    unet = _build(lambda: PASDUNet.from_pasd_config(unet_config, variant), unet_state, folder / "unet")
    control_state = read_weights(_component_weights(folder / "controlnet"))
    control_config = read_config(folder / "controlnet" / "config.json")
    controlnet = _build(lambda: PASDControlNet.from_pasd_config(control_config, set(control_state)),
                        control_state, folder / "controlnet")
    return unet, controlnet


def load_base_folder(folder: Path) -> BaseModel:
    """An SD1.5 diffusers folder (text_encoder, tokenizer, vae, scheduler), read offline."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    missing = [name for name in ("text_encoder", "tokenizer", "vae", "scheduler") if not (folder / name).is_dir()]
    if missing:
        files = [name for name in missing if (folder / name).exists()]
        note = f" ({', '.join(files)}: a file, not a folder)" if files else ""
        raise ModelError(f"{folder} is not an SD1.5 diffusers folder: missing {', '.join(missing)}/{note} "
                         "(PASD needs text_encoder, tokenizer, vae and scheduler from stable-diffusion-v1-5).")
    for part in ("text_encoder", "vae"):
        for weights in list((folder / part).glob("*.safetensors")):
            read_weights(weights)  # a damaged file gets a message naming it, not a loader traceback
    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(str(folder / "text_encoder"), local_files_only=True,
                                                     use_safetensors=True)
        vae = AutoencoderKL.from_pretrained(str(folder / "vae"), local_files_only=True, use_safetensors=True,
                                            low_cpu_mem_usage=False)
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load the SD1.5 base from {folder}: {error}") from None
    scheduler_config = read_config(folder / "scheduler" / "scheduler_config.json")
    return BaseModel(tokenizer, text_encoder.eval().requires_grad_(False), vae.eval().requires_grad_(False),
                     scheduler_config)


def load_base(path: str | Path, config_dir: str | Path | None = None) -> BaseModel:
    """An SD1.5 base: a diffusers folder, or an original-layout single file (configs from `config_dir`,
    by default the SD1.5 ones shipped in pasd_core/sd15)."""
    path = Path(path)
    fix = "give a stable-diffusion-v1-5 diffusers folder or a single .safetensors checkpoint."
    named_like_a_file = path.suffix.lower() in CHECKPOINT_SUFFIXES and not os.path.isdir(path / "text_encoder")
    if os.path.isdir(path) and named_like_a_file:
        raise ModelError(f"SD1.5 base model {path} is a folder, though its name ends in {path.suffix}: give the "
                         "checkpoint file itself, or a diffusers folder.")
    if os.path.isdir(path):
        check_path(path, "SD1.5 base model", folder=True, fix=fix)
        return load_base_folder(path)
    check_path(path, "SD1.5 base model", folder=False, fix=fix)
    from .single_file import load_base_components

    parts = load_base_components(path, config_dir)
    return BaseModel(parts.tokenizer, parts.text_encoder, parts.vae, parts.scheduler_config)


def check_compatible(base: BaseModel, unet: PASDUNet, base_path: Path) -> None:
    width = base.text_encoder.config.hidden_size
    if width != unet.config.cross_attention_dim:
        raise ModelError(f"{base_path} has a {width}-wide text encoder but the PASD UNet expects "
                         f"{unet.config.cross_attention_dim}: PASD needs a Stable Diffusion 1.5 base "
                         "(SD2 and SDXL bases do not fit).")
