"""Colour correction of a result against its low-resolution source (wavelet, as the official PASD, or AdaIN).

Images are [B, 3, H, W] float tensors in [0, 1]; the PIL helpers round-trip exactly like the official
code (uint8 / 255 in, clamp, `* 255` truncated to uint8 out).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

METHODS = ("wavelet", "adain", "none")
_WAVELET_LEVELS = 5  # official: radii 1, 2, 4, 8, 16


def _binomial_blur(image: torch.Tensor, radius: int) -> torch.Tensor:
    """3×3 binomial blur dilated by `radius`, with replicate padding (one level of the à-trous wavelet)."""
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=image.dtype, device=image.device)
    kernel = (kernel / 16.0)[None, None].repeat(image.shape[1], 1, 1, 1)
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel, groups=image.shape[1], dilation=radius)


def _wavelet_split(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the high-frequency bands, lowest band) of `image`."""
    high = torch.zeros_like(image)
    for level in range(_WAVELET_LEVELS):
        low = _binomial_blur(image, 2**level)
        high += image - low
        image = low
    return high, image


def wavelet_color_fix(target: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Keep `target`'s detail (high bands) and take its colour (lowest band) from `reference`."""
    high, _ = _wavelet_split(target)
    _, low = _wavelet_split(reference)
    return (high + low).clamp_(0.0, 1.0)


def adain_color_fix(target: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Give `target` the per-channel mean and standard deviation of `reference`."""

    def mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        return flat.mean(dim=2)[..., None, None], (flat.var(dim=2) + eps).sqrt()[..., None, None]

    t_mean, t_std = mean_std(target)
    r_mean, r_std = mean_std(reference)
    return ((target - t_mean) / t_std * r_std + r_mean).clamp_(0.0, 1.0)


def color_fix_tensor(target: torch.Tensor, reference: torch.Tensor, method: str) -> torch.Tensor:
    """Apply `method` to [B, 3, H, W] tensors of the same size."""
    if method not in METHODS:
        raise ValueError(f"color_fix={method!r} is not one of {', '.join(METHODS)}.")
    if method == "none":
        return target
    if target.shape[-2:] != reference.shape[-2:]:
        reference = F.interpolate(reference, size=target.shape[-2:], mode="bicubic", align_corners=False)
    fix = wavelet_color_fix if method == "wavelet" else adain_color_fix
    return fix(target.float(), reference.float())


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """[1, 3, H, W] in [0, 1] → PIL, truncating like torchvision's ToPILImage (as the official code does)."""
    array = (image[0].permute(1, 2, 0) * 255).to(torch.uint8).cpu().numpy()
    return Image.fromarray(array)


def color_fix(target: Image.Image, reference: Image.Image, method: str) -> Image.Image:
    """Colour-correct a PIL image against a PIL reference (resized to the target's size if needed)."""
    if method == "none":
        return target
    return tensor_to_pil(color_fix_tensor(pil_to_tensor(target), pil_to_tensor(reference), method))
