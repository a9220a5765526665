"""Tiny SD1.5 modules, the files users download for them, and tiny PASD checkpoints of other architectures.

`write_original_sd_file` writes diffusers/transformers modules as an original-layout (CompVis/LDM)
single file, the reverse of diffusers' `convert_ldm_*_checkpoint`, with explicit renaming rules
(the layout facts are those of diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py).
`write_kohya_lora` writes a kohya-style LoRA and returns the weight change each layer should get.
`write_pasd_checkpoint` writes a small random PASD checkpoint in the official on-disk layout, for architectures the
fixtures lack.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from support.paths import PASD, SD15
from support.seeding import generator, perturb, seeded_init, seeded_noise

PASD_UNET_CONFIG = PASD / "unet" / "config.json"

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
           ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def read_config(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def tiny_sd_modules(seed: int = 0, **unet_overrides) -> tuple:
    """A stock UNet (the fixture PASD UNet's config), VAE and CLIP text encoder, with seeded weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with seeded_init(seed):  # the random init is seeded too, without touching the tests' RNG
        unet = UNet2DConditionModel.from_config({**read_config(PASD_UNET_CONFIG), **unet_overrides})
        vae = AutoencoderKL.from_config(read_config(SD15 / "vae" / "config.json"))
        text_config = CLIPTextConfig.from_dict(read_config(SD15 / "text_encoder" / "config.json"))
        text_encoder = CLIPTextModel(text_config)
    return perturb(unet, seed), perturb(vae, seed + 1), perturb(text_encoder, seed + 2)


def _resnet(rest: str) -> str:
    for diffusers_name, ldm_name in _RESNET:
        if rest.startswith(diffusers_name + "."):
            return ldm_name + rest[len(diffusers_name):]
    return rest


def unet_key_to_original(key: str, config: dict) -> str:
    """A diffusers UNet2DConditionModel key in the original layout (without `model.diffusion_model.`)."""
    stride = config["layers_per_block"] + 1  # an LDM level holds its resnets (+ attentions) and a resampler
    for diffusers_name, ldm_name in _UNET_TOP.items():
        if key.startswith(diffusers_name + "."):
            return ldm_name + key[len(diffusers_name):]
    if match := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = stride * block + layer + 1
        return f"input_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    if match := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{stride * (int(match[1]) + 1)}.0.op.{match[2]}"
    if match := re.match(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(match[1])}.{_resnet(match[2])}"
    if match := re.match(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{match[1]}"
    if match := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = stride * block + layer
        return f"output_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
    if match := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(match[1])
        slot = 2 if "CrossAttn" in config["up_block_types"][block] else 1  # after the attention, if any
        return f"output_blocks.{stride * block + stride - 1}.{slot}.conv.{match[2]}"
    raise KeyError(f"no original-layout name for UNet key {key}")


def vae_key_to_original(key: str, levels: int) -> str:
    """A diffusers AutoencoderKL key in the original layout (without `first_stage_model.`)."""
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    if match := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        rest = match[2]
        for diffusers_name, ldm_name in _VAE_ATTENTION:
            rest = rest.replace(diffusers_name + ".", ldm_name + ".")
        return f"{match[1]}.mid.attn_1.{rest}"
    key = re.sub(r"mid_block\.resnets\.(\d+)", lambda m: f"mid.block_{int(m[1]) + 1}", key)
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets", r"encoder.down.\1.block", key)
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample", key)
    # the decoder's up levels are numbered from the lowest resolution in diffusers, the highest in LDM
    key = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block", key)
    return re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0",
                  lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample", key)


def original_state_dict(unet=None, vae=None, text_encoder=None) -> dict[str, torch.Tensor]:
    """The original single-file state dict of whichever modules are given."""
    state: dict[str, torch.Tensor] = {}
    if unet is not None:
        for key, tensor in unet.state_dict().items():
            state["model.diffusion_model." + unet_key_to_original(key, dict(unet.config))] = tensor
    if vae is not None:
        levels = len(vae.config.block_out_channels)
        for key, tensor in vae.state_dict().items():
            if ".mid_block.attentions.0." in key and tensor.ndim == 2:
                tensor = tensor[:, :, None, None]  # LDM's VAE attention uses 1x1 convolutions
            state["first_stage_model." + vae_key_to_original(key, levels)] = tensor
    if text_encoder is not None:
        for key, tensor in text_encoder.state_dict().items():
            name = key if key.startswith("text_model.") else "text_model." + key
            state["cond_stage_model.transformer." + name] = tensor
        # as in the released SD1.5 files; loaders must ignore it
        state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    if state:  # released files also carry the training schedule
        state["alphas_cumprod"] = torch.linspace(0.999, 0.005, 1000)
    return state


def write_state_dict(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """.safetensors, or a Lightning-style {"state_dict": …} pickle for .ckpt/.pt."""
    path = Path(path)
    state = {k: v.contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "global_step": 840000}, str(path))
    return path


def write_original_sd_file(path: Path, unet=None, vae=None, text_encoder=None) -> Path:
    return write_state_dict(path, original_state_dict(unet, vae, text_encoder))


def kohya_name(module_name: str, component: str) -> str:
    """kohya's name of a module: its dotted path with underscores, under lora_unet_ / lora_te_."""
    if component == "unet":
        return "lora_unet_" + module_name.replace(".", "_")
    # kohya names CLIP layers from `text_model.` down, even where transformers >= 5.6 dropped that level
    name = module_name if module_name.startswith("text_model.") else "text_model." + module_name
    return "lora_te_" + name.replace(".", "_")


LORA_TARGETS = {
    "unet": re.compile(r".*(attn[12]\.(to_q|to_k|to_v|to_out\.0)|proj_in|proj_out)$"),
    "text_encoder": re.compile(r".*(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.fc[12])$"),
}


def write_kohya_layers(path: Path, models: Sequence[tuple[str, torch.nn.Module]], name_of: Callable[[str, str], str],
                       rank: int, seed: int, alpha: float | None) -> dict[tuple[str, str], torch.Tensor]:
    """A kohya LoRA on the attention (and 1x1 proj) layers of `models` ((component, model) pairs: the UNet and the
    text encoders), the PASD-only layers left out, each layer named `name_of(module name, component)`; returns
    {(component, module): up @ down}."""
    source = generator(seed)
    state: dict[str, torch.Tensor] = {}
    deltas: dict[tuple[str, str], torch.Tensor] = {}
    for component, model in models:
        targets = LORA_TARGETS["unet" if component == "unet" else "text_encoder"]
        for name, module in model.named_modules():
            if not targets.match(name) or ".pixel_attentions." in name or "_plus" in name:
                continue
            weight = module.weight
            down = torch.randn((rank, weight.shape[1], *weight.shape[2:]), generator=source) * 0.1
            up = torch.randn((weight.shape[0], rank, *([1] * (weight.ndim - 2))), generator=source) * 0.1
            prefix = name_of(name, component)
            state[f"{prefix}.lora_down.weight"] = down
            state[f"{prefix}.lora_up.weight"] = up
            state[f"{prefix}.alpha"] = torch.tensor(float(rank if alpha is None else alpha))
            deltas[(component, name)] = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
    write_state_dict(path, state)
    return deltas


def write_kohya_lora(path: Path, unet, text_encoder, rank: int = 2, seed: int = 0,
                     alpha: float | None = None) -> dict[tuple[str, str], torch.Tensor]:
    """A kohya LoRA on the attention (and 1x1 proj) layers; returns {(component, module): up @ down}."""
    return write_kohya_layers(path, (("unet", unet), ("text_encoder", text_encoder)), kohya_name, rank, seed, alpha)


def _pasd_config(component: str, **overrides) -> dict:
    config = json.loads((PASD / component / "config.json").read_text())
    config.update(overrides)
    return config


def _randomize(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    return {k: noise * 0.05 for k, _, noise in seeded_noise(model.state_dict().items(), seed)}


def write_pasd_checkpoint(folder: Path, variant: str = "pasd", *, rrdb: bool = False, seed: int = 0,
                          **architecture) -> Path:
    """`folder/unet` and `folder/controlnet`, each config.json + diffusion_pytorch_model.safetensors."""
    from pasd_core.models import PASDControlNet, PASDUNet

    shared = {k: v for k, v in architecture.items()}
    unet_config = _pasd_config("unet", **shared)
    control_config = _pasd_config("controlnet", use_rrdb=rrdb, **{k: v for k, v in shared.items()
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
