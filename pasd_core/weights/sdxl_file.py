"""Original-layout SDXL single files, as ComfyUI users keep them in models/checkpoints.

PASD-SDXL takes from its base both tokenizers, both text encoders (CLIP ViT-L as `CLIPTextModel`,
OpenCLIP ViT-bigG as `CLIPTextModelWithProjection`) and the VAE; personalization also takes the UNet.
In the original (SGM) layout they live under:
  conditioner.embedders.0.transformer.*  CLIP ViT-L, transformers' own names under a prefix
  conditioner.embedders.1.model.*        OpenCLIP ViT-bigG, OpenCLIP's names
  first_stage_model.*                    VAE (as in SD1.5)
  model.diffusion_model.*                UNet (as in SD1.5, plus `label_emb`, the size/pooled-text embedding)

Everything is built offline from the SDXL-base-1.0 config files shipped in `pasd_core/weights/sdxl/` (those of
stabilityai/stable-diffusion-xl-base-1.0). Both SDXL tokenizers use CLIP's BPE, the same vocab.json and
merges.txt as SD1.5's, so those are shipped once, in `weights/sd15/tokenizer/`; `weights/sdxl/tokenizer*/` hold
only the small json settings (tokenizer_2 pads with "!", as SDXL's does).

The OpenCLIP renaming is written here rather than taken from diffusers: `convert_open_clip_checkpoint`
returns a state dict since diffusers 0.28, but 0.27.0 (which requirements.txt allows) has no such function.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError, ModelMismatchError
from ..model_family import SDXL
from .base_model import BaseModel
from .reader import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, CheckpointFile, checkpoint_kind, read_config
from .sd15_file import (
    SD15_CONFIG_DIR,
    check_fits,
    convert_text_encoder_state_dict,
    convert_unet_state_dict,
    convert_vae_state_dict,
)

logger = logging.getLogger(__name__)

SDXL_CONFIG_DIR = Path(__file__).with_name("sdxl")

CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
REFINER_PREFIX = "conditioner.embedders.0.model."  # the SDXL refiner has only an OpenCLIP encoder, first
BPE_FILES = ("vocab.json", "merges.txt")
NEEDS = ("PASD-SDXL needs an SDXL base model (Stable Diffusion XL 1.0 base or a model fine-tuned from it) "
         "as one checkpoint file with both text encoders and the VAE")

# OpenCLIP names → transformers CLIP names (below `text_model.`), outside and inside the residual blocks.
_OPEN_CLIP_TOP = {
    "token_embedding.weight": "embeddings.token_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",  # a bare tensor in OpenCLIP
    "ln_final.weight": "final_layer_norm.weight",
    "ln_final.bias": "final_layer_norm.bias",
}
_OPEN_CLIP_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def require_sdxl_base(checkpoint: CheckpointFile) -> None:
    """Raise ModelError, saying what the file is instead, unless it is an SDXL base with both text encoders and VAE."""
    path, keys = checkpoint.path, checkpoint.keys
    kind = checkpoint_kind(keys)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if kind == "sdxl":
        if has(REFINER_PREFIX):
            raise ModelError(f"{path} looks like the SDXL refiner (one OpenCLIP text encoder), not the base: {NEEDS}.")
        parts = {"CLIP ViT-L text encoder": CLIP_L_PREFIX, "OpenCLIP ViT-bigG text encoder": OPEN_CLIP_PREFIX,
                 "VAE": VAE_PREFIX}
        for part, prefix in parts.items():
            if not has(prefix):
                raise ModelError(f"{path} has no {part} weights ({prefix}*): {NEEDS}.")
        return
    if kind == "sd1" and has(UNET_PREFIX + "label_emb."):
        raise ModelError(f"{path} holds an SDXL UNet without its text encoders: {NEEDS}.")
    if kind == "sd1":
        raise ModelMismatchError(f"{path} looks like an SD1.x checkpoint (one CLIP text encoder, 768 wide): {NEEDS}. "
                         "An SD1.5 model works with the SD1.5 PASD models (pasd, pasd_light) instead.")
    if kind == "sd2":
        raise ModelError(f"{path} looks like an SD2.x checkpoint (one OpenCLIP text encoder): {NEEDS}.")
    if kind == "lora":
        raise ModelError(f"{path} is a LoRA, not a full checkpoint: {NEEDS}.")
    if kind == "diffusers":
        raise ModelError(f"{path} holds diffusers-format weights, not an original single-file checkpoint: "
                         "use the diffusers folder it belongs to.")
    raise ModelError(f"{path} does not look like a Stable Diffusion checkpoint (keys such as {keys[:3]}): {NEEDS}.")


def _text_model_prefix(text_encoder: torch.nn.Module) -> str:
    # transformers >= 5.6 dropped CLIPTextModel's `text_model.` level; CLIPTextModelWithProjection keeps it
    return "text_model." if any(k.startswith("text_model.") for k in text_encoder.state_dict()) else ""


def convert_clip_l_state_dict(state: Mapping[str, torch.Tensor],
                              text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """SDXL's CLIP ViT-L weights (`conditioner.embedders.0.transformer.*`) named as `text_encoder` names them.

    The layout is SD1.5's under another prefix, so SD1.5's converter does the work (and drops `position_ids`).
    """
    moved = {CLIP_PREFIX + k[len(CLIP_L_PREFIX):]: v for k, v in state.items() if k.startswith(CLIP_L_PREFIX)}
    return convert_text_encoder_state_dict(moved, text_encoder)


def convert_open_clip_state_dict(state: Mapping[str, torch.Tensor],
                                 text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """SDXL's OpenCLIP ViT-bigG weights (`conditioner.embedders.1.model.*`) named as `text_encoder`
    (a transformers CLIPTextModelWithProjection) names them.

    Layout facts: each residual block keeps the attention's q, k and v stacked, in that order, in
    `attn.in_proj_weight`/`in_proj_bias`; OpenCLIP projects the pooled state as `x @ text_projection`,
    so the Linear takes the transpose; `logit_scale` serves contrastive training only and is dropped.
    """
    inner = _text_model_prefix(text_encoder)
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if not key.startswith(OPEN_CLIP_PREFIX):
            continue
        name = key[len(OPEN_CLIP_PREFIX):]
        if name == "text_projection":
            converted["text_projection.weight"] = tensor.t().contiguous()
        elif name in _OPEN_CLIP_TOP:
            converted[inner + _OPEN_CLIP_TOP[name]] = tensor
        elif match := re.fullmatch(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", name):
            layer, kind = match.groups()
            for projection, part in zip(("q_proj", "k_proj", "v_proj"), tensor.tensor_split(3), strict=True):
                converted[f"{inner}encoder.layers.{layer}.self_attn.{projection}.{kind}"] = part
        elif match := re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)", name):
            layer, module, kind = match.groups()
            if module in _OPEN_CLIP_BLOCK:
                converted[f"{inner}encoder.layers.{layer}.{_OPEN_CLIP_BLOCK[module]}.{kind}"] = tensor
    return converted


def convert_sdxl_unet_state_dict(state: Mapping[str, torch.Tensor],
                                 unet_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Original-layout SDXL UNet weights (`model.diffusion_model.*`) renamed for a diffusers
    UNet2DConditionModel with `unet_config` (SDXL base's: `pasd_core/sdxl/unet/config.json`)."""
    if not any(k.startswith(UNET_PREFIX + "label_emb.") for k in state):
        raise ModelError("the UNet weights are not an SDXL UNet (they lack its size/pooled-text embedding "
                         f"{UNET_PREFIX}label_emb.*): PASD-SDXL needs an SDXL model.")
    # diffusers' convert_ldm_unet_checkpoint maps label_emb to add_embedding when the config says "text_time"
    return convert_unet_state_dict(state, unet_config)


