"""The shipped workflows: valid UI-format JSON that ComfyUI loads as is, in step with the node declarations,
with API-format copies that say the same, and no secrets inside."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex

import pytest

from support.comfyui import (
    API_WORKFLOWS,
    CORE_NODES,
    FRONTEND_ONLY_NODES,
    SHIPPED,
    WORKFLOWS,
    api_workflows,
    declarations,
    input_type,
    load_pack,
    native_api_templates,
    native_templates,
    pack_module,
    ui_to_api,
    ui_workflows,
    widget_slots,
)
from support.paths import ROOT

pack = load_pack()
table = pack_module("pasd_core.params")

SEED_CONTROLS = ("fixed", "increment", "decrement", "randomize")
# A fal key is "<uuid>:<32 hex>"; any long unbroken token of one secret alphabet (base64url and hex, or standard
# base64) is suspicious too, and so is a key given a value or an auth header. Model paths in the notes mix the two
# alphabets' separators ("/" with "-" or "_"), and a note may name the FAL_KEY variable without a value.
KEY_LIKE = (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}:[0-9a-f]{16,}", re.I),
            re.compile(r"[A-Za-z0-9_=-]{40,}"), re.compile(r"[A-Za-z0-9+/=]{40,}"),
            re.compile(r"""(fal_key|api_key|fal_key_id|fal_key_secret)["']?\s*[:=]|Authorization|Bearer """, re.I),
            re.compile(r"\bKey [A-Za-z0-9:-]{8,}"))
SDXL_LOADER = {"pasd_model": "pasd_sdxl/checkpoint-200000", "base_model": "diffusers/stable-diffusion-xl-base-1.0"}
SDXL_DOWNLOAD = "python -m pasd_core download --family sdxl --captioner --models-dir ComfyUI/models"

WORKFLOW_NAMES = sorted(SHIPPED.values())  # the native templates are checked with the native nodes' tests
EXACT_TEMPLATES = [name for name in WORKFLOW_NAMES if "(exact engine)" in name]
BYPASS = 4  # LiteGraph's node mode BYPASS: the front end leaves the node out of the prompt


def nodes_of(workflow: dict, node_type: str) -> list[dict]:
    return [n for n in workflow["nodes"] if n["type"] == node_type]


def server_nodes(workflow: dict) -> list[dict]:
    """The nodes that reach ComfyUI's server (not the front end's notes)."""
    return [n for n in workflow["nodes"] if n["type"] not in FRONTEND_ONLY_NODES]


def note_text(workflow: dict) -> str:
    return "\n".join(n["widgets_values"][0] for n in workflow["nodes"] if n["type"] in FRONTEND_ONLY_NODES)


def widgets(node: dict) -> dict:
    """A UI node's widget values by input name."""
    slots = widget_slots(declarations()[node["type"]])
    return {name: value for name, value in zip(slots, node["widgets_values"], strict=True) if name is not None}


def group_of(workflow: dict, node: dict) -> dict:
    """The group whose rectangle holds the node's position (the front end moves and bypasses them together)."""
    (x, y), groups = node["pos"], workflow.get("groups", [])
    return next((g for g in groups if g["bounding"][0] <= x <= g["bounding"][0] + g["bounding"][2]
                 and g["bounding"][1] <= y <= g["bounding"][1] + g["bounding"][3]), {"title": ""})


def active(workflow: dict) -> dict:
    """The graph as it runs: bypassed nodes left out (none of them feeds an active one)."""
    return {**workflow, "nodes": [n for n in workflow["nodes"] if n["mode"] == 0]}


def source_of(workflow: dict, node: dict, input_name: str) -> dict:
    link_id = next(i["link"] for i in node["inputs"] if i["name"] == input_name)
    origin = next(link[1] for link in workflow["links"] if link[0] == link_id)
    return next(n for n in workflow["nodes"] if n["id"] == origin)


