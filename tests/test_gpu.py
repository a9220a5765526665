"""GPU tier: half precision against fp32 (also in the LCM fast mode), the memory and time of fal's job (SDXL, 1024² →
2048², ×2, 25 steps), SD1.5's time at 25 steps against LCM at 4, the colour fix on the GPU against the CPU, and a
step's latent tiles in one call (memory rule, drift, time).

Skipped without a CUDA GPU. On a GPU machine (the figures are printed, hence -s):
    .venv/bin/python -m pytest -q -s -m gpu tests/test_gpu.py
The networks are the real-size PASD-SD1.5 and PASD-SDXL (UNet with PACA, ControlNet, both text encoders,
VAE) with seeded random weights, built by tests/support/real_size.py as the benchmarks build them: no download,
the real architectures' memory and speed, meaningless pictures. The tiny parity fixtures would say nothing about
either.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from pasd_core.engine.device import resolve_dtype
from pasd_core.engine.pipeline import PASDPipeline
from pasd_core.model_family import SD15, SDXL
from pasd_core.placement import LocalPlacement
from support.real_size import build_base, build_pasd, lcm_pipeline, photo, sampler_models

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; on one, run "
                       ".venv/bin/python -m pytest -q -s -m gpu tests/test_gpu.py"),
]

DEVICE = torch.device("cuda")
GIB = 1024**3
# Each family at its native size: SD1.5 384² ×2 = 768² (its process_size), SDXL 512² ×2 = 1024²; one latent tile.
PARITY_INPUT = {SD15: 384, SDXL: 512}
PARITY_SETTINGS = {"scale": 2, "steps": 25, "seed": 0}
OFFICIAL_INPUT = 1024
# the rest are fal's (the table's) defaults; the prompt stage off (its parity has tests of its own)
OFFICIAL_SETTINGS = {"scale": 2, "steps": 25, "seed": 0, "high_level_info": "none"}


def load(family: str, dtype: torch.dtype) -> PASDPipeline:
    """The real-size PASD of `family` on the GPU in `dtype`; the same seeded weights on every call."""
    unet, controlnet = build_pasd("pasd", family)
    return on_gpu(PASDPipeline(sampler_models(family, build_base(family), unet, controlnet, dtype), "pasd"))


def on_gpu(pipeline: PASDPipeline) -> PASDPipeline:
    """The pipeline cast to its dtypes and placed on the GPU, as from_pretrained places one."""
    pipeline.place(LocalPlacement, torch.device(DEVICE))
    return pipeline


def upscale(family: str, dtype: torch.dtype) -> np.ndarray:
    return run_once(load(family, dtype), PARITY_INPUT[family], PARITY_SETTINGS)


def run_once(pipeline: PASDPipeline, side: int, settings: dict) -> np.ndarray:
    """One image of `side`² through `pipeline` in [0, 1], then the pipeline's GPU memory handed back."""
    image = pipeline.upscale(photo(side), settings)
    del pipeline
    gc.collect()
    torch.cuda.empty_cache()
    return np.asarray(image, dtype=np.float64) / 255


@contextlib.contextmanager
def tf32_off() -> Iterator[None]:
    """True fp32: with TF32 on (PyTorch's default for cuDNN), "fp32" convolutions round to 10 bits."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module")
def fp32_images() -> Callable[[str], np.ndarray]:
    """Each family's fp32 result (TF32 off), made on first use."""
    images: dict[str, np.ndarray] = {}

    def image(family: str) -> np.ndarray:
        if family not in images:
            with tf32_off():
                images[family] = upscale(family, torch.float32)
        return images[family]

    return image


# Mean |difference| from fp32 in levels of 255, measured on an H200 (2026-11-26; real-size random weights, 25 steps):
# SD1.5 fp16 1.04, bf16 2.22; SDXL fp16 1.44, bf16 1.78 (max 9-18). Half precision rounds every operation and
# 25 steps carry it on, so this is what it costs, not a fault; the bounds are ~1.5x the worst of each dtype, far
# below what a layer left in the wrong precision, an overflow or a wrong path gives (tens of levels, or NaN).
HALF_PRECISION_MEAN_BOUND = {torch.float16: 2.2 / 255, torch.bfloat16: 3.4 / 255}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("family", [SD15, SDXL])
def test_half_precision_agrees_with_fp32(family, dtype, fp32_images):
    """Within the measured bound on average over the image (HALF_PRECISION_MEAN_BOUND); single pixels move
    further, and the printed figures say how far."""
    reference, half = fp32_images(family), upscale(family, dtype)
    difference = np.abs(half - reference)
    print(f"\n{family} {dtype}: mean |difference| {difference.mean() * 255:.3f}/255, "
          f"max {difference.max() * 255:.0f}/255, {(difference > 1.5 / 255).mean():.2%} of values off by more than 1")
    assert half.shape == reference.shape and np.isfinite(half).all()
    assert difference.mean() <= HALF_PRECISION_MEAN_BOUND[dtype]


