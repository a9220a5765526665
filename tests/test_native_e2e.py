"""End to end in a real ComfyUI: the native templates (core loaders and samplers around PASD Adapter Loader and
PASD Apply) on checkpoints that ComfyUI's own Load Checkpoint and Load LoRA accept (tests/support/comfy_checkpoints.py).

- every native template passes ComfyUI's prompt validation (node_errors {}) once its models are present
  (tests/test_comfyui_e2e.py loads every template, these included, in ComfyUI's own front end);
- the SD1.5 x2 graph, with the sampler and scheduler closest to the engine's UniPC, next to the engine's image
  on the same weights: the difference is printed (bench/README.md's figure), and only sanity bounds are asserted,
  because the two samplers differ by design (ComfyUI's UniPC is order 3, its noise comes from KSampler's seed,
  the official start mixes two noises);
- the stylization template runs with a personalized single-file checkpoint and a LoRA, both loaded by core nodes.

Enable as tests/test_comfyui_e2e.py: COMFYUI_DIR and COMFYUI_PYTHON (skipped without them, failed when CI is set).
"""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.comfyui import native_api_templates, pack_module
from support.comfyui_server import ComfyUIServer, require, run_engine_directly
from support.paths import FIXTURES, ROOT, SDXL_CHECKPOINTS, TINY_COCA

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON") or sys.executable
SETUP = ("set COMFYUI_DIR=<an unpacked ComfyUI 0.3.64> and COMFYUI_PYTHON=<its venv's python>, as the README's "
         "\"Tests\" section shows (or run .ci/run)")

SD15_X2 = "PASD SD1.5 upscale x2 (native)"
SDXL_X2 = "PASD SDXL upscale x2 (native)"
STYLIZE = "PASD SD1.5 stylization with LoRA (native)"
SDXL_FILE = "sd_xl_base_1.0.safetensors"
INPUT_SIZE = 32  # input 32², x2, process size 64: an 8x8 latent, the smallest the tiny models sample quickly
FAST = {"steps": 10, "process_size": 64}  # 10 is the engine's fewest steps

pytestmark = pytest.mark.e2e
table = pack_module("pasd_core.params")


@pytest.fixture(scope="module", autouse=True)
def comfyui_prerequisites() -> None:
    require(COMFYUI_DIR, "a ComfyUI (COMFYUI_DIR is not set)", SETUP)
    require((Path(COMFYUI_DIR) / "main.py").is_file(), f"a ComfyUI folder (no main.py in {COMFYUI_DIR})", SETUP)
    require(os.access(COMFYUI_PYTHON, os.X_OK), f"ComfyUI's Python (COMFYUI_PYTHON={COMFYUI_PYTHON})", SETUP)


@pytest.fixture(scope="session")
def native_models(tmp_path_factory):
    """The ComfyUI-loadable base, adapters, personalized model and LoRA, built once per test session."""
    from support.comfy_checkpoints import build_native_sd15

    models = build_native_sd15(tmp_path_factory.mktemp("native") / "models")
    print(f"\nnative test models built in {models.seconds} s: {models.sizes_mb()} (MiB)")
    return models


@pytest.fixture(scope="module")
def base(tmp_path_factory, native_models) -> Path:
    """ComfyUI's base directory: the pack, the native models (SDXL: names only, see the validation test), a picture."""
    base = tmp_path_factory.mktemp("comfyui_native")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "ComfyUI-PASD").symlink_to(ROOT, target_is_directory=True)
    (base / "models").symlink_to(native_models.models, target_is_directory=True)
    sdxl_adapter = native_models.models / "pasd" / "pasd_sdxl"
    if not sdxl_adapter.exists():
        sdxl_adapter.symlink_to(SDXL_CHECKPOINTS / "pasd_sdxl", target_is_directory=True)
        from support.sdxl_checkpoints import sdxl_base_modules, tiny_sdxl_unet, write_sdxl_file

        write_sdxl_file(native_models.models / "checkpoints" / SDXL_FILE, *sdxl_base_modules(), unet=tiny_sdxl_unet())
    # PASD Prompt's captioner, under the name the templates use (the tiny CoCa of the prompt-stage fixtures)
    captioner = native_models.models / "pasd_prompt" / "coca_ViT-L-14"
    if not captioner.exists():
        captioner.parent.mkdir(exist_ok=True)
        captioner.symlink_to(TINY_COCA, target_is_directory=True)
    (base / "input").mkdir()
    picture = Image.open(FIXTURES / "cases" / "B_tiled_x2" / "input.png").convert("RGB")
    picture.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BICUBIC).save(base / "input" / "example.png")
    return base


@pytest.fixture(scope="module")
def comfyui(base):
    with ComfyUIServer(Path(COMFYUI_DIR), COMFYUI_PYTHON, base, env={"PYTHONUNBUFFERED": "1"}) as server:
        yield server


def fast(name: str) -> dict:
    """A shipped API template with the tiny run's settings: process size 64, 10 steps."""
    prompt = copy.deepcopy(native_api_templates()[name])
    for node in prompt.values():
        if node["class_type"] == "PASDApply":
            node["inputs"]["process_size"] = FAST["process_size"]
        elif node["class_type"] == "KSampler":
            node["inputs"]["steps"] = FAST["steps"]
    return prompt


def only(prompt: dict, class_type: str) -> str:
    (node_id,) = [k for k, n in prompt.items() if n["class_type"] == class_type]
    return node_id


def pixels(png: bytes | Path) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(png) if isinstance(png, bytes) else png).convert("RGB"))