def test_the_workflows_are_shipped_as_templates_with_api_copies_and_thumbnails():
    assert set(SHIPPED.values()) <= set(ui_workflows())
    assert {p.stem for p in API_WORKFLOWS.glob("*.json")} == set(ui_workflows())
    for name in ui_workflows():  # what ComfyUI's template browser shows: the file name over <name>.jpg
        assert (WORKFLOWS / f"{name}.jpg").is_file(), f"run: python tools/make_thumbnails.py {name!r}"
        assert name.startswith("PASD ") and "_" not in name
    assert not (ROOT / "workflows").exists()  # one place, the one ComfyUI lists


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_ui_workflow_is_a_consistent_graph_of_known_nodes(name):
    assert_consistent_graph(json.loads((WORKFLOWS / f"{name}.json").read_text()))


def assert_consistent_graph(workflow: dict) -> None:
    assert workflow["version"] == 0.4 and workflow["last_node_id"] == max(n["id"] for n in workflow["nodes"])
    known = declarations()
    by_id = {n["id"]: n for n in workflow["nodes"]}
    for node in workflow["nodes"]:
        # active, or bypassed (4) as a member of a group that says so; an active node never reads a bypassed one,
        # so the front end's pass-through (an input of the output's type) never decides what runs
        assert node["mode"] == 0 or node["mode"] == BYPASS and "un-bypass" in group_of(workflow, node)["title"]
        if node["type"] in FRONTEND_ONLY_NODES:  # a note: its text, nothing connected
            assert isinstance(node["widgets_values"][0], str) and not node["inputs"] and not node["outputs"]
            continue
        assert node["type"] in pack.NODE_CLASS_MAPPINGS or node["type"] in CORE_NODES
        assert node["properties"]["Node name for S&R"] == node["type"]
    for link_id, origin, origin_slot, target, target_slot, link_type in workflow["links"]:
        assert by_id[target]["mode"] == BYPASS or by_id[origin]["mode"] == 0
        output = by_id[origin]["outputs"][origin_slot]
        socket = by_id[target]["inputs"][target_slot]
        assert link_id in output["links"] and socket["link"] == link_id
        # an input of any type ("*", Preview Any's) takes the link's type; every other must match it
        declared = input_type(known[by_id[target]["type"]]["input"]["required"][socket["name"]])
        assert output["type"] == link_type and socket["type"] == declared and declared in (link_type, "*")
        assert link_type == known[by_id[origin]["type"]]["output"][origin_slot]
    for node in server_nodes(workflow):  # every required socket is connected
        required = known[node["type"]]["input"]["required"]
        sockets = {n for n, spec in required.items() if input_type(spec) not in ("INT", "FLOAT", "STRING", "COMBO")}
        # a widget converted to an input (PASD Prompt feeding CLIP Text Encode's text) is a socket too
        assert sockets == {i["name"] for i in node["inputs"] if i["link"] is not None and "widget" not in i}


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_widget_values_fit_the_declarations(name):
    assert_widgets_fit(json.loads((WORKFLOWS / f"{name}.json").read_text()))


def assert_widgets_fit(workflow: dict) -> None:
    for node in workflow["nodes"]:
        if node["type"] not in pack.NODE_CLASS_MAPPINGS:
            continue
        declared_inputs = pack.NODE_CLASS_MAPPINGS[node["type"]].INPUT_TYPES()
        declared = {**declared_inputs["required"], **declared_inputs.get("optional", {})}
        values = widgets(node)
        table_values = {k: v for k, v in values.items() if k in table.BY_NAME}
        assert table.validate(table_values, [table.BY_NAME[k] for k in table_values]) == table_values
        for key, value in values.items():
            kind, options = declared[key]
            if isinstance(kind, list) and key in table.BY_NAME:
                assert value in kind
            elif isinstance(kind, list):  # a model file: whatever the user has, but a plausible name
                assert isinstance(value, str) and value and not value.startswith("/")
            else:
                assert type(value) is {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}[kind]
        if "seed" in declared:
            slots = widget_slots(declarations()[node["type"]])
            assert node["widgets_values"][slots.index("seed") + 1] in SEED_CONTROLS


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_api_copy_says_what_the_ui_workflow_says(name):
    assert_api_copy(json.loads((WORKFLOWS / f"{name}.json").read_text()), api_workflows()[name])


