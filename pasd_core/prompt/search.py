"""The CoCa caption search of the official prompt stage, without transformers.

test_pasd.py and test_pasd_sdxl.py caption with open_clip's `CoCa.generate(image)` at its defaults: a diverse beam
search (6 beams in 3 groups of 2, no diversity penalty) scored by transformers' `BeamSearchScorer`. transformers 5
removed that scorer, so open_clip's generate cannot run there; this is the same search on CoCa's own forward, with
the semantics of open_clip 3.3.0's `_generate_beamsearch` and transformers 4.44.2's `BeamSearchScorer` /
`BeamHypotheses` (length_penalty 1.0, early_stopping False, one hypothesis kept) and its `MinLengthLogitsProcessor`
(the default `RepetitionPenaltyLogitsProcessor(1.0)` leaves every score as it is, so it has no step here).
Split as transformers splits it: the logits processor (`no_end_before`), one beam group's scorer (`BeamGroup`), the
stopping rule (`SearchSettings.stops`) and the final pick (`best_caption`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import open_clip_coca as coca
from .coca_cache import CachedDecoder

if TYPE_CHECKING:
    import torch

# the scorer's first worst score, before any hypothesis is kept
_NO_WORST_SCORE = 1e9
# the start score of every beam but the first of its group, so a group's beams don't start on the same tokens
_HELD_BACK_SCORE = -1e9


@dataclass(frozen=True)
class SearchSettings:
    """open_clip's CoCa.generate defaults, which the official scripts use."""

    seq_len: int = 30
    num_beams: int = 6
    num_beam_groups: int = 3
    min_seq_len: int = 5
    sot: int = coca.START_OF_TEXT
    eos: int = coca.END_OF_TEXT

    def __post_init__(self) -> None:
        if self.seq_len <= self.min_seq_len:
            raise ValueError(f"seq_len ({self.seq_len}) must be larger than min_seq_len ({self.min_seq_len})")
        if self.num_beams < 2 or self.num_beam_groups < 1 or self.num_beams % self.num_beam_groups:
            raise ValueError(f"num_beams ({self.num_beams}) must be at least 2 and a multiple of num_beam_groups "
                             f"({self.num_beam_groups})")

    @property
    def group_size(self) -> int:
        return self.num_beams // self.num_beam_groups

    def stops(self, groups: list[BeamGroup], length: int) -> bool:
        """Every group is done, or the captions reached the length limit."""
        return all(group.done for group in groups) or length >= self.seq_len


@dataclass
class FinishedCaptions:
    """The best `size` finished token lists of one beam group, scored by their summed logits over their length
    (transformers' BeamHypotheses with length_penalty 1.0)."""

    size: int
    beams: list[tuple[float, list[int]]] = field(default_factory=list)
    worst_score: float = _NO_WORST_SCORE

    def add(self, tokens: list[int], score_sum: float, length: int) -> None:
        score = score_sum / length
        if len(self.beams) < self.size or score > self.worst_score:
            self.beams.append((score, tokens))
            if len(self.beams) > self.size:
                # the lowest score goes (the earliest of equal ones), the next lowest becomes the worst
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_score_sum: float, cur_len: int) -> bool:
        """Full, and no open beam can beat the worst kept one (early_stopping False's estimate from cur_len)."""
        return len(self.beams) >= self.size and self.worst_score >= best_score_sum / cur_len


def no_end_before(scores: torch.Tensor, length: int, settings: SearchSettings) -> torch.Tensor:
    """MinLengthLogitsProcessor: no <end_of_text> while the tokens are shorter than min_seq_len."""
    if length >= settings.min_seq_len:
        return scores
    scores = scores.clone()
    scores[:, settings.eos] = -math.inf
    return scores