@pytest.fixture(scope="module")
def x2_run(comfyui):
    """The SD1.5 x2 graph, queued once: the validation test queues the templates behind it while it runs."""
    prompt = fast(SD15_X2)
    answer = comfyui.queue(prompt)
    assert answer["node_errors"] == {}, answer["node_errors"]
    return prompt, answer["prompt_id"]


def test_every_native_template_is_accepted_once_its_models_are_present(comfyui, x2_run):
    """POST /prompt validates a whole template (node types, links, every model name in its folder) before queueing.

    The templates are queued as shipped while the x2 run holds the executor, then deleted from the queue
    unrun: the SDXL one names a file that ComfyUI's SDXL detection could not run (a full-depth SDXL UNet is
    gigabytes); its execution is left to a GPU machine with the real models.
    """
    _, running_id = x2_run
    deadline = time.monotonic() + 120
    while running_id not in comfyui.running():
        assert time.monotonic() < deadline, comfyui.log()
        time.sleep(0.2)
    queued = {}
    for name, prompt in native_api_templates().items():
        answer = comfyui.queue(prompt)
        queued[name] = answer["prompt_id"]
        assert answer["node_errors"] == {}, (name, answer["node_errors"])
    import requests

    requests.post(f"{comfyui.url}/queue", json={"delete": list(queued.values())}, timeout=30).raise_for_status()
    assert running_id in comfyui.running(), "the x2 run ended before the templates were taken off the queue"
    pending = [entry[1] for entry in comfyui.get("/queue").json()["queue_pending"]]
    assert not set(queued.values()) & set(pending)
    assert set(queued) == {SD15_X2, SDXL_X2, STYLIZE}


def test_sd15_x2_native_graph_is_near_the_engines_image(comfyui, base, native_models, x2_run, tmp_path):
    prompt, prompt_id = x2_run
    entry = comfyui.wait(prompt_id)
    assert entry["status"]["status_str"] == "success", (entry["status"], comfyui.log())
    (image,) = entry["outputs"][only(prompt, "SaveImage")]["images"]
    native = pixels(comfyui.get("/view", filename=image["filename"], subfolder=image["subfolder"],
                                type=image["type"]).content)
    assert native.shape == (2 * INPUT_SIZE, 2 * INPUT_SIZE, 3)
    # the engine on the same files: its UNet's SD weights are the base file's (comfy_checkpoints.py)
    apply, sampler = prompt[only(prompt, "PASDApply")]["inputs"], prompt[only(prompt, "KSampler")]["inputs"]
    settings = {"scale": apply["scale"], "conditioning_scale": apply["conditioning_scale"],
                "process_size": apply["process_size"], "steps": sampler["steps"], "guidance_scale": sampler["cfg"],
                "seed": sampler["seed"], "prompt": "", "negative_prompt": table.BY_NAME["negative_prompt"].default,
                "added_prompt": "auto", "color_fix": "wavelet", "high_level_info": "caption"}
    # the graph's positive text is PASD Prompt's: the official prompt the engine builds from the same caption
    (text,) = [n["inputs"]["text"] for n in prompt.values() if n["class_type"] == "CLIPTextEncode"
               and isinstance(n["inputs"]["text"], list)]
    assert prompt[text[0]]["class_type"] == "PASDPrompt"
    output = tmp_path / "engine.png"
    run_engine_directly(COMFYUI_PYTHON, ROOT, {
        "inputs": [str(base / "input" / "example.png")], "outputs": [str(output)],
        "stages": [{"base": str(native_models.base), "pasd": str(native_models.adapter), "settings": settings,
                    "caption_model": str(TINY_COCA)}]})
    engine = pixels(output)
    assert engine.shape == native.shape and np.isfinite(native).all()
    difference = np.abs(native.astype(float) - engine.astype(float))
    # an unrelated image of the same colours: the engine's image mirrored
    unrelated = np.abs(native.astype(float) - engine[:, ::-1].astype(float)).mean()
    correlation = np.corrcoef(native.ravel().astype(float), engine.ravel().astype(float))[0, 1]
    print(f"\nnative SD1.5 x2 graph (uni_pc_bh2, sgm_uniform, {sampler['steps']} steps) vs engine (UniPC): "
          f"mean |diff| {difference.mean():.1f}/255, max {difference.max():.0f}/255, correlation {correlation:.3f}; "
          f"vs the mirrored engine image: mean {unrelated:.1f}/255")
    assert native.std() > 1.0, "the native image is flat"
    assert difference.mean() < unrelated and correlation > 0.0


def test_stylization_template_runs_with_a_core_loaded_checkpoint_and_lora(comfyui, native_models):
    prompt = fast(STYLIZE)
    assert prompt[only(prompt, "CheckpointLoaderSimple")]["inputs"]["ckpt_name"] == native_models.style.name
    assert prompt[only(prompt, "LoraLoader")]["inputs"]["lora_name"] == native_models.lora.name
    entry = comfyui.run(prompt)
    (image,) = entry["outputs"][only(prompt, "SaveImage")]["images"]
    result = pixels(comfyui.get("/view", filename=image["filename"], subfolder=image["subfolder"],
                                type=image["type"]).content)
    # scale 1: the control image, enlarged to the process size (as the official code does), is the output size
    assert result.shape == (FAST["process_size"], FAST["process_size"], 3) and result.std() > 1.0
    # every LoRA weight found its layer in ComfyUI's model and CLIP (LoraLoader logs the ones it cannot place)
    assert "lora key not loaded" not in comfyui.log(100_000)

