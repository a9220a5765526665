"""End to end in a real ComfyUI: the pack loads, every shipped workflow runs through POST /prompt, local
results (PASD-SD1.5 and PASD-SDXL) equal the engine's own (and the official output), the fal workflows run
against the stub, and the cancel button interrupts a run between steps.

Enable with COMFYUI_DIR=<a ComfyUI folder> and COMFYUI_PYTHON=<its interpreter, with this pack's
requirements installed> (default: this interpreter); the README's "Tests" section shows how to make both
from the shared ComfyUI tarball, and `.ci/run` does it. Without them these tests skip, or fail when CI is set.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from support.comfyui import (
    CORE_NODES,
    SHIPPED,
    api_workflows,
    load_pack,
    make_models_dir,
    pack_module,
    ui_to_api,
    ui_workflows,
    widget_slots,
)
from support.comfyui_server import (
    Chromium,
    ComfyUIServer,
    combo_options,
    frontend_prompts,
    interrupted_message,
    require,
    run_engine_directly,
)
from support.fal_stub import FalStub
from support.paths import CHECKPOINTS, FIXTURES, PROMPT_FIXTURES, ROOT, SDXL_CHECKPOINTS, TINY_COCA

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON") or sys.executable

SETUP = ("unpack ../shared/comfyui/ComfyUI-0.3.64-a125cd84.tar.gz and build its venv as the README's \"Tests\" "
         "section shows (or run .ci/run), then set COMFYUI_DIR=<the unpacked ComfyUI folder> and "
         "COMFYUI_PYTHON=<that venv's python>")

pytestmark = pytest.mark.e2e

pack = load_pack()
table = pack_module("pasd_core.params")
CASE_B = json.loads((FIXTURES / "cases" / "B_tiled_x2" / "case.json").read_text())["params"]
SD15 = str(CHECKPOINTS / "stable-diffusion-v1-5")
PASD = str(CHECKPOINTS / "pasd" / "checkpoint-100000")
PASD_LIGHT = str(CHECKPOINTS / "pasd_light" / "checkpoint-120000")
SDXL_BASE = str(SDXL_CHECKPOINTS / "stable-diffusion-xl-base-1.0")
PASD_SDXL = str(SDXL_CHECKPOINTS / "pasd_sdxl" / "checkpoint-200000")
SDXL_FILE = "sd_xl_base_1.0.safetensors"  # a tiny SDXL single file, named as the download a user puts there
PREVIOUS_RELEASE = ROOT / "tests" / "fixtures" / "previous_release"  # the templates as the last release shipped them
FAST = {"steps": 10, "process_size": 64}  # the tiny models' size; a few seconds per image on CPU
PASD_COLOR = str(PROMPT_FIXTURES / "checkpoints" / "pasd_color" / "checkpoint-180000")
REFINER_TEMPLATE = "PASD SDXL upscale x2 (native)"  # its SDXL refiner group is bypassed as shipped
UNBYPASSED = f"{REFINER_TEMPLATE} with the refiner"
CAPTIONER = "coca_ViT-L-14"  # the templates' caption_model: the tiny CoCa is linked under that name
FAL_KEY = "e2e-stub-key"  # given to the ComfyUI process only; never in a workflow


@pytest.fixture(scope="module", autouse=True)
def comfyui_prerequisites() -> None:
    """Module-scoped so that it runs before the module-scoped server starts."""
    require(COMFYUI_DIR, "a ComfyUI (COMFYUI_DIR is not set)", SETUP)
    require((Path(COMFYUI_DIR) / "main.py").is_file(), f"a ComfyUI folder (no main.py in COMFYUI_DIR={COMFYUI_DIR})",
            SETUP)
    require(os.access(COMFYUI_PYTHON, os.X_OK), f"ComfyUI's Python (COMFYUI_PYTHON={COMFYUI_PYTHON} is not a "
            "program)", SETUP)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """ComfyUI's base directory: the pack as a custom node, the tiny models, two input pictures."""
    base = tmp_path_factory.mktemp("comfyui")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "ComfyUI-PASD").symlink_to(ROOT, target_is_directory=True)
    # what ComfyUI's model manager holds and loads, at /pasd_test/models
    (base / "custom_nodes" / "pasd_test_probe").symlink_to(ROOT / "tests" / "support" / "comfyui_probe",
                                                          target_is_directory=True)
    models = make_models_dir(base / "models", sdxl=True, color=True)
    (models / "pasd_prompt" / CAPTIONER).symlink_to(TINY_COCA, target_is_directory=True)
    (models / "pasd" / "pasd_light").unlink()  # served from the extra_model_paths.yaml folder instead
    (base / "shared" / "pasd").mkdir(parents=True)
    (base / "shared" / "pasd" / "pasd_light").symlink_to(CHECKPOINTS / "pasd_light", target_is_directory=True)
    (base / "extra_model_paths.yaml").write_text(f"e2e:\n    base_path: {base / 'shared'}\n    pasd: pasd\n")
    from support.sd_checkpoints import tiny_sd_modules, write_original_sd_file  # the lead's tiny SD1.5 single files

    write_original_sd_file(models / "checkpoints" / "toonyou_beta6.safetensors", *tiny_sd_modules(seed=100))
    from support.sdxl_checkpoints import sdxl_base_modules, tiny_sdxl_unet, write_sdxl_file

    write_sdxl_file(models / "checkpoints" / SDXL_FILE, *sdxl_base_modules(), unet=tiny_sdxl_unet())
    (base / "input").mkdir()
    picture = Image.open(FIXTURES / "cases" / "B_tiled_x2" / "input.png").convert("RGB")
    picture.save(base / "input" / "example.png")  # ComfyUI ships input/example.png; the templates use only it
    for case in ("P1_sd15_caption", "P5_color_caption", "P6_color_none"):  # the prompt-stage parity inputs
        shutil.copy(PROMPT_FIXTURES / "cases" / case / "input.png", base / "input" / f"{case}.png")
    return base


