"""A run's settings are validated once into a frozen plan, which the node, the CLI and the API build and the pipeline
only reads: a batch of N images validates once, image i gets seed + i, and a plan for another model is refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from pasd_core import params
from pasd_core.engine import plan as plan_module
from pasd_core.engine.plan import RunPlan
from pasd_core.errors import InputImageError
from pasd_core.model_family import SD15, SDXL
from pasd_core.params import ParamError
from support.comfyui import FakeComfyUI, make_models_dir, pack_module
from support.paths import PASD
from support.paths import SD15 as SD15_BASE
from support.settings import FAST_SETTINGS


def counting_validate(monkeypatch, module) -> list[tuple]:
    """Every call of `module.validate` (the table's one validation), recorded by the parameters it checked."""
    calls: list[tuple] = []
    real = module.validate

    def validate(values, table=module.SAMPLER_PARAMS, lcm=False):
        table = tuple(table)
        calls.append(tuple(p.name for p in table))
        return real(values, table, lcm)

    monkeypatch.setattr(module, "validate", validate)
    return calls


def test_a_batch_through_the_node_validates_its_settings_once(monkeypatch, tmp_path):
    FakeComfyUI(make_models_dir(tmp_path / "models")).install(monkeypatch)
    table = pack_module("pasd_core.params")
    calls = counting_validate(monkeypatch, table)
    engine = pack_module("pasd_core.engine.pipeline").PASDPipeline.from_pretrained(SD15_BASE, PASD, device="cpu",
                                                                                   dtype="fp32")
    pictures = torch.rand(3, 16, 16, 3)
    images, captions = pack_module("nodes.exact").PASDUpscale().upscale(pictures, engine, **FAST_SETTINGS)
    assert images.shape[0] == 3 and captions == "\n\n"
    assert calls == [tuple(p.name for p in table.SAMPLER_PARAMS)]  # once, for the whole batch


def test_the_api_validates_a_batch_once_and_each_image_gets_its_seed(monkeypatch, tiny_pipeline):
    pipeline = tiny_pipeline()
    calls = counting_validate(monkeypatch, params)
    seen: list[int] = []
    run = pipeline._sampler.run
    monkeypatch.setattr(pipeline._sampler, "run", lambda source, plan, *a, **k: (seen.append(plan["seed"]),
                                                                                 run(source, plan, *a, **k))[1])
    settings = {**FAST_SETTINGS, "seed": 2**64 - 2}
    outputs, prompts = pipeline.upscale_batch([Image.new("RGB", (8, 8))] * 3, settings)
    assert len(calls) == 1 and len(outputs) == len(prompts) == 3
    assert seen == [2**64 - 2, 2**64 - 1, 0]  # 64-bit seeds wrap as ComfyUI's seed widget does


def test_the_cli_validates_the_sampler_settings_once(monkeypatch, tmp_path):
    from pasd_core import __main__ as cli
    from pasd_core.__main__ import main

    calls = counting_validate(monkeypatch, params)
    monkeypatch.setattr(cli, "validate", params.validate)  # the CLI's own name for it (the loader's settings)
    source = tmp_path / "in.png"
    Image.new("RGB", (8, 8), (120, 80, 40)).save(source)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in FAST_SETTINGS.items()]
    assert main(["upscale", str(source), "-o", str(tmp_path / "out.png"), "--base-model", str(SD15_BASE),
                 "--pasd-model", str(PASD), "--device", "cpu", "--dtype", "fp32", *flags]) == 0
    sampler = tuple(p.name for p in params.SAMPLER_PARAMS)
    assert calls.count(sampler) == 1 and len(calls) == 2  # the sampler's settings, and the loader's


def test_a_plan_is_frozen_resolved_for_its_family_and_reads_like_its_settings():
    plan = RunPlan.build({"scale": 3}, family=SDXL)
    assert (plan["scale"], plan["process_size"], plan["latent_tile_size"]) == (3, 1280, 180)
    assert plan.control_type == "realisr" and dict(plan) == dict(plan.settings)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.family = SD15  # type: ignore[misc]
    with pytest.raises(TypeError):
        plan.settings["scale"] = 4  # type: ignore[index]
    assert plan.for_image(0) is plan and plan.for_image(2)["seed"] == plan["seed"] + 2


def test_bad_values_are_refused_by_name_when_the_plan_is_built():
    with pytest.raises(ParamError, match="steps=3 is out of range"):
        RunPlan.build({"steps": 3}, family=SD15)
    with pytest.raises(ParamError, match="steps=9 is out of range for the LCM fast mode"):
        RunPlan.build({"steps": 9}, family=SD15, lcm=True)
    with pytest.raises(ParamError, match="guidance_scale=nan is not a finite number"):
        RunPlan.build({"guidance_scale": float("nan")}, family=SD15)
    with pytest.raises(ParamError, match="control_type is chosen when the model loads"):
        RunPlan.build({"control_type": "grayscale"}, family=SD15)


def test_a_plan_made_for_another_model_is_refused(tiny_pipeline):
    pipeline = tiny_pipeline()
    with pytest.raises(ParamError, match="planned for a sdxl model"):
        pipeline.upscale(Image.new("RGB", (8, 8)), RunPlan.build(FAST_SETTINGS, family=SDXL))
    with pytest.raises(ParamError, match="LCM True"):
        pipeline.describe(Image.new("RGB", (8, 8)), RunPlan.build({"steps": 4}, family=SD15, lcm=True))


def test_planned_work_is_checked_from_sizes_alone():
    plan = RunPlan.build({"latent_tile_size": 8, "latent_tile_overlap": 0, "process_size": 4096}, family=SD15)
    with pytest.raises(InputImageError, match="denoising calls"):
        plan.check_work(4096, 4096)
    assert RunPlan.build(FAST_SETTINGS, family=SD15).check_work(16, 16) == FAST_SETTINGS["steps"]
    assert plan_module.SEED_SPACE == 2**64


def test_a_setting_the_run_ignores_is_said_not_refused():
    """Colorization keeps the input's size: a saved workflow with scale 2 still runs, and the run says so."""
    from pasd_core.engine.plan import RunPlan
    from pasd_core.params import GRAYSCALE

    assert RunPlan.build({"scale": 2}, family="sd15", control_type=GRAYSCALE).ignored == [
        "scale=2 is ignored: colorization keeps the input's size (set scale to 1)"]
    assert RunPlan.build({"scale": 1}, family="sd15", control_type=GRAYSCALE).ignored == []
    assert RunPlan.build({"scale": 2}, family="sd15").ignored == []
    # PASD-SDXL starts from pure noise: a workflow moved from SD1.5 with its own added noise is told so
    assert RunPlan.build({"added_noise_level": 500, "added_noise_mode": "exact"}, family="sdxl").ignored == [
        "added_noise_level=500 is ignored: it is for SD1.5 models and this one is SDXL",
        "added_noise_mode='exact' is ignored: it is for SD1.5 models and this one is SDXL"]
    assert RunPlan.build({}, family="sdxl").ignored == []  # defaults say nothing
