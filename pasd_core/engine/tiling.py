"""Latent tiles and their blending weights, laid out exactly as the official PASD pipeline does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LatentTile:
    top: int
    left: int
    size: int

    def rows(self) -> slice:
        return slice(self.top, self.top + self.size)

    def cols(self) -> slice:
        return slice(self.left, self.left + self.size)


def needs_tiling(height: int, width: int, tile_size: int) -> bool:
    """Official rule: tile only when the latent area exceeds tile_size²."""
    return height * width > tile_size * tile_size


def _offsets(extent: int, size: int, overlap: int) -> list[int]:
    """Start of each tile along one axis: stride size - overlap, the last one clamped to the edge."""
    if size <= overlap:  # the stride would be zero or negative: no tile would ever advance
        raise ValueError(f"latent tiles of {size} do not advance with an overlap of {overlap}")
    offsets, end = [], 0
    while end < extent:
        start = len(offsets) * (size - overlap)
        offsets.append(start)
        end = start + size
    offsets[-1] = extent - size
    return offsets


def latent_tiles(height: int, width: int, tile_size: int, overlap: int) -> list[LatentTile]:
    """Square tiles covering a height×width latent, in the official order (x outer, y inner)."""
    size = min(tile_size, height, width)
    return [
        LatentTile(top, left, size)
        for left in _offsets(width, size, overlap)
        for top in _offsets(height, size, overlap)
    ]


def gaussian_weights(size: int) -> torch.Tensor:
    """[size, size] float64 blend weights (variance 0.01).

    The official code centres x at (size-1)/2 but y at size/2; kept for parity.
    """
    # deferred: the work-limit checks use this module's tile layout before anything loads
    import numpy as np
    import torch

    var = 0.01

    def profile(centre: float) -> list[float]:
        # element by element with numpy scalars, in the official operation order, for bitwise parity
        return [np.exp(-(x - centre) * (x - centre) / (size * size) / (2 * var)) / np.sqrt(2 * np.pi * var)
                for x in range(size)]

    return torch.from_numpy(np.outer(profile(size / 2), profile((size - 1) / 2)))
