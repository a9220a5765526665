"""A medium-size random-weight PASD-SD1.5 checkpoint and base, written once to a cache folder, for start-up timing.

Medium, as in the issue's side-by-side run: PASD UNet (with PACA) and ControlNet at channels 64-128-256-256, on a
base with the real SD1.5 text encoder (CLIP ViT-L, 123M parameters) and VAE (84M), so that model construction and
weight reading weigh what they weigh in a real run. Folders and files follow the published layout (PASD
`unet/` + `controlnet/`; a diffusers base folder), so the CLI, the nodes and any older checkout load them as they
are. Weights are seeded: the same files every time. The benchmarks of start-up and of the prompt stage share one
cache of it (DEFAULT_CACHE).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

MEDIUM_CHANNELS = [64, 128, 256, 256]
FORMAT = 1  # bump when what is written changes, so an old cache is rebuilt
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "comfyui-pasd-bench" / "medium-sd15"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def build_medium(cache: Path) -> tuple[Path, Path]:
    """(base folder, PASD checkpoint folder) under `cache`, built on first use."""
    base, pasd = cache / "stable-diffusion-v1-5", cache / "pasd" / "checkpoint-100000"
    stamp = cache / "built.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("format") == FORMAT:
        return base, pasd
    import torch
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from pasd_core.model_family import SD15
    from pasd_core.models import PASDControlNet, PASDUNet
    from support.real_size import CONFIG_DIRS, controlnet_config, randomize_, read_json
    from support.seeding import seeded_init

    shutil.rmtree(cache, ignore_errors=True)
    config_dir = CONFIG_DIRS[SD15]
    unet_config = {**read_json("unet"), "block_out_channels": MEDIUM_CHANNELS}
    control_config = controlnet_config(unet_config)
    with torch.device("meta"):
        unet = PASDUNet.from_pasd_config(unet_config, "pasd")
        controlnet = PASDControlNet.from_pasd_config(control_config, {"controlnet_cond_embedding.to_rgbs.0.weight"})
    for part, model, config, seed in (("unet", unet, unet_config, 1), ("controlnet", controlnet, control_config, 2)):
        model = randomize_(model.to_empty(device="cpu"), seed)
        _write_json(pasd / part / "config.json", config)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(pasd / part / "diffusion_pytorch_model.safetensors"))

    with seeded_init(0):
        text_encoder = CLIPTextModel(CLIPTextConfig.from_json_file(str(config_dir / "text_encoder" / "config.json")))
        vae = AutoencoderKL.from_config(read_json("vae"))
    text_encoder.save_pretrained(str(base / "text_encoder"), safe_serialization=True)
    vae.save_pretrained(str(base / "vae"), safe_serialization=True)
    for part in ("tokenizer", "scheduler"):
        shutil.copytree(config_dir / part, base / part)
    _write_json(base / "model_index.json", {"_class_name": "StableDiffusionPipeline"})
    _write_json(stamp, {"format": FORMAT, "channels": MEDIUM_CHANNELS})
    return base, pasd
