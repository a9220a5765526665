"""The ComfyUI nodes without ComfyUI: classes run directly on IMAGE tensors with the tiny checkpoints.

ComfyUI's own modules are replaced by small fakes where a test needs them (progress bar, cancel
button, models folders); everything else is the real pack and the real engine.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from support.comfyui import FakeComfyUI, FakePipeline, load_pack, make_models_dir, pack_module
from support.fal_stub import FalStub, Job
from support.paths import CHECKPOINTS, FIXTURES, ROOT

pack = load_pack()
host = pack_module("nodes.host")
inputs = pack_module("nodes.inputs")
images = pack_module("nodes.images")
local = pack_module("nodes.exact")
table = pack_module("pasd_core.params")
errors = pack_module("pasd_core.errors")

CASES = FIXTURES / "cases"


def case(name: str) -> tuple[torch.Tensor, dict, np.ndarray]:
    """(input as an IMAGE batch of one, the case's settings, the official output) of a parity case."""
    params = json.loads((CASES / name / "case.json").read_text())["params"]
    params.pop("variant")
    return (as_image_batch(Image.open(CASES / name / "input.png")), params,
            np.asarray(Image.open(CASES / name / "expected.png").convert("RGB")))


def as_image_batch(*pictures: Image.Image) -> torch.Tensor:
    """What ComfyUI's LoadImage makes of a picture: [B, H, W, 3] float32 in [0, 1]."""
    return torch.from_numpy(np.stack([np.asarray(p.convert("RGB"), dtype=np.float32) / 255.0 for p in pictures]))


def as_uint8(image: torch.Tensor) -> np.ndarray:
    """What ComfyUI's SaveImage writes for a batch entry."""
    return np.clip(255.0 * image.numpy(), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return make_models_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture
def comfyui(monkeypatch, models_dir) -> FakeComfyUI:
    return FakeComfyUI(models_dir).install(monkeypatch)


@pytest.fixture(scope="module")
def pasd(models_dir):
    """The tiny full-PASD checkpoint loaded through the loader node (outside ComfyUI)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PASD_MODELS_DIR", str(models_dir))
        return local.PASDModelLoader().load("pasd/checkpoint-100000", "diffusers/stable-diffusion-v1-5",
                                            "none", "none", device="cpu", dtype="fp32")[0]


def sampler_values(**overrides) -> dict:
    """Every PASDUpscale widget, as ComfyUI passes them (all of them, always); the prompt stage off, as the parity
    fixtures ran (tests below that caption say so)."""
    return {**table.defaults(table.SAMPLER_PARAMS), "high_level_info": "none", **overrides}


# --- the pack as ComfyUI sees it ----------------------------------------------------------------

def test_nodes_are_registered_under_their_ids_in_the_pasd_category():
    assert set(pack.NODE_CLASS_MAPPINGS) == {"PASDModelLoader", "PASDUpscale", "PASDUpscaleFal", "PASDColorFix",
                                             "PASDAdapterLoader", "PASDApply", "PASDPrompt"}
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(pack.NODE_CLASS_MAPPINGS)
    for cls in pack.NODE_CLASS_MAPPINGS.values():
        assert cls.CATEGORY == "image/upscaling/PASD"
        assert callable(getattr(cls(), cls.FUNCTION))
    assert pack.NODE_CLASS_MAPPINGS["PASDModelLoader"].RETURN_TYPES == ("PASD_MODEL",)


def test_importing_the_pack_loads_no_heavy_module():
    code = ("import sys; sys.path.insert(0, 'tests'); from support.comfyui import load_pack; load_pack(); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'numpy', 'PIL', 'requests') "
            "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


# --- declarations derived from the table --------------------------------------------------------

@pytest.mark.parametrize("node, params", [("PASDUpscale", "SAMPLER_PARAMS"), ("PASDUpscaleFal", "REMOTE_PARAMS")])
def test_widgets_are_the_table_entries(node, params):
    types = pack.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()
    declared = {**types["required"], **types.get("optional", {})}
    entries = getattr(table, params)
    assert [name for name in declared if name not in ("image", "pasd_model")] == [p.name for p in entries]
    # entries added after the first release are optional (and last), so saved workflows keep their positions
    assert set(types.get("optional", {})) == {p.name for p in entries if p.optional}
    for p in entries:
        kind, options = declared[p.name]
        assert options["default"] == p.default and options["tooltip"] == p.help
        if p.choices:
            assert kind == list(p.choices)
            continue
        assert kind == {int: "INT", float: "FLOAT", str: "STRING"}[p.kind]
        # the widget takes both modes' values (LCM's fewer steps, lower guidance); fal's entries have no LCM mode
        limits = dict(zip(("min", "max"), p.widget_limits(), strict=True))
        for key in ("min", "max", "step"):
            # an `auto` number's widget also takes 0, the auto value, below the real range
            expected = table.AUTO[int] if key == "min" and p.auto and p.kind is int else limits.get(key, p.step)
            assert options.get(key) == expected
        assert options.get("multiline", False) == p.multiline
    assert "seed" not in declared or declared["seed"][1]["control_after_generate"] is True


def test_prompts_are_multiline_and_local_only_settings_stay_off_the_fal_node():
    local_inputs = pack.NODE_CLASS_MAPPINGS["PASDUpscale"].INPUT_TYPES()["required"]
    fal_inputs = pack.NODE_CLASS_MAPPINGS["PASDUpscaleFal"].INPUT_TYPES()["required"]
    assert local_inputs["prompt"][1]["multiline"] and local_inputs["negative_prompt"][1]["multiline"]
    assert not {"seed", "process_size", "color_fix"} & set(fal_inputs)


def test_loader_declares_every_loader_setting_and_lists_models_found_on_disk(monkeypatch, models_dir):
    monkeypatch.setenv("PASD_MODELS_DIR", str(models_dir))
    (models_dir / "loras" / "detail.safetensors").write_bytes(b"")
    declared = local.PASDModelLoader.INPUT_TYPES()
    declared = {**declared["required"], **declared["optional"]}
    assert {p.name for p in table.LOADER_PARAMS} <= set(declared)
    # what is on disk, then the official models that are not (fetched on first use)
    assert declared["pasd_model"][0] == ["pasd/checkpoint-100000", "pasd_light/checkpoint-120000",
                                         "pasd_sdxl/checkpoint-200000"]
    assert declared["base_model"][0] == ["diffusers/stable-diffusion-v1-5", "diffusers/stable-diffusion-xl-base-1.0"]
    assert declared["style_model"][0] == ["none"]
    assert declared["lora"][0] == ["none", "detail.safetensors"]
    assert declared["device"][0] == list(table.BY_NAME["device"].choices)


def test_changing_the_table_changes_the_declarations_and_the_defaults(monkeypatch):
    steps = replace(table.BY_NAME["steps"], default=33, max=40)
    swap = lambda entries: tuple(steps if p.name == "steps" else p for p in entries)  # noqa: E731
    for name in ("SAMPLER_PARAMS", "REMOTE_PARAMS"):
        monkeypatch.setattr(table, name, swap(getattr(table, name)))
    for node in ("PASDUpscale", "PASDUpscaleFal"):
        declared = pack.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()["required"]["steps"][1]
        assert (declared["default"], declared["max"]) == (33, 40)
    pipeline = FakePipeline()
    local.PASDUpscale().upscale(as_image_batch(Image.new("RGB", (8, 8))), pipeline)
    assert pipeline.settings[0]["steps"] == 33


def test_inputs_convert_to_the_v3_schema_with_the_same_options():
    class FakeIO:
        def __getattr__(self, kind):
            return types.SimpleNamespace(Input=lambda name, **options: (kind, name, options))

        def Custom(self, io_type):  # noqa: N802 - the name comfy_api uses
            return types.SimpleNamespace(Input=lambda name, **options: (io_type, name, options))

    for item in local.PASDUpscale.inputs():
        kind, name, options = inputs.v3(item, FakeIO())
        # `advanced` only where the host's V3 inputs take it (tests/test_v3_nodes.py); this fake's do not
        expected_options = {k: v for k, v in item.options.items() if k != "advanced"}
        assert name == item.name and options == {**expected_options, **({"optional": True} if item.optional else {})}
        expected = {"INT": "Int", "FLOAT": "Float", "STRING": "String", "COMBO": "Combo", "IMAGE": "Image"}
        assert kind == expected.get(item.io_type, item.io_type)


# --- running the nodes on the tiny checkpoints ---------------------------------------------------

@pytest.mark.parametrize("name", ["A_untiled", "B_tiled_x2"])
def test_upscale_node_reproduces_the_official_output(pasd, name):
    image, params, expected = case(name)
    result, _caption = local.PASDUpscale().upscale(image, pasd, **sampler_values(**params))
    assert result.dtype == torch.float32 and result.shape == (1, *expected.shape)
    assert np.abs(as_uint8(result[0]).astype(int) - expected.astype(int)).max() <= 1


def test_light_variant_and_a_batch_use_seed_plus_index(models_dir, monkeypatch):
    monkeypatch.setenv("PASD_MODELS_DIR", str(models_dir))
    (light,) = local.PASDModelLoader().load("pasd_light/checkpoint-120000", "diffusers/stable-diffusion-v1-5",
                                            "none", "none", device="cpu", dtype="fp32")
    image, params, expected = case("C_light")
    batch, _caption = local.PASDUpscale().upscale(image.repeat(2, 1, 1, 1), light, **sampler_values(**params))
    assert batch.shape == (2, 64, 64, 3)
    assert np.abs(as_uint8(batch[0]).astype(int) - expected.astype(int)).max() <= 1
    second = light.upscale(Image.open(CASES / "C_light" / "input.png"), {**params, "seed": params["seed"] + 1,
                                                                          "high_level_info": "none"})
    assert np.array_equal(as_uint8(batch[1]), np.asarray(second))
    assert not np.array_equal(as_uint8(batch[0]), as_uint8(batch[1]))


def test_loader_resolves_choices_to_paths_and_names_missing_models(monkeypatch, models_dir):
    monkeypatch.setenv("PASD_MODELS_DIR", str(models_dir))
    seen = {}
    pipeline_module = pack_module("pasd_core.engine.pipeline")
    monkeypatch.setattr(pipeline_module.PASDPipeline, "from_pretrained",
                        classmethod(lambda cls, base, pasd_path, **kw: seen.update(base=base, pasd=pasd_path, **kw)))
    local.PASDModelLoader().load("pasd/checkpoint-100000", "diffusers/stable-diffusion-v1-5", "none", "none",
                                 style_strength=0.5, lora_strength=1.0, device="auto", dtype="auto")
    assert Path(seen["pasd"]).resolve() == CHECKPOINTS / "pasd" / "checkpoint-100000"
    assert Path(seen["base"]).resolve() == CHECKPOINTS / "stable-diffusion-v1-5"
    assert (seen["style_model"], seen["lora"], seen["style_strength"]) == (None, None, 0.5)
    assert (seen["device"], seen["dtype"]) == ("cpu", "auto")  # outside ComfyUI: torch's device, engine's dtype
    with pytest.raises(FileNotFoundError, match="toonyou.safetensors"):
        local.PASDModelLoader().load("pasd/checkpoint-100000", "diffusers/stable-diffusion-v1-5",
                                     "toonyou.safetensors", "none")
    with pytest.raises(table.ParamError, match="style_strength"):
        local.PASDModelLoader().load("pasd/checkpoint-100000", "diffusers/stable-diffusion-v1-5", "none", "none",
                                     style_strength=2.0)


# --- batches, seeds, sizes -----------------------------------------------------------------------

def test_batch_of_b_images_gives_b_outputs_with_seeds_seed_plus_i():
    pipeline = FakePipeline()
    batch = as_image_batch(*(Image.new("RGB", (8, 6), (40 * i, 0, 0)) for i in range(3)))
    result, _caption = local.PASDUpscale().upscale(batch, pipeline, **sampler_values(seed=2**64 - 2, scale=3))
    assert result.shape == (3, 18, 24, 3)
    assert [s["seed"] for s in pipeline.settings] == [2**64 - 2, 2**64 - 1, 0]  # 64-bit seeds wrap around
    assert torch.allclose(result[2, 0, 0], torch.tensor([80 / 255, 0.0, 0.0]))


def test_outputs_of_differing_sizes_are_an_error_that_says_so():
    pipeline = FakePipeline(sizes=[(16, 16), (16, 12)])
    batch = as_image_batch(Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8)))
    with pytest.raises(errors.InputImageError, match=r"same size, got 16×12, 16×16"):
        local.PASDUpscale().upscale(batch, pipeline, **sampler_values())
    with pytest.raises(errors.InputImageError, match=r"input images of one batch must all have the same size"):
        images.require_same_size([Image.new("RGB", (8, 8)), Image.new("RGB", (9, 8))])


def test_image_conversion_round_trips_comfyui_images_exactly():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    batch = torch.from_numpy(pixels.astype(np.float32) / 255.0)
    pictures = images.to_pil(batch)
    assert [p.size for p in pictures] == [(7, 5), (7, 5)]
    assert np.array_equal(np.stack([np.asarray(p) for p in pictures]), pixels)
    assert torch.equal(images.to_batch(pictures), batch)
    assert images.to_pil(torch.ones(1, 2, 2, 4))[0].mode == "RGB"  # alpha dropped
    with pytest.raises(errors.InputImageError, match="IMAGE batch"):
        images.to_pil(torch.ones(2, 2, 3))


def test_invalid_settings_are_refused_before_any_work():
    pipeline = FakePipeline()
    with pytest.raises(table.ParamError, match="scale"):
        local.PASDUpscale().upscale(as_image_batch(Image.new("RGB", (8, 8))), pipeline, **sampler_values(scale=9))
    assert pipeline.settings == []


# --- progress, interruption, memory --------------------------------------------------------------

def test_one_progress_tick_per_denoising_step_of_every_image(comfyui):
    comfyui.device = "cuda"
    pipeline = FakePipeline(steps=4)
    local.PASDUpscale().upscale(as_image_batch(*[Image.new("RGB", (8, 8))] * 3), pipeline, **sampler_values())
    assert comfyui.bar_totals == [12] and comfyui.ticks == 12
    assert comfyui.calls == []  # the node frees nothing: ComfyUI's model manager places the models


def test_a_cpu_run_says_once_what_it_will_take_and_names_the_fal_node(comfyui, caplog):
    pipeline = FakePipeline(steps=4)  # on the CPU
    with caplog.at_level(logging.WARNING):
        local.PASDUpscale().upscale(as_image_batch(*[Image.new("RGB", (8, 8))] * 2), pipeline, **sampler_values())
    said = [r.getMessage() for r in caplog.records if "running on the CPU" in r.getMessage()]
    assert len(said) == 1 and "the first of 8 denoising steps took" in said[0] and "PASD Upscale (fal)" in said[0]
    assert comfyui.ticks == 8  # every step still ticks the bar


def test_real_engine_ticks_match_count_steps(comfyui, pasd):
    image, params, _ = case("B_tiled_x2")
    settings = sampler_values(**{**params, "steps": 10})
    local.PASDUpscale().upscale(image, pasd, **settings)
    assert comfyui.bar_totals == [pasd.count_steps(64, 64, settings)]
    assert comfyui.ticks == comfyui.bar_totals[0] > settings["steps"]  # tiled: one tick per tile and step


@pytest.mark.parametrize("interrupt_base", [Exception, BaseException], ids=["0.3.64", "0.38"])
def test_cancel_stops_the_run_between_steps_as_a_comfyui_interruption(monkeypatch, models_dir, pasd,
                                                                       interrupt_base):
    """ComfyUI 0.38's InterruptProcessingException is a BaseException (0.3.64's an Exception): either way the run
    stops at once, between steps, and returns nothing."""
    comfyui = FakeComfyUI(models_dir, interrupt_base=interrupt_base).install(monkeypatch)
    comfyui.interrupt_after = 3
    image, params, _ = case("A_untiled")
    with pytest.raises(comfyui.model_management.InterruptProcessingException):
        local.PASDUpscale().upscale(image.repeat(2, 1, 1, 1), pasd, **sampler_values(**params))
    assert comfyui.ticks == 3  # no step after the cancel, and the second image never started
    assert comfyui.interrupt is False  # consumed, so the next prompt runs


def test_outside_comfyui_an_interruption_surfaces_as_the_engines_error(monkeypatch):
    monkeypatch.setattr(host, "interrupted", lambda: True)
    pipeline = FakePipeline()
    with pytest.raises(errors.Interrupted):
        local.PASDUpscale().upscale(as_image_batch(Image.new("RGB", (8, 8))), pipeline, **sampler_values())
    assert pipeline.settings and len(pipeline.settings) == 1  # stopped in the first image


# --- colour fix ------------------------------------------------------------------------------------

def test_color_fix_node_matches_the_engine_and_broadcasts_one_reference():
    color = pack_module("pasd_core.engine.color")
    generator = torch.Generator().manual_seed(0)
    image, reference = torch.rand(2, 16, 16, 3, generator=generator), torch.rand(1, 8, 8, 3, generator=generator)
    for method in ("wavelet", "adain"):
        (fixed,) = pack_module("nodes.color_fix").PASDColorFix().fix(image, reference, method)
        references = reference.expand(2, -1, -1, -1).permute(0, 3, 1, 2)
        expected = color.color_fix_tensor(image.permute(0, 3, 1, 2), references, method).permute(0, 2, 3, 1)
        # the node hands the engine channels-last views: another memory layout may round a sum differently
        assert fixed.shape == image.shape
        torch.testing.assert_close(fixed, expected, rtol=0, atol=1e-6)
    assert pack_module("nodes.color_fix").PASDColorFix.INPUT_TYPES()["required"]["method"][0] == ["wavelet", "adain"]
    with pytest.raises(table.ParamError, match="method"):
        pack_module("nodes.color_fix").PASDColorFix().fix(image, reference, "none")
    with pytest.raises(errors.InputImageError, match="reference holds 2 images but the image batch holds 3"):
        pack_module("nodes.color_fix").PASDColorFix().fix(torch.rand(3, 8, 8, 3), torch.rand(2, 8, 8, 3), "wavelet")


# --- the fal node against the stub server --------------------------------------------------------

@pytest.fixture
def fal(monkeypatch):
    with FalStub(key="stub-key") as stub:
        monkeypatch.setenv("FAL_KEY", "stub-key")
        monkeypatch.setenv("FAL_QUEUE_URL", stub.url)
        yield stub


def fal_values(**overrides) -> dict:
    return {**table.defaults(table.REMOTE_PARAMS), **overrides}


def test_fal_node_upscales_a_batch_remotely_with_progress_and_logs(fal, comfyui, caplog):
    remote = pack_module("nodes.remote")
    pictures = [Image.new("RGB", (6, 4), (200, 10 * i, 0)) for i in range(2)]
    with caplog.at_level(logging.INFO, logger="ComfyUI-PASD"):
        (result,) = remote.PASDUpscaleFal().upscale(as_image_batch(*pictures), **fal_values(scale=2))
    assert result.shape == (2, 8, 12, 3)
    for picture, out in zip(pictures, result, strict=True):
        assert np.array_equal(as_uint8(out), np.asarray(picture.resize((12, 8), Image.Resampling.NEAREST)))
    assert comfyui.ticks == len(fal.calls("status")) > 0  # one tick per status poll
    assert any("step 1 of 2" in r.getMessage() for r in caplog.records if r.name == "ComfyUI-PASD")
    assert [c.json()["steps"] for c in fal.calls("submit")] == [25, 25]


@pytest.mark.parametrize("interrupt_base", [Exception, BaseException], ids=["0.3.64", "0.38"])
def test_fal_node_cancels_the_remote_request_when_interrupted(fal, monkeypatch, models_dir, interrupt_base):
    comfyui = FakeComfyUI(models_dir, interrupt_base=interrupt_base).install(monkeypatch)
    fal.plan = lambda index, image, body: Job(progress_polls=1000)
    comfyui.interrupt_after = 2
    remote = pack_module("nodes.remote")
    with pytest.raises(comfyui.model_management.InterruptProcessingException):
        remote.PASDUpscaleFal().upscale(as_image_batch(Image.new("RGB", (4, 4))), **fal_values())
    assert len(fal.cancelled) == 1


# --- host fallbacks --------------------------------------------------------------------------------

def test_outside_comfyui_the_host_falls_back_honestly(monkeypatch, models_dir, capsys):
    monkeypatch.setenv("PASD_MODELS_DIR", str(models_dir))
    assert host.in_comfyui() is False
    assert host.torch_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    assert host.preferred_dtype("cpu") == "auto" and host.has_model_manager() is False
    assert host.interrupted() is False
    cause = errors.Interrupted("x")
    assert host.interruption(cause) is cause
    markers = pack_module("nodes.model_choices").PASD_CHECKPOINT_MARKERS
    assert host.model_dirs("pasd", markers) == ["pasd/checkpoint-100000", "pasd_light/checkpoint-120000"]
    for total in (3, None):
        with host.progress(total) as tick:
            tick()
    assert "1/3" in capsys.readouterr().err  # tqdm on the console


def test_inside_comfyui_models_pasd_is_registered_after_paths_from_extra_model_paths(comfyui, models_dir):
    comfyui.folder_paths.folder_names_and_paths["pasd"] = (["/shared/models/pasd"], set())
    host.register_model_folder()
    host.register_model_folder()
    assert comfyui.folder_paths.get_folder_paths("pasd") == ["/shared/models/pasd", str(models_dir / "pasd")]
    assert host.in_comfyui() and host.torch_device() == "cpu" and host.preferred_dtype("cpu") == "fp32"
    assert local.PASDModelLoader.INPUT_TYPES()["required"]["pasd_model"][0] == [
        "pasd/checkpoint-100000", "pasd_light/checkpoint-120000", "pasd_sdxl/checkpoint-200000"]


# --- PASD-SDXL through the loader node ---------------------------------------------------------------

SDXL_CASES = ROOT / "tests" / "fixtures" / "pasd_sdxl_official_tiny" / "cases"


@pytest.fixture(scope="module")
def sdxl_models_dir(tmp_path_factory) -> Path:
    """A ComfyUI models folder with the tiny PASD-SDXL models where the download puts them, and an SDXL file."""
    root = make_models_dir(tmp_path_factory.mktemp("sdxl_models"), sdxl=True)
    (root / "checkpoints" / "sd_xl_base_1.0.safetensors").write_bytes(b"")  # only listed here, never read
    return root


def test_loader_offers_sdxl_models_and_says_which_family_each_input_takes(monkeypatch, sdxl_models_dir):
    FakeComfyUI(sdxl_models_dir).install(monkeypatch)
    declared = local.PASDModelLoader.INPUT_TYPES()["required"]
    assert declared["pasd_model"][0] == ["pasd/checkpoint-100000", "pasd_light/checkpoint-120000",
                                         "pasd_sdxl/checkpoint-200000"]
    assert declared["base_model"][0] == ["diffusers/stable-diffusion-v1-5", "diffusers/stable-diffusion-xl-base-1.0",
                                         "checkpoints/sd_xl_base_1.0.safetensors"]
    for name in ("pasd_model", "base_model"):
        assert {"SD1.5", "SDXL"} <= set(declared[name][1]["tooltip"].replace(",", " ").split())
    for name in ("style_model", "lora"):  # a personalization file must fit the PASD model's family
        assert "PASD model's family" in declared[name][1]["tooltip"]


def test_upscale_node_link_inputs_have_tooltips():
    declared = local.PASDUpscale.INPUT_TYPES()["required"]
    assert declared["image"][0] == "IMAGE" and declared["image"][1]["tooltip"]
    assert declared["pasd_model"][0] == "PASD_MODEL" and "SDXL" in declared["pasd_model"][1]["tooltip"]


def test_loader_node_loads_pasd_sdxl_whose_defaults_give_the_official_fal_defaults_output(monkeypatch,
                                                                                         sdxl_models_dir):
    FakeComfyUI(sdxl_models_dir).install(monkeypatch)  # device and dtype `auto`: ComfyUI's CPU and fp32
    (pipeline,) = local.PASDModelLoader().load("pasd_sdxl/checkpoint-200000", "diffusers/stable-diffusion-xl-base-1.0",
                                               "none", "none", style_strength=1.0, lora_strength=1.0,
                                               device="auto", dtype="auto")
    assert pipeline.family == "sdxl"
    # case X1 is the official test_pasd_sdxl.py with fal's defaults; only the seed and the tiny size are its own
    params = json.loads((SDXL_CASES / "X1_sdxl_fal_defaults" / "case.json").read_text())["params"]
    image = as_image_batch(Image.open(SDXL_CASES / "X1_sdxl_fal_defaults" / "input.png"))
    result, _caption = local.PASDUpscale().upscale(image, pipeline, **sampler_values(seed=params["seed"],
                                                                             process_size=params["process_size"]))
    expected = np.asarray(Image.open(SDXL_CASES / "X1_sdxl_fal_defaults" / "expected.png").convert("RGB"))
    assert result.shape == (1, *expected.shape)
    assert np.abs(as_uint8(result[0]).astype(int) - expected.astype(int)).max() <= 1


# --- the prompt stage: caption output, refusals, PASD Prompt ---------------------------------------

def test_upscale_describes_each_image_first_and_outputs_the_captions_one_line_per_image(comfyui):
    pipeline = FakePipeline()
    pictures = as_image_batch(Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8)))
    result, caption = local.PASDUpscale().upscale(pictures, pipeline, **sampler_values(high_level_info="caption",
                                                                                        prompt="a barn"))
    assert local.PASDUpscale.RETURN_NAMES == ("image", "caption") and local.PASDUpscale.RETURN_TYPES[1] == "STRING"
    assert result.shape[0] == 2 and caption == "a fake caption of a 8x8 picture\na fake caption of a 8x8 picture"
    assert [d["seed"] for d in pipeline.described] == [0, 1]  # described with each image's own settings
    # the official join: caption, a space, the user's prompt, then the added prompt with no separator
    assert [p.prompt for p in pipeline.prompts] == ["a fake caption of a 8x8 picture a barnclean, high-resolution, "
                                                    "8k"] * 2


def test_upscale_refuses_a_prompt_stage_model_the_loader_did_not_load_before_any_work(comfyui):
    pipeline = FakePipeline(loaded=("none",))
    with pytest.raises(table.ParamError, match="needs the CoCa captioner.*download --captioner"):
        local.PASDUpscale().upscale(as_image_batch(Image.new("RGB", (8, 8))), pipeline,
                                    **sampler_values(high_level_info="caption"))
    assert comfyui.calls == [] and pipeline.described == []  # nothing loaded or described
    with pytest.raises(table.ParamError, match="ResNet-50 classifier"):
        local.PASDUpscale().upscale(as_image_batch(Image.new("RGB", (8, 8))), pipeline,
                                    **sampler_values(high_level_info="classification"))


def test_loader_passes_control_type_and_the_prompt_models_to_the_engine(monkeypatch, tmp_path):
    models = make_models_dir(tmp_path / "models", captioner=True)
    FakeComfyUI(models).install(monkeypatch)
    seen = {}
    pipeline = pack_module("nodes.host_models").HostedPASDPipeline
    monkeypatch.setattr(pipeline, "from_pretrained", classmethod(lambda cls, base, pasd, **kw: seen.update(kw)))
    local.PASDModelLoader().load("pasd/checkpoint-100000", "diffusers/stable-diffusion-v1-5", "none", "none",
                                 caption_model="coca_tiny", device="cpu", dtype="fp32")
    stage = seen["prompt_stage"]
    assert stage.captioner is not None and stage.classifier is None and seen["control_type"] == "realisr"
    # this fake ComfyUI has no model manager (no comfy.model_patcher): the engine places its models itself
    assert seen["placement"] is pack_module("pasd_core.placement").LocalPlacement


def test_multiline_prompts_show_a_placeholder_and_auto_widgets_say_what_0_means():
    declared = local.PASDUpscale.INPUT_TYPES()["required"]
    for name in ("prompt", "negative_prompt", "added_prompt"):
        assert declared[name][1]["placeholder"].startswith(f"{name}: ")
    assert "'auto'" in declared["added_prompt"][1]["placeholder"]
    assert "0 = the model's own default" in declared["process_size"][1]["tooltip"]


CAPTION_CASES = ROOT / "tests" / "fixtures" / "pasd_caption_official_tiny" / "cases"


@pytest.mark.parametrize("name", ["P1_sd15_caption", "P2_sdxl_caption_prompt"])
def test_prompt_node_builds_the_text_the_official_script_encoded(monkeypatch, tmp_path, name):
    FakeComfyUI(make_models_dir(tmp_path / "models", captioner=True)).install(monkeypatch)
    recorded = json.loads((CAPTION_CASES / name / "case.json").read_text())
    params = recorded["params"]
    prompt_node = pack_module("nodes.prompt").PASDPrompt
    monkeypatch.setattr(pack_module("nodes.prompt"), "_STAGES", {})  # this test's models only
    node = prompt_node()
    image = as_image_batch(Image.open(CAPTION_CASES / name / "input.png"))
    values = {"prompt": params["prompt"], "family": recorded["family"], "high_level_info": "caption",
              "added_prompt": params["added_prompt"], "caption_model": "coca_tiny", "classifier_model": "none"}
    assert prompt_node.VALIDATE_INPUTS("caption", "coca_tiny", "none") is True
    prompt, caption = node.build(image, **values)
    assert prompt == recorded["official_prompt"]
    clean_caption = pack_module("pasd_core.prompt.stage").clean_caption
    assert caption == clean_caption(recorded["caption"], recorded["family"])  # cleaned as the official script does
    stages = pack_module("nodes.prompt")._STAGES
    (loaded,) = [stage.captioner for stage in stages.values() if stage.captioner is not None]
    prompt_node().build(image, **values)  # a V3 node keeps no instance: another one, as ComfyUI 0.38 runs it
    assert [stage.captioner for stage in stages.values() if stage.captioner is not None] == [loaded]  # held, shared
    assert next(iter(loaded.model.parameters())).device.type == "cpu"


def test_prompt_node_refuses_a_missing_or_unchosen_model_once(monkeypatch, tmp_path):
    FakeComfyUI(make_models_dir(tmp_path / "models")).install(monkeypatch)
    prompt_node = pack_module("nodes.prompt").PASDPrompt
    choices = pack_module("nodes.model_choices")
    with pytest.raises(choices.ModelsMissing, match="- caption_model 'coca_ViT-L-14': the CoCa captioner"):
        prompt_node.VALIDATE_INPUTS("caption", "coca_ViT-L-14", "none")  # offline (conftest): the short refusal
    with pytest.raises(choices.ModelsMissing, match="caption_model 'my_coca' is not in models/pasd_prompt"):
        prompt_node.VALIDATE_INPUTS("caption", "my_coca", "none")
    with pytest.raises(choices.ModelsMissing, match="needs classifier_model, which is none"):
        prompt_node.VALIDATE_INPUTS("classification", "none", "none")
    assert prompt_node.VALIDATE_INPUTS("none", "none", "none") is True
    prompt, caption = prompt_node().build(as_image_batch(Image.new("RGB", (8, 8))), prompt="a barn", family="sd15",
                                          high_level_info="none", added_prompt="auto", caption_model="none",
                                          classifier_model="none")
    assert (prompt, caption) == ("a barn, clean, high-resolution, 8k", "")
