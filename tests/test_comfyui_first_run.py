"""End to end in a real ComfyUI, as a user's first run meets the pack: a fresh install (no PASD models, no base,
only ComfyUI's own input/example.png) lists the templates with their thumbnails and the official models in its
dropdowns. Offline it refuses a queued template up front in one short message (a line per missing model, one
command); online (the hub is a stub on 127.0.0.1 serving the tiny official-layout checkpoints) the starter fetches
what it needs and writes the same image as the CLI on the same files. Needs COMFYUI_DIR and COMFYUI_PYTHON as
tests/test_comfyui_e2e.py does (skipped without, failed in CI).
"""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import requests
from PIL import Image

from support.comfyui import SHIPPED, WORKFLOWS, api_workflows, pack_module
from support.comfyui_server import ComfyUIServer, combo_options, require
from support.hub_repos import tiny_official_repos
from support.hub_stub import HubStub
from support.paths import FIXTURES, ROOT

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON") or sys.executable
SETUP = ("set COMFYUI_DIR=<an unpacked ComfyUI 0.3.64> and COMFYUI_PYTHON=<its venv's python> as the README's "
         "\"Tests\" section shows (or run .ci/run)")
NATIVE_SD15_X2 = "PASD SD1.5 upscale x2 (native)"
PACK = "ComfyUI-PASD"  # the custom_nodes folder name, under which ComfyUI lists and serves the templates

pytestmark = pytest.mark.e2e
choices = pack_module("nodes.model_choices")


