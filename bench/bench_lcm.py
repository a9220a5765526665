"""What the LCM fast mode saves: a whole run at the usual step count against LCM at 4 steps, same weights.

Builds the real-size PASD-SD1.5 networks with seeded random weights (bench_step_cost.py's builders) and a random
rank-64 LCM-LoRA over the stock UNet's attention, feed-forward and projection layers (the real LCM-LoRA's kind
of layers; never PACA), merged by the engine's own LCM-LoRA reader. Runs `PASDPipeline.upscale` on CPU in fp32:
UniPC at --steps with guidance 7.0 (CFG on, the table's default), then LCMScheduler at 4 steps with guidance 1.0
(the LCM default: CFG off) and 1.5 (CFG on). The pictures are meaningless; the times are this machine's.

Run: python bench/bench_lcm.py [--size 128] [--steps 20] [--lcm-steps 4]
Needs about 6 GiB of RAM; prints a table, never asserts on time.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import add_project_to_path, machine_header, print_table, torch_threads_note

add_project_to_path()

from bench_step_cost import build_base, build_pasd, read_json, sampler_models, test_image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from pasd_core.engine.pipeline import PASDPipeline  # noqa: E402
from pasd_core.model_family import SD15  # noqa: E402
from pasd_core.weights.lcm_lora import apply_merges, read_lcm_lora  # noqa: E402

# The layer kinds latent-consistency/lcm-lora-sdv1-5 adapts inside the UNet's transformers.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")


def random_lcm_lora(unet: torch.nn.Module, rank: int = 64, alpha: float = 8.0, seed: int = 3) -> dict[str, Any]:
    """A seeded kohya-format LoRA over the stock SD UNet's LORA_TARGETS; each merged delta is about 5% of its
    layer's weight scale, so the model stays well behaved."""
    generator = torch.Generator().manual_seed(seed)
    up_scale = 0.05 / ((alpha / rank) * math.sqrt(rank))  # delta std = 0.05 / sqrt(fan_in), as the weights' 1/sqrt
    tensors: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if "pixel_attentions" in name or not name.endswith(LORA_TARGETS):
            continue
        weight = module.weight
        fan_in, kernel = weight[0].numel(), weight.shape[2:]
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, *weight.shape[1:], generator=generator) / math.sqrt(
            fan_in)
        tensors[f"{key}.lora_up.weight"] = torch.randn(weight.shape[0], rank, *[1] * len(kernel),
                                                       generator=generator) * up_scale
        tensors[f"{key}.alpha"] = torch.tensor(alpha)
    return tensors


def lcm_pipeline(base: dict[str, Any], dtype: torch.dtype = torch.float32) -> PASDPipeline:
    """Real-size PASD-SD1.5 (seeded random weights) with the random LCM-LoRA merged and LCMScheduler, on CPU."""
    from diffusers import LCMScheduler

    unet, controlnet = build_pasd("pasd", SD15)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lcm_lora.safetensors"
        save_file(random_lcm_lora(unet), str(path))
        apply_merges(read_lcm_lora(unet, base["text_encoder"], path, SD15), path)
    models = sampler_models(SD15, base, unet, controlnet, dtype)
    models = dataclasses.replace(models, scheduler=LCMScheduler.from_config(read_json("scheduler",
                                                                                       "scheduler_config.json")))
    return PASDPipeline(models, "pasd", lcm=True)


def normal_pipeline(base: dict[str, Any], dtype: torch.dtype = torch.float32) -> PASDPipeline:
    unet, controlnet = build_pasd("pasd", SD15)
    return PASDPipeline(sampler_models(SD15, base, unet, controlnet, dtype), "pasd")


def timed(pipeline: PASDPipeline, settings: dict[str, Any], size: int) -> float:
    start = time.perf_counter()
    pipeline.upscale(test_image(size), settings)
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
