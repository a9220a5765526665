"""ComfyUI IMAGE batches ([B, H, W, C] float tensors in [0, 1]) to PIL images and back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..pasd_core.errors import InputImageError

if TYPE_CHECKING:
    import torch
    from PIL import Image


def rgb(batch: torch.Tensor) -> torch.Tensor:
    """`batch` as [B, H, W, 3]: grey widened, alpha dropped; any other shape is an error that says so."""
    if batch.ndim != 4 or batch.shape[0] == 0 or batch.shape[-1] not in (1, 3, 4):
        raise InputImageError(f"expected an IMAGE batch [B, H, W, C] with C 1, 3 or 4, got shape {tuple(batch.shape)}.")
    return batch.expand(-1, -1, -1, 3) if batch.shape[-1] == 1 else batch[..., :3]


def channels_first(batch: torch.Tensor) -> torch.Tensor:
    """An IMAGE batch as the [B, 3, H, W] float tensor the engine's tensor helpers take."""
    return rgb(batch).permute(0, 3, 1, 2).float()


def to_pil(batch: torch.Tensor) -> list[Image.Image]:
    """One RGB PIL image per batch entry, rounded to 8 bits."""
    import torch
    from PIL import Image

    pixels = (rgb(batch).detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
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