@pytest.fixture(scope="module")
def sdxl_pipeline() -> PASDPipeline:
    """PASD-SDXL in the precision a user gets on this GPU by default (dtype auto: bf16, as the official script)."""
    gc.collect()
    torch.cuda.empty_cache()
    return load(SDXL, resolve_dtype("auto", DEVICE, SDXL))


def test_peak_memory_of_the_official_sdxl_job(sdxl_pipeline):
    """What a run adds on top of its weights stays within what the node asks ComfyUI to free for it
    (PASDPipeline.memory_required: the weights plus the VAE's peak); above that, ComfyUI could free too little."""
    before = torch.cuda.memory_allocated(DEVICE)  # the weights
    torch.cuda.reset_peak_memory_stats(DEVICE)
    sdxl_pipeline.upscale(photo(OFFICIAL_INPUT), OFFICIAL_SETTINGS)
    peak = torch.cuda.max_memory_allocated(DEVICE)
    allowance = sdxl_pipeline.memory_required() - sdxl_pipeline.weight_bytes()
    print(f"\nSDXL {OFFICIAL_INPUT}² ×2, {sdxl_pipeline.models.dtype}: peak {peak / GIB:.2f} GiB = weights "
          f"{before / GIB:.2f} + run {(peak - before) / GIB:.2f} (allowance {allowance / GIB:.2f}); "
          f"{torch.cuda.get_device_name(DEVICE)}")
    assert peak - before <= allowance


def test_time_per_image_of_the_official_sdxl_job(sdxl_pipeline):
    """Printed, never asserted: a figure for the README, on the GPU named."""
    sdxl_pipeline.upscale(photo(256), {**OFFICIAL_SETTINGS, "steps": 10})  # warm-up: kernels loaded, allocator grown
    torch.cuda.synchronize(DEVICE)
    start = time.perf_counter()
    image = sdxl_pipeline.upscale(photo(OFFICIAL_INPUT), OFFICIAL_SETTINGS)
    torch.cuda.synchronize(DEVICE)
    seconds = time.perf_counter() - start
    print(f"\nSDXL {OFFICIAL_INPUT}² → {image.width}×{image.height}, {OFFICIAL_SETTINGS['steps']} steps, "
          f"{sdxl_pipeline.models.dtype}: {seconds:.1f} s per image on {torch.cuda.get_device_name(DEVICE)}")
    assert image.size == (2 * OFFICIAL_INPUT, 2 * OFFICIAL_INPUT)


# --- LCM fast mode (SD1.5): a random rank-64 LCM-LoRA over the real UNet's layers (support/real_size.py) ----------
LCM_SETTINGS = {"scale": 2, "steps": 4, "guidance_scale": 1.5, "seed": 0}  # CFG on, so both halves are exercised


def upscale_lcm(dtype: torch.dtype) -> np.ndarray:
    """The LoRA is merged in fp32 on CPU, then the pipeline is cast: every dtype gets the same merged weights."""
    return run_once(on_gpu(lcm_pipeline(build_base(SD15), dtype)), PARITY_INPUT[SD15], LCM_SETTINGS)


