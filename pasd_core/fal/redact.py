"""Hiding the fal key in anything a server said before it reaches a message or a log.

A server (or a proxy in front of it) may echo the Authorization header: whole, as its secret half
("id:secret"), URL-, JSON- or base64-encoded, or cut off by its own truncation. `excerpt` is the
one way server text is shown: the key hidden in all those forms first, then control characters
removed and the length capped, so shortening can never expose a piece of the key.
"""

from __future__ import annotations

import base64
import json
import re
from functools import lru_cache
from urllib.parse import quote, quote_plus

MASK = "[FAL_KEY]"
MIN_FRAGMENT = 8  # any run of this many characters copied from the key is hidden
MAX_CHARS = 300  # of server text in one message
# Control characters (C0, DEL, C1) and bidi overrides: they could rewrite a terminal line or a log.
_MASKS = re.compile(re.escape(MASK) + "(?:" + re.escape(MASK) + ")+")
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def redact(text: str, key: str | None) -> str:
    """`text` with every plausible copy of `key`, of its secret half and of 8+ character pieces of it hidden."""
    if not key or not text:
        return text
    text = _exact_forms(key).sub(MASK, text)
    grams = _fragments(key.lower())
    # ASCII case folding only, one character for one (str.lower can lengthen some non-ASCII ones)
    lowered, hidden = text.encode("ascii", "replace").decode("ascii").lower(), bytearray(len(text))
    for start in range(len(text) - MIN_FRAGMENT + 1):
        if lowered[start:start + MIN_FRAGMENT] in grams:
            hidden[start:start + MIN_FRAGMENT] = b"\1" * MIN_FRAGMENT
    pieces, start = [], 0
    for run in re.finditer(b"\1+", bytes(hidden)):
        pieces += [text[start:run.start()], MASK]
        start = run.end()
    return _MASKS.sub(MASK, "".join(pieces) + text[start:])


def excerpt(text: str, key: str | None, limit: int = MAX_CHARS) -> str:
    """Server text fit for a message: key hidden, control characters removed, one line, at most `limit` long."""
    cut = len(text) > 20 * limit  # keep the work bounded: the rest would not be shown anyway
    text = redact(_UNPRINTABLE.sub(" ", text[: 20 * limit]), key)
    if cut:  # a key the cut split may end the text in a piece too short to be recognised: drop it
        text = text[: -(MIN_FRAGMENT - 1)]
    return shorten(text, limit)


def shorten(text: str, limit: int = MAX_CHARS) -> str:
    """One line of at most `limit` characters (only for text that is already redacted or our own)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@lru_cache(maxsize=8)
def _exact_forms(key: str) -> re.Pattern[str]:
    """The whole key, its secret half and its id, raw and as a URL, JSON or base64 would carry them."""
    key_id, _, secret = key.partition(":")
    parts = [key] + ([secret] if secret else []) + ([key_id] if secret and len(key_id) >= MIN_FRAGMENT else [])
    forms = set()
    for part in parts:
        raw = part.encode()
        forms |= {part, quote(part, safe=""), quote_plus(part), json.dumps(part)[1:-1],
                  json.dumps(part)[1:-1].replace("/", "\\/")}
        for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
            forms |= {encoded.decode(), encoded.decode().rstrip("=")}
    # longest first, so the whole key is hidden as one piece rather than as its halves
    alternatives = sorted((f for f in forms if f), key=len, reverse=True)
    return re.compile("|".join(re.escape(f) for f in alternatives), re.IGNORECASE)


@lru_cache(maxsize=8)
def _fragments(lowered_key: str) -> frozenset[str]:
    return frozenset(lowered_key[i:i + MIN_FRAGMENT] for i in range(len(lowered_key) - MIN_FRAGMENT + 1))
