"""Memory and time against output size, with latent tiling on: does memory stay bounded by the tile?

Each output size runs in a fresh subprocess that loads the model, notes its resident memory (RSS),
upscales one image of output/scale pixels and reports the peak RSS of the run minus the RSS after
loading the weights, as a whole and per phase (VAE encode, denoise, VAE decode, colour fix, the
rest), plus wall and CPU time (CPU time, with one torch thread, is what to compare on a shared
machine: it does not count the waits for a core). Per output pixel, memory should not grow with the
image: only image-sized buffers may (an RGB float32 copy of the output is 12 bytes per pixel), and
their count should stay small. Time should grow about linearly with the pixels.

The default model is the tiny official-layout fixture (tests/fixtures/pasd_official_tiny), so the
4096² run fits in minutes on a CPU; weights are small, so the figures are the engine's own buffers.

Run: python bench/bench_memory.py [--sizes 512 1024 2048 4096] [--scale 4] [--steps 10]
     [--tile 32 --overlap 8] [--threads 1]
     [--checkpoint FOLDER --base FOLDER]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import ROOT, add_project_to_path, machine_header, print_table

add_project_to_path()

from support.paths import PASD, SD15  # noqa: E402

PHASES = ("encode", "denoise", "decode", "color_fix", "rest")
FLOAT_RGB = 12  # bytes per pixel of one float32 RGB copy of the output


class PeakMemory:
    """Peak resident memory and CPU time per phase (Linux: VmHWM, reset through /proc/self/clear_refs)."""

    def __init__(self) -> None:
        try:  # glibc keeps freed memory for reuse; trimming it at each mark charges each phase its own memory
            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            self._trim = None
        self.resettable = self._reset()
        self.peaks: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    @staticmethod
    def _status(field: str) -> int:
        return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

    def rss(self) -> int:
        return self._status("VmRSS")

    @staticmethod
    def _reset() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def mark(self, phase: str) -> None:
        """Charge the peak since the last mark to `phase`, then start a new interval."""
        self.peaks[phase] = max(self.peaks.get(phase, 0), self._status("VmHWM"))
        if self._trim is not None:
            self._trim(0)
        self._reset()

    def phase(self, name: str, function: Any) -> Any:
        """`function`, with its peak memory and CPU time charged to `name`."""

        def measured(*args: Any, **kwargs: Any) -> Any:
            self.mark("rest")
            started = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.process_time() - started
                self.mark(name)

        return measured


def child(args: argparse.Namespace) -> None:
    """One output size in this process; prints one JSON line."""
    import torch
    from PIL import Image

    from pasd_core.engine import sampler as sampler_module
    from pasd_core.engine.pipeline import PASDPipeline

    torch.set_num_threads(args.threads)
    memory = PeakMemory()
    pipeline = PASDPipeline.from_pretrained(args.base, args.checkpoint, device="cpu", dtype="fp32")
    side = args.child // args.scale
    image = Image.effect_mandelbrot((side, side), (-2.0, -1.5, 1.0, 1.5), 64).convert("RGB")
    settings = {"scale": args.scale, "steps": args.steps, "process_size": 64, "latent_tile_size": args.tile,
                "latent_tile_overlap": args.overlap, "seed": 0, "color_fix": "wavelet"}
    tiles = pipeline.count_steps(side, side, settings) // args.steps
    sampler = pipeline._sampler
    for name, owner, attribute in (("encode", sampler, "initial_latents"), ("denoise", sampler, "denoise"),
                                   ("decode", sampler, "decode"), ("color_fix", sampler_module, "color_fix")):
        setattr(owner, attribute, memory.phase(name, getattr(owner, attribute)))
    loaded = memory.rss()
    memory.mark("load")
    started, cpu_started = time.perf_counter(), time.process_time()
    result = pipeline.upscale(image, settings)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    memory.mark("rest")
    assert result.size == (args.child, args.child), result.size
    phases = {name: memory.peaks.get(name, 0) - loaded for name in PHASES}
    seconds = {name: memory.seconds.get(name, 0.0) for name in PHASES[:-1]}
    seconds["rest"] = cpu - sum(seconds.values())
    print(json.dumps({"size": args.child, "loaded": loaded, "peak": max(phases.values()) + loaded,
                      "phases": phases, "seconds": seconds, "wall": wall, "cpu": cpu, "tiles": tiles,
                      "resettable": memory.resettable, "threads": torch.get_num_threads()}))


def measure(size: int, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(size), "--scale", str(args.scale), "--steps", str(args.steps),
               "--tile", str(args.tile), "--overlap", str(args.overlap), "--checkpoint", str(args.checkpoint),
               "--base", str(args.base), "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {size}² run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096], help="output sides (px)")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tile", type=int, default=32, help="latent_tile_size (latent pixels)")
    parser.add_argument("--overlap", type=int, default=8, help="latent_tile_overlap")
    parser.add_argument("--checkpoint", type=Path, default=PASD)
    parser.add_argument("--base", type=Path, default=SD15)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in each run (1: the tiny model's operations are too small to share)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    print(machine_header("PASD memory and time against output size (CPU, fp32, tiling on)"))
    print(f"torch threads per run: {args.threads}")
    print(f"model: {args.checkpoint.relative_to(ROOT) if args.checkpoint.is_relative_to(ROOT) else args.checkpoint}; "
          f"input = output/{args.scale}; {args.steps} steps; CFG on; latent tiles {args.tile} "
          f"(= {args.tile * 8} px) overlap {args.overlap}; VAE tiles as the official; colour fix wavelet")
    results = []
    for size in args.sizes:
        results.append(measure(size, args))
        print(f"  done: {size}² in {results[-1]['wall']:.1f} s", flush=True)
    if not results[0]["resettable"]:
        print("(this kernel cannot reset the peak RSS: per-phase figures are cumulative)")
    mib = 1024**2
    rows, phase_rows, time_rows = [], [], []
    for r in results:
        pixels = r["size"] ** 2
        grown = r["peak"] - r["loaded"]
        rows.append([f"{r['size']}²", r["tiles"], f"{r['loaded'] / mib:.0f}", f"{r['peak'] / mib:.0f}",
                     f"{grown / mib:.0f}", f"{grown / pixels:.1f}", f"{grown / pixels / FLOAT_RGB:.2f}",
                     f"{r['wall']:.1f}", f"{r['cpu']:.1f}", f"{r['cpu'] / pixels * 1e6:.2f}"])
        phase_rows.append([f"{r['size']}²"] + [f"{r['phases'][p] / pixels:.1f}" for p in PHASES])
        time_rows.append([f"{r['size']}²"] + [f"{r['seconds'][p] / pixels * 1e6:.2f}" for p in PHASES])
    print_table("Peak memory above the loaded weights, and time",
                ["output", "latent tiles", "RSS loaded MiB", "peak MiB", "peak-loaded MiB", "B/out px",
                 "float RGB copies", "wall s", "CPU s", "CPU s/megapixel"], rows)
    print_table("Peak above the loaded weights per phase, bytes per output pixel", ["output", *PHASES], phase_rows)
    print_table("CPU time per phase, seconds per output megapixel", ["output", *PHASES], time_rows)
    base = {r["size"]: r for r in results}
    if 1024 in base and 4096 in base:
        per_px = {s: (base[s]["peak"] - base[s]["loaded"]) / s**2 for s in (1024, 4096)}
        per_mp = {s: base[s]["cpu"] / s**2 for s in (1024, 4096)}
        denoise = {s: base[s]["seconds"]["denoise"] / s**2 for s in (1024, 4096)}
        print(f"\n4096² vs 1024²: peak-minus-weights per output pixel {per_px[4096] / per_px[1024]:.2f}x, "
              f"CPU time per megapixel {per_mp[4096] / per_mp[1024]:.2f}x (denoising alone "
              f"{denoise[4096] / denoise[1024]:.2f}x)")


if __name__ == "__main__":
    main()
