"""Personalized stylization: put a fine-tune (ToonYou, majicMIX… for SD1.5; any SDXL 1.0 fine-tune for SDXL) or a
LoRA into a loaded PASD of the same family.

Follows the official `load_dreambooth_lora` and `convert_lora` (pasd/myutils), except that the
PASD-only weights are always kept, no pickled code is run, and every file is read and every check made
before any model is changed, so a bad file leaves the models as they were. The family is the PASD UNet's
(read from its config); a file of the other family is refused with a message saying what fits instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError, ModelMismatchError
from ..model_family import LABELS, SD15, SDXL, family_of
from ..params import BY_NAME
from .kohya_lora import UNET_LORA_PREFIX, MergeLora, lora_layers, plan_merges, text_encoder_lookup, unet_lookup
from .reader import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, CheckpointFile, checkpoint_kind
from .sd15_file import (
    check_fits,
    convert_text_encoder_state_dict,
    convert_unet_state_dict,
    convert_vae_state_dict,
    require_sd15,
)
from .sdxl_file import (
    CLIP_L_PREFIX,
    OPEN_CLIP_PREFIX,
    REFINER_PREFIX,
    convert_clip_l_state_dict,
    convert_open_clip_state_dict,
    convert_sdxl_unet_state_dict,
    require_sdxl_base,
)

logger = logging.getLogger(__name__)

# One text encoder (SD1.5) or a tuple of them, in the base's order (SDXL: CLIP ViT-L, then OpenCLIP ViT-bigG).
TextEncoders = nn.Module | tuple[nn.Module, ...]
Converter = Callable[[Mapping[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]

PASD_OF = {SD15: "the SD1.5 PASD models (pasd, pasd_light)", SDXL: "PASD-SDXL (pasd_sdxl)"}
OTHER = {SD15: SDXL, SDXL: SD15}


@dataclass(frozen=True)
class FilePart:
    """Where a single file keeps a VAE or text encoder, how its weights are renamed, and kohya's LoRA prefix."""

    label: str  # for messages
    name: str  # the pipeline's attribute, for the log
    prefix: str
    convert: Converter
    lora_prefix: str = ""


@dataclass(frozen=True)
class FamilyLayout:
    convert_unet: Callable[[Mapping[str, torch.Tensor], Mapping[str, Any]], dict[str, torch.Tensor]]
    text_encoders: tuple[FilePart, ...]


VAE_PART = FilePart("VAE", "vae", VAE_PREFIX, lambda state, vae: convert_vae_state_dict(state, vae.config))
LAYOUTS = {
    SD15: FamilyLayout(convert_unet_state_dict, (
        FilePart("text encoder", "text_encoder", CLIP_PREFIX, convert_text_encoder_state_dict, "lora_te_"),)),
    SDXL: FamilyLayout(convert_sdxl_unet_state_dict, (
        FilePart("CLIP ViT-L text encoder", "text_encoder", CLIP_L_PREFIX, convert_clip_l_state_dict, "lora_te1_"),
        FilePart("OpenCLIP ViT-bigG text encoder", "text_encoder_2", OPEN_CLIP_PREFIX, convert_open_clip_state_dict,
                 "lora_te2_"))),
}


@dataclass
class _LoadWeights:
    """New weights for `model`: each becomes `strength * new + (1 - strength) * current` (1.0 replaces)."""

    model: nn.Module
    state: dict[str, torch.Tensor]
    strength: float = 1.0

    def apply(self) -> None:
        current = self.model.state_dict()  # shares storage with the model: copying into it changes the model
        with torch.no_grad():
            for key, tensor in self.state.items():
                # one weight at a time, so a blend never holds a second copy of a whole SDXL UNet
                current[key].copy_(_blend(tensor, current[key], self.strength))


def _blend(personal: torch.Tensor, current: torch.Tensor, strength: float) -> torch.Tensor:
    if strength == 1.0:
        return personal  # exact, even where the current weight is not finite
    personal = personal.to(current.device, torch.float32)
    # the official formula, in fp32; copying into the model casts back to its dtype
    return personal * strength + current.float() * (1.0 - strength)


def _as_tuple(text_encoders: TextEncoders, family: str) -> tuple[nn.Module, ...]:
    encoders = tuple(text_encoders) if isinstance(text_encoders, (tuple, list)) else (text_encoders,)
    expected = len(LAYOUTS[family].text_encoders)
    if len(encoders) != expected:
        raise ValueError(f"a {LABELS[family]} PASD model takes {expected} text encoder(s), got {len(encoders)}")
    return encoders


def _wrong_family(path: Path, what: str, found: str, family: str) -> ModelMismatchError:
    return ModelMismatchError(f"{path} is an {LABELS[found]} {what}, but this PASD checkpoint is "
                              f"PASD-{LABELS[family]}: give an {LABELS[family]} {what}, or use this one with "
                              f"{PASD_OF[found]}.")


