"""CoCa's next-token logits one token at a time, with every layer's keys and values kept.

open_clip's `generate` runs the whole prefix through both text transformers at every token. Each transformer here keeps
what its self-attention has seen (the keys and values of the tokens before, per beam) and the cross-attention's keys and
values of the image, computed once, so a step runs the new token alone. It reads the weights of open_clip's own modules
(`model.text`, `model.text_decoder`: pre-norm residual blocks over nn.MultiheadAttention) and repeats their
arithmetic, masks included: the text tower masks a key whose token is padding, with the position open_clip's
`correct_cls_mask` setting gives it. Only the order of the sums in the attention differs from the full recompute, so the
logits match it to float rounding; the captions are checked token for token against the full recompute (tests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class _SelfAttentionCache:
    """One residual block's self-attention keys and values so far ([beams, heads, tokens, head size]), and which keys
    a query may see (open_clip's additive mask: 0 or -inf per key)."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        self.keys = keys if self.keys is None else torch.cat([self.keys, keys], dim=2)
        self.values = values if self.values is None else torch.cat([self.values, values], dim=2)
        return self.keys, self.values

    def reorder(self, order: torch.Tensor) -> None:
        if self.keys is not None:
            self.keys, self.values = self.keys[order], self.values[order]


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[beams, tokens, width] -> [beams, heads, tokens, head size]."""
    beams, tokens, width = x.shape
    return x.view(beams, tokens, heads, width // heads).transpose(1, 2)


def _projections(attention: torch.nn.MultiheadAttention) -> tuple[torch.Tensor, ...]:
    """(query, key, value) weights and biases of nn.MultiheadAttention's packed input projection."""
    weights = attention.in_proj_weight.chunk(3)
    biases = attention.in_proj_bias.chunk(3) if attention.in_proj_bias is not None else (None,) * 3
    return (*weights, *biases)


def _attend(attention: torch.nn.MultiheadAttention, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
            mask: torch.Tensor | None) -> torch.Tensor:
    """nn.MultiheadAttention's output for `query` ([beams, 1, width]) over keys and values already split in heads."""
    import torch.nn.functional as F

    w_q, _, _, b_q, _, _ = _projections(attention)
    q = _heads(F.linear(query, w_q, b_q), attention.num_heads)
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
    beams, heads, tokens, size = out.shape
    return attention.out_proj(out.transpose(1, 2).reshape(beams, tokens, heads * size))


def _keys_values(attention: torch.nn.MultiheadAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import torch.nn.functional as F

    _, w_k, w_v, _, b_k, b_v = _projections(attention)
    return (_heads(F.linear(x, w_k, b_k), attention.num_heads), _heads(F.linear(x, w_v, b_v), attention.num_heads))


def _self_attention_block(block: torch.nn.Module, x: torch.Tensor, cache: _SelfAttentionCache,
                          mask: torch.Tensor | None) -> torch.Tensor:
    """open_clip's ResidualAttentionBlock on the new token, attending to itself and the tokens before."""
    normed = block.ln_1(x)
    keys, values = cache.append(*_keys_values(block.attn, normed))
    x = x + block.ls_1(_attend(block.attn, normed, keys, values, mask))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _cross_attention_block(block: torch.nn.Module, x: torch.Tensor, keys: torch.Tensor,
                           values: torch.Tensor) -> torch.Tensor:
    x = x + block.ls_1(_attend(block.attn, block.ln_1(x), keys, values, None))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class CachedDecoder:
    """The logits of the token after each beam's tokens so far, fed one token per step (the first step: the start
    token), for the image tokens `image_embs` ([beams, image tokens, width])."""

    def __init__(self, model: torch.nn.Module, image_embs: torch.Tensor, pad: int) -> None:
        self.text, self.decoder = model.text, model.text_decoder
        self.pad = getattr(model.text, "pad_id", pad)  # what the text tower's own mask compares with
        self.text_caches = [_SelfAttentionCache() for _ in self.text.transformer.resblocks]
        self.decoder_caches = [_SelfAttentionCache() for _ in self.decoder.resblocks]
        self.image_keys_values = [_keys_values(block.attn, block.ln_1_kv(image_embs))
                                  for block in self.decoder.cross_attn]
        self.key_mask: torch.Tensor | None = None  # [beams, tokens]: 0 or -inf, the text tower's padding mask
        self.previous: torch.Tensor | None = None  # each beam's last token (the legacy mask reads it)
        self.position = 0

    def reorder(self, order: torch.Tensor) -> None:
        """Beam i continues beam order[i]: its caches follow (the search's `tokens[rows][sources]`)."""
        for cache in (*self.text_caches, *self.decoder_caches):
            cache.reorder(order)
        if self.key_mask is not None:
            self.key_mask, self.previous = self.key_mask[order], self.previous[order]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """`tokens` ([beams]) appended to each beam; the logits of the next one ([beams, vocabulary])."""
        import torch

        text = self.text
        x = text.token_embedding(tokens).unsqueeze(1).to(text.transformer.get_cast_dtype())
        x = x + text.positional_embedding[self.position].to(x.dtype)
        mask = self._text_mask(tokens, x.dtype)
        for block, cache in zip(text.transformer.resblocks, self.text_caches, strict=True):
            x = _self_attention_block(block, x, cache, mask)
        # CoCa's text tower gives the decoder its token states before ln_final (ln_final is for the appended CLS)
        for block, cache, cross, (keys, values) in zip(self.decoder.resblocks, self.decoder_caches,
                                                      self.decoder.cross_attn, self.image_keys_values, strict=True):
            x = _self_attention_block(block, x, cache, None)
            x = _cross_attention_block(cross, x, keys, values)
        out = self.decoder.ln_final(x)
        if self.decoder.text_projection is not None:
            out = out @ self.decoder.text_projection
        self.position += 1
        return out[:, -1, :].to(torch.float32) if out.dtype != torch.float32 else out[:, -1, :]

    def _text_mask(self, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """The text tower's additive key mask for the new query: a key is hidden when its token is padding; open_clip's
        legacy (`correct_cls_mask` off) mask is shifted by one, hiding the key after a padding token instead."""
        import torch

        if self.text.cls_emb is None and not getattr(self.text, "use_pad_mask", False):
            return None
        if getattr(self.text, "correct_cls_mask", False):
            hidden = tokens == self.pad
        else:
            hidden = (self.previous == self.pad) if self.previous is not None else torch.zeros_like(tokens, dtype=bool)
        new = torch.zeros(tokens.shape[0], 1, dtype=dtype, device=tokens.device).masked_fill(hidden.unsqueeze(1),
                                                                                              float("-inf"))
        self.key_mask = new if self.key_mask is None else torch.cat([self.key_mask, new], dim=1)
        self.previous = tokens
        return self.key_mask[:, None, None, :]  # [beams, 1 head, 1 query, keys]
