"""Official PASD checkpoint folders (`unet/` + `controlnet/`, diffusers configs and weights) as published.

The family (SD1.5 or SDXL) is read from the UNet's config and the variant (pasd or pasd_light) from its
weights, never from a flag. Models are built on the meta device and the weights assigned, so nothing
is initialised twice.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelError, ModelMismatchError
from ..model_family import SD15, family_of
from .reader import check_path, read_config, read_weights

if TYPE_CHECKING:
    import torch

    from ..models import PASDControlNet, PASDUNet

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def _few(names: list[str], limit: int = 8) -> str:
    """At most `limit` names, for a message."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def component_weights(folder: Path) -> Path:
    """The weights file of one part (unet/ or controlnet/) of a PASD checkpoint folder."""
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise ModelError(f"no weights in {folder}: expected {WEIGHT_NAMES[0]}; found {_few(found) or 'nothing'}.")


def _build(factory: Any, state: dict[str, torch.Tensor], source: Path) -> torch.nn.Module:
    """Build a model on the meta device, then assign the checkpoint's tensors to it."""
    import torch

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


def checkpoint_family(folder: str | Path) -> str:
    """SD1.5 or SDXL, from the checkpoint's unet/config.json alone (no weights read)."""
    folder = Path(folder)
    _check_folder(folder)
    return family_of(read_config(folder / "unet" / "config.json"))


def load_pasd_checkpoint(folder: str | Path) -> tuple[PASDUNet, PASDControlNet]:
    """The UNet and ControlNet of an official PASD checkpoint folder (`unet/`, `controlnet/`), in fp32 on CPU."""
    # deferred: checkpoint_family (the CLI's and nodes' checks before loading) must not import torch and diffusers
    from ..models import PASDControlNet, PASDUNet

    folder = Path(folder)
    _check_folder(folder)
    unet_state = read_weights(component_weights(folder / "unet"))
    variant = detect_variant(set(unet_state), folder / "unet")
    unet_config = read_config(folder / "unet" / "config.json")
    unet = _build(lambda: PASDUNet.from_pasd_config(unet_config, variant), unet_state, folder / "unet")
    control_state = read_weights(component_weights(folder / "controlnet"))
    control_config = read_config(folder / "controlnet" / "config.json")
    controlnet = _build(lambda: PASDControlNet.from_pasd_config(control_config, set(control_state)),
                        control_state, folder / "controlnet")
    return unet, controlnet


def _check_folder(folder: Path) -> None:
    """A readable folder holding unet/ and controlnet/ with their configs, or a ModelError saying what it is."""
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


def colorize_scheduler_folder(checkpoint: str | Path) -> Path:
    """Where the official grayscale branch reads its scheduler: scheduler/ beside the checkpoint folder
    (runs/pasd_color/checkpoint-180000 -> runs/pasd_color/scheduler)."""
    return Path(checkpoint).resolve().parent / "scheduler"


def colorize_scheduler_config(checkpoint: str | Path) -> dict[str, Any]:
    return read_config(colorize_scheduler_folder(checkpoint) / "scheduler_config.json")


def check_control_type(checkpoint: str | Path, control_type: str) -> None:
    """Refuse, from configs alone, colorization on a checkpoint that cannot do it: PASD-SDXL has no grayscale
    model, and the colour checkpoint's zero-terminal-SNR scheduler must sit beside it."""
    if control_type != "grayscale":
        return
    if checkpoint_family(checkpoint) != SD15:
        raise ModelMismatchError(f"control_type='grayscale' (colorization) is a PASD-SD1.5 task, and {checkpoint} is a "
                                 "PASD-SDXL checkpoint: pick the colour checkpoint (pasd_light_color/checkpoint-<step>)"
                                 " or set control_type to 'realisr'.")
    config = colorize_scheduler_folder(checkpoint) / "scheduler_config.json"
    if not config.is_file():
        raise ModelMismatchError(
            f"control_type='grayscale' needs the colour checkpoint's own scheduler, and {config} does not exist: "
            "the official colorization samples with the zero-terminal-SNR scheduler published beside the checkpoint "
            "(pasd_light_color/scheduler/ next to pasd_light_color/checkpoint-<step>/; get both with: python -m "
            "pasd_core download --variant pasd_light_color), or set control_type to 'realisr' for this checkpoint.")
