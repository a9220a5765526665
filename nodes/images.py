"""ComfyUI IMAGE batches ([B, H, W, C] float tensors in [0, 1]) to PIL images and back."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..pasd_core.errors import InputImageError

if TYPE_CHECKING:
    import torch
    from PIL import Image


# Upstream nodes (resizes, blends, colour maths) round a hair past [0, 1]; such values are clamped
# silently. Anything further out (e.g. a 0..255 tensor) is a mistake that clamping would only hide.
RANGE_TOLERANCE = 1e-3


def checked(batch: Any, what: str = "image") -> torch.Tensor:
    """`batch` if it is a usable IMAGE: a float [B, H, W, C] tensor, C 1, 3 or 4, finite values in [0, 1]."""
    import torch

    if not isinstance(batch, torch.Tensor):
        raise InputImageError(f"{what} must be an IMAGE tensor [B, H, W, C], got {type(batch).__name__}: connect "
                              "an IMAGE output (e.g. Load Image) to it.")
    if batch.ndim != 4 or batch.shape[-1] not in (1, 3, 4):
        raise InputImageError(f"{what}: expected an IMAGE batch [B, H, W, C] with C 1, 3 or 4, got shape "
                              f"{tuple(batch.shape)}.")
    if 0 in batch.shape:
        raise InputImageError(f"{what} is empty (shape {tuple(batch.shape)}): give it at least one image of at "
                              "least 1×1 pixels.")
    if not batch.dtype.is_floating_point:
        raise InputImageError(f"{what} holds {str(batch.dtype).removeprefix('torch.')} values, but an IMAGE holds "
                              "floats in [0, 1]: convert it to float first (8-bit values divided by 255).")
    low, high = (float(v) for v in torch.aminmax(batch))  # one pass, no copy of the batch
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InputImageError(f"{what} holds NaN or infinite values: the node that made it failed; fix or replace "
                              "that node's output.")
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        hint = " (it looks like 0..255 values: divide by 255)" if high > 1.5 else ""
        raise InputImageError(f"{what} holds values from {low:.4g} to {high:.4g}, but an IMAGE holds values in "
                              f"[0, 1]{hint}: rescale it before this node.")
    return batch.clamp(0, 1) if low < 0 or high > 1 else batch


def rgb(batch: torch.Tensor, what: str = "image") -> torch.Tensor:
    """`batch` checked and as [B, H, W, 3]: grey widened, alpha dropped."""
    batch = checked(batch, what)
    return batch.expand(-1, -1, -1, 3) if batch.shape[-1] == 1 else batch[..., :3]


def channels_first(batch: torch.Tensor, what: str = "image") -> torch.Tensor:
    """An IMAGE batch as the [B, 3, H, W] float tensor the engine's tensor helpers take."""
    return rgb(batch, what).permute(0, 3, 1, 2).float()


def to_pil(batch: torch.Tensor, what: str = "image") -> list[Image.Image]:
    """One RGB PIL image per batch entry, rounded to 8 bits."""
    import torch
    from PIL import Image

    pixels = (rgb(batch, what).detach().float().cpu() * 255).round().to(torch.uint8)
    return [Image.fromarray(p.contiguous().numpy(), "RGB") for p in pixels]


def to_batch(images: list[Image.Image]) -> torch.Tensor:
    """One IMAGE batch from same-size PIL images."""
    import numpy as np
    import torch

    require_same_size(images, "output")
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]))


def require_same_size(images: list[Image.Image], what: str = "input") -> tuple[int, int]:
    """The common (width, height) of `images`; differing sizes in one batch are an error that says so."""
    sizes = sorted({im.size for im in images})
    if len(sizes) != 1:
        listed = ", ".join(f"{w}×{h}" for w, h in sizes)
        raise InputImageError(f"the {what} images of one batch must all have the same size, got {listed}: "
                              "resize them to one size first or run them as separate batches.")
    return sizes[0]


def match_batch(reference: torch.Tensor, size: int, what: str) -> torch.Tensor:
    """`reference` repeated to `size` entries when it holds one; any other count must equal `size`."""
    if reference.shape[0] == size:
        return reference
    if reference.shape[0] == 1:
        return reference.expand(size, *reference.shape[1:])
    raise InputImageError(f"{what} holds {reference.shape[0]} images but the image batch holds {size}: "
                          f"give one {what} for all, or one per image.")
