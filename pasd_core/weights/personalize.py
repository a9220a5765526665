"""Personalized stylization: put an SD1.5 fine-tune (ToonYou, majicMIX…) or a LoRA into a loaded PASD.

Follows the official `load_dreambooth_lora` and `convert_lora` (pasd/myutils), except that the
PASD-only weights are always kept, no pickled code is run, and every check is made before any
model is changed, so a bad file leaves the models as they were.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError
from ..params import BY_NAME
from .reader import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, CheckpointFile, checkpoint_kind
from .sd15_file import (
    check_fits,
    convert_text_encoder_state_dict,
    convert_unet_state_dict,
    convert_vae_state_dict,
    require_sd15,
)

logger = logging.getLogger(__name__)

LORA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder"}
LORA_PARTS = {"lora_down.weight", "lora_up.weight", "alpha"}


def _sd_unet_keys(unet: nn.Module) -> list[str]:
    """The keys of a stock SD UNet with `unet`'s config: the weights a personalized file must provide."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):  # only the key names are needed
        stock = UNet2DConditionModel.from_config(unet.config)
    return list(stock.state_dict())


def apply_personalized_model(unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, path: str | Path,
                             strength: float = 1.0) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Replace the SD weights of a PASD UNet (blended), the VAE and the text encoder with a personalized model's.

    `path` is an SD1.5 single file (original layout). Each UNet weight it has becomes
    `strength * personal + (1 - strength) * current` (the official `blending_alpha`; 1.0 replaces);
    the PASD-only weights (`pixel_attentions`, the light variant's `*_plus`), which the file does not
    have, are kept. The VAE and text encoder are replaced outright, as officially, when the file has
    them (a file without them keeps the current ones). The models are changed in place and returned,
    as `(unet, vae, text_encoder)` like the official loader.
    """
    strength = BY_NAME["style_strength"].check(strength)  # a blend: the table's range is 0..1
    checkpoint = CheckpointFile(path, "personalized model")
    require_sd15(checkpoint, {"UNet": UNET_PREFIX})
    state = checkpoint.tensors((UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX))  # not EMA copies or training state

    personal = convert_unet_state_dict(state, unet.config)
    current = unet.state_dict()
    check_fits(unet, personal, checkpoint.path, "UNet", required=_sd_unet_keys(unet))
    ignored = [k for k in personal if k not in current]
    if ignored:
        logger.warning("%s: %d UNet weights have no place in the PASD UNet and are ignored, e.g. %s",
                       checkpoint.path, len(ignored), ignored[:3])
    updates = {"unet": (unet, {k: _blend(v, current[k], strength) for k, v in personal.items() if k in current})}
    if any(k.startswith(VAE_PREFIX) for k in checkpoint.keys):
        vae_state = convert_vae_state_dict(state, vae.config)
        check_fits(vae, vae_state, checkpoint.path, "VAE")
        updates["vae"] = (vae, vae_state)
    if any(k.startswith(CLIP_PREFIX) for k in checkpoint.keys):
        text_state = convert_text_encoder_state_dict(state, text_encoder)
        check_fits(text_encoder, text_state, checkpoint.path, "text encoder")
        updates["text_encoder"] = (text_encoder, text_state)

    for model, new_state in updates.values():  # everything was checked: now change the models
        model.load_state_dict(new_state, strict=False)
    kept = sorted({"vae", "text_encoder"} - set(updates))
    if kept:
        logger.warning("%s has no %s weights; keeping the current ones", checkpoint.path, " or ".join(kept))
    return unet, vae, text_encoder


def _blend(personal: torch.Tensor, current: torch.Tensor, strength: float) -> torch.Tensor:
    if strength == 1.0:
        return personal  # exact, even where the current weight is not finite
    personal = personal.to(current.device, torch.float32)
    # the official formula, in fp32; load_state_dict casts back to the model's dtype
    return personal * strength + current.float() * (1.0 - strength)


def _kohya_lookup(model: nn.Module, alias_prefix: str = "") -> dict[str, nn.Module | None]:
    """kohya name (dotted module path with '_' for '.') → module with a 2-d or 4-d weight; None if ambiguous.

    `alias_prefix` also registers each name under that prefix (kohya's `text_model_` for a CLIP
    text encoder whose transformers version has no `text_model` level).
    """
    lookup: dict[str, nn.Module | None] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not name or not isinstance(weight, torch.Tensor) or weight.ndim not in (2, 4):
            continue
        for key in {name.replace(".", "_"), alias_prefix + name.replace(".", "_")}:
            lookup[key] = None if lookup.get(key, module) is not module else module
    return lookup


def _lora_delta(up: torch.Tensor, down: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """`up @ down` shaped as the target weight (Linear, 1x1 conv, or a kxk conv with a 1x1 `up`), or None."""
    up, down = up.flatten(1).float(), down.flatten(1).float()
    if up.shape[1] != down.shape[0] or up.shape[0] != shape[0] or up.shape[0] * down.shape[1] != shape.numel():
        return None
    return (up @ down).reshape(shape)


def apply_lora(unet: nn.Module, text_encoder: nn.Module, path: str | Path, multiplier: float) -> int:
    """Merge a kohya-style LoRA into the UNet and text encoder: `W += multiplier * up @ down`; returns the layer count.

    Keys are `lora_unet_<module>` / `lora_te_<module>` with `.lora_down.weight`, `.lora_up.weight`
    and an optional `.alpha`. As in the official PASD (`convert_lora`), `.alpha` is ignored: there is
    no `alpha / rank` scaling, so a LoRA trained with alpha < rank acts stronger than in kohya-based
    tools; `multiplier` compensates. Targets are Linear and 1x1 conv weights (and kxk convs, LoCon).
    """
    checkpoint = CheckpointFile(path, "LoRA file")
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in checkpoint.tensors().items():
        module, _, part = key.partition(".")
        groups.setdefault(module, {})[part] = tensor
    if not groups:
        raise ModelError(f"{checkpoint.path} holds no weights.")
    alias = "text_model_" if not hasattr(text_encoder, "text_model") else ""
    lookups = {"unet": _kohya_lookup(unet), "text_encoder": _kohya_lookup(text_encoder, alias)}

    plan: list[tuple[nn.Module, torch.Tensor]] = []
    unknown: list[str] = []
    for module_key, parts in groups.items():
        prefix = next((p for p in LORA_PREFIXES if module_key.startswith(p)), None)
        target = lookups[LORA_PREFIXES[prefix]].get(module_key[len(prefix):]) if prefix else None
        if target is None:
            unknown.append(module_key)
            continue
        if not set(parts) <= LORA_PARTS or not {"lora_down.weight", "lora_up.weight"} <= set(parts):
            raise ModelError(f"{checkpoint.path}: layer {module_key} has {sorted(parts)}; only plain LoRA layers "
                             "(lora_down.weight + lora_up.weight, optional alpha) are supported, not LyCORIS/DoRA.")
        delta = _lora_delta(parts["lora_up.weight"], parts["lora_down.weight"], target.weight.shape)
        if delta is None:
            raise ModelError(f"{checkpoint.path}: layer {module_key} has up {tuple(parts['lora_up.weight'].shape)} "
                             f"and down {tuple(parts['lora_down.weight'].shape)}, which do not fit the weight "
                             f"{tuple(target.weight.shape)}: is this LoRA for SD1.5?")
        plan.append((target, delta))
    if unknown:
        hint = _unknown_lora_hint(unknown, checkpoint_kind(checkpoint.keys))
        raise ModelError(f"{checkpoint.path}: {len(unknown)} of its {len(groups)} LoRA layers match no layer of "
                         f"the SD1.5 UNet or text encoder, e.g. {sorted(unknown)[:5]}{hint}. PASD takes kohya-style "
                         "SD1.5 LoRAs (lora_unet_* / lora_te_* keys).")
    with torch.no_grad():
        for target, delta in plan:
            target.weight.add_((multiplier * delta).to(target.weight.device, target.weight.dtype))
    logger.info("merged %d LoRA layers from %s", len(plan), checkpoint.path)
    return len(plan)


def _unknown_lora_hint(unknown: list[str], kind: str) -> str:
    if any(k.startswith(("lora_te1_", "lora_te2_")) for k in unknown):
        return " (lora_te1_/lora_te2_ layers: an SDXL LoRA)"
    if kind == "sd1":
        return " (this is a full checkpoint: use it as the personalized model)"
    if kind == "sdxl":
        return " (this looks like an SDXL file)"
    return ""
