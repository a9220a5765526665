"""The CoCa caption search of the official prompt stage, without transformers.

test_pasd.py and test_pasd_sdxl.py caption with open_clip's `CoCa.generate(image)` at its defaults: a diverse beam
search (6 beams in 3 groups of 2, no diversity penalty) scored by transformers' `BeamSearchScorer`. transformers 5
removed that scorer, so open_clip's generate cannot run there; this is the same search on CoCa's own forward, with
the semantics of open_clip 3.3.0's `_generate_beamsearch` and transformers 4.44.2's `BeamSearchScorer` /
`BeamHypotheses` (length_penalty 1.0, early_stopping False, one hypothesis kept) and its `MinLengthLogitsProcessor`
(the default `RepetitionPenaltyLogitsProcessor(1.0)` leaves every score as it is, so it has no step here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# open_clip's CoCa.generate defaults, which the official scripts use.
SEQ_LEN = 30
NUM_BEAMS = 6
NUM_BEAM_GROUPS = 3
MIN_SEQ_LEN = 5
SOT_TOKEN = 49406  # <start_of_text>
EOS_TOKEN = 49407  # <end_of_text>
# the scorer's first worst score, before any hypothesis is kept
_NO_WORST_SCORE = 1e9
# the start score of every beam but the first of its group, so a group's beams don't start on the same tokens
_HELD_BACK_SCORE = -1e9


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


def generate_caption_tokens(model: torch.nn.Module, image: torch.Tensor, *, seq_len: int = SEQ_LEN,
                            num_beams: int = NUM_BEAMS, num_beam_groups: int = NUM_BEAM_GROUPS,
                            min_seq_len: int = MIN_SEQ_LEN, sot: int = SOT_TOKEN, eos: int = EOS_TOKEN) -> list[int]:
    """The tokens `CoCa.generate(image)` returns for one preprocessed image (1, 3, H, W), as a list: <start_of_text>,
    the caption, and <end_of_text> unless the caption reached `seq_len` tokens."""
    import torch

    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be one preprocessed image of shape (1, 3, H, W), got {tuple(image.shape)}")
    if seq_len <= min_seq_len:
        raise ValueError(f"seq_len ({seq_len}) must be larger than min_seq_len ({min_seq_len})")
    if num_beams < 2 or num_beam_groups < 1 or num_beams % num_beam_groups:
        raise ValueError(f"num_beams ({num_beams}) must be at least 2 and a multiple of num_beam_groups "
                         f"({num_beam_groups})")
    group_size = num_beams // num_beam_groups
    pad = model.pad_id  # what open_clip gives a finished group's beams

    with torch.no_grad():
        # every beam sees the same image; encoded once, in the beams' batch as open_clip does
        images = torch.repeat_interleave(image, num_beams, dim=0)
        image_latent, image_embs = model._encode_image(images)
        tokens = torch.full((num_beams, 1), sot, dtype=torch.long, device=image.device)
        beam_scores = torch.full((num_beams,), _HELD_BACK_SCORE, dtype=torch.float, device=image.device)
        beam_scores[::group_size] = 0
        finished = [FinishedCaptions(group_size) for _ in range(num_beam_groups)]
        done = [False] * num_beam_groups

        while True:
            # open_clip runs the whole sequence through the model at every step (no cache)
            logits = model(images, tokens, image_latent=image_latent, image_embs=image_embs,
                           output_labels=False)["logits"][:, -1, :]
            next_tokens = torch.zeros(num_beams, dtype=torch.long, device=image.device)
            for group in range(num_beam_groups):
                rows = slice(group * group_size, (group + 1) * group_size)
                group_tokens = tokens[rows].clone()
                scores = logits[rows]
                if group_tokens.shape[-1] < min_seq_len:  # MinLengthLogitsProcessor: no <end_of_text> yet
                    scores = scores.clone()
                    scores[:, eos] = -math.inf
                # the raw logits are added, not log-probabilities, as open_clip does
                totals = (scores + beam_scores[rows].unsqueeze(-1)).view(1, -1)
                top_scores, top_ids = torch.topk(totals, 2 * group_size, dim=1, largest=True, sorted=True)
                vocab_size = scores.shape[-1]
                sources, words = top_ids[0] // vocab_size, top_ids[0] % vocab_size

                keep_scores = torch.zeros(group_size, dtype=top_scores.dtype, device=image.device)
                keep_words = torch.full((group_size,), pad, dtype=torch.long, device=image.device)
                keep_sources = torch.zeros(group_size, dtype=torch.long, device=image.device)
                if not done[group]:  # a finished group keeps running on padding, its beams all from beam 0
                    cur_len = group_tokens.shape[-1] + 1
                    kept = 0
                    for rank in range(2 * group_size):
                        word, source = int(words[rank]), int(sources[rank])
                        if word == eos:
                            if rank < group_size:  # an <end_of_text> outside the top group_size is ignored
                                finished[group].add(group_tokens[source].tolist(), top_scores[0, rank].item(),
                                                    cur_len)
                        else:
                            keep_scores[kept] = top_scores[0, rank]
                            keep_words[kept], keep_sources[kept] = word, source
                            kept += 1
                            if kept == group_size:
                                break
                    done[group] = finished[group].is_done(top_scores[0].max().item(), cur_len)
                beam_scores[rows] = keep_scores
                tokens[rows] = group_tokens[keep_sources]
                next_tokens[rows] = keep_words
            tokens = torch.cat([tokens, next_tokens.unsqueeze(-1)], dim=-1)
            if all(done) or tokens.shape[-1] >= seq_len:
                break

        # the open beams of unfinished groups compete too, scored over their whole length
        candidates: list[tuple[float, list[int]]] = []
        for group in range(num_beam_groups):
            if not done[group]:
                for row in range(group * group_size, (group + 1) * group_size):
                    finished[group].add(tokens[row].tolist(), beam_scores[row].item(), tokens.shape[-1])
            candidates.extend(finished[group].beams)
    # the best over all groups; of equal scores the last one, as the scorer's sorted(...).pop() picks
    best = sorted(candidates, key=lambda candidate: candidate[0])[-1][1]
    return best + [eos] if len(best) < seq_len else best


def decode_caption(tokens: list[int]) -> str:
    """The caption text exactly as the official scripts cut it from open_clip's decode (a trailing space included)."""
    import open_clip
    import torch

    text = open_clip.decode(torch.tensor(tokens, dtype=torch.long))
    return text.split("<end_of_text>")[0].replace("<start_of_text>", "")
