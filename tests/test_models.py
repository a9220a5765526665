"""PASD's networks: the published key layout, variant detection, and architectures read from config.json."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file

from pasd_core.engine.pipeline import PASDPipeline
from pasd_core.weights.pasd_folder import load_pasd_checkpoint
from support.paths import PASD, PASD_LIGHT, SD15
from support.sd_checkpoints import write_pasd_checkpoint

QUICK = {"steps": 10, "process_size": 64, "scale": 1, "high_level_info": "none"}


def test_stock_unet_loads_pasd_weights_and_the_extras_are_exactly_pixel_attentions():
    config = json.loads((PASD / "unet" / "config.json").read_text())
    state = load_file(PASD / "unet" / "diffusion_pytorch_model.safetensors")
    result = UNet2DConditionModel.from_config(config).load_state_dict(state, strict=False)
    assert result.missing_keys == []
    assert result.unexpected_keys and all(".pixel_attentions." in k for k in result.unexpected_keys)


def test_light_extras_are_the_plus_modules_in_cross_attention_up_blocks():
    config = json.loads((PASD_LIGHT / "unet" / "config.json").read_text())
    state = load_file(PASD_LIGHT / "unet" / "diffusion_pytorch_model.safetensors")
    result = UNet2DConditionModel.from_config(config).load_state_dict(state, strict=False)
    assert result.missing_keys == []
    assert all(k.startswith("up_blocks.") and ("_plus" in k) for k in result.unexpected_keys)
    assert {k.split(".")[1] for k in result.unexpected_keys} == {"1", "2"}  # the CrossAttnUpBlock2D ones


@pytest.mark.parametrize("folder, variant", [(PASD, "pasd"), (PASD_LIGHT, "pasd_light")])
def test_variant_is_detected_from_the_weights(folder, variant):
    unet, controlnet = load_pasd_checkpoint(folder)
    assert unet.variant == variant
    assert not hasattr(controlnet.controlnet_cond_embedding, "preprocesser")


def test_pixel_attention_is_wired_to_the_controlnet_residuals():
    """Changing only the residuals changes the output through PACA even when the skips ignore them."""
    unet, controlnet = load_pasd_checkpoint(PASD)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        down, mid = controlnet(latents, 10, text, torch.rand(1, 3, 64, 64), return_dict=False)
    residuals = [torch.randn(r.shape, generator=torch.Generator().manual_seed(2 + i)) for i, r in enumerate(down)]
    mid = torch.zeros_like(mid)
    with torch.no_grad():
        with_paca = unet(latents, 10, text, down_block_additional_residuals=residuals,
                         mid_block_additional_residual=mid).sample
        for block in unet.up_blocks:  # disable PACA: the output must change
            for attention in block.pixel_attentions:
                torch.nn.init.zeros_(attention.proj_out.weight)
                torch.nn.init.zeros_(attention.proj_out.bias)
        without_paca = unet(latents, 10, text, down_block_additional_residuals=residuals,
                            mid_block_additional_residual=mid).sample
    assert not torch.allclose(with_paca, without_paca)
    assert all(layer.tokens is None for layers in unet.pixel_layers for layer in layers)  # unbound after the call


@pytest.mark.parametrize("variant", ["pasd", "pasd_light"])
@pytest.mark.parametrize("architecture", [
    # PASD's UpBlock2D attends with out_channels-wide keys, so its skips must be as wide (true of SD1.5)
    dict(block_out_channels=[8, 16, 16], layers_per_block=2, attention_head_dim=[2, 4, 4], norm_num_groups=8),
    dict(block_out_channels=[16, 24, 24], use_linear_projection=True, attention_head_dim=4, norm_num_groups=8),
])
def test_other_architectures_load_and_sample(tmp_path, variant, architecture):
    checkpoint = write_pasd_checkpoint(tmp_path / "pasd", variant, **architecture)
    pipeline = PASDPipeline.from_pretrained(SD15, checkpoint, device="cpu", dtype="fp32")
    assert pipeline.variant == variant
    calls = []
    result = pipeline.upscale(Image.new("RGB", (20, 12), (10, 120, 200)), {**QUICK, "scale": 2},
                              on_step=lambda: calls.append(1))
    assert result.size == (40, 24)
    assert len(calls) == pipeline.count_steps(20, 12, {**QUICK, "scale": 2})


def test_rrdb_controlnet_loads_and_runs(tmp_path):
    checkpoint = write_pasd_checkpoint(tmp_path / "pasd_rrdb", "pasd", rrdb=True)
    pipeline = PASDPipeline.from_pretrained(SD15, checkpoint, device="cpu", dtype="fp32")
    assert hasattr(pipeline.models.controlnet.controlnet_cond_embedding, "preprocesser")
    assert pipeline.upscale(Image.new("RGB", (16, 16)), QUICK).size == (16, 16)


def test_training_only_rgb_heads_are_never_run(tiny_pipeline, monkeypatch):
    pipeline = tiny_pipeline("pasd")
    embedding = pipeline.models.controlnet.controlnet_cond_embedding
    assert len(embedding.to_rgbs) == 3  # loaded, so the published weights load strictly

    def fail(*args, **kwargs):
        raise AssertionError("to_rgbs ran")

    for head in embedding.to_rgbs:
        monkeypatch.setattr(head, "forward", fail)
    pipeline.upscale(Image.new("RGB", (16, 16)), QUICK)


def test_a_base_folders_vae_is_built_on_meta_and_read_once(tmp_path, monkeypatch):
    """Built on the meta device (nothing initialised at random first), the file read once, the same weights as
    diffusers' own loader gives (fp32); a folder saved before diffusers 0.14 (query/key/value/proj_attn) loads the
    same."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from pasd_core.weights import bases

    reads = []
    real_read = bases.read_weights
    monkeypatch.setattr(bases, "read_weights", lambda path, *a: reads.append(path) or real_read(path, *a))
    built_on, build = [], AutoencoderKL.from_config
    monkeypatch.setattr(AutoencoderKL, "from_config",
                        lambda *a, **k: built_on.append(torch.get_default_device().type) or build(*a, **k))
    vae = bases.vae_from_folder(SD15 / "vae", "sd15")
    assert reads == [SD15 / "vae" / "diffusion_pytorch_model.safetensors"] and built_on == ["meta"]
    monkeypatch.undo()
    expected = AutoencoderKL.from_pretrained(str(SD15 / "vae"), low_cpu_mem_usage=False).state_dict()
    assert vae.state_dict().keys() == expected.keys()
    assert all(torch.equal(vae.state_dict()[k], v) and vae.state_dict()[k].dtype == torch.float32
               for k, v in expected.items())

    old = tmp_path / "vae"
    old.mkdir()
    (old / "config.json").write_text((SD15 / "vae" / "config.json").read_text())
    renamed = {}
    for key, tensor in load_file(str(SD15 / "vae" / "diffusion_pytorch_model.safetensors")).items():
        for new, previous in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."),
                              (".to_out.0.", ".proj_attn.")):
            key = key.replace(new, previous) if ".attentions." in key else key
        renamed[key] = tensor.half()  # a half-precision file comes back fp32, as from diffusers
    assert any(".query." in key for key in renamed)
    save_file(renamed, str(old / "diffusion_pytorch_model.safetensors"))
    again = bases.vae_from_folder(old, "sd15").state_dict()
    assert all(torch.equal(again[k], v.half().float()) for k, v in expected.items())


