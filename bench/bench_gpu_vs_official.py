"""This engine against the official PASD code, side by side on one GPU: time per phase, memory, pixels.

The official side is the unmodified PASD tree (github.com/yangxy/PASD at 396f9ac) on its pinned diffusers 0.29.2,
its pipeline built from its own modules and called as its scripts' `main()` calls it (the scripts themselves import
accelerate's logging and parse sys.argv, so they are not imported; their argparse defaults are read from their
source). Both sides load the same files: real-size networks with seeded random weights, written once in the
official layout (meaningless pictures, the real architectures' time and memory). Captioning is off on both sides
(`--high_level_info` given no value, `high_level_info` "none"); all other settings are the official scripts' own
defaults: SD1.5 384² → 768² (×2, 25 steps, fp16), SDXL 1024² → 2048² (×2, bf16; `--sdxl-steps N` runs fewer steps
and extrapolates the 25-step total from the measured time per step, marked "extrapolated").

Each side of each job runs in its own process, after one warm-up call (`--warmup-steps`, same sizes); the timed call
records, by hooks on the modules and CUDA events (perf_counter on a CPU): each phase's time (text encoder(s), VAE
encoder, ControlNet, UNet, VAE decoder; "rest" is the total minus those), the time to the first denoising step
(from the call's start to the end of the first scheduler step, all its tiles included), the time per step, the
peak GPU memory, and then, on a short extra call of `--busy-steps` steps under torch.profiler, the GPU-busy
fraction: CUDA kernel time (overlaps counted once) over the wall time of steps 2..N. Every result is appended to
the JSON-lines file as soon as it exists, so a timeout keeps what was measured; the parent then appends the
pixel difference between the two sides' PNGs (levels of 255) and our time over the official's.

Prepare here (needs git, the package registry, and a bare clone of yangxy/PASD), then run on the GPU machine:
    .venv/bin/python bench/bench_gpu_vs_official.py prepare --dest bench/.official [--mirror PATH]
    python3 bench/bench_gpu_vs_official.py run --official bench/.official --weights /tmp/pasd-weights \
        --out $OUT/gpu_vs_official.jsonl --sdxl-steps 10 [--jobs sd15,sdxl] [--budget-s 450]
`prepare` writes about 10 MB (the official tree, and wheels unpacked on first use into the temporary folder):
carry it to the GPU machine (it travels with the working tree, or name it in `carry` after listing it in
.git/info/exclude). `run` writes the weights first when --weights holds none (about 15 GB; the seeded draws are
serial, so expect one to two minutes). `run --tiny` runs the tiny parity fixtures instead, on the CPU in fp32
(tests/test_bench_gpu_vs_official.py), where the two sides must agree within 1 level of 255; `run --tiny --device
cuda` is a one-minute check of the GPU measurements themselves.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from common import ROOT, machine_header
from side_by_side import run_side

OFFICIAL_COMMIT = "396f9ac"
# this development machine's bare mirror of github.com/yangxy/PASD; elsewhere: git clone --mirror, then --mirror PATH
DEFAULT_MIRROR = Path("/work/.mirror/yangxy+PASD/repo")
OFFICIAL_PATHS = ("LICENSE", "test_pasd.py", "test_pasd_sdxl.py", "pasd/__init__.py", "pasd/models", "pasd/pipelines",
                  "pasd/myutils")
# The official requirements.txt pins diffusers 0.29.2; einops is imported by its vaehook.py and unet_2d_blocks.py;
# accelerate (with psutil) makes diffusers load on the meta device, as in the official environment.
OFFICIAL_WHEELS = ("diffusers==0.29.2", "einops==0.8.2", "accelerate==1.15.0", "psutil==7.2.2")
SITES = Path(tempfile.gettempdir()) / "comfyui-pasd-bench-sites"
DEFAULT_WEIGHTS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "comfyui-pasd-bench" / "real-size"
WEIGHTS_FORMAT = 1  # bump when what `weights` writes changes

# Per family: the official script, the folders in the official layout, the input size, the tiny parity case.
JOBS = {
    "sd15": SimpleNamespace(script="test_pasd.py", base="stable-diffusion-v1-5", pasd="pasd/checkpoint-100000",
                            size_in=384, weights_dtype="float16", tiny=("pasd_official_tiny", "B_tiled_x2")),
    "sdxl": SimpleNamespace(script="test_pasd_sdxl.py", base="stable-diffusion-xl-base-1.0",
                            pasd="pasd_sdxl/checkpoint-200000", size_in=1024, weights_dtype="bfloat16",
                            tiny=("pasd_sdxl_official_tiny", "X2_sdxl_tiled")),
}
# Official flags → this project's parameters (the parity fixtures' case.json: "official_args" against "params").
OUR_NAMES = {"upscale": "scale", "num_inference_steps": "steps", "guidance_scale": "guidance_scale",
             "conditioning_scale": "conditioning_scale", "seed": "seed", "prompt": "prompt",
             "added_prompt": "added_prompt", "negative_prompt": "negative_prompt", "process_size": "process_size",
             "latent_tiled_size": "latent_tile_size", "latent_tiled_overlap": "latent_tile_overlap",
             "added_noise_level": "added_noise_level"}
OUR_DTYPES = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}  # --mixed_precision → our dtype
# our variants (--ours) → their side's name in the results: the exact mode, the fast mode (params' speed "fast"), the
# exact mode with accelerate(compile=True) (its compile time estimated apart: compile_s_estimated)
SIDE_NAMES = {"exact": "ours", "fast": "ours-fast", "compiled": "ours-compiled"}


# -- prepare: the official tree and the wheels, from local git and the package registry --------------------------------

def prepare(dest: Path, mirror: Path) -> None:
    """The official tree at OFFICIAL_COMMIT in dest/PASD, and the wheels of both sides in dest/wheels."""
    archive = subprocess.run(["git", "--git-dir", str(mirror), "archive", "--format=tar", OFFICIAL_COMMIT, "--",
                              *OFFICIAL_PATHS], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"git archive {OFFICIAL_COMMIT} failed in {mirror}: {archive.stderr.decode()[-500:]}")
    shutil.rmtree(dest / "PASD", ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest / "PASD", filter="data")
    engine_pin = re.search(r"^diffusers==\S+", (ROOT / "requirements-dev.txt").read_text(), re.M).group(0)
    for side, pins in (("official", OFFICIAL_WHEELS), ("engine", (engine_pin,))):
        folder = dest / "wheels" / side
        shutil.rmtree(folder, ignore_errors=True)
        # x86-64 Linux wheels whatever this machine is: the GPU machine's (psutil is the only compiled one, abi3)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64",
                        "-d", str(folder), *pins], check=True)
    (dest / "prepared.json").write_text(json.dumps({"commit": OFFICIAL_COMMIT, "official": OFFICIAL_WHEELS,
                                                    "engine": [engine_pin]}, indent=1))
    print(f"prepared {dest}: the official PASD at {OFFICIAL_COMMIT}, wheels {', '.join(OFFICIAL_WHEELS)}; "
          f"{engine_pin} for this engine")


def site(official: Path, side: str) -> Path:
    """dest/wheels/<side> unpacked once into the temporary folder (kept out of the carried tree)."""
    wheels = sorted((official / "wheels" / side).glob("*.whl"))
    if not wheels:
        raise SystemExit(f"no wheels in {official / 'wheels' / side}: run `prepare --dest {official}` first")
    key = hashlib.sha256("".join(f"{w.name}:{w.stat().st_size}" for w in wheels).encode()).hexdigest()[:12]
    folder = SITES / f"{side}-{key}"
    if not (folder / ".unpacked").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(folder)
        (folder / ".unpacked").write_text("\n".join(w.name for w in wheels))
    return folder


# -- weights: real-size seeded networks in the official layout, written once -----------------------------------------

def write_weights(dest: Path, families: list[str], input_sizes: list[int]) -> None:
    """Each family's base and PASD folders under dest (skipped when its stamp says they are there), and the inputs."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import torch
    from safetensors.torch import save_file

    from support.paths import PASD_SDXL, SDXL_BASE
    from support.paths import SD15 as SD15_BASE
    from support.real_size import CONFIG_DIRS, build_base, build_pasd, controlnet_config, photo, read_json

    for size in input_sizes:
        if not (dest / f"input-{size}.png").is_file():
            dest.mkdir(parents=True, exist_ok=True)
            photo(size).save(dest / f"input-{size}.png")
    for family in families:
        job, stamp = JOBS[family], dest / f"built-{family}.json"
        if stamp.is_file() and json.loads(stamp.read_text()).get("format") == WEIGHTS_FORMAT:
            continue
        # stored in the dtype the official script runs them in: both sides cast them to the same values
        dtype = getattr(torch, job.weights_dtype)
        base, pasd = dest / job.base, dest / job.pasd
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(pasd, ignore_errors=True)
        models = build_base(family)
        for part in ("text_encoder", "text_encoder_2", "vae"):
            if part in models:
                models[part].to(dtype).save_pretrained(str(base / part), safe_serialization=True)
        del models
        # the published small files: tokenizers, scheduler configs, model_index.json, SD1.5's feature_extractor
        published = {"sd15": ((CONFIG_DIRS["sd15"], ("tokenizer", "scheduler")),
                              (SD15_BASE, ("feature_extractor", "model_index.json"))),
                     "sdxl": ((SDXL_BASE, ("tokenizer", "tokenizer_2", "scheduler", "model_index.json")),)}[family]
        for source, names in published:
            for name in names:
                copy = shutil.copytree if (source / name).is_dir() else shutil.copyfile
                copy(source / name, base / name)
        if family == "sdxl":  # PASD-SDXL brings its own Euler scheduler, which test_pasd_sdxl.py reads
            shutil.copytree(PASD_SDXL / "scheduler", pasd / "scheduler")
        unet_config = read_json("unet", family=family)
        unet, controlnet = build_pasd("pasd", family)
        for part, model, config in (("unet", unet, unet_config), ("controlnet", controlnet,
                                                                    controlnet_config(unet_config))):
            (pasd / part).mkdir(parents=True, exist_ok=True)
            (pasd / part / "config.json").write_text(json.dumps(config, indent=2))
            model.to(dtype)  # in place, tensor by tensor: one fp32 copy in memory at most (SDXL's is 15 GB)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                      str(pasd / part / "diffusion_pytorch_model.safetensors"))
        del unet, controlnet
        stamp.write_text(json.dumps({"format": WEIGHTS_FORMAT, "dtype": job.weights_dtype, "seeds": "real_size.py"}))


