"""What a PASD run pays before its first denoising step: imports, loading, time to the first step, whole runs.

Every figure comes from a fresh Python process (start-up is what a new process pays), one torch thread, the
median of `--repeats` runs. Several trees can be timed in the same run, interleaved, so "before" and "after" are
measured on the same machine at the same time: `--repo /path/to/other/checkout` (given twice or more; the
first is the baseline of the ratios). Each tree is imported from its own folder.

What is timed, per tree:
- paths that load no model: importing the pack's `__init__` as ComfyUI does at start-up (node listing), CLI
  `--help`, and a CLI run refused as bad input (over the work limit) after every check that needs no model;
- tiny run: the CLI (`python -m pasd_core upscale`, in-process `main()`) on the SD1.5 parity fixture
  (64² input, process size 64, 10 steps); medium run: the same on a medium-size random-weight PASD (UNet and
  ControlNet 64-128-256-256) on a real-size SD1.5 text encoder and VAE (tests/support/medium_checkpoint.py, built once
  into `--cache`), 256² input, 20 steps, as in the issue's side-by-side run;
- node run: the loader node then the upscale node, called from Python with the host fallbacks, torch already
  imported (ComfyUI imports it before any node runs), on the tiny fixture.
Phases come from the outside: the process's launch time, `builtins.__import__` timed at the outermost level
(the time spent in import statements), the progress bar's creation (the model is loaded) and its updates (one
per step; tqdm is subclassed in the timing process, the engine is not changed). "To first step" is the first
update minus the median step: when the first step starts. The library floor is the time to import, in a bare
process, only the torch, diffusers and transformers modules a run needs: no change in this project can go below
it. Never asserts on time: it prints tables.

Run: python bench/bench_startup.py [--repo PATH ...] [--repeats 5] [--cheap-only] [--no-medium] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, add_project_to_path, machine_header, print_table

add_project_to_path()

from support.medium_checkpoint import DEFAULT_CACHE  # noqa: E402
from support.paths import FIXTURES, PASD, SD15  # noqa: E402

TINY = (SD15, PASD)
TINY_INPUT = FIXTURES / "cases" / "A_untiled" / "input.png"
# What a local SD1.5 run needs from the libraries, and nothing of this project
LIBRARY_FLOOR = ("torch", "diffusers.models.unets.unet_2d_condition", "diffusers.models.controlnets.controlnet",
                 "diffusers.models.autoencoders.autoencoder_kl", "diffusers.schedulers.scheduling_unipc_multistep",
                 "transformers.models.clip.modeling_clip", "transformers.models.clip.tokenization_clip")

# Runs in the timed process. argv: launch time, tree, mode ("cli" or "node"), JSON arguments.
TIMED = r'''
import builtins, json, os, resource, sys, time
launch, repo, mode, arguments = float(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
sys.path.insert(0, repo)
now = lambda: time.time() - launch
spent = {"imports": 0.0}
depth = [0]
plain_import = builtins.__import__

def timed_import(*args, **kwargs):
    if depth[0]:
        return plain_import(*args, **kwargs)
    depth[0], start = 1, time.perf_counter()
    try:
        return plain_import(*args, **kwargs)
    finally:
        spent["imports"] += time.perf_counter() - start
        depth[0] = 0

cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
marks, steps, cpu_steps = {"started": now()}, [], []
import tqdm, tqdm.auto

class TimedBar(tqdm.tqdm):
    """PASD's own bar (desc "PASD": the CLI's and the nodes' fallback) marks the phases; others pass through."""

    def __init__(self, *args, **kwargs):
        self.pasd = kwargs.get("desc") == "PASD"
        if self.pasd:
            marks.setdefault("loaded", now())
            marks.setdefault("imports_by_load", spent["imports"])
            kwargs["disable"] = True
        super().__init__(*args, **kwargs)

    def update(self, n=1):
        if self.pasd:
            steps.append(now())
            cpu_steps.append(cpu())
        return super().update(n)

tqdm.tqdm = tqdm.auto.tqdm = TimedBar
builtins.__import__ = timed_import
if mode == "cli":
    from pasd_core.__main__ import main
    marks["entry"] = now()
    code = main(arguments)
else:
    import importlib.util
    import numpy, torch
    from PIL import Image
    marks["torch"] = now()
    os.environ["PASD_MODELS_DIR"] = arguments["models"]
    spec = importlib.util.spec_from_file_location("comfyui_pasd", os.path.join(repo, "__init__.py"),
                                                  submodule_search_locations=[repo])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_pasd"] = pack
    spec.loader.exec_module(pack)
    marks["entry"] = now()
    nodes = pack.NODE_CLASS_MAPPINGS
    (model,) = nodes["PASDModelLoader"]().load(pasd_model="pasd/checkpoint-100000",
        base_model="diffusers/stable-diffusion-v1-5", style_model="none", lora="none", style_strength=1.0,
        lora_strength=1.0, device="cpu", dtype="fp32")
    marks["node_loaded"] = now()
    pixels = numpy.asarray(Image.open(arguments["input"]).convert("RGB"), dtype=numpy.float32) / 255
    nodes["PASDUpscale"]().upscale(image=torch.from_numpy(pixels)[None], pasd_model=model, **arguments["settings"])
    code = 0