@pytest.fixture(scope="module")
def fal_stub():
    with FalStub(key=FAL_KEY) as stub:
        yield stub


@pytest.fixture(scope="module")
def comfyui(base, fal_stub):
    env = {"FAL_KEY": FAL_KEY, "FAL_QUEUE_URL": fal_stub.url, "PYTHONUNBUFFERED": "1"}
    with ComfyUIServer(Path(COMFYUI_DIR), COMFYUI_PYTHON, base, extra_model_paths=base / "extra_model_paths.yaml",
                       env=env) as server:
        yield server


def workflow(name: str, **settings) -> dict:
    """An API workflow as shipped, with `settings` applied to every PASD upscale node (the shared ones only to
    the fal node, which takes no others)."""
    prompt = copy.deepcopy(api_workflows()[SHIPPED[name]])
    for node in prompt.values():
        if node["class_type"] == "PASDUpscale":
            node["inputs"].update(settings)
        elif node["class_type"] == "PASDUpscaleFal":
            node["inputs"].update({k: v for k, v in settings.items() if table.BY_NAME[k].remote})
    return prompt


def node_id(prompt: dict, class_type: str, title_part: str = "") -> str:
    return next(k for k, n in prompt.items() if n["class_type"] == class_type and title_part in n["_meta"]["title"])


def pixels(png: bytes | Path) -> np.ndarray:
    source = io.BytesIO(png) if isinstance(png, bytes) else png
    return np.asarray(Image.open(source).convert("RGB"))


def engine_outputs(tmp_path: Path, inputs: list[Path], stages: list[dict]) -> list[np.ndarray]:
    """PASDPipeline run directly in ComfyUI's interpreter on the same files and settings."""
    outputs = [tmp_path / f"direct_{i}.png" for i in range(len(inputs))]
    run_engine_directly(COMFYUI_PYTHON, ROOT, {"inputs": [str(p) for p in inputs], "stages": stages,
                                               "outputs": [str(p) for p in outputs]})
    return [pixels(p) for p in outputs]


