"""The labelled fast mode (params: speed="fast"): even latent tiles, the denoiser in bf16 where the device has it
natively, in the CLI, the API and the node; the exact mode untouched (the parity tests hold it to the official)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from pasd_core import params as table
from pasd_core.__main__ import main as cli_main
from pasd_core.engine import fast
from pasd_core.engine import sampler as sampler_module
from pasd_core.engine.tiling import latent_tiles
from support.comfyui import pack_module
from support.parity import max_difference
from support.paths import case_data

# bf16 keeps 8 bits of mantissa: on the untiled parity cases (SD1.5 and SDXL) the fast mode's image moved by mean
# 0.48-0.61 and max 3-5 levels of 255 from the official one (this machine, 2026-12-07); the bounds are about twice
# that, still far inside what a viewer notices.
BF16_MEAN_DRIFT, BF16_MAX_DRIFT = 1.2, 10


@pytest.fixture
def predictions(monkeypatch):
    """Every denoised tile's latent shape and autocast state, as the sampler makes them (a call may take several
    tiles of one shape: its batch is their guidance pairs side by side; every run here is guided)."""
    seen = []
    real = sampler_module.PASDSampler._predict

    def predict(self, latents, t, text, *args, **kwargs):
        autocast = torch.is_autocast_enabled("cpu")
        tiles = latents.shape[0] // 2
        seen.extend([(tuple(latents.shape[-2:]), torch.get_autocast_dtype("cpu") if autocast else None)] * tiles)
        return real(self, latents, t, text, *args, **kwargs)

    monkeypatch.setattr(sampler_module.PASDSampler, "_predict", predict)
    return seen


def test_fast_mode_denoises_even_tiles_and_counts_them(tiny_pipeline, predictions, monkeypatch):
    monkeypatch.setattr(fast, "native_bf16", lambda device: False)
    data = case_data("B_tiled_x2")  # a 16² latent in tiles of 8 overlapping by 2: official ones overlap by up to 4
    settings = {**data["settings"], "speed": "fast", "steps": 10}
    pipeline, image = tiny_pipeline("pasd"), Image.open(data["dir"] / "input.png")
    steps = []
    pipeline.upscale(image, settings, on_step=lambda: steps.append(1))
    even = [t.shape for t in latent_tiles(16, 16, 8, 2, "even")]
    assert Counter(shape for shape, _ in predictions) == Counter(even * 10)  # tiles of one shape share a call
    assert {shape for shape, _ in predictions} == {(7, 7), (7, 6), (6, 7), (6, 6)}
    assert len(steps) == pipeline.count_steps(*image.size, settings) == len(predictions)
    assert {dtype for _, dtype in predictions} == {None}  # no native bf16 here: fp32 as loaded


def test_fast_mode_plans_fewer_tiles_on_a_long_image(tiny_pipeline, predictions, monkeypatch):
    """Official tiles are squares of the latent's short side (8 here: 7 of them along 40); even ones may be as long
    as latent_tile_size (4 of them), and the progress bar counts what runs."""
    monkeypatch.setattr(fast, "native_bf16", lambda device: False)
    pipeline, image = tiny_pipeline("pasd"), Image.new("RGB", (320, 64), (90, 120, 150))
    settings = {"scale": 1, "process_size": 64, "steps": 10, "latent_tile_size": 12, "latent_tile_overlap": 2,
                "high_level_info": "none"}
    assert pipeline.count_steps(*image.size, settings) == 10 * 7
    steps = []
    pipeline.upscale(image, {**settings, "speed": "fast"}, on_step=lambda: steps.append(1))
    assert len(steps) == len(predictions) == pipeline.count_steps(*image.size, {**settings, "speed": "fast"}) == 40
    assert {shape for shape, _ in predictions} == {(8, 12), (8, 11)}  # 40 + 3 overlaps of 2, in 4


@pytest.mark.parametrize("case", ["A_untiled", "C_light"])
def test_fast_mode_runs_the_denoiser_in_bf16_where_native_and_stays_close(case, tiny_pipeline, predictions,
                                                                          monkeypatch):
    monkeypatch.setattr(fast, "native_bf16", lambda device: True)
    data = case_data(case)
    pipeline, image = tiny_pipeline(data["variant"]), Image.open(data["dir"] / "input.png")
    result = pipeline.upscale(image, {**data["settings"], "speed": "fast"})
    assert {dtype for _, dtype in predictions} == {torch.bfloat16}
    drift = np.abs(np.asarray(result, np.int16) - np.asarray(Image.open(data["dir"] / "expected.png"), np.int16))
    assert 0 < drift.mean() <= BF16_MEAN_DRIFT and drift.max() <= BF16_MAX_DRIFT


def test_exact_mode_never_autocasts(tiny_pipeline, predictions, monkeypatch):
    monkeypatch.setattr(fast, "native_bf16", lambda device: True)
    data = case_data("A_untiled")
    result = tiny_pipeline("pasd").upscale(Image.open(data["dir"] / "input.png"), data["settings"])
    assert {dtype for _, dtype in predictions} == {None}
    assert max_difference(result, data["dir"] / "expected.png") <= 1


def test_half_precision_weights_keep_their_dtype():
    """Weights already in fp16/bf16 (a GPU's default) are not autocast again: the mode then changes the tiles only."""
    settings = {"speed": "fast"}
    cpu = torch.device("cpu")
    assert fast.fast_precision(settings, cpu, torch.float16) is None
    assert fast.fast_precision({"speed": "exact"}, cpu, torch.float32) is None
    assert fast.fast_precision(settings, cpu, torch.float32) == (torch.bfloat16 if fast.native_bf16(cpu) else None)


def test_speed_is_a_local_advanced_choice_that_fal_never_gets():
    speed = table.BY_NAME["speed"]
    assert (speed.default, speed.choices, speed.scope, speed.advanced) == ("exact", ("exact", "fast"), table.LOCAL,
                                                                          True)
    assert "speed" not in table.fal_arguments(table.validate({}, table.REMOTE_PARAMS))
    with pytest.raises(table.ParamError, match="speed='quick' is not allowed: use one of 'exact', 'fast'"):
        table.validate({"speed": "quick"})


def test_pasd_upscale_takes_speed_as_its_last_optional_widget():
    PASDUpscale = pack_module("nodes.exact").PASDUpscale  # noqa: N806 - the node's class
    declared = PASDUpscale.INPUT_TYPES()
    assert "speed" not in declared["required"]
    assert list(declared["optional"]) == ["speed"]
    options, extra = declared["optional"]["speed"]
    assert options == ["exact", "fast"] and extra["default"] == "exact" and extra["advanced"] is True
    assert [item.name for item in PASDUpscale.inputs()][-1] == "speed"


def test_cli_runs_the_fast_mode(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fast, "native_bf16", lambda device: True)
    data = case_data("A_untiled")
    output = tmp_path / "out.png"
    flags = [f for name, value in data["settings"].items() for f in ("--" + name.replace("_", "-"), str(value))]
    code = cli_main(["upscale", str(data["dir"] / "input.png"), "-o", str(output), "--base-model", str(data["base"]),
                     "--pasd-model", str(data["checkpoint"]), "--device", "cpu", "--dtype", "fp32", *flags,
                     "--speed", "fast"])
    assert code == 0, capsys.readouterr().err
    drift = np.abs(np.asarray(Image.open(output), np.int16) -
                   np.asarray(Image.open(data["dir"] / "expected.png"), np.int16))
    assert 0 < drift.mean() <= BF16_MEAN_DRIFT


@pytest.mark.parametrize("avx512_bf16, amx, native", [(True, False, True), (False, True, True), (False, False, False)])
def test_cpu_bf16_is_native_only_with_avx512_bf16_or_amx(monkeypatch, avx512_bf16, amx, native):
    """Plain AVX-512 makes oneDNN emulate bf16 (slower, less precise): there the fast mode keeps fp32."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert fast.native_bf16(torch.device("cpu")) is native
    assert fast.native_bf16(torch.device("mps")) is False
