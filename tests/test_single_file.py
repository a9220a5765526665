"""An SD1.5 single file (original layout) loads as the same text encoder and VAE; bad files get clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pasd_core.errors import ModelError
from pasd_core.weights.sd15_file import SD15_CONFIG_DIR, convert_unet_state_dict, load_base_components
from support.paths import SD15
from support.sd_checkpoints import original_state_dict, tiny_sd_modules, write_original_sd_file, write_state_dict


@pytest.fixture(scope="module")
def sd_modules():
    return tiny_sd_modules(seed=0)


@pytest.fixture(scope="module")
def sd_file(sd_modules, tmp_path_factory) -> Path:
    return write_original_sd_file(tmp_path_factory.mktemp("sd") / "tiny-sd15.safetensors", *sd_modules)


def assert_same_outputs(loaded, text_encoder, vae) -> None:
    ids = loaded.tokenizer("a red fox in the snow", padding="max_length", max_length=77,
                           return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(loaded.text_encoder(ids).last_hidden_state, text_encoder(ids).last_hidden_state)
        image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
        assert torch.equal(loaded.vae.encode(image).latent_dist.mean, vae.encode(image).latent_dist.mean)
        latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
        assert torch.equal(loaded.vae.decode(latents).sample, vae.decode(latents).sample)


def test_round_trip_reproduces_text_encoder_and_vae_exactly(sd_modules, sd_file):
    _, vae, text_encoder = sd_modules
    loaded = load_base_components(sd_file, config_dir=SD15)
    assert_same_outputs(loaded, text_encoder, vae)
    assert loaded.scheduler_config["num_train_timesteps"] == 1000
    assert not any(p.requires_grad for p in loaded.vae.parameters())


def test_ckpt_file_loads_with_weights_only(sd_modules, tmp_path):
    _, vae, text_encoder = sd_modules
    path = write_original_sd_file(tmp_path / "tiny-sd15.ckpt", None, vae, text_encoder)
    assert_same_outputs(load_base_components(path, config_dir=SD15), text_encoder, vae)


def test_dtype_is_applied(sd_file):
    loaded = load_base_components(sd_file, config_dir=SD15, dtype=torch.bfloat16)
    assert loaded.text_encoder.dtype == torch.bfloat16 and loaded.vae.dtype == torch.bfloat16


def test_unet_conversion_matches_the_diffusers_unet(sd_modules, sd_file):
    unet = sd_modules[0]
    converted = convert_unet_state_dict(original_state_dict(unet=unet), unet.config)
    assert converted.keys() == unet.state_dict().keys()
    assert all(torch.equal(converted[k], v) for k, v in unet.state_dict().items())


def test_shipped_sd15_configs_describe_sd15():
    text = json.loads((SD15_CONFIG_DIR / "text_encoder" / "config.json").read_text())
    assert (text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"]) == (768, 12, 12)
    assert (text["intermediate_size"], text["max_position_embeddings"], text["vocab_size"]) == (3072, 77, 49408)
    assert text["hidden_act"] == "quick_gelu"
    vae = json.loads((SD15_CONFIG_DIR / "vae" / "config.json").read_text())
    assert vae["block_out_channels"] == [128, 256, 512, 512] and vae["latent_channels"] == 4
    unet = json.loads((SD15_CONFIG_DIR / "unet" / "config.json").read_text())
    assert unet["block_out_channels"] == [320, 640, 1280, 1280] and unet["cross_attention_dim"] == 768
    scheduler = json.loads((SD15_CONFIG_DIR / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["beta_start"], scheduler["beta_end"], scheduler["beta_schedule"]) == (0.00085, 0.012,
                                                                                            "scaled_linear")
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(SD15_CONFIG_DIR / "tokenizer"), local_files_only=True)
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_default_configs_refuse_a_text_encoder_of_another_width(sd_file):
    # the tiny file's CLIP is 16 wide; the shipped SD1.5 config says 768
    with pytest.raises(ModelError, match=r"16-wide text encoder.*768.*not an SD1.5 checkpoint") as caught:
        load_base_components(sd_file)
    assert str(sd_file) in str(caught.value)


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nowhere.safetensors"
    with pytest.raises(ModelError, match="does not exist") as caught:
        load_base_components(path, config_dir=SD15)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_truncated_file_is_named(sd_file, tmp_path, suffix):
    whole = sd_file if suffix == ".safetensors" else write_state_dict(tmp_path / "whole.ckpt", {"x": torch.ones(99)})
    path = tmp_path / f"truncated{suffix}"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ModelError, match="damaged or an incomplete download") as caught:
        load_base_components(path, config_dir=SD15)
    assert str(path) in str(caught.value)


def test_a_folder_is_not_a_single_file(tmp_path):
    with pytest.raises(ModelError, match="is a folder: give a single-file checkpoint"):
        load_base_components(tmp_path, config_dir=SD15)


def test_not_a_checkpoint_type(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ModelError, match=r"notes.txt is not a checkpoint file"):
        load_base_components(path, config_dir=SD15)


class _TouchOnLoad:
    """Unpickling this would create a file: proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_ckpt_with_code_is_refused_without_running_it(sd_modules, tmp_path):
    marker = tmp_path / "code-ran"
    state = original_state_dict(None, *sd_modules[1:])
    path = tmp_path / "evil.ckpt"
    with path.open("wb") as handle:
        torch.save({"state_dict": state, "callback": _TouchOnLoad(marker)}, handle)
    with pytest.raises(ModelError, match="could run code") as caught:
        load_base_components(path, config_dir=SD15)
    assert str(path) in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize(("keys", "message"), [
    (["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
      "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias",
      "model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.encoder.conv_in.weight"],
     "looks like an SDXL checkpoint, PASD needs an SD1.5 base"),
    (["cond_stage_model.model.token_embedding.weight", "model.diffusion_model.input_blocks.0.0.weight"],
     "looks like an SD2.x checkpoint"),
    (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], "is a LoRA"),
    (["double_blocks.0.img_attn.norm.key_norm.scale"], "does not look like a Stable Diffusion checkpoint"),
    (["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.encoder.conv_in.weight"],
     "has no CLIP text encoder weights"),
])
def test_files_that_are_not_sd15_are_refused(tmp_path, keys, message):
    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(2) for k in keys}, str(path))
    with pytest.raises(ModelError, match=message) as caught:
        load_base_components(path, config_dir=SD15)
    assert str(path) in str(caught.value)


def test_incomplete_vae_is_reported(sd_modules, tmp_path):
    state = original_state_dict(None, *sd_modules[1:])
    del state["first_stage_model.decoder.conv_out.weight"]
    path = write_state_dict(tmp_path / "partial.safetensors", state)
    with pytest.raises(ModelError, match=r"lacks 1 of the VAE weights.*decoder.conv_out.weight"):
        load_base_components(path, config_dir=SD15)
