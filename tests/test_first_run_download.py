"""A first run that just works: the loaders fetch the official models a graph needs and are missing, into ComfyUI's
own model folders, with ComfyUI's progress bar and a console line per file, checking every file against the hub's
checksum before keeping it; offline, or with auto_download off, one short refusal names each missing model and one
command that fetches them all. The hub is a stub on 127.0.0.1 serving the tiny official-layout checkpoints."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from support.comfyui import FakeComfyUI, load_pack, pack_module
from support.hub_repos import tiny_official_repos
from support.hub_stub import Fault, HubStub
from support.paths import CHECKPOINTS

load_pack()
local = pack_module("nodes.exact")
native = pack_module("nodes.native")
prompt_node = pack_module("nodes.prompt")
choices = pack_module("nodes.model_choices")
downloads = pack_module("nodes.model_downloads")

SD15 = {"pasd_model": "pasd/checkpoint-100000", "base_model": "diffusers/stable-diffusion-v1-5", "style_model": "none",
        "lora": "none", "caption_model": "none"}
UNET = "pasd/checkpoint-100000/unet/diffusion_pytorch_model.safetensors"


def refusal(node: type, **inputs) -> str | bool:
    try:
        return node.VALIDATE_INPUTS(**inputs)
    except choices.ModelsMissing as refused:
        return str(refused)


@pytest.fixture
def fresh(tmp_path, monkeypatch) -> tuple[FakeComfyUI, Path]:
    """A ComfyUI whose models folder holds nothing."""
    models = tmp_path / "ComfyUI" / "models"
    for kind in ("checkpoints", "loras", "vae", "diffusers"):
        (models / kind).mkdir(parents=True)
    return FakeComfyUI(models).install(monkeypatch), models


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with HubStub(tiny_official_repos()) as stub:
        stub.point_hub_here(monkeypatch, tmp_path / "hf_home")
        yield stub


@pytest.fixture
def engine_loads(monkeypatch) -> dict:
    """What the loader hands the engine (the engine itself is not run here)."""
    seen: dict = {}
    pipeline = pack_module("pasd_core.engine.pipeline").PASDPipeline
    monkeypatch.setattr(pipeline, "from_pretrained",
                        classmethod(lambda cls, base, pasd, **kw: seen.update(base=base, pasd=pasd, **kw)))
    return seen


def test_a_fresh_install_lists_the_official_models_before_they_are_on_disk(fresh):
    declared = local.PASDModelLoader.INPUT_TYPES()
    combos = {**declared["required"], **declared["optional"]}
    assert combos["pasd_model"][0] == ["pasd/checkpoint-100000", "pasd_light/checkpoint-120000",
                                       "pasd_sdxl/checkpoint-200000"]
    assert combos["base_model"][0] == ["diffusers/stable-diffusion-v1-5", "diffusers/stable-diffusion-xl-base-1.0"]
    assert combos["caption_model"][0] == ["coca_ViT-L-14", "none"]  # the official default, first
    assert combos["classifier_model"][0] == ["none", "resnet50"]
    assert combos["vae"][0] == ["none", "sdxl-vae-fp16-fix"]
    assert combos["lcm_lora"][0] == ["none", "lcm-lora-sdv1-5/pytorch_lora_weights.safetensors"]
    assert combos["lora"][0] == ["none"]  # not an official model: nothing to offer
    assert combos["auto_download"] == ("BOOLEAN", {"default": True, "tooltip": downloads.AUTO_DOWNLOAD_TOOLTIP})
    assert native.PASDAdapterLoader.INPUT_TYPES()["required"]["pasd_model"][0] == combos["pasd_model"][0]


def test_the_loader_fetches_what_it_needs_on_first_run_then_loads_it(fresh, hub, engine_loads, caplog):
    comfy, models = fresh
    assert refusal(local.PASDModelLoader, **SD15) is True  # online: the run will fetch them
    with caplog.at_level(logging.INFO):
        local.PASDModelLoader().load(**SD15, device="cpu", dtype="fp32")
    checkpoint = models / "pasd" / "pasd" / "checkpoint-100000"
    assert Path(engine_loads["pasd"]) == checkpoint and Path(engine_loads["base"]) == models / "diffusers" / \
        "stable-diffusion-v1-5"
    fixture = CHECKPOINTS / "pasd" / "checkpoint-100000"
    for part in ("unet", "controlnet"):
        for name in ("config.json", "diffusion_pytorch_model.safetensors"):
            assert (checkpoint / part / name).read_bytes() == (fixture / part / name).read_bytes()
    assert not (models / "diffusers" / "stable-diffusion-v1-5" / "unet").exists()  # PASD brings its own UNet
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("PASD: downloading")]
    assert len(lines) == 4 + 10  # a line per file: the checkpoint's 4, the base's 10
    assert f"PASD: downloading yangtao9009/PASD/{UNET} (" in "\n".join(lines)
    assert comfy.ticks and comfy.bar_totals[-1] == 100  # ComfyUI's bar, in percent of each repository's bytes
    # the staging folder is beside the model folders: no model list ever showed a file before it was checked
    assert not any(p.is_file() for p in (models / ".pasd_download").rglob("*") if ".cache" not in p.parts)
    assert choices.pasd_models_on_disk() == ["pasd/checkpoint-100000"]
    asked = len(hub.recorded)
    local.PASDModelLoader().load(**SD15, device="cpu", dtype="fp32")  # a second run: nothing fetched
    assert len(hub.recorded) == asked


def test_a_file_that_arrives_damaged_is_never_kept_and_the_next_run_resumes(fresh, hub, engine_loads):
    comfy, models = fresh
    hub.misbehave("yangtao9009/PASD", UNET, Fault("corrupt", times=1))
    with pytest.raises(pack_module("pasd_core.errors").ModelError) as caught:
        local.PASDModelLoader().load(**SD15, device="cpu", dtype="fp32")
    message = str(caught.value)
    assert UNET in message and "arrived damaged" in message and "queue the prompt again" in message
    assert not (models / "pasd" / UNET).exists() and not engine_loads  # nothing wrong kept, nothing loaded
    kept = {p.name for p in (models / "pasd" / "pasd" / "checkpoint-100000").rglob("*") if p.is_file()}
    assert kept  # the files checked before the damaged one stay
    hub.recorded.clear()
    local.PASDModelLoader().load(**SD15, device="cpu", dtype="fp32")
    assert (models / "pasd" / UNET).read_bytes() == (CHECKPOINTS / UNET).read_bytes()
    fetched = {call.file for call in hub.calls("resolve")}
    assert UNET in fetched and not fetched & {f"pasd/checkpoint-100000/{part}/config.json" for part in
                                              ("unet", "controlnet")}  # only what was missing


@pytest.mark.parametrize("fault", [Fault("truncate"), Fault("fail", status=503), Fault("foreign_redirect")],
                         ids=["truncated", "server error", "redirect to a dead host"])
def test_a_failed_transfer_in_the_loader_keeps_nothing_and_says_queueing_again_resumes(fresh, hub, engine_loads,
                                                                                        fault):
    _, models = fresh
    hub.misbehave("yangtao9009/PASD", UNET, fault)
    with pytest.raises(pack_module("pasd_core.errors").ModelError, match="queue the prompt again.*resumes"):
        local.PASDModelLoader().load(**SD15, device="cpu", dtype="fp32")
    assert not (models / "pasd" / UNET).exists() and not engine_loads


def test_offline_the_loader_refuses_in_one_short_message_before_any_work(fresh, monkeypatch):
    _, models = fresh
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = refusal(local.PASDModelLoader, **{**SD15, "caption_model": "coca_ViT-L-14"})
    root = os.path.realpath(models)
    lines = message.splitlines()
    assert lines[0] == "3 official model(s) this graph needs are not on disk, and HF_HUB_OFFLINE is set:"
    assert lines[1] == f"- pasd_model 'pasd/checkpoint-100000': the PASD 'pasd' checkpoint, into {root}/pasd"
    assert lines[2].startswith("- base_model 'diffusers/stable-diffusion-v1-5': the Stable Diffusion 1.5 base, into")
    assert lines[3].startswith("- caption_model 'coca_ViT-L-14': the CoCa captioner")
    assert lines[4].endswith(f"python -m pasd_core download --family sd15 --captioner --models-dir {root}")
    assert "running it again resumes" in message and len(lines) == 6


def test_with_auto_download_off_the_refusal_says_so(fresh, hub):
    message = refusal(local.PASDModelLoader, **SD15, auto_download=False)
    assert "auto_download is off" in message.splitlines()[0] and not hub.recorded


def test_an_unreachable_hub_is_refused_up_front(fresh, hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.dead_url)
    assert "cannot be reached" in refusal(local.PASDModelLoader, **SD15).splitlines()[0]


def test_a_name_that_is_neither_on_disk_nor_official_keeps_its_long_explanation(fresh, hub):
    message = refusal(local.PASDModelLoader, **{**SD15, "pasd_model": "pasd/checkpoint-5"})
    assert message.startswith("pasd_model 'pasd/checkpoint-5' is not in models/pasd")


def test_the_adapter_loader_fetches_its_checkpoint_too(fresh, hub, monkeypatch):
    _, models = fresh
    assert refusal(native.PASDAdapterLoader, pasd_model="pasd_light/checkpoint-120000") is True
    def stop(node: str) -> None:
        raise RuntimeError("stop")

    monkeypatch.setattr(pack_module("nodes.native.nodes").host, "require_comfyui", stop)
    with pytest.raises(RuntimeError, match="stop"):  # fetched and checked; ComfyUI's side is not faked here
        native.PASDAdapterLoader().load("pasd_light/checkpoint-120000")
    assert (models / "pasd" / "pasd_light" / "checkpoint-120000" / "unet" / "config.json").is_file()
    message = refusal(native.PASDAdapterLoader, pasd_model="pasd_sdxl/checkpoint-200000", auto_download=False)
    assert "--family sdxl" in message and "auto_download is off" in message


def test_pasd_prompt_fetches_only_the_model_its_mode_needs(fresh, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    inputs = {"caption_model": "coca_ViT-L-14", "classifier_model": "resnet50"}
    message = refusal(prompt_node.PASDPrompt, high_level_info="classification", **inputs)
    assert "resnet50" in message and "coca" not in message and "--classifier" in message
    assert refusal(prompt_node.PASDPrompt, high_level_info="none", **inputs) is True


def test_the_stop_button_ends_a_download_and_keeps_what_was_checked(fresh, hub, engine_loads):
    comfy, models = fresh
    comfy.interrupt_after = 1  # cancel at the first progress report
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        local.PASDModelLoader().load(**SD15, device="cpu", dtype="fp32")
    assert not engine_loads and not (models / "pasd" / UNET).exists()


def test_the_captioner_is_fetched_into_models_pasd_prompt_with_its_config(fresh, monkeypatch, tmp_path):
    _, models = fresh
    repo = "laion/mscoco_finetuned_CoCa-ViT-L-14-laion2B-s13B-b90k"
    with HubStub({repo: {"open_clip_pytorch_model.bin": b"\1" * 4096, "README.md": b"# CoCa\n"}}) as stub:
        stub.point_hub_here(monkeypatch, tmp_path / "hf_home")
        assert refusal(prompt_node.PASDPrompt, high_level_info="caption", caption_model="coca_ViT-L-14",
                       classifier_model="none") is True
        choices.fetch_if_missing({"caption_model": "coca_ViT-L-14"}, True)  # what PASD Prompt's run does first
    folder = models / "pasd_prompt" / "coca_ViT-L-14"
    assert (folder / "open_clip_pytorch_model.bin").read_bytes() == b"\1" * 4096
    assert (folder / "open_clip_config.json").is_file() and choices.captioners_on_disk() == ["coca_ViT-L-14"]
    assert not choices.official_missing({"caption_model": "coca_ViT-L-14"})


def test_the_sdxl_refiner_is_a_loader_input_fetched_like_the_others(fresh, engine_loads, monkeypatch):
    _, models = fresh
    declared = local.PASDModelLoader.INPUT_TYPES()["optional"]
    assert declared["refiner"][0] == ["none", "diffusers/stable-diffusion-xl-refiner-1.0"]
    assert list(declared)[-2:] == ["refiner", "auto_download"]  # after every older input: saved widgets keep places
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sdxl = {**SD15, "pasd_model": "pasd_sdxl/checkpoint-200000", "base_model": "diffusers/stable-diffusion-xl-base-1.0"}
    message = refusal(local.PASDModelLoader, **sdxl, refiner="diffusers/stable-diffusion-xl-refiner-1.0")
    assert "- refiner 'diffusers/stable-diffusion-xl-refiner-1.0': the SDXL 1.0 refiner, into" in message
    assert "download --family sdxl --refiner --models-dir" in message
    assert "refiner 'diffusers/mine' is not in models/diffusers" in refusal(local.PASDModelLoader, **sdxl,
                                                                            refiner="diffusers/mine")
    # a refiner on disk (its model_index.json asks for aesthetic scores) is listed and reaches the engine
    folder = models / "diffusers" / "my-refiner"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"requires_aesthetics_score": true}')
    assert "diffusers/my-refiner" in local.PASDModelLoader.INPUT_TYPES()["optional"]["refiner"][0]
    assert "diffusers/my-refiner" not in choices.official_choices("refiner")
    for part in ("pasd/pasd/checkpoint-100000", "diffusers/stable-diffusion-v1-5"):  # on disk: nothing to fetch
        (models / part).parent.mkdir(parents=True, exist_ok=True)
        (models / part).symlink_to(CHECKPOINTS / part.split("/", 1)[1], target_is_directory=True)
    local.PASDModelLoader().load(**SD15, refiner="diffusers/my-refiner", device="cpu", dtype="fp32")
    assert Path(engine_loads["refiner"]) == folder


def test_a_copy_cut_short_is_missing_for_every_loader(fresh, monkeypatch):
    """The marker files alone (a download stopped before the weights) do not make a model present."""
    _, models = fresh
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoint = models / "pasd" / "pasd" / "checkpoint-100000"
    for part in ("unet", "controlnet"):
        (checkpoint / part).mkdir(parents=True)
        (checkpoint / part / "config.json").write_text("{}")
    assert "pasd/checkpoint-100000" in choices.pasd_models_on_disk()  # listed, as ComfyUI would list it
    assert "- pasd_model 'pasd/checkpoint-100000'" in refusal(native.PASDAdapterLoader,
                                                               pasd_model="pasd/checkpoint-100000")
    assert "- pasd_model 'pasd/checkpoint-100000'" in refusal(local.PASDModelLoader, **SD15)


def test_the_refusals_name_the_right_family_and_no_command_that_is_not_there(fresh, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = refusal(local.PASDModelLoader, **{**SD15, "base_model": "diffusers/mine"})
    assert "base_model 'diffusers/mine' is not in" in message and "command above" not in message
    sdxl_prompt = refusal(prompt_node.PASDPrompt, high_level_info="caption", caption_model="coca_ViT-L-14",
                          classifier_model="none", family="sdxl")
    assert "download --family sdxl --captioner" in sdxl_prompt
    assert "family='sd21' is not allowed" in refusal(prompt_node.PASDPrompt, high_level_info="none",
                                                      caption_model="none", classifier_model="none", family="sd21")