def assert_api_copy(ui: dict, api: dict) -> None:
    assert ui_to_api(ui) == api
    assert {n["type"] for n in server_nodes(active(ui))} == {n["class_type"] for n in api.values()}
    for node in server_nodes(active(ui)):  # spelled out: each widget value sits under its input name (unless linked)
        linked = {i["name"] for i in node.get("inputs", []) if "widget" in i and i["link"] is not None}
        assert {k: api[str(node["id"])]["inputs"][k] for k in widgets(node) if k not in linked} == {
            k: v for k, v in widgets(node).items() if k not in linked}


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.json")) + sorted(API_WORKFLOWS.glob("*.json")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_key_like_strings(path):
    text = path.read_text()
    for pattern in KEY_LIKE:
        assert not pattern.search(text), f"{path.name}: {pattern.pattern} matches {pattern.search(text).group()!r}"


def test_x2_workflow_upscales_by_two_on_the_local_model():
    workflow = ui_workflows()[SHIPPED["pasd_upscale_x2"]]
    (upscale,) = nodes_of(workflow, "PASDUpscale")
    assert widgets(upscale)["scale"] == 2
    assert source_of(workflow, upscale, "image")["type"] == "LoadImage"
    assert widgets(source_of(workflow, upscale, "pasd_model"))["pasd_model"] == "pasd/checkpoint-100000"
    assert nodes_of(workflow, "SaveImage")


def test_fal_workflow_runs_the_remote_node_with_the_table_defaults():
    workflow = ui_workflows()[SHIPPED["pasd_upscale_fal"]]
    (upscale,) = nodes_of(workflow, "PASDUpscaleFal")
    assert widgets(upscale) == table.defaults(table.REMOTE_PARAMS)
    assert not nodes_of(workflow, "PASDModelLoader")


def test_stylize_workflow_chains_super_resolution_into_personalized_stylization():
    workflow = ui_workflows()[SHIPPED["pasd_upscale_then_stylize"]]
    upscales = nodes_of(workflow, "PASDUpscale")
    stylize = next(n for n in upscales if source_of(workflow, n, "image")["type"] == "PASDUpscale")
    assert (widgets(stylize)["scale"], widgets(stylize)["conditioning_scale"]) == (1, 0.7)
    loader = widgets(source_of(workflow, stylize, "pasd_model"))
    assert loader["pasd_model"].startswith("pasd_light/") and loader["style_model"] != "none"
    first = source_of(workflow, stylize, "image")
    assert widgets(first)["scale"] == 2 and widgets(source_of(workflow, first, "pasd_model"))["style_model"] == "none"


def test_stylize_workflow_saves_only_what_needs_the_style_model_so_it_runs_whole_or_not_at_all():
    # ComfyUI runs the outputs whose inputs validate and drops the others: an output that needed only the first
    # half would run for minutes while the missing style model is reported beside it
    workflow = ui_workflows()[SHIPPED["pasd_upscale_then_stylize"]]
    (save,) = nodes_of(workflow, "SaveImage")
    batch = source_of(workflow, save, "images")
    assert batch["type"] == "ImageBatch"
    first, stylize = source_of(workflow, batch, "image1"), source_of(workflow, batch, "image2")
    assert source_of(workflow, stylize, "image") is first
    assert widgets(source_of(workflow, stylize, "pasd_model"))["style_model"] != "none"


def test_batch_workflow_feeds_an_image_batch_to_one_upscale():
    workflow = ui_workflows()[SHIPPED["pasd_batch"]]
    (upscale,) = nodes_of(workflow, "PASDUpscale")
    batch = source_of(workflow, upscale, "image")
    assert batch["type"] == "ImageBatch"
    assert {source_of(workflow, batch, s)["type"] for s in ("image1", "image2")} == {"LoadImage"}


def test_sdxl_x2_workflow_runs_pasd_sdxl_locally_with_fals_defaults():
    workflow = ui_workflows()[SHIPPED["pasd_sdxl_upscale_x2"]]
    (upscale,) = nodes_of(workflow, "PASDUpscale")
    # fal's defaults for the shared settings; the local ones at auto, which resolve to the official SDXL script's
    assert widgets(upscale) == table.defaults(table.SAMPLER_PARAMS)
    assert widgets(upscale)["scale"] == 2 and widgets(upscale)["added_prompt"] == table.AUTO[str]
    assert source_of(workflow, upscale, "image")["type"] == "LoadImage"
    loader = widgets(source_of(workflow, upscale, "pasd_model"))
    assert {k: loader[k] for k in SDXL_LOADER} == SDXL_LOADER and loader["style_model"] == loader["lora"] == "none"
    assert nodes_of(workflow, "SaveImage")