marks["done"] = now()
print(json.dumps({"code": code, "marks": marks, "steps": steps, "cpu_steps": cpu_steps, "imports": spent["imports"],
                  "cpu": cpu(), "modules": len(sys.modules),
                  "heavy": sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)}))
'''


def environment(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    return env


def wall(command: list[str], cwd: Path, env: dict[str, str], code: int = 0) -> tuple[float, float]:
    """(wall, CPU) seconds from launch to exit of `command`, which must exit with `code`. CPU time (user + system)
    moves less than wall time when other jobs share the machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != code:
        raise RuntimeError(f"{command[:4]} in {cwd} exited {done.returncode}, not {code}:\n{done.stderr[-3000:]}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def timed(repo: Path, mode: str, arguments: Any, env: dict[str, str]) -> dict[str, Any]:
    """One timed process (TIMED) on `repo`; its phases, relative to its launch."""
    launch = time.time()
    done = subprocess.run([sys.executable, "-c", TIMED, repr(launch), str(repo), mode, json.dumps(arguments)],
                          cwd=repo, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} run on {repo} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        raise RuntimeError(f"{mode} run on {repo} exited {result['code']}:\n{done.stderr[-3000:]}")
    steps = result["steps"]
    step = statistics.median(b - a for a, b in zip(steps[:-1], steps[1:], strict=True))
    cpu = result["cpu_steps"]
    result["step"] = step
    result["first_step"] = steps[0] - step  # when the first step started
    result["cpu_first_step"] = cpu[0] - statistics.median(b - a for a, b in zip(cpu[:-1], cpu[1:], strict=True))
    return result


def cli_arguments(base: Path, pasd: Path, image: Path, output: Path, size: int, steps: int) -> list[str]:
    return ["upscale", str(image), "-o", str(output), "--base-model", str(base), "--pasd-model", str(pasd),
            "--process-size", str(size), "--steps", str(steps), "--scale", "1", "--dtype", "fp32", "--device", "cpu",
            "--high-level-info", "none"]


def tiny_models_dir(folder: Path) -> Path:
    """ComfyUI's folder layout ($PASD_MODELS_DIR) with links to the tiny fixture, for the node run."""
    (folder / "pasd" / "pasd").mkdir(parents=True)
    (folder / "diffusers").mkdir()
    (folder / "pasd" / "pasd" / "checkpoint-100000").symlink_to(TINY[1])
    (folder / "diffusers" / "stable-diffusion-v1-5").symlink_to(TINY[0])
    return folder


def medium_input(folder: Path, size: int = 256) -> Path:
    from support.real_size import photo

    path = folder / f"input_{size}.png"
    photo(size).save(path)
    return path


def label(repo: Path) -> str:
    """The tree's folder and commit (+ "dirty" with uncommitted changes)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:  # an exported tree (git archive) has no history: its folder names it
        return repo.name
    return f"{repo.name}@{commit}{'+dirty' if git('status', '--porcelain', '--untracked-files=no') else ''}"


def median(values: list[float]) -> float:
    return statistics.median(values)


def both(samples: list[tuple[float, float]]) -> str:
    """"wall (CPU)" medians of (wall, CPU) samples."""
    return f"{median([w for w, _ in samples]):.2f} ({median([c for _, c in samples]):.2f})"


def cheap_paths(repo: Path, work: Path) -> dict[str, tuple[list[str], int]]:
    """Paths that load no model: (command, expected exit code) of each."""
    entry = f"import importlib.util, sys; s = importlib.util.spec_from_file_location('comfyui_pasd', " \
            f"{str(repo / '__init__.py')!r}, submodule_search_locations=[{str(repo)!r}]); " \
            "m = importlib.util.module_from_spec(s); sys.modules['comfyui_pasd'] = m; s.loader.exec_module(m)"
    # 64² ×4 enlarged to 4096², tiles of 16, 50 steps: far over the work limit, refused before any model loads
    refused = [*cli_arguments(*TINY, TINY_INPUT, work / "refused.png", 4096, 50), "--scale", "4",
               "--latent-tile-size", "16"]
    return {"entry": (["-c", entry], 0), "help": (["-m", "pasd_core", "upscale", "--help"], 0),
            "refused": (["-m", "pasd_core", *refused], 2)}


def print_runs(runs: dict[str, Any], repos: list[Path], figures: dict[tuple[Path, str], list[Any]],
               library: list[tuple[float, float]]) -> None:
    phase_rows, ratio_rows = [], []
    for name in runs:
        for repo in repos:
            results, baseline = figures[repo, name], figures[repos[0], name]

            def m(key: str, results: list[Any] = results) -> float:
                return median([r[key] if key in r else r["marks"][key] for r in results])

            def ratio(key: str, m: Any = m, baseline: list[Any] = baseline) -> str:
                return f"{m(key) / median([r[key] if key in r else r['marks'][key] for r in baseline]):.2f}"

            phase_rows.append([name, label(repo), f"{m('entry'):.2f}", f"{m('loaded') - m('entry'):.2f}",
                               f"{m('imports_by_load'):.2f}", f"{m('first_step'):.2f}", f"{m('step'):.3f}",
                               f"{m('done'):.2f}", f"{m('cpu_first_step'):.2f}", f"{m('cpu'):.2f}",
                               f"{m('imports'):.2f}", both(library)])
            ratio_rows.append([name, label(repo), ratio("first_step"), ratio("cpu_first_step"), ratio("done")])
    print_table("Runs (s from process launch unless marked; median)",
                ["run", "tree", "entry imported", "load (incl. its imports)", "imports by load end",
                 "to first step", "step", "whole run", "CPU to first step", "CPU whole run", "imports, whole run",
                 "library floor wall (CPU)"], phase_rows)
    print_table("Whole tiny CLI run as a user starts it (python -m pasd_core upscale ...; s wall (CPU))",
                ["tree", "s"], [[label(r), both(figures[r, "tiny_cli"])] for r in repos])
    if len(repos) > 1:
        print_table(f"Against {label(repos[0])} (ratio of medians; < 1 is faster)",
                    ["run", "tree", "to first step", "CPU to first step", "whole run"], ratio_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, action="append",
                        help="a checkout to time (repeatable; the first is the baseline); default: this one")
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per figure (median); default 5")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads per process; default 1")
    parser.add_argument("--cheap-only", action="store_true", help="only the paths that load no model")
    parser.add_argument("--no-medium", dest="medium", action="store_false", help="skip the medium-size runs")
    parser.add_argument("--medium-steps", type=int, default=20, help="denoising steps of the medium run (20)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"medium checkpoint folder ({DEFAULT_CACHE})")
    args = parser.parse_args()
    repos = [path.resolve() for path in (args.repo or [ROOT])]
    env = environment(args.threads)

    print(machine_header("PASD start-up: imports, loading and time to the first denoising step (CPU, fp32)"))
    print(f"{args.threads} thread(s) per process; median of {args.repeats} fresh processes; trees interleaved")
    work = Path(tempfile.mkdtemp(prefix="pasd-bench-startup-"))
    runs: dict[str, tuple[str, Any]] = {}
    if not args.cheap_only:
        models = tiny_models_dir(work / "models")
        runs["tiny"] = ("cli", cli_arguments(*TINY, TINY_INPUT, work / "tiny.png", 64, 10))
        runs["node"] = ("node", {"models": str(models), "input": str(TINY_INPUT),
                                 "settings": {"scale": 1, "process_size": 64, "steps": 10}})
    if runs and args.medium:
        from support.medium_checkpoint import build_medium

        base, pasd = build_medium(args.cache)
        runs["medium"] = ("cli", cli_arguments(base, pasd, medium_input(work), work / "medium.png", 256,
                                               args.medium_steps))
    python = [sys.executable]
    floor: dict[str, list[tuple[float, float]]] = {"python": [], "torch": [], "library": []}
    figures: dict[tuple[Path, str], list[Any]] = {}
    for repeat in range(args.repeats):
        floor["python"].append(wall([*python, "-c", "pass"], ROOT, env))
        floor["torch"].append(wall([*python, "-c", "import torch"], ROOT, env))
        floor["library"].append(wall([*python, "-c", f"import {', '.join(LIBRARY_FLOOR)}"], ROOT, env))
        for repo in repos:
            for name, (command, code) in cheap_paths(repo, work).items():
                figures.setdefault((repo, name), []).append(wall([*python, *command], repo, env, code))
            if runs:
                figures.setdefault((repo, "tiny_cli"), []).append(wall([*python, "-m", "pasd_core", *runs["tiny"][1]],
                                                                       repo, env))
            for name, (mode, arguments) in runs.items():
                figures.setdefault((repo, name), []).append(timed(repo, mode, arguments, env))
        print(f"  repeat {repeat + 1} of {args.repeats} done", flush=True)

    print_table("Library floor (bare processes, the same for every tree; s wall (CPU))", ["what", "s"], [
        ["python -c pass", both(floor["python"])],
        ["import torch", both(floor["torch"])],
        ["import the torch, diffusers, transformers modules a run needs", both(floor["library"])]])
    print_table("Paths that load no model (whole process; s wall (CPU))",
                ["tree", "pack entry (ComfyUI start-up)", "CLI --help", "CLI bad input refused (work limit)"],
                [[label(r), *(both(figures[r, name]) for name in ("entry", "help", "refused"))] for r in repos])
    if runs:
        print_runs(runs, repos, figures, floor["library"])


if __name__ == "__main__":
    main()
