"""What the LCM fast mode saves: a whole run at the usual step count against LCM at 4 steps, same weights.

Builds the real-size PASD-SD1.5 networks with seeded random weights (tests/support/real_size.py) and a random
rank-64 LCM-LoRA over the stock UNet's attention, feed-forward and projection layers (the real LCM-LoRA's kind
of layers; never PACA), merged by the engine's own LCM-LoRA reader. Runs `PASDPipeline.upscale` on CPU in fp32:
UniPC at --steps with guidance 7.0 (CFG on, the table's default), then LCMScheduler at 4 steps with guidance 1.0
(the LCM default: CFG off) and 1.5 (CFG on). The pictures are meaningless; the times are this machine's.

Run: python bench/bench_lcm.py [--size 128] [--steps 20] [--lcm-steps 4]
Needs about 6 GiB of RAM; prints a table, never asserts on time.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from common import add_project_to_path, machine_header, print_table, torch_threads_note

add_project_to_path()

from pasd_core.engine.pipeline import PASDPipeline  # noqa: E402
from pasd_core.model_family import SD15  # noqa: E402
from support.real_size import build_base, build_pasd, lcm_pipeline, photo, sampler_models  # noqa: E402


def normal_pipeline(base: dict[str, Any], dtype: torch.dtype = torch.float32) -> PASDPipeline:
    unet, controlnet = build_pasd("pasd", SD15)
    return PASDPipeline(sampler_models(SD15, base, unet, controlnet, dtype), "pasd")


def timed(pipeline: PASDPipeline, settings: dict[str, Any], size: int) -> float:
    start = time.perf_counter()
    pipeline.upscale(photo(size), settings)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="input = control image side in pixels (latent /8)")
    parser.add_argument("--steps", type=int, default=20, help="steps of the normal (UniPC) run")
    parser.add_argument("--lcm-steps", type=int, default=4, help="steps of the LCM runs")
    args = parser.parse_args()

    print(machine_header("PASD-SD1.5 LCM fast mode against the normal sampler (CPU, fp32, random weights)"))
    print(torch_threads_note())
    print(f"input {args.size}x{args.size} px, scale 1 -> latent {args.size // 8}x{args.size // 8}; real-size UNet "
          "(with PACA), ControlNet, VAE and text encoder; colour fix wavelet; one warm-up run per pipeline excluded")
    common = {"scale": 1, "process_size": args.size, "seed": 0}
    base = build_base(SD15)
    runs = [("normal (UniPC)", args.steps, 7.0, normal_pipeline),
            ("LCM", args.lcm_steps, 1.0, lcm_pipeline), ("LCM", args.lcm_steps, 1.5, lcm_pipeline)]
    rows, reference = [], None
    pipeline, built = None, None
    for label, steps, guidance, make in runs:
        if built is not make:
            pipeline = None  # one UNet in memory at a time
            pipeline, built = make(base), make
            warm_up = {**common, "process_size": 64, "steps": 10 if make is normal_pipeline else 1}
            timed(pipeline, warm_up, 64)  # first calls (allocator, kernels) at a quarter of the latent
        seconds = timed(pipeline, {**common, "steps": steps, "guidance_scale": guidance}, args.size)
        reference = reference or seconds
        rows.append([label, steps, f"{guidance:.1f}" + (" (CFG on)" if guidance > 1 else " (CFG off)"),
                     f"{seconds:.1f}", f"{seconds / steps:.2f}", f"{reference / seconds:.1f}x"])
        print(f"  done: {label} {steps} steps, guidance {guidance} in {seconds:.1f} s", flush=True)
    print_table("Whole run (seconds)", ["sampler", "steps", "guidance", "wall s", "s/step", "speed-up"], rows)


if __name__ == "__main__":
    main()
