"""The one description of a PASD UNet's architecture, read from its diffusers config.json: the levels, the skip
connection each up-block layer concatenates, its heads, and where the pixel-aware attention (PACA) sits.

models/unet.py builds the diffusers PASD UNet from it; the native ComfyUI adapter (nodes/native/) builds PACA for
ComfyUI's own UNet from it and maps each layer to ComfyUI's output blocks. Facts from DESIGN.md and the official
code: up block i mirrors down level n-1-i and has layers_per_block + 1 layers; the last layer's skip comes from the
level above (as diffusers' up blocks); `pasd` attends in every layer, with key/value width = the skip's channels
where the level has text attention and the block's own channels where it has none; `pasd_light` attends only inside
the text attention's transformers, to the skip's residual.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..model_family import family_of

VARIANTS = ("pasd", "pasd_light")


def per_level(value: Any, count: int) -> list:
    """A per-level config entry: a list as it is, a single value repeated."""
    return list(value) if isinstance(value, (list, tuple)) else [value] * count


@dataclass(frozen=True)
class UpLayer:
    """One up-block layer (= one ComfyUI output block) and what PACA needs to know about it."""

    block: int  # index in diffusers' up_blocks
    layer: int  # index of the resnet within that up block
    output_block: int  # index in ComfyUI's output_blocks (they count the layers in order)
    channels: int  # the block's out channels (PACA's query width)
    skip_channels: int  # channels of the skip it concatenates (= of its ControlNet residual)
    heads: int
    depth: int  # transformer blocks per attention of this level
    has_text_attention: bool
    only_cross_attention: bool

    def pixel_attention_width(self, variant: str) -> int | None:
        """The key/value width of this layer's PACA in `variant`, or None where the variant has none here."""
        if variant == "pasd":
            return self.skip_channels if self.has_text_attention else self.channels
        return self.skip_channels if self.has_text_attention else None


@dataclass(frozen=True)
class PASDLayout:
    """The architecture facts of one PASD UNet (or its ControlNet, for the down side), from its config.json."""

    config: Mapping[str, Any]

    @property
    def family(self) -> str:
        return family_of(self.config)

    @property
    def levels(self) -> int:
        return len(self.config["down_block_types"])

    def heads(self) -> list[int]:
        """Attention heads per level (diffusers' SD1.5 configs store heads in attention_head_dim)."""
        return [int(h) for h in per_level(self.config.get("num_attention_heads")
                                          or self.config["attention_head_dim"], self.levels)]

    def depths(self) -> list[int]:
        return [int(d) for d in per_level(self.config.get("transformer_layers_per_block", 1), self.levels)]

    def has_attention(self) -> list[bool]:
        """Per down level: whether it has text attention."""
        return [kind.startswith("CrossAttn") for kind in self.config["down_block_types"]]

    def up_layers(self) -> list[UpLayer]:
        """Every up-block layer, in order."""
        channels = list(self.config["block_out_channels"])
        layers_per_level = per_level(self.config["layers_per_block"], self.levels)
        only_cross = per_level(self.config.get("only_cross_attention", False), self.levels)
        heads, depths, down_attention = self.heads(), self.depths(), self.has_attention()
        up_types = self.config.get("up_block_types")  # a ControlNet config has none: the down side mirrors
        layers, index = [], 0
        for block in range(self.levels):
            level = self.levels - 1 - block
            attention = up_types[block].startswith("CrossAttn") if up_types else down_attention[level]
            count = int(layers_per_level[level]) + 1
            previous = channels[max(level - 1, 0)]
            for layer in range(count):
                skip = previous if layer == count - 1 else channels[level]
                layers.append(UpLayer(block, layer, index, channels[level], skip, heads[level], depths[level],
                                      attention, bool(only_cross[level])))
                index += 1
        return layers

    def up_block(self, block: int) -> list[UpLayer]:
        return [layer for layer in self.up_layers() if layer.block == block]
