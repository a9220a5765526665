"""Test checkpoints that ComfyUI's own loaders accept, for the native (adapter) path in a real ComfyUI.

ComfyUI's Load Checkpoint detects the model type from the state dict (comfy/model_detection.py, then the
first match in comfy/supported_models.py): SD15 needs context_dim 768, model_channels 320, conv (not linear)
transformer projections, 8 heads; its GroupNorms have 32 groups. It builds CLIP-L and the SD VAE at full
size whatever the file holds. So the UNet here is SD1.5 cut to three levels (320, 640, 640 channels, one
res block each, cross attention on the first two) and the CLIP-L and VAE weights are full size, random and
seeded.

What `build_native_sd15` writes, as a ComfyUI models folder (the names the native templates use):
- checkpoints/v1-5-pruned-emaonly.safetensors: the base, original (LDM) layout, fp16 on disk; its UNet
  weights are exactly the PASD UNet's SD weights (rounded through fp16 once), so the engine (PASD UNet
  from the adapter folder, CLIP and VAE from this file) and ComfyUI (UNet, CLIP, VAE from this file,
  PACA and ControlNet from the adapter folder) compute with the same numbers;
- pasd/pasd/checkpoint-100000 and pasd/pasd_light/checkpoint-120000: adapter folders as published (unet/ +
  controlnet/, diffusers configs, fp32 safetensors), variants pasd and pasd_light, with the same SD weights;
- checkpoints/toonyou_beta6.safetensors: a "personalized" model of the same architecture, other seed;
- loras/add_detail.safetensors: a kohya LoRA on the personalized model (lora_unet_*, lora_te_*).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from pasd_core.models import PASDControlNet, PASDUNet
from pasd_core.weights.sd15_file import SD15_CONFIG_DIR
from support.paths import PASD
from support.sd_checkpoints import original_state_dict, read_config, write_kohya_lora, write_state_dict
from support.seeding import seeded_noise

BASE_FILE = "v1-5-pruned-emaonly.safetensors"
STYLE_FILE = "toonyou_beta6.safetensors"
LORA_FILE = "add_detail.safetensors"  # the name the stylization template picks
ADAPTER = "pasd/checkpoint-100000"
LIGHT_ADAPTER = "pasd_light/checkpoint-120000"
WEIGHTS = "diffusion_pytorch_model.safetensors"

# SD1.5's architecture, three levels of one res block: as small as ComfyUI's SD15 detection allows while keeping
# SD1.5's shape where PASD relies on it. The last two levels have equal widths, as SD1.5's 1280, 1280: the
# official PACA of an UpBlock2D attends to its skips with the block's own width. The configs are otherwise the
# published PASD ones (every key diffusers 0.29 writes), as the fixture checkpoint holds them.
SD15_ARCHITECTURE = {
    **{k: v for k, v in read_config(SD15_CONFIG_DIR / "unet" / "config.json").items() if not k.startswith("_")},
    "block_out_channels": [320, 640, 640], "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
NATIVE_UNET = {**read_config(PASD / "unet" / "config.json"), **SD15_ARCHITECTURE}
NATIVE_CONTROLNET = {
    **read_config(PASD / "controlnet" / "config.json"),
    **{k: v for k, v in SD15_ARCHITECTURE.items() if k not in ("up_block_types", "sample_size", "out_channels",
                                                               "center_input_sample")},
    "conditioning_embedding_out_channels": [16, 32, 96, 256],  # diffusers' default, which train_pasd.py keeps
}
PACA_MARKERS = (".pixel_attentions.", "_plus.")  # the adapter's own UNet modules (pasd, pasd_light)


@dataclass(frozen=True)
class NativeModels:
    """Where build_native_sd15 put each file, and what building took."""

    models: Path  # a ComfyUI models folder
    base: Path
    style: Path
    lora: Path
    adapter: Path
    light_adapter: Path
    seconds: float

    def sizes_mb(self) -> dict[str, float]:
        def size(path: Path) -> float:
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            return round(sum(p.stat().st_size for p in files) / 2**20, 1)

        paths = (self.base, self.style, self.lora, self.adapter, self.light_adapter)
        return {str(p.relative_to(self.models)): size(p) for p in paths}


def seeded_weights(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random weights of `model`'s shapes that keep activations of order 1 through deep stacks.

    Matrices and kernels get std 0.5/sqrt(fan-in); norms scale 1 ± 0.1; biases ± 0.02. The ControlNet's
    zero convolutions get weights too, or the control (and so PACA) would be exactly zero.
    """
    weights = {}
    for name, tensor, noise in seeded_noise(model.state_dict().items(), seed):
        if tensor.ndim >= 2:
            weights[name] = noise * (0.5 / tensor[0].numel() ** 0.5)
        elif name.endswith("weight"):  # the only 1-d weights are norms'
            weights[name] = 1.0 + 0.1 * noise
        else:
            weights[name] = 0.02 * noise
    return weights


