"""Memory policy: how large the VAE tiles may be, how many latent tiles one denoiser call takes, and what to do when
a GPU runs out of memory.

Kept simple enough to trust without a GPU run: sizes come from free memory with a generous margin, and an
out-of-memory error falls back (one latent tile per call, then half-size tiles) instead of failing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

# SD's VAE decoder at full resolution keeps a few 128-channel maps alive, plus lower-resolution ones. Measured on
# an H200 (tests/test_gpu.py, 2026-11-26): an untiled 2048² SDXL decode in bf16 added 1,223 values per output pixel
# to the weights; rounded up by a fifth so the memory asked of ComfyUI covers it.
_VAE_VALUES_PER_PIXEL = 1500
_SMALLEST_TILE = 256


def vae_tiles_for(device: torch.device, dtype: torch.dtype, official: tuple[int, int]) -> tuple[int, int]:
    """(encode, decode) VAE tile sides: the family's `official` ones when they fit in half the free GPU memory."""
    if device.type != "cuda":
        return official
    free, _ = torch.cuda.mem_get_info(device)
    budget = free / 2
    decode = official[1]
    while decode > _SMALLEST_TILE and vae_peak_bytes(decode, dtype) > budget:
        decode //= 2
    return min(official[0], decode), decode


def vae_peak_bytes(tile: int, dtype: torch.dtype, pixels: int | None = None) -> int:
    """The VAE decoder's peak on a tile of `tile`² pixels, or on an image of `pixels` when that is smaller."""
    covered = tile * tile if pixels is None else min(tile * tile, pixels)
    return covered * _VAE_VALUES_PER_PIXEL * torch.finfo(dtype).bits // 8


def denoiser_peak_bytes(values_per_latent: int, items: int, latent_pixels: int, dtype: torch.dtype) -> int:
    """One ControlNet + UNet call's activations beside the weights: `items` samples (the guidance pair counts two) of
    `latent_pixels` each, at the family's measured `values_per_latent` (family.py)."""
    return values_per_latent * items * latent_pixels * torch.finfo(dtype).bits // 8


def tiles_per_call(device: torch.device, one_tile_bytes: int, tiles: int) -> int:
    """How many latent tiles of one step a denoiser call takes: as many as fit in half the free memory, at least
    one; one where free memory cannot be read (MPS, a CPU without /proc/meminfo)."""
    free = free_bytes(device)
    if free is None or tiles <= 1:
        return 1
    return max(1, min(tiles, int(free / 2 // max(one_tile_bytes, 1))))


def free_bytes(device: torch.device) -> int | None:
    """Memory a pass may still take on `device`: the driver's free memory plus torch's unused cache on CUDA (as
    ComfyUI counts it); on a Linux CPU MemAvailable, or the container's (cgroup's) room when that is less; None where
    it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        with contextlib.suppress(OSError, ValueError, StopIteration):
            lines = Path("/proc/meminfo").read_text().splitlines()
            available = int(next(line for line in lines if line.startswith("MemAvailable:")).split()[1]) * 1024
            room = _cgroup_room()
            return available if room is None else min(available, room)
    return None


# (limit, use) of a container's memory: cgroup v2, then v1
_CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                 ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def _cgroup_room() -> int | None:
    """A memory-limited container's limit less its use (cgroup v2, then v1); None without a limit."""
    for limit, used in _CGROUP_FILES:
        with contextlib.suppress(OSError, ValueError):
            text = Path(limit).read_text().strip()
            if text == "max" or int(text) >= 1 << 60:  # v1 writes a huge number for "no limit"
                return None
            return max(0, int(text) - int(Path(used).read_text()))
    return None


def halve_tiles(settings: Mapping[str, Any], vae_tiles: tuple[int, int]) -> tuple[dict, tuple[int, int]] | None:
    """Smaller tiles after an out-of-memory error (the latent tile settings to change, the VAE tiles), or None when
    they are already the smallest."""
    latent = max(8, settings["latent_tile_size"] // 2 // 8 * 8)
    vae = (max(_SMALLEST_TILE, vae_tiles[0] // 2), max(_SMALLEST_TILE, vae_tiles[1] // 2))
    if latent == settings["latent_tile_size"] and vae == vae_tiles:
        return None
    overlap = min(settings["latent_tile_overlap"], latent // 2)
    return {"latent_tile_size": latent, "latent_tile_overlap": overlap}, vae


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()
