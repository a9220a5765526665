"""What one denoising step costs at the real SD1.5 and SDXL sizes, and what the sampler itself adds to it.

Builds the real-size PASD networks in memory with random weights (tests/support/real_size.py), from the configs
shipped in pasd_core/weights/{sd15,sdxl}/: SD1.5 (UNet 320-640-1280-1280 with PACA, ~0.9 B parameters) or SDXL
(UNet 320-640-1280 with PACA, ~2.6 B), each with its ControlNet (conditioning channels 16-32-96-256, as
diffusers' ControlNetModel.from_unet makes it), the real-size VAE and CLIP text encoder(s). Runs
`PASDPipeline.upscale` on CPU in fp32 and times each module from the outside (torch hooks and wrapped
methods; the engine is not changed). A step is the time between two consecutive scheduler steps; what is
neither ControlNet, UNet nor scheduler is the sampler's own overhead. Also counts the calls that must happen
once (text encoders twice a run, the condition embedding once per image or tile) or never (`to_rgbs`).

SDXL runs keep the UNet and ControlNet whole (15 GB in fp32) but cut both text encoders to 2 layers at their
real widths: they run twice a run, never inside a step, and whole they would add 3 GB (too much beside the
rest on a 24 GB machine). Its tokenizers and the PASD-SDXL checkpoint's Euler scheduler config come from the
SDXL parity fixtures (the real CLIP BPE files and the published scheduler_config.json).

Run: python bench/bench_step_cost.py [--family sd15 sdxl] [--size 256] [--steps 10] [--variants pasd pasd_light]
     [--no-tiled-check] [--channels-last]
Needs about 8 GiB of RAM for SD1.5 and 17 GiB for SDXL (one family in memory at a time); the figures are
seconds on this machine's CPU (never pass/fail).
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import time
from collections import defaultdict
from typing import Any

import torch
from common import add_project_to_path, machine_header, print_table, torch_threads_note

add_project_to_path()

from pasd_core.engine import sampler as sampler_module  # noqa: E402
from pasd_core.engine.pipeline import PASDPipeline  # noqa: E402
from pasd_core.model_family import LABELS, SD15, SDXL  # noqa: E402
from pasd_core.models import PASDControlNet, PASDUNet  # noqa: E402
from support.real_size import build_base, build_pasd, photo, sampler_models  # noqa: E402

DEFAULT_VARIANTS = {SD15: ["pasd", "pasd_light"], SDXL: ["pasd"]}  # PASD-SDXL is published as `pasd` only
SDXL_TEXT_LAYERS = 2


def parameters_m(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


class Recorder:
    """Timestamps of every call of the watched modules and methods, from the outside."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, float, int | None]] = []
        self.counts: dict[str, int] = defaultdict(int)
        self._open: dict[str, tuple[float, int | None]] = {}
        self._undo: list[Any] = []

    def module(self, name: str, module: torch.nn.Module) -> None:
        def before(mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            first = args[0] if args else next(iter(kwargs.values()), None)
            self._open[name] = (time.perf_counter(), getattr(first, "shape", [None])[0])

        def after(mod: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            start, batch = self._open.pop(name)
            self._record(name, start, batch)

        self._undo.append(module.register_forward_pre_hook(before, with_kwargs=True).remove)
        self._undo.append(module.register_forward_hook(after, with_kwargs=True).remove)

    def method(self, name: str, owner: Any, attribute: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                first = args[0] if args else None
                self._record(name, start, getattr(first, "shape", [None])[0])

        own = attribute in vars(owner)
        setattr(owner, attribute, timed)
        self._undo.append(lambda: setattr(owner, attribute, original) if own else delattr(owner, attribute))

    def close(self) -> None:
        """Remove every hook and wrapper, so the next run starts from the untouched objects."""
        while self._undo:
            self._undo.pop()()

    def _record(self, name: str, start: float, batch: int | None) -> None:
        self.events.append((name, start, time.perf_counter(), batch))
        self.counts[name] += 1

    def total(self, name: str, start: float = -math.inf, end: float = math.inf) -> float:
        return sum(e - s for n, s, e, _ in self.events if n == name and s >= start and e <= end)

    def batches(self, name: str) -> set[int | None]:
        return {b for n, _, _, b in self.events if n == name}

    def steps(self) -> list[tuple[float, float]]:
        """(start, end) of each full step after the first: from one scheduler step's end to the next's."""
        ends = [e for n, _, e, _ in self.events if n == "scheduler.step"]
        return list(zip(ends[:-1], ends[1:], strict=True))


def watch(pipeline: PASDPipeline) -> Recorder:
    m, recorder = pipeline.models, Recorder()
    recorder.module("text_encoder", m.text_encoder)
    if m.text_encoder_2 is not None:
        recorder.module("text_encoder_2", m.text_encoder_2)
    recorder.module("controlnet", m.controlnet)
    recorder.module("unet", m.unet)
    for conv in m.controlnet.controlnet_cond_embedding.to_rgbs:
        recorder.module("to_rgbs", conv)
    recorder.method("condition_embedding", m.controlnet, "embed_condition")
    recorder.method("scheduler.step", m.scheduler, "step")
    recorder.method("scheduler.scale", m.scheduler, "scale_model_input")
    recorder.method("vae.encode", m.vae, "encode")
    recorder.method("vae.decode", m.vae, "decode")
    recorder.method("color_fix", sampler_module, "color_fix")
    return recorder


def run(pipeline: PASDPipeline, settings: dict[str, Any], size: int) -> tuple[Recorder, float]:
    recorder = watch(pipeline)
    start = time.perf_counter()
    pipeline.upscale(photo(size), settings)
    return recorder, time.perf_counter() - start


def step_row(label: str, recorder: Recorder, steps: int, tiles: int) -> list[str]:
    walls, parts = [], defaultdict(list)
    for start, end in recorder.steps():
        walls.append(end - start)
        for name in ("controlnet", "unet"):
            parts[name].append(recorder.total(name, start, end))
        parts["scheduler"].append(recorder.total("scheduler.step", start, end)
                                  + recorder.total("scheduler.scale", start, end))
    wall = statistics.median(walls)
    medians = {name: statistics.median(values) for name, values in parts.items()}
    overheads = [w - sum(parts[n][i] for n in parts) for i, w in enumerate(walls)]
    overhead = statistics.median(overheads)
    return [label, f"{wall:.3f}", f"{medians['controlnet']:.3f}", f"{medians['unet']:.3f}",
            f"{medians['scheduler'] * 1e3:.2f} ms", f"{overhead * 1e3:.1f} ms", f"{100 * overhead / wall:.3f}%",
            f"{recorder.counts['controlnet'] / steps / tiles:.0f}", f"{recorder.counts['unet'] / steps / tiles:.0f}",
            "/".join(str(b) for b in sorted(recorder.batches("unet")))]


def run_row(label: str, recorder: Recorder, wall: float, tiles: int) -> list[str]:
    denoise = sum(e - s for n, s, e, _ in recorder.events if n in ("controlnet", "unet", "scheduler.step"))
    text = recorder.total("text_encoder") + recorder.total("text_encoder_2")
    text_calls = "+".join(str(recorder.counts[n]) for n in ("text_encoder", "text_encoder_2") if recorder.counts[n])
    return [label, f"{wall:.1f}", f"{text:.2f}", f"{recorder.total('vae.encode'):.2f}",
            f"{denoise:.1f}", f"{recorder.total('vae.decode'):.2f}", f"{recorder.total('color_fix') * 1e3:.0f} ms",
            text_calls, f"{recorder.counts['condition_embedding']} ({tiles} tile"
            f"{'s' if tiles > 1 else ''})", str(recorder.counts["to_rgbs"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", nargs="+", choices=(SD15, SDXL), default=[SD15],
                        help="model families to measure, in one set of tables (default sd15)")
    parser.add_argument("--size", type=int, default=256, help="input = control image side in pixels (latent /8)")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps (the parameter table's minimum is 10)")
    parser.add_argument("--variants", nargs="+", help="default: pasd pasd_light for sd15, pasd for sdxl")
    parser.add_argument("--no-tiled-check", dest="tiled_check", action="store_false",
                        help="skip the small tiled SD1.5 `pasd` run that counts condition embeddings per tile")
    parser.add_argument("--channels-last", action="store_true",
                        help="also run each variant after accelerate(channels_last=True) (CPU: expect no gain)")
    args = parser.parse_args()

    names = " and ".join(LABELS[family] for family in args.family)
    print(machine_header(f"PASD step cost at the {names} size (CPU, fp32, random weights)"))
    print(torch_threads_note())
    settings = {"scale": 1, "process_size": args.size, "steps": args.steps, "guidance_scale": 7.0, "seed": 0}
    print(f"input {args.size}x{args.size} px, scale 1 -> latent {args.size // 8}x{args.size // 8}; {args.steps} steps; "
          "guidance 7.0 (CFG on); colour fix wavelet; real-size VAE and text encoders"
          + (f" (SDXL's cut to {SDXL_TEXT_LAYERS} layers)" if SDXL in args.family else ""))

    # (family, variant, settings, input side, channels_last), grouped so each family and variant is built once
    cases: list[tuple[str, str, dict[str, Any], int, bool]] = []
    for family in args.family:
        for variant in args.variants or DEFAULT_VARIANTS[family]:
            cases.append((family, variant, settings, args.size, False))
            if args.tiled_check and family == SD15 and variant == "pasd":  # 3/4 of the side in tiles of 2/3: 2×2
                side = args.size * 3 // 4 // 8 * 8
                cases.append((family, variant, {**settings, "process_size": side,
                                                "latent_tile_size": side // 12 // 8 * 8, "latent_tile_overlap": 8},
                              side, False))
            if args.channels_last:
                cases.append((family, variant, settings, args.size, True))
    step_rows, run_rows, sizes = [], [], []
    base: dict[str, Any] = {}
    built: dict[tuple[str, str], tuple[PASDUNet, PASDControlNet]] = {}
    for family, variant, case_settings, side, channels_last in cases:
        if (family, variant) not in built:
            pipeline = unet = controlnet = None  # one family's and variant's weights in memory at a time
            built.clear()
            if base.get("family") != family:
                base.clear()
                gc.collect()
                base.update(family=family, parts=build_base(family, SDXL_TEXT_LAYERS if family == SDXL else None))
            gc.collect()
            built[family, variant] = build_pasd(variant, family)
            unet, controlnet = built[family, variant]
            parts = base["parts"]
            text = "+".join(f"{parameters_m(parts[n]):.0f}M" for n in ("text_encoder", "text_encoder_2") if n in parts)
            sizes.append([f"{family} {variant}", f"{parameters_m(unet):.0f}M", f"{parameters_m(controlnet):.0f}M",
                          text + (f" ({SDXL_TEXT_LAYERS} layers)" if family == SDXL else ""),
                          f"{parameters_m(parts['vae']):.0f}M"])
        unet, controlnet = built[family, variant]
        pipeline = PASDPipeline(sampler_models(family, base["parts"], unet, controlnet), variant)
        label = f"{family} {variant}"
        if channels_last:
            from pasd_core.engine.acceleration import accelerate

            accelerate(pipeline, channels_last=True)
            label += " channels_last"
        tiles = pipeline.count_steps(side, side, case_settings) // args.steps
        if tiles > 1:
            label += f" {side}px tiled {case_settings['latent_tile_size']}"
        recorder, wall = run(pipeline, case_settings, side)
        if channels_last:
            for module in (unet, controlnet, base["parts"]["vae"]):
                module.to(memory_format=torch.contiguous_format)
        step_rows.append(step_row(label, recorder, args.steps, tiles))
        run_rows.append(run_row(label, recorder, wall, tiles))
        recorder.close()
        print(f"  done: {label} in {wall:.1f} s", flush=True)

    print_table("Model sizes (parameters)", ["model", "UNet", "ControlNet", "text encoders", "VAE"], sizes)
    print_table("Per denoising step (median over steps 2..N; one step = one scheduler step to the next)",
                ["run", "step s", "ControlNet s", "UNet s", "scheduler", "sampler overhead", "overhead/step",
                 "ControlNet calls/step/tile", "UNet calls/step/tile", "batch"], step_rows)
    print_table("Per run (seconds unless marked; calls counted over the whole run)",
                ["run", "wall s", "text enc s", "VAE enc s", "CN+UNet+sched s", "VAE dec s", "colour fix",
                 "text enc calls", "cond. embeddings", "to_rgbs calls"], run_rows)
    print("\nTargets: sampler overhead < 5% of a step; ControlNet and UNet once per step with batch 2 (CFG pair);"
          " each text encoder 2 calls per run; one condition embedding per image (per tile); to_rgbs 0 calls."
          " SDXL encodes nothing with the VAE (its start is pure noise).")


if __name__ == "__main__":
    main()
