"""Builds small random PASD checkpoints in the official on-disk layout, for architectures the fixtures lack."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from conftest import PASD
from pasd_core.models import PASDControlNet, PASDUNet


def _config(component: str, **overrides) -> dict:
    config = json.loads((PASD / component / "config.json").read_text())
    config.update(overrides)
    return config


def _randomize(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=generator) * 0.05 for k, v in model.state_dict().items()}


def write_pasd_checkpoint(folder: Path, variant: str = "pasd", *, rrdb: bool = False, seed: int = 0,
                          **architecture) -> Path:
    """`folder/unet` and `folder/controlnet`, each config.json + diffusion_pytorch_model.safetensors."""
    shared = {k: v for k, v in architecture.items()}
    unet_config = _config("unet", **shared)
    control_config = _config("controlnet", use_rrdb=rrdb, **{k: v for k, v in shared.items()
                                                             if k not in ("up_block_types", "sample_size")})
    unet = PASDUNet.from_pasd_config(unet_config, variant)
    keys = {"controlnet_cond_embedding.to_rgbs.0.weight"}
    if rrdb:
        keys.add("controlnet_cond_embedding.preprocesser.0.rdb1.conv1.weight")
    controlnet = PASDControlNet.from_pasd_config(control_config, keys)
    for name, config, model, offset in (("unet", unet_config, unet, 0), ("controlnet", control_config, controlnet, 1)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "config.json").write_text(json.dumps(config, indent=2))
        save_file(_randomize(model, seed + offset), folder / name / "diffusion_pytorch_model.safetensors")
    return folder