def test_fal_vs_local_workflow_feeds_one_picture_to_fal_and_its_local_sdxl_twin():
    workflow = ui_workflows()[SHIPPED["pasd_sdxl_fal_vs_local"]]
    (remote,) = nodes_of(workflow, "PASDUpscaleFal")
    (twin,) = nodes_of(workflow, "PASDUpscale")
    assert widgets(remote) == table.defaults(table.REMOTE_PARAMS)
    assert {p.name: widgets(twin)[p.name] for p in table.REMOTE_PARAMS} == widgets(remote)  # the six shared
    assert widgets(twin) == table.defaults(table.SAMPLER_PARAMS)  # and its own settings at auto
    (picture,) = nodes_of(workflow, "LoadImage")
    assert source_of(workflow, remote, "image") is picture and source_of(workflow, twin, "image") is picture
    loader = widgets(source_of(workflow, twin, "pasd_model"))
    assert {k: loader[k] for k in SDXL_LOADER} == SDXL_LOADER
    # one output fed by both results, fal first: the graph runs whole or not at all, so no fal request is paid for
    # while the local half cannot run (ComfyUI runs every output whose own inputs validate)
    (save,) = nodes_of(workflow, "SaveImage")
    batch = source_of(workflow, save, "images")
    assert batch["type"] == "ImageBatch"
    assert source_of(workflow, batch, "image1") is remote and source_of(workflow, batch, "image2") is twin


@pytest.mark.parametrize("name", ["pasd_sdxl_upscale_x2", "pasd_sdxl_fal_vs_local"])
def test_sdxl_workflows_say_which_models_they_need_where_and_how_to_download_them(name):
    workflow = ui_workflows()[SHIPPED[name]]
    text = note_text(workflow)
    (loader,) = nodes_of(workflow, "PASDModelLoader")
    # the loader's choices, as the folders they are under a ComfyUI models folder
    assert f"models/pasd/{widgets(loader)['pasd_model']}" in text and f"models/{widgets(loader)['base_model']}" in text
    assert "models/checkpoints" in text and "single file" in text  # an SDXL single file works as the base too
    assert SDXL_DOWNLOAD in text
    if nodes_of(workflow, "PASDUpscaleFal"):
        assert "fal key" in text and "environment" in text


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_every_workflow_says_in_a_note_what_it_needs_and_where_to_get_it(name):
    workflow = ui_workflows()[name]
    text = note_text(workflow)
    for loader in nodes_of(workflow, "PASDModelLoader"):
        values = widgets(loader)
        family = "sdxl" if "sdxl" in values["pasd_model"] else "sd15"
        assert f"models/pasd/{values['pasd_model']}" in text and f"models/{values['base_model']}" in text
        assert f"python -m pasd_core download --family {family}" in text and "huggingface.co/yangtao9009/" in text
        if values["style_model"] != "none":
            assert values["style_model"] in text and "models/checkpoints" in text
    if nodes_of(workflow, "PASDUpscaleFal"):
        assert "FAL_KEY" in text or "fal key" in text


# --- every model a graph loads, named in its Note with the one download command that fetches it -----------------

ALL_TEMPLATES = sorted(ui_workflows())
DOWNLOAD = "python -m pasd_core download "
FAMILY_VARIANTS = pack_module("pasd_core.weights.download").FAMILY_VARIANTS
PROMPT_MODELS = {"caption_model": "captioner", "classifier_model": "classifier"}  # input: its download switch