@dataclass
class BeamGroup:
    """One group of beams and its finished captions: transformers' BeamSearchScorer for one group."""

    index: int
    settings: SearchSettings
    pad: int  # what a finished group's beams are given
    finished: FinishedCaptions = field(init=False)
    done: bool = False

    def __post_init__(self) -> None:
        self.finished = FinishedCaptions(self.settings.group_size)

    @property
    def rows(self) -> slice:
        size = self.settings.group_size
        return slice(self.index * size, (self.index + 1) * size)

    def advance(self, tokens: torch.Tensor, scores: torch.Tensor,
                beam_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This group's next (beam scores, words, source beams) from its tokens so far and the next token's scores.

        The raw logits are added, not log-probabilities, as open_clip does. A finished group keeps running on
        padding, its beams all from beam 0."""
        import torch

        size, eos, device = self.settings.group_size, self.settings.eos, tokens.device
        totals = (scores + beam_scores.unsqueeze(-1)).view(1, -1)
        top_scores, top_ids = torch.topk(totals, 2 * size, dim=1, largest=True, sorted=True)
        vocab_size = scores.shape[-1]
        sources, words = top_ids[0] // vocab_size, top_ids[0] % vocab_size
        keep_scores = torch.zeros(size, dtype=top_scores.dtype, device=device)
        keep_words = torch.full((size,), self.pad, dtype=torch.long, device=device)
        keep_sources = torch.zeros(size, dtype=torch.long, device=device)
        if self.done:
            return keep_scores, keep_words, keep_sources
        cur_len = tokens.shape[-1] + 1
        kept = 0
        for rank in range(2 * size):
            word, source = int(words[rank]), int(sources[rank])
            if word == eos:
                if rank < size:  # an <end_of_text> outside the top group_size is ignored
                    self.finished.add(tokens[source].tolist(), top_scores[0, rank].item(), cur_len)
            else:
                keep_scores[kept] = top_scores[0, rank]
                keep_words[kept], keep_sources[kept] = word, source
                kept += 1
                if kept == size:
                    break
        self.done = self.finished.is_done(top_scores[0].max().item(), cur_len)
        return keep_scores, keep_words, keep_sources


def best_caption(groups: list[BeamGroup], tokens: torch.Tensor, beam_scores: torch.Tensor,
                 settings: SearchSettings) -> list[int]:
    """The final pick: the open beams of unfinished groups compete too, scored over their whole length; the best over
    all groups wins, of equal scores the last one, as the scorer's sorted(...).pop() picks. <end_of_text> is appended
    unless the caption reached seq_len tokens."""
    candidates: list[tuple[float, list[int]]] = []
    for group in groups:
        if not group.done:
            for row in range(group.rows.start, group.rows.stop):
                group.finished.add(tokens[row].tolist(), beam_scores[row].item(), tokens.shape[-1])
        candidates.extend(group.finished.beams)
    best = sorted(candidates, key=lambda candidate: candidate[0])[-1][1]
    return best + [settings.eos] if len(best) < settings.seq_len else best


def generate_caption_tokens(model: torch.nn.Module, image: torch.Tensor, **overrides: int) -> list[int]:
    """The tokens `CoCa.generate(image)` returns for one preprocessed image (1, 3, H, W), as a list: <start_of_text>,
    the caption, and <end_of_text> unless the caption reached `seq_len` tokens. `overrides`: SearchSettings fields."""
    import torch

    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be one preprocessed image of shape (1, 3, H, W), got {tuple(image.shape)}")
    settings = SearchSettings(**overrides)
    groups = [BeamGroup(index, settings, coca.pad_token(model)) for index in range(settings.num_beam_groups)]
    with torch.no_grad():
        # every beam sees the same image: encoded once and shared (open_clip encodes num_beams copies of it)
        image_embs = torch.repeat_interleave(coca.image_embeddings(model, image), settings.num_beams, dim=0)
        tokens = torch.full((settings.num_beams, 1), settings.sot, dtype=torch.long, device=image.device)
        beam_scores = torch.full((settings.num_beams,), _HELD_BACK_SCORE, dtype=torch.float, device=image.device)
        beam_scores[::settings.group_size] = 0
        # open_clip runs the whole sequence through the model at every step; the cache runs the new token only
        decoder = CachedDecoder(model, image_embs, coca.pad_token(model))
        logits = decoder.step(tokens[:, -1])
        while True:
            logits = no_end_before(logits, tokens.shape[-1], settings)
            next_tokens = torch.zeros(settings.num_beams, dtype=torch.long, device=image.device)
            order = torch.arange(settings.num_beams, device=image.device)
            for group in groups:
                rows = group.rows
                scores, words, sources = group.advance(tokens[rows], logits[rows], beam_scores[rows])
                beam_scores[rows] = scores
                tokens[rows] = tokens[rows][sources]
                order[rows] = order[rows][sources]
                next_tokens[rows] = words
            tokens = torch.cat([tokens, next_tokens.unsqueeze(-1)], dim=-1)
            if settings.stops(groups, tokens.shape[-1]):
                break
            decoder.reorder(order)
            logits = decoder.step(next_tokens)
        return best_caption(groups, tokens, beam_scores, settings)


def decode_caption(tokens: list[int]) -> str:
    """The caption text exactly as the official scripts cut it from open_clip's decode (a trailing space included)."""
    return coca.decode(tokens).split("<end_of_text>")[0].replace("<start_of_text>", "")
