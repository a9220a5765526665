"""A personalized SD1.5 file or a LoRA changes exactly the weights it should in a PASD model, or nothing."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pasd_core.errors import ModelError
from pasd_core.models import PASDUNet
from pasd_core.weights.personalize import apply_lora, apply_personalized_model
from support.sd_checkpoints import (
    PASD_UNET_CONFIG,
    original_state_dict,
    read_config,
    tiny_sd_modules,
    write_kohya_lora,
    write_original_sd_file,
    write_state_dict,
)
from support.seeding import perturb, seeded_init


def pasd_models(variant: str):
    """A PASD UNet with PASD-only weights, and the VAE / text encoder of its SD1.5 base."""
    with seeded_init(10):
        unet = perturb(PASDUNet.from_pasd_config(read_config(PASD_UNET_CONFIG), variant), seed=10)
    _, vae, text_encoder = tiny_sd_modules(seed=20)
    return unet, vae, text_encoder


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    """Every weight named in `expected` is exactly that in `model`."""
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())


@pytest.fixture(scope="module")
def personal(tmp_path_factory):
    """A 'personalized' SD1.5 model (stock UNet, VAE, CLIP with other weights) and its single file."""
    modules = tiny_sd_modules(seed=100)
    path = write_original_sd_file(tmp_path_factory.mktemp("personal") / "toon.safetensors", *modules)
    return modules, path


@pytest.mark.parametrize("variant", ["pasd", "pasd_light"])
def test_full_strength_takes_the_personal_sd_weights_and_keeps_pasd_weights(personal, variant):
    (p_unet, p_vae, p_text), path = personal
    unet, vae, text_encoder = pasd_models(variant)
    before = snapshot(unet)
    assert apply_personalized_model(unet, vae, text_encoder, path, strength=1.0) == (unet, vae, text_encoder)
    sd_weights = p_unet.state_dict()
    pasd_only = [k for k in before if k not in sd_weights]
    assert pasd_only and all(".pixel_attentions." in k or "_plus" in k for k in pasd_only)
    after = unet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in sd_weights.items())
    assert all(torch.equal(after[k], before[k]) for k in pasd_only)
    assert_weights(vae, p_vae.state_dict())
    assert_weights(text_encoder, p_text.state_dict())


def test_half_strength_averages_the_unet_weights(personal):
    (p_unet, p_vae, _), path = personal
    unet, vae, text_encoder = pasd_models("pasd")
    before = snapshot(unet)
    apply_personalized_model(unet, vae, text_encoder, path, strength=0.5)
    after = unet.state_dict()
    for key, value in p_unet.state_dict().items():
        torch.testing.assert_close(after[key], (value + before[key]) / 2, rtol=0, atol=1e-7)
    assert torch.equal(after["up_blocks.0.pixel_attentions.0.proj_in.weight"],
                       before["up_blocks.0.pixel_attentions.0.proj_in.weight"])
    assert_weights(vae, p_vae.state_dict())  # VAE: replaced


def test_a_file_without_vae_keeps_the_current_vae(personal, tmp_path):
    (p_unet, _, p_text), _ = personal
    path = write_original_sd_file(tmp_path / "unet-and-clip.safetensors", p_unet, None, p_text)
    unet, vae, text_encoder = pasd_models("pasd")
    vae_before = snapshot(vae)
    apply_personalized_model(unet, vae, text_encoder, path)
    assert_weights(vae, vae_before)
    assert_weights(text_encoder, p_text.state_dict())


def assert_refused_unchanged(models, path, message: str, **kwargs) -> None:
    before = [snapshot(m) for m in models]
    with pytest.raises(ModelError, match=message) as caught:
        apply_personalized_model(*models, path, **kwargs)
    assert str(path) in str(caught.value)
    for model, state in zip(models, before, strict=True):
        assert_weights(model, state)


def test_other_architecture_names_the_weight_and_shapes(tmp_path):
    wider = tiny_sd_modules(seed=3, cross_attention_dim=24)
    path = write_original_sd_file(tmp_path / "other.safetensors", *wider)
    assert_refused_unchanged(pasd_models("pasd"), path,
                             r"UNet weight down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn2\.to_k\.weight "
                             r"has shape \(16, 24\) where PASD's SD1.5 UNet has \(16, 16\)")


def test_inpainting_model_gets_a_hint(tmp_path):
    inpainting = tiny_sd_modules(seed=3, in_channels=9)
    path = write_original_sd_file(tmp_path / "inpainting.safetensors", *inpainting)
    assert_refused_unchanged(pasd_models("pasd"), path, r"conv_in\.weight has shape \(16, 9, 3, 3\).*inpainting")


def test_incomplete_unet_is_refused(personal, tmp_path):
    (p_unet, p_vae, p_text), _ = personal
    state = original_state_dict(p_unet, p_vae, p_text)
    del state["model.diffusion_model.out.2.weight"]
    path = write_state_dict(tmp_path / "partial.safetensors", state)
    assert_refused_unchanged(pasd_models("pasd"), path, r"lacks 1 of the UNet weights.*conv_out\.weight")


def test_sdxl_file_is_refused(tmp_path):
    path = tmp_path / "sdxl.safetensors"
    save_file({"conditioner.embedders.1.model.positional_embedding": torch.zeros(77, 4),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4)}, str(path))
    assert_refused_unchanged(pasd_models("pasd"), path, "is an SDXL model, but this PASD checkpoint is PASD-SD1.5: "
                             r"give an SD1\.5 model, or use this one with PASD-SDXL")


def test_strength_outside_zero_one_is_refused(personal):
    with pytest.raises(ValueError, match=r"style_strength=1\.5 is out of range"):
        apply_personalized_model(*pasd_models("pasd"), personal[1], strength=1.5)


@pytest.mark.parametrize(("suffix", "multiplier"), [(".safetensors", 0.6), (".ckpt", -1.0)])
def test_lora_changes_exactly_the_targeted_weights(tmp_path, suffix, multiplier):
    unet, _, text_encoder = pasd_models("pasd")
    path = tmp_path / f"style{suffix}"
    deltas = write_kohya_lora(path, unet, text_encoder, rank=2, seed=0)
    before = {"unet": snapshot(unet), "text_encoder": snapshot(text_encoder)}
    assert apply_lora(unet, text_encoder, path, multiplier) == len(deltas)
    assert {c for c, _ in deltas} == {"unet", "text_encoder"}
    for component, model in (("unet", unet), ("text_encoder", text_encoder)):
        targeted = {f"{name}.weight": delta for (c, name), delta in deltas.items() if c == component}
        for key, value in model.state_dict().items():
            if key in targeted:
                torch.testing.assert_close(value, before[component][key] + multiplier * targeted[key],
                                           rtol=0, atol=1e-6)
            else:
                assert torch.equal(value, before[component][key]), key


def test_lora_alpha_is_ignored_as_in_official_pasd(tmp_path):
    results = []
    for alpha in (2.0, 1.0):
        unet, _, text_encoder = pasd_models("pasd")
        path = tmp_path / f"alpha{alpha}.safetensors"
        write_kohya_lora(path, unet, text_encoder, rank=2, seed=0, alpha=alpha)
        apply_lora(unet, text_encoder, path, 1.0)
        results.append(unet.state_dict()["up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"].clone())
    assert torch.equal(*results)


def test_lora_on_a_3x3_conv(tmp_path):
    unet, _, text_encoder = pasd_models("pasd")
    down, up = torch.randn(2, 16, 3, 3), torch.randn(32, 2, 1, 1)
    path = tmp_path / "locon.safetensors"
    save_file({"lora_unet_down_blocks_1_resnets_0_conv1.lora_down.weight": down,
               "lora_unet_down_blocks_1_resnets_0_conv1.lora_up.weight": up}, str(path))
    weight = unet.down_blocks[1].resnets[0].conv1.weight
    before = weight.detach().clone()
    apply_lora(unet, text_encoder, path, 0.5)
    expected = before + 0.5 * torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
    torch.testing.assert_close(weight.detach(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("state", "message"), [
    ({"lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 16),
      "lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight": torch.zeros(16, 2)},
     r"match no layer.*lora_unet_down_blocks_9_attentions_0_proj_in"),
    ({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 16)}, "an SDXL LoRA"),
    ({"lora_unet_conv_in.hada_w1_a": torch.zeros(2, 2)}, "only plain LoRA layers"),
    ({"lora_unet_conv_in.lora_down.weight": torch.zeros(2, 4, 3, 3)}, "only plain LoRA layers"),
    ({"lora_unet_conv_in.lora_down.weight": torch.zeros(2, 4, 3, 3),
      "lora_unet_conv_in.lora_up.weight": torch.zeros(8, 2, 1, 1)}, r"do not fit the weight \(16, 4, 3, 3\)"),
])
def test_bad_loras_are_refused_and_change_nothing(tmp_path, state, message):
    unet, _, text_encoder = pasd_models("pasd")
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    before = snapshot(unet)
    with pytest.raises(ModelError, match=message) as caught:
        apply_lora(unet, text_encoder, path, 1.0)
    assert str(path) in str(caught.value)
    assert_weights(unet, before)


def test_full_checkpoint_given_as_lora_gets_a_hint(personal):
    unet, _, text_encoder = pasd_models("pasd")
    with pytest.raises(ModelError, match="use it as the personalized model"):
        apply_lora(unet, text_encoder, personal[1], 1.0)
