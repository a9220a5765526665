"""The LCM fast mode (official test_pasd.py --use_lcm_lora) reproduces the official outputs through the Python API,
the CLI and the nodes; its LoRA is merged with alpha/rank; bad files, wrong ranges and PASD-SDXL are refused clearly."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from PIL import Image
from safetensors.torch import load_file, save_file

from pasd_core.__main__ import main as cli_main
from pasd_core.engine import sampler as sampler_module
from pasd_core.engine.pipeline import PASDPipeline
from pasd_core.errors import ModelError, ModelMismatchError
from pasd_core.params import BY_NAME, REMOTE_PARAMS, ParamError, validate
from support.comfyui import load_pack, make_models_dir, pack_module
from support.parity import TOLERANCE, assert_intermediates_match, max_difference
from support.paths import MODELS, PASD, PASD_SDXL, SD15, SDXL_BASE

LCM_FIXTURES = Path(__file__).parent / "fixtures" / "pasd_lcm_official_tiny"
LCM_LORA = LCM_FIXTURES / "lcm-lora-sdv1-5" / "pytorch_lora_weights.safetensors"
LCM_CASES = sorted(p.name for p in (LCM_FIXTURES / "cases").iterdir())


def lcm_case(name: str) -> dict:
    folder = LCM_FIXTURES / "cases" / name
    data = json.loads((folder / "case.json").read_text())
    data["dir"] = folder
    data["lora"] = LCM_FIXTURES / data["params"]["lcm_lora"]
    data["settings"] = {k: v for k, v in data["params"].items() if k not in ("variant", "lcm_lora")}
    data["settings"].setdefault("high_level_info", "none")  # the LCM set ran with the prompt stage off
    return data


@pytest.fixture(scope="module")
def lcm_pipeline() -> PASDPipeline:
    return PASDPipeline.from_pretrained(*MODELS["pasd"], lcm_lora=LCM_LORA, device="cpu", dtype="fp32")


def test_the_fixtures_are_the_official_lcm_cases():
    assert LCM_CASES == ["L1_lcm_4_steps", "L2_lcm_tiled_no_cfg"]
    assert all(lcm_case(name)["lora"] == LCM_LORA and lcm_case(name)["variant"] == "pasd" for name in LCM_CASES)


# --- parity: API, CLI, node, intermediates --------------------------------------------------------

@pytest.mark.parametrize("case", LCM_CASES)
def test_python_api_matches_official_lcm_output(case, lcm_pipeline):
    data = lcm_case(case)
    assert lcm_pipeline.lcm and type(lcm_pipeline.models.scheduler).__name__ == "LCMScheduler"
    result = lcm_pipeline.upscale(Image.open(data["dir"] / "input.png"), data["settings"])
    assert max_difference(result, data["dir"] / "expected.png") <= TOLERANCE


@pytest.mark.parametrize("case", LCM_CASES)
def test_cli_matches_official_lcm_output(case, tmp_path, capsys):
    data = lcm_case(case)
    output = tmp_path / "out.png"
    flags = [item for name, value in data["settings"].items() for item in ("--" + name.replace("_", "-"), str(value))]
    code = cli_main(["upscale", str(data["dir"] / "input.png"), "-o", str(output), "--base-model", str(SD15),
                     "--pasd-model", str(PASD), "--lcm-lora", str(data["lora"]), "--device", "cpu", "--dtype", "fp32",
                     *flags])
    assert code == 0, capsys.readouterr().err
    assert max_difference(Image.open(output), data["dir"] / "expected.png") <= TOLERANCE


@pytest.fixture(scope="module")
def lcm_models_dir(tmp_path_factory) -> Path:
    models = make_models_dir(tmp_path_factory.mktemp("models"))
    (models / "loras" / "lcm-lora-sdv1-5").mkdir()
    (models / "loras" / "lcm-lora-sdv1-5" / LCM_LORA.name).symlink_to(LCM_LORA)
    return models


@pytest.mark.parametrize("case", LCM_CASES)
def test_nodes_match_official_lcm_output(case, lcm_models_dir, monkeypatch):
    load_pack()
    local, table = pack_module("nodes.exact"), pack_module("pasd_core.params")
    monkeypatch.setenv("PASD_MODELS_DIR", str(lcm_models_dir))
    lora_choice = f"lcm-lora-sdv1-5/{LCM_LORA.name}"
    assert lora_choice in local.PASDModelLoader.INPUT_TYPES()["required"]["lcm_lora"][0]
    (pipeline,) = local.PASDModelLoader().load("pasd/checkpoint-100000", "diffusers/stable-diffusion-v1-5", "none",
                                               "none", lcm_lora=lora_choice, device="cpu", dtype="fp32")
    data = lcm_case(case)
    image = torch.from_numpy(np.asarray(Image.open(data["dir"] / "input.png").convert("RGB"), np.float32) / 255)[None]
    values = {**table.defaults(table.SAMPLER_PARAMS), **data["settings"]}  # every widget, as ComfyUI passes them
    result, _caption = local.PASDUpscale().upscale(image, pipeline, **values)
    got = np.clip(255.0 * result[0].numpy(), 0, 255).astype(np.uint8)  # what SaveImage writes
    assert max_difference(Image.fromarray(got), data["dir"] / "expected.png") <= TOLERANCE


@pytest.mark.parametrize("case", LCM_CASES)
def test_lcm_intermediate_tensors_match_official(case, lcm_pipeline, monkeypatch):
    """Control image and LCM timesteps exactly; start latents (noise at t=900 itself, fact 3), final latents and
    decoded image within test_parity's measured tolerances."""
    data = lcm_case(case)
    assert_intermediates_match(lcm_pipeline, data, monkeypatch)


