"""Real-size PASD networks with seeded random weights, built in memory from the configs shipped in
pasd_core/weights/{sd15,sdxl}/: what the benchmarks time and the GPU tests run (no download; the real
architectures' memory and speed, meaningless pictures).

SD1.5: UNet 320-640-1280-1280 with PACA (~0.9 B parameters); SDXL: UNet 320-640-1280 with PACA (~2.6 B); each with
its ControlNet (conditioning channels 16-32-96-256, as diffusers' ControlNetModel.from_unet makes it), the real-size
VAE and CLIP text encoder(s). The SDXL tokenizers and the PASD-SDXL checkpoint's Euler scheduler config come from the
SDXL parity fixtures (the real CLIP BPE files and the published scheduler_config.json). Also a random LCM-LoRA
merged into the SD1.5 UNet (the LCM fast mode) and a smooth test picture.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from pasd_core.engine.components import SamplerModels
from pasd_core.engine.family import FAMILIES
from pasd_core.engine.pipeline import PASDPipeline
from pasd_core.model_family import SD15, SDXL
from pasd_core.models import PASDControlNet, PASDUNet
from pasd_core.weights.lcm_lora import apply_merges, read_lcm_lora
from pasd_core.weights.sd15_file import SD15_CONFIG_DIR
from pasd_core.weights.sdxl_file import SDXL_CONFIG_DIR
from support.paths import PASD_SDXL, SDXL_BASE
from support.seeding import generator, seeded_init, seeded_noise

CONFIG_DIRS = {SD15: SD15_CONFIG_DIR, SDXL: SDXL_CONFIG_DIR}
# PASD's ControlNet is diffusers' ControlNetModel.from_unet(SD UNet) with the default embedding channels
CONDITIONING_CHANNELS = (16, 32, 96, 256)
# The layer kinds latent-consistency/lcm-lora-sdv1-5 adapts inside the UNet's transformers.
LCM_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")


def read_json(part: str, name: str = "config.json", family: str = SD15) -> dict[str, Any]:
    return json.loads((CONFIG_DIRS[family] / part / name).read_text())


def controlnet_config(unet_config: dict[str, Any]) -> dict[str, Any]:
    from diffusers import ControlNetModel

    accepted = set(inspect.signature(ControlNetModel.__init__).parameters)
    config = {k: v for k, v in unet_config.items() if k in accepted}
    return {**config, "conditioning_embedding_out_channels": list(CONDITIONING_CHANNELS), "return_rgbs": True,
            "use_rrdb": False}


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fan-in-scaled normal weights, unit norm scales, zero biases: activations stay in a normal range."""
    if list(model.buffers()):
        raise RuntimeError(f"{type(model).__name__} has buffers that to_empty would leave uninitialised")
    with torch.no_grad():
        matrices = [(name, p) for name, p in model.named_parameters() if p.ndim >= 2]  # the only ones drawn
        for _, parameter, noise in seeded_noise(matrices, seed):
            parameter.copy_(noise * (1.0 / math.sqrt(parameter[0].numel())))
        for name, parameter in model.named_parameters():
            if parameter.ndim < 2:
                parameter.fill_(1.0 if name.endswith("weight") else 0.0)
    return model.eval().requires_grad_(False)


def build_pasd(variant: str, family: str = SD15) -> tuple[PASDUNet, PASDControlNet]:
    """Real-size PASD UNet and ControlNet of `family`, built on the meta device then filled in place (no double
    init), seeded: the same weights every time."""
    unet_config = read_json("unet", family=family)
    with torch.device("meta"):
        unet = PASDUNet.from_pasd_config(unet_config, variant)
        controlnet = PASDControlNet.from_pasd_config(controlnet_config(unet_config),
                                                     {"controlnet_cond_embedding.to_rgbs.0.weight"})
    return (randomize_(unet.to_empty(device="cpu"), 1), randomize_(controlnet.to_empty(device="cpu"), 2))


