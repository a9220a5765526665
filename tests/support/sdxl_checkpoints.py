"""The fixtures' tiny SDXL base written as the single file a ComfyUI user downloads.

`sdxl_original_state_dict` is the reverse of `pasd_core.weights.sdxl_file`'s readers, from its own table of
the original (SGM) layout: CLIP ViT-L under `conditioner.embedders.0.transformer.` in transformers' names,
OpenCLIP ViT-bigG under `conditioner.embedders.1.model.` in OpenCLIP's names (q, k, v stacked in
`in_proj_*`, `text_projection` applied as `x @ P`), VAE and UNet as in SD1.5 plus the UNet's `label_emb`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from support.paths import PASD_SDXL, SDXL_BASE
from support.sd_checkpoints import (
    original_state_dict,
    read_config,
    unet_key_to_original,
    write_kohya_layers,
    write_state_dict,
)
from support.seeding import perturb, seeded_init

# transformers' CLIP names (below `text_model.`) → OpenCLIP's, for the whole model and inside each block
_TO_OPEN_CLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_TO_OPEN_CLIP_BLOCK = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                       "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
_TO_LABEL_EMB = {"add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}


def sdxl_base_modules() -> tuple:
    """The fixture SDXL base's text encoder, text encoder 2 and VAE, as diffusers/transformers load the folder."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    modules = (CLIPTextModel.from_pretrained(str(SDXL_BASE / "text_encoder")),
               CLIPTextModelWithProjection.from_pretrained(str(SDXL_BASE / "text_encoder_2")),
               AutoencoderKL.from_pretrained(str(SDXL_BASE / "vae")))
    return tuple(_in_own_memory(module).eval() for module in modules)


def _in_own_memory(module: torch.nn.Module) -> torch.nn.Module:
    """Weights copied out of the memory-mapped file into fresh (64-byte aligned) tensors, as a loader's are.

    Measured: a Linear whose weight sits at an unaligned address in the mapped file can round its output
    1 ulp differently from the same weight in fresh memory, which bit-equality comparisons would report.
    """
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.data = tensor.data.clone()
    return module


def tiny_sdxl_unet(seed: int = 0):
    """A stock SDXL-shaped UNet2DConditionModel (the fixture PASD-SDXL UNet's config) with seeded weights."""
    from diffusers import UNet2DConditionModel

    with seeded_init(seed):
        unet = UNet2DConditionModel.from_config(read_config(PASD_SDXL / "unet" / "config.json"))
    return perturb(unet, seed)


def _inner(key: str) -> str:
    return key.removeprefix("text_model.")  # transformers >= 5.6 CLIPTextModel has no `text_model.` level


def open_clip_state_dict(text_encoder_2) -> dict[str, torch.Tensor]:
    """A CLIPTextModelWithProjection's weights in OpenCLIP's names (without `conditioner.embedders.1.model.`)."""
    weights = {_inner(k): v for k, v in text_encoder_2.state_dict().items() if not k.endswith("position_ids")}
    state = {"text_projection": weights.pop("text_projection.weight").t(),
             "logit_scale": torch.tensor(math.log(100.0))}  # as released files have it; loaders drop it
    layers = {int(k.split(".")[2]) for k in weights if k.startswith("encoder.layers.")}
    for layer in sorted(layers):
        source, target = f"encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            state[f"{target}attn.in_proj_{kind}"] = torch.cat(
                [weights.pop(f"{source}self_attn.{p}_proj.{kind}") for p in "qkv"])
            for name, open_clip_name in _TO_OPEN_CLIP_BLOCK.items():
                state[f"{target}{open_clip_name}.{kind}"] = weights.pop(f"{source}{name}.{kind}")
    for name, open_clip_name in _TO_OPEN_CLIP_TOP.items():
        state[open_clip_name] = weights.pop(name)
    assert not weights, f"no OpenCLIP name for {sorted(weights)}"
    return state


def sdxl_original_state_dict(text_encoder=None, text_encoder_2=None, vae=None, unet=None) -> dict[str, torch.Tensor]:
    """The original SDXL single-file state dict of whichever modules are given."""
    state: dict[str, torch.Tensor] = {}
    if text_encoder is not None:
        for key, tensor in text_encoder.state_dict().items():
            state["conditioner.embedders.0.transformer.text_model." + _inner(key)] = tensor
        # as in the released files; loaders must ignore it
        state["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    if text_encoder_2 is not None:
        state.update({"conditioner.embedders.1.model." + k: v for k, v in open_clip_state_dict(text_encoder_2).items()})
    if vae is not None:
        state.update(original_state_dict(vae=vae))  # the VAE layout is SD1.5's (adds alphas_cumprod, as files have)
    if unet is not None:
        config = dict(unet.config)
        for key, tensor in unet.state_dict().items():
            module, _, kind = key.rpartition(".")
            name = f"{_TO_LABEL_EMB[module]}.{kind}" if module in _TO_LABEL_EMB else unet_key_to_original(key, config)
            state["model.diffusion_model." + name] = tensor
    return state


def write_sdxl_file(path: Path, text_encoder=None, text_encoder_2=None, vae=None, unet=None) -> Path:
    return write_state_dict(path, sdxl_original_state_dict(text_encoder, text_encoder_2, vae, unet))


def tiny_sdxl_modules(seed: int) -> tuple:
    """A 'personalized' SDXL model: the fixture base's text encoders and VAE, and a stock SDXL UNet, all with
    other (seeded) weights; ordered (text_encoder, text_encoder_2, vae, unet) as `write_sdxl_file` takes them."""
    text_encoder, text_encoder_2, vae = sdxl_base_modules()
    return (perturb(text_encoder, seed + 1), perturb(text_encoder_2, seed + 2), perturb(vae, seed + 3),
            tiny_sdxl_unet(seed))


def _kohya_sdxl_name(module_name: str, component: str, unet_config: dict, original_unet_names: bool) -> str:
    if component != "unet":
        # kohya names both CLIPs from `text_model.` down, under lora_te1_ / lora_te2_
        name = module_name if module_name.startswith("text_model.") else "text_model." + module_name
        return {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}[component] + name.replace(".", "_")
    if original_unet_names:  # kohya's SDXL LoRAs name UNet layers in the original (SGM) layout
        module_name = unet_key_to_original(module_name + ".weight", unet_config).removesuffix(".weight")
    return "lora_unet_" + module_name.replace(".", "_")


def write_kohya_sdxl_lora(path: Path, unet, text_encoder, text_encoder_2, rank: int = 2, seed: int = 0,
                          alpha: float | None = None,
                          original_unet_names: bool = True) -> dict[tuple[str, str], torch.Tensor]:
    """A kohya SDXL LoRA on the attention (and proj) layers of the UNet and both text encoders, the PASD-only
    layers left out; returns {(component, module): up @ down}."""
    models = (("unet", unet), ("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2))
    config = dict(unet.config)
    return write_kohya_layers(path, models, lambda name, component: _kohya_sdxl_name(
        name, component, config, original_unet_names), rank, seed, alpha)
