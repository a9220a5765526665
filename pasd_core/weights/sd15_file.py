"""Original-layout Stable Diffusion 1.5 single files, as ComfyUI users keep them in models/checkpoints.

A checkpoint is read without executing pickled code (safetensors, or `torch.load(weights_only=True)`
for `.ckpt`/`.pt`), recognised from its key names (SD1.5, or SDXL, SD2, a LoRA…), and its UNet, VAE
and CLIP text-encoder weights are renamed to diffusers/transformers names by diffusers' own
converters (`diffusers.loaders.single_file_utils`; tested with diffusers 0.27.0 and 0.42.1, with
transformers 4.40 and 5.23).

`load_base_components` builds what PASD takes from the base model (text encoder, tokenizer, VAE,
scheduler config) from the SD1.5 config files shipped in `pasd_core/weights/sd15/` (those of
runwayml/stable-diffusion-v1-5, as the official PASD repository keeps them in checkpoints/; the
tokenizer is CLIP ViT-L/14's BPE), so nothing is fetched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError, ModelMismatchError
from ..model_family import SD15
from .base_model import BaseModel
from .reader import CLIP_PREFIX, VAE_PREFIX, CheckpointFile, checkpoint_kind, read_config

logger = logging.getLogger(__name__)

SD15_CONFIG_DIR = Path(__file__).with_name("sd15")


def require_sd15(checkpoint: CheckpointFile, needs: Mapping[str, str]) -> None:
    """Raise ModelError unless `checkpoint` is an SD1.x file with the parts in `needs` (name → key prefix)."""
    path, kind = checkpoint.path, checkpoint_kind(checkpoint.keys)
    sd15 = "PASD needs an SD1.5 base (Stable Diffusion 1.5 or a model fine-tuned from it)"
    if kind == "sdxl":
        raise ModelMismatchError(f"{path} looks like an SDXL checkpoint, {sd15}.")
    if kind == "sd2":
        raise ModelError(f"{path} looks like an SD2.x checkpoint (OpenCLIP text encoder), {sd15}.")
    if kind == "lora":
        raise ModelError(f"{path} is a LoRA, not a full checkpoint: load it as a LoRA instead.")
    if kind == "diffusers":
        raise ModelError(f"{path} holds diffusers-format weights, not an original single-file checkpoint: "
                         "use the diffusers folder it belongs to.")
    if kind != "sd1":
        raise ModelError(f"{path} does not look like a Stable Diffusion checkpoint (keys such as "
                         f"{checkpoint.keys[:3]}); {sd15}.")
    for part, prefix in needs.items():
        if not any(k.startswith(prefix) for k in checkpoint.keys):
            raise ModelError(f"{path} has no {part} weights ({prefix}*): PASD needs a full SD1.5 checkpoint "
                             "with UNet, VAE and CLIP text encoder.")


def _without_missing(converted: dict[str, Any]) -> dict[str, torch.Tensor]:
    # newer diffusers converters store None for an absent source key; the fit check reports those
    return {k: v for k, v in converted.items() if v is not None}


def convert_unet_state_dict(state: Mapping[str, torch.Tensor],
                            unet_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Original-layout UNet weights (`model.diffusion_model.*`) renamed for a diffusers UNet2DConditionModel."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    # a copy: diffusers before 0.28 pops the keys it converts out of the dict it is given
    try:
        return _without_missing(convert_ldm_unet_checkpoint(dict(state), dict(unet_config)))
    except (KeyError, IndexError) as error:
        raise ModelError(f"the UNet weights are incomplete or not in the SD layout (no {error}).") from None


def convert_vae_state_dict(state: Mapping[str, torch.Tensor],
                           vae_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Original-layout VAE weights (`first_stage_model.*`) renamed for a diffusers AutoencoderKL."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae_only = {k: v for k, v in state.items() if k.startswith(VAE_PREFIX)}
    try:
        return _without_missing(convert_ldm_vae_checkpoint(vae_only, dict(vae_config)))
    except (KeyError, IndexError) as error:
        raise ModelError(f"the VAE weights are incomplete or not in the SD layout (no {error}).") from None


def convert_text_encoder_state_dict(state: Mapping[str, torch.Tensor],
                                    text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Original-layout CLIP weights (`cond_stage_model.transformer.*`) named as `text_encoder` names them.

    The original layout is transformers' own under a prefix, so this is a prefix change (diffusers'
    `convert_ldm_clip_checkpoint` does the same but returned a model, fetched from the Hub, before 0.28).
    transformers >= 5.6 dropped CLIPTextModel's `text_model.` level; very old files lack it too.
    `position_ids` is never taken from the file: some checkpoints carry a float, corrupted copy.
    """
    wants_text_model = any(k.startswith("text_model.") for k in text_encoder.state_dict())
    converted = {}
    for key, tensor in state.items():
        if not key.startswith(CLIP_PREFIX) or key.endswith("position_ids"):
            continue
        name = key[len(CLIP_PREFIX):].removeprefix("text_model.")
        converted[f"text_model.{name}" if wants_text_model else name] = tensor
    return converted


