"""The latent tiles of one step in as few denoiser calls as memory allows (engine/tile_calls.py, memory.py)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from pasd_core.engine import fast, memory, tile_calls
from pasd_core.engine import sampler as sampler_module
from pasd_core.engine.family import TextConditioning
from pasd_core.placement import DENOISER
from support.parity import TOLERANCE, max_difference
from support.paths import case_data

GIB = 1024**3


@pytest.fixture
def calls(monkeypatch):
    """The batch of every denoiser call, as the sampler makes it."""
    batches = []
    real = sampler_module.PASDSampler._predict

    def predict(self, latents, *args, **kwargs):
        batches.append(latents.shape[0])
        return real(self, latents, *args, **kwargs)

    monkeypatch.setattr(sampler_module.PASDSampler, "_predict", predict)
    return batches


def free_memory(monkeypatch, free: int | None) -> None:
    """Batching as on a GPU (this CPU runs fp32, where the engine keeps one tile per call), `free` bytes free."""
    monkeypatch.setattr(tile_calls, "batching_pays", lambda device, dtype: True)
    monkeypatch.setattr(memory, "free_bytes", lambda device: free)


def run_tiled(pipeline, steps: list | None = None) -> Image.Image:
    data = case_data("B_tiled_x2")  # a 16² latent in 9 official tiles of 8, guided: pairs of 2
    image = Image.open(data["dir"] / "input.png")
    return pipeline.upscale(image, data["settings"], on_step=(lambda: steps.append(1)) if steps is not None else None)


def test_a_steps_tiles_go_in_one_call_where_memory_allows_and_stay_within_parity(tiny_pipeline, calls, monkeypatch):
    pipeline, data = tiny_pipeline("pasd"), case_data("B_tiled_x2")
    free_memory(monkeypatch, 64 * GIB)
    steps: list = []
    batched = run_tiled(pipeline, steps)
    size = Image.open(data["dir"] / "input.png").size
    tiles = pipeline.count_steps(*size, data["settings"]) // data["settings"]["steps"]
    assert tiles == 9
    assert calls == [2 * tiles] * data["settings"]["steps"]  # one call a step: every tile's guidance pair
    assert len(steps) == tiles * data["settings"]["steps"]  # the progress bar still moves tile by tile

    calls.clear()
    free_memory(monkeypatch, None)  # free memory unknown: one tile per call, as the official loop
    single = run_tiled(pipeline)
    assert calls == [2] * tiles * data["settings"]["steps"]
    # only the last bits move (kernels sum in batch-dependent orders): both stay within parity of the official image
    assert max_difference(batched, data["dir"] / "expected.png") <= TOLERANCE
    assert max_difference(single, data["dir"] / "expected.png") <= TOLERANCE
    assert np.abs(np.asarray(batched, dtype=int) - np.asarray(single, dtype=int)).max() <= TOLERANCE


def test_a_cpu_in_fp32_keeps_the_official_loop_and_batches_in_bf16(tiny_pipeline, calls, monkeypatch):
    monkeypatch.setattr(memory, "free_bytes", lambda device: 64 * GIB)
    pipeline, data = tiny_pipeline("pasd"), case_data("B_tiled_x2")
    run_tiled(pipeline)
    assert calls == [2] * 9 * data["settings"]["steps"]  # fp32 on a CPU: batching measured no gain

    calls.clear()
    for module in (fast, tile_calls):  # the fast mode computes in bf16 (AMX, AVX-512 BF16)
        monkeypatch.setattr(module, "native_bf16", lambda device: True)
    image = Image.open(data["dir"] / "input.png")
    pipeline.upscale(image, {**data["settings"], "speed": "fast"})
    # 9 even tiles in four shapes (7² ×4, 7×6 ×2, 6×7 ×2, 6² ×1): one call per shape and step
    assert calls == [2 * 4, 2 * 2, 2 * 2, 2 * 1] * data["settings"]["steps"]


def test_batching_pays(monkeypatch):
    assert not tile_calls.batching_pays(torch.device("cpu"), torch.float32)
    assert not tile_calls.batching_pays(torch.device("cpu"), torch.float16)  # not measured to gain: left alone
    for native in (True, False):
        monkeypatch.setattr(tile_calls, "native_bf16", lambda device, native=native: native)
        assert tile_calls.batching_pays(torch.device("cpu"), torch.bfloat16) == native
    assert tile_calls.batching_pays(torch.device("cuda"), torch.float32)
    assert tile_calls.batching_pays(torch.device("cuda"), torch.float16)


def test_tiles_per_call_follow_free_memory(tiny_pipeline, calls, monkeypatch):
    pipeline = tiny_pipeline("pasd")
    one_tile = memory.denoiser_peak_bytes(pipeline.models.family.denoiser_values, 2, 8 * 8, torch.float32)
    free_memory(monkeypatch, 2 * 4 * one_tile)  # half the free memory holds 4 tiles' activations
    run_tiled(pipeline)
    assert calls[:3] == [8, 8, 2]  # 9 tiles of one shape: 4, 4 and 1 to a call
    assert sum(calls) == 2 * 9 * case_data("B_tiled_x2")["settings"]["steps"]


@pytest.mark.parametrize(("tiles_that_fit", "first_call"), [(None, 9), (4, 4)], ids=["all-in-one", "4-4-1"])
def test_out_of_memory_in_a_batched_call_goes_one_per_call_for_the_rest_of_the_run(tiny_pipeline, monkeypatch, caplog,
                                                                                   tiles_that_fit, first_call):
    """The first batched call fails; it and every later call (this step's too) take one tile: the same bits as one
    tile per call, the progress bar per tile, one warning."""
    pipeline = tiny_pipeline("pasd")
    free_memory(monkeypatch, None)
    single = run_tiled(pipeline)
    one_tile = memory.denoiser_peak_bytes(pipeline.models.family.denoiser_values, 2, 8 * 8, torch.float32)
    free_memory(monkeypatch, 64 * GIB if tiles_that_fit is None else 2 * tiles_that_fit * one_tile)
    real = sampler_module.PASDSampler._predict
    tried = []

    def short_of_memory(self, latents, *args, **kwargs):
        tried.append(latents.shape[0])
        if latents.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, latents, *args, **kwargs)

    monkeypatch.setattr(sampler_module.PASDSampler, "_predict", short_of_memory)
    steps: list = []
    with caplog.at_level(logging.WARNING, logger="pasd_core.engine.tile_calls"):
        result = run_tiled(pipeline, steps)
    step_count = case_data("B_tiled_x2")["settings"]["steps"]
    assert tried == [2 * first_call] + [2] * 9 * step_count  # one failure, then tile by tile
    assert np.array_equal(np.asarray(result), np.asarray(single))
    assert len(steps) == 9 * step_count
    assert [r.message for r in caplog.records] == [
        f"PASD ran out of memory with {first_call} latent tiles in one call; going on with one per call"]


@pytest.mark.parametrize("case", ["B_tiled_x2", "X2_sdxl_tiled"])
@pytest.mark.parametrize("guided", [True, False], ids=["guided", "unguided"])
def test_batched_and_single_calls_agree_for_both_families_with_and_without_guidance(case, guided, tiny_pipeline,
                                                                                  calls, monkeypatch):
    data = case_data(case)
    settings = data["settings"] if guided else {**data["settings"], "guidance_scale": 1.0}
    pipeline, image = tiny_pipeline(data["variant"]), Image.open(data["dir"] / "input.png")
    tiles = pipeline.count_steps(*image.size, settings) // settings["steps"]
    assert tiles > 1
    free_memory(monkeypatch, 64 * GIB)
    batched = np.asarray(pipeline.upscale(image, settings), dtype=int)
    assert calls == [(2 if guided else 1) * tiles] * settings["steps"]  # every tile of one shape, in one call
    free_memory(monkeypatch, None)
    single = np.asarray(pipeline.upscale(image, settings), dtype=int)
    assert np.abs(batched - single).max() <= TOLERANCE
    if guided:  # the official image exists for the case's own settings
        assert max_difference(Image.fromarray(batched.astype(np.uint8)), data["dir"] / "expected.png") <= TOLERANCE


def test_other_errors_in_a_batched_call_are_not_swallowed(tiny_pipeline, monkeypatch):
    free_memory(monkeypatch, 64 * GIB)

    def broken(self, latents, *args, **kwargs):
        raise RuntimeError("expected all tensors to be on the same device")

    monkeypatch.setattr(sampler_module.PASDSampler, "_predict", broken)
    with pytest.raises(RuntimeError, match="same device"):
        run_tiled(tiny_pipeline("pasd"))


def test_the_denoiser_asks_its_placement_for_one_calls_activations(tiny_pipeline, monkeypatch):
    pipeline = tiny_pipeline("pasd")
    asked = []
    real = pipeline.models.placement

    class Recording:
        def load(self, part, memory_required=0):
            asked.append((part, memory_required))
            real.load(part, memory_required)

        def done(self, part):
            real.done(part)

    monkeypatch.setattr(pipeline.models, "placement", Recording())
    run_tiled(pipeline)
    values = pipeline.models.family.denoiser_values
    assert (DENOISER, values * 2 * 8 * 8 * 4) in asked  # a tile of 8² latents, its guidance pair, fp32


def test_memory_rule():
    cpu = torch.device("cpu")
    assert memory.denoiser_peak_bytes(13_000, 2, 64 * 64, torch.float16) == 13_000 * 2 * 4096 * 2
    free = memory.free_bytes(cpu)
    assert free is None or free > 0  # MemAvailable on Linux
    assert memory.free_bytes(torch.device("meta")) is None


@pytest.mark.parametrize(("limit", "used", "room"), [("max\n", "5000", None), ("8000\n", "5000\n", 3000),
                                                     ("4000", "5000", 0), (str(1 << 62), "5", None)])
def test_a_containers_memory_limit_bounds_the_cpus_free_memory(tmp_path, monkeypatch, limit, used, room):
    (tmp_path / "max").write_text(limit)
    (tmp_path / "current").write_text(used)
    monkeypatch.setattr(memory, "_CGROUP_FILES", ((tmp_path / "max", tmp_path / "current"),
                                                  (tmp_path / "v1-absent", tmp_path / "v1-absent")))
    assert memory._cgroup_room() == room
    free = memory.free_bytes(torch.device("cpu"))
    assert free is None or (free <= room if room is not None else free > 0)


@pytest.mark.parametrize(("free", "tiles", "expected"), [(None, 9, 1), (0, 9, 1), (10 * 100, 9, 5), (10**9, 9, 9),
                                                         (10**9, 1, 1)])
def test_tiles_per_call(monkeypatch, free, tiles, expected):
    free_memory(monkeypatch, free)
    assert memory.tiles_per_call(torch.device("cpu"), 100, tiles) == expected


def test_repeated_text_pairs_each_tile():
    negative, positive = torch.zeros(1, 3, 4), torch.ones(1, 3, 4)
    text = TextConditioning(torch.cat([negative, positive]), {"time_ids": torch.tensor([[0.0], [1.0]])})
    twice = text.repeated(2)
    assert twice.hidden_states[:, 0, 0].tolist() == [0, 1, 0, 1]  # [neg, pos] of tile 1, then of tile 2
    assert twice.added["time_ids"][:, 0].tolist() == [0, 1, 0, 1]
