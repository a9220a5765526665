"""PASD's models as ComfyUI's own: on a fake ComfyUI model manager shaped like 0.3.64 (ModelPatcher) and like 0.38
(CoreModelPatcher, dynamic), every part of a loaded PASD model and every prompt model is held by a host patcher,
loaded by load_models_gpu before its pass and left loaded; a second run loads nothing, and a run after the host
evicted everything loads again and gives the same image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from support.comfyui import FakeComfyUI, make_models_dir, pack_module
from support.settings import FAST_SETTINGS

exact = pack_module("nodes.exact")
prompt_nodes = pack_module("nodes.prompt")
placement = pack_module("pasd_core.placement")
LOADER = ("pasd/checkpoint-100000", "diffusers/stable-diffusion-v1-5", "none", "none")


def batch(count: int = 2) -> torch.Tensor:
    pictures = [np.asarray(Image.new("RGB", (16, 16), (40 * i, 90, 160)), dtype=np.float32) / 255 for i in range(count)]
    return torch.from_numpy(np.stack(pictures))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return make_models_dir(tmp_path_factory.mktemp("models"), captioner=True)


def host(monkeypatch, models_dir, version: str) -> FakeComfyUI:
    return FakeComfyUI(models_dir, host=version).install(monkeypatch)


@pytest.mark.parametrize("version", ["0.3.64", "0.38"])
def test_every_part_is_a_host_model_loaded_once_and_again_after_an_eviction(monkeypatch, models_dir, version):
    comfyui = host(monkeypatch, models_dir, version)
    (pipeline,) = exact.PASDModelLoader().load(*LOADER, device="cpu", dtype="fp32", caption_model="coca_tiny")
    patchers = pipeline.models.placement.patchers
    assert set(patchers) == {placement.TEXT, placement.DENOISER, placement.VAE, placement.CAPTIONER}
    assert comfyui.loads == [] and comfyui.load_calls == []  # loading the model moves nothing yet
    dynamic = version == "0.38"
    assert all(pack_module("nodes.host").is_dynamic(p) is dynamic for p in patchers.values())

    settings = {**FAST_SETTINGS, "high_level_info": "caption"}
    first, captions = exact.PASDUpscale().upscale(batch(), pipeline, **settings)
    assert sorted(p.model.part for p in comfyui.loads) == sorted(patchers)  # each part loaded once, by the host
    passes = [call["models"][0].model.part for call in comfyui.load_calls]
    # the batch is captioned in one pass, then each image: text, VAE (encode), denoiser, VAE (decode)
    assert passes == [placement.CAPTIONER] + [placement.TEXT, placement.VAE, placement.DENOISER, placement.VAE] * 2
    assert all(call["force_full_load"] is not dynamic for call in comfyui.load_calls)  # dynamic asserts not full
    decode = comfyui.load_calls[-1]
    assert decode["memory_required"] > 0  # the VAE's decode peak is asked for

    loads = len(comfyui.loads)
    second, _ = exact.PASDUpscale().upscale(batch(), pipeline, **settings)
    assert len(comfyui.loads) == loads  # nothing loaded again: the models stayed where the host put them
    torch.testing.assert_close(first, second, rtol=0, atol=0)

    comfyui.unload_all()  # another graph needed the whole device
    third, third_captions = exact.PASDUpscale().upscale(batch(), pipeline, **settings)
    assert len(comfyui.loads) == 2 * loads and third_captions == captions
    torch.testing.assert_close(first, third, rtol=0, atol=0)


def test_the_output_tells_the_ram_cache_its_weights_and_its_models(monkeypatch, models_dir):
    host(monkeypatch, models_dir, "0.38")
    (pipeline,) = exact.PASDModelLoader().load(*LOADER, device="cpu", dtype="fp32")
    assert pipeline.patcher is pipeline.models.placement.patchers[placement.DENOISER]
    assert pipeline.is_dynamic() and len(pipeline.get_models()) == 3
    cached = pipeline._comfy_cache_tensors()
    weights = {id(p) for m in (pipeline.models.unet, pipeline.models.vae) for p in m.parameters()}
    assert weights <= {id(t) for t in cached}


def test_the_loader_and_pasd_prompt_share_one_captioner_and_its_patcher(monkeypatch, models_dir):
    comfyui = host(monkeypatch, models_dir, "0.3.64")
    monkeypatch.setattr(prompt_nodes, "_STAGES", {})  # this test's stages only
    (pipeline,) = exact.PASDModelLoader().load(*LOADER, device="cpu", dtype="fp32", caption_model="coca_tiny")
    node = prompt_nodes.PASDPrompt()
    prompt, captions = node.build(batch(3), "sd15", "coca_tiny", "none", prompt="", high_level_info="caption",
                                  added_prompt="auto")
    (stage,) = prompt_nodes._STAGES.values()
    assert stage.captioner is pipeline.prompt_stage.captioner  # one CoCa in memory for both nodes
    assert stage.placement.patchers[placement.CAPTIONER] is pipeline.models.placement.patchers[placement.CAPTIONER]
    assert len(captions.splitlines()) == 3
    assert [call["models"][0].model.part for call in comfyui.load_calls] == [placement.CAPTIONER]  # one pass
    assert len(comfyui.loads) == 1


def test_without_a_model_manager_the_engine_places_its_models_itself(monkeypatch, models_dir):
    FakeComfyUI(models_dir).install(monkeypatch)  # folders and progress, but no comfy.model_patcher
    (pipeline,) = exact.PASDModelLoader().load(*LOADER, device="cpu", dtype="fp32")
    assert isinstance(pipeline.models.placement, placement.LocalPlacement)
    images, _ = exact.PASDUpscale().upscale(batch(1), pipeline, **FAST_SETTINGS)
    assert images.shape == (1, 16, 16, 3)
