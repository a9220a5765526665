"""How large an image PASD takes: the pixel caps, checked from sizes alone before anything is decoded or loaded.

A 1×4096 strip enlarged to process_size plans a gigapixel control image, and a tiny file can claim a huge size in
its header. Both caps are here, beside the image reader that applies the first one; the planned work of a run
(engine/work_limits.py) applies the second.
"""

from __future__ import annotations

import math

from .errors import InputImageError

# 8192² px: a 4096² input at ×2 still runs (16 latent tiles); beyond it the control image alone takes
# gigabytes as float tensors, and the official resize rules would happily plan gigapixels.
MAX_CONTROL_PIXELS = 8192 * 8192
# A larger input would plan a control image over MAX_CONTROL_PIXELS even at scale 1, so it could never
# run; refusing it from a file's header also keeps a tiny file that claims a huge size from being decoded.
MAX_INPUT_PIXELS = MAX_CONTROL_PIXELS


def megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f}"


def describe_limit(pixels: int) -> str:
    """A cap in words: "67.1 megapixels (8192×8192)"."""
    side = math.isqrt(pixels)
    return f"{megapixels(pixels)} megapixels ({side}×{side})"


def check_input_size(width: int, height: int, what: str) -> None:
    """Refuse an input of more than MAX_INPUT_PIXELS before it is decoded or converted."""
    if width * height > MAX_INPUT_PIXELS:
        raise InputImageError(input_too_large(what, f"{width}×{height} ({megapixels(width * height)} megapixels)"))


def input_too_large(what: str, size: str) -> str:
    return (f"{what} is {size}; the limit is {describe_limit(MAX_INPUT_PIXELS)}. PASD expects a "
            "low-resolution input: downscale or crop it first, or split it into parts.")
