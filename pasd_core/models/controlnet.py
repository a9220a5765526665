"""PASD's ControlNet: diffusers' ControlNetModel with PASD's conditioning embedding.

The published checkpoints add two things to the embedding: `to_rgbs` (three 3×3 convs that only
feed a training loss, so inference never runs them) and, for the `*_rrdb` variants, a
`preprocesser` of two RRDB blocks after `conv_in`. Everything else is the stock model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel
from torch import nn

from .rrdb import RRDB

_RRDB_BLOCKS = 2  # the published *_rrdb checkpoints stack two


class PASDConditioningEmbedding(nn.Module):
    """Turns the control image into a latent-resolution feature map added to the ControlNet's input."""

    def __init__(self, embedding_channels: int, image_channels: int, block_out_channels: tuple[int, ...],
                 with_rgb_heads: bool, with_rrdb: bool) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(image_channels, block_out_channels[0], kernel_size=3, padding=1)
        if with_rrdb:
            width = block_out_channels[0]
            self.preprocesser = nn.Sequential(*(RRDB(width, width) for _ in range(_RRDB_BLOCKS)))
        self.blocks = nn.ModuleList()
        for channels_in, channels_out in zip(block_out_channels[:-1], block_out_channels[1:], strict=False):
            self.blocks.append(nn.Conv2d(channels_in, channels_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1, stride=2))
        if with_rgb_heads:  # kept only so the published weights load strictly; never evaluated
            self.to_rgbs = nn.ModuleList(nn.Conv2d(c, 3, kernel_size=3, padding=1) for c in block_out_channels[1:])
        self.conv_out = nn.Conv2d(block_out_channels[-1], embedding_channels, kernel_size=3, padding=1)
        self.reused: torch.Tensor | None = None

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        embedding = F.silu(self.conv_in(image))
        if hasattr(self, "preprocesser"):
            embedding = self.preprocesser(embedding)
        for block in self.blocks:
            embedding = F.silu(block(embedding))
        return self.conv_out(embedding)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.embed(image) if self.reused is None else self.reused


class PASDControlNet(ControlNetModel):
    """ControlNetModel whose condition embedding can be computed once and reused for every step."""

    @classmethod
    def from_pasd_config(cls, config: dict[str, Any], state_keys: set[str]) -> "PASDControlNet":
        """Build (on the current default device) from a published config.json and the weights' key names."""
        stock_config = {k: v for k, v in config.items() if k not in ("return_rgbs", "use_rrdb")}
        model = cls.from_config(stock_config)
        model.controlnet_cond_embedding = PASDConditioningEmbedding(
            embedding_channels=model.config.block_out_channels[0],
            image_channels=model.config.conditioning_channels,
            block_out_channels=tuple(model.config.conditioning_embedding_out_channels),
            with_rgb_heads=any(k.startswith("controlnet_cond_embedding.to_rgbs.") for k in state_keys),
            with_rrdb=any(k.startswith("controlnet_cond_embedding.preprocesser.") for k in state_keys),
        )
        return model

    def embed_condition(self, image: torch.Tensor) -> torch.Tensor:
        """The condition embedding of a control image in [0, 1]; constant during sampling."""
        if self.config.controlnet_conditioning_channel_order == "bgr":
            image = torch.flip(image, dims=[1])
        return self.controlnet_cond_embedding.embed(image)

    def forward(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor,
                controlnet_cond: torch.Tensor | None = None, *args: Any,
                condition_embedding: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Stock forward; with `condition_embedding` the embedding network is skipped."""
        if condition_embedding is None:
            return super().forward(sample, timestep, encoder_hidden_states, controlnet_cond, *args, **kwargs)
        self.controlnet_cond_embedding.reused = condition_embedding
        try:
            return super().forward(sample, timestep, encoder_hidden_states, condition_embedding, *args, **kwargs)
        finally:
            self.controlnet_cond_embedding.reused = None