def _sd_unet_keys(unet: nn.Module) -> list[str]:
    """The keys of a stock SD UNet with `unet`'s config: the weights a personalized file must provide."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):  # only the key names are needed
        stock = UNet2DConditionModel.from_config(unet.config)
    return list(stock.state_dict())


def _require_personalized_model(checkpoint: CheckpointFile, family: str) -> None:
    """Raise ModelError, saying what fits instead, unless `checkpoint` is a `family` model with a UNet."""
    keys = checkpoint.keys
    kind = checkpoint_kind(keys)
    sdxl_unet = any(k.startswith(UNET_PREFIX + "label_emb.") for k in keys)  # a UNet-only SDXL file reads as "sd1"
    found = SDXL if kind == "sdxl" or sdxl_unet else SD15 if kind == "sd1" else None
    if found is not None and found != family:
        raise _wrong_family(checkpoint.path, "model", found, family)
    if family == SD15:
        require_sd15(checkpoint, {"UNet": UNET_PREFIX})
        return
    if found is None:
        require_sdxl_base(checkpoint)  # raises, saying what the file is (LoRA, SD2, diffusers weights…)
    if any(k.startswith(REFINER_PREFIX) for k in keys):
        raise ModelError(f"{checkpoint.path} looks like the SDXL refiner (one OpenCLIP text encoder, its own UNet): "
                         "give a model fine-tuned from SDXL 1.0 base.")
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        raise ModelError(f"{checkpoint.path} has no UNet weights ({UNET_PREFIX}*): PASD-SDXL needs a full SDXL "
                         "checkpoint with UNet, VAE and both text encoders.")


def _check_shapes(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, part: str, family: str) -> None:
    # SD1.5 leaves this to check_fits, whose message (and hints) speak of SD1.5
    if family == SD15:
        return
    expected = model.state_dict()
    for key, tensor in state.items():
        if key in expected and expected[key].shape != tensor.shape:
            raise ModelError(f"{path} does not fit: its {part} weight {key} has shape {tuple(tensor.shape)} where "
                             f"PASD-{LABELS[family]}'s {part} has {tuple(expected[key].shape)}: the file holds "
                             f"another architecture than an {LABELS[family]} 1.0 base fine-tune.")


def _converted(convert: Callable[..., dict[str, torch.Tensor]], path: Path, *args: Any) -> dict[str, torch.Tensor]:
    try:
        return convert(*args)
    except ModelError as error:  # the converters do not know the file's name
        raise ModelError(f"{path}: {error}") from None


def _read_personalized_model(unet: nn.Module, vae: nn.Module, encoders: tuple[nn.Module, ...], path: str | Path,
                             strength: float, family: str) -> list[_LoadWeights]:
    """The checked weight changes a personalized model makes; no model is changed."""
    layout = LAYOUTS[family]
    strength = BY_NAME["style_strength"].check(strength)  # a blend: the table's range is 0..1
    checkpoint = CheckpointFile(path, "personalized model")
    _require_personalized_model(checkpoint, family)
    source = checkpoint.path
    prefixes = (UNET_PREFIX, VAE_PREFIX, *(part.prefix for part in layout.text_encoders))
    state = checkpoint.tensors(prefixes)  # not EMA copies or training state

    personal = _converted(layout.convert_unet, source, state, unet.config)
    _check_shapes(unet, personal, source, "UNet", family)
    check_fits(unet, personal, source, "UNet", required=_sd_unet_keys(unet))
    current = unet.state_dict()
    ignored = [k for k in personal if k not in current]
    if ignored:
        logger.warning("%s: %d UNet weights have no place in the PASD UNet and are ignored, e.g. %s",
                       source, len(ignored), ignored[:3])
    # the PASD-only weights (pixel_attentions, *_plus) are not in the file: they are kept
    changes = [_LoadWeights(unet, {k: v for k, v in personal.items() if k in current}, strength)]

    # the VAE and text encoders are replaced outright, as officially, where the file has them
    kept = []
    for part, model in zip((VAE_PART, *layout.text_encoders), (vae, *encoders), strict=True):
        if not any(k.startswith(part.prefix) for k in checkpoint.keys):
            kept.append(part.name)
            continue
        new_state = _converted(part.convert, source, state, model)
        _check_shapes(model, new_state, source, part.label, family)
        check_fits(model, new_state, source, part.label)
        changes.append(_LoadWeights(model, new_state))
    if kept:
        logger.warning("%s has no %s weights; keeping the current ones", source, " or ".join(kept))
    return changes


def apply_personalized_model(unet: nn.Module, vae: nn.Module, text_encoders: TextEncoders, path: str | Path,
                             strength: float = 1.0) -> tuple[nn.Module, nn.Module, TextEncoders]:
    """Replace the SD weights of a PASD UNet (blended), the VAE and the text encoder(s) with a personalized model's.

    `path` is a single file (original layout) of the PASD UNet's family: SD1.5 with `text_encoders` one
    CLIP text encoder, or SDXL with `text_encoders` = (CLIP ViT-L, OpenCLIP ViT-bigG). Each UNet weight it has
    becomes `strength * personal + (1 - strength) * current` (the official `blending_alpha`; 1.0 replaces);
    the PASD-only weights (`pixel_attentions`, the light variant's `*_plus`), which the file does not
    have, are kept. The VAE and text encoders are replaced outright, as officially, when the file has
    them (a file without one keeps the current one). The models are changed in place and returned,
    as `(unet, vae, text_encoders)` like the official loader.
    """
    family = family_of(unet.config)
    for change in _read_personalized_model(unet, vae, _as_tuple(text_encoders, family), path, strength, family):
        change.apply()
    return unet, vae, text_encoders


def _lora_family(module_keys: list[str]) -> str | None:
    """SDXL or SD1.5 from kohya's text-encoder prefixes; None for a UNet-only LoRA (its layers' fit tells)."""
    if any(k.startswith(("lora_te1_", "lora_te2_")) for k in module_keys):
        return SDXL
    if any(k.startswith("lora_te_") for k in module_keys):
        return SD15
    return None


def _read_lora(unet: nn.Module, encoders: tuple[nn.Module, ...], path: str | Path, multiplier: float,
               family: str) -> list[MergeLora]:
    """The checked layer merges a LoRA makes; no model is changed."""
    checkpoint = CheckpointFile(path, "LoRA file")
    groups = lora_layers(checkpoint)
    found = _lora_family(list(groups))
    if found is not None and found != family:
        raise _wrong_family(checkpoint.path, "LoRA", found, family)
    lookups = {UNET_LORA_PREFIX: unet_lookup(unet)}
    for part, encoder in zip(LAYOUTS[family].text_encoders, encoders, strict=True):
        lookups[part.lora_prefix] = text_encoder_lookup(encoder)
    # as the official convert_lora: the same multiplier for every layer, alpha ignored
    plan, unknown = plan_merges(checkpoint.path, groups, lookups, lambda parts: multiplier,
                                f"is this LoRA for {LABELS[family]}?{_other_family_note(family)}")
    if unknown:
        hint = _unknown_lora_hint(checkpoint_kind(checkpoint.keys), family)
        keys = " / ".join(f"{p}*" for p in lookups)
        encoders_word = "text encoder" if len(encoders) == 1 else "text encoders"
        raise ModelError(f"{checkpoint.path}: {len(unknown)} of its {len(groups)} LoRA layers match no layer of "
                         f"the {LABELS[family]} UNet or {encoders_word}, e.g. {sorted(unknown)[:5]}{hint}. "
                         f"PASD-{LABELS[family]} takes kohya-style {LABELS[family]} LoRAs ({keys} keys).")
    return plan


def _other_family_note(family: str) -> str:
    return f" {LABELS[OTHER[family]]} LoRAs fit {PASD_OF[OTHER[family]]}."


def _unknown_lora_hint(kind: str, family: str) -> str:
    found = {"sd1": SD15, "sdxl": SDXL}.get(kind)
    if found == family:
        return " (this is a full checkpoint: use it as the personalized model)"
    if found is not None:
        return f" (this is a full {LABELS[found]} checkpoint, not a LoRA: it fits {PASD_OF[found]} as the " \
               "personalized model)"
    return f" (a LoRA for {LABELS[OTHER[family]]}?)"


def apply_lora(unet: nn.Module, text_encoders: TextEncoders, path: str | Path, multiplier: float) -> int:
    """Merge a kohya-style LoRA into the UNet and text encoder(s): `W += multiplier * up @ down`; returns the
    layer count.

    Keys are `lora_unet_<module>` and, per text encoder, `lora_te_<module>` (SD1.5) or `lora_te1_` /
    `lora_te2_` (SDXL: CLIP ViT-L, OpenCLIP ViT-bigG), with `.lora_down.weight`, `.lora_up.weight` and an
    optional `.alpha`; UNet modules are named the diffusers way or the original (SGM) way, as kohya's SDXL
    LoRAs are. As in the official PASD (`convert_lora`), `.alpha` is ignored in both families: there is
    no `alpha / rank` scaling, so a LoRA trained with alpha < rank acts stronger than in kohya-based
    tools; `multiplier` compensates. Targets are Linear and 1x1 conv weights (and kxk convs, LoCon).
    """
    family = family_of(unet.config)
    plan = _read_lora(unet, _as_tuple(text_encoders, family), path, multiplier, family)
    for change in plan:
        change.apply()
    logger.info("merged %d LoRA layers from %s", len(plan), path)
    return len(plan)


def personalize(unet: nn.Module, vae: nn.Module, text_encoders: TextEncoders, *,
                style_model: str | Path | None = None, style_strength: float = 1.0,
                lora: str | Path | None = None, lora_strength: float = 1.0) -> None:
    """`apply_personalized_model` then `apply_lora`, with both files read and checked before any model changes."""
    family = family_of(unet.config)
    encoders = _as_tuple(text_encoders, family)
    changes: list[_LoadWeights | MergeLora] = []
    if style_model is not None:
        changes += _read_personalized_model(unet, vae, encoders, style_model, style_strength, family)
    if lora is not None:
        changes += _read_lora(unet, encoders, lora, lora_strength, family)
    for change in changes:  # in order: a blend reads the weights before the LoRA is merged
        change.apply()
    if lora is not None:
        logger.info("merged %d LoRA layers from %s", sum(isinstance(c, MergeLora) for c in changes), lora)