def _check_shapes(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: Path, part: str,
                  config_folder: Path) -> None:
    # before check_fits, whose shape message speaks of SD1.5
    expected = model.state_dict()  # shapes are known on the meta device too
    for key, tensor in state.items():
        if key in expected and expected[key].shape != tensor.shape:
            raise ModelError(f"{source} does not fit the SDXL {part} described in {config_folder}: its weight {key} "
                             f"has shape {tuple(tensor.shape)} where the config gives {tuple(expected[key].shape)}; "
                             f"{NEEDS}.")


def _text_config(folder: Path) -> Any:
    from transformers import CLIPTextConfig

    settings = read_config(folder / "config.json")
    # SDXL's configs say float16, the dtype they were saved in; left in, transformers >= 5 would load the
    # weights in it (a lossy round trip for an fp32 file). The caller's `dtype` decides instead.
    for key in ("torch_dtype", "dtype"):
        settings.pop(key, None)
    return CLIPTextConfig.from_dict(settings)


def _load_text_encoder(model_class: Any, folder: Path, checkpoint: CheckpointFile, prefix: str, part: str,
                       convert: Callable[[Mapping[str, torch.Tensor], torch.nn.Module], dict[str, torch.Tensor]],
                       dtype: torch.dtype) -> Any:
    config = _text_config(folder)
    with torch.device("meta"):  # architecture only: weights come from the file, nothing is initialised
        shape = model_class(config)
    state = convert(checkpoint.tensors((prefix,)), shape)
    width = next((v.shape[-1] for k, v in state.items() if k.endswith("token_embedding.weight")), None)
    if width is not None and width != config.hidden_size:
        raise ModelError(f"{checkpoint.path} has a {width}-wide {part}, but the SDXL config in {folder} is "
                         f"{config.hidden_size} wide: {NEEDS}.")
    _check_shapes(shape, state, checkpoint.path, part, folder)
    check_fits(shape, state, checkpoint.path, part)
    # from_pretrained with a state dict: builds without random init and sets the non-persistent buffers
    model = model_class.from_pretrained(None, config=config, state_dict=state)
    return model.to(dtype).eval().requires_grad_(False)


