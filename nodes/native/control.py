"""PASD's ControlNet as a ComfyUI ControlNet, which also hands its own scaled residuals to PACA.

ComfyUI's sampler calls `get_control(x, t, cond, batched_number, transformer_options)` with the very
transformer_options dict it then passes to the UNet (comfy/samplers.py, _calc_cond_batch), and the UNet's output
blocks pop the merged residuals before any output-block patch sees them. So PASDControl puts its own residuals,
after the strength (= conditioning_scale) and before any other ControlNet's are added, under RESIDUALS in that
dict: PACA attends to PASD's residual alone, as in the official model, even when the user chains more ControlNets.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import comfy.cldm.cldm
import comfy.controlnet
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.utils
import torch
from comfy.ldm.modules.diffusionmodules import openaimodel

# ComfyUI's own nodes.py (this pack's nodes/ is imported as a subpackage of the custom node, never as `nodes`)
from nodes import ControlNetApplyAdvanced

from ...pasd_core.errors import ModelError
from ...pasd_core.models.layout import PASDLayout
from ...pasd_core.weights.pasd_folder import component_weights
from ...pasd_core.weights.reader import read_config
from .. import host
from .ldm import groups_ops, ldm_unet_config, norm_groups

RESIDUALS = "pasd_pixel_residuals"  # transformer_options key: this call's PixelResiduals


class PixelResiduals:
    """One UNet call's PASD residuals (the ControlNet outputs that ComfyUI adds to the skips), by output block,
    and what PACA computes from them during that call."""

    def __init__(self, outputs: list[torch.Tensor | None]) -> None:
        self.outputs = list(outputs)  # a copy: the UNet pops the list it is given
        self.cache: dict[Any, torch.Tensor] = {}

    def for_output_block(self, index: int) -> torch.Tensor | None:
        """Output block i concatenates the skip of input block n-1-i, whose residual is outputs[n-1-i]."""
        position = len(self.outputs) - 1 - index
        return self.outputs[position] if 0 <= position < len(self.outputs) else None


def add_controls(own: dict | None, previous: dict | None) -> dict | None:
    """Residuals of two ControlNets summed position by position (ComfyUI's control_merge, strengths already in)."""
    if own is None or previous is None:
        return own if previous is None else previous
    merged = {}
    for key in ("input", "middle", "output"):
        values = list(own.get(key, []))
        for i, value in enumerate(previous.get(key, [])):
            if i >= len(values):
                values.append(value)
            elif value is not None:
                values[i] = value if values[i] is None else value + values[i]
        merged[key] = values
    return merged


class PASDControl(comfy.controlnet.ControlNet):
    """ComfyUI's ControlNet that also hands its own scaled residuals to PACA through transformer_options."""

    def get_control(self, x_noisy: Any, t: Any, cond: dict, batched_number: int,
                    transformer_options: dict) -> dict | None:
        previous = self.previous_controlnet
        theirs = None
        if previous is not None:
            theirs = previous.get_control(x_noisy, t, cond, batched_number, transformer_options)
        self.previous_controlnet = None  # so the base class returns PASD's residuals alone
        try:
            own = super().get_control(x_noisy, t, cond, batched_number, transformer_options)
        finally:
            self.previous_controlnet = previous
        transformer_options[RESIDUALS] = None if own is None else PixelResiduals(own["output"])
        return add_controls(own, theirs)

    def pre_run(self, model: Any, percent_to_timestep_function: Any) -> None:
        """Start of a sampling: nothing kept from one that was interrupted before its cleanup."""
        self._forget_embedding()
        super().pre_run(model, percent_to_timestep_function)

    def cleanup(self) -> None:
        """End of a sampling: the embedding kept for its control image goes too."""
        self._forget_embedding()
        super().cleanup()

    def _forget_embedding(self) -> None:
        hint_block = getattr(self.control_model, "input_hint_block", None)
        if isinstance(hint_block, EmbeddedOnce):
            hint_block.forget()

    def copy(self) -> "PASDControl":
        copied = PASDControl(None, global_average_pooling=self.global_average_pooling,
                             load_device=self.load_device, manual_cast_dtype=self.manual_cast_dtype)
        copied.control_model = self.control_model
        copied.control_model_wrapped = self.control_model_wrapped
        self.copy_to(copied)
        return copied


class EmbeddedOnce(openaimodel.TimestepEmbedSequential):
    """PASD's conditioning embedding, computed once per control image rather than at every step: ComfyUI's ControlNet
    hands every step of a sampling the same `cond_hint` tensor, and the embedding reads that alone (convolutions: no
    timestep, no text), so its output is reused while the very same tensor comes back. Kept until `forget` (PASD
    Control's cleanup, at the end of each sampling), so a new image or batch is always embedded anew."""

    def __init__(self, *layers: torch.nn.Module) -> None:
        super().__init__(*layers)
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (the hint, its embedding)

    def forward(self, hint: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self._last is not None and self._last[0] is hint:  # held here, so the identity cannot be reused
            return self._last[1]
        embedded = super().forward(hint, *args, **kwargs)
        self._last = (hint, embedded)
        return embedded

    def forget(self) -> None:
        self._last = None


def _hint_block(layout: PASDLayout, channels: list[int], ops: Any, dtype: torch.dtype, device: Any) -> Any:
    """PASD's conditioning embedding (conv_in, blocks, conv_out; SiLU between) as ComfyUI's input_hint_block, embedded
    once per control image."""
    conv = functools.partial(ops.conv_nd, 2, kernel_size=3, padding=1, dtype=dtype, device=device)
    layers = [conv(layout.config["conditioning_channels"], channels[0]), torch.nn.SiLU()]
    for channels_in, channels_out in zip(channels[:-1], channels[1:], strict=False):
        layers += [conv(channels_in, channels_in), torch.nn.SiLU(),
                   conv(channels_in, channels_out, stride=2), torch.nn.SiLU()]
    layers.append(conv(channels[-1], layout.config["block_out_channels"][0]))
    return EmbeddedOnce(*layers)


def _ldm_keys(ldm_config: dict[str, Any], state: dict[str, torch.Tensor], hint_convs: int) -> dict[str, str]:
    """diffusers ControlNetModel key → ComfyUI cldm.ControlNet key."""
    keys = dict(comfy.utils.unet_to_diffusers(ldm_config))
    keys.update({f"controlnet_mid_block.{w}": f"middle_block_out.0.{w}" for w in ("weight", "bias")})
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("controlnet_down_blocks.")}
    for i in blocks:
        keys.update({f"controlnet_down_blocks.{i}.{w}": f"zero_convs.{i}.0.{w}" for w in ("weight", "bias")})
    for w in ("weight", "bias"):
        keys[f"controlnet_cond_embedding.conv_in.{w}"] = f"input_hint_block.0.{w}"
        for i in range(hint_convs):
            keys[f"controlnet_cond_embedding.blocks.{i}.{w}"] = f"input_hint_block.{2 * (i + 1)}.{w}"
        keys[f"controlnet_cond_embedding.conv_out.{w}"] = f"input_hint_block.{2 * (hint_convs + 1)}.{w}"
    return keys


def read_part(folder: Path) -> dict[str, Any]:
    """One part's weights read as ComfyUI reads a model file (comfy.utils.load_torch_file: safetensors memory-mapped,
    a pickle only with weights_only)."""
    return comfy.utils.load_torch_file(str(component_weights(folder)), safe_load=True)


def build_control(config: dict[str, Any], state: dict[str, torch.Tensor], source: Path,
                  disable_dynamic: bool = False) -> Any:
    """ComfyUI's ControlNet (cldm) for a PASD controlnet/ folder's config and weights, ready for the control path."""
    layout = PASDLayout(config)
    ldm_config = ldm_unet_config(layout)
    model_management = comfy.model_management
    dtype = model_management.unet_dtype(model_params=-1, weight_dtype=next(iter(state.values())).dtype)
    load_device, offload_device = model_management.get_torch_device(), model_management.unet_offload_device()
    manual_cast_dtype = model_management.unet_manual_cast(dtype, load_device)
    ops = groups_ops(comfy.ops.pick_operations(dtype, manual_cast_dtype, disable_fast_fp8=True), norm_groups(layout))
    arguments = {k: v for k, v in ldm_config.items() if k != "out_channels"}
    model = comfy.cldm.cldm.ControlNet(hint_channels=config["conditioning_channels"], operations=ops, dtype=dtype,
                            device=offload_device, **arguments)
    hint_channels = list(config["conditioning_embedding_out_channels"])
    model.input_hint_block = _hint_block(layout, hint_channels, ops, dtype, offload_device)
    keys = _ldm_keys(ldm_config, state, 2 * (len(hint_channels) - 1))
    bgr = config.get("controlnet_conditioning_channel_order") == "bgr"
    # the wrapper makes the host patcher (core's ControlNet: CoreModelPatcher on 0.38) before the weights go in,
    # so they are assigned (left memory-mapped) when it is dynamic, as core's loaders do
    control = PASDControl(model, load_device=load_device, manual_cast_dtype=manual_cast_dtype,
                          preprocess_image=(lambda hint: torch.flip(hint, dims=[1])) if bgr else (lambda hint: hint))
    if disable_dynamic:  # the non-dynamic copy ComfyUI 0.38 asks cached_patcher_init for
        control.control_model_wrapped = comfy.model_patcher.ModelPatcher(model, load_device=load_device,
                                                                         offload_device=offload_device)
    # to_rgbs only feed a training loss (DESIGN.md): dropped
    renamed = {keys.get(k, k): v for k, v in state.items() if ".to_rgbs." not in k}
    result = model.load_state_dict(renamed, strict=False, assign=host.is_dynamic(control.control_model_wrapped))
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(f"{source} does not fit its config.json as a ControlNet: {len(result.missing_keys)} missing "
                         f"weights (e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected "
                         f"(e.g. {result.unexpected_keys[:3]}).")
    model.eval().requires_grad_(False)
    control.control_model_wrapped.cached_patcher_init = (control_patcher, (str(source.parent),))
    return control


def control_patcher(folder: str, disable_dynamic: bool = False) -> Any:
    """The ControlNet of a PASD checkpoint folder, as the patcher ComfyUI 0.38 rebuilds from `cached_patcher_init`
    (MultiGPU, non-dynamic copies)."""
    control_folder = Path(folder) / "controlnet"
    return build_control(read_config(control_folder / "config.json"), read_part(control_folder), control_folder,
                         disable_dynamic).control_model_wrapped


def add_control(control: PASDControl, image: torch.Tensor, strength: float, positive: list,
                negative: list) -> tuple[list, list]:
    """Both conditionings with the PASD control on `image` ([B, H, W, 3]) for the whole schedule, by core's Apply
    ControlNet node (which chains any ControlNet already there)."""
    return ControlNetApplyAdvanced().apply_controlnet(positive, negative, control, image, strength, 0.0, 1.0)
