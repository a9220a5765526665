"""The base model a PASD checkpoint sits on: a diffusers folder or an original single file, SD1.5 or SDXL.

The family is the PASD checkpoint's (read from its UNet config); the base must be of the same family,
checked from its layout before anything is loaded, so a wrong mix gets a message, not a shape error.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import ModelError, ModelMismatchError
from ..model_family import LABELS, SD15, SDXL
from .base_model import BaseModel
from .reader import CHECKPOINT_SUFFIXES, VAE_PREFIX, CheckpointFile, check_path, read_config, read_weights

# The VAE attention's weight names in folders saved before diffusers 0.14 (older SD1.5 uploads still hold them).
_OLD_ATTENTION_NAMES = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}

# What PASD reads from a diffusers base folder of each family (SDXL's scheduler comes with PASD-SDXL).
FOLDER_PARTS = {SD15: ("text_encoder", "tokenizer", "vae", "scheduler"),
                SDXL: ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")}
EXAMPLES = {SD15: "stable-diffusion-v1-5", SDXL: "stable-diffusion-xl-base-1.0"}


def _what(family: str) -> str:
    return f"{LABELS[family]} base model"


def _wrong_family(path: Path, found: str, family: str) -> ModelMismatchError:
    other = SD15 if family == SDXL else SDXL
    pasd = "PASD-SDXL (pasd_sdxl)" if other == SDXL else "the SD1.5 PASD models (pasd, pasd_light)"
    return ModelMismatchError(f"{path} is an {LABELS[found]} base, but this PASD checkpoint is "
                              f"PASD-{LABELS[family]}: give an {LABELS[family]} base (e.g. {EXAMPLES[family]}), "
                              f"or use {pasd} with this base.")


def folder_family(folder: Path) -> str | None:
    """SD1.5 or SDXL from a diffusers folder's layout (SDXL has a second text encoder); None if neither."""
    if (folder / "text_encoder_2").is_dir():
        return SDXL
    return SD15 if (folder / "text_encoder").is_dir() else None


def load_base_folder(folder: Path, family: str = SD15) -> BaseModel:
    """A diffusers base folder of `family`, read offline."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    found = folder_family(folder)
    if found is not None and found != family:
        raise _wrong_family(folder, found, family)
    missing = [name for name in FOLDER_PARTS[family] if not (folder / name).is_dir()]
    if missing:
        files = [name for name in missing if (folder / name).exists()]
        note = f" ({', '.join(files)}: a file, not a folder)" if files else ""
        raise ModelError(f"{folder} is not an {LABELS[family]} diffusers folder: missing {', '.join(missing)}/{note} "
                         f"(PASD needs {', '.join(FOLDER_PARTS[family])} from {EXAMPLES[family]}).")
    for part in ("text_encoder", "text_encoder_2"):
        for weights in list((folder / part).glob("*.safetensors")):
            # a damaged or cut file gets a message naming it, not a loader traceback; the header says it (safetensors
            # checks that it covers the whole file), so the weights are read once, by the loader below
            CheckpointFile(weights, "text encoder weight file")
    try:
        def tokenizer(name: str) -> CLIPTokenizer:
            return CLIPTokenizer.from_pretrained(str(folder / name), local_files_only=True)

        def encoder(model_class: type, name: str) -> object:
            model = model_class.from_pretrained(str(folder / name), local_files_only=True, use_safetensors=True)
            return model.eval().requires_grad_(False)

        vae = vae_from_folder(folder / "vae", family)
        if family == SDXL:
            return BaseModel(SDXL, tokenizer("tokenizer"), encoder(CLIPTextModel, "text_encoder"), vae,
                             tokenizer_2=tokenizer("tokenizer_2"),
                             text_encoder_2=encoder(CLIPTextModelWithProjection, "text_encoder_2"))
        scheduler_config = read_config(folder / "scheduler" / "scheduler_config.json")
        return BaseModel(SD15, tokenizer("tokenizer"), encoder(CLIPTextModel, "text_encoder"), vae, scheduler_config)
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load the {_what(family)} from {folder}: {error}") from None


def load_base(path: str | Path, family: str = SD15, config_dir: str | Path | None = None) -> BaseModel:
    """The base of a PASD checkpoint of `family`: a diffusers folder, or an original-layout single file
    (configs from `config_dir`, by default the ones shipped in weights/sd15 or weights/sdxl)."""
    path = Path(path)
    fix = f"give a {EXAMPLES[family]} diffusers folder or a single .safetensors checkpoint."
    named_like_a_file = path.suffix.lower() in CHECKPOINT_SUFFIXES and not os.path.isdir(path / "text_encoder")
    if os.path.isdir(path) and named_like_a_file:
        raise ModelError(f"{_what(family)} {path} is a folder, though its name ends in {path.suffix}: give the "
                         "checkpoint file itself, or a diffusers folder.")
    if os.path.isdir(path):
        check_path(path, _what(family), folder=True, fix=fix)
        return load_base_folder(path, family)
    check_path(path, _what(family), folder=False, fix=fix)
    if family == SDXL:
        from .sdxl_file import load_sdxl_base_components

        return load_sdxl_base_components(path, config_dir)
    from .sd15_file import load_base_components

    return load_base_components(path, config_dir)


def check_compatible(base: BaseModel, unet: object, base_path: Path) -> None:
    """The base's text width must be what the PASD UNet attends to (the text encoders concatenated for SDXL)."""
    width = base.text_encoder.config.hidden_size
    if base.text_encoder_2 is not None:
        width += base.text_encoder_2.config.hidden_size
    expected = unet.config.cross_attention_dim
    if width != expected:
        raise ModelError(f"{base_path} has a {width}-wide text encoder but the PASD UNet expects {expected}: this "
                         f"PASD checkpoint needs an {LABELS[base.family]} base of the same architecture.")