def test_both_noise_modes_add_the_noise_at_the_level_itself_under_lcm(lcm_pipeline):
    """LCM's add_noise uses the timestep given (fact 3): 'official' and 'exact' start from the same latents."""
    data = lcm_case("L1_lcm_4_steps")
    sampler = sampler_module.PASDSampler(lcm_pipeline.models)
    image = Image.open(data["dir"] / "input.png").convert("RGB")
    settings = lcm_pipeline.plan(data["settings"])
    control = sampler._to_tensor(sampler_module.control_image_for(image, settings["scale"], settings["process_size"]))
    lcm_pipeline.models.scheduler.set_timesteps(settings["steps"])
    starts = [sampler.initial_latents(control, torch.Generator().manual_seed(42), {**settings, "added_noise_mode": m})
              for m in ("official", "exact")]
    torch.testing.assert_close(starts[0], starts[1], rtol=0, atol=1e-6)


# --- the merge: alpha honoured, bad files refused ---------------------------------------------------

def test_lora_is_merged_with_alpha_over_rank():
    """W += (alpha / rank) · up @ down, diffusers' semantics; the fixture's alpha 2 over rank 4 halves each delta, so
    ignoring alpha (the personalized-LoRA rule) would double it (and move pixels by up to 28 levels)."""
    plain, _ = pack_module("pasd_core.weights.pasd_folder").load_pasd_checkpoint(PASD)
    merged = PASDPipeline.from_pretrained(SD15, PASD, lcm_lora=LCM_LORA, device="cpu", dtype="fp32").models.unet
    state = load_file(str(LCM_LORA))
    layers = {key.split(".")[0] for key in state}
    assert len(layers) == 84 and not any("pixel_attentions" in layer for layer in layers)
    modules = dict(merged.named_modules())
    plain_weights = dict(plain.named_parameters())
    checked = 0
    for layer in sorted(layers):
        name = next(n for n in modules if n.replace(".", "_") == layer.removeprefix("lora_unet_"))
        up, down, alpha = (state[f"{layer}.{part}"] for part in ("lora_up.weight", "lora_down.weight", "alpha"))
        scale = float(alpha) / down.shape[0]
        assert scale == 0.5
        weight = modules[name].weight
        delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
        torch.testing.assert_close(weight - plain_weights[f"{name}.weight"], scale * delta, rtol=0, atol=1e-6)
        checked += 1
    assert checked == 84


def _save_lora(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\x08\x00\x00\x00\x00\x00\x00\x00{}"],
                         ids=["empty", "garbage", "truncated"])
def test_garbage_lcm_lora_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "lcm.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelError) as caught:
        PASDPipeline.from_pretrained(SD15, PASD, lcm_lora=path, device="cpu", dtype="fp32")
    assert str(path) in str(caught.value) and "LCM-LoRA file" in str(caught.value)