def needed_models(node: dict) -> tuple[list[tuple[str, str, str]], dict]:
    """What one node loads: (input, name in its dropdown, models folder) for each model, and the download command's
    arguments that fetch the official ones (argparse's names: family, variant, captioner...)."""
    values = widgets(node)
    models, flags = [], {}
    if "pasd_model" in values and node["type"] != "PASDPrompt":  # PASD Model Loader, PASD Adapter Loader
        variant = values["pasd_model"].split("/")[0]
        flags["family"] = next((f for f, v in FAMILY_VARIANTS.items() if v == variant), "sd15")
        flags["variant"] = variant
        models.append(("pasd_model", values["pasd_model"], "pasd"))
    if "base_model" in values:
        folder, name = values["base_model"].split("/", 1)
        models.append(("base_model", name, folder))
    for key, folder in (("style_model", "checkpoints"), ("lora", "loras"), ("ckpt_name", "checkpoints"),
                        ("lora_name", "loras"), ("lcm_lora", "loras"), ("vae", "vae")):
        if values.get(key, "none") != "none":
            models.append((key, values[key], folder))
    if values.get("lcm_lora", "none") != "none":
        flags["lcm_lora"] = True
    if "fp16-fix" in values.get("vae", ""):
        flags["fp16_fix_vae"] = True
    for key, switch in PROMPT_MODELS.items():
        if values.get(key, "none") != "none":
            models.append((key, values[key], "pasd_prompt"))
            flags[switch] = True
    return models, flags


def download_commands(text: str) -> list[dict]:
    """The Note's download commands, parsed by the CLI's own parser (so every flag in them exists)."""
    parser = pack_module("pasd_core.__main__").build_parser()
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith(DOWNLOAD)]
    return [vars(parser.parse_args(shlex.split(line)[3:])) for line in lines]


def fetches(command: dict, flags: dict) -> bool:
    variant = command["variant"] or FAMILY_VARIANTS[command["family"]]
    return all((variant if key == "variant" else command[key]) == value for key, value in flags.items())


@pytest.mark.parametrize("name", ALL_TEMPLATES)
def test_the_note_names_every_model_the_graph_loads_and_one_command_fetches_each_nodes_official_ones(name):
    """Bypassed nodes count: the Note says what un-bypassing them needs."""
    workflow = ui_workflows()[name]
    text = note_text(workflow)
    lines = text.splitlines()
    commands = download_commands(text)
    assert all(c["models_dir"] == "ComfyUI/models" for c in commands)
    for node in server_nodes(workflow):
        if node["type"] not in pack.NODE_CLASS_MAPPINGS and node["type"] not in ("CheckpointLoaderSimple",
                                                                                  "LoraLoader"):
            continue
        models, flags = needed_models(node)
        for key, model, folder in models:
            # the input it is picked in, the folder it goes in, and on the same line where it comes from
            assert key in text and f"ComfyUI/models/{folder}" in text, (name, key)
            assert any(model in line and "https://" in line for line in lines), (name, model)
        if flags:  # one command fetches everything this node needs (a missing flag meant a second refusal)
            assert any(fetches(c, flags) for c in commands), (name, node["type"], flags)
    if nodes_of(workflow, "PASDModelLoader"):  # the loader fetches them by itself when online
        assert "auto_download" in text and "online" in text and "Offline" in text


TITLE_HEIGHT = 30  # LiteGraph draws a node's title bar this far above its pos (LiteGraph.NODE_TITLE_HEIGHT)


def footprint(node: dict) -> tuple[float, float, float, float]:
    (x, y), (width, height) = node["pos"], node["size"]
    return x, y - TITLE_HEIGHT, x + width, y + height


def overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("name", ALL_TEMPLATES)
def test_no_note_covers_a_node_or_sits_in_a_group(name):
    workflow = ui_workflows()[name]
    for note in (n for n in workflow["nodes"] if n["type"] in FRONTEND_ONLY_NODES):
        for other in workflow["nodes"]:
            assert other is note or not overlap(footprint(note), footprint(other)), (name, other.get("title"),
                                                                                     other["type"])
        for group in workflow.get("groups", []):  # a Note in a group would move and be bypassed with it
            x, y, width, height = group["bounding"]
            assert not overlap(footprint(note), (x, y, x + width, y + height)), (name, group["title"])


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_workflows_run_as_loaded_on_the_pictures_a_fresh_comfyui_has(name):
    for node in nodes_of(ui_workflows()[name], "LoadImage"):
        assert widgets(node)["image"] == "example.png"  # ComfyUI ships input/example.png, nothing else


