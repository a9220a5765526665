"""The algorithm's pieces: resize rules, prompt join, tiles, colour fix, noise modes, progress and stops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pasd_core.engine.color import adain_color_fix, color_fix, wavelet_color_fix
from pasd_core.engine.sampler import control_image_for
from pasd_core.engine.tiling import gaussian_weights, latent_tiles, needs_tiling
from pasd_core.errors import Interrupted
from pasd_core.prompt.stage import PromptSettings, run_prompt

QUICK = {"steps": 10, "process_size": 64, "scale": 1, "seed": 3, "high_level_info": "none"}


@pytest.mark.parametrize("size, scale, process_size, expected", [
    ((100, 60), 1, 64, (104, 64)),     # short side 60 < 64: bilinear to 64 (106.67 → 106), then down to ×8
    ((60, 100), 1, 64, (64, 104)),     # portrait
    ((200, 120), 1, 64, (200, 120)),   # large enough: only the ×8 crop
    ((10, 10), 4, 768, (768, 768)),    # tiny input upsized to the process size
    ((30, 21), 2, 32, (56, 40)),       # scale first (60×42), then ×8
])
def test_control_image_size_follows_official_rules(size, scale, process_size, expected):
    assert control_image_for(Image.new("RGB", size), scale, process_size).size == expected


def test_prompt_join_without_the_prompt_stage_matches_official():
    def joined(prompt: str) -> str:
        return run_prompt(PromptSettings("none", prompt, "clean, 8k", "n", "sd15", "realisr")).prompt

    assert joined("") == "clean, 8k"
    assert joined("a dog") == "a dog, clean, 8k"


def test_tiles_cover_the_latent_with_the_last_one_clamped():
    tiles = latent_tiles(16, 20, 8, 2)
    assert {t.shape for t in tiles} == {(8, 8)}
    assert sorted({t.left for t in tiles}) == [0, 6, 12]
    assert sorted({t.top for t in tiles}) == [0, 6, 8]
    covered = np.zeros((16, 20), bool)
    for t in tiles:
        covered[t.rows(), t.cols()] = True
    assert covered.all()
    assert [(t.left, t.top) for t in tiles[:3]] == [(0, 0), (0, 6), (0, 8)]  # x outer, y inner, as official
    assert needs_tiling(16, 20, 18) is False and needs_tiling(16, 20, 8) is True
    assert latent_tiles(6, 40, 8, 2)[0].shape == (6, 6)  # never larger than the latent


def _coverage(tiles, height, width):
    covered = np.zeros((height, width), int)
    for t in tiles:
        covered[t.rows(), t.cols()] += 1
    return covered


@pytest.mark.parametrize("height, width, size, overlap", [
    (256, 256, 180, 8), (16, 20, 8, 2), (100, 400, 180, 8), (97, 131, 32, 5), (40, 40, 39, 0), (64, 200, 64, 16)])
def test_even_tiles_overlap_by_exactly_the_asked_overlap(height, width, size, overlap):
    official, even = latent_tiles(height, width, size, overlap), latent_tiles(height, width, size, overlap, "even")
    assert _coverage(even, height, width).min() >= 1
    rows = sorted({(t.top, t.height) for t in even})
    cols = sorted({(t.left, t.width) for t in even})
    for spans, extent in ((rows, height), (cols, width)):
        assert spans[0][0] == 0 and spans[-1][0] + spans[-1][1] == extent  # from edge to edge
        assert max(length for _, length in spans) <= size
        assert max(length for _, length in spans) - min(length for _, length in spans) <= 1
        assert all(start + length - next_start == overlap  # neighbours overlap by exactly `overlap`
                   for (start, length), (next_start, _) in zip(spans[:-1], spans[1:], strict=True))
    if height == width:  # square latents: as many tiles as the official layout, never more area
        assert len(even) == len(official)
        assert sum(t.height * t.width for t in even) <= sum(t.height * t.width for t in official)
    assert [(t.left, t.top) for t in even] == sorted((t.left, t.top) for t in even)  # x outer, y inner


def test_even_tiles_halve_the_official_overlap_work_on_the_issues_case():
    """A 256 latent with tiles of 180 and overlap 8: official tiles at 0 and 76 (104 latents of overlap), even ones of
    132 at 0 and 124."""
    assert sorted({(t.top, t.height) for t in latent_tiles(256, 256, 180, 8)}) == [(0, 180), (76, 180)]
    assert sorted({(t.top, t.height) for t in latent_tiles(256, 256, 180, 8, "even")}) == [(0, 132), (124, 132)]


def test_rectangular_weights_are_the_official_ones_on_a_square():
    assert torch.equal(gaussian_weights(12, 12), gaussian_weights(12))
    weights = gaussian_weights(6, 10)
    assert weights.shape == (6, 10)
    assert torch.allclose(weights[:, 0], weights[:, 9])  # columns centred at (10-1)/2


def test_gaussian_weights_keep_the_official_off_centre_rows():
    weights = gaussian_weights(8)
    assert weights.dtype == torch.float64 and weights.shape == (8, 8)
    assert torch.allclose(weights[:, 0], weights[:, 7])  # x centred at 3.5: symmetric columns
    assert weights[0, 3] < weights[7, 3]  # y centred at 4: row 0 is further from the centre than row 7


def test_wavelet_takes_colour_from_reference_and_detail_from_target():
    generator = torch.Generator().manual_seed(0)
    detail = torch.rand(1, 3, 64, 64, generator=generator) * 0.2
    target = (detail + 0.1).clamp(0, 1)
    reference = torch.full((1, 3, 64, 64), 0.6)
    fixed = wavelet_color_fix(target, reference)
    assert abs(fixed.mean().item() - 0.6) < 0.02  # colour of the reference
    assert torch.corrcoef(torch.stack([fixed.flatten(), detail.flatten()]))[0, 1] > 0.9  # detail of the target


def test_adain_matches_reference_statistics():
    target = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    reference = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 0.5 + 0.25
    fixed = adain_color_fix(target, reference)
    assert torch.allclose(fixed.mean(dim=(2, 3)), reference.mean(dim=(2, 3)), atol=1e-3)


def test_color_fix_none_returns_the_image_and_other_sizes_are_resized():
    image = Image.new("RGB", (32, 32), (10, 200, 30))
    assert color_fix(image, Image.new("RGB", (8, 8)), "none") is image
    assert color_fix(image, Image.new("RGB", (8, 8), (200, 10, 10)), "adain").size == (32, 32)


def test_same_seed_same_image_other_seed_other_image(tiny_pipeline):
    pipeline = tiny_pipeline("pasd")
    image = Image.new("RGB", (16, 16), (120, 60, 200))
    first, again = pipeline.upscale(image, QUICK), pipeline.upscale(image, QUICK)
    other = pipeline.upscale(image, {**QUICK, "seed": 4})
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))


def test_tiling_on_and_off(tiny_pipeline):
    """Tiles change how the latent is covered, not what it shows: close to the untiled result, not equal."""
    pipeline = tiny_pipeline("pasd")
    image = Image.new("RGB", (64, 64), (30, 90, 160))
    settings = {**QUICK, "color_fix": "none"}
    ticks = []
    untiled = np.asarray(pipeline.upscale(image, settings, on_step=lambda: ticks.append(1)), dtype=float)
    assert len(ticks) == 10
    ticks.clear()
    tiled_settings = {**settings, "latent_tile_size": 8, "latent_tile_overlap": 4}
    tiled = np.asarray(pipeline.upscale(image, tiled_settings, on_step=lambda: ticks.append(1)), dtype=float)
    assert len(ticks) == pipeline.count_steps(64, 64, tiled_settings) == 10 * 1  # latent 8×8 fits one tile
    big = Image.new("RGB", (128, 128), (30, 90, 160))  # latent 16×16: tiles of 8 at 0, 6, 8 on each axis
    untiled = np.asarray(pipeline.upscale(big, settings), dtype=float)
    ticks.clear()
    tiled_settings["latent_tile_overlap"] = 2
    tiled = np.asarray(pipeline.upscale(big, tiled_settings, on_step=lambda: ticks.append(1)), dtype=float)
    assert len(ticks) == pipeline.count_steps(128, 128, tiled_settings) == 10 * 9
    assert 0 < np.abs(tiled - untiled).mean() < 40


def test_should_stop_interrupts_between_steps(tiny_pipeline):
    pipeline = tiny_pipeline("pasd")
    ticks = []
    with pytest.raises(Interrupted):
        pipeline.upscale(Image.new("RGB", (16, 16)), QUICK, on_step=lambda: ticks.append(1),
                         should_stop=lambda: len(ticks) >= 3)
    assert len(ticks) == 3


def test_exact_noise_mode_noises_at_the_asked_timestep(tiny_pipeline):
    pipeline = tiny_pipeline("pasd")
    image = Image.new("RGB", (16, 16), (200, 200, 200))
    official = np.asarray(pipeline.upscale(image, QUICK), dtype=float)
    exact = np.asarray(pipeline.upscale(image, {**QUICK, "added_noise_mode": "exact"}), dtype=float)
    assert np.abs(official - exact).mean() > 0.5


@pytest.mark.parametrize("dtype", ["bf16"])
def test_half_precision_runs_close_to_fp32(dtype):
    from pasd_core.engine.pipeline import PASDPipeline
    from support.paths import PASD, SD15

    image = Image.new("RGB", (16, 16), (90, 140, 200))
    full = PASDPipeline.from_pretrained(SD15, PASD, device="cpu", dtype="fp32").upscale(image, QUICK)
    half_pipeline = PASDPipeline.from_pretrained(SD15, PASD, device="cpu", dtype=dtype)
    assert half_pipeline.models.unet.dtype == torch.bfloat16
    half = half_pipeline.upscale(image, QUICK)
    assert np.abs(np.asarray(full, dtype=float) - np.asarray(half, dtype=float)).mean() < 25


def test_colour_fix_falls_back_to_the_cpu_when_the_device_runs_out_of_memory(monkeypatch):
    from pasd_core.engine import color

    target, reference = Image.new("RGB", (32, 24), (200, 30, 60)), Image.new("RGB", (16, 12), (20, 140, 90))
    tried, real = [], color._color_fix_on

    def on(target, reference, method, device):
        tried.append(str(device))
        if str(device) != "cpu":
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(target, reference, method, device)

    monkeypatch.setattr(color, "_color_fix_on", on)
    fixed = color.color_fix(target, reference, "wavelet", "cuda")
    assert tried == ["cuda", "cpu"]
    assert np.array_equal(np.asarray(fixed), np.asarray(real(target, reference, "wavelet", "cpu")))