def check_fits(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: Path, part: str,
               required: Iterable[str] | None = None, family: str = "SD1.5") -> None:
    """Raise ModelError naming the first weight whose shape differs, or the `required` keys absent from `state`.

    `required` defaults to every weight of `model` (its non-persistent buffers are not in its state dict).
    """
    expected = model.state_dict()  # shapes are known on the meta device too
    for key, tensor in state.items():
        if key in expected and expected[key].shape != tensor.shape:
            raise ModelError(f"{source} does not fit: its {part} weight {key} has shape {tuple(tensor.shape)} "
                             f"where PASD's {family} {part} has {tuple(expected[key].shape)}{_shape_hint(key)}.")
    # position_ids: a buffer that older transformers saved and loaders rebuild (see the text-encoder converter)
    missing = [k for k in (expected if required is None else required)
               if k not in state and not k.endswith("position_ids")]
    if missing:
        raise ModelError(f"{source} lacks {len(missing)} of the {part} weights (e.g. {missing[:3]}): the file is "
                         "incomplete or holds a different architecture.")


def _shape_hint(key: str) -> str:
    if key == "conv_in.weight":
        return " (an inpainting or instruct-pix2pix model? PASD needs a regular 4-channel SD1.5 model)"
    if ".attn2.to_k." in key or ".attn2.to_v." in key or "token_embedding" in key:
        return " (its text-encoder width is not SD1.5's: is it an SD2 or SDXL model?)"
    return ""


def load_base_components(path: str | Path, config_dir: str | Path | None = None,
                         dtype: torch.dtype = torch.float32) -> BaseModel:
    """Text encoder, tokenizer, VAE and scheduler config of an SD1.5 single-file checkpoint, offline.

    `config_dir` holds `text_encoder/`, `vae/`, `tokenizer/`, `scheduler/` as in a diffusers SD1.5
    folder (default: the copy shipped in `pasd_core/weights/sd15/`). Only the CLIP and VAE tensors are read.
    """
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    config_dir = Path(config_dir) if config_dir is not None else SD15_CONFIG_DIR
    checkpoint = CheckpointFile(path, "SD1.5 base model")
    require_sd15(checkpoint, {"CLIP text encoder": CLIP_PREFIX, "VAE": VAE_PREFIX})
    state = checkpoint.tensors((CLIP_PREFIX, VAE_PREFIX))

    text_config = CLIPTextConfig.from_dict(read_config(config_dir / "text_encoder" / "config.json"))
    with torch.device("meta"):  # architecture only: weights come from the file, nothing is initialised
        text_shape = CLIPTextModel(text_config)
        vae = AutoencoderKL.from_config(read_config(config_dir / "vae" / "config.json"))

    text_state = convert_text_encoder_state_dict(state, text_shape)
    embedding = next((v for k, v in text_state.items() if k.endswith("token_embedding.weight")), None)
    if embedding is not None and embedding.shape[-1] != text_config.hidden_size:
        raise ModelError(f"{checkpoint.path} has a {embedding.shape[-1]}-wide text encoder, but the SD1.5 config "
                         f"in {config_dir / 'text_encoder'} is {text_config.hidden_size} wide: it is not an SD1.5 "
                         "checkpoint (SD2 and SDXL do not fit PASD).")
    check_fits(text_shape, text_state, checkpoint.path, "text encoder")
    # from_pretrained with a state dict: builds without random init and sets the non-persistent buffers
    text_encoder = CLIPTextModel.from_pretrained(None, config=text_config, state_dict=text_state)

    vae_state = convert_vae_state_dict(state, vae.config)
    check_fits(vae, vae_state, checkpoint.path, "VAE")
    # cast before assigning: one copy, and diffusers' `.to(dtype)` warning is not triggered
    vae.load_state_dict({k: v.to(dtype) for k, v in vae_state.items()}, strict=False, assign=True)

    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(config_dir / "tokenizer"), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load the CLIP tokenizer from {config_dir / 'tokenizer'}: {error}") from None
    scheduler_config = read_config(config_dir / "scheduler" / "scheduler_config.json")
    logger.info("loaded the SD1.5 text encoder and VAE from %s", checkpoint.path)
    return BaseModel(SD15, tokenizer=tokenizer, text_encoder=text_encoder.to(dtype).eval().requires_grad_(False),
                     vae=vae.eval().requires_grad_(False), scheduler_config=scheduler_config)
