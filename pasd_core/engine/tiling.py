"""Latent tiles and their blending weights: laid out exactly as the official PASD pipeline does, or evenly (fast mode).

The official layout keeps every tile square, tile_size or the latent's short side if smaller, and clamps the last
one to the edge, so the last two overlap by whatever is left (a 180 tile at 0 and 76 on a 256 latent: 104 latents of
overlap where 8 were asked). The even one lays the fewest tiles of at most tile_size along each axis (as many as the
official layout on a square latent; fewer on a long one, whose tiles may be rectangles) and shrinks them until
neighbours overlap by exactly the asked overlap (132 at 0 and 124): less UNet work, other numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..params import FAST

if TYPE_CHECKING:
    import torch

OFFICIAL, EVEN = "official", "even"


def layout_for(settings: Mapping[str, Any]) -> str:
    """The tile layout of a run: even in the fast mode (params: speed), the official one otherwise."""
    return EVEN if settings.get("speed") == FAST else OFFICIAL


@dataclass(frozen=True)
class LatentTile:
    top: int
    left: int
    height: int
    width: int

    def rows(self) -> slice:
        return slice(self.top, self.top + self.height)

    def cols(self) -> slice:
        return slice(self.left, self.left + self.width)

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width


def needs_tiling(height: int, width: int, tile_size: int) -> bool:
    """Official rule: tile only when the latent area exceeds tile_size²."""
    return height * width > tile_size * tile_size


def _official_spans(extent: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """(start, length) of each tile along one axis: stride size - overlap, the last one clamped to the edge."""
    if size <= overlap:  # the stride would be zero or negative: no tile would ever advance
        raise ValueError(f"latent tiles of {size} do not advance with an overlap of {overlap}")
    offsets, end = [], 0
    while end < extent:
        start = len(offsets) * (size - overlap)
        offsets.append(start)
        end = start + size
    offsets[-1] = extent - size
    return [(start, size) for start in offsets]


def tiles_along(extent: int, tile_size: int, overlap: int) -> int:
    """How many tiles either layout puts along an axis of `extent` latents."""
    if extent <= tile_size:
        return 1
    return -(-(extent - overlap) // (tile_size - overlap))


def _even_spans(extent: int, tile_size: int, overlap: int) -> list[tuple[int, int]]:
    """(start, length) of each tile along one axis: as many tiles as the official layout, lengths differing by at most
    one, neighbours overlapping by exactly `overlap`, the last one ending at the edge."""
    count = tiles_along(extent, tile_size, overlap)
    covered = extent + (count - 1) * overlap  # the tiles' lengths add up to this
    spans, start = [], 0
    for index in range(count):
        length = covered // count + (index < covered % count)
        spans.append((start, length))
        start += length - overlap
    return spans


def latent_tiles(height: int, width: int, tile_size: int, overlap: int, layout: str = OFFICIAL) -> list[LatentTile]:
    """Tiles covering a height×width latent, in the official order (x outer, y inner). Official tiles are square,
    never larger than the latent's short side."""
    if layout == OFFICIAL:
        size = min(tile_size, height, width)
        rows, cols = _official_spans(height, size, overlap), _official_spans(width, size, overlap)
    else:
        rows, cols = _even_spans(height, tile_size, overlap), _even_spans(width, tile_size, overlap)
    return [LatentTile(top, left, tile_height, tile_width)
            for left, tile_width in cols
            for top, tile_height in rows]


def gaussian_weights(height: int, width: int | None = None) -> torch.Tensor:
    """[height, width] float64 blend weights (variance 0.01); square tiles when width is None.

    The official code centres x at (size-1)/2 but y at size/2; kept for parity (and for the even layout's
    rectangles, each axis scaled by its own length).
    """
    # deferred: the work-limit checks use this module's tile layout before anything loads
    import numpy as np
    import torch

    var = 0.01
    width = height if width is None else width

    def profile(centre: float, size: int) -> list[float]:
        # element by element with numpy scalars, in the official operation order, for bitwise parity
        return [np.exp(-(x - centre) * (x - centre) / (size * size) / (2 * var)) / np.sqrt(2 * np.pi * var)
                for x in range(size)]

    return torch.from_numpy(np.outer(profile(height / 2, height), profile((width - 1) / 2, width)))
