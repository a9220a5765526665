"""A fresh install, as a user meets it: empty model lists read as such (never `undefined`), and queueing a model
that is not on disk is answered before the run with its folder, where to get it and the download command; the
nodes describe themselves, their link inputs have tooltips, and the loader takes an optional replacement VAE."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from comfy_fixtures import CHECKPOINTS, FakeComfyUI, load_pack, make_models_dir, pack_module

pack = load_pack()
local = pack_module("nodes.local")
native = pack_module("nodes.native")
choices = pack_module("nodes.model_choices")
inputs = pack_module("nodes.inputs")

SD15_X2 = ("pasd/checkpoint-100000", "diffusers/stable-diffusion-v1-5", "none", "none")


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


def test_empty_model_lists_show_what_is_missing_instead_of_undefined(empty_models):
    declared = local.PASDModelLoader.INPUT_TYPES()
    combos = {**declared["required"], **declared["optional"]}
    # the front end shows a new node's combo as its first choice: every list has one
    assert all(spec[0] for spec in combos.values() if isinstance(spec[0], list))
    assert combos["pasd_model"][0] == [choices.NO_PASD_MODEL] and "models/pasd" in choices.NO_PASD_MODEL
    assert combos["base_model"][0] == [choices.NO_BASE_MODEL]
    assert combos["style_model"][0] == combos["lora"][0] == combos["vae"][0] == ["none"]


def test_queueing_a_missing_pasd_model_names_its_folder_link_and_download_command(empty_models):
    message = local.PASDModelLoader.VALIDATE_INPUTS(*SD15_X2)
    assert isinstance(message, str)
    models = os.path.realpath(empty_models)
    assert f"pasd_model 'pasd/checkpoint-100000' is not in models/pasd ({models}/pasd)" in message
    assert "https://huggingface.co/yangtao9009/PASD " in message
    assert f"python -m pasd_core download --family sd15 --models-dir {models}" in message
    assert f"cd {choices.PACK_DIR} &&" in message  # where `python -m pasd_core` runs
    assert f"base_model 'diffusers/stable-diffusion-v1-5' is not in models/diffusers ({models}/diffusers)" in message
    assert "the download command above fetches it" in message  # said once, not twice
    # the placeholder itself, queued as is, gets the same answer
    assert "is not in models/pasd" in local.PASDModelLoader.VALIDATE_INPUTS(choices.NO_PASD_MODEL,
                                                                             choices.NO_BASE_MODEL, "none", "none")


def test_the_adapter_loader_meets_a_fresh_install_as_the_engine_loader_does(empty_models):
    """The native templates' PASD Adapter Loader: a placeholder, not `undefined`; the folder, the link and the
    download command before the run, not "Value not in list"."""
    assert native.PASDAdapterLoader.INPUT_TYPES()["required"]["pasd_model"][0] == [choices.NO_PASD_MODEL]
    message = native.PASDAdapterLoader.VALIDATE_INPUTS("pasd_sdxl/checkpoint-200000")
    models = os.path.realpath(empty_models)
    assert f"pasd_model 'pasd_sdxl/checkpoint-200000' is not in models/pasd ({models}/pasd)" in message
    assert f"python -m pasd_core download --family sdxl --models-dir {models}" in message
    assert "https://huggingface.co/yangtao9009/PASD-SDXL" in message
    assert native.PASDAdapterLoader.VALIDATE_INPUTS(choices.NO_PASD_MODEL).startswith("pasd_model ")


def test_the_adapter_loader_passes_an_installed_checkpoint(models):
    assert native.PASDAdapterLoader.VALIDATE_INPUTS("pasd/checkpoint-100000") is True


def test_sdxl_and_light_names_get_their_own_download_command(empty_models):
    sdxl = local.PASDModelLoader.VALIDATE_INPUTS("pasd_sdxl/checkpoint-200000",
                                                 "diffusers/stable-diffusion-xl-base-1.0", "none", "none")
    assert "https://huggingface.co/yangtao9009/PASD-SDXL" in sdxl and "download --family sdxl " in sdxl
    assert "stabilityai/stable-diffusion-xl-base-1.0" in sdxl
    light = local.PASDModelLoader.VALIDATE_INPUTS("pasd_light/checkpoint-120000", *SD15_X2[1:])
    assert "download --family sd15 --variant pasd_light " in light


def test_installed_models_pass_and_a_missing_style_model_lora_or_vae_is_named_with_its_folder(models):
    assert local.PASDModelLoader.VALIDATE_INPUTS(*SD15_X2) is True
    assert local.PASDModelLoader.VALIDATE_INPUTS(*SD15_X2, vae="none") is True
    message = local.PASDModelLoader.VALIDATE_INPUTS(SD15_X2[0], SD15_X2[1], "toonyou_beta6.safetensors", "none")
    assert message.startswith("style_model 'toonyou_beta6.safetensors' is not in models/checkpoints (")
    assert "https://civitai.com/models/30240/toonyou" in message and "pick none" in message
    assert "pasd_model" not in message  # only what is missing
    assert "lora 'x.safetensors' is not in models/loras" in local.PASDModelLoader.VALIDATE_INPUTS(
        *SD15_X2[:3], "x.safetensors")
    assert "--fp16-fix-vae" in local.PASDModelLoader.VALIDATE_INPUTS(*SD15_X2, vae="fix.safetensors")


@pytest.mark.parametrize("name", ["../../etc", "/etc/passwd", "pasd/../../../secret", "pasd\\..\\x", "a\0b"])
def test_hostile_names_are_refused_before_the_run_without_touching_the_disk_outside(models, name):
    message = local.PASDModelLoader.VALIDATE_INPUTS(name, *SD15_X2[1:])
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
