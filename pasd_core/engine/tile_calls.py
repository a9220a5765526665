"""The latent tiles of one denoising step in as few ControlNet + UNet calls as memory allows.

Tiles of one shape (every tile of the official layout; at most four shapes in the even one) go through the networks
as one batch: each tile's guidance pair side by side, the text conditioning repeated to match. Every sample is
computed on its own (convolutions, norms and attention are per sample), so the batch changes only the last bits of
the result (kernels sum in batch-dependent orders): within the parity tolerance, not bit-identical to one tile per
call. How many tiles fit: memory.tiles_per_call, from the family's measured activations per latent pixel. An
out-of-memory error in a batched call redoes that call's tiles one per call, and the run goes on so: nothing lost.

Where it pays (batching_pays): on a GPU, where a tile's call leaves the device partly idle and every call costs
launch overhead; on a CPU only for half-precision arithmetic (bf16 matrix units want more rows). A CPU in fp32 gains
nothing (bench/bench_fast_mode.py, 4 tiles: 87.0 s batched, 87.9 s one per call), so it keeps the official loop and
its bits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ..placement import release
from . import memory
from .family import TextConditioning
from .tiling import LatentTile

# (latents, timestep, text, condition embedding) -> noise prediction: the sampler's ControlNet + UNet call
Predict = Callable[[torch.Tensor, torch.Tensor, TextConditioning, torch.Tensor], torch.Tensor]

logger = logging.getLogger(__name__)


def batching_pays(device: torch.device, compute_dtype: torch.dtype) -> bool:
    """Whether a step's tiles go through the networks together: on accelerators, and on a CPU in half precision."""
    return device.type != "cpu" or compute_dtype != torch.float32


class TileCalls:
    """One run's tiles, their condition embeddings and text, grouped into calls of at most `per_call` tiles."""

    def __init__(self, predict: Predict, device: torch.device, compute_dtype: torch.dtype, tiles: list[LatentTile],
                 text: TextConditioning, embeddings: list[torch.Tensor], one_tile_bytes: int) -> None:
        self._predict, self.device = predict, device
        self.tiles, self.text, self.embeddings = tiles, text, embeddings
        pays = batching_pays(device, compute_dtype)
        self.per_call = memory.tiles_per_call(device, one_tile_bytes, len(tiles)) if pays else 1
        self._texts: dict[int, TextConditioning] = {1: text}

    def groups(self) -> list[list[int]]:
        """Tile indices per call: tiles of one shape together, in the layout's order, `per_call` at most."""
        by_shape: dict[tuple[int, int], list[int]] = {}
        for index, tile in enumerate(self.tiles):
            by_shape.setdefault(tile.shape, []).append(index)
        return [indices[start:start + self.per_call] for indices in by_shape.values()
                for start in range(0, len(indices), self.per_call)]

    def predict(self, model_input: torch.Tensor, t: torch.Tensor,
                done: Callable[[int], None]) -> list[torch.Tensor]:
        """Every tile's noise prediction, in the tiles' order; `done(n)` after each call of n tiles."""
        parts: list[torch.Tensor | None] = [None] * len(self.tiles)
        groups = self.groups()
        for group in groups:
            noise = self._call_or_split(group, model_input, t)
            # kept past the next call: copied when there is one, since CUDA graphs (compile's "reduce-overhead")
            # hand every replay the same output buffer
            for index, part in zip(group, noise, strict=True):
                parts[index] = part.clone() if len(groups) > 1 else part
            done(len(group))
        return parts  # type: ignore[return-value]

    def _call_or_split(self, group: list[int], model_input: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        try:
            return self._call(group, model_input, t)
        except RuntimeError as error:  # torch.OutOfMemoryError is a RuntimeError
            if len(group) == 1 or not memory.is_out_of_memory(error):
                raise
        # outside the except block, so the failed call's tensors are freed with its traceback
        release(self.device)
        logger.warning("PASD ran out of memory with %d latent tiles in one call; going on with one per call",
                       len(group))
        self.per_call = 1
        return [part for index in group for part in self._call([index], model_input, t)]

    def _call(self, group: list[int], model_input: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        crops = [model_input[:, :, self.tiles[i].rows(), self.tiles[i].cols()] for i in group]
        # one tile goes in as the official code passes it (a view, its own embedding): bit-identical to it
        batch = crops[0] if len(group) == 1 else torch.cat(crops)
        embedding = self.embeddings[group[0]] if len(group) == 1 else torch.cat([self.embeddings[i] for i in group])
        noise = self._predict(batch, t, self._text(len(group)), embedding)
        return list(noise.split(model_input.shape[0]))

    def _text(self, tiles: int) -> TextConditioning:
        """The text conditioning for `tiles` tiles in one batch (made once per batch size)."""
        if tiles not in self._texts:
            self._texts[tiles] = self.text.repeated(tiles)
        return self._texts[tiles]