def upscale_settings(prompt: dict, node: str) -> dict:
    return {k: v for k, v in prompt[node]["inputs"].items() if k in table.BY_NAME}


def stage(base_model: str, pasd: str, prompt: dict, node: str, **extra) -> dict:
    """A direct engine run of PASD Upscale node `node`'s settings, with the captioner when they caption."""
    settings = upscale_settings(prompt, node)
    captioner = {"caption_model": str(TINY_COCA)} if settings["high_level_info"] == "caption" else {}
    return {"base": base_model, "pasd": pasd, "settings": settings, **captioner, **extra}


# --- the pack inside ComfyUI -----------------------------------------------------------------------

def test_pack_loads_with_its_nodes_and_models(comfyui):
    assert "ComfyUI-PASD" not in "\n".join(line for line in comfyui.log(500).splitlines() if "IMPORT FAILED" in line)
    for node_type, cls in pack.NODE_CLASS_MAPPINGS.items():
        info = comfyui.object_info(node_type)
        assert info["category"] == "image/upscaling/PASD" and info["output"] == list(cls.RETURN_TYPES)
        assert info["display_name"] == pack.NODE_DISPLAY_NAME_MAPPINGS[node_type]
        assert info["output_name"] == list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES)
        assert info["description"] == cls.DESCRIPTION
    loader = comfyui.object_info("PASDModelLoader")["input"]["required"]
    # registered through comfy_entrypoint: ComfyUI serves the V3 schema, whose dropdowns read ("COMBO", {options})
    assert loader["pasd_model"][0] == "COMBO"
    # models/pasd is registered and the folder extra_model_paths.yaml gave "pasd" is kept
    assert combo_options(loader["pasd_model"]) == ["pasd/checkpoint-100000", "pasd_light/checkpoint-120000",
                                                   "pasd_light_color/checkpoint-180000", "pasd_sdxl/checkpoint-200000"]
    # models/pasd_prompt is registered: the captioner is listed (the colour checkpoint's scheduler/ is no checkpoint)
    optional = comfyui.object_info("PASDModelLoader")["input"]["optional"]
    assert CAPTIONER in combo_options(optional["caption_model"])
    # SD1.5 and SDXL bases alike: diffusers folders, then single files
    assert combo_options(loader["base_model"]) == [
        "diffusers/stable-diffusion-v1-5", "diffusers/stable-diffusion-xl-base-1.0", f"checkpoints/{SDXL_FILE}",
        "checkpoints/toonyou_beta6.safetensors"]
    assert combo_options(loader["style_model"]) == ["none", SDXL_FILE, "toonyou_beta6.safetensors"]
    assert combo_options(optional["vae"]) == ["none", "sdxl-vae-fp16-fix"]  # the official one, before it is fetched
    assert "vae" in comfyui.object_info("PASDModelLoader")["input_order"]["optional"]
    assert "SDXL" in loader["base_model"][1]["tooltip"] and "SDXL" in loader["pasd_model"][1]["tooltip"]


def test_declarations_reach_the_frontend_as_declared(comfyui):
    """Every input the classic declaration has, in its order, with its options, served through the V3 schema (a
    dropdown as COMBO; `advanced`, which 0.3.64's V3 inputs do not take, left out there)."""
    for node_type, cls in pack.NODE_CLASS_MAPPINGS.items():
        declared = json.loads(json.dumps(cls.INPUT_TYPES()))
        info = comfyui.object_info(node_type)
        for section in ("required", "optional"):
            served = info["input"].get(section, {})
            assert list(served) == list(declared.get(section, {})) == info["input_order"].get(section, [])
            for name, (kind, options) in declared.get(section, {}).items():
                options = {k: v for k, v in options.items() if k != "advanced"}
                if isinstance(kind, list):  # model lists are the server's own folders': only the table's compared
                    assert served[name][0] == "COMBO"
                    assert served[name][1]["options"] == kind or name not in table.BY_NAME, (node_type, name)
                else:
                    assert served[name][0] == kind
                    assert options.items() <= served[name][1].items(), (node_type, name)
    seed = comfyui.object_info("PASDUpscale")["input"]["required"]["seed"]
    assert seed[1]["control_after_generate"] is True and seed[1]["max"] == 2**64 - 1


