"""Personalized stylization end to end: single-file bases, personalized models and LoRAs through the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pasd_core.__main__ import main
from pasd_core.engine.pipeline import PASDPipeline
from support.paths import PASD, PASD_LIGHT, SD15
from support.sd_checkpoints import tiny_sd_modules, write_kohya_lora, write_original_sd_file

QUICK = {"steps": 10, "process_size": 64, "scale": 1, "seed": 5, "conditioning_scale": 0.7,
         "high_level_info": "none"}
IMAGE = Image.new("RGB", (24, 24), (180, 120, 60))


@pytest.fixture(scope="module")
def personal_file(tmp_path_factory):
    return write_original_sd_file(tmp_path_factory.mktemp("styles") / "toon.safetensors", *tiny_sd_modules(seed=7))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=float)


def test_single_file_base_gives_the_same_result_as_its_diffusers_folder(tmp_path, tiny_pipeline):
    from pasd_core.weights.bases import load_base_folder

    base = load_base_folder(SD15)
    single = write_original_sd_file(tmp_path / "sd15.safetensors", None, base.vae, base.text_encoder)
    pipeline = PASDPipeline.from_pretrained(single, PASD, device="cpu", dtype="fp32", base_config=SD15)
    expected = tiny_pipeline("pasd").upscale(IMAGE, QUICK)
    assert np.array_equal(_pixels(pipeline.upscale(IMAGE, QUICK)), _pixels(expected))


@pytest.mark.parametrize("checkpoint", [PASD, PASD_LIGHT])
def test_personalized_model_changes_the_style_and_keeps_pasd_weights(personal_file, checkpoint, tiny_pipeline):
    plain = tiny_pipeline("pasd_light" if checkpoint == PASD_LIGHT else "pasd")
    styled = PASDPipeline.from_pretrained(SD15, checkpoint, style_model=personal_file, device="cpu", dtype="fp32")
    plain_state, styled_state = plain.models.unet.state_dict(), styled.models.unet.state_dict()
    pasd_only = [k for k in plain_state if "pixel_attentions" in k or "_plus" in k]
    assert pasd_only and all(torch.equal(plain_state[k], styled_state[k]) for k in pasd_only)
    assert not torch.equal(plain_state["conv_in.weight"], styled_state["conv_in.weight"])
    assert np.abs(_pixels(styled.upscale(IMAGE, QUICK)) - _pixels(plain.upscale(IMAGE, QUICK))).mean() > 0.5


def test_style_strength_zero_keeps_the_unet(personal_file, tiny_pipeline):
    plain = tiny_pipeline("pasd")
    styled = PASDPipeline.from_pretrained(SD15, PASD, style_model=personal_file, style_strength=0.0, device="cpu",
                                          dtype="fp32")
    plain_state, styled_state = plain.models.unet.state_dict(), styled.models.unet.state_dict()
    assert all(torch.equal(plain_state[k], styled_state[k]) for k in plain_state)


def test_lora_through_the_cli(tmp_path, capsys, tiny_pipeline):
    base = tiny_pipeline("pasd")
    lora = tmp_path / "style.safetensors"
    write_kohya_lora(lora, base.models.unet, base.models.text_encoder, seed=3)
    source = tmp_path / "in.png"
    IMAGE.save(source)
    outputs = []
    for extra in ([], ["--lora", str(lora), "--lora-strength", "2.0"]):
        outputs.append(tmp_path / f"out{len(outputs)}.png")
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in QUICK.items()]
        code = main(["upscale", str(source), "-o", str(outputs[-1]), "--base-model", str(SD15), "--pasd-model",
                     str(PASD), "--device", "cpu", *flags, *extra])
        assert code == 0, capsys.readouterr().err
    assert np.abs(_pixels(Image.open(outputs[0])) - _pixels(Image.open(outputs[1]))).mean() > 0.5


def test_missing_style_model_is_named(tmp_path, capsys):
    source = tmp_path / "in.png"
    IMAGE.save(source)
    code = main(["upscale", str(source), "-o", str(tmp_path / "o.png"), "--base-model", str(SD15), "--pasd-model",
                 str(PASD), "--style-model", str(tmp_path / "toonyou.safetensors"), "--process-size", "64",
                 "--high-level-info", "none"])
    err = capsys.readouterr().err
    assert code == 1 and "toonyou.safetensors" in err and "Traceback" not in err
