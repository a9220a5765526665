"""kohya-format LoRA files: which model layer each `lora_*` key names, and the merges they make.

Shared by the personalized LoRA (personalize.py: `multiplier · up @ down`, alpha ignored as the official
`convert_lora`) and the LCM-LoRA (lcm_lora.py: `(alpha / rank) · up @ down`, as diffusers' `load_lora_weights`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from .reader import CheckpointFile

LORA_PARTS = {"lora_down.weight", "lora_up.weight", "alpha"}
UNET_LORA_PREFIX = "lora_unet_"

# A LoRA layer's parts ("lora_down.weight", "lora_up.weight", "alpha") by kohya module key.
LoraLayers = dict[str, dict[str, torch.Tensor]]
# kohya name (without its prefix) → the module it targets; None where two modules share the name.
KohyaLookup = dict[str, nn.Module | None]


@dataclass
class MergeLora:
    """`layer.weight += multiplier * up @ down`."""

    layer: nn.Module
    up: torch.Tensor
    down: torch.Tensor
    multiplier: float

    def apply(self) -> None:
        weight = self.layer.weight
        with torch.no_grad():
            delta = (self.up.flatten(1).float() @ self.down.flatten(1).float()).reshape(weight.shape)
            weight.add_((self.multiplier * delta).to(weight.device, weight.dtype))


def lora_layers(checkpoint: CheckpointFile) -> LoraLayers:
    """The file's tensors grouped by layer (`<module>.<part>`); ModelError if it holds none."""
    groups: LoraLayers = {}
    for key, tensor in checkpoint.tensors().items():
        module, _, part = key.partition(".")
        groups.setdefault(module, {})[part] = tensor
    if not groups:
        raise ModelError(f"{checkpoint.path} holds no weights.")
    return groups


def kohya_lookup(model: nn.Module, other_name: Callable[[str], str | None]) -> KohyaLookup:
    """kohya name (dotted module path with '_' for '.') → module with a 2-d or 4-d weight; None if ambiguous.

    `other_name(path)` gives a second name each module is also found under (None: none).
    """
    lookup: KohyaLookup = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not name or not isinstance(weight, torch.Tensor) or weight.ndim not in (2, 4):
            continue
        for path in {name, other_name(name) or name}:
            key = path.replace(".", "_")
            lookup[key] = None if lookup.get(key, module) is not module else module
    return lookup


def unet_lookup(unet: nn.Module) -> KohyaLookup:
    """UNet layers under their diffusers names and their original (LDM/SGM) names, as kohya writes either."""
    return kohya_lookup(unet, lambda name: original_unet_name(name, unet.config))


def text_encoder_lookup(encoder: nn.Module) -> KohyaLookup:
    # kohya names CLIP layers from `text_model.`, a level transformers >= 5.6 dropped from CLIPTextModel
    return kohya_lookup(encoder, (lambda name: None) if hasattr(encoder, "text_model") else
                        (lambda name: "text_model." + name))


def lora_fits(up: torch.Tensor, down: torch.Tensor, shape: torch.Size) -> bool:
    """Whether `up @ down` has the target weight's shape (Linear, 1x1 conv, or a kxk conv with a 1x1 `up`)."""
    if up.ndim < 2 or down.ndim < 2:
        return False
    (up_out, up_rank), (down_rank, down_in) = up.flatten(1).shape, down.flatten(1).shape
    return up_rank == down_rank and up_out == shape[0] and up_out * down_in == shape.numel()


def plan_merges(path: Path, groups: LoraLayers, lookups: Mapping[str, KohyaLookup],
                multiplier: Callable[[dict[str, torch.Tensor]], float],
                misfit_hint: str) -> tuple[list[MergeLora], list[str]]:
    """The checked merges of `groups` (`multiplier(parts)` each) and the module keys that match no layer.

    `lookups` maps a kohya prefix (`lora_unet_`, `lora_te_`…) to its model's lookup; `misfit_hint` ends the
    message of a layer whose shapes do not fit its target.
    """
    plan: list[MergeLora] = []
    unknown: list[str] = []
    for module_key, parts in groups.items():
        prefix = next((p for p in lookups if module_key.startswith(p)), None)
        target = lookups[prefix].get(module_key[len(prefix):]) if prefix else None
        if target is None:
            unknown.append(module_key)
            continue
        if not set(parts) <= LORA_PARTS or not {"lora_down.weight", "lora_up.weight"} <= set(parts):
            raise ModelError(f"{path}: layer {module_key} has {sorted(parts)}; only plain LoRA layers "
                             "(lora_down.weight + lora_up.weight, optional alpha) are supported, not LyCORIS/DoRA.")
        up, down = parts["lora_up.weight"], parts["lora_down.weight"]
        if not lora_fits(up, down, target.weight.shape):
            raise ModelError(f"{path}: layer {module_key} has up {tuple(up.shape)} and down {tuple(down.shape)}, "
                             f"which do not fit the weight {tuple(target.weight.shape)}: {misfit_hint}")
        plan.append(MergeLora(target, up, down, multiplier(parts)))
    return plan, unknown


# diffusers UNet module paths → the original (LDM/SGM) layout's, outside the blocks and inside a ResNet
_ORIGINAL_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
                 "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
                 "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
_ORIGINAL_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                    "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_BLOCK_PART = re.compile(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)")
_MID_PART = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")


def original_unet_name(name: str, config: Mapping[str, Any]) -> str | None:
    """A diffusers UNet module path in the original (LDM/SGM) layout, or None where it has no place there.

    kohya's SDXL LoRAs name UNet layers this way (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k`),
    its SD1.5 LoRAs the diffusers way. Each original level holds its ResNets (index 0) and attentions
    (index 1) one layer per entry, then the resampler; the PASD-only modules have no original name.
    """
    if name in _ORIGINAL_TOP:
        return _ORIGINAL_TOP[name]
    per_block = config.get("layers_per_block")
    if not isinstance(per_block, int):
        return None  # per-block counts: not a layout kohya names
    stride = per_block + 1
    if match := _MID_PART.fullmatch(name):
        kind, layer, rest = match[1], int(match[2]), match[3]
        return f"middle_block.{2 * layer}.{_resnet(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
    match = _BLOCK_PART.fullmatch(name)
    if match is None:
        return None
    side, block, kind, layer, rest = match[1], int(match[2]), match[3], int(match[4]), match[5]
    if side == "down":
        if kind == "downsamplers":
            return f"input_blocks.{stride * (block + 1)}.0.{rest.replace('conv', 'op', 1)}"
        index, slot = stride * block + layer + 1, 0 if kind == "resnets" else 1
        return f"input_blocks.{index}.{slot}.{_resnet(rest) if kind == 'resnets' else rest}"
    if kind == "upsamplers":
        slot = 2 if "CrossAttn" in config["up_block_types"][block] else 1  # after the attention, if any
        return f"output_blocks.{stride * block + per_block}.{slot}.{rest}"
    index, slot = stride * block + layer, 0 if kind == "resnets" else 1
    return f"output_blocks.{index}.{slot}.{_resnet(rest) if kind == 'resnets' else rest}"


def _resnet(rest: str) -> str:
    first, dot, tail = rest.partition(".")
    return _ORIGINAL_RESNET.get(first, first) + dot + tail
