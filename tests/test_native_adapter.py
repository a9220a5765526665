"""The native adapter in a real ComfyUI: one denoiser call of the PASD-patched MODEL equals the engine's.

Runs tests/native_parity_comfy.py with ComfyUI's Python (COMFYUI_PYTHON, COMFYUI_DIR): skipped without them on a
developer's machine, failed under CI. Also the refusals that need no ComfyUI (an *_rrdb checkpoint).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support.comfyui import pack_module
from support.comfyui_server import require
from support.paths import CHECKPOINTS, ROOT, SDXL_CHECKPOINTS

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON")
SETUP = ("set COMFYUI_DIR=<the unpacked ComfyUI 0.3.64 folder> and COMFYUI_PYTHON=<its venv's python> (see the "
         "README's \"Tests\" section)")
PASD = CHECKPOINTS / "pasd" / "checkpoint-100000"
PASD_LIGHT = CHECKPOINTS / "pasd_light" / "checkpoint-120000"
PASD_SDXL = SDXL_CHECKPOINTS / "pasd_sdxl" / "checkpoint-200000"
# (checkpoint, a checkpoint of the other family for the mismatch refusal)
CASES = {"pasd": (PASD, PASD_SDXL), "pasd_light": (PASD_LIGHT, None), "pasd_sdxl": (PASD_SDXL, PASD)}
TOLERANCE = 1e-4  # the bound on eps; measured about 5e-6 on CPU fp32 (eps values up to ~1.5)
SEEN = 1e-3  # without PACA (or without PASD) the eps must differ by far more than the tolerance


def run_comfy_side(*folders: Path, dynamic_host: bool = False) -> dict:
    require(COMFYUI_DIR, "a ComfyUI (COMFYUI_DIR is not set)", SETUP)
    require(COMFYUI_PYTHON and os.access(COMFYUI_PYTHON, os.X_OK), "ComfyUI's Python (COMFYUI_PYTHON)", SETUP)
    env = {**os.environ, "PASD_DYNAMIC_HOST": "1" if dynamic_host else "0"}
    done = subprocess.run([COMFYUI_PYTHON, str(ROOT / "tests" / "native_parity_comfy.py"), COMFYUI_DIR,
                           *map(str, folders)], capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PARITY ")]
    assert done.returncode == 0 and lines, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return json.loads(lines[-1].removeprefix("PARITY "))


@pytest.mark.e2e
@pytest.mark.parametrize("variant", list(CASES))
def test_patched_model_call_matches_engine(variant: str) -> None:
    folder, other = CASES[variant]
    figures = run_comfy_side(folder, *([other] if other else []))
    print(f"\n{variant}: {json.dumps(figures)}")
    assert figures["max_abs_diff"] < TOLERANCE, figures
    assert figures["diff_without_paca"] > SEEN and figures["diff_without_pasd"] > SEEN, figures
    # ModelPatcher/model_management load the adapter and the ControlNet with the model, and offload them
    assert figures["adapter_loaded_with_model"] and figures["control_loaded_with_model"], figures
    assert figures["adapter_unloaded"], figures
    assert figures["max_abs_diff_after_reload"] < TOLERANCE, figures
    assert figures["sampled_finite"] and figures["sampled_shape"] == [1, 4, 8, 8], figures
    # the control image's embedding is computed once for the whole sampling (not per step) and let go after it
    assert figures["condition_embeddings_in_3_steps"] == 1, figures
    assert not figures["embedding_kept_after_sampling"], figures
    assert figures["base_unpatched_after_plain_run"], "the object patches leaked into the unpatched MODEL"
    refusals = figures["refusals"]
    assert "already carries a PASD adapter" in refusals["applied_twice"], refusals
    if other:
        mine, theirs = ("SDXL", "SD1.5") if variant == "pasd_sdxl" else ("SD1.5", "SDXL")
        message = refusals["other_family"]
        assert f"pasd_adapter is an {theirs}" in message and f"model is {mine}" in message, message


@pytest.mark.e2e
def test_on_a_dynamic_host_the_adapter_takes_the_dynamic_path() -> None:
    """ComfyUI 0.38 under Dynamic VRAM (shaped in 0.3.64: its patchers answer is_dynamic() True): PACA and the
    ControlNet are held by the dynamic patcher, their weights assigned as read (memory-mapped), PACA's patcher can be
    rebuilt from cached_patcher_init (MultiGPU), and the call still equals the engine's."""
    figures = run_comfy_side(PASD, dynamic_host=True)
    assert figures["patchers_dynamic"] == [True, True], figures
    assert figures["assigned"] == {"PixelAttention": True, "ControlNet": True}, figures
    assert figures["rebuilt_same"] and not figures["rebuilt_dynamic"] and figures["control_reinit"], figures
    assert figures["max_abs_diff"] < TOLERANCE, figures


def test_rrdb_checkpoint_is_refused_with_its_reason(tmp_path: Path) -> None:
    """*_rrdb ControlNets run RRDB blocks that ComfyUI's ControlNet cannot hold: a clear refusal, no traceback."""
    import torch
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "pasd_rrdb" / "checkpoint-100000"
    shutil.copytree(PASD, folder)
    weights = folder / "controlnet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["controlnet_cond_embedding.preprocesser.0.RDB1.conv1.weight"] = torch.zeros(1)
    save_file(state, weights)
    errors = pack_module("pasd_core.errors")
    with pytest.raises(errors.ModelError, match=r"\*_rrdb PASD checkpoint.*pasd, pasd_light and pasd_sdxl only"):
        pack_module("nodes.native.nodes").check_adapter_checkpoint(folder)


def test_folder_that_is_not_a_pasd_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    errors = pack_module("pasd_core.errors")
    with pytest.raises(errors.ModelError, match="not a PASD checkpoint"):
        pack_module("nodes.native.nodes").check_adapter_checkpoint(tmp_path)