# -- jobs: the official scripts' defaults, and the same settings in this project's names ------------------------------

def script_defaults(script: Path) -> dict[str, Any]:
    """The argparse defaults of an official script, read from its source (a store_true flag defaults to False)."""
    defaults = {}
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            keywords = {k.arg: k.value for k in node.keywords}
            store_true = isinstance(keywords.get("action"), ast.Constant) and keywords["action"].value == "store_true"
            value = ast.literal_eval(keywords["default"]) if "default" in keywords else False if store_true else None
            defaults[node.args[0].value.lstrip("-")] = value
    return defaults


def job_spec(family: str, args: argparse.Namespace) -> dict[str, Any]:
    """What both sides of one job run: the official args, our settings derived from them, the files, the steps."""
    job = JOBS[family]
    official = script_defaults(args.official / "PASD" / job.script)
    if args.tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        from support.paths import MODELS

        case_dir = ROOT / "tests" / "fixtures" / job.tiny[0] / "cases" / job.tiny[1]
        case = json.loads((case_dir / "case.json").read_text())
        base, pasd = MODELS[case["variant"]]
        official.update(case["official_args"], mixed_precision="no")
        image = case_dir / "input.png"
    elif args.medium:  # the CPU comparison of the speed issue: medium PASD-SD1.5, 256² at scale 1, 20 steps, fp32
        sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
        from support.medium_checkpoint import DEFAULT_CACHE, build_medium
        from support.paths import SD15 as SD15_BASE
        from support.real_size import photo

        base, pasd = build_medium(DEFAULT_CACHE)
        if not (base / "feature_extractor").is_dir():  # the official SD1.5 loader reads this small config too
            shutil.copytree(SD15_BASE / "feature_extractor", base / "feature_extractor")
        size = args.input_size or 256
        image = args.out.parent / f"input-medium-{size}.png"
        photo(size).save(image)
        official.update(upscale=1, process_size=size, num_inference_steps=args.steps or 20, seed=args.seed,
                        mixed_precision="no")
    else:
        base, pasd = args.weights / job.base, args.weights / job.pasd
        official.update(upscale=2, num_inference_steps=args.steps or 25, seed=args.seed)
        if args.process_size:
            official["process_size"] = args.process_size
        image = args.weights / f"input-{args.input_size or job.size_in}.png"
    if args.dtype:
        official["mixed_precision"] = {v: k for k, v in OUR_DTYPES.items()}[args.dtype]
    official["high_level_info"] = None  # the flag given with no value: no caption, no classification
    settings = {ours: official[name] for name, ours in OUR_NAMES.items() if name in official}
    settings.update(high_level_info="none", color_fix="wavelet")  # test_pasd*.py always run the wavelet fix
    steps = official["num_inference_steps"]
    steps_run = min(args.sdxl_steps, steps) if family == "sdxl" and args.sdxl_steps else steps
    return {"job": family, "family": family, "device": args.device, "official_args": official, "settings": settings,
            "dtype": OUR_DTYPES[official["mixed_precision"]], "base": str(base), "pasd": str(pasd),
            "input": str(image), "steps": steps, "steps_run": steps_run, "warmup_steps": min(args.warmup_steps, steps),
            "busy_steps": args.busy_steps, "threads": 1 if args.device == "cpu" else None}


