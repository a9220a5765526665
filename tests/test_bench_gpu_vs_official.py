"""The GPU side-by-side benchmark (bench/bench_gpu_vs_official.py) in its tiny configuration, on CPU: the official
PASD (its own code on diffusers 0.29.2) and this engine, each in its own process, on the tiny parity fixtures in fp32.

The official side needs the official tree and its wheels, which the bench's `prepare` gathers from a clone of
github.com/yangxy/PASD and the package registry: taken from PASD_OFFICIAL_DIR (a folder `prepare` wrote), else
prepared here from the clone at PASD_OFFICIAL_MIRROR (default: this development machine's mirror); skipped, saying
how to enable it, where neither is at hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "bench_gpu_vs_official.py"
MIRROR = Path(os.environ.get("PASD_OFFICIAL_MIRROR", "/work/.mirror/yangxy+PASD/repo"))
HOW = ("needs the official PASD code and diffusers 0.29.2 as files: run .venv/bin/python "
       "bench/bench_gpu_vs_official.py prepare --dest DIR --mirror A_BARE_CLONE_OF_yangxy/PASD (git clone --mirror "
       "https://github.com/yangxy/PASD), then PASD_OFFICIAL_DIR=DIR .venv/bin/python -m pytest -q "
       "tests/test_bench_gpu_vs_official.py")


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("PASD_OFFICIAL_DIR")
    if given:
        return Path(given)
    if not MIRROR.is_dir():
        pytest.skip(HOW)
    folder = tmp_path_factory.mktemp("official")
    made = subprocess.run([sys.executable, str(BENCH), "prepare", "--dest", str(folder), "--mirror", str(MIRROR)],
                          capture_output=True, text=True, timeout=600)
    if made.returncode != 0:
        pytest.skip(f"preparing from {MIRROR} failed ({made.stderr.strip()[-300:]}); {HOW}")
    return folder


def bench_run(official: Path, out: Path, *options: str) -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, str(BENCH), "run", "--tiny", "--official", str(official), "--out", str(out),
                           *options], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_both_sides_of_both_jobs_are_timed_and_agree_within_one_level(official: Path, tmp_path: Path) -> None:
    records = bench_run(official, tmp_path / "tiny.jsonl", "--jobs", "sd15,sdxl", "--sdxl-steps", "8")
    sides = {(r["job"], r["side"]): r for r in records if r["kind"] == "side"}
    assert set(sides) == {(job, side) for job in ("sd15", "sdxl") for side in ("official", "ours", "ours-fast")}
    assert [(r["job"], r["side"]) for r in records if r["kind"] == "side"] == [
        (job, side) for job in ("sd15", "sdxl") for side in ("official", "ours", "ours-fast")]  # the run order
    for (job, side), r in sides.items():
        assert r["complete"], (job, side, r.get("error"), r.get("log_tail"))
        if side == "official":
            assert r["versions"]["diffusers"] == "0.29.2"
        assert all(r[key] > 0 for key in ("load_s", "warmup_s", "total_s", "first_step_s", "step_s", "denoise_s"))
        phases = r["phases_s"]
        assert all(phases[phase] > 0 for phase in ("text_encoders", "controlnet", "unet", "vae_decoder"))
        assert (phases["vae_encoder"] > 0) == (job == "sd15")  # PASD-SDXL starts from pure noise
        assert r["first_step_s"] < r["denoise_s"] <= r["total_s"]
        assert r["steps_counted"] == r["steps_run"]
        assert r["peak_mem_gib"] is None and r["busy_fraction"] is None  # GPU-only measurements
        assert Path(r["png"]).is_file()
    # SDXL ran 8 of the fixture case's 12 steps: the whole run is extrapolated from the time per step
    for side in ("official", "ours", "ours-fast"):
        r = sides["sdxl", side]
        assert r["extrapolated"] and r["steps_run"] == 8 < r["steps"] == 12
        assert r["total_s_extrapolated"] == pytest.approx(r["total_s"] + 4 * r["step_s"], abs=1e-3)
    diffs = {(r["job"], r["side"]): r for r in records if r["kind"] == "diff"}
    assert set(diffs) == {(job, side) for job in ("sd15", "sdxl") for side in ("ours", "ours-fast")}
    for (_job, side), diff in diffs.items():
        assert diff["ratio_ours_to_official"] > 0
        if side == "ours":
            assert diff["diff_max"] <= 1, diff  # the parity standard: the fixtures prove it on these weights
            assert "drift_from_exact" not in diff
        else:  # the fast mode: another tile layout (these cases are tiled), measured against both
            assert diff["drift_from_exact"]["diff_max"] >= 0 and diff["diff_mean"] > 0


def test_the_variants_run_in_order_and_a_bad_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH.parent))
    from bench_gpu_vs_official import side_order

    assert side_order(["sd15", "sdxl"], ["exact", "compiled", "fast"]) == [
        ("sd15", "official"), ("sd15", "exact"), ("sd15", "fast"), ("sdxl", "official"), ("sdxl", "exact"),
        ("sdxl", "fast"), ("sd15", "compiled"), ("sdxl", "compiled")]  # compiling, the slowest, last
    assert side_order(["sd15"], ["exact"]) == [("sd15", "official"), ("sd15", "exact")]
    with pytest.raises(SystemExit, match="--ours: turbo"):
        side_order(["sd15"], ["exact", "turbo"])
    with pytest.raises(SystemExit, match="exact is missing"):
        side_order(["sd15"], ["fast"])


def test_a_side_cut_by_the_time_budget_is_recorded_not_lost(official: Path, tmp_path: Path) -> None:
    records = bench_run(official, tmp_path / "cut.jsonl", "--jobs", "sd15", "--budget-s", "2")
    assert records[0]["kind"] == "run"
    official_side = next(r for r in records if r["kind"] == "side" and r["side"] == "official")
    assert not official_side["complete"] and "timeout" in official_side["error"]
    assert not [r for r in records if r["kind"] == "diff"]  # no pictures, no difference
