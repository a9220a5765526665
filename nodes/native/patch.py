"""PACA on a clone of ComfyUI's MODEL, through ModelPatcher's own patch points.

Where PACA must run (pasd_core/models/layout.py): in every output block, on the scaled ControlNet residual of the
skip that block concatenates, after the block's text attention (or its ResBlock where the level has none) and
before its Upsample; pasd_light instead inside each transformer block, after the text attention.
Why these patch points (ComfyUI 0.3.64, comfy/ldm/modules/diffusionmodules/openaimodel.py and attention.py):
- `output_block_patch` runs before the block, and the Upsample is inside the block, so it is too early.
  `forward_timestep_embed` hands every layer it does not know (not a ResBlock, SpatialTransformer or Upsample)
  to `forward_timestep_embed_patch` with transformer_options. So `pasd` object-patches each output block with a
  copy of its TimestepEmbedSequential that has one weightless PixelAttentionStep before the Upsample, under a
  name of its own ("pasd_pixel_attention"): every existing weight keeps its key (LoRAs, weight patches), and the
  forward_timestep_embed_patch for that class runs the PACA SpatialTransformer there.
- pasd_light needs the hidden state after `x = attn2(norm2(x)) + x`; BasicTransformerBlock gives `middle_patch`
  the state that attn2's output is added to, and `attn2_output_patch` that output: together they add
  attn2_plus(norm2_plus(x + n)) with no copy of ComfyUI's code.
- The residuals reach both through transformer_options (control.py); PACA's weights are an additional
  model of the clone (ModelPatcher.set_additional_models), which ComfyUI loads and offloads with the UNet, and
  the patch objects name them too (`models()`, which model_patches_models collects, as core's patches do).
Patch objects return themselves from deepcopy: ModelPatcher.clone deep-copies model_options, and the PACA
weights they refer to must be shared, not duplicated, between clones.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import comfy.latent_formats
import torch
from comfy.ldm.modules.diffusionmodules import openaimodel
from torch import nn

from ...pasd_core.errors import ModelMismatchError
from ...pasd_core.model_family import LABELS, SD15, SDXL
from .adapter import PASDAdapter
from .control import RESIDUALS, PixelResiduals
from .ldm import ldm_unet_config

STEP_NAME = "pasd_pixel_attention"
ADDITIONAL_MODELS_KEY = "pasd_adapter"
ALREADY_PATCHED = ("model already carries a PASD adapter: connect PASD Apply to the MODEL from Load Checkpoint (or a "
                   "LoRA loader), not to the output of another PASD Apply.")


class PixelAttentionStep(nn.Module):
    """A weightless marker in an output block: "run PACA of output block `index` here"."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # reached only without the patch: PACA off
        return x


def _residuals(transformer_options: dict) -> PixelResiduals | None:
    residuals = transformer_options.get(RESIDUALS)
    return residuals if isinstance(residuals, PixelResiduals) else None


def _tokens(residual: torch.Tensor) -> torch.Tensor:
    return residual.flatten(2).transpose(1, 2)  # [B, C, H, W] → [B, H·W, C]


class SharedPatch:
    """Base of the patch objects: shared by every clone of the patched MODEL (see the module docstring)."""

    def __init__(self, adapter: PASDAdapter) -> None:
        self.adapter = adapter

    def __deepcopy__(self, memo: dict) -> "SharedPatch":
        return self

    def models(self) -> list[Any]:
        """The PACA weights this patch runs, which ComfyUI loads with the MODEL (ModelPatcher.model_patches_models,
        as core's model-patch objects name theirs)."""
        return [self.adapter.patcher]


class PixelAttentionPatch(SharedPatch):
    """pasd: the forward_timestep_embed_patch handler of PixelAttentionStep."""

    def __call__(self, layer: PixelAttentionStep, x: torch.Tensor, emb: Any, context: Any, transformer_options: dict,
                 *args: Any) -> torch.Tensor:
        residuals = _residuals(transformer_options)
        residual = None if residuals is None else residuals.for_output_block(layer.index)
        if residual is None:
            return x  # no PASD control on this call (e.g. outside the ControlNet's step range)
        attention = self.adapter.pixel_attention.layer(layer.index)
        # a fresh transformer_options: attention patches of other nodes target the UNet's own layers, not PACA
        return attention(x, context=_tokens(residual).to(x.dtype), transformer_options={})


