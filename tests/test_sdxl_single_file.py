"""An SDXL single file (original layout) loads offline as the same tokenizers, text encoders and VAE as the
diffusers SDXL folder it was written from; other files get errors that say what they are."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pasd_core.errors import ModelError
from pasd_core.weights.sd15_file import convert_vae_state_dict
from pasd_core.weights.sdxl_file import (
    SDXL_CONFIG_DIR,
    convert_clip_l_state_dict,
    convert_open_clip_state_dict,
    convert_sdxl_unet_state_dict,
    load_sdxl_base_components,
)
from support.paths import SDXL_BASE
from support.sd_checkpoints import tiny_sd_modules, write_original_sd_file, write_state_dict
from support.sdxl_checkpoints import sdxl_base_modules, sdxl_original_state_dict, tiny_sdxl_unet, write_sdxl_file

PROMPT = "a red fox in the snow, photorealistic, clean, high-resolution, 8k"


@pytest.fixture(scope="module")
def base_modules():
    return sdxl_base_modules()


@pytest.fixture(scope="module")
def sdxl_file(base_modules, tmp_path_factory) -> Path:
    return write_sdxl_file(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl.safetensors", *base_modules,
                           unet=tiny_sdxl_unet())


@pytest.fixture(scope="module")
def tiny_configs(tmp_path_factory) -> Path:
    """The fixture folder's config files only (no weights, no BPE files), with the text-encoder configs saying
    what the real SDXL configs say: float16, which must not make the loader round fp32 weights through fp16, and
    the legacy eos_token_id 2 (pooling at the highest token id), which must still pool at the EOS token."""
    target = tmp_path_factory.mktemp("configs")
    for part in ("text_encoder", "text_encoder_2", "vae", "tokenizer", "tokenizer_2"):
        (target / part).mkdir()
        for source in (SDXL_BASE / part).glob("*.json"):
            shutil.copyfile(source, target / part / source.name)
    for part in ("text_encoder", "text_encoder_2"):
        config = target / part / "config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "torch_dtype": "float16",
                                          "bos_token_id": 0, "eos_token_id": 2}))
    return target


def token_ids(tokenizer) -> torch.Tensor:
    return tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def test_round_trip_reproduces_the_sdxl_folder_exactly(base_modules, sdxl_file, tiny_configs):
    from transformers import CLIPTokenizer

    text_encoder, text_encoder_2, vae = base_modules
    loaded = load_sdxl_base_components(sdxl_file, config_dir=tiny_configs)
    ids = token_ids(loaded.tokenizer)
    ids_2 = token_ids(loaded.tokenizer_2)
    assert torch.equal(ids, token_ids(CLIPTokenizer.from_pretrained(str(SDXL_BASE / "tokenizer"))))
    assert torch.equal(ids_2, token_ids(CLIPTokenizer.from_pretrained(str(SDXL_BASE / "tokenizer_2"))))
    assert ids[0, -1] == 49407 and ids_2[0, -1] == 0  # SDXL's second tokenizer pads with "!"
    with torch.no_grad():
        # what the SDXL sampler uses: penultimate hidden states of both, pooled projection of the second
        ours = loaded.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        assert torch.equal(ours, text_encoder(ids, output_hidden_states=True).hidden_states[-2])
        ours_2 = loaded.text_encoder_2(ids_2, output_hidden_states=True)
        theirs_2 = text_encoder_2(ids_2, output_hidden_states=True)
        assert torch.equal(ours_2.hidden_states[-2], theirs_2.hidden_states[-2])
        assert torch.equal(ours_2.text_embeds, theirs_2.text_embeds)
        latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
        assert torch.equal(loaded.vae.decode(latents).sample, vae.decode(latents).sample)
        image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
        assert torch.equal(loaded.vae.encode(image).latent_dist.mean, vae.encode(image).latent_dist.mean)
    assert loaded.vae.config.scaling_factor == 0.13025
    assert loaded.text_encoder_2.dtype == torch.float32 and loaded.text_encoder_2.config.eos_token_id == 2
    modules = (loaded.text_encoder, loaded.text_encoder_2, loaded.vae)
    assert not any(p.requires_grad for module in modules for p in module.parameters())


def test_dtype_is_applied(sdxl_file, tiny_configs):
    loaded = load_sdxl_base_components(sdxl_file, config_dir=tiny_configs, dtype=torch.bfloat16)
    assert {loaded.text_encoder.dtype, loaded.text_encoder_2.dtype, loaded.vae.dtype} == {torch.bfloat16}


def test_unet_conversion_matches_the_diffusers_unet():
    unet = tiny_sdxl_unet(seed=3)
    converted = convert_sdxl_unet_state_dict(sdxl_original_state_dict(unet=unet), unet.config)
    assert converted.keys() == unet.state_dict().keys()
    assert all(torch.equal(converted[k], v) for k, v in unet.state_dict().items())


def test_unet_conversion_refuses_an_sd15_unet():
    unet = tiny_sd_modules(seed=0)[0]
    from support.sd_checkpoints import original_state_dict

    with pytest.raises(ModelError, match="not an SDXL UNet.*label_emb"):
        convert_sdxl_unet_state_dict(original_state_dict(unet=unet), json.loads(
            (SDXL_CONFIG_DIR / "unet" / "config.json").read_text()))


def _shipped_meta_models() -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def config(part: str) -> dict:
        return json.loads((SDXL_CONFIG_DIR / part / "config.json").read_text())

    with torch.device("meta"):
        return {"text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(config("text_encoder"))),
                "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig.from_dict(config("text_encoder_2"))),
                "vae": AutoencoderKL.from_config(config("vae")),
                "unet": UNet2DConditionModel.from_config(config("unet"))}


def test_shipped_configs_describe_sdxl_base():
    models = _shipped_meta_models()
    # the published parameter counts of SDXL base 1.0's parts
    counts = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    assert counts == {"text_encoder": 123_060_480, "text_encoder_2": 694_659_840, "vae": 83_653_863,
                      "unet": 2_567_463_684}
    clip_g = models["text_encoder_2"].config
    assert (clip_g.hidden_size, clip_g.num_hidden_layers, clip_g.num_attention_heads) == (1280, 32, 20)
    assert (clip_g.intermediate_size, clip_g.projection_dim, clip_g.hidden_act) == (5120, 1280, "gelu")
    clip_l = models["text_encoder"].config
    assert (clip_l.hidden_size, clip_l.num_hidden_layers, clip_l.hidden_act) == (768, 12, "quick_gelu")
    assert clip_l.eos_token_id == clip_g.eos_token_id == 2  # SDXL's configs: pooling takes the argmax (EOS) token
    unet = models["unet"].config
    assert (unet.cross_attention_dim, unet.projection_class_embeddings_input_dim) == (2048, 2816)  # 768 + 1280
    assert list(unet.transformer_layers_per_block) == [1, 2, 10] and unet.addition_embed_type == "text_time"
    vae = models["vae"].config
    assert (vae.scaling_factor, vae.force_upcast) == (0.13025, True)


def test_shipped_tokenizers_pad_as_sdxl_does(sdxl_file, tiny_configs, tmp_path):
    configs = tmp_path / "configs"
    shutil.copytree(tiny_configs, configs)
    for name in ("tokenizer", "tokenizer_2"):  # the shipped tokenizer settings with the tiny models
        shutil.rmtree(configs / name)
        shutil.copytree(SDXL_CONFIG_DIR / name, configs / name)
    loaded = load_sdxl_base_components(sdxl_file, config_dir=configs)
    start = [49406, 320, 1125, 539, 320, 2368, 49407]  # "a photo of a cat"
    pad = {"padding": "max_length", "max_length": 10}
    assert loaded.tokenizer("a photo of a cat", **pad).input_ids == start + [49407] * 3
    assert loaded.tokenizer_2("a photo of a cat", **pad).input_ids == start + [0] * 3
    assert not (SDXL_CONFIG_DIR / "tokenizer_2" / "vocab.json").exists()  # the BPE files are shipped once


def test_converters_produce_the_shipped_architectures_key_for_key():
    # full-size SDXL on the meta device: every weight of the original layout lands on a weight of the same shape
    models = _shipped_meta_models()
    original = sdxl_original_state_dict(**models)
    converted = {
        "text_encoder": convert_clip_l_state_dict(original, models["text_encoder"]),
        "text_encoder_2": convert_open_clip_state_dict(original, models["text_encoder_2"]),
        "vae": convert_vae_state_dict(original, models["vae"].config),
        "unet": convert_sdxl_unet_state_dict(original, models["unet"].config),
    }
    for name, model in models.items():
        expected = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("position_ids")}
        assert {k: v.shape for k, v in converted[name].items()} == expected, name


def test_default_configs_refuse_a_file_of_another_width(sdxl_file):
    # the tiny file's CLIP ViT-L is 16 wide; the shipped SDXL config says 768
    with pytest.raises(ModelError, match=r"has a 16-wide CLIP ViT-L text encoder, but the SDXL config .* is 768 "
                                         r"wide: PASD-SDXL needs an SDXL base") as caught:
        load_sdxl_base_components(sdxl_file)
    assert str(sdxl_file) in str(caught.value)


def test_an_sd15_file_is_refused_with_what_it_is(tmp_path):
    path = write_original_sd_file(tmp_path / "v1-5-pruned.safetensors", *tiny_sd_modules(seed=0))
    with pytest.raises(ModelError, match=r"looks like an SD1.x checkpoint.*PASD-SDXL needs an SDXL base.*"
                                         r"SD1.5 PASD models") as caught:
        load_sdxl_base_components(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(("keys", "message"), [
    (["conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias",
      "model.diffusion_model.label_emb.0.0.weight"], "looks like the SDXL refiner"),
    (["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
      "conditioner.embedders.1.model.ln_final.weight"], r"has no VAE weights \(first_stage_model"),
    (["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.label_emb.0.0.weight"],
     "holds an SDXL UNet without its text encoders"),
    (["cond_stage_model.model.token_embedding.weight"], "looks like an SD2.x checkpoint"),
    (["lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight"], "is a LoRA, not a full checkpoint"),
    (["down_blocks.0.resnets.0.conv1.weight"], "diffusers-format weights.*use the diffusers folder"),
    (["double_blocks.0.img_attn.norm.key_norm.scale"], "does not look like a Stable Diffusion checkpoint"),
])
def test_files_that_are_not_an_sdxl_base_are_refused(tmp_path, keys, message):
    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(2) for k in keys}, str(path))
    with pytest.raises(ModelError, match=message) as caught:
        load_sdxl_base_components(path, config_dir=SDXL_CONFIG_DIR)
    assert str(path) in str(caught.value)


def test_truncated_file_is_named(sdxl_file, tmp_path):
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(sdxl_file.read_bytes()[: sdxl_file.stat().st_size // 2])
    with pytest.raises(ModelError, match="damaged or an incomplete download") as caught:
        load_sdxl_base_components(path)
    assert str(path) in str(caught.value)


def test_incomplete_open_clip_encoder_is_reported(base_modules, tiny_configs, tmp_path):
    state = sdxl_original_state_dict(*base_modules)
    del state["conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight"]
    path = write_state_dict(tmp_path / "partial.safetensors", state)
    with pytest.raises(ModelError, match=r"lacks 3 of the OpenCLIP ViT-bigG text encoder weights.*layers\.1\."):
        load_sdxl_base_components(path, config_dir=tiny_configs)


def test_a_config_of_another_shape_is_named(sdxl_file, tiny_configs, tmp_path):
    configs = tmp_path / "configs"
    shutil.copytree(tiny_configs, configs)
    config = configs / "text_encoder_2" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "intermediate_size": 54}))
    with pytest.raises(ModelError, match=r"does not fit the SDXL OpenCLIP ViT-bigG text encoder described in "
                                         r".*text_encoder_2: its weight .*mlp.fc1.\w+ has shape \(53\b.*\) "
                                         r"where the config gives \(54\b"):
        load_sdxl_base_components(sdxl_file, config_dir=configs)


def test_missing_tokenizer_settings_are_named(sdxl_file, tiny_configs, tmp_path):
    configs = tmp_path / "configs"
    shutil.copytree(tiny_configs, configs)
    (configs / "tokenizer_2" / "tokenizer_config.json").unlink()
    with pytest.raises(ModelError, match=r"missing .*tokenizer_2/tokenizer_config.json"):
        load_sdxl_base_components(sdxl_file, config_dir=configs)
