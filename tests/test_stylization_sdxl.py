"""Personalized stylization on PASD-SDXL: an SDXL fine-tune (original single file) or a kohya SDXL LoRA changes
exactly the weights it should; a file of the other family is refused with a message and changes nothing."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from pasd_core.__main__ import main
from pasd_core.engine.pipeline import PASDPipeline
from pasd_core.errors import ModelError
from pasd_core.weights.kohya_lora import original_unet_name
from pasd_core.weights.personalize import apply_lora, apply_personalized_model, personalize
from support.paths import PASD, PASD_SDXL, SD15, SDXL_BASE
from support.sd_checkpoints import tiny_sd_modules, unet_key_to_original, write_kohya_lora, write_original_sd_file
from support.sdxl_checkpoints import tiny_sdxl_modules, tiny_sdxl_unet, write_kohya_sdxl_lora, write_sdxl_file

QUICK = {"steps": 10, "process_size": 64, "scale": 1, "seed": 5, "conditioning_scale": 0.7,
         "high_level_info": "none"}
IMAGE = Image.new("RGB", (24, 24), (180, 120, 60))


def sdxl_models():
    """Freshly loaded PASD-SDXL UNet, and the VAE and (CLIP ViT-L, OpenCLIP ViT-bigG) of its SDXL base."""
    from pasd_core.weights.bases import load_base
    from pasd_core.weights.pasd_folder import load_pasd_checkpoint

    unet, _ = load_pasd_checkpoint(PASD_SDXL)
    base = load_base(SDXL_BASE, "sdxl")
    return unet, base.vae, (base.text_encoder, base.text_encoder_2)


def snapshot(*models: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in model.state_dict().items()} for model in models]


def assert_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    """Every weight named in `expected` is exactly that in `model`."""
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=float)


@pytest.fixture(scope="module")
def personal(tmp_path_factory):
    """A 'personalized' SDXL model (text encoders, VAE, UNet with other weights) and its single file."""
    modules = tiny_sdxl_modules(seed=7)
    return modules, write_sdxl_file(tmp_path_factory.mktemp("styles") / "sdxl-toon.safetensors", *modules)


@pytest.fixture(scope="module")
def sd15_files(tmp_path_factory):
    """An SD1.5 personalized model and an SD1.5 LoRA: the wrong family for PASD-SDXL."""
    folder = tmp_path_factory.mktemp("sd15")
    unet, vae, text_encoder = tiny_sd_modules(seed=7)
    lora = folder / "sd15-lora.safetensors"
    write_kohya_lora(lora, unet, text_encoder, seed=3)
    return write_original_sd_file(folder / "toon.safetensors", unet, vae, text_encoder), lora


@pytest.fixture(scope="module")
def sdxl_lora(tmp_path_factory):
    unet, _, (text_encoder, text_encoder_2) = sdxl_models()
    path = tmp_path_factory.mktemp("loras") / "sdxl-style.safetensors"
    write_kohya_sdxl_lora(path, unet, text_encoder, text_encoder_2, seed=3)
    return path


@pytest.fixture(scope="module")
def plain_output(tiny_pipeline):
    return _pixels(tiny_pipeline("pasd_sdxl").upscale(IMAGE, QUICK))


# --- personalized SDXL model ------------------------------------------------------------------------------------

def test_personalized_sdxl_model_changes_the_style_and_keeps_pasd_weights(personal, tiny_pipeline, plain_output):
    (p_text, p_text_2, p_vae, p_unet), path = personal
    plain = tiny_pipeline("pasd_sdxl")
    styled = PASDPipeline.from_pretrained(SDXL_BASE, PASD_SDXL, style_model=path, device="cpu", dtype="fp32")
    plain_state, styled_state = plain.models.unet.state_dict(), styled.models.unet.state_dict()
    sd_weights = p_unet.state_dict()
    pasd_only = [k for k in plain_state if k not in sd_weights]
    assert pasd_only and all(".pixel_attentions." in k for k in pasd_only)
    assert all(torch.equal(styled_state[k], plain_state[k]) for k in pasd_only)
    assert all(torch.equal(styled_state[k], v) for k, v in sd_weights.items())
    assert_weights(styled.models.controlnet, plain.models.controlnet.state_dict())
    assert_weights(styled.models.vae, p_vae.state_dict())
    assert_weights(styled.models.text_encoder, p_text.state_dict())
    assert_weights(styled.models.text_encoder_2, p_text_2.state_dict())
    assert np.abs(_pixels(styled.upscale(IMAGE, QUICK)) - plain_output).mean() > 0.5


def test_style_strength_zero_keeps_the_unet_and_replaces_vae_and_both_text_encoders(personal):
    (p_text, p_text_2, p_vae, _), path = personal
    unet, vae, encoders = sdxl_models()
    [before] = snapshot(unet)
    apply_personalized_model(unet, vae, encoders, path, strength=0.0)
    assert_weights(unet, before)
    assert_weights(vae, p_vae.state_dict())
    assert_weights(encoders[0], p_text.state_dict())
    assert_weights(encoders[1], p_text_2.state_dict())


def test_half_strength_averages_the_unet_weights(personal):
    (*_, p_unet), path = personal
    unet, vae, encoders = sdxl_models()
    [before] = snapshot(unet)
    apply_personalized_model(unet, vae, encoders, path, strength=0.5)
    after = unet.state_dict()
    for key, value in p_unet.state_dict().items():
        torch.testing.assert_close(after[key], (value + before[key]) / 2, rtol=0, atol=1e-7)
    pasd_only = [k for k in before if ".pixel_attentions." in k]
    assert all(torch.equal(after[k], before[k]) for k in pasd_only)


def test_a_unet_only_sdxl_file_keeps_the_vae_and_text_encoders(tmp_path):
    p_unet = tiny_sdxl_unet(seed=9)
    path = write_sdxl_file(tmp_path / "unet-only.safetensors", unet=p_unet)
    unet, vae, encoders = sdxl_models()
    kept = snapshot(vae, *encoders)
    apply_personalized_model(unet, vae, encoders, path)
    assert_weights(unet, p_unet.state_dict())
    for model, state in zip((vae, *encoders), kept, strict=True):
        assert_weights(model, state)


# --- kohya SDXL LoRA ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("original_unet_names", [True, False], ids=["sgm-unet-names", "diffusers-unet-names"])
def test_sdxl_lora_changes_exactly_the_targeted_weights_of_unet_and_both_text_encoders(tmp_path, original_unet_names):
    unet, _, (text_encoder, text_encoder_2) = sdxl_models()
    models = {"unet": unet, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    path = tmp_path / "style.safetensors"
    deltas = write_kohya_sdxl_lora(path, unet, text_encoder, text_encoder_2, seed=0,
                                   original_unet_names=original_unet_names)
    assert {component for component, _ in deltas} == set(models)
    before = dict(zip(models, snapshot(*models.values()), strict=True))
    assert apply_lora(unet, (text_encoder, text_encoder_2), path, 0.7) == len(deltas)
    for component, model in models.items():
        targeted = {f"{name}.weight": delta for (c, name), delta in deltas.items() if c == component}
        for key, value in model.state_dict().items():
            if key in targeted:
                torch.testing.assert_close(value, before[component][key] + 0.7 * targeted[key], rtol=0, atol=1e-6)
            else:
                assert torch.equal(value, before[component][key]), key


def test_sdxl_lora_alpha_is_ignored_as_for_sd15(tmp_path):
    results = []
    for alpha in (2.0, 1.0):
        unet, _, encoders = sdxl_models()
        path = tmp_path / f"alpha{alpha}.safetensors"
        write_kohya_sdxl_lora(path, unet, *encoders, rank=2, seed=0, alpha=alpha)
        apply_lora(unet, encoders, path, 1.0)
        results.append(encoders[1].state_dict()["text_model.encoder.layers.0.self_attn.q_proj.weight"].clone())
    assert torch.equal(*results)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_original_unet_names_follow_the_original_layout(family):
    unet = tiny_sd_modules(seed=0)[0] if family == "sd15" else tiny_sdxl_unet()
    config = dict(unet.config)
    for key in unet.state_dict():
        module = key.removesuffix(".weight")
        if module == key or module.startswith("add_embedding."):  # label_emb: checked below
            continue
        assert original_unet_name(module, config) + ".weight" == unet_key_to_original(key, config)
    if family == "sdxl":
        assert original_unet_name("add_embedding.linear_2", config) == "label_emb.0.2"
        # a name from real kohya SDXL LoRAs (two layers per block, as here): the second level's first attention
        assert original_unet_name("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k", config) == \
            "input_blocks.4.1.transformer_blocks.0.attn1.to_k"
    assert original_unet_name("up_blocks.0.pixel_attentions.0.proj_in", config) is None


# --- refused mixes change nothing ---------------------------------------------------------------------------------

def _refused(apply, message: str, path) -> None:
    unet, vae, encoders = sdxl_models()
    before = snapshot(unet, vae, *encoders)
    with pytest.raises(ModelError, match=message) as caught:
        apply(unet, vae, encoders)
    assert str(path) in str(caught.value)
    for model, state in zip((unet, vae, *encoders), before, strict=True):
        assert_weights(model, state)


def test_sd15_personalized_model_on_pasd_sdxl_is_refused_unchanged(sd15_files):
    style, _ = sd15_files
    _refused(lambda unet, vae, encoders: apply_personalized_model(unet, vae, encoders, style), r"is an SD1\.5 model, "
             r"but this PASD checkpoint is PASD-SDXL: give an SDXL model, or use this one with the SD1\.5 PASD", style)


def test_sd15_lora_on_pasd_sdxl_is_refused_unchanged(sd15_files):
    _, lora = sd15_files
    _refused(lambda unet, vae, encoders: apply_lora(unet, encoders, lora, 1.0),
             r"is an SD1\.5 LoRA, but this PASD checkpoint is PASD-SDXL: give an SDXL LoRA", lora)


def test_unet_only_sd15_lora_on_pasd_sdxl_is_refused_unchanged(tmp_path):
    unet, _, text_encoder = tiny_sd_modules(seed=4)
    path = tmp_path / "unet-only.safetensors"
    write_kohya_lora(path, unet, text_encoder)
    save_file({k: v for k, v in load_file(str(path)).items() if k.startswith("lora_unet_")}, str(path))
    _refused(lambda unet, vae, encoders: apply_lora(unet, encoders, path, 1.0),
             r"(match no layer of the SDXL UNet.*a LoRA for SD1\.5|do not fit.*SD1\.5 LoRAs fit the SD1\.5 PASD)", path)


def test_sdxl_refiner_is_refused_unchanged(tmp_path):
    path = tmp_path / "refiner.safetensors"
    save_file({"conditioner.embedders.0.model.positional_embedding": torch.zeros(77, 4),
               "model.diffusion_model.label_emb.0.0.weight": torch.zeros(4, 4)}, str(path))
    _refused(lambda unet, vae, encoders: apply_personalized_model(unet, vae, encoders, path), "the SDXL refiner", path)


def test_valid_style_with_a_bad_lora_changes_nothing(personal, sd15_files):
    """Both files are read and checked before the style model changes any weight."""
    _, style = personal
    _, lora = sd15_files
    _refused(lambda unet, vae, encoders: personalize(unet, vae, encoders, style_model=style, lora=lora),
             r"is an SD1\.5 LoRA", lora)


# --- the command line -----------------------------------------------------------------------------------------

def run_cli(tmp_path, capsys, base, pasd, *extra: str) -> tuple[int, str, object]:
    source, output = tmp_path / "in.png", tmp_path / "out.png"
    IMAGE.save(source)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in QUICK.items()]
    code = main(["upscale", str(source), "-o", str(output), "--base-model", str(base), "--pasd-model", str(pasd),
                 "--device", "cpu", "--dtype", "fp32", *flags, *extra])
    return code, capsys.readouterr().err, output


def test_style_model_and_lora_through_the_cli(tmp_path, capsys, personal, sdxl_lora, plain_output):
    code, err, output = run_cli(tmp_path, capsys, SDXL_BASE, PASD_SDXL, "--style-model", str(personal[1]),
                                "--lora", str(sdxl_lora), "--lora-strength", "2.0")
    assert code == 0, err
    assert np.abs(_pixels(Image.open(output)) - plain_output).mean() > 0.5


@pytest.mark.parametrize(("models", "file", "message"), [
    ("sdxl", "sd15_style", r"is an SD1\.5 model, but this PASD checkpoint is PASD-SDXL: give an SDXL model"),
    ("sdxl", "sd15_lora", r"is an SD1\.5 LoRA, but this PASD checkpoint is PASD-SDXL: give an SDXL LoRA"),
    ("sd15", "sdxl_style", r"is an SDXL model, but this PASD checkpoint is PASD-SD1\.5: give an SD1\.5 model, or use "
                           r"this one with PASD-SDXL \(pasd_sdxl\)"),
    ("sd15", "sdxl_lora", r"is an SDXL LoRA, but this PASD checkpoint is PASD-SD1\.5: give an SD1\.5 LoRA, or use "
                          r"this one with PASD-SDXL \(pasd_sdxl\)"),
    ("sd15-pasd-on-sdxl-base", None, r"is an SDXL base, but this PASD checkpoint is PASD-SD1\.5: give an SD1\.5 base"),
    ("sdxl-pasd-on-sd15-base", None, r"is an SD1\.5 base, but this PASD checkpoint is PASD-SDXL: give an SDXL base"),
])
def test_every_bad_mix_exits_with_a_clear_message(tmp_path, capsys, personal, sd15_files, sdxl_lora, models, file,
                                                  message):
    base, pasd = {"sdxl": (SDXL_BASE, PASD_SDXL), "sd15": (SD15, PASD), "sd15-pasd-on-sdxl-base": (SDXL_BASE, PASD),
                  "sdxl-pasd-on-sd15-base": (SD15, PASD_SDXL)}[models]
    files = {"sd15_style": ("--style-model", sd15_files[0]), "sd15_lora": ("--lora", sd15_files[1]),
             "sdxl_style": ("--style-model", personal[1]), "sdxl_lora": ("--lora", sdxl_lora)}
    extra = [files[file][0], str(files[file][1])] if file else []
    code, err, output = run_cli(tmp_path, capsys, base, pasd, *extra)
    # a wrong mix is the user's choice to change: bad input, exit 2
    assert code == 2 and "Traceback" not in err and not output.exists()
    assert re.search("^error: .*" + message, err, re.MULTILINE), err  # (transformers' progress bars come before)
    if file:
        assert str(files[file][1]) in err
