"""Colour correction of a result against its low-resolution source (wavelet, as the official PASD, or AdaIN).

Images are [B, 3, H, W] float tensors in [0, 1]; the PIL helpers round-trip exactly like the official
code (uint8 / 255 in, clamp, `* 255` truncated to uint8 out).

The wavelet fix is memory-lean with the same numbers: it works one channel at a time (its blur is
depthwise), blurs a band of rows per convolution call, and reuses its own buffers in place.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

METHODS = ("wavelet", "adain", "none")
_WAVELET_LEVELS = 5  # official: radii 1, 2, 4, 8, 16
STRIP_PIXELS = 1 << 16  # pixels per convolution call in the wavelet blur


def _binomial_blur(image: torch.Tensor, radius: int) -> torch.Tensor:
    """3×3 binomial blur dilated by `radius`, with replicate padding (one level of the à-trous wavelet).

    Blurred a band of rows at a time, each band padded on its own: the convolution's working memory
    (over ten copies of its input on CPU) stays small, and every output pixel is computed exactly as
    in one whole-image call (the same values are convolved in the same order).
    """
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=image.dtype, device=image.device)
    kernel = (kernel / 16.0)[None, None].repeat(image.shape[1], 1, 1, 1)
    height, width = image.shape[-2:]
    blurred = torch.empty(image.shape, dtype=image.dtype, device=image.device)
    rows = max(1, STRIP_PIXELS // width)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        # replicate padding of the band: its rows extended by `radius`, clamped to the image, then its columns
        band_rows = torch.arange(top - radius, bottom + radius, device=image.device).clamp_(0, height - 1)
        band = F.pad(image.index_select(2, band_rows), (radius, radius, 0, 0), mode="replicate")
        blurred[:, :, top:bottom] = F.conv2d(band, kernel, groups=image.shape[1], dilation=radius)
    return blurred


def _wavelet_high(image: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """Sum of the high-frequency bands of `image`, accumulated band by band in the official order.

    Each level's input, once blurred, becomes that level's band in place: our own low bands always,
    the caller's image only with `overwrite`.
    """
    high = torch.zeros_like(image)
    for level in range(_WAVELET_LEVELS):
        low = _binomial_blur(image, 2**level)
        high += image.sub_(low) if level or overwrite else image - low
        image = low
    return high


def _wavelet_low(image: torch.Tensor) -> torch.Tensor:
    """The lowest band of `image` (its colour)."""
    for level in range(_WAVELET_LEVELS):
        image = _binomial_blur(image, 2**level)
    return image


def _wavelet_channel(target: torch.Tensor, reference: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """`target`'s high bands plus `reference`'s lowest band, clamped, for [B, 1, H, W] tensors."""
    return _wavelet_high(target, overwrite).add_(_wavelet_low(reference)).clamp_(0.0, 1.0)


def _resized(reference: torch.Tensor, size: torch.Size) -> torch.Tensor:
    if reference.shape[-2:] == size:
        return reference
    return F.interpolate(reference, size=size, mode="bicubic", align_corners=False)


def wavelet_color_fix(target: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Keep `target`'s detail (high bands) and take its colour (lowest band) from `reference`."""
    result = torch.empty_like(target)
    for c in range(target.shape[1]):
        result[:, c:c + 1] = _wavelet_channel(target[:, c:c + 1], reference[:, c:c + 1])
    return result


def adain_color_fix(target: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Give `target` the per-channel mean and standard deviation of `reference`."""

    def mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        return flat.mean(dim=2)[..., None, None], (flat.var(dim=2) + eps).sqrt()[..., None, None]

    t_mean, t_std = mean_std(target)
    r_mean, r_std = mean_std(reference)
    return (target - t_mean).div_(t_std).mul_(r_std).add_(r_mean).clamp_(0.0, 1.0)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"color_fix={method!r} is not one of {', '.join(METHODS)}.")


def color_fix_tensor(target: torch.Tensor, reference: torch.Tensor, method: str) -> torch.Tensor:
    """Apply `method` to [B, 3, H, W] tensors; `reference` is resized (bicubic) to `target`'s size if needed."""
    _check_method(method)
    if method == "none":
        return target
    if method == "adain":
        return adain_color_fix(target.float(), _resized(reference, target.shape[-2:]).float())
    result = torch.empty(target.shape, dtype=torch.float32, device=target.device)
    for c in range(target.shape[1]):  # channel by channel: only one channel of each input is converted at a time
        reference_channel = _resized(reference[:, c:c + 1], target.shape[-2:]).float()
        result[:, c:c + 1] = _wavelet_channel(target[:, c:c + 1].float(), reference_channel)
    return result


def _channel_from_pil(pixels: np.ndarray, channel: int) -> torch.Tensor:
    """[1, 1, H, W] float32 in [0, 1] of one channel of an [H, W, 3] uint8 array (the official uint8 / 255)."""
    values = pixels[:, :, channel].astype(np.float32)
    values /= 255.0
    return torch.from_numpy(values)[None, None]


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    """Values in [0, 1] to uint8, truncating like torchvision's ToPILImage (as the official code does)."""
    return (image * 255).to(torch.uint8)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """[1, 3, H, W] in [0, 1] → PIL, truncating like torchvision's ToPILImage (as the official code does)."""
    return Image.fromarray(_to_uint8(image[0].permute(1, 2, 0)).cpu().numpy())


def color_fix(target: Image.Image, reference: Image.Image, method: str,
              device: torch.device | str = "cpu") -> Image.Image:
    """Colour-correct a PIL image against a PIL reference (resized to the target's size if needed), computing on
    `device` (the sampler's: a GPU blurs a 2048² image in milliseconds; the CPU took about 1.5 s). In full fp32 there
    (no TF32, which would round the blur's inputs to 10 bits), and on the CPU when the device runs out of memory."""
    _check_method(method)
    if method == "none":
        return target
    if torch.device(device).type == "cpu":
        return _color_fix_on(target, reference, method, "cpu")
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            return _color_fix_on(target, reference, method, device)
    except torch.OutOfMemoryError:
        return _color_fix_on(target, reference, method, "cpu")


def _color_fix_on(target: Image.Image, reference: Image.Image, method: str, device: torch.device | str) -> Image.Image:
    if method == "adain":
        fixed = color_fix_tensor(pil_to_tensor(target).to(device), pil_to_tensor(reference).to(device), method)
        return tensor_to_pil(fixed)
    # wavelet, channel by channel from uint8 to uint8: a few one-channel float buffers at a time
    target_pixels = np.asarray(target.convert("RGB"))
    reference_pixels = np.asarray(reference.convert("RGB"))
    fixed = np.empty_like(target_pixels)
    for c in range(3):
        reference_channel = _resized(_channel_from_pil(reference_pixels, c).to(device), target_pixels.shape[:2])
        channel = _wavelet_channel(_channel_from_pil(target_pixels, c).to(device), reference_channel, overwrite=True)
        fixed[:, :, c] = _to_uint8(channel)[0, 0].cpu().numpy()
    return Image.fromarray(fixed)