def load_vae(path: str | Path, family: str, config_dir: str | Path | None = None) -> object:
    """A replacement VAE: a diffusers VAE folder (config.json + weights), or a single .safetensors file in the
    diffusers or the original layout (architecture from `config_dir`/vae, by default the family's shipped one)."""
    from diffusers import AutoencoderKL

    from .sd15_file import SD15_CONFIG_DIR, check_fits, convert_vae_state_dict
    from .sdxl_file import SDXL_CONFIG_DIR

    path = Path(path)
    fix = "give a diffusers VAE folder (config.json + diffusion_pytorch_model.safetensors) or a .safetensors file."
    if os.path.isdir(path):
        check_path(path / "config.json", "VAE config", folder=False, fix=fix)
        return vae_from_folder(path, family)
    checkpoint = CheckpointFile(path, "VAE file")
    config_dir = Path(config_dir) if config_dir is not None else SDXL_CONFIG_DIR if family == SDXL else SD15_CONFIG_DIR
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(read_config(config_dir / "vae" / "config.json"))
    state = checkpoint.tensors()
    if not any(key.startswith("encoder.down_blocks.") for key in state):  # original layout, with or without prefix
        state = convert_vae_state_dict({k if k.startswith(VAE_PREFIX) else VAE_PREFIX + k: v for k, v in state.items()},
                                       vae.config)
    check_fits(vae, state, checkpoint.path, "VAE", family=LABELS[family])
    vae.load_state_dict(state, strict=False, assign=True)
    return vae.eval().requires_grad_(False)


def vae_from_folder(folder: Path, family: str) -> object:
    """A diffusers VAE folder (config.json + diffusion_pytorch_model.safetensors): built on the meta device and its
    weights assigned as read, so the file is read once and nothing is initialised at random first. fp32, as diffusers'
    from_pretrained gives it (the run casts it to its own dtype)."""
    from diffusers import AutoencoderKL

    from .sd15_file import check_fits

    weights = folder / "diffusion_pytorch_model.safetensors"
    fix = "give a diffusers VAE folder (config.json + diffusion_pytorch_model.safetensors) or a .safetensors file."
    check_path(weights, "VAE weight file", folder=False, fix=fix)
    try:
        with torch.device("meta"):
            vae = AutoencoderKL.from_config(read_config(folder / "config.json"))
    except (TypeError, ValueError) as error:
        raise ModelError(f"{folder / 'config.json'} is not a VAE config: {error}") from None
    state = {}
    for key, tensor in read_weights(weights, "VAE weight file").items():
        if ".attentions." in key:
            for old, new in _OLD_ATTENTION_NAMES.items():
                key = key.replace(old, new)
        state[key] = tensor.float() if tensor.is_floating_point() else tensor
    check_fits(vae, state, weights, "VAE", family=LABELS[family])
    vae.load_state_dict(state, strict=False, assign=True)
    return vae.eval().requires_grad_(False)