def test_missing_or_non_checkpoint_lcm_lora_is_named(tmp_path):
    for path in (tmp_path / "absent.safetensors", tmp_path / "notes.txt"):
        if path.suffix == ".txt":
            path.write_text("hello")
        with pytest.raises(ModelError, match="absent.safetensors does not exist|not a checkpoint file"):
            PASDPipeline.from_pretrained(SD15, PASD, lcm_lora=path, device="cpu", dtype="fp32")


@pytest.mark.parametrize("keys", [
    ("lora_unet_no_such_layer", "lora_unet_down_blocks_9_attentions_0_proj_in"),
    ("unet.down_blocks.0.attentions.0.proj_in.lora_A", "unet.down_blocks.0.attentions.0.proj_in.lora_B"),
], ids=["unknown-kohya-layers", "peft-keys"])
def test_lcm_lora_whose_keys_match_nothing_is_a_clear_error(tmp_path, keys):
    path = _save_lora(tmp_path / "other.safetensors", {
        f"{key}.{part}": torch.zeros(4, 4) for key in keys for part in ("lora_down.weight", "lora_up.weight")})
    with pytest.raises(ModelError) as caught:
        PASDPipeline.from_pretrained(SD15, PASD, lcm_lora=path, device="cpu", dtype="fp32")
    message = str(caught.value)
    assert "match no layer" in message and "latent-consistency/lcm-lora-sdv1-5" in message
    assert "download --lcm-lora" in message


def test_lcm_lora_for_another_architecture_says_it_does_not_fit(tmp_path):
    layer = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    path = _save_lora(tmp_path / "sdxl-like.safetensors", {f"{layer}.lora_down.weight": torch.zeros(4, 640),
                                                             f"{layer}.lora_up.weight": torch.zeros(640, 4)})
    with pytest.raises(ModelError, match="do not fit the weight .*LCM-LoRA for SD1.5"):
        PASDPipeline.from_pretrained(SD15, PASD, lcm_lora=path, device="cpu", dtype="fp32")


# --- ranges and defaults ----------------------------------------------------------------------------

def test_steps_and_guidance_ranges_depend_on_lcm():
    assert validate({"steps": 4}, lcm=True)["steps"] == 4
    assert validate({}, lcm=True)["steps"] == BY_NAME["steps"].lcm.default == 4
    assert validate({}, lcm=True)["guidance_scale"] == BY_NAME["guidance_scale"].lcm.default == 1.0
    assert validate({})["steps"] == 25 and validate({})["guidance_scale"] == 7.0
    with pytest.raises(ParamError, match=r"steps=25 is out of range for the LCM fast mode .*between 4 and 8"):
        validate({"steps": 25}, lcm=True)
    with pytest.raises(ParamError, match=r"guidance_scale=7.0 is out of range for the LCM .*between 1.0 and 2.0"):
        validate({"guidance_scale": 7.0}, lcm=True)
    with pytest.raises(ParamError, match=r"steps=4 is out of range: .*between 10 and 50 \(4-8 only with an LCM-LoRA"):
        validate({"steps": 4})
    with pytest.raises(ParamError, match=r"steps=4 is out of range: use a value between 10 and 50\.$"):
        validate({"steps": 4}, REMOTE_PARAMS)  # fal-ai/pasd has no LCM mode
    assert "LCM" in BY_NAME["steps"].help and "LCM" in BY_NAME["guidance_scale"].help


def test_widgets_allow_lcm_values_locally_and_fal_keeps_its_range():
    load_pack()
    local, remote = pack_module("nodes.exact"), pack_module("nodes.remote")
    steps = local.PASDUpscale.INPUT_TYPES()["required"]["steps"][1]
    assert (steps["default"], steps["min"], steps["max"]) == (25, 4, 50) and "LCM" in steps["tooltip"]
    fal_steps = remote.PASDUpscaleFal.INPUT_TYPES()["required"]["steps"][1]
    assert (fal_steps["default"], fal_steps["min"], fal_steps["max"]) == (25, 10, 50)
    assert "LCM" not in fal_steps["tooltip"]


def test_pipeline_with_lcm_refuses_normal_steps_and_without_lcm_refuses_lcm_steps(lcm_pipeline, tiny_pipeline):
    image = Image.new("RGB", (16, 16))
    with pytest.raises(ParamError, match="steps=25 .*LCM fast mode"):
        lcm_pipeline.upscale(image, {"steps": 25, "high_level_info": "none"})
    with pytest.raises(ParamError, match="steps=4 is out of range"):
        tiny_pipeline("pasd").upscale(image, {"steps": 4, "high_level_info": "none"})


