"""PASD-SDXL as a user meets it: the family read from the checkpoint, its own defaults, a replacement VAE,
the fp16 rule for SDXL's VAE, and every wrong mix of families refused before anything loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pasd_core.__main__ import main as cli_main
from pasd_core.engine.family import FAMILIES
from pasd_core.engine.pipeline import PASDPipeline
from pasd_core.errors import ModelError
from pasd_core.weights.pasd_folder import checkpoint_family
from support.paths import PASD, PASD_SDXL, SD15, SDXL_BASE, case_data
from support.sdxl_checkpoints import write_sdxl_file

QUICK = {"steps": 10, "process_size": 64, "scale": 1, "seed": 3, "high_level_info": "none"}
IMAGE = Image.open(case_data("X1_sdxl_fal_defaults")["dir"] / "input.png").convert("RGB")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_family_is_read_from_the_checkpoint_config():
    assert checkpoint_family(PASD_SDXL) == "sdxl" and checkpoint_family(PASD) == "sd15"


def test_auto_defaults_are_the_sdxl_scripts(tiny_pipeline, monkeypatch):
    pipeline = tiny_pipeline("pasd_sdxl")
    settings = pipeline.plan({"high_level_info": "none"})
    assert (settings["process_size"], settings["latent_tile_size"], settings["added_prompt"]) == (
        1280, 180, "photorealistic, clean, high-resolution, 8k")


def test_added_noise_means_nothing_for_sdxl_and_is_ignored(tiny_pipeline):
    """PASD-SDXL starts from pure noise (test_pasd_sdxl.py): the SD1.5-only added-noise settings change nothing."""
    pipeline = tiny_pipeline("pasd_sdxl")
    plain = pipeline.upscale(IMAGE, QUICK)
    other = pipeline.upscale(IMAGE, {**QUICK, "added_noise_level": 100, "added_noise_mode": "exact"})
    assert np.array_equal(pixels(plain), pixels(other))


def test_a_replacement_vae_folder_or_file_is_used(tmp_path, tiny_pipeline):
    expected = tiny_pipeline("pasd_sdxl").upscale(IMAGE, QUICK)
    as_file = tmp_path / "sdxl_vae.safetensors"  # diffusers key layout, as madebyollin's fp16-fix folder holds
    save_file(tiny_pipeline("pasd_sdxl").models.vae.state_dict(), str(as_file))
    original = write_sdxl_file(tmp_path / "with_vae.safetensors", vae=tiny_pipeline("pasd_sdxl").models.vae)
    original_vae = tmp_path / "original_vae.safetensors"  # original layout without the checkpoint's prefix
    from safetensors.torch import load_file

    save_file({k.removeprefix("first_stage_model."): v for k, v in load_file(str(original)).items()
               if k.startswith("first_stage_model.")}, str(original_vae))
    for vae in (SDXL_BASE / "vae", as_file, original_vae):
        # base_config: the tiny VAE's architecture, for the single files (real ones use the shipped SDXL config)
        pipeline = PASDPipeline.from_pretrained(SDXL_BASE, PASD_SDXL, vae=vae, device="cpu", dtype="fp32",
                                                base_config=SDXL_BASE)
        assert np.array_equal(pixels(pipeline.upscale(IMAGE, QUICK)), pixels(expected)), vae


def test_a_vae_of_the_other_family_is_refused(tmp_path):
    wrong = tmp_path / "wide.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(7, 3, 3, 3)}, str(wrong))
    with pytest.raises(ModelError, match="wide.safetensors does not fit"):
        PASDPipeline.from_pretrained(SDXL_BASE, PASD_SDXL, vae=wrong, device="cpu", dtype="fp32")


def test_sdxl_vae_runs_in_fp32_when_the_run_is_fp16():
    """SDXL's own VAE overflows in fp16 (force_upcast in its config); the fp16-fix VAE and SD1.5's do not upcast."""
    class Config(dict):
        pass

    class FakeVAE:
        def __init__(self, upcast: bool) -> None:
            self.config = Config(force_upcast=upcast)

    assert FAMILIES["sdxl"].vae_dtype(FakeVAE(True), torch.float16) == torch.float32
    assert FAMILIES["sdxl"].vae_dtype(FakeVAE(False), torch.float16) == torch.float16
    assert FAMILIES["sdxl"].vae_dtype(FakeVAE(True), torch.bfloat16) == torch.bfloat16
    assert FAMILIES["sd15"].vae_dtype(FakeVAE(True), torch.float16) == torch.float16
    pipeline = PASDPipeline.from_pretrained(SDXL_BASE, PASD_SDXL, device="cpu", dtype="fp16")
    assert pipeline.models.vae.dtype == torch.float32 and pipeline.models.unet.dtype == torch.float16


@pytest.mark.parametrize("base, pasd, words", [
    (SD15, PASD_SDXL, ["is an SD1.5 base", "PASD-SDXL", "stable-diffusion-xl-base-1.0"]),
    (SDXL_BASE, PASD, ["is an SDXL base", "PASD-SD1.5", "stable-diffusion-v1-5"]),
])
def test_a_base_of_the_other_family_is_refused_by_the_cli(tmp_path, capsys, base, pasd, words):
    source = tmp_path / "in.png"
    IMAGE.save(source)
    code = cli_main(["upscale", str(source), "-o", str(tmp_path / "out.png"), "--base-model", str(base),
                     "--pasd-model", str(pasd), "--device", "cpu", "--steps", "10", "--high-level-info", "none"])
    err = capsys.readouterr().err
    # a wrong mix is the user's choice to change: bad input, exit 2
    assert code == 2 and "Traceback" not in err and not (tmp_path / "out.png").exists()
    assert all(word in err for word in words), err


def test_an_sd15_single_file_is_refused_as_an_sdxl_base(tmp_path, capsys):
    from support.sd_checkpoints import tiny_sd_modules, write_original_sd_file

    sd15_file = write_original_sd_file(tmp_path / "sd15.safetensors", *tiny_sd_modules(seed=1))
    with pytest.raises(ModelError, match="SD1.x checkpoint"):
        PASDPipeline.from_pretrained(sd15_file, PASD_SDXL, device="cpu", dtype="fp32")


@pytest.mark.parametrize("name", ["X1_sdxl_fal_defaults", "X2_sdxl_tiled"])
def test_the_nodes_reproduce_the_official_sdxl_output(tmp_path, monkeypatch, name):
    """PASD Model Loader + PASD Upscale, outside ComfyUI, on a models folder laid out as ComfyUI's."""
    from support.comfyui import load_pack, pack_module

    models = tmp_path / "models"
    (models / "pasd" / "pasd_sdxl").mkdir(parents=True)
    (models / "diffusers").mkdir()
    (models / "pasd" / "pasd_sdxl" / "checkpoint-200000").symlink_to(PASD_SDXL)
    (models / "diffusers" / "stable-diffusion-xl-base-1.0").symlink_to(SDXL_BASE)
    monkeypatch.setenv("PASD_MODELS_DIR", str(models))
    load_pack()
    local = pack_module("nodes.exact")
    (pipeline,) = local.PASDModelLoader().load("pasd_sdxl/checkpoint-200000", "diffusers/stable-diffusion-xl-base-1.0",
                                               "none", "none", device="cpu", dtype="fp32")
    data = case_data(name)
    picture = Image.open(data["dir"] / "input.png").convert("RGB")
    batch = torch.from_numpy(np.asarray(picture, dtype=np.float32)[None] / 255.0)
    values = {**pack_module("pasd_core.params").defaults(), **data["settings"]}
    result, _caption = local.PASDUpscale().upscale(batch, pipeline, **values)
    got = np.clip(255.0 * result[0].numpy(), 0, 255).round().astype(np.int16)
    expected = np.asarray(Image.open(data["dir"] / "expected.png").convert("RGB"), dtype=np.int16)
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1


def test_auto_dtype_is_each_official_scripts_on_a_gpu(monkeypatch):
    from pasd_core.engine.device import resolve_dtype

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_dtype("auto", cuda, "sdxl") == torch.bfloat16
    assert resolve_dtype("auto", cuda, "sd15") == torch.float16
    assert resolve_dtype("auto", cpu, "sdxl") == resolve_dtype("auto", cpu, "sd15") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolve_dtype("auto", cuda, "sdxl") == torch.float16
    assert resolve_dtype("fp32", cuda, "sdxl") == torch.float32  # an explicit choice is kept
