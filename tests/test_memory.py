"""Memory policy: VAE tile sizes from free memory, and smaller tiles instead of failing on out-of-memory."""

from __future__ import annotations

import torch
from PIL import Image

from pasd_core.engine import memory
from pasd_core.engine import pipeline as pipeline_module
from pasd_core.engine.family import OFFICIAL_VAE_TILES


def test_cpu_keeps_the_official_vae_tiles():
    assert memory.vae_tiles_for(torch.device("cpu"), torch.float32, OFFICIAL_VAE_TILES) == OFFICIAL_VAE_TILES


def test_small_gpu_gets_smaller_vae_tiles(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * 1024**3, 8 * 1024**3))
    encode, decode = memory.vae_tiles_for(torch.device("cuda"), torch.float16, OFFICIAL_VAE_TILES)
    assert decode < OFFICIAL_VAE_TILES[1] and memory.vae_peak_bytes(decode, torch.float16) <= 1024**3
    assert encode <= decode


def test_halving_stops_at_the_smallest_tiles():
    settings = {"latent_tile_size": 64, "latent_tile_overlap": 8}
    smaller, vae = memory.halve_tiles(settings, (1024, 1792))
    assert smaller["latent_tile_size"] == 32 and vae == (512, 896)
    assert memory.halve_tiles({"latent_tile_size": 8, "latent_tile_overlap": 2}, (256, 256)) is None


def test_out_of_memory_on_gpu_retries_with_smaller_tiles(tiny_pipeline, monkeypatch):
    pipeline = tiny_pipeline("pasd")
    attempts = []

    def run(image, settings, prompt, on_step=None, should_stop=None, refine=None):
        attempts.append(settings["latent_tile_size"])
        if len(attempts) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return image

    monkeypatch.setattr(pipeline._sampler, "run", run)
    monkeypatch.setattr(pipeline.models, "device", torch.device("cuda"))
    monkeypatch.setattr(pipeline_module.memory, "vae_tiles_for", lambda device, dtype, official: OFFICIAL_VAE_TILES)
    monkeypatch.setattr(pipeline_module, "release", lambda device: None)
    pipeline.upscale(Image.new("RGB", (8, 8)), {"latent_tile_size": 64, "high_level_info": "none"})
    assert attempts == [64, 32]