def fp16_exact(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The values an fp16 file holds, in fp32: the same numbers whichever copy a loader reads."""
    return {k: v.half().float() for k, v in weights.items()}


def _on_meta(factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    with torch.device("meta"):  # shapes only: the weights are assigned, nothing is initialised twice
        return factory()


def _assign(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    result = model.load_state_dict(weights, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise AssertionError(f"weights do not fit: {result}")
    return model.eval().requires_grad_(False)


def _sd15_config(part: str) -> dict:
    return read_config(SD15_CONFIG_DIR / part / "config.json")


def stock_unet(weights: dict[str, torch.Tensor] | None = None, seed: int = 0) -> torch.nn.Module:
    """A stock UNet2DConditionModel of NATIVE_UNET: with `weights` (a PASD UNet's: PACA keys are left out),
    or seeded fp16-exact ones."""
    from diffusers import UNet2DConditionModel

    unet = _on_meta(lambda: UNet2DConditionModel.from_config(NATIVE_UNET))
    if weights is None:
        return _assign(unet, fp16_exact(seeded_weights(unet, seed)))
    return _assign(unet, {k: v for k, v in weights.items() if not any(m in k for m in PACA_MARKERS)})


def vae_and_text_encoder(seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Full-size SD1.5 VAE and CLIP-L (ComfyUI builds them at that size), seeded, fp16-exact."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = _on_meta(lambda: AutoencoderKL.from_config(_sd15_config("vae")))
    _assign(vae, fp16_exact(seeded_weights(vae, seed)))
    text_encoder = _on_meta(lambda: CLIPTextModel(CLIPTextConfig.from_dict(_sd15_config("text_encoder"))))
    return vae, _assign(text_encoder, fp16_exact(seeded_weights(text_encoder, seed + 1)))


def write_checkpoint(path: Path, unet: torch.nn.Module, vae: torch.nn.Module, text_encoder: torch.nn.Module) -> Path:
    """An original-layout SD1.5 single file, fp16 on disk as most shared checkpoints are."""
    state = original_state_dict(unet, vae, text_encoder)
    return write_state_dict(path, {k: v.half() if v.is_floating_point() else v for k, v in state.items()})


def write_adapter(folder: Path, seed: int, variant: str = "pasd") -> PASDUNet:
    """A PASD checkpoint folder as published (unet/ + controlnet/, config.json + fp32 safetensors).

    The UNet's SD weights are fp16-exact, so the base file written from them holds the very same numbers.
    """
    unet_config = NATIVE_UNET
    unet = _on_meta(lambda: PASDUNet.from_pasd_config(unet_config, variant))
    unet_weights = seeded_weights(unet, seed)
    unet_weights = {k: v if any(m in k for m in PACA_MARKERS) else v.half().float() for k, v in unet_weights.items()}
    _assign(unet, unet_weights)
    controlnet = _on_meta(lambda: PASDControlNet.from_pasd_config(
        NATIVE_CONTROLNET, {"controlnet_cond_embedding.to_rgbs.0.weight"}))
    control_weights = seeded_weights(controlnet, seed + 1)
    for name, config, weights in (("unet", unet_config, unet_weights), ("controlnet", NATIVE_CONTROLNET,
                                                                        control_weights)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / name / WEIGHTS))
    return unet


def build_native_sd15(models: Path, seed: int = 0) -> NativeModels:
    """The base, the adapter, a personalized model and its LoRA, laid out as a ComfyUI models folder."""
    started = time.perf_counter()
    for folder in ("checkpoints", "loras", "pasd"):
        (models / folder).mkdir(parents=True, exist_ok=True)
    adapter = models / "pasd" / ADAPTER
    pasd_unet = write_adapter(adapter, seed)
    light_adapter = models / "pasd" / LIGHT_ADAPTER
    write_adapter(light_adapter, seed, "pasd_light")
    base = write_checkpoint(models / "checkpoints" / BASE_FILE, stock_unet(pasd_unet.state_dict()),
                            *vae_and_text_encoder(seed + 10))
    style_unet, (style_vae, style_text_encoder) = stock_unet(seed=seed + 20), vae_and_text_encoder(seed + 30)
    style = write_checkpoint(models / "checkpoints" / STYLE_FILE, style_unet, style_vae, style_text_encoder)
    lora = models / "loras" / LORA_FILE
    write_kohya_lora(lora, style_unet, style_text_encoder, rank=4, seed=seed + 40, alpha=1.0)
    return NativeModels(models, base, style, lora, adapter, light_adapter,
                        round(time.perf_counter() - started, 1))