def test_cli_refuses_normal_steps_with_an_lcm_lora_before_loading(tmp_path, capsys):
    code = cli_main(["upscale", str(LCM_FIXTURES / "cases" / "L1_lcm_4_steps" / "input.png"), "-o",
                     str(tmp_path / "o.png"), "--base-model", str(SD15), "--pasd-model", str(PASD), "--lcm-lora",
                     str(LCM_LORA), "--steps", "20"])
    assert code == 2 and "steps=20 is out of range for the LCM fast mode" in capsys.readouterr().err


# --- PASD-SDXL: no official LCM mode ----------------------------------------------------------------

def test_pasd_sdxl_refuses_an_lcm_lora_in_the_api_and_the_cli(tmp_path, capsys):
    with pytest.raises(ModelMismatchError, match="PASD-SD1.5 only .*PASD-SDXL has none"):
        PASDPipeline.from_pretrained(SDXL_BASE, PASD_SDXL, lcm_lora=LCM_LORA, device="cpu", dtype="fp32")
    code = cli_main(["upscale", str(LCM_FIXTURES / "cases" / "L1_lcm_4_steps" / "input.png"), "-o",
                     str(tmp_path / "o.png"), "--base-model", str(SDXL_BASE), "--pasd-model", str(PASD_SDXL),
                     "--lcm-lora", str(LCM_LORA)])
    error = capsys.readouterr().err
    assert code == 2 and "LCM fast mode exists for PASD-SD1.5 only" in error and "Traceback" not in error


def test_lcm_lora_is_a_local_flag(tmp_path, capsys):
    code = cli_main(["upscale", str(LCM_FIXTURES / "cases" / "L1_lcm_4_steps" / "input.png"), "-o",
                     str(tmp_path / "o.png"), "--remote", "fal", "--lcm-lora", str(LCM_LORA)])
    assert code == 2 and "--lcm-lora only apply to local runs" in capsys.readouterr().err


# --- download -----------------------------------------------------------------------------------------

def test_cli_download_fetches_the_lcm_lora_into_models_loras(monkeypatch, tmp_path, capsys):
    from pasd_core.weights.download import LCM_LORA
    from support.hub_stub import HubStub

    monkeypatch.setattr("pasd_core.weights.download.ensure_pasd_checkpoint", lambda v, d, *_: Path(d) / v)
    monkeypatch.setattr("pasd_core.weights.download.ensure_base", lambda d, f, *_: Path(d) / f)
    with HubStub({LCM_LORA.repo_id: {LCM_LORA.files[0]: b"lora" * 1024}}) as hub:
        hub.point_hub_here(monkeypatch, tmp_path / "hf_home")
        assert cli_main(["download", "--lcm-lora", "--models-dir", str(tmp_path)]) == 0
        assert [call.repo_id for call in hub.calls("info")] == [LCM_LORA.repo_id]
    lora = tmp_path / "loras" / "lcm-lora-sdv1-5" / "pytorch_lora_weights.safetensors"
    assert lora.read_bytes() == b"lora" * 1024
    assert capsys.readouterr().out.split()[-2:] == ["--lcm-lora", str(lora)]


def test_cli_download_of_the_lcm_lora_offline_says_what_to_fetch_and_where(monkeypatch, tmp_path, capsys):
    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("offline mode is enabled")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", offline)
    monkeypatch.setattr("pasd_core.weights.download.ensure_pasd_checkpoint", lambda v, d, *_: Path(d) / v)
    monkeypatch.setattr("pasd_core.weights.download.ensure_base", lambda d, f, *_: Path(d) / f)
    assert cli_main(["download", "--lcm-lora", "--models-dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: cannot download the SD1.5 LCM-LoRA (LocalEntryNotFoundError")
    assert "https://huggingface.co/latent-consistency/lcm-lora-sdv1-5/tree/main" in error
    assert f"put them in {tmp_path / 'loras' / 'lcm-lora-sdv1-5'}/" in error and "Traceback" not in error


def test_cli_download_refuses_the_lcm_lora_for_sdxl(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("the network was used"))
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda *a, **k: pytest.fail("the network was used"))
    assert cli_main(["download", "--family", "sdxl", "--lcm-lora", "--models-dir", str(tmp_path)]) == 2
    assert "no LCM mode for PASD-SDXL" in capsys.readouterr().err