# --- the native templates (example_workflows/): core nodes around PASD Adapter Loader and PASD Apply ----------

NATIVE = {  # title: (family, adapter, checkpoint, sampler, scheduler, scale, conditioning_scale, download flags)
    "PASD SD1.5 upscale x2 (native)": ("sd15", "pasd/checkpoint-100000", "v1-5-pruned-emaonly.safetensors",
                                       "uni_pc_bh2", "sgm_uniform", 2, 0.8, "--family sd15 --captioner"),
    "PASD SDXL upscale x2 (native)": ("sdxl", "pasd_sdxl/checkpoint-200000", "sd_xl_base_1.0.safetensors",
                                      "euler", "ddim_uniform", 2, 0.8, "--family sdxl --captioner"),
    "PASD SD1.5 stylization with LoRA (native)": (
        "sd15", "pasd_light/checkpoint-120000", "toonyou_beta6.safetensors", "uni_pc_bh2", "sgm_uniform", 1, 0.7,
        "--family sd15 --variant pasd_light --captioner"),
}
NATIVE_NAMES = sorted(NATIVE)


@pytest.mark.parametrize("name", EXACT_TEMPLATES)
def test_every_exact_template_shows_the_caption_in_preview_any(name):
    """PASD Upscale's caption output (what the prompt stage described) is wired to core's Preview Any; a template
    that must run whole or not at all previews the stage that needs every one of its models."""
    workflow = ui_workflows()[name]
    nodes = {n["id"]: n for n in workflow["nodes"]}
    previews = [n for n in workflow["nodes"] if n["type"] == "PreviewAny"]
    assert len(previews) == 1, name
    link = next(link for link in workflow["links"] if link[0] == previews[0]["inputs"][0]["link"])
    assert nodes[link[1]]["type"] == "PASDUpscale" and link[2] == 1 and link[5] == "STRING"  # its caption output


def test_the_native_templates_and_their_api_copies_are_shipped():
    assert set(native_templates()) == set(native_api_templates()) == set(NATIVE)


@pytest.mark.parametrize("name", NATIVE_NAMES)
def test_native_template_is_a_consistent_graph_with_fitting_widgets_and_api_copy(name):
    template = native_templates()[name]
    assert_consistent_graph(template)
    assert_widgets_fit(template)
    assert_api_copy(template, native_api_templates()[name])


@pytest.mark.parametrize("name", NATIVE_NAMES)
def test_native_template_is_the_official_pasd_recipe_in_core_nodes(name):
    family, adapter, checkpoint, sampler_name, scheduler, scale, conditioning, _ = NATIVE[name]
    template = active(native_templates()[name])
    (apply,) = nodes_of(template, "PASDApply")
    assert widgets(apply) == {"scale": scale, "conditioning_scale": conditioning, "process_size": table.AUTO[int]}
    assert widgets(source_of(template, apply, "pasd_adapter")) == {"pasd_model": adapter, "auto_download": True}
    (picture,) = nodes_of(template, "LoadImage")
    assert source_of(template, apply, "image") is picture
    (loader,) = nodes_of(template, "CheckpointLoaderSimple")
    assert widgets(loader) == {"ckpt_name": checkpoint} and source_of(template, apply, "vae") is loader
    model = source_of(template, apply, "model")  # the checkpoint's MODEL, through the LoRA where there is one
    loras = nodes_of(template, "LoraLoader")
    assert model is (loras[0] if loras else loader)
    if loras:
        assert source_of(template, loras[0], "model") is source_of(template, loras[0], "clip") is loader
    # prompts: the official added prompt of the family, the table's negative prompt, both through the same CLIP
    positive, negative = source_of(template, apply, "positive"), source_of(template, apply, "negative")
    # the positive text is PASD Prompt's: the image's caption, the user's prompt and the family's added prompt
    prompt_node = source_of(template, positive, "text")
    assert prompt_node["type"] == "PASDPrompt" and source_of(template, prompt_node, "image")["type"] == "LoadImage"
    assert widgets(prompt_node)["family"] == family and widgets(prompt_node)["high_level_info"] == "caption"
    assert widgets(negative)["text"] == table.BY_NAME["negative_prompt"].default
    assert source_of(template, positive, "clip") is source_of(template, negative, "clip") is model
    # KSampler on all four outputs of PASD Apply, at denoise 1.0, with the official steps and guidance
    (sampler,) = nodes_of(template, "KSampler")
    links = {link[0]: link for link in template["links"]}
    fed = {s["name"]: links[s["link"]][1:3] for s in sampler["inputs"]}
    assert fed == {"model": [apply["id"], 0], "positive": [apply["id"], 1], "negative": [apply["id"], 2],
                   "latent_image": [apply["id"], 3]}
    assert {k: v for k, v in widgets(sampler).items() if k != "seed"} == {
        "steps": table.BY_NAME["steps"].default, "cfg": table.BY_NAME["guidance_scale"].default,
        "sampler_name": sampler_name, "scheduler": scheduler, "denoise": 1.0}
    # then VAE Decode with the checkpoint's VAE, PASD Color Fix against the original picture, Save Image
    (decode,) = nodes_of(template, "VAEDecode")
    assert source_of(template, decode, "samples") is sampler and source_of(template, decode, "vae") is loader
    (fix,) = nodes_of(template, "PASDColorFix")
    assert source_of(template, fix, "image") is decode and source_of(template, fix, "reference") is picture
    (save,) = nodes_of(template, "SaveImage")
    assert source_of(template, save, "images") is fix