def _load_vae(folder: Path, checkpoint: CheckpointFile, dtype: torch.dtype) -> Any:
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(read_config(folder / "config.json"))
    state = convert_vae_state_dict(checkpoint.tensors((VAE_PREFIX,)), vae.config)
    _check_shapes(vae, state, checkpoint.path, "VAE", folder)
    check_fits(vae, state, checkpoint.path, "VAE")
    # cast before assigning: one copy, and diffusers' `.to(dtype)` warning is not triggered
    vae.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    return vae.eval().requires_grad_(False)


def _load_tokenizer(folder: Path) -> Any:
    """A CLIP tokenizer from `folder`'s json settings, with the BPE files found there or else in sd15/tokenizer."""
    from transformers import CLIPTokenizer

    # without its settings the tokenizer would silently pad with <|endoftext|>, not SDXL tokenizer_2's "!"
    if not (folder / "tokenizer_config.json").is_file():
        raise ModelError(f"missing {folder / 'tokenizer_config.json'}: the tokenizer settings are needed.")
    bpe = folder if all((folder / name).is_file() for name in BPE_FILES) else SD15_CONFIG_DIR / "tokenizer"
    try:
        return CLIPTokenizer.from_pretrained(str(folder), vocab_file=str(bpe / "vocab.json"),
                                             merges_file=str(bpe / "merges.txt"), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load the CLIP tokenizer from {folder}: {error}") from None


def load_sdxl_base_components(path: str | Path, config_dir: str | Path | None = None,
                              dtype: torch.dtype = torch.float32) -> BaseModel:
    """Tokenizers, text encoders and VAE of an SDXL single-file checkpoint, offline.

    `config_dir` holds `text_encoder/`, `text_encoder_2/`, `tokenizer/`, `tokenizer_2/` and `vae/` as in a
    diffusers SDXL folder (default: the copy shipped in `pasd_core/weights/sdxl/`). Only the text-encoder and VAE
    tensors are read, one part at a time.
    """
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    config_dir = Path(config_dir) if config_dir is not None else SDXL_CONFIG_DIR
    checkpoint = CheckpointFile(path, "SDXL base model")
    require_sdxl_base(checkpoint)
    text_encoder = _load_text_encoder(CLIPTextModel, config_dir / "text_encoder", checkpoint, CLIP_L_PREFIX,
                                      "CLIP ViT-L text encoder", convert_clip_l_state_dict, dtype)
    text_encoder_2 = _load_text_encoder(CLIPTextModelWithProjection, config_dir / "text_encoder_2", checkpoint,
                                        OPEN_CLIP_PREFIX, "OpenCLIP ViT-bigG text encoder",
                                        convert_open_clip_state_dict, dtype)
    vae = _load_vae(config_dir / "vae", checkpoint, dtype)
    tokenizer, tokenizer_2 = _load_tokenizer(config_dir / "tokenizer"), _load_tokenizer(config_dir / "tokenizer_2")
    logger.info("loaded the SDXL text encoders and VAE from %s", checkpoint.path)
    return BaseModel(SDXL, tokenizer=tokenizer, text_encoder=text_encoder, tokenizer_2=tokenizer_2,
                     text_encoder_2=text_encoder_2, vae=vae)