def test_a_vae_folder_of_another_architecture_is_named(tmp_path):
    from safetensors.torch import save_file

    from pasd_core.errors import ModelError
    from pasd_core.weights import bases

    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.json").write_text((SD15 / "vae" / "config.json").read_text())
    state = load_file(str(SD15 / "vae" / "diffusion_pytorch_model.safetensors"))
    state["encoder.conv_in.weight"] = torch.zeros(3, 3, 3, 3)
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ModelError, match="VAE weight encoder.conv_in.weight has shape"):
        bases.vae_from_folder(folder, "sd15")


def test_a_base_folders_text_encoder_is_read_once_and_a_cut_file_is_named(tmp_path, monkeypatch, capsys):
    import shutil

    from pasd_core.errors import ModelError
    from pasd_core.weights import bases, reader

    reads = []
    real = reader.CheckpointFile.tensors
    monkeypatch.setattr(reader.CheckpointFile, "tensors", lambda self, *a, **k: reads.append(self.path) or
                        real(self, *a, **k))
    bases.load_base_folder(SD15)
    assert not [path for path in reads if "text_encoder" in str(path)]  # only transformers' loader reads them

    base = tmp_path / "sd15"
    shutil.copytree(SD15, base)
    weights = next((base / "text_encoder").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelError, match="damaged or an incomplete download") as raised:
        bases.load_base_folder(base)
    assert str(weights) in str(raised.value) and "text encoder weight file" in str(raised.value)