@pytest.fixture(scope="module")
def lcm_fp32_image() -> np.ndarray:
    with tf32_off():
        return upscale_lcm(torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_lcm_half_precision_agrees_with_fp32(dtype, lcm_fp32_image):
    """As test_half_precision_agrees_with_fp32, in the LCM fast mode (LCMScheduler draws noise between steps)."""
    half = upscale_lcm(dtype)
    difference = np.abs(half - lcm_fp32_image)
    print(f"\nsd15 LCM {LCM_SETTINGS['steps']} steps {dtype}: mean |difference| {difference.mean() * 255:.3f}/255, "
          f"max {difference.max() * 255:.0f}/255, {(difference > 1.5 / 255).mean():.2%} of values off by more than 1")
    assert half.shape == lcm_fp32_image.shape
    assert difference.mean() <= 1 / 255


def test_time_per_image_25_steps_against_lcm_4_steps():
    """Printed, never asserted: SD1.5 384² → 768² in the auto dtype, the normal sampler at 25 steps (guidance 7, CFG
    on) against LCM at 4 steps (guidance 1.0, CFG off: the LCM default; and 1.5, CFG on)."""
    dtype = resolve_dtype("auto", DEVICE, SD15)
    base = build_base(SD15)
    runs = (("UniPC", lambda: load(SD15, dtype), {"steps": 25, "guidance_scale": 7.0}),
            ("LCM", lambda: on_gpu(lcm_pipeline(base, dtype)), {"steps": 4, "guidance_scale": 1.0}),
            ("LCM", None, {"steps": 4, "guidance_scale": 1.5}))
    pipeline, lines = None, []
    for label, make, settings in runs:
        if make is not None:
            pipeline = None
            gc.collect()
            torch.cuda.empty_cache()
            pipeline = make()
            pipeline.upscale(photo(128), {"scale": 2, "seed": 0, "high_level_info": "none", **settings})  # warm-up
        torch.cuda.synchronize(DEVICE)
        start = time.perf_counter()
        image = pipeline.upscale(photo(PARITY_INPUT[SD15]),
                                 {"scale": 2, "seed": 0, "high_level_info": "none", **settings})
        torch.cuda.synchronize(DEVICE)
        lines.append(f"{label} {settings['steps']} steps, guidance {settings['guidance_scale']}: "
                     f"{time.perf_counter() - start:.2f} s")
        assert image.size == (2 * PARITY_INPUT[SD15],) * 2
    side = PARITY_INPUT[SD15]
    print(f"\nSD1.5 {side}² → {2 * side}², {dtype} on {torch.cuda.get_device_name(DEVICE)}: " + "; ".join(lines))


@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_colour_fix_on_the_gpu_agrees_with_the_cpu(method):
    """The sampler fixes colours on its own device: within 1 level of the CPU's (the parity standard)."""
    from PIL import Image

    from pasd_core.engine.color import color_fix

    target, reference = photo(2048), photo(1024).resize((1024, 1024), Image.BICUBIC)
    cpu = np.asarray(color_fix(target, reference, method), np.int16)
    gpu = np.asarray(color_fix(target, reference, method, DEVICE), np.int16)
    assert np.abs(cpu - gpu).max() <= 1



def test_a_steps_tiles_in_one_call_fit_the_memory_rule_and_stay_close():
    """On a GPU the sampler puts a step's tiles in one call: the denoising's peak stays within what the memory rule
    reserved for them (family.denoiser_values, measured on the CPU), and the image within the fp16 bound of the
    official one-tile-per-call loop (a batch size changes less than fp16 against fp32 does). Times printed."""
    from unittest import mock

    from pasd_core.engine import memory
    from pasd_core.engine import sampler as sampler_module

    pipeline = load(SD15, torch.float16)
    settings = {**OFFICIAL_SETTINGS, "steps": 10, "latent_tile_size": 48, "latent_tile_overlap": 8}
    side = PARITY_INPUT[SD15]  # 768² out: a 96 latent in 9 official tiles of 48
    batches, peaks = [], []
    real_predict, real_denoise = sampler_module.PASDSampler._predict, sampler_module.PASDSampler.denoise

    def predict(self, latents, *args, **kwargs):
        batches.append(latents.shape[0])
        return real_predict(self, latents, *args, **kwargs)

    def denoise(self, *args, **kwargs):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = real_denoise(self, *args, **kwargs)
        peaks.append(torch.cuda.max_memory_allocated() - before)
        return result

    def timed() -> tuple[np.ndarray, float]:
        torch.cuda.synchronize()
        started = time.perf_counter()
        image = pipeline.upscale(photo(side), settings)
        torch.cuda.synchronize()
        return np.asarray(image, dtype=np.float64) / 255, time.perf_counter() - started

    with mock.patch.object(sampler_module.PASDSampler, "_predict", predict), \
            mock.patch.object(sampler_module.PASDSampler, "denoise", denoise):
        timed()  # warm-up
        batches.clear()
        batched, batched_s = timed()
        assert batches == [2 * 9] * settings["steps"]
        with mock.patch.object(memory, "free_bytes", lambda device: None):
            single, single_s = timed()
    one_tile = memory.denoiser_peak_bytes(pipeline.models.family.denoiser_values, 2, 48 * 48, torch.float16)
    drift = np.abs(batched - single)
    print(f"\nSD1.5 768² in 9 tiles, fp16, 10 steps: batched {batched_s:.2f} s, one tile per call {single_s:.2f} s; "
          f"denoising peak {peaks[1] / GIB:.2f} GiB batched ({9 * one_tile / GIB:.2f} GiB reserved), "
          f"{peaks[2] / GIB:.2f} GiB single; drift mean {drift.mean() * 255:.2f} max {drift.max() * 255:.0f} levels")
    assert peaks[1] <= 9 * one_tile
    assert drift.mean() <= HALF_PRECISION_MEAN_BOUND[torch.float16]
