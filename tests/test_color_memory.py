"""The memory-lean colour fix gives the whole-image algorithm's result, within float rounding, with far less memory.

It computes the same sums on bands of rows, channel by channel; a CPU may round a band's convolution
differently from the whole image's (by up to 1.8e-7 seen on a Xeon with AVX-512), so results are compared
within a few ulps, not bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pasd_core.engine import color
from support.paths import ROOT

# --- the algorithm as it was before the memory work (frozen copy: whole image, all channels at once) -----


def frozen_blur(image: torch.Tensor, radius: int) -> torch.Tensor:
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=image.dtype, device=image.device)
    kernel = (kernel / 16.0)[None, None].repeat(image.shape[1], 1, 1, 1)
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel, groups=image.shape[1], dilation=radius)


def frozen_split(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    high = torch.zeros_like(image)
    for level in range(5):
        low = frozen_blur(image, 2**level)
        high += image - low
        image = low
    return high, image


def frozen_wavelet(target: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    high, _ = frozen_split(target)
    _, low = frozen_split(reference)
    return (high + low).clamp_(0.0, 1.0)


def frozen_adain(target: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    def mean_std(x):
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        return flat.mean(dim=2)[..., None, None], (flat.var(dim=2) + eps).sqrt()[..., None, None]

    t_mean, t_std = mean_std(target)
    r_mean, r_std = mean_std(reference)
    return ((target - t_mean) / t_std * r_std + r_mean).clamp_(0.0, 1.0)


def frozen_color_fix_tensor(target: torch.Tensor, reference: torch.Tensor, method: str) -> torch.Tensor:
    if method == "none":
        return target
    if target.shape[-2:] != reference.shape[-2:]:
        reference = F.interpolate(reference, size=target.shape[-2:], mode="bicubic", align_corners=False)
    fix = frozen_wavelet if method == "wavelet" else frozen_adain
    return fix(target.float(), reference.float())


def frozen_color_fix(target: Image.Image, reference: Image.Image, method: str) -> Image.Image:
    def to_tensor(image):
        return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]

    if method == "none":
        return target
    fixed = frozen_color_fix_tensor(to_tensor(target), to_tensor(reference), method)
    return Image.fromarray((fixed[0].permute(1, 2, 0) * 255).to(torch.uint8).cpu().numpy())


# --- equality within rounding --------------------------------------------------------------------------

# Values lie in [0, 1]; five blur levels each round a 9-term sum and an add: a few ulps at 1.0 at most.
# 1e-6 is 8 float32 ulps at 1.0 (5x the largest difference seen across CPUs); 2e-15 is 8 float64 ulps.
ROUNDING = {torch.float32: 1e-6, torch.float64: 2e-15}


def same_within_rounding(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape and dtype, and values equal up to the summation-order rounding above."""
    return a.shape == b.shape and a.dtype == b.dtype and bool((a - b).abs().max() <= ROUNDING[a.dtype])


SIZES = [(64, 64), (37, 53), (300, 17), (129, 250)]


@pytest.fixture(params=[color.STRIP_PIXELS, 1000], ids=["default-bands", "many-bands"])
def bands(request, monkeypatch):
    """Run each case with the default bands and with bands of a few rows (many convolution calls per blur)."""
    monkeypatch.setattr(color, "STRIP_PIXELS", request.param)


def random_images(size: tuple[int, int], batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(batch, 3, *size, generator=generator)
    reference = torch.rand(batch, 3, size[0] // 3 + 1, size[1] // 2 + 1, generator=generator)
    return target, reference


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_tensor_colour_fix_matches_before(size, method, bands):
    target, small_reference = random_images(size, batch=2)
    for reference in (small_reference, torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(5))):
        assert same_within_rounding(color.color_fix_tensor(target, reference, method),
                                    frozen_color_fix_tensor(target, reference, method))


def test_channels_last_views_and_other_dtypes_match_before(bands):
    """The ComfyUI node hands [B, H, W, C] images permuted to [B, C, H, W] views; other callers may use float64."""
    target, reference = random_images((45, 70), batch=2, seed=3)
    for make in (lambda x: x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2), lambda x: x.double()):
        for method in ("wavelet", "adain"):
            assert same_within_rounding(color.color_fix_tensor(make(target), make(reference), method),
                                        frozen_color_fix_tensor(make(target), make(reference), method))


def test_wavelet_function_matches_before_and_leaves_its_inputs_alone(bands):
    target, _ = random_images((90, 61), seed=7)
    reference = torch.rand(target.shape, generator=torch.Generator().manual_seed(8))
    kept = target.clone(), reference.clone()
    assert same_within_rounding(color.wavelet_color_fix(target, reference), frozen_wavelet(target, reference))
    assert torch.equal(target, kept[0]) and torch.equal(reference, kept[1])  # untouched: bit-equal in-process


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("method", ["wavelet", "adain", "none"])
def test_pil_colour_fix_matches_before_within_one_level(size, method, bands):
    rng = np.random.default_rng(sum(size))
    target = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    for reference_size in (size, (size[0] // 4 + 1, size[1] // 4 + 1)):
        reference = Image.fromarray(rng.integers(0, 256, (*reference_size, 3), dtype=np.uint8))
        fixed, expected = color.color_fix(target, reference, method), frozen_color_fix(target, reference, method)
        # truncation to uint8 turns a rounding difference at an integer boundary into one level, never more
        difference = np.abs(np.asarray(fixed, dtype=np.int16) - np.asarray(expected, dtype=np.int16))
        assert fixed.mode == expected.mode and difference.max(initial=0) <= 1


# --- memory ---------------------------------------------------------------------------------------------

PEAK_PROBE = """
import json, re, sys
from pathlib import Path
import numpy as np
from PIL import Image
sys.path.insert(0, sys.argv[1])
from pasd_core.engine.color import color_fix

def status(field):
    return int(re.search(field + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

side = int(sys.argv[2])
rng = np.random.default_rng(0)
target, reference = (Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(2))
color_fix(Image.new("RGB", (64, 64)), Image.new("RGB", (64, 64)), "wavelet")  # warm up torch
before = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # restart the peak-RSS counter
color_fix(target, reference, "wavelet")
print(json.dumps((status("VmHWM") - before) / side**2))
"""


def peak_bytes(side: int) -> float:
    """The peak RSS (bytes) a wavelet colour fix of a `side`² image adds, measured in a fresh process."""
    done = subprocess.run([sys.executable, "-c", PEAK_PROBE, str(ROOT), str(side)], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout) * side**2


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="needs Linux's /proc/self/clear_refs (to reset the peak-RSS counter) to measure peak memory")
def test_wavelet_colour_fix_of_a_large_image_holds_few_image_copies():
    """Before: 18 to 23 float32 RGB copies of the image (12 bytes per pixel each); now three or four. Measured as
    the growth from 1024² to 2048², so the fixed costs of a call (torch's buffers, some megabytes that vary with
    the machine's load) cancel out."""
    small, large = 1024, 2048
    bytes_per_pixel = (peak_bytes(large) - peak_bytes(small)) / (large**2 - small**2)
    assert bytes_per_pixel < 6 * 12, f"{bytes_per_pixel:.0f} bytes per pixel: more than six float32 RGB copies"
