"""The fast mode's precision (params: speed="fast"): the networks compute in bf16 where the device does so natively.

The weights stay as loaded (the same model serves exact and fast runs); torch's autocast runs the matrix products and
convolutions of the UNet, the ControlNet and the VAE in bf16 and leaves the rest (norms, softmax, the scheduler, the
blend of tiles, the colour fix) in fp32; SD1.5's start latents are then drawn in bf16 from the run's generator (the
same seed, the same image every time, not the exact mode's). The text encoders run as loaded. The tile layout is the
other half of the mode (tiling.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch

from ..params import FAST


def native_bf16(device: torch.device) -> bool:
    """True where bf16 arithmetic is native, not emulated: CUDA GPUs from Ampere on (compute capability 8), CPUs with
    AVX-512 BF16 or AMX (oneDNN would also take plain AVX-512, emulating bf16 there: slower and for nothing)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        checks = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return torch.backends.mkldnn.is_available() and any(check is not None and check() for check in checks)
    return False


def fast_precision(settings: Mapping[str, Any], device: torch.device, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype the fast mode's networks compute in, or None where they keep the loaded one (exact mode, weights
    already in half precision, no native bf16)."""
    if settings.get("speed") != FAST or dtype != torch.float32 or not native_bf16(device):
        return None
    return torch.bfloat16


def run_precision(settings: Mapping[str, Any], device: torch.device,
                  dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """The context the UNet, ControlNet and VAE passes run in (reusable: entered once per call)."""
    compute = fast_precision(settings, device, dtype)
    return contextlib.nullcontext() if compute is None else torch.autocast(device.type, dtype=compute)
