"""What one denoising step costs at the real SD1.5 size, and what the sampler itself adds to it.

Builds the SD1.5-sized PASD networks in memory with random weights (UNet 320-640-1280-1280 with
PACA, its ControlNet with conditioning channels 16-32-96-256, the real-size CLIP text encoder and
VAE, from the configs shipped in pasd_core/sd15/), runs `PASDPipeline.upscale` on CPU in fp32
and times each module from the outside (torch hooks and wrapped methods; the engine is not
changed). A step is the time between two consecutive scheduler steps; what is neither ControlNet,
UNet nor scheduler is the sampler's own overhead. Also counts the calls that must happen once
(text encoder twice a run, the condition embedding once per image or tile) or never (`to_rgbs`).

Run: python bench/bench_step_cost.py [--size 256] [--steps 10] [--variants pasd pasd_light]
     [--no-tiled-check] [--channels-last]
Needs about 8 GiB of RAM; the figures are seconds on this machine's CPU (never pass/fail).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import statistics
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from common import add_project_to_path, machine_header, print_table, torch_threads_note
from PIL import Image

add_project_to_path()

from pasd_core.engine import sampler as sampler_module  # noqa: E402
from pasd_core.engine.pipeline import PASDPipeline  # noqa: E402
from pasd_core.engine.sampler import SamplerModels  # noqa: E402
from pasd_core.models import PASDControlNet, PASDUNet  # noqa: E402
from pasd_core.weights.sd15_file import SD15_CONFIG_DIR  # noqa: E402

# PASD's ControlNet is diffusers' ControlNetModel.from_unet(SD1.5 UNet) with the default embedding channels
CONDITIONING_CHANNELS = (16, 32, 96, 256)


def read_json(part: str, name: str = "config.json") -> dict[str, Any]:
    return json.loads((SD15_CONFIG_DIR / part / name).read_text())


def controlnet_config(unet_config: dict[str, Any]) -> dict[str, Any]:
    from diffusers import ControlNetModel

    accepted = set(inspect.signature(ControlNetModel.__init__).parameters)
    config = {k: v for k, v in unet_config.items() if k in accepted}
    return {**config, "conditioning_embedding_out_channels": list(CONDITIONING_CHANNELS), "return_rgbs": True,
            "use_rrdb": False}


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fan-in-scaled normal weights, unit norm scales, zero biases: activations stay in a normal range."""
    if list(model.buffers()):
        raise RuntimeError(f"{type(model).__name__} has buffers that to_empty would leave uninitialised")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, 1.0 / math.sqrt(parameter[0].numel()), generator=generator)
            elif name.endswith("weight"):
                parameter.fill_(1.0)
            else:
                parameter.zero_()
    return model.eval().requires_grad_(False)


def build_pasd(variant: str) -> tuple[PASDUNet, PASDControlNet]:
    """SD1.5-sized PASD UNet and ControlNet, built on the meta device then filled in place (no double init)."""
    unet_config = read_json("unet")
    with torch.device("meta"):
        unet = PASDUNet.from_pasd_config(unet_config, variant)
        controlnet = PASDControlNet.from_pasd_config(controlnet_config(unet_config),
                                                     {"controlnet_cond_embedding.to_rgbs.0.weight"})
    return (randomize_(unet.to_empty(device="cpu"), 1), randomize_(controlnet.to_empty(device="cpu"), 2))


