"""The shared parameter table: fal's values, validation messages, and everything derived from it."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from pasd_core import params
from pasd_core.params import BY_NAME, REMOTE_PARAMS, SAMPLER_PARAMS, ParamError, for_family, validate

FAL_NEGATIVE = ("blurry, dirty, messy, frames, deformed, dotted, noise, raster lines, unclear, lowres, "
                "over-smoothed, painting, ai generated")


@pytest.mark.parametrize("name, kind, default, low, high", [
    ("scale", int, 2, 1, 4),
    ("steps", int, 25, 10, 50),
    ("guidance_scale", float, 7.0, 1.0, 20.0),
    ("conditioning_scale", float, 0.8, 0.1, 1.0),
])
def test_numeric_parameters_are_fal_s(name, kind, default, low, high):
    p = BY_NAME[name]
    assert (p.kind, p.default, p.min, p.max, p.remote) == (kind, default, low, high, True)


def test_prompts_are_fal_s():
    assert BY_NAME["prompt"].default == "" and BY_NAME["prompt"].remote
    assert BY_NAME["negative_prompt"].default == FAL_NEGATIVE and BY_NAME["negative_prompt"].remote


def test_local_only_parameters():
    expected = {"seed": 0, "added_prompt": "auto", "process_size": 0, "latent_tile_size": 0, "latent_tile_overlap": 8,
                "added_noise_level": 900, "color_fix": "wavelet", "added_noise_mode": "official"}
    for name, default in expected.items():
        assert BY_NAME[name].default == default and not BY_NAME[name].remote, name
    assert BY_NAME["seed"].max == 2**64 - 1
    assert BY_NAME["color_fix"].choices == ("wavelet", "adain", "none")
    assert [p.name for p in REMOTE_PARAMS] == ["scale", "steps", "guidance_scale", "conditioning_scale", "prompt",
                                               "negative_prompt"]


def test_validate_fills_defaults_and_coerces():
    settings = validate({"scale": 3, "guidance_scale": 5, "steps": "30"})
    assert settings["scale"] == 3 and settings["steps"] == 30
    assert settings["guidance_scale"] == 5.0 and isinstance(settings["guidance_scale"], float)
    assert settings["negative_prompt"] == FAL_NEGATIVE and settings["seed"] == 0


@pytest.mark.parametrize("values, words", [
    ({"scale": 5}, ["scale=5", "between 1 and 4"]),
    ({"steps": 9}, ["steps=9", "between 10 and 50"]),
    ({"guidance_scale": 25.0}, ["guidance_scale=25.0", "between 1.0 and 20.0"]),
    ({"conditioning_scale": 0.0}, ["conditioning_scale=0.0", "between 0.1 and 1.0"]),
    ({"scale": 2.5}, ["scale=2.5", "whole number between 1 and 4"]),
    ({"scale": True}, ["scale=True"]),
    ({"prompt": 3}, ["prompt=3", "string"]),
    ({"color_fix": "sharp"}, ["color_fix='sharp'", "'wavelet', 'adain', 'none'"]),
    ({"seed": -1}, ["seed=-1"]),
    ({"latent_tile_size": 64, "latent_tile_overlap": 64}, ["latent_tile_overlap=64", "smaller"]),
    ({"sclae": 2}, ["unknown parameter", "sclae"]),
])
def test_validation_names_parameter_value_and_allowed_range(values, words):
    with pytest.raises(ParamError) as caught:
        validate(values)
    for word in words:
        assert word in str(caught.value)


def test_fal_body_has_fal_parameters_only():
    body = params.fal_arguments(validate({"scale": 4, "seed": 7}))
    assert body == {"scale": 4, "steps": 25, "guidance_scale": 7.0, "conditioning_scale": 0.8, "prompt": "",
                    "negative_prompt": FAL_NEGATIVE}


def test_cli_flags_are_kebab_case_and_unset_means_default():
    parser = argparse.ArgumentParser()
    params.add_cli_flags(parser, SAMPLER_PARAMS)
    args = parser.parse_args(["--guidance-scale", "3.5", "--latent-tile-size", "64", "--color-fix", "adain"])
    given = params.given_cli_values(args, SAMPLER_PARAMS)
    assert given == {"guidance_scale": 3.5, "latent_tile_size": 64, "color_fix": "adain"}
    assert validate(given)["steps"] == 25


def test_changing_a_default_in_the_table_changes_it_everywhere(monkeypatch):
    """The table is the single source: validation, the fal body, CLI help and ComfyUI inputs follow it."""
    changed = tuple(dataclasses.replace(p, default=3) if p.name == "scale" else p for p in params.PARAMS)
    monkeypatch.setattr(params, "PARAMS", changed)
    monkeypatch.setattr(params, "BY_NAME", {p.name: p for p in changed})
    monkeypatch.setattr(params, "SAMPLER_PARAMS", tuple(p for p in changed if p.scope != params.LOADER))
    monkeypatch.setattr(params, "REMOTE_PARAMS", tuple(p for p in changed if p.scope == params.SHARED))
    assert params.validate({}, params.SAMPLER_PARAMS)["scale"] == 3
    assert params.fal_arguments(params.validate({}, params.REMOTE_PARAMS))["scale"] == 3
    parser = argparse.ArgumentParser()
    params.add_cli_flags(parser, params.SAMPLER_PARAMS)
    assert "default 3" in parser.format_help()


def test_auto_defaults_resolve_to_each_official_scripts_values():
    """test_pasd.py and test_pasd_sdxl.py differ in these three defaults; `auto` gives each family its own."""
    settings = validate({})
    sd15, sdxl = for_family(settings, "sd15"), for_family(settings, "sdxl")
    assert (sd15["process_size"], sd15["latent_tile_size"], sd15["added_prompt"]) == (
        768, 320, "clean, high-resolution, 8k")
    assert (sdxl["process_size"], sdxl["latent_tile_size"], sdxl["added_prompt"]) == (
        1280, 180, "photorealistic, clean, high-resolution, 8k")
    given = validate({"process_size": 512, "latent_tile_size": 64, "added_prompt": ""})
    assert for_family(given, "sdxl") == for_family(given, "sd15") == given  # a value given is kept as is


def test_auto_values_are_documented_and_checked():
    process_size = BY_NAME["process_size"]
    assert "768 for SD1.5" in process_size.help and "1280 for SDXL" in process_size.help
    assert "SD1.5 only" in BY_NAME["added_noise_level"].help
    with pytest.raises(ParamError, match="process_size=32.*0 \\(auto\\) or between 64 and 4096"):
        validate({"process_size": 32})
    with pytest.raises(ParamError, match="latent_tile_overlap=200 must be smaller than latent_tile_size=180"):
        for_family(validate({"latent_tile_overlap": 200}), "sdxl")


def test_a_strength_without_its_model_is_said_not_refused():
    loader = validate({"style_strength": 0.5, "lora_strength": 0.6}, params.LOADER_PARAMS)
    assert params.ignored_loader_settings(loader, style_model=False, lora=False) == [
        "style_strength=0.5 is ignored: no style_model is loaded", "lora_strength=0.6 is ignored: no lora is loaded"]
    assert params.ignored_loader_settings(loader, style_model=True, lora=True) == []
    defaults = validate({}, params.LOADER_PARAMS)  # untouched strengths say nothing
    assert params.ignored_loader_settings(defaults, style_model=False, lora=False) == []