# -- run: the jobs, side by side, each side in its own process ---------------------------------------------------------

class Results:
    """The JSON-lines file, appended to (and flushed) one record at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict[str, Any]) -> None:
        record = json.loads(json.dumps(record), parse_float=lambda x: round(float(x), 4))
        with self.path.open("a") as out:
            out.write(json.dumps(record) + "\n")
        shown = {k: v for k, v in record.items() if k not in ("phases_s", "versions", "host", "busy_method")}
        print(json.dumps(shown), flush=True)


def environment(args: argparse.Namespace, side: str) -> dict[str, str]:
    """The official side sees its own diffusers first and the official tree; ours the project, with the engine's
    pinned diffusers for machines that have none. Offline, unbuffered; one thread on a CPU."""
    if side == "official":
        paths = [site(args.official, "official"), args.official / "PASD", args.official / "PASD" / "pasd"]
    else:
        paths = [ROOT, ROOT / "tests", site(args.official, "engine")]
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([*map(str, paths), *filter(None, [os.environ.get("PYTHONPATH")])]))
    if args.device == "cpu":
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # steadier, and far faster on a shared 2-core machine
    return env


def child(args: argparse.Namespace, argv: list[str], side: str, log: Path, deadline: float) -> tuple[int | str, str]:
    """Run this script with argv in `side`'s environment until the deadline: (return code or "timeout", the tail of
    its output); the output is appended to `log`."""
    with log.open("a") as out:
        out.write(f"\n===== {' '.join(argv)}\n")
        out.flush()
        begins = out.tell()
        try:
            code: int | str = subprocess.run([sys.executable, __file__, *argv], env=environment(args, side),
                                             stdout=out, stderr=subprocess.STDOUT,
                                             timeout=max(deadline - time.monotonic(), 1)).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    with log.open("rb") as written:
        written.seek(max(begins, log.stat().st_size - 1200))
        return code, written.read().decode(errors="replace")


def pixel_difference(official: Path, ours: Path) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    a, b = (np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in (official, ours))
    if a.shape != b.shape:
        return {"error": f"the outputs differ in size: official {a.shape}, ours {b.shape}"}
    difference = np.abs(a - b)
    return {"diff_mean": float(difference.mean()), "diff_max": int(difference.max())}


def side_order(families: list[str], variants: list[str]) -> list[tuple[str, str]]:
    """(family, variant) in the order they run: per family the official side, then ours exact and fast; the
    compiled variant last for every family, so a tight budget cuts what matters least (compiling can take minutes)."""
    unknown = set(variants) - set(SIDE_NAMES)
    if unknown or "exact" not in variants:
        raise SystemExit(f"--ours: {', '.join(sorted(unknown)) or 'exact is missing'}; give exact and any of fast, "
                         "compiled")
    first = [(family, v) for family in families for v in ("official", "exact", "fast") if v in (*variants, "official")]
    return first + [(family, "compiled") for family in families if "compiled" in variants]


def ratio(ours: dict[str, Any], official: dict[str, Any], key: str) -> float | None:
    return ours[key] / official[key] if ours.get(key) and official.get(key) else None


def run(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.budget_s
    families = args.jobs.split(",")
    unknown = set(families) - set(JOBS)
    if unknown:
        raise SystemExit(f"--jobs: unknown {', '.join(sorted(unknown))}; use some of {', '.join(JOBS)}")
    if args.medium and families != ["sd15"]:
        raise SystemExit("--medium compares PASD-SD1.5 only: use --jobs sd15")
    results, log = Results(args.out), args.out.with_suffix(".log")
    work = Path(tempfile.mkdtemp(prefix="pasd-bench-"))
    results.append({"kind": "run", "jobs": families, "device": args.device, "tiny": args.tiny, "medium": args.medium,
                    "budget_s": args.budget_s, "official_commit": OFFICIAL_COMMIT,
                    "host": machine_header("bench_gpu_vs_official", ("torch",)), "started": time.ctime()})
    if not args.tiny and not args.medium:
        sizes = sorted({args.input_size or JOBS[f].size_in for f in families})
        started = time.monotonic()
        code, tail = child(args, ["weights", "--dest", str(args.weights), "--jobs", ",".join(families),
                                  "--inputs", ",".join(map(str, sizes))], "engine", log, deadline)
        results.append({"kind": "weights", "dest": str(args.weights), "s": time.monotonic() - started,
                        **({} if code == 0 else {"error": f"exited with {code}", "log_tail": tail})})
        if code != 0:
            raise SystemExit(f"writing the weights failed ({code}); see {log}")
    specs = {family: job_spec(family, args) for family in families}
    sides: dict[tuple[str, str], dict[str, Any]] = {}
    for family, variant in side_order(families, args.ours.split(",")):
        side = "official" if variant == "official" else SIDE_NAMES[variant]
        png = args.out.parent / f"{args.out.stem}_{family}_{side}.png"
        result = work / f"{family}-{side}.json"
        (work / f"{family}-{side}.spec.json").write_text(json.dumps(
            {**specs[family], "side": side, "variant": variant, "compile_mode": args.compile_mode, "png": str(png),
             "result": str(result)}))
        code, tail = child(args, ["side", str(work / f"{family}-{side}.spec.json")],
                           "official" if side == "official" else "engine", log, deadline)
        record = json.loads(result.read_text()) if result.is_file() else {"kind": "side", "job": family,
                                                                          "side": side, "complete": False}
        if code != 0 or not record.get("complete"):
            record.update(error=f"exited with {code}", log_tail=tail)
        results.append(record)
        sides[family, side] = record
        official = sides.get((family, "official"), {})
        if side != "official" and official.get("png") and record.get("png"):
            results.append({"kind": "diff", "job": family, "side": side,
                            **pixel_difference(Path(official["png"]), Path(record["png"])),
                            **({} if side == "ours" or not sides.get((family, "ours"), {}).get("png") else
                               {"drift_from_exact": pixel_difference(Path(sides[family, "ours"]["png"]),
                                                                     Path(record["png"]))}),
                            "ratio_ours_to_official": ratio(record, official, "total_s"),
                            "first_step_ratio": ratio(record, official, "first_step_s"),
                            "step_ratio": ratio(record, official, "step_s"),
                            "load_ratio": ratio(record, official, "load_s"),
                            "peak_mem_ratio": ratio(record, official, "peak_mem_gib")})
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare", help="the official tree and the wheels of both sides into --dest")
    p.add_argument("--dest", type=Path, required=True)
    p.add_argument("--mirror", type=Path, default=DEFAULT_MIRROR, help="a bare clone or mirror of yangxy/PASD")
    w = commands.add_parser("weights", help="real-size seeded weights in the official layout (once)")
    w.add_argument("--dest", type=Path, default=DEFAULT_WEIGHTS)
    w.add_argument("--jobs", default="sd15,sdxl")
    w.add_argument("--inputs", default="", help="input picture sizes to write, e.g. 384,1024")
    r = commands.add_parser("run", help="both sides of each job; JSON lines into --out")
    r.add_argument("--official", type=Path, required=True, help="the folder `prepare` wrote")
    r.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="written there first when missing")
    r.add_argument("--out", type=Path, required=True, help="JSON-lines file (appended); PNGs and a log beside it")
    r.add_argument("--jobs", default="sd15,sdxl")
    r.add_argument("--device", default=None, help="cuda (default), or cpu (the default with --tiny)")
    r.add_argument("--tiny", action="store_true", help="the tiny parity fixtures, fp32: a check of the bench itself")
    r.add_argument("--medium", action="store_true",
                   help="SD1.5 only: the medium random PASD (tests/support/medium_checkpoint.py), 256² at scale 1, 20 "
                        "steps, fp32, one thread on the CPU: the speed issue's CPU comparison with the official code")
    r.add_argument("--steps", type=int, default=None, help="denoising steps (25; with --tiny the fixture case's)")
    r.add_argument("--sdxl-steps", type=int, default=None, help="SDXL steps actually run; the total is extrapolated")
    r.add_argument("--warmup-steps", type=int, default=2, help="steps of the warm-up call (same sizes)")
    r.add_argument("--busy-steps", type=int, default=3, help="steps of the profiled call (GPU only)")
    r.add_argument("--budget-s", type=float, default=450, help="the whole run's time limit; each side gets the rest")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--ours", default="exact,fast",
                   help="our variants, after the official side: exact (always), fast, compiled (default exact,fast)")
    r.add_argument("--compile-mode", default="default", choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile mode of the compiled variant (reduce-overhead: CUDA graphs)")
    r.add_argument("--dtype", choices=sorted(set(OUR_DTYPES.values())), default=None,
                   help="instead of the official script's --mixed_precision (fp16 SD1.5, bf16 SDXL)")
    r.add_argument("--input-size", type=int, default=None, help="instead of 384 (SD1.5) / 1024 (SDXL)")
    r.add_argument("--process-size", type=int, default=None, help="instead of the official script's")
    s = commands.add_parser("side")  # internal: one side of one job, in its own process
    s.add_argument("spec", type=Path)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.dest, args.mirror)
    elif args.command == "weights":
        write_weights(args.dest, args.jobs.split(","), [int(n) for n in args.inputs.split(",") if n])
    elif args.command == "side":
        run_side(json.loads(args.spec.read_text()))
    else:
        args.device = args.device or ("cpu" if args.tiny or args.medium else "cuda")
        args.official, args.weights, args.out = args.official.resolve(), args.weights.resolve(), args.out.resolve()
        run(args)


if __name__ == "__main__":
    main()