def test_core_nodes_have_the_widgets_the_workflow_converter_assumes(comfyui):
    for node_type, assumed in CORE_NODES.items():
        info = comfyui.object_info(node_type)
        # the server declares its inputs; a widget only the front end adds (Preview Any's text) is the converter's own
        served = {"input": info["input"], "frontend_widgets": assumed.get("frontend_widgets", ())}
        assert widget_slots(served) == widget_slots(assumed)
        assert (info["output"], info["display_name"]) == (assumed["output"], assumed["display_name"])


def test_inputs_build_a_v3_schema_with_comfyuis_own_comfy_api():
    script = """
import json, sys
sys.path[:0] = [sys.argv[1]]
from comfy_api.latest import io
from support.comfyui import load_pack, pack_module
load_pack()  # here comfy_api is importable: the pack exports comfy_entrypoint, its nodes stay in nodes/
inputs = pack_module("nodes.inputs")
out = {name: {i.name: [inputs.v3(i, io).get_io_type(), inputs.v3(i, io).as_dict()] for i in cls.inputs()}
       for name, cls in pack_module("nodes").NODE_CLASS_MAPPINGS.items()}
print(json.dumps(out))
"""
    done = subprocess.run([COMFYUI_PYTHON, "-c", script, str(ROOT / "tests"), "--cpu"], cwd=COMFYUI_DIR,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    v3 = json.loads(done.stdout.strip().splitlines()[-1])
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        declared = json.loads(json.dumps(cls.INPUT_TYPES()))
        for input_name, (kind, options) in {**declared["required"], **declared.get("optional", {})}.items():
            v3_type, v3_options = v3[name][input_name]
            if isinstance(kind, list):
                assert (v3_type, v3_options["options"]) == ("COMBO", kind)
            else:
                assert v3_type == kind
            # `advanced` is dropped where the V3 inputs do not take it (0.3.64)
            assert {k: v for k, v in options.items() if k != "advanced"}.items() <= v3_options.items()


def test_the_frontend_loads_each_ui_workflow_into_its_api_copy(comfyui, tmp_path):
    require(shutil.which("chromium"), "Chromium for the front-end check", "apt-get install -y chromium")
    # the native SDXL template as a user has it after un-bypassing its refiner group, beside the shipped ones
    refined = copy.deepcopy(ui_workflows()[REFINER_TEMPLATE])
    for node in refined["nodes"]:
        node["mode"] = 0
    with Chromium(shutil.which("chromium"), tmp_path / "profile") as chromium:
        loaded = frontend_prompts(COMFYUI_PYTHON, chromium, comfyui, {**ui_workflows(), UNBYPASSED: refined},
                                  str(tmp_path / "{name}.png"))
    for name, api in {**api_workflows(), UNBYPASSED: ui_to_api(refined)}.items():
        # every node loads, notes included; the prompt leaves the notes (and bypassed nodes) out, as the API copy does
        assert loaded[name]["missing"] == [] and loaded[name]["nodes"] == len(refined["nodes"] if name == UNBYPASSED
                                                                              else ui_workflows()[name]["nodes"])
        assert loaded[name]["prompt"] == api, name
    refiner_types = {n["class_type"] for n in loaded[UNBYPASSED]["prompt"].values()}
    assert {"CLIPTextEncodeSDXLRefiner", "VAEEncode", "GetImageSize"} <= refiner_types


def test_the_frontend_loads_the_previous_releases_workflows_with_todays_nodes(comfyui, tmp_path):
    """Saved before the loaders gained refiner and auto_download: the front end keeps every saved value and gives
    the new widgets their defaults, which is what today's API copy of the same graph would say."""
    require(shutil.which("chromium"), "Chromium for the front-end check", "apt-get install -y chromium")
    previous = {p.stem: json.loads(p.read_text()) for p in sorted(PREVIOUS_RELEASE.glob("*.json"))}
    with Chromium(shutil.which("chromium"), tmp_path / "profile") as chromium:
        loaded = frontend_prompts(COMFYUI_PYTHON, chromium, comfyui, previous)
    for name, workflow in previous.items():
        assert loaded[name]["missing"] == [] and loaded[name]["nodes"] == len(workflow["nodes"]), name
        assert loaded[name]["prompt"] == ui_to_api(workflow), name


# --- every workflow through POST /prompt -----------------------------------------------------------

def test_x2_workflow_reproduces_the_official_output_and_the_engine(comfyui, base, tmp_path):
    # tiled x2, the official case B, made with the prompt stage off
    settings = {**{k: v for k, v in CASE_B.items() if k in table.BY_NAME}, "high_level_info": "none"}
    prompt = workflow("pasd_upscale_x2", **settings)
    entry = comfyui.run(prompt)
    (png,) = comfyui.output_images(entry, node_id(prompt, "SaveImage"))
    result = pixels(png)
    official = pixels(FIXTURES / "cases" / "B_tiled_x2" / "expected.png")
    assert result.shape == (128, 128, 3)
    assert np.abs(result.astype(int) - official.astype(int)).max() <= 1
    run = stage(SD15, PASD, prompt, node_id(prompt, "PASDUpscale"))
    (direct,) = engine_outputs(tmp_path, [base / "input" / "example.png"], [run])
    assert np.array_equal(result, direct)
    # and the CLI, in the same interpreter, on the same file and settings
    cli_output = tmp_path / "cli.png"
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in run["settings"].items()]
    subprocess.run([COMFYUI_PYTHON, "-m", "pasd_core", "upscale", str(base / "input" / "example.png"), "-o",
                    str(cli_output), "--base-model", SD15, "--pasd-model", PASD, "--device", "cpu", *flags],
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    assert np.array_equal(result, pixels(cli_output))


def test_batch_workflow_gives_one_output_per_image_with_seed_plus_index(comfyui, base, tmp_path):
    prompt = workflow("pasd_batch", seed=7, **FAST)
    entry = comfyui.run(prompt)
    results = [pixels(p) for p in comfyui.output_images(entry, node_id(prompt, "SaveImage"))]
    assert len(results) == 2 and results[0].shape == (128, 128, 3)
    run = stage(SD15, PASD, prompt, node_id(prompt, "PASDUpscale"))
    direct = engine_outputs(tmp_path, [base / "input" / "example.png"] * 2, [run])  # the template as shipped
    assert all(np.array_equal(r, d) for r, d in zip(results, direct, strict=True))
    assert not np.array_equal(results[0], results[1])  # the same picture, seeds 7 and 8


def test_stylize_workflow_chains_super_resolution_and_personalized_stylization(comfyui, base, tmp_path):
    prompt = workflow("pasd_upscale_then_stylize", **FAST)
    entry = comfyui.run(prompt)
    # one Save Image for both, so that the graph runs whole or not at all: the super-resolved picture first
    super_resolved, stylized = comfyui.output_images(entry, node_id(prompt, "SaveImage"))
    first, second = node_id(prompt, "PASDUpscale", "super-resolution"), node_id(prompt, "PASDUpscale", "stylization")
    style = str(base / "models" / "checkpoints" / "toonyou_beta6.safetensors")
    (direct_sr,) = engine_outputs(tmp_path, [base / "input" / "example.png"], [stage(SD15, PASD, prompt, first)])
    (direct_style,) = engine_outputs(tmp_path, [base / "input" / "example.png"], [
        stage(SD15, PASD, prompt, first), stage(SD15, PASD_LIGHT, prompt, second, style_model=style)])
    assert np.array_equal(pixels(super_resolved), direct_sr)
    assert np.array_equal(pixels(stylized), direct_style) and pixels(stylized).shape == (128, 128, 3)


def test_stylize_workflow_without_its_style_model_is_refused_before_anything_runs(comfyui):
    prompt = workflow("pasd_upscale_then_stylize", **FAST)
    stylize = next(k for k, n in prompt.items() if n["class_type"] == "PASDModelLoader"
                   and n["inputs"]["style_model"] != "none")
    prompt[stylize]["inputs"]["style_model"] = "toonyou_beta7.safetensors"  # a style model this ComfyUI lacks
    started = comfyui.log(10_000).count("PASD: upscaling")
    response = requests.post(f"{comfyui.url}/prompt", json={"prompt": prompt, "client_id": comfyui.client_id},
                             timeout=60)
    assert response.status_code == 400, response.text[:2000]
    node_errors = response.json()["node_errors"]
    assert set(node_errors) == {stylize}  # the super-resolution half is fine, yet the whole graph is refused
    details = "\n".join(e["details"] for e in node_errors[stylize]["errors"])
    assert "style_model 'toonyou_beta7.safetensors' is not in models/checkpoints" in details
    time.sleep(1.0)
    assert comfyui.log(10_000).count("PASD: upscaling") == started


def test_the_template_listing_serves_every_shipped_workflow(comfyui):
    listed = comfyui.get("/api/workflow_templates").json()["ComfyUI-PASD"]
    assert set(SHIPPED.values()) <= set(listed)


def test_fal_workflow_runs_on_the_stub_with_the_key_from_the_environment(comfyui, base, fal_stub):
    prompt = workflow("pasd_upscale_fal")
    submitted_before = len(fal_stub.calls("submit"))  # the stub serves the whole module
    entry = comfyui.run(prompt)
    (png,) = comfyui.output_images(entry, node_id(prompt, "SaveImage"))
    picture = Image.open(base / "input" / "example.png").convert("RGB")
    assert np.array_equal(pixels(png), np.asarray(picture.resize((128, 128), Image.Resampling.NEAREST)))
    (submit,) = fal_stub.calls("submit")[submitted_before:]
    assert submit.headers["authorization"] == f"Key {FAL_KEY}"
    assert {k: v for k, v in submit.json().items() if k != "image_url"} == table.defaults(table.REMOTE_PARAMS)


def test_sdxl_workflow_runs_on_the_tiny_sdxl_models_as_the_engine_does(comfyui, base, tmp_path):
    prompt = workflow("pasd_sdxl_upscale_x2", **FAST)
    entry = comfyui.run(prompt)  # POST /prompt answered node_errors {}: the SDXL models are where the loader looks
    (png,) = comfyui.output_images(entry, node_id(prompt, "SaveImage"))
    result = pixels(png)
    assert result.shape == (128, 128, 3)
    settings = upscale_settings(prompt, node_id(prompt, "PASDUpscale"))
    assert settings["added_prompt"] == table.AUTO[str]  # resolved for SDXL by the node and the engine alike
    (direct,) = engine_outputs(tmp_path, [base / "input" / "example.png"],
                               [stage(SDXL_BASE, PASD_SDXL, prompt, node_id(prompt, "PASDUpscale"))])
    assert np.array_equal(result, direct)


def test_fal_vs_local_workflow_runs_fal_and_its_local_sdxl_twin(comfyui, fal_stub):
    prompt = workflow("pasd_sdxl_fal_vs_local", **FAST)
    submitted_before = len(fal_stub.calls("submit"))
    entry = comfyui.run(prompt)
    remote, local = comfyui.output_images(entry, node_id(prompt, "SaveImage"))  # one batch: fal first, then local
    assert pixels(remote).shape == pixels(local).shape == (128, 128, 3)
    (submit,) = fal_stub.calls("submit")[submitted_before:]
    twin = upscale_settings(prompt, node_id(prompt, "PASDUpscale"))
    assert {k: v for k, v in submit.json().items() if k != "image_url"} == {p.name: twin[p.name]
                                                                             for p in table.REMOTE_PARAMS}


# --- the prompt stage and colorization: the official strings and images through ComfyUI's API ------

def prompt_case(name: str) -> tuple[dict, dict]:
    """(case.json, its PASD Upscale settings) of a prompt-stage parity case."""
    data = json.loads((PROMPT_FIXTURES / "cases" / name / "case.json").read_text())
    return data, {k: v for k, v in data["params"].items() if k in table.BY_NAME and table.BY_NAME[k].scope != "loader"}


def run_case(comfyui, template: str, case: str) -> tuple[dict, np.ndarray]:
    """Template `template` on the case's input with its settings; the official expected image beside the result."""
    data, settings = prompt_case(case)
    prompt = workflow(template, **settings)
    prompt[node_id(prompt, "LoadImage")]["inputs"]["image"] = f"{case}.png"
    started = len(comfyui.log(100_000))
    entry = comfyui.run(prompt)
    (png,) = comfyui.output_images(entry, node_id(prompt, "SaveImage"))
    expected = pixels(PROMPT_FIXTURES / "cases" / case / "expected.png")
    assert np.abs(pixels(png).astype(int) - expected.astype(int)).max() <= 1
    return data, comfyui.log(100_000)[started:], entry


def test_the_default_template_captions_as_the_official_script_and_shows_the_caption(comfyui):
    data, log, entry = run_case(comfyui, "pasd_upscale_x2", "P1_sd15_caption")
    assert data["caption"] and f"PASD: prompt {data['official_prompt']!r}" in log  # the caption, exactly
    preview = node_id(workflow("pasd_upscale_x2"), "PreviewAny")
    shown = pack_module("pasd_core.prompt.stage").clean_caption(data["caption"], "sd15")
    assert entry["outputs"][preview]["text"] == [shown]  # in sight, in the template's Preview Any


@pytest.mark.parametrize("case", ["P5_color_caption", "P6_color_none"])
def test_the_colorize_template_reproduces_the_official_colorization(comfyui, case):
    data, log, _ = run_case(comfyui, "pasd_colorize", case)
    assert f"PASD: prompt {data['official_prompt']!r}" in log


def test_a_missing_captioner_is_refused_once_before_anything_runs(comfyui):
    prompt = workflow("pasd_upscale_x2", **FAST)
    loader = node_id(prompt, "PASDModelLoader")
    prompt[loader]["inputs"]["caption_model"] = "coca_missing"
    response = requests.post(f"{comfyui.url}/prompt", json={"prompt": prompt, "client_id": comfyui.client_id},
                             timeout=60)
    assert response.status_code == 400, response.text[:2000]
    errors = response.json()["node_errors"][loader]["errors"]
    text = "\n".join(f"{e['message']} {e['details']}" for e in errors)
    assert text.count("caption_model 'coca_missing'") == 1, text  # one refusal, not one per loader input
    assert "python -m pasd_core download" in text and "--captioner" in text and "huggingface.co/laion" in text


# --- the cancel button ----------------------------------------------------------------------------

# --- ComfyUI's model manager holds the PASD models --------------------------------------------------------------

PARTS = ("text encoders", "denoiser", "VAE", "captioner")  # nodes/host_models.py: a run's parts as host models


def host_models(comfyui) -> dict[str, list[str]]:
    """What ComfyUI's model manager has loaded (every ModelPatcher.load) and holds now (current_loaded_models)."""
    return comfyui.get("/pasd_test/models").json()


def pasd_loads(comfyui) -> list[str]:
    return [name for name in host_models(comfyui)["loads"] if name in PARTS]


def unload_everything(comfyui) -> None:
    """What ComfyUI does when another graph needs the memory: every model back to its offload device (POST /free
    is served between prompts, within ComfyUI's idle-loop interval)."""
    requests.post(f"{comfyui.url}/free", json={"unload_models": True}, timeout=30).raise_for_status()
    deadline = time.monotonic() + 60
    while set(PARTS) & set(host_models(comfyui)["loaded"]):
        assert time.monotonic() < deadline, host_models(comfyui)
        time.sleep(0.2)


@pytest.mark.parametrize("template", ["pasd_upscale_x2", "pasd_sdxl_upscale_x2"])
def test_a_second_run_loads_no_weights_and_a_run_after_an_eviction_reloads_them(comfyui, template):
    first = comfyui.run(workflow(template, **FAST, seed=5))
    loads = pasd_loads(comfyui)
    assert set(PARTS) <= set(host_models(comfyui)["loaded"])  # every part is one of ComfyUI's models, held
    comfyui.run(workflow(template, **FAST, seed=6))  # the loader's output is cached; PASD Upscale runs again
    assert pasd_loads(comfyui) == loads  # nothing loaded again: the models stayed where ComfyUI put them
    unload_everything(comfyui)
    again = comfyui.run(workflow(template, **FAST, seed=5))
    assert len(pasd_loads(comfyui)) > len(loads)  # loaded again, by ComfyUI, when the next run needed them
    prompt = workflow(template, **FAST, seed=5)
    (before,) = comfyui.output_images(first, node_id(prompt, "SaveImage"))
    (after,) = comfyui.output_images(again, node_id(prompt, "SaveImage"))
    assert np.array_equal(pixels(before), pixels(after))


def test_the_loader_and_pasd_prompt_hold_one_captioner(comfyui):
    """PASD Prompt beside the starter graph, both on models/pasd_prompt/coca_ViT-L-14: one CoCa in ComfyUI."""
    prompt = workflow("pasd_upscale_x2", **FAST, seed=11)
    image = node_id(prompt, "LoadImage")
    prompt["900"] = {"class_type": "PASDPrompt", "_meta": {"title": "PASD Prompt"},
                     "inputs": {"image": [image, 0], "prompt": "", "family": "sd15", "high_level_info": "caption",
                                "added_prompt": "auto", "caption_model": CAPTIONER, "classifier_model": "none"}}
    prompt["901"] = {"class_type": "PreviewAny", "_meta": {"title": "Preview Any"}, "inputs": {"source": ["900", 0]}}
    unload_everything(comfyui)  # from an empty model manager: a copy per node would load twice
    loads = pasd_loads(comfyui).count("captioner")
    entry = comfyui.run(prompt)
    assert entry["outputs"]["901"]["text"][0]  # PASD Prompt's prompt, shown
    assert pasd_loads(comfyui).count("captioner") == loads + 1  # one CoCa, loaded once for both nodes
    assert host_models(comfyui)["loaded"].count("captioner") == 1


def test_interrupt_stops_a_long_run_between_steps(comfyui):
    comfyui.run(workflow("pasd_upscale_x2", **FAST))  # warm: the loader's output is cached for the next prompt
    started = comfyui.log(10_000).count("PASD: upscaling")
    prompt = workflow("pasd_upscale_x2", steps=50, process_size=512, seed=1)  # about a minute on 2 CPU cores
    prompt_id = comfyui.queue(prompt)["prompt_id"]
    deadline = time.monotonic() + 120
    while comfyui.log(10_000).count("PASD: upscaling") == started:  # the sampler has started
        assert time.monotonic() < deadline, comfyui.log()
        time.sleep(0.2)
    time.sleep(1.0)
    asked = time.monotonic()
    comfyui.interrupt(prompt_id)
    entry = comfyui.wait(prompt_id, timeout=120)
    stopped_after = time.monotonic() - asked
    message = interrupted_message(entry)
    assert message is not None, entry["status"]
    assert message["node_type"] == "PASDUpscale" and message["node_id"] == node_id(prompt, "PASDUpscale")
    assert stopped_after < 15, f"the run went on for {stopped_after:.1f} s after the interrupt"
    assert comfyui.run(workflow("pasd_upscale_x2", **FAST))["status"]["status_str"] == "success"  # flag consumed