def fresh_install(base: Path) -> Path:
    """A ComfyUI's folders as installed: the pack in custom_nodes, empty model folders, input/example.png."""
    require(COMFYUI_DIR, "a ComfyUI (COMFYUI_DIR is not set)", SETUP)
    require((Path(COMFYUI_DIR) / "main.py").is_file(), f"a ComfyUI folder (no main.py in {COMFYUI_DIR})", SETUP)
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK).symlink_to(ROOT, target_is_directory=True)
    for kind in ("checkpoints", "loras", "vae", "diffusers"):
        (base / "models" / kind).mkdir(parents=True)
    (base / "input").mkdir()
    Image.open(FIXTURES / "cases" / "B_tiled_x2" / "input.png").convert("RGB").save(base / "input" / "example.png")
    return base


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A fresh install on a machine without the hub (HF_HUB_OFFLINE)."""
    base = fresh_install(tmp_path_factory.mktemp("fresh_comfyui"))
    with ComfyUIServer(Path(COMFYUI_DIR), COMFYUI_PYTHON, base, env={"HF_HUB_OFFLINE": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def online(tmp_path_factory):
    """A fresh install whose huggingface_hub talks to the hub stub (the tiny checkpoints under the official ids)."""
    base = fresh_install(tmp_path_factory.mktemp("online_comfyui"))
    with HubStub(tiny_official_repos()) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(base / "hf_home"), "HF_HUB_OFFLINE": "0",
               "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1,localhost"}
        with ComfyUIServer(Path(COMFYUI_DIR), COMFYUI_PYTHON, base, env=env) as server:
            yield server, hub


def refusal(server: ComfyUIServer, prompt: dict) -> dict:
    """The node_errors of a prompt ComfyUI must refuse at POST /prompt (before anything runs)."""
    response = requests.post(f"{server.url}/prompt", json={"prompt": prompt, "client_id": server.client_id},
                             timeout=60)
    assert response.status_code == 400, response.text[:2000]
    return response.json()["node_errors"]


def messages(node_errors: dict, node_id: str) -> str:
    return "\n".join(f"{e['details']} {e['message']}" for e in node_errors[node_id]["errors"])


def test_a_fresh_install_lists_the_templates_with_thumbnails(fresh):
    listed = fresh.get("/api/workflow_templates").json()[PACK]
    assert set(listed) == {p.stem for p in WORKFLOWS.glob("*.json")}  # example_workflows/api/ is not listed
    for name in SHIPPED.values():
        assert name in listed
        # what the template browser fetches: the workflow and <name>.jpg, by the file name it shows as the title
        url = f"/api/workflow_templates/{PACK}/{quote(name)}"
        assert fresh.get(f"{url}.json").json()["nodes"]
        thumbnail = fresh.get(f"{url}.jpg")
        assert thumbnail.headers["Content-Type"] == "image/jpeg" and thumbnail.content[:3] == b"\xff\xd8\xff"


def test_a_fresh_install_offers_the_official_models_in_its_lists(fresh):
    loader = fresh.object_info("PASDModelLoader")["input"]
    assert combo_options(loader["required"]["pasd_model"])[0] == "pasd/checkpoint-100000"
    assert combo_options(loader["required"]["base_model"])[0] == "diffusers/stable-diffusion-v1-5"
    assert combo_options(loader["optional"]["caption_model"]) == ["coca_ViT-L-14", "none"]
    assert loader["optional"]["auto_download"][1]["default"] is True
    for node_type in ("PASDModelLoader", "PASDUpscale", "PASDUpscaleFal", "PASDColorFix"):
        assert len(fresh.object_info(node_type)["description"]) > 40


# fal vs local included: its one output needs both halves, so no fal request is paid for while the local one can't run
@pytest.mark.parametrize("template", ["pasd_upscale_x2", "pasd_sdxl_upscale_x2", "pasd_sdxl_fal_vs_local"])
def test_offline_a_template_without_its_models_is_refused_up_front_in_one_short_message(fresh, template):
    prompt = api_workflows()[SHIPPED[template]]
    (loader,) = [k for k, n in prompt.items() if n["class_type"] == "PASDModelLoader"]
    node_errors = refusal(fresh, prompt)
    assert set(node_errors) == {loader}  # only the loader is at fault; nothing ran
    text = messages(node_errors, loader)
    models = os.path.realpath(Path(fresh.base) / "models")
    family = "sdxl" if "sdxl" in template else "sd15"
    pasd_model = prompt[loader]["inputs"]["pasd_model"]
    assert "3 official model(s) this graph needs are not on disk, and HF_HUB_OFFLINE is set:" in text
    assert f"- pasd_model {pasd_model!r}: " in text and f"into {models}/pasd" in text
    assert f"python -m pasd_core download --family {family} --captioner --models-dir {models}" in text
    assert "Value not in list" not in text
    assert not fresh.get("/history").json()


def test_the_stylize_template_names_its_style_model_and_where_to_get_it(fresh):
    prompt = api_workflows()[SHIPPED["pasd_upscale_then_stylize"]]
    node_errors = refusal(fresh, prompt)
    stylize = next(k for k, n in prompt.items() if n["class_type"] == "PASDModelLoader"
                   and n["inputs"]["style_model"] != "none")
    assert "style_model 'toonyou_beta6.safetensors' is not in models/checkpoints" in messages(node_errors, stylize)
    assert "https://civitai.com/models/30240/toonyou" in messages(node_errors, stylize)


def test_a_native_template_without_its_adapter_is_refused_up_front_with_the_fix(fresh):
    prompt = api_workflows()[NATIVE_SD15_X2]
    (loader,) = [k for k, n in prompt.items() if n["class_type"] == "PASDAdapterLoader"]
    node_errors = refusal(fresh, prompt)
    assert loader in node_errors  # beside core Load Checkpoint's own refusal of the missing checkpoint
    text = messages(node_errors, loader)
    models = os.path.realpath(Path(fresh.base) / "models")
    assert f"- pasd_model 'pasd/checkpoint-100000': the PASD 'pasd' checkpoint, into {models}/pasd" in text
    assert f"python -m pasd_core download --family sd15 --models-dir {models}" in text
    assert "Value not in list" not in text
    assert not fresh.get("/history").json()


PREVIOUS_STARTER = ROOT / "tests" / "fixtures" / "previous_release" / "api" / f"{SHIPPED['pasd_upscale_x2']}.json"


def test_online_the_starter_fetches_its_models_on_first_run_and_matches_the_cli(online, tmp_path):
    """The starter as the previous release saved it (no auto_download input: its default, on), run unchanged but
    for the prompt stage (off: the download writes the real CoCa's config beside the weights, which the tiny
    captioner cannot take; tests/test_first_run_download.py fetches the captioner through the node code)."""
    server, hub = online
    prompt = copy.deepcopy(json.loads(PREVIOUS_STARTER.read_text()))
    loader = next(k for k, n in prompt.items() if n["class_type"] == "PASDModelLoader")
    upscale = next(k for k, n in prompt.items() if n["class_type"] == "PASDUpscale")
    prompt[loader]["inputs"]["caption_model"] = "none"
    prompt[upscale]["inputs"].update(high_level_info="none", steps=10, process_size=64)
    entry = server.run(prompt)
    models = Path(server.base) / "models"
    pasd, base = models / "pasd" / "pasd" / "checkpoint-100000", models / "diffusers" / "stable-diffusion-v1-5"
    assert (pasd / "unet" / "diffusion_pytorch_model.safetensors").is_file() and (base / "model_index.json").is_file()
    log = server.log(400)
    assert "PASD: downloading yangtao9009/PASD/pasd/checkpoint-100000/unet/diffusion_pytorch_model.safetensors" in log
    saved = next(k for k, n in prompt.items() if n["class_type"] == "SaveImage")
    (png,) = server.output_images(entry, saved)
    settings = {k: v for k, v in prompt[upscale]["inputs"].items() if k in pack_module("pasd_core.params").BY_NAME}
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in settings.items()]
    cli_output = tmp_path / "cli.png"
    subprocess.run([COMFYUI_PYTHON, "-m", "pasd_core", "upscale", str(Path(server.base) / "input" / "example.png"),
                    "-o", str(cli_output), "--base-model", str(base), "--pasd-model", str(pasd), "--device", "cpu",
                    *flags], cwd=ROOT, check=True, capture_output=True, timeout=600)
    comfy = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert np.array_equal(comfy, np.asarray(Image.open(cli_output).convert("RGB")))
    assert hub.calls("resolve")  # fetched from the stub, not found somewhere
