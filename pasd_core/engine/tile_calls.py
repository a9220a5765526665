"""The latent tiles of one denoising step in as few ControlNet + UNet calls as memory allows.

Tiles of one shape (every tile of the official layout; at most four shapes in the even one) go through the networks
as one batch: each tile's guidance pair side by side, the text conditioning repeated to match. Every sample is
computed on its own (convolutions, norms and attention are per sample), so the batch changes only the last bits of
the result (kernels sum in batch-dependent orders): within the parity tolerance, not bit-identical to one tile per
call. How many tiles fit: memory.tiles_per_call, from the family's measured activations per latent pixel. An
out-of-memory error in a batched call redoes its tiles, and every later one, one per call: nothing lost.

Where it pays (batching_pays): on a GPU, where a tile's call leaves the device partly idle and every call costs
launch overhead; on a CPU only for native bf16 arithmetic (its matrix units want more rows). A CPU in fp32 gains
nothing, so it keeps the official loop and its bits (bench/results/fast_mode_cpu_2026-12-08.txt: fp32 batched 0.99×,
bf16 batched 0.73× of one tile per call).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ..placement import release
from . import memory
from .family import TextConditioning
from .fast import native_bf16
from .tiling import LatentTile

# (latents, timestep, text, condition embedding) -> noise prediction: the sampler's ControlNet + UNet call
Predict = Callable[[torch.Tensor, torch.Tensor, TextConditioning, torch.Tensor], torch.Tensor]

logger = logging.getLogger(__name__)


def batching_pays(device: torch.device, compute_dtype: torch.dtype) -> bool:
    """Whether a step's tiles go through the networks together: on accelerators, and on a CPU computing in native
    bf16 (the one CPU case measured to gain)."""
    return device.type != "cpu" or (compute_dtype == torch.bfloat16 and native_bf16(device))


class TileCalls:
    """One run's tiles, their condition embeddings and text, grouped into calls of at most `per_call` tiles."""

    def __init__(self, predict: Predict, device: torch.device, compute_dtype: torch.dtype, tiles: list[LatentTile],
                 text: TextConditioning, embeddings: list[torch.Tensor], one_tile_bytes: int) -> None:
        self._predict, self.device = predict, device
        self.tiles, self.text, self.embeddings = tiles, text, embeddings
        pays = batching_pays(device, compute_dtype)
        self.per_call = memory.tiles_per_call(device, one_tile_bytes, len(tiles)) if pays else 1
        self._texts: dict[int, TextConditioning] = {1: text}
        self._embeddings: dict[tuple[int, ...], torch.Tensor] = {}
        by_shape: dict[tuple[int, int], list[int]] = {}
        for index, tile in enumerate(tiles):
            by_shape.setdefault(tile.shape, []).append(index)
        self._shapes = list(by_shape.values())  # tile indices per shape, in the layout's order

    def predict(self, model_input: torch.Tensor, t: torch.Tensor,
                done: Callable[[int], None]) -> list[torch.Tensor]:
        """Every tile's noise prediction, in the tiles' order; `done(n)` after each call of n tiles. After an
        out-of-memory error in a batched call, the rest of the run (this step's tiles included) goes one per call."""
        parts: list[torch.Tensor | None] = [None] * len(self.tiles)
        pending = [index for indices in self._shapes for index in indices]
        while pending:
            group = self._next_group(pending)
            noise = self._call_or_none(group, model_input, t)
            if noise is None:  # out of memory: from now on one tile per call
                self._fall_back(len(group))
                continue
            del pending[:len(group)]
            for index, part in zip(group, noise, strict=True):
                # kept past the next call: copied, since CUDA graphs (compile's "reduce-overhead") hand every replay
                # the same output buffer; the step's last call needs none (the blend reads it before the next step)
                parts[index] = part.clone() if pending else part
            done(len(group))
        return parts  # type: ignore[return-value]

    def _next_group(self, pending: list[int]) -> list[int]:
        """The next call's tiles: up to `per_call` of the first pending tile's shape."""
        shape = self.tiles[pending[0]].shape
        group = []
        for index in pending:
            if self.tiles[index].shape != shape or len(group) == self.per_call:
                break
            group.append(index)
        return group

    def _call_or_none(self, group: list[int], model_input: torch.Tensor,
                      t: torch.Tensor) -> list[torch.Tensor] | None:
        """The group's predictions, or None when a batched call ran out of memory (its tensors are freed then)."""
        try:
            return self._call(group, model_input, t)
        except RuntimeError as error:  # torch.OutOfMemoryError is a RuntimeError
            if len(group) == 1 or not memory.is_out_of_memory(error):
                raise
        return None

    def _fall_back(self, tiles: int) -> None:
        # called outside the except block, so the failed call's tensors were freed with its traceback
        release(self.device)
        logger.warning("PASD ran out of memory with %d latent tiles in one call; going on with one per call", tiles)
        self.per_call = 1

    def _call(self, group: list[int], model_input: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        crops = [model_input[:, :, self.tiles[i].rows(), self.tiles[i].cols()] for i in group]
        # one tile goes in as the official code passes it (a view, its own embedding): bit-identical to it
        batch = crops[0] if len(group) == 1 else torch.cat(crops)
        noise = self._predict(batch, t, self._text(len(group)), self._embedding(group))
        return list(noise.split(model_input.shape[0]))

    def _embedding(self, group: list[int]) -> torch.Tensor:
        """The group's condition embeddings side by side (made once per group: they never change)."""
        if len(group) == 1:
            return self.embeddings[group[0]]
        key = tuple(group)
        if key not in self._embeddings:
            self._embeddings[key] = torch.cat([self.embeddings[i] for i in group])
        return self._embeddings[key]

    def _text(self, tiles: int) -> TextConditioning:
        """The text conditioning for `tiles` tiles in one batch (made once per batch size)."""
        if tiles not in self._texts:
            self._texts[tiles] = self.text.repeated(tiles)
        return self._texts[tiles]