@pytest.mark.parametrize("name", NATIVE_NAMES)
def test_native_template_note_says_which_models_go_where_and_how_to_download_them(name):
    family, adapter, checkpoint, *_, flags = NATIVE[name]
    text = note_text(native_templates()[name])
    assert f"ComfyUI/models/pasd/{adapter}" in text and "ComfyUI/models/checkpoints" in text and checkpoint in text
    assert f"python -m pasd_core download {flags} --models-dir ComfyUI/models" in text
    assert "https://huggingface.co/yangtao9009/PASD" in text
    if nodes_of(native_templates()[name], "LoraLoader"):
        assert "ComfyUI/models/loras" in text


# --- workflows saved by the previous release ---------------------------------------------------------------------

PREVIOUS_RELEASE = ROOT / "tests" / "fixtures" / "previous_release"


@pytest.mark.parametrize("name", sorted(p.stem for p in PREVIOUS_RELEASE.glob("*.json")))
def test_a_workflow_saved_by_the_previous_release_loads_with_todays_nodes(name):
    """Same node types, inputs and widget order: the front end fills only the widgets added at the end (their
    defaults), and the API copy the previous release shipped is what today's nodes take, plus those defaults."""
    old = json.loads((PREVIOUS_RELEASE / f"{name}.json").read_text())
    old_api = json.loads((PREVIOUS_RELEASE / "api" / f"{name}.json").read_text())
    today = declarations()
    converted = ui_to_api(old, today)  # raises if a widget value has no slot any more
    for node_id, node in old_api.items():
        assert node["class_type"] in today, node["class_type"]
        added = {k: v for k, v in converted[node_id]["inputs"].items() if k not in node["inputs"]}
        assert {k: converted[node_id]["inputs"][k] for k in node["inputs"]} == node["inputs"]
        assert added.items() <= {"refiner": "none", "auto_download": True, "speed": "exact"}.items()  # added since
        declared = today[node["class_type"]]["input"]
        assert set(declared["required"]) <= set(node["inputs"]) | set(added), node["class_type"]

# --- the native SDXL template's optional refiner (test_pasd_sdxl.py --use_refiner in core nodes) ---------------

REFINER_GROUP = "SDXL refiner (optional: un-bypass; departs from the official code, see Note)"
# StableDiffusionXLImg2ImgPipeline's defaults, which the official call leaves as they are (pasd_core/engine/refiner.py)
PIPELINE_STEPS, PIPELINE_GUIDANCE, AESTHETIC_SCORES = 50, 5.0, (6.0, 2.5)


def origin_of(workflow: dict, node: dict, input_name: str) -> tuple[int, int]:
    """(node id, output slot) that feeds the input."""
    link_id = next(i["link"] for i in node["inputs"] if i["name"] == input_name)
    return next((link[1], link[2]) for link in workflow["links"] if link[0] == link_id)


