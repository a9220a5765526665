"""Opt-in speed-ups: SDPA attention everywhere, channels-last within 1/255, torch.compile only when asked."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from pasd_core.engine.acceleration import accelerate, attention_processors
from pasd_core.engine.pipeline import PASDPipeline
from support.paths import PASD, PASD_LIGHT, SD15
from support.settings import FAST_SETTINGS

SETTINGS = {**FAST_SETTINGS, "scale": 2, "latent_tile_size": 8, "latent_tile_overlap": 2}  # tiled, as large outputs


def fresh_pipeline(variant: str = "pasd") -> PASDPipeline:
    """Its own pipeline: accelerate changes the models in place, so the session-wide ones stay untouched."""
    return PASDPipeline.from_pretrained(SD15, PASD_LIGHT if variant == "pasd_light" else PASD, device="cpu",
                                        dtype="fp32")


def picture() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))


@pytest.mark.parametrize("variant", ["pasd", "pasd_light"])
def test_every_attention_including_pixel_aware_runs_on_torch_sdpa(tiny_pipeline, variant):
    pipeline = tiny_pipeline(variant)
    assert attention_processors(pipeline) == {"AttnProcessor2_0"}
    pixel = [name for name in pipeline.models.unet.attn_processors
             if ".pixel_attentions." in name or ".attn2_plus." in name]
    assert pixel, "the PASD pixel-aware attentions are among the processors checked"


@pytest.mark.parametrize("variant", ["pasd", "pasd_light"])
def test_channels_last_stays_within_one_level_of_the_untouched_pipeline(tiny_pipeline, variant):
    expected = np.asarray(tiny_pipeline(variant).upscale(picture(), SETTINGS), dtype=np.int16)
    pipeline = accelerate(fresh_pipeline(variant), channels_last=True)
    for module in (pipeline.models.unet, pipeline.models.controlnet, pipeline.models.vae):
        kernels = [p for p in module.parameters() if p.ndim == 4]
        assert kernels and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    got = np.asarray(pipeline.upscale(picture(), SETTINGS), dtype=np.int16)
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1


class CompileSpy:
    """Stands in for torch.compile: records the call and returns the function unchanged (no compiling)."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, dict]] = []

    def __call__(self, function, **options):
        self.calls.append((getattr(function, "__self__", None), options))
        return function


@pytest.fixture()
def compile_spy(monkeypatch) -> CompileSpy:
    spy = CompileSpy()
    monkeypatch.setattr(torch, "compile", spy)
    return spy


def test_compile_happens_only_when_asked(compile_spy):
    pipeline = fresh_pipeline()
    accelerate(pipeline)
    accelerate(pipeline, channels_last=True)
    assert compile_spy.calls == []


def test_compile_wraps_unet_and_controlnet_in_place_and_the_pipeline_still_runs(compile_spy):
    pipeline = fresh_pipeline()
    models = pipeline.models
    unet, controlnet, keys = models.unet, models.controlnet, set(models.unet.state_dict())
    assert accelerate(pipeline, compile=True) is pipeline
    assert [module for module, _ in compile_spy.calls] == [unet, controlnet]
    assert all(options == {"mode": "default", "fullgraph": False} for _, options in compile_spy.calls)
    assert models.unet is unet and models.controlnet is controlnet and set(unet.state_dict()) == keys
    steps = []
    result = pipeline.upscale(picture(), SETTINGS, on_step=lambda: steps.append(1))
    assert result.size == (80, 80) and len(steps) == pipeline.count_steps(40, 40, SETTINGS)


def test_compile_mode_is_checked_and_passed_on(compile_spy):
    pipeline = fresh_pipeline()
    with pytest.raises(ValueError, match="compile_mode='fastest'"):
        accelerate(pipeline, compile=True, compile_mode="fastest")
    accelerate(pipeline, compile=True, compile_mode="reduce-overhead")
    assert {options["mode"] for _, options in compile_spy.calls} == {"reduce-overhead"}


@pytest.mark.skipif(not os.environ.get("PASD_TEST_COMPILE"),
                    reason="torch.compile takes minutes on CPU: set PASD_TEST_COMPILE=1 to run it")
def test_really_compiled_pipeline_stays_within_one_level(tiny_pipeline):
    expected = np.asarray(tiny_pipeline("pasd").upscale(picture(), SETTINGS), dtype=np.int16)
    pipeline = accelerate(fresh_pipeline(), compile=True)
    for _ in range(2):  # the second run reuses the compiled graphs
        got = np.asarray(pipeline.upscale(picture(), SETTINGS), dtype=np.int16)
        assert np.abs(got - expected).max() <= 1


@pytest.mark.parametrize("variant", ["pasd", "pasd_light"])
def test_the_denoising_call_traces_into_one_graph_each_with_no_break(tiny_pipeline, variant):
    """What torch.compile sees of one step: the ControlNet and the UNet, PACA's forward hooks included, are each one
    graph with no graph break (dynamo inlines the hooks), so compiling loses nothing to Python fallbacks."""
    models = tiny_pipeline(variant).models
    unet, controlnet = models.unet, models.controlnet
    latents, t = torch.randn(2, 4, 8, 8), torch.tensor(500)
    text = torch.randn(2, 77, unet.config.cross_attention_dim)
    embedding = controlnet.embed_condition(torch.rand(2, 3, 64, 64))

    def control(latents, text, embedding):
        return controlnet(latents, t, encoder_hidden_states=text, condition_embedding=embedding,
                          conditioning_scale=0.8, return_dict=False)

    def denoise(latents, text, down, mid):
        return unet(latents, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid, return_dict=False)[0]

    with torch.no_grad():
        down, mid = control(latents, text, embedding)
        calls = ((control, (latents, text, embedding)), (denoise, (latents, text, tuple(down), mid)))
        for function, arguments in calls:
            explained = torch._dynamo.explain(function)(*arguments)
            assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