def build_base() -> tuple[Any, Any, Any, dict[str, Any]]:
    """Real-size SD1.5 tokenizer, CLIP text encoder and VAE (random weights) and the scheduler config."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(str(SD15_CONFIG_DIR / "tokenizer"), local_files_only=True)
    text_encoder = CLIPTextModel(CLIPTextConfig.from_json_file(str(SD15_CONFIG_DIR / "text_encoder" / "config.json")))
    vae = AutoencoderKL.from_config(read_json("vae"))
    return (tokenizer, text_encoder.eval().requires_grad_(False), vae.eval().requires_grad_(False),
            read_json("scheduler", "scheduler_config.json"))


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


def test_image(size: int) -> Image.Image:
    """A smooth picture with some texture, so the VAE and colour fix see ordinary content."""
    y, x = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(0)
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], axis=-1) * 200 + rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def run(pipeline: PASDPipeline, settings: dict[str, Any], size: int) -> tuple[Recorder, float]:
    recorder = watch(pipeline)
    start = time.perf_counter()
    pipeline.upscale(test_image(size), settings)
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
    return [label, f"{wall:.1f}", f"{recorder.total('text_encoder'):.2f}", f"{recorder.total('vae.encode'):.2f}",
            f"{denoise:.1f}", f"{recorder.total('vae.decode'):.2f}", f"{recorder.total('color_fix') * 1e3:.0f} ms",
            str(recorder.counts["text_encoder"]), f"{recorder.counts['condition_embedding']} ({tiles} tile"
            f"{'s' if tiles > 1 else ''})", str(recorder.counts["to_rgbs"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="input = control image side in pixels (latent /8)")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps (the parameter table's minimum is 10)")
    parser.add_argument("--variants", nargs="+", default=["pasd", "pasd_light"])
    parser.add_argument("--no-tiled-check", dest="tiled_check", action="store_false",
                        help="skip the small tiled `pasd` run that counts condition embeddings per tile")
    parser.add_argument("--channels-last", action="store_true",
                        help="also run each variant after accelerate(channels_last=True) (CPU: expect no gain)")
    args = parser.parse_args()

    print(machine_header("PASD step cost at the SD1.5 size (CPU, fp32, random weights)"))
    print(torch_threads_note())
    settings = {"scale": 1, "process_size": args.size, "steps": args.steps, "guidance_scale": 7.0, "seed": 0}
    print(f"input {args.size}x{args.size} px, scale 1 -> latent {args.size // 8}x{args.size // 8}; {args.steps} steps; "
          "guidance 7.0 (CFG on); colour fix wavelet; real-size text encoder and VAE")
    tokenizer, text_encoder, vae, scheduler_config = build_base()
    from diffusers import UniPCMultistepScheduler

    # (variant, settings, input side, channels_last), grouped by variant so each variant's weights are built once
    cases: list[tuple[str, dict[str, Any], int, bool]] = []
    for variant in args.variants:
        cases.append((variant, settings, args.size, False))
        if args.tiled_check and variant == "pasd":  # 3/4 of the side in tiles of 2/3 of its latent: 2×2 tiles
            side = args.size * 3 // 4 // 8 * 8
            cases.append((variant, {**settings, "process_size": side, "latent_tile_size": side // 12 // 8 * 8,
                                    "latent_tile_overlap": 8}, side, False))
        if args.channels_last:
            cases.append((variant, settings, args.size, True))
    step_rows, run_rows, sizes = [], [], []
    built: dict[str, tuple[PASDUNet, PASDControlNet]] = {}
    for variant, case_settings, side, channels_last in cases:
        if variant not in built:
            built.clear()  # one variant's weights in memory at a time
            built[variant] = build_pasd(variant)
            unet, controlnet = built[variant]
            sizes.append([variant, f"{parameters_m(unet):.0f}M", f"{parameters_m(controlnet):.0f}M",
                          f"{parameters_m(text_encoder):.0f}M", f"{parameters_m(vae):.0f}M"])
        unet, controlnet = built[variant]
        models = SamplerModels(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, unet=unet,
                               controlnet=controlnet, scheduler=UniPCMultistepScheduler.from_config(scheduler_config),
                               device=torch.device("cpu"), dtype=torch.float32)
        pipeline = PASDPipeline(models, variant)
        label = variant
        if channels_last:
            from pasd_core.engine.acceleration import accelerate

            accelerate(pipeline, channels_last=True)
            label += " channels_last"
        tiles = pipeline.count_steps(side, side, case_settings) // args.steps
        if tiles > 1:
            label += f" {side}px tiled {case_settings['latent_tile_size']}"
        recorder, wall = run(pipeline, case_settings, side)
        if channels_last:
            for module in (unet, controlnet, vae):
                module.to(memory_format=torch.contiguous_format)
        step_rows.append(step_row(label, recorder, args.steps, tiles))
        run_rows.append(run_row(label, recorder, wall, tiles))
        recorder.close()
        print(f"  done: {label} in {wall:.1f} s", flush=True)

    print_table("Model sizes (parameters)", ["variant", "UNet", "ControlNet", "text encoder", "VAE"], sizes)
    print_table("Per denoising step (median over steps 2..N; one step = one scheduler step to the next)",
                ["run", "step s", "ControlNet s", "UNet s", "scheduler", "sampler overhead", "overhead/step",
                 "ControlNet calls/step/tile", "UNet calls/step/tile", "batch"], step_rows)
    print_table("Per run (seconds unless marked; calls counted over the whole run)",
                ["run", "wall s", "text enc s", "VAE enc s", "CN+UNet+sched s", "VAE dec s", "colour fix",
                 "text enc calls", "cond. embeddings", "to_rgbs calls"], run_rows)
    print("\nTargets: sampler overhead < 5% of a step; ControlNet and UNet once per step with batch 2 (CFG pair);"
          " text encoder 2 calls per run; one condition embedding per image (per tile); to_rgbs 0 calls.")


if __name__ == "__main__":
    main()