def test_native_sdxl_template_refines_pasds_decoded_image_before_the_colour_fix_in_a_bypassed_group():
    template = native_templates()["PASD SDXL upscale x2 (native)"]
    refiner = [n for n in template["nodes"] if n["mode"] == BYPASS]
    (group,) = template["groups"]  # bypassed by default: the graph runs without the refiner file
    assert group["title"] == REFINER_GROUP and refiner
    assert [n for n in template["nodes"] if group_of(template, n) is group] == refiner
    whole = {**template, "nodes": [{**n, "mode": 0} for n in template["nodes"]]}  # after un-bypassing the group
    assert_consistent_graph(whole)
    assert_widgets_fit(whole)
    ui_to_api(whole)  # every widget in its place

    def one(node_type: str) -> dict:
        (node,) = [n for n in refiner if n["type"] == node_type]
        return node

    (pasd_sampler,), (pasd_decode,) = nodes_of(active(template), "KSampler"), nodes_of(active(template), "VAEDecode")
    loader, sampler, decode = one("CheckpointLoaderSimple"), one("KSampler"), one("VAEDecode")
    assert widgets(loader) == {"ckpt_name": "sd_xl_refiner_1.0.safetensors"}
    # img2img at the official strength: KSampler's denoise samples the last steps × denoise of a `steps` schedule
    strength = pack_module("pasd_core.engine.refiner").REFINER_STRENGTH
    assert widgets(sampler) == {"seed": widgets(pasd_sampler)["seed"], "steps": round(PIPELINE_STEPS * strength),
                                "cfg": PIPELINE_GUIDANCE, "sampler_name": "euler", "scheduler": "ddim_uniform",
                                "denoise": strength}
    assert sampler["widgets_values"][1] == pasd_sampler["widgets_values"][1] == "fixed"  # the seeds stay equal
    assert source_of(template, sampler, "model") is loader
    encode = source_of(template, sampler, "latent_image")
    assert encode["type"] == "VAEEncode" and source_of(template, encode, "vae") is loader
    assert source_of(template, encode, "pixels") is pasd_decode  # PASD's decoded image, before its colour fix
    # the prompt PASD sampled with, an empty negative, the aesthetic scores, at the decoded image's size
    positive, negative = source_of(template, sampler, "positive"), source_of(template, sampler, "negative")
    (prompt,) = nodes_of(template, "PASDPrompt")
    assert source_of(template, positive, "text") is prompt and widgets(negative)["text"] == ""
    assert (widgets(positive)["ascore"], widgets(negative)["ascore"]) == AESTHETIC_SCORES
    size = one("GetImageSize")
    assert source_of(template, size, "image") is pasd_decode
    for condition in (positive, negative):
        assert condition["type"] == "CLIPTextEncodeSDXLRefiner" and source_of(template, condition, "clip") is loader
        assert [origin_of(template, condition, k) for k in ("width", "height")] == [(size["id"], 0), (size["id"], 1)]
    # then the refiner's VAE, PASD Color Fix against the picture, and a Save Image of its own
    assert source_of(template, decode, "samples") is sampler and source_of(template, decode, "vae") is loader
    fix = one("PASDColorFix")
    assert source_of(template, fix, "image") is decode
    assert source_of(template, fix, "reference")["type"] == "LoadImage"
    assert source_of(template, one("SaveImage"), "images") is fix
    text = note_text(template)  # the Note says how to run it and where it departs from the official code
    assert "Set Group Nodes to Always" in text and "Departs from the official code" in text
    assert "not pixel-identical" in text and "same value as PASD's KSampler" in text


def test_every_thumbnail_band_tells_its_template_apart():
    """The template browser shows 256 px cards: the band's kind, family and task differ from card to card."""
    spec = importlib.util.spec_from_file_location("make_thumbnails", ROOT / "tools" / "make_thumbnails.py")
    thumbnails = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(thumbnails)
    bands = {name: thumbnails.band(name, workflow)[1:] for name, workflow in ui_workflows().items()}
    assert len(set(bands.values())) == len(bands), bands
