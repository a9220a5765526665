"""ComfyUI (LDM) layouts derived from a PASD checkpoint's own diffusers config.json files.

ComfyUI's model detection matches configs against tables of known models, which rejects every size it does not
list (and the tiny test models); the PASD folder states its architecture, so the LDM settings are derived from
it here, in one place: the UNet levels seen by PACA, the ControlNet's constructor arguments, and where each
up-block layer of diffusers sits among ComfyUI's output blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..pasd_core.errors import ModelError
from ..pasd_core.model_family import SDXL, family_of

COMFY_GROUPS = 32  # ComfyUI's ResBlock and SpatialTransformer build GroupNorm(32, ...) whatever the model says


def _per_level(value: Any, count: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * count


@dataclass(frozen=True)
class OutputLayer:
    """One ComfyUI output block (= one diffusers up-block layer) and what PACA needs to know about it."""

    block: int  # index in diffusers' up_blocks
    layer: int  # index of the resnet within that up block
    output_block: int  # index in ComfyUI's output_blocks
    channels: int  # the block's out channels (PACA's query width)
    skip_channels: int  # channels of the skip it concatenates (= of its ControlNet residual)
    heads: int
    depth: int  # transformer blocks per attention of this level
    has_text_attention: bool


@dataclass(frozen=True)
class PASDLayout:
    """The architecture facts of one PASD checkpoint, from its unet/config.json."""

    config: Mapping[str, Any]

    @property
    def family(self) -> str:
        return family_of(self.config)

    @property
    def levels(self) -> int:
        return len(self.config["down_block_types"])

    @property
    def groups(self) -> int:
        return int(self.config.get("norm_num_groups") or COMFY_GROUPS)

    def heads(self) -> list[int]:
        """Attention heads per level (diffusers' SD1.5 configs store heads in attention_head_dim)."""
        return [int(h) for h in _per_level(self.config.get("num_attention_heads")
                                           or self.config["attention_head_dim"], self.levels)]

    def depths(self) -> list[int]:
        return [int(d) for d in _per_level(self.config.get("transformer_layers_per_block", 1), self.levels)]

    def has_attention(self) -> list[bool]:
        return [kind.startswith("CrossAttn") for kind in self.config["down_block_types"]]

    def output_layers(self) -> list[OutputLayer]:
        """Every diffusers up-block layer with its ComfyUI output-block index (ComfyUI counts them in order)."""
        channels = list(self.config["block_out_channels"])
        per_level = _per_level(self.config["layers_per_block"], self.levels)
        heads, depths, attention = self.heads(), self.depths(), self.has_attention()
        layers, index = [], 0
        for block in range(self.levels):
            level = self.levels - 1 - block  # up block i mirrors down level n-1-i
            count = int(per_level[level]) + 1
            out_channels = channels[level]
            previous = channels[max(level - 1, 0)]  # as diffusers: the last layer's skip comes from the level above
            for layer in range(count):
                skip = previous if layer == count - 1 else out_channels
                layers.append(OutputLayer(block, layer, index, out_channels, skip, heads[level], depths[level],
                                          attention[level]))
                index += 1
        return layers

    def attention_shape(self) -> dict[str, int]:
        """ComfyUI's way of stating the head layout: one head count, or one head width, for every level."""
        channels, heads = list(self.config["block_out_channels"]), self.heads()
        if len(set(heads)) == 1:
            return {"num_heads": heads[0], "num_head_channels": -1}
        widths = {c // h for c, h in zip(channels, heads, strict=True)}
        if len(widths) == 1:
            return {"num_heads": -1, "num_head_channels": widths.pop()}
        raise ModelError(f"this PASD checkpoint's attention layout ({heads} heads for {channels} channels) has "
                         "neither one head count nor one head width, which ComfyUI's UNet cannot express.")

    def ldm_unet_config(self) -> dict[str, Any]:
        """The keyword arguments of ComfyUI's UNetModel (and ControlNet) for this UNet."""
        config = self.config
        channels = list(config["block_out_channels"])
        model_channels = channels[0]
        if any(c % model_channels for c in channels):
            raise ModelError(f"block_out_channels {channels} are not multiples of the first: not an SD UNet layout.")
        per_level = [int(n) for n in _per_level(config["layers_per_block"], self.levels)]
        depths, attention = self.depths(), self.has_attention()
        depth_in = [d if a else 0 for d, a, n in zip(depths, attention, per_level, strict=True) for _ in range(n)]
        depth_out = [d if a else 0 for d, a, n in zip(depths, attention, per_level, strict=True)
                     for _ in range(n + 1)]
        unet = {
            "image_size": 32, "in_channels": config["in_channels"],
            "out_channels": config.get("out_channels", config["in_channels"]),  # a ControlNet config has none
            "model_channels": model_channels, "num_res_blocks": per_level,
            "channel_mult": [c // model_channels for c in channels],
            "transformer_depth": depth_in, "transformer_depth_output": depth_out,
            "transformer_depth_middle": depths[-1], "context_dim": config["cross_attention_dim"],
            "use_linear_in_transformer": bool(config.get("use_linear_projection")),
            "use_spatial_transformer": True, "legacy": False, "use_checkpoint": False,
            "adm_in_channels": None, "num_classes": None, **self.attention_shape(),
        }
        if self.family == SDXL:
            unet.update(adm_in_channels=config["projection_class_embeddings_input_dim"], num_classes="sequential")
        return unet


def groups_ops(operations: type, groups: int) -> type:
    """`operations` whose GroupNorm uses `groups` groups, for checkpoints whose config says other than 32."""
    if groups == COMFY_GROUPS:
        return operations

    class GroupsOps(operations):
        class GroupNorm(operations.GroupNorm):
            def __init__(self, num_groups: int, num_channels: int, *args: Any, **kwargs: Any) -> None:
                super().__init__(groups, num_channels, *args, **kwargs)

    return GroupsOps
