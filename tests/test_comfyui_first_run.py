"""End to end in a real ComfyUI, as a user's first run meets the pack: a fresh install (no PASD models, no base,
only ComfyUI's own input/example.png) lists the templates with their thumbnails, shows placeholders instead of
empty lists, and refuses a queued template up front, naming the missing models, their folders and the download
command. Needs COMFYUI_DIR and COMFYUI_PYTHON as tests/test_comfyui_e2e.py does (skipped without, failed in CI).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from PIL import Image

from support.comfyui import SHIPPED, WORKFLOWS, api_workflows, pack_module
from support.comfyui_server import ComfyUIServer, require
from support.paths import FIXTURES, ROOT

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON") or sys.executable
SETUP = ("set COMFYUI_DIR=<an unpacked ComfyUI 0.3.64> and COMFYUI_PYTHON=<its venv's python> as the README's "
         "\"Tests\" section shows (or run .ci/run)")
NATIVE_SD15_X2 = "PASD SD1.5 upscale x2 (native)"
PACK = "ComfyUI-PASD"  # the custom_nodes folder name, under which ComfyUI lists and serves the templates

pytestmark = pytest.mark.e2e
choices = pack_module("nodes.model_choices")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A ComfyUI as installed: the pack in custom_nodes, ComfyUI's empty model folders, input/example.png."""
    require(COMFYUI_DIR, "a ComfyUI (COMFYUI_DIR is not set)", SETUP)
    require((Path(COMFYUI_DIR) / "main.py").is_file(), f"a ComfyUI folder (no main.py in {COMFYUI_DIR})", SETUP)
    base = tmp_path_factory.mktemp("fresh_comfyui")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK).symlink_to(ROOT, target_is_directory=True)
    for kind in ("checkpoints", "loras", "vae", "diffusers"):
        (base / "models" / kind).mkdir(parents=True)
    (base / "input").mkdir()
    Image.open(FIXTURES / "cases" / "B_tiled_x2" / "input.png").convert("RGB").save(base / "input" / "example.png")
    with ComfyUIServer(Path(COMFYUI_DIR), COMFYUI_PYTHON, base) as server:
        yield server


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


def test_a_fresh_install_shows_placeholders_not_empty_lists(fresh):
    loader = fresh.object_info("PASDModelLoader")["input"]
    assert loader["required"]["pasd_model"][0] == [choices.NO_PASD_MODEL]
    assert loader["required"]["base_model"][0] == [choices.NO_BASE_MODEL]
    assert loader["optional"]["vae"][0] == ["none"]
    for node_type in ("PASDModelLoader", "PASDUpscale", "PASDUpscaleFal", "PASDColorFix"):
        assert len(fresh.object_info(node_type)["description"]) > 40


# fal vs local included: its one output needs both halves, so no fal request is paid for while the local one can't run
@pytest.mark.parametrize("template", ["pasd_upscale_x2", "pasd_sdxl_upscale_x2", "pasd_sdxl_fal_vs_local"])
def test_queueing_a_template_without_its_models_is_refused_up_front_with_the_fix(fresh, template):
    prompt = api_workflows()[SHIPPED[template]]
    (loader,) = [k for k, n in prompt.items() if n["class_type"] == "PASDModelLoader"]
    node_errors = refusal(fresh, prompt)
    assert set(node_errors) == {loader}  # only the loader is at fault; nothing ran
    text = messages(node_errors, loader)
    models = os.path.realpath(Path(fresh.base) / "models")
    family = "sdxl" if "sdxl" in template else "sd15"
    pasd_model = prompt[loader]["inputs"]["pasd_model"]
    assert f"pasd_model {pasd_model!r} is not in models/pasd ({models}/pasd)" in text
    assert f"python -m pasd_core download --family {family} --models-dir {models}" in text
    assert "https://huggingface.co/yangtao9009/PASD" in text and "Value not in list" not in text
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
    assert f"pasd_model 'pasd/checkpoint-100000' is not in models/pasd ({models}/pasd)" in text
    assert f"python -m pasd_core download --family sd15 --models-dir {models}" in text
    assert "Value not in list" not in text
    assert not fresh.get("/history").json()
