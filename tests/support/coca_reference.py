"""CoCa's decoder as open_clip's generate runs it: the reference the cached decoder (pasd_core/prompt/coca_cache.py) is
checked and timed against. It has the cache's interface (step, reorder) and runs the whole prefix at every step."""

from __future__ import annotations

import torch

from pasd_core.prompt.open_clip_coca import next_token_logits


class FullRecompute:
    def __init__(self, model: torch.nn.Module, image_embs: torch.Tensor, pad: int) -> None:
        self.model, self.image_embs, self.prefix = model, image_embs, None

    def reorder(self, order: torch.Tensor) -> None:
        self.prefix = self.prefix[order]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        new = tokens.unsqueeze(-1)
        self.prefix = new if self.prefix is None else torch.cat([self.prefix, new], dim=-1)
        return next_token_logits(self.model, self.image_embs, self.prefix)