def build_base(family: str = SD15, text_layers: int | None = None) -> dict[str, Any]:
    """Real-size tokenizer(s), CLIP text encoder(s) and VAE of `family` with seeded random weights, as
    SamplerModels fields. `text_layers` cuts the text encoders' depth; their widths stay."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    def text_encoder(model_class: type, part: str) -> Any:
        config = CLIPTextConfig.from_json_file(str(CONFIG_DIRS[family] / part / "config.json"))
        config.num_hidden_layers = text_layers or config.num_hidden_layers
        # float(): text_encoder_2's config says float16, which would leave some of its layers in half precision
        return model_class(config).float().eval().requires_grad_(False)

    tokenizers = SD15_CONFIG_DIR if family == SD15 else SDXL_BASE
    with seeded_init(0):
        parts = {"tokenizer": CLIPTokenizer.from_pretrained(str(tokenizers / "tokenizer"), local_files_only=True),
                 "text_encoder": text_encoder(CLIPTextModel, "text_encoder"),
                 "vae": AutoencoderKL.from_config(read_json("vae", family=family)).eval().requires_grad_(False)}
        if family == SDXL:
            parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(str(tokenizers / "tokenizer_2"),
                                                                 local_files_only=True)
            parts["text_encoder_2"] = text_encoder(CLIPTextModelWithProjection, "text_encoder_2")
    return parts


def make_scheduler(family: str) -> Any:
    """A fresh scheduler as the engine makes it: UniPC from SD1.5's config, Euler from PASD-SDXL's own."""
    from diffusers import EulerDiscreteScheduler, UniPCMultistepScheduler

    if family == SD15:
        return UniPCMultistepScheduler.from_config(read_json("scheduler", "scheduler_config.json"))
    path = PASD_SDXL / "scheduler" / "scheduler_config.json"
    return EulerDiscreteScheduler.from_config(json.loads(path.read_text()))


def sampler_models(family: str, base: dict[str, Any], unet: PASDUNet, controlnet: PASDControlNet,
                   dtype: torch.dtype = torch.float32) -> SamplerModels:
    """The models of one run on CPU (PASDPipeline.to moves and casts them)."""
    return SamplerModels(**base, unet=unet, controlnet=controlnet, scheduler=make_scheduler(family),
                         device=torch.device("cpu"), dtype=dtype, family=FAMILIES[family])


def random_lcm_lora(unet: torch.nn.Module, rank: int = 64, alpha: float = 8.0, seed: int = 3) -> dict[str, Any]:
    """A seeded kohya-format LoRA over the stock SD UNet's LCM_LORA_TARGETS (never PACA); each merged delta is about
    5% of its layer's weight scale, so the model stays well behaved."""
    source = generator(seed)
    up_scale = 0.05 / ((alpha / rank) * math.sqrt(rank))  # delta std = 0.05 / sqrt(fan_in), as the weights' 1/sqrt
    tensors: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if "pixel_attentions" in name or not name.endswith(LCM_LORA_TARGETS):
            continue
        weight = module.weight
        fan_in, kernel = weight[0].numel(), weight.shape[2:]
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, *weight.shape[1:], generator=source) / math.sqrt(
            fan_in)
        tensors[f"{key}.lora_up.weight"] = torch.randn(weight.shape[0], rank, *[1] * len(kernel),
                                                       generator=source) * up_scale
        tensors[f"{key}.alpha"] = torch.tensor(alpha)
    return tensors


def lcm_pipeline(base: dict[str, Any], dtype: torch.dtype = torch.float32) -> PASDPipeline:
    """Real-size PASD-SD1.5 (seeded random weights) with a random rank-64 LCM-LoRA merged by the engine's own
    LCM-LoRA reader, and LCMScheduler, on CPU."""
    from diffusers import LCMScheduler

    unet, controlnet = build_pasd("pasd", SD15)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lcm_lora.safetensors"
        save_file(random_lcm_lora(unet), str(path))
        apply_merges(read_lcm_lora(unet, base["text_encoder"], path, SD15), path)
    models = sampler_models(SD15, base, unet, controlnet, dtype)
    models = dataclasses.replace(models, scheduler=LCMScheduler.from_config(read_json("scheduler",
                                                                                       "scheduler_config.json")))
    return PASDPipeline(models, "pasd", lcm=True)


def photo(size: int) -> Image.Image:
    """A smooth picture with some texture, so the VAE and colour fix see ordinary content."""
    y, x = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(0)
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], axis=-1) * 200 + rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
