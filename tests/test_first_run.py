"""A fresh install, as a user meets it: empty model lists read as such (never `undefined`), and queueing a model
that is not on disk is answered before the run with its folder, where to get it and the download command; the
nodes describe themselves, their link inputs have tooltips, and the loader takes an optional replacement VAE."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.comfyui import FakeComfyUI, load_pack, make_models_dir, pack_module
from support.paths import CHECKPOINTS

pack = load_pack()
local = pack_module("nodes.exact")
native = pack_module("nodes.native")
choices = pack_module("nodes.model_choices")
downloads = pack_module("nodes.model_downloads")
inputs = pack_module("nodes.inputs")

SD15_X2 = ("pasd/checkpoint-100000", "diffusers/stable-diffusion-v1-5", "none", "none")


def loader_refusal(*args, **kwargs) -> str | bool:
    """What queueing the loader answers: True, or the message ComfyUI shows once (VALIDATE_INPUTS raises it)."""
    try:
        return local.PASDModelLoader.VALIDATE_INPUTS(*args, **kwargs)
    except choices.ModelsMissing as refusal:
        return str(refusal)


@pytest.fixture
def empty_models(tmp_path, monkeypatch) -> Path:
    """A fresh ComfyUI: its models folder holds no PASD model, base, style model, LoRA or VAE."""
    models = tmp_path / "ComfyUI" / "models"
    for kind in ("checkpoints", "loras", "vae", "diffusers"):
        (models / kind).mkdir(parents=True)
    FakeComfyUI(models).install(monkeypatch)
    return models


@pytest.fixture
def models(tmp_path, monkeypatch) -> Path:
    models = make_models_dir(tmp_path / "models")
    FakeComfyUI(models).install(monkeypatch)
    return models


def test_empty_model_lists_never_read_undefined(empty_models):
    declared = local.PASDModelLoader.INPUT_TYPES()
    combos = {**declared["required"], **declared["optional"]}
    # the front end shows a new node's combo as its first choice: every list has one (the official models are
    # listed before they are on disk; tests/test_first_run_download.py fetches them)
    assert all(spec[0] for spec in combos.values() if isinstance(spec[0], list))
    assert combos["style_model"][0] == combos["lora"][0] == ["none"]


def test_queueing_a_model_that_is_neither_on_disk_nor_official_names_its_folder_link_and_download_command(
        empty_models):
    message = loader_refusal("pasd/checkpoint-5", "diffusers/my-sd15", "none", "none")
    assert isinstance(message, str)
    models = os.path.realpath(empty_models)
    assert f"pasd_model 'pasd/checkpoint-5' is not in models/pasd ({models}/pasd)" in message
    assert "https://huggingface.co/yangtao9009/PASD " in message
    assert f"python -m pasd_core download --family sd15 --models-dir {models}" in message
    assert f"cd {downloads.PACK_DIR} &&" in message  # where `python -m pasd_core` runs
    assert f"base_model 'diffusers/my-sd15' is not in models/diffusers ({models}/diffusers)" in message
    assert "the download command above fetches it" in message  # said once, not twice


def test_offline_the_official_models_get_the_short_refusal(empty_models):
    """HF_HUB_OFFLINE is set for every test (conftest): the official names are refused in one short message."""
    message = loader_refusal(*SD15_X2)
    assert message.startswith("2 official model(s) this graph needs are not on disk, and HF_HUB_OFFLINE is set:")
    assert "python -m pasd_core download --family sd15 --models-dir" in message


def test_the_adapter_loader_meets_a_fresh_install_as_the_engine_loader_does(empty_models):
    """The native templates' PASD Adapter Loader: the official checkpoints listed, the short refusal offline, and
    the folder, the link and the download command for any other name, not "Value not in list"."""
    assert native.PASDAdapterLoader.INPUT_TYPES()["required"]["pasd_model"][0][0] == "pasd/checkpoint-100000"
    message = adapter_refusal("pasd_sdxl/checkpoint-200000")
    models = os.path.realpath(empty_models)
    assert f"- pasd_model 'pasd_sdxl/checkpoint-200000': the PASD 'pasd_sdxl' checkpoint, into {models}/pasd" in message
    assert f"python -m pasd_core download --family sdxl --models-dir {models}" in message
    message = adapter_refusal("pasd_sdxl/checkpoint-7")
    assert f"pasd_model 'pasd_sdxl/checkpoint-7' is not in models/pasd ({models}/pasd)" in message
    assert "https://huggingface.co/yangtao9009/PASD-SDXL" in message


def adapter_refusal(pasd_model: str) -> str | bool:
    try:
        return native.PASDAdapterLoader.VALIDATE_INPUTS(pasd_model)
    except choices.ModelsMissing as refusal:
        return str(refusal)


def test_the_adapter_loader_passes_an_installed_checkpoint(models):
    assert native.PASDAdapterLoader.VALIDATE_INPUTS("pasd/checkpoint-100000") is True


def test_sdxl_and_light_names_get_their_own_download_command(empty_models):
    sdxl = loader_refusal("pasd_sdxl/checkpoint-200000",
                                                 "diffusers/stable-diffusion-xl-base-1.0", "none", "none")
    assert "the PASD 'pasd_sdxl' checkpoint" in sdxl and "download --family sdxl " in sdxl
    assert "the SDXL 1.0 base" in sdxl
    light = loader_refusal("pasd_light/checkpoint-120000", *SD15_X2[1:])
    assert "download --family sd15 --variant pasd_light " in light


def test_installed_models_pass_and_a_missing_style_model_lora_or_vae_is_named_with_its_folder(models):
    assert loader_refusal(*SD15_X2) is True
    assert loader_refusal(*SD15_X2, vae="none") is True
    message = loader_refusal(SD15_X2[0], SD15_X2[1], "toonyou_beta6.safetensors", "none")
    assert message.startswith("style_model 'toonyou_beta6.safetensors' is not in models/checkpoints (")
    assert "https://civitai.com/models/30240/toonyou" in message and "pick none" in message
    assert "pasd_model" not in message  # only what is missing
    assert "lora 'x.safetensors' is not in models/loras" in loader_refusal(
        *SD15_X2[:3], "x.safetensors")
    assert "--fp16-fix-vae" in loader_refusal(*SD15_X2, vae="fix.safetensors")


@pytest.mark.parametrize("name", ["../../etc", "/etc/passwd", "pasd/../../../secret", "pasd\\..\\x", "a\0b"])
def test_hostile_names_are_refused_before_the_run_without_touching_the_disk_outside(models, name):
    message = loader_refusal(name, *SD15_X2[1:])
    assert isinstance(message, str) and message.startswith("pasd_model ")
    assert "/etc/passwd" not in message.replace(repr(name), "")  # names itself, lists nothing outside


def test_the_loaders_vae_input_is_optional_and_reaches_the_engine(models, monkeypatch):
    vae_folder = models / "vae" / "sdxl-vae-fp16-fix"
    vae_folder.mkdir(parents=True)
    (vae_folder / "config.json").write_text("{}")
    (vae_folder / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (models / "vae" / "single.safetensors").write_bytes(b"")
    declared = local.PASDModelLoader.INPUT_TYPES()
    assert "vae" not in declared["required"]
    assert declared["optional"]["vae"][0] == ["none", "sdxl-vae-fp16-fix", "single.safetensors"]
    seen = {}
    pipeline = pack_module("pasd_core.engine.pipeline").PASDPipeline
    monkeypatch.setattr(pipeline, "from_pretrained", classmethod(lambda cls, base, pasd, **kw: seen.update(kw)))
    local.PASDModelLoader().load(*SD15_X2, device="cpu", dtype="fp32")  # a prompt without vae: none
    assert seen["vae"] is None
    for choice, expected in (("sdxl-vae-fp16-fix", vae_folder), ("single.safetensors", models / "vae" /
                                                                  "single.safetensors")):
        local.PASDModelLoader().load(*SD15_X2, vae=choice, device="cpu", dtype="fp32")
        assert Path(seen["vae"]) == expected
    assert Path(local.base_model_path(SD15_X2[1])).resolve() == CHECKPOINTS / "stable-diffusion-v1-5"


def test_every_node_describes_itself_is_found_by_what_users_search_and_explains_its_links():
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert len(cls.DESCRIPTION) > 40, name
        assert {"super resolution", "upscale", "restore", "enhance", "pasd"} <= set(cls.SEARCH_ALIASES)
        declared = cls.INPUT_TYPES()
        for input_name, spec in {**declared["required"], **declared.get("optional", {})}.items():
            assert len(spec) == 2 and spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"


# --- the prompt stage's models and colorization ---------------------------------------------------

def comfyui_validation_errors(node: type, inputs: dict) -> list[str]:
    """The errors ComfyUI lists for a node's VALIDATE_INPUTS, as execution.py validate_inputs makes them (0.3.64 and
    0.38 alike): a returned string once per VALIDATE_INPUTS argument present in the prompt ("<input> - <string>"),
    an exception raised there once (caught as "Exception when validating (inner) node")."""
    import inspect

    arguments = [name for name in inspect.getfullargspec(node.VALIDATE_INPUTS).args if name in inputs]
    try:
        result = node.VALIDATE_INPUTS(**{name: inputs[name] for name in arguments})
    except Exception as error:  # noqa: BLE001 - what ComfyUI catches
        return [f"Exception when validating inner node: {error}"]
    return [] if result is True else [f"Custom validation failed for node: {name} - {result}" for name in arguments]


LOADER_PROMPT = {"pasd_model": SD15_X2[0], "base_model": SD15_X2[1], "style_model": "none", "lora": "none",
                 "lcm_lora": "none", "vae": "none", "control_type": "realisr", "caption_model": "coca_ViT-L-14",
                 "classifier_model": "none"}
PROMPT_ONLY = {"style_strength": 1.0, "device": "auto"}  # widgets ComfyUI does not pass to VALIDATE_INPUTS


def test_a_missing_captioner_is_refused_once_with_the_command_that_fetches_it(models):
    shown = comfyui_validation_errors(local.PASDModelLoader, {**LOADER_PROMPT, **PROMPT_ONLY})
    assert len(shown) == 1  # not once per VALIDATE_INPUTS argument (9 here)
    message = shown[0]
    root = os.path.realpath(models)
    assert message.count("- caption_model 'coca_ViT-L-14': the CoCa captioner") == 1
    assert f"into {root}/pasd_prompt" in message
    assert f"python -m pasd_core download --family sd15 --captioner --models-dir {root}" in message
    assert "pasd_model" not in message  # only what is missing
    # two missing models: one line each, one command for both
    both = comfyui_validation_errors(local.PASDModelLoader, {**LOADER_PROMPT, "classifier_model": "resnet50"})
    assert len(both) == 1 and both[0].count("\n- ") == 2
    assert "download --family sd15 --captioner --classifier" in both[0]
    # a captioner name that is not the official one keeps the long explanation with its link
    other = comfyui_validation_errors(local.PASDModelLoader, {**LOADER_PROMPT, "caption_model": "my_coca"})[0]
    assert "caption_model 'my_coca' is not in models/pasd_prompt" in other
    assert "https://huggingface.co/laion/mscoco_finetuned_CoCa-ViT-L-14-laion2B-s13B-b90k" in other


def test_the_captioner_dropdown_lists_captioner_folders_and_the_official_one(tmp_path, monkeypatch):
    empty = make_models_dir(tmp_path / "empty")
    FakeComfyUI(empty).install(monkeypatch)
    declared = local.PASDModelLoader.INPUT_TYPES()["optional"]
    assert declared["caption_model"][0] == ["coca_ViT-L-14", "none"]  # the official one, fetched on first use
    assert declared["classifier_model"][0] == ["none", "resnet50"]
    stocked = make_models_dir(tmp_path / "stocked", captioner=True)
    classifier = stocked / "pasd_prompt" / "resnet50"
    classifier.mkdir()
    (classifier / "model.safetensors").write_bytes(b"")
    (classifier / "categories.txt").write_text("tench\n")
    FakeComfyUI(stocked).install(monkeypatch)
    declared = local.PASDModelLoader.INPUT_TYPES()["optional"]
    assert declared["caption_model"][0] == ["coca_tiny", "coca_ViT-L-14", "none"]
    assert declared["classifier_model"][0] == ["none", "resnet50"]
    assert loader_refusal(**{**LOADER_PROMPT, "caption_model": "coca_tiny", "classifier_model": "resnet50"}) is True


def test_colorization_is_refused_before_the_run_on_sdxl_or_without_the_colour_scheduler(tmp_path, monkeypatch):
    root = make_models_dir(tmp_path / "models", sdxl=True, color=True)
    FakeComfyUI(root).install(monkeypatch)
    gray = {**LOADER_PROMPT, "caption_model": "none", "control_type": "grayscale"}
    assert loader_refusal(**{**gray, "pasd_model": "pasd_light_color/checkpoint-180000"}) is True
    sdxl = loader_refusal(**{**gray, "pasd_model": "pasd_sdxl/checkpoint-200000"})
    assert "PASD-SD1.5 task" in sdxl and "PASD-SDXL checkpoint" in sdxl
    no_scheduler = loader_refusal(**gray)  # pasd/checkpoint-100000 has no scheduler/ beside it
    assert "scheduler" in no_scheduler and "download --variant pasd_light_color" in no_scheduler
    assert "is not allowed" in loader_refusal(**{**gray, "control_type": "sepia"})
