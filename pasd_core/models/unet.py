"""PASD's UNet: a stock SD UNet2DConditionModel plus pixel-aware cross attention (PACA).

In every up-block layer the ControlNet residual of that layer's skip connection (already scaled by
conditioning_scale) is flattened to tokens and attended to (layout.py says where, and how wide):
- `pasd`: one extra Transformer2DModel per layer at `up_blocks.{i}.pixel_attentions.{j}`, run
  after the layer's text attention (CrossAttnUpBlock2D) or after its resnet (UpBlock2D);
- `pasd_light`: inside the CrossAttnUpBlock2D transformers, `proj_in_plus` projects the residual
  and each transformer block gets `norm2_plus` + `attn2_plus` after its text attention.
diffusers' own up-block code runs unchanged; the residuals reach PACA through `PixelLayer.bind`.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn

from .layout import VARIANTS, PASDLayout


def _tokens(residual: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] → [B, H·W, C]."""
    batch, channels, height, width = residual.shape
    return residual.permute(0, 2, 3, 1).reshape(batch, height * width, channels)


class PixelAttentionLayer:
    """`pasd`: applies `attention` to the output of `anchor` (the layer's last module), via a forward hook."""

    def __init__(self, anchor: nn.Module, attention: Transformer2DModel) -> None:
        self.attention = attention
        self.tokens: torch.Tensor | None = None
        anchor.register_forward_hook(self._after_anchor)

    def bind(self, residual: torch.Tensor | None) -> None:
        self.tokens = None if residual is None else _tokens(residual)

    def _after_anchor(self, module: nn.Module, args: Any, output: Any) -> Any:
        if self.tokens is None:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = self.attention(hidden, encoder_hidden_states=self.tokens, return_dict=False)[0]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class LightPixelLayer:
    """`pasd_light`: projects the residual with `proj_in_plus` and hands the tokens to each block."""

    def __init__(self, transformer: Transformer2DModel, residual_channels: int, heads: int, head_dim: int) -> None:
        self.transformer = transformer
        if transformer.use_linear_projection:
            transformer.proj_in_plus = nn.Linear(residual_channels, residual_channels)
        else:
            transformer.proj_in_plus = nn.Conv2d(residual_channels, residual_channels, kernel_size=1)
        for block in transformer.transformer_blocks:
            LightPixelTransformerBlock.extend(block, residual_channels, heads, head_dim)

    def bind(self, residual: torch.Tensor | None) -> None:
        tokens = None
        if residual is not None:
            project = self.transformer.proj_in_plus
            tokens = project(_tokens(residual)) if isinstance(project, nn.Linear) else _tokens(project(residual))
        for block in self.transformer.transformer_blocks:
            block.pixel_tokens = tokens


class LightPixelTransformerBlock(BasicTransformerBlock):
    """BasicTransformerBlock (layer-norm kind, as in SD1.5) with PASD-light's attention to pixel tokens."""

    pixel_tokens: torch.Tensor | None = None

    @classmethod
    def extend(cls, block: BasicTransformerBlock, residual_channels: int, heads: int, head_dim: int) -> None:
        if block.norm_type != "layer_norm" or block.pos_embed is not None or block.only_cross_attention:
            raise ValueError(f"pasd_light needs SD1.5-style transformer blocks, got norm_type={block.norm_type}")
        dim = heads * head_dim
        block.__class__ = cls  # same modules and state-dict keys, plus the two below
        block.norm2_plus = nn.LayerNorm(dim)
        block.attn2_plus = Attention(query_dim=dim, cross_attention_dim=residual_channels, heads=heads,
                                     dim_head=head_dim, upcast_attention=block.attn2.upcast_attention)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        hidden_states = self.attn1(self.norm1(hidden_states), attention_mask=attention_mask) + hidden_states
        hidden_states = self.attn2(self.norm2(hidden_states), encoder_hidden_states=encoder_hidden_states,
                                   attention_mask=encoder_attention_mask) + hidden_states
        if self.pixel_tokens is not None:
            hidden_states = self.attn2_plus(self.norm2_plus(hidden_states),
                                            encoder_hidden_states=self.pixel_tokens) + hidden_states
        return self.ff(self.norm3(hidden_states)) + hidden_states


class PASDUNet(UNet2DConditionModel):
    """UNet2DConditionModel whose up blocks also attend to the ControlNet residuals."""

    pixel_layers: list[list[PixelAttentionLayer | LightPixelLayer]]
    variant: str

    @classmethod
    def from_pasd_config(cls, config: dict[str, Any], variant: str) -> "PASDUNet":
        """Build (on the current default device) from a published unet/config.json."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown PASD variant {variant!r}; expected one of {VARIANTS}")
        model = cls.from_config(config)
        model.variant = variant
        model.pixel_layers = [model._add_pixel_layers(i, block) for i, block in enumerate(model.up_blocks)]
        return model

    def _add_pixel_layers(self, index: int, block: nn.Module) -> list:
        config = self.config
        layers = PASDLayout(config).up_block(index)
        if len(layers) != len(block.resnets):
            raise ValueError(f"up block {index} has {len(block.resnets)} layers, its config says {len(layers)}")
        if self.variant == "pasd_light":
            if not layers[0].has_text_attention:
                return []
            return [LightPixelLayer(attention, layer.skip_channels, layer.heads, layer.channels // layer.heads)
                    for attention, layer in zip(block.attentions, layers, strict=True)]
        block.pixel_attentions = nn.ModuleList(
            Transformer2DModel(layer.heads, layer.channels // layer.heads, in_channels=layer.channels,
                               num_layers=layer.depth, cross_attention_dim=layer.pixel_attention_width(self.variant),
                               norm_num_groups=config.norm_num_groups,
                               use_linear_projection=config.use_linear_projection,
                               only_cross_attention=layer.only_cross_attention,
                               upcast_attention=config.upcast_attention)
            for layer in layers
        )
        # after the layer's text attention, or its resnet where the level has none
        anchors = block.attentions if layers[0].has_text_attention else block.resnets
        return [PixelAttentionLayer(anchor, attention)
                for anchor, attention in zip(anchors, block.pixel_attentions, strict=True)]

    def forward(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, *args: Any,
                down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None, **kwargs: Any) -> Any:
        self._bind(down_block_additional_residuals)
        try:
            return super().forward(sample, timestep, encoder_hidden_states, *args,
                                   down_block_additional_residuals=down_block_additional_residuals, **kwargs)
        finally:
            self._bind(None)

    def _bind(self, residuals: tuple[torch.Tensor, ...] | None) -> None:
        """Give each up-block layer the residual of the skip it concatenates (popped from the end, as the skips)."""
        remaining = list(residuals) if residuals is not None else None
        for block, layers in zip(self.up_blocks, self.pixel_layers, strict=True):
            taken = None
            if remaining is not None:
                taken, remaining = remaining[-len(block.resnets):], remaining[: -len(block.resnets)]
            for j, layer in enumerate(layers):
                layer.bind(None if taken is None else taken[-1 - j])
