"""Colorization output: the gray input's luma with the result's chroma, bit-exact with the official code.

The official `test_pasd.py` (colorization branch) resizes the pipeline's result to the gray input's size
with `cv2.resize` (INTER_LINEAR), takes U and V from it and Y from the gray input in OpenCV's YUV, and
converts back. This module reproduces OpenCV's 8-bit integer arithmetic in numpy, so the project needs no
OpenCV at run time and writes the same bytes. Checked against opencv-python-headless 4.5.5, 4.8.1 and 5.1.0 on
every one of the 2^24 colours for both conversions and on thousands of random resizes (tests/test_colorize.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

# OpenCV's 8-bit YUV (color_yuv.simd.hpp, BT.601): coefficients x 2^14, rounded by adding 2^13 before the
# shift, chroma offset 128 x 2^14, then saturated to 0..255.
_YUV_SHIFT = 14
_YUV_ROUND = 1 << (_YUV_SHIFT - 1)
_R2Y, _G2Y, _B2Y = 4899, 9617, 1868  # 0.299, 0.587, 0.114
_B2U, _R2V = 8061, 14369  # 0.492, 0.877
_U2B, _U2G, _V2G, _V2R = 33292, -6472, -9519, 18678  # 2.032, -0.395, -0.581, 1.140

# OpenCV's 8-bit INTER_LINEAR (resize.cpp): weights are rounded to 11-bit fixed point.
_COEF_BITS = 11
_COEF_SCALE = np.float32(1 << _COEF_BITS)


def colorize_input(image: Image.Image) -> Image.Image:
    """The grayscale branch's input: luminance (PIL's ITU-R 601 "L"), as RGB; it is also what gets described."""
    return image.convert("L").convert("RGB")


def _saturate_u8(values: np.ndarray) -> np.ndarray:
    return np.clip(values, 0, 255).astype(np.uint8)


def bgr_to_yuv(bgr: np.ndarray) -> np.ndarray:
    """`cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)` for a uint8 [..., 3] array (B, G, R order in, Y, U, V out)."""
    b, g, r = (bgr[..., i].astype(np.int32) for i in range(3))
    y = (b * _B2Y + g * _G2Y + r * _R2Y + _YUV_ROUND) >> _YUV_SHIFT
    # chroma is taken from the already rounded Y, as OpenCV does
    u = ((b - y) * _B2U + (128 << _YUV_SHIFT) + _YUV_ROUND) >> _YUV_SHIFT
    v = ((r - y) * _R2V + (128 << _YUV_SHIFT) + _YUV_ROUND) >> _YUV_SHIFT
    return _saturate_u8(np.stack([y, u, v], axis=-1))


def yuv_to_bgr(yuv: np.ndarray) -> np.ndarray:
    """`cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR)` for a uint8 [..., 3] array (Y, U, V in, B, G, R out)."""
    y = yuv[..., 0].astype(np.int32)
    u = yuv[..., 1].astype(np.int32) - 128
    v = yuv[..., 2].astype(np.int32) - 128
    # only the chroma term is rounded and shifted; Y is added after, then the sum is saturated
    b = y + ((u * _U2B + _YUV_ROUND) >> _YUV_SHIFT)
    g = y + ((u * _U2G + v * _V2G + _YUV_ROUND) >> _YUV_SHIFT)
    r = y + ((v * _V2R + _YUV_ROUND) >> _YUV_SHIFT)
    return _saturate_u8(np.stack([b, g, r], axis=-1))


def _linear_taps(dst_size: int, src_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source index and fractional offset of each output pixel, with OpenCV's float32 rounding."""
    # OpenCV: inv_scale = dst/src, scale = 1/inv_scale (both double); x = float((d + 0.5) * scale - 0.5)
    scale = 1.0 / (dst_size / src_size)
    pos = ((np.arange(dst_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    index = np.floor(pos)
    frac = pos - index  # float32 subtraction, as OpenCV's `fx -= sx`
    return index.astype(np.int64), frac


def _fixed_weights(frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's `saturate_cast<short>(w * 2048)` of (1 - f, f) in float32: round half to even."""
    w0 = np.rint((np.float32(1.0) - frac) * _COEF_SCALE).astype(np.int32)
    w1 = np.rint(frac * _COEF_SCALE).astype(np.int32)
    return w0, w1


def resize_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """`cv2.resize(image, (width, height))` (INTER_LINEAR) for a uint8 H x W x C array."""
    src_height, src_width = image.shape[:2]
    if (src_width, src_height) == (width, height):
        return image.copy()  # cv2.resize copies when the size is unchanged
    # OpenCV runs an exact 2x reduction through its fast INTER_AREA, (2x2 sum + 2) >> 2; for 8 bits the
    # arithmetic below gives the same bytes there (weights 1024/1024, no truncation), so it needs no branch

    # horizontal pass: columns clamped at both borders with the weight moved onto the border pixel
    x0, fx = _linear_taps(width, src_width)
    outside = (x0 < 0) | (x0 >= src_width - 1)
    fx[outside] = 0
    x0 = np.clip(x0, 0, src_width - 1)
    wx0, wx1 = _fixed_weights(fx)
    x1 = np.minimum(x0 + 1, src_width - 1)
    pixels = image.astype(np.int32)
    rows = pixels[:, x0] * wx0[:, None] + pixels[:, x1] * wx1[:, None]  # x 2^11

    # vertical pass: rows clamped, weights not (OpenCV clamps only the row index vertically)
    y0, fy = _linear_taps(height, src_height)
    wy0, wy1 = _fixed_weights(fy)
    top = rows[np.clip(y0, 0, src_height - 1)] >> 4
    bottom = rows[np.clip(y0 + 1, 0, src_height - 1)] >> 4
    # OpenCV's 8-bit vertical step (SIMD and scalar alike): each row >> 4, times its weight, >> 16 (mul_hi),
    # summed, then rounded >> 2 -- not the exact (sum + 2^21) >> 22
    wy0, wy1 = wy0[:, None, None], wy1[:, None, None]
    out = (((top * wy0) >> 16) + ((bottom * wy1) >> 16) + 2) >> 2
    return _saturate_u8(out)


def _check_image(name: str, image: object) -> None:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array (H x W x 3, uint8), got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (0..255), got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be H x W x 3 (RGB), got shape {tuple(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(image.shape)}")


def merge_chroma(result_rgb: np.ndarray, gray_rgb: np.ndarray) -> np.ndarray:
    """The official colorization output: `gray_rgb`'s luma with `result_rgb`'s chroma, at `gray_rgb`'s size.

    Both are uint8 H x W x 3 RGB; `result_rgb` may be any size (it is resized as `cv2.resize` does).
    Returns uint8 RGB of `gray_rgb`'s shape, byte for byte what the official code writes with cv2.imwrite.
    """
    _check_image("result_rgb", result_rgb)
    _check_image("gray_rgb", gray_rgb)
    height, width = gray_rgb.shape[:2]
    color_bgr = resize_linear(result_rgb[..., ::-1], width, height)
    # official: the gray input goes to BGR2YUV unflipped (its RGB read as BGR); for R = G = B it is the same
    luma = bgr_to_yuv(gray_rgb)[..., 0]
    chroma = bgr_to_yuv(color_bgr)[..., 1:]
    merged = np.concatenate([luma[..., None], chroma], axis=-1)
    return np.ascontiguousarray(yuv_to_bgr(merged)[..., ::-1])  # cv2.imwrite stores BGR, so the file is RGB
