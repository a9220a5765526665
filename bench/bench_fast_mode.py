"""The fast mode against the exact one: wall time and drift (mean and max levels of 255) on a tiled output.

The model is the medium-size random-weight PASD-SD1.5 (tests/support/medium_checkpoint.py, built once into --cache),
CPU, fp32 weights. The input is upscaled ×2 with the latent tile size chosen so the latent and the tile keep the
proportions of the issue's case (PASD-SDXL's default 180 tile on the 256 latent of a 2048² output): on a 64 latent,
a tile of 45. Each mode runs once, after one short untimed call in each precision, the exact mode first; rows
split the fast mode into its two halves (even tiles alone; bf16 alone, where the CPU computes bf16 natively), so
each half's cost and drift are seen apart. Drift is measured against the exact mode's image. A first row gives the
noise floor: the exact mode again on one torch thread (the same arithmetic, sums rounded in another order). Random
weights amplify any rounding (that row is far from 0), so the drift of a trained model cannot be read from these
figures; they compare the modes with each other and with that floor. A row runs the exact mode in channels-last
layout (the opt-in acceleration), the one layout lever for a CPU's fp32 convolutions. Two rows show what stacking a
step's tiles into one denoiser call gains on this CPU (engine/tile_calls.py; on a CPU the engine batches only
half-precision runs): the exact mode batched, and the fast mode one tile per call.

Run: .venv/bin/python bench/bench_fast_mode.py [--size 256] [--steps 20] [--threads 2] [--cache DIR]
Prints a table, never asserts on time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from common import add_project_to_path, machine_header, print_table, torch_threads_note

add_project_to_path()

from pasd_core.engine import fast, sampler, tile_calls, tiling  # noqa: E402
from pasd_core.engine.acceleration import accelerate  # noqa: E402
from pasd_core.engine.pipeline import PASDPipeline  # noqa: E402
from pasd_core.engine.work_limits import latent_tiling  # noqa: E402
from support.medium_checkpoint import DEFAULT_CACHE, build_medium  # noqa: E402
from support.real_size import photo  # noqa: E402

SCALE = 2
ISSUE_TILE, ISSUE_LATENT = 180, 256  # PASD-SDXL's default tile on a 2048² output's latent


def timed_run(pipeline: PASDPipeline, image, settings: dict, *, layout: str | None = None,
              bf16: bool | None = None, batch: bool | None = None) -> tuple[np.ndarray, float]:
    """One upscale; `layout` / `bf16` force one half of the fast mode, `batch` the tiles' batching (None: as the
    engine decides)."""
    patches = []
    if batch is not None:
        patches.append(mock.patch.object(tile_calls, "batching_pays", lambda device, dtype: batch))
    if layout is not None:
        for module in (tiling, sampler):  # the planner reads tiling's; the sampler imported it by name
            patches.append(mock.patch.object(module, "layout_for", lambda settings: layout))
    if bf16 is not None:
        patches.append(mock.patch.object(fast, "native_bf16", lambda device: bf16))
    for patch in patches:
        patch.start()
    try:
        started = time.perf_counter()
        result = pipeline.upscale(image, settings)
        return np.asarray(result, dtype=np.int16), time.perf_counter() - started
    finally:
        for patch in patches:
            patch.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="input side in pixels (256: a 512² output)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (20)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"medium checkpoint folder ({DEFAULT_CACHE})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    latent = args.size * SCALE // 8
    tile = round(latent * ISSUE_TILE / ISSUE_LATENT)
    settings = {"scale": SCALE, "process_size": args.size * SCALE, "steps": args.steps, "high_level_info": "none",
                "seed": 0, "latent_tile_size": tile, "latent_tile_overlap": 8}
    native = fast.native_bf16(torch.device("cpu"))
    print(machine_header("PASD fast mode against exact (CPU, fp32 weights, random medium PASD-SD1.5)"))
    print(torch_threads_note())
    print(f"input {args.size}² ×{SCALE} → {args.size * SCALE}², latent {latent}², tile {tile} overlap 8 "
          f"({latent_tiling(args.size, args.size, settings)[1]} tiles), {args.steps} steps; native bf16 on this CPU: "
          f"{'yes' if native else 'no'}; each mode run once, after a 2-step warm-up")
    image = photo(args.size)
    base, pasd = build_medium(args.cache)
    pipeline = PASDPipeline.from_pretrained(base, pasd, device="cpu", dtype="fp32")
    # one short untimed call first, in both precisions, so no row pays the first call's one-time costs
    for speed in ("exact", "fast"):
        pipeline.upscale(image, pipeline.plan({**settings, "speed": speed}).replaced(steps=2))
    exact, exact_seconds = timed_run(pipeline, image, {**settings, "speed": "exact"})
    fast_settings = {**settings, "speed": "fast"}
    rows = [["exact", f"{exact_seconds:.1f}", "1.00", "0.00", "0", "official tiles and loop, fp32"]]
    batched, batched_seconds = timed_run(pipeline, image, {**settings, "speed": "exact"}, batch=True)
    rows.append(["exact, tiles batched", f"{batched_seconds:.1f}", f"{batched_seconds / exact_seconds:.2f}",
                 f"{np.abs(batched - exact).mean():.2f}", str(np.abs(batched - exact).max()),
                 "a step's tiles in one call (what a GPU runs)"])
    networks = (pipeline.models.unet, pipeline.models.controlnet, pipeline.models.vae)
    accelerate(pipeline, channels_last=True)
    nhwc, nhwc_seconds = timed_run(pipeline, image, {**settings, "speed": "exact"})
    for module in networks:
        module.to(memory_format=torch.contiguous_format)
    rows.append(["exact, channels-last", f"{nhwc_seconds:.1f}", f"{nhwc_seconds / exact_seconds:.2f}",
                 f"{np.abs(nhwc - exact).mean():.2f}", str(np.abs(nhwc - exact).max()),
                 "opt-in accelerate(channels_last=True)"])
    torch.set_num_threads(1)
    floor, floor_seconds = timed_run(pipeline, image, {**settings, "speed": "exact"})
    torch.set_num_threads(args.threads)
    rows.append(["exact, 1 thread", f"{floor_seconds:.1f}", f"{floor_seconds / exact_seconds:.2f}",
                 f"{np.abs(floor - exact).mean():.2f}", str(np.abs(floor - exact).max()),
                 "noise floor: only the rounding differs"])
    variants = [("fast: even tiles only", tiling.EVEN, False, None, "")]
    if native:
        variants += [("fast: bf16 only", tiling.OFFICIAL, True, None, "official tiles, batched"),
                     ("fast (both)", None, None, None, "the mode as users get it"),
                     ("fast, 1 tile a call", None, None, False, "what batching gains in bf16")]
    for name, layout, bf16, batch, note in variants:
        result, seconds = timed_run(pipeline, image, fast_settings, layout=layout, bf16=bf16, batch=batch)
        drift = np.abs(result - exact)
        rows.append([name, f"{seconds:.1f}", f"{seconds / exact_seconds:.2f}", f"{drift.mean():.2f}",
                     str(drift.max()), note])
    print_table("Fast mode against exact (drift in levels of 255, against the exact image)",
                ["mode", "wall s", "x exact", "mean drift", "max drift", "note"], rows)


if __name__ == "__main__":
    main()
