"""Where a run computes and in what precision: `auto` resolves to the best the machine offers."""

from __future__ import annotations

import torch

from ..errors import ModelError
from ..model_family import SD15, SDXL

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device='cuda' was asked for but torch sees no CUDA GPU: use device='auto' or 'cpu'.")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError("device='mps' was asked for but Apple MPS is not available: use device='auto' or 'cpu'.")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device, family: str = SD15) -> torch.dtype:
    """`auto`: what the official scripts use on a GPU (fp16 for SD1.5, bf16 for SDXL on CUDA), fp32 on CPU."""
    if dtype == "auto":
        if device.type == "cuda" and family == SDXL and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"dtype={dtype!r} is not one of auto, {', '.join(DTYPES)}.")
    return DTYPES[dtype]
