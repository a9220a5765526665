"""A PASD checkpoint as an adapter for ComfyUI's own SD1.5/SDXL MODEL: its ControlNet and its PACA weights.

Design note. The official train_pasd.py trains only the ControlNet and the pixel-aware cross attention (PACA);
the SD UNet stays frozen. So the adapter is exactly those two parts, built from ComfyUI's own blocks:
- the ControlNet is ComfyUI's `comfy.cldm.cldm.ControlNet` (with PASD's conditioning embedding, sized from the
  checkpoint's config, as its hint block), wrapped by `comfy.controlnet.ControlNet`, so ComfyUI's control path
  runs it, applies `conditioning_scale` as its strength, adds its residuals to the skips, and loads/offloads it
  with the model like any ControlNet;
- PACA is ComfyUI's `SpatialTransformer` (pasd) or `LayerNorm` + `CrossAttention` (pasd_light), built with
  `comfy.ops.manual_cast` and held in one module by a host patcher (CoreModelPatcher where the host has it, so the
  dynamic one under 0.38's Dynamic VRAM), its weights read with ComfyUI's own loader and assigned when the patcher
  is dynamic, as core's model-patch loaders do; registered on the patched MODEL as an additional model and named
  by the patch objects' `models()`: model_management loads, casts and offloads it with the UNet.
How PACA reaches the UNet is in patch.py. This module imports ComfyUI: nodes.py imports it only inside ComfyUI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import comfy.model_management
import comfy.model_patcher
import comfy.ops
from comfy.ldm.modules import attention
from torch import nn

from ...pasd_core.errors import ModelError
from ...pasd_core.model_family import LABELS
from ...pasd_core.models.layout import PASDLayout
from ...pasd_core.weights.pasd_folder import checkpoint_family, detect_variant
from ...pasd_core.weights.reader import read_config
from .. import host
from .control import build_control, read_part
from .ldm import groups_ops, norm_groups


@dataclass
class PASDAdapter:
    """What PASD Apply needs: the family, the variant, ComfyUI's ControlNet and the PACA module with its patcher."""

    family: str  # pasd_core.model_family.SD15 or SDXL
    variant: str  # "pasd" or "pasd_light"
    layout: PASDLayout
    control: Any  # a control.PASDControl (comfy.controlnet.ControlNet)
    pixel_attention: nn.Module  # PixelAttention
    patcher: Any  # comfy.model_patcher.ModelPatcher of pixel_attention
    source: str

    @property
    def label(self) -> str:
        return f"{LABELS[self.family]} {self.variant} adapter ({self.source})"

    def get_models(self) -> list[Any]:
        """Its two host models (PACA, ControlNet), as core's patch and ControlNet objects give theirs."""
        return [self.patcher, self.control.control_model_wrapped]

    def is_dynamic(self) -> bool:
        return all(host.is_dynamic(model) for model in self.get_models())

    def _comfy_cache_tensors(self) -> list[Any]:
        """What ComfyUI 0.38's RAM cache weighs this output by (comfy_execution/caching.py)."""
        return [*self.pixel_attention.state_dict().values(), *self.control.control_model.state_dict().values()]


