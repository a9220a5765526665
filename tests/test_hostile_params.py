"""NaN and infinite parameter values: every float parameter refuses them, from Python, JSON, the CLI (local
and fal, before anything loads or is sent) and the nodes, with a message that names the parameter."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from pasd_core.__main__ import main
from pasd_core.params import PARAMS, ParamError, validate
from support.comfyui import FakePipeline, pack_module
from support.paths import PASD

FLOAT_PARAMS = [p for p in PARAMS if p.kind is float]
NOT_FINITE = ["nan", "NaN", " inf", "-inf", "1e999", float("nan"), float("inf"), -float("inf"), 10**400]


def test_there_are_float_parameters_to_check():
    assert {p.name for p in FLOAT_PARAMS} >= {"guidance_scale", "conditioning_scale", "style_strength"}


@pytest.mark.parametrize("param", FLOAT_PARAMS, ids=lambda p: p.name)
@pytest.mark.parametrize("value", NOT_FINITE, ids=repr)
def test_every_float_parameter_refuses_values_that_are_not_finite(param, value):
    with pytest.raises(ParamError, match=rf"^{param.name}=.* is not a finite number: use a value between"):
        validate({param.name: value}, [param])


@pytest.mark.parametrize("text", ['{"guidance_scale": NaN}', '{"guidance_scale": Infinity}',
                                  '{"guidance_scale": 1e999}', '{"guidance_scale": "nan"}'])
def test_json_settings_with_nan_or_infinity_are_refused(text):
    with pytest.raises(ParamError, match="guidance_scale=.* is not a finite number"):
        validate(json.loads(text))


def test_whole_number_parameters_refuse_them_too():
    for value in (float("nan"), float("inf"), "nan", "1e999"):
        with pytest.raises(ParamError, match="steps=.* is not a whole number"):
            validate({"steps": value})


def test_finite_values_still_pass():
    settings = validate({"guidance_scale": " 7.5 ", "conditioning_scale": 1})
    assert settings["guidance_scale"] == 7.5 and settings["conditioning_scale"] == 1.0
    assert not any(math.isnan(v) for v in settings.values() if isinstance(v, float))


# --- the CLI ------------------------------------------------------------------------------------------

@pytest.fixture
def source(tmp_path):
    path = tmp_path / "in.png"
    Image.new("RGB", (12, 8), (20, 140, 220)).save(path)
    return path


def assert_refused(capsys, code: int, output, *words: str) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert all(w in err for w in words), err
    assert not output.exists()


@pytest.mark.parametrize("flags, words", [
    (["--conditioning-scale", "nan"], ["conditioning_scale=nan is not a finite number", "between 0.1 and 1.0"]),
    (["--guidance-scale", "inf"], ["guidance_scale=inf is not a finite number"]),
    (["--guidance-scale", "1e999"], ["guidance_scale=inf is not a finite number"]),
    (["--style-strength", "nan"], ["style_strength=nan"]),
    (["--lora-strength=-inf"], ["lora_strength=-inf"]),
])
def test_local_cli_refuses_them_before_loading(source, tmp_path, capsys, flags, words):
    output = tmp_path / "out.png"
    code = main(["upscale", str(source), "-o", str(output), "--base-model", str(tmp_path / "nowhere"),
                 "--pasd-model", str(PASD), *flags])
    assert_refused(capsys, code, output, *words)  # exit 2, not the 1 that loading from nowhere would give


@pytest.mark.parametrize("flags, words", [
    (["--conditioning-scale", "nan"], ["conditioning_scale=nan is not a finite number"]),
    (["--guidance-scale=-inf"], ["guidance_scale=-inf is not a finite number"]),
])
def test_fal_cli_refuses_them_before_any_request(source, tmp_path, capsys, stub, flags, words):
    output = tmp_path / "out.png"
    code = main(["upscale", str(source), "-o", str(output), "--remote", "fal", *flags])
    assert_refused(capsys, code, output, *words)
    assert stub.recorded == []


# --- the nodes ----------------------------------------------------------------------------------------

local_nodes = pack_module("nodes.exact")
remote_nodes = pack_module("nodes.remote")
table = pack_module("pasd_core.params")


def test_upscale_node_refuses_them_before_any_work():
    pipeline = FakePipeline()
    values = {**table.defaults(table.SAMPLER_PARAMS), "conditioning_scale": float("nan")}
    with pytest.raises(table.ParamError, match="conditioning_scale=nan is not a finite number"):
        local_nodes.PASDUpscale().upscale(torch.rand(1, 8, 8, 3), pipeline, **values)
    assert pipeline.settings == [] and pipeline.described == []


def test_loader_node_refuses_them_before_loading():
    with pytest.raises(table.ParamError, match="style_strength=nan"):
        local_nodes.PASDModelLoader().load("pasd/checkpoint-100000", "diffusers/stable-diffusion-v1-5", "none",
                                           "none", style_strength=float("nan"))


def test_fal_node_refuses_them_before_any_request(stub):
    values = {**table.defaults(table.REMOTE_PARAMS), "guidance_scale": float("inf")}
    with pytest.raises(table.ParamError, match="guidance_scale=inf is not a finite number"):
        remote_nodes.PASDUpscaleFal().upscale(torch.rand(1, 8, 8, 3), **values)
    assert stub.recorded == []