class LightPixelPatch(SharedPatch):
    """pasd_light: `middle_patch` keeps the state attn2 adds to; `attn2_output_patch` adds the pixel attention."""

    def _layer(self, extra_options: dict) -> tuple[Any, PixelResiduals, tuple] | None:
        block = extra_options.get("block")
        residuals = _residuals(extra_options)
        if residuals is None or block is None or block[0] != "output":
            return None
        layer = self.adapter.pixel_attention.layer(block[1])
        return None if layer is None else (layer, residuals, (block[1], extra_options.get("block_index", 0)))

    def middle(self, x: torch.Tensor, extra_options: dict) -> torch.Tensor:
        found = self._layer(extra_options)
        if found is not None:
            found[1].cache[("state",) + found[2]] = x
        return x

    def attn2_output(self, n: torch.Tensor, extra_options: dict) -> torch.Tensor:
        found = self._layer(extra_options)
        if found is None:
            return n
        layer, residuals, (index, block_index) = found
        residual = residuals.for_output_block(index)
        state = residuals.cache.pop(("state", index, block_index), None)
        if residual is None or state is None:
            return n
        tokens = residuals.cache.get(("tokens", index))
        if tokens is None:  # once per layer and call, shared by its transformer blocks
            tokens = residuals.cache[("tokens", index)] = layer.tokens(residual.to(n.dtype))
        plus = layer.blocks[block_index]
        hidden = state + n
        return n + plus.attn2_plus(plus.norm2_plus(hidden), context=tokens)


def model_family(model: Any) -> str | None:
    """SD15 or SDXL for a ComfyUI MODEL, from its latent format (None for any other model)."""
    latent_format = getattr(model.model, "latent_format", None)
    if isinstance(latent_format, comfy.latent_formats.SDXL):
        return SDXL
    if isinstance(latent_format, comfy.latent_formats.SD15):
        return SD15
    return None


def check_model(model: Any, adapter: PASDAdapter) -> None:
    """The MODEL must be of the adapter's family and have the UNet layout the adapter was trained on."""
    family = model_family(model)
    if family != adapter.family:
        found = LABELS.get(family, f"a {type(model.model).__name__} model")
        raise ModelMismatchError(
            f"pasd_adapter is an {adapter.label}, but model is {found}: load an {LABELS[adapter.family]} checkpoint "
            f"in Load Checkpoint, or pick a PASD adapter of the model's family.")
    unet_config = getattr(model.model, "model_config", None)
    unet_config = getattr(unet_config, "unet_config", {}) or {}
    expected = ldm_unet_config(adapter.layout)
    for key in ("model_channels", "context_dim", "channel_mult"):
        if key in unet_config and list(map(int, _as_list(unet_config[key]))) != list(map(int, _as_list(expected[key]))):
            raise ModelMismatchError(
                f"pasd_adapter ({adapter.label}) was made for a UNet with {key}={expected[key]}, but model has "
                f"{key}={unet_config[key]}: it is not a {LABELS[adapter.family]} UNet PASD fits (an SD2 or other "
                f"derivative?). Load an {LABELS[adapter.family]} checkpoint.")


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _with_step(block: nn.Module, index: int) -> nn.Module:
    """A copy of output block `block` with a PixelAttentionStep before its Upsample (or at its end)."""
    children = list(block.named_children())
    if any(isinstance(child, PixelAttentionStep) for _, child in children):
        raise ModelMismatchError(ALREADY_PATCHED)
    at = next((i for i, (_, child) in enumerate(children) if isinstance(child, openaimodel.Upsample)), len(children))
    children.insert(at, (STEP_NAME, PixelAttentionStep(index)))
    return openaimodel.TimestepEmbedSequential(OrderedDict(children))


def patch_model(model: Any, adapter: PASDAdapter) -> Any:
    """A clone of `model` whose UNet runs PASD's pixel-aware attention on the PASD control's residuals."""
    check_model(model, adapter)
    if model.get_additional_models_with_key(ADDITIONAL_MODELS_KEY):
        raise ModelMismatchError(ALREADY_PATCHED)
    patched = model.clone()
    if adapter.variant == "pasd":
        for out in adapter.layout.up_layers():
            name = f"diffusion_model.output_blocks.{out.output_block}"
            patched.add_object_patch(name, _with_step(patched.get_model_object(name), out.output_block))
        patched.set_model_forward_timestep_embed_patch((PixelAttentionStep, PixelAttentionPatch(adapter)))
    else:
        light = LightPixelPatch(adapter)
        patched.set_model_patch(_Bound(light, "middle"), "middle_patch")
        patched.set_model_attn2_output_patch(_Bound(light, "attn2_output"))
    patched.set_additional_models(ADDITIONAL_MODELS_KEY, [adapter.patcher])
    return patched


class _Bound(SharedPatch):
    """One method of a LightPixelPatch as a patch callable (shared between clones, like the patch itself)."""

    def __init__(self, patch: LightPixelPatch, method: str) -> None:
        super().__init__(patch.adapter)
        self.patch, self.method = patch, method

    def __call__(self, value: torch.Tensor, extra_options: dict) -> torch.Tensor:
        return getattr(self.patch, self.method)(value, extra_options)