class LightPixelBlock(nn.Module):
    """pasd_light, one transformer block: attention of the hidden states to the projected residual tokens."""

    def __init__(self, dim: int, residual_channels: int, heads: int, ops: Any) -> None:
        super().__init__()
        self.norm2_plus = ops.LayerNorm(dim)
        self.attn2_plus = attention.CrossAttention(query_dim=dim, context_dim=residual_channels, heads=heads,
                                                   dim_head=dim // heads, operations=ops)


class LightPixelLayer(nn.Module):
    """pasd_light, one up-block layer: `proj_in_plus` on the residual, one LightPixelBlock per transformer block."""

    def __init__(self, dim: int, residual_channels: int, heads: int, depth: int, linear: bool, ops: Any) -> None:
        super().__init__()
        self.linear = linear
        self.proj_in_plus = (ops.Linear(residual_channels, residual_channels) if linear
                             else ops.Conv2d(residual_channels, residual_channels, kernel_size=1))
        self.blocks = nn.ModuleList(LightPixelBlock(dim, residual_channels, heads, ops) for _ in range(depth))

    def tokens(self, residual: Any) -> Any:
        """[B, C, H, W] residual → [B, H·W, C] tokens, projected as the official Transformer2DModel does."""
        if self.linear:
            return self.proj_in_plus(residual.flatten(2).transpose(1, 2))
        return self.proj_in_plus(residual).flatten(2).transpose(1, 2)


class PixelAttention(nn.Module):
    """All PACA weights of one checkpoint, keyed by ComfyUI output-block index."""

    def __init__(self, layout: PASDLayout, variant: str, ops: Any) -> None:
        super().__init__()
        linear = bool(layout.config.get("use_linear_projection"))
        self.variant = variant
        self.layers = nn.ModuleDict()
        for out in layout.up_layers():
            context = out.pixel_attention_width(variant)
            if context is None:
                continue
            if variant == "pasd":
                self.layers[str(out.output_block)] = attention.SpatialTransformer(
                    out.channels, out.heads, out.channels // out.heads, depth=out.depth, context_dim=context,
                    disable_self_attn=out.only_cross_attention, use_linear=linear, operations=ops)
            else:
                self.layers[str(out.output_block)] = LightPixelLayer(out.channels, context, out.heads, out.depth,
                                                                     linear, ops)

    def layer(self, output_block: int) -> nn.Module | None:
        return self.layers[str(output_block)] if str(output_block) in self.layers else None


# diffusers names of the PACA weights in unet/ → this module's names
_PACA_KEYS = (
    (re.compile(r"up_blocks\.(\d+)\.pixel_attentions\.(\d+)\.(.+)"), "{}.{}"),
    (re.compile(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(proj_in_plus\..+)"), "{}.{}"),
    (re.compile(r"up_blocks\.(\d+)\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.((?:norm2|attn2)_plus\..+)"),
     "{}.blocks.{}.{}"),
)


def paca_state(unet_state: dict[str, Any], layout: PASDLayout) -> dict[str, Any]:
    """The PACA tensors of a PASD unet/ state dict, renamed to PixelAttention's keys (the SD UNet's are dropped)."""
    index = {(o.block, o.layer): o.output_block for o in layout.up_layers()}
    state = {}
    for key, tensor in unet_state.items():
        for pattern, target in _PACA_KEYS:
            found = pattern.fullmatch(key)
            if found:
                block, layer, *rest = found.groups()
                state["layers." + target.format(index[int(block), int(layer)], *rest)] = tensor
                break
    return state


def load_strictly(module: nn.Module, state: dict[str, Any], source: Path, assign: bool = False) -> None:
    result = module.load_state_dict(state, strict=False, assign=assign)
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(f"{source} does not fit its config.json: {len(result.missing_keys)} missing weights (e.g. "
                         f"{result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected "
                         f"(e.g. {result.unexpected_keys[:3]}).")


def pixel_attention_patcher(folder: str, disable_dynamic: bool = False, unet_state: dict[str, Any] | None = None,
                            layout: PASDLayout | None = None) -> Any:
    """PACA of a PASD checkpoint folder held by a host patcher, as core's model-patch loaders hold theirs: the patcher
    first, then the weights, assigned (left memory-mapped) when the patcher is dynamic. Also the patcher's
    `cached_patcher_init` factory, which ComfyUI 0.38 calls to rebuild it (MultiGPU, non-dynamic copies)."""
    folder_path = Path(folder)
    unet_state = unet_state if unet_state is not None else read_part(folder_path / "unet")
    layout = layout or PASDLayout(read_config(folder_path / "unet" / "config.json"))
    variant = detect_variant(set(unet_state), folder_path / "unet")
    pixel_attention = PixelAttention(layout, variant, groups_ops(comfy.ops.manual_cast, norm_groups(layout)))
    patcher_class = comfy.model_patcher.ModelPatcher if disable_dynamic else host.patcher_class()
    patcher = patcher_class(pixel_attention, load_device=comfy.model_management.get_torch_device(),
                            offload_device=comfy.model_management.unet_offload_device())
    dynamic = host.is_dynamic(patcher)
    load_strictly(pixel_attention, paca_state(unet_state, layout), folder_path / "unet", assign=dynamic)
    if not dynamic:  # stored as ComfyUI would store a UNet here; manual_cast casts to the sampling dtype as it runs
        weight_dtype = next(iter(unet_state.values())).dtype
        pixel_attention.to(dtype=comfy.model_management.unet_dtype(model_params=-1, weight_dtype=weight_dtype))
    pixel_attention.eval().requires_grad_(False)
    patcher.cached_patcher_init = (pixel_attention_patcher, (str(folder),))
    return patcher


def load_adapter(folder: str | Path) -> PASDAdapter:
    """The adapter of a PASD checkpoint folder (unet/ + controlnet/) that nodes.check_adapter_checkpoint accepted,
    its two parts held by host patchers."""
    folder = Path(folder)
    family = checkpoint_family(folder)
    layout = PASDLayout(read_config(folder / "unet" / "config.json"))
    patcher = pixel_attention_patcher(str(folder), unet_state=read_part(folder / "unet"), layout=layout)
    control = build_control(read_config(folder / "controlnet" / "config.json"), read_part(folder / "controlnet"),
                            folder / "controlnet")
    return PASDAdapter(family, patcher.model.variant, layout, control, patcher.model, patcher,
                       "/".join(folder.parts[-2:]))
