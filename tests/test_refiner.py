"""The SDXL refiner pass (engine/refiner.py): a seeded img2img pass of diffusers' StableDiffusionXLImg2ImgPipeline at
strength 0.1 between PASD-SDXL's decode and the colour fix. This departs from the official test_pasd_sdxl.py
--use_refiner, which crashes there (its `.images` list reaches the colour fix) and is unseeded."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from PIL import Image

from pasd_core.__main__ import main as cli_main
from pasd_core.engine.color import color_fix
from pasd_core.engine.pipeline import PASDPipeline
from pasd_core.engine.sampler import control_image_for
from pasd_core.errors import Interrupted, ModelError, ModelMismatchError, ModelNotFoundError
from pasd_core.weights.download import REFINER, ensure_refiner
from support.paths import MODELS, PASD_SDXL, SDXL_BASE, case_data
from support.sd_checkpoints import read_config
from support.seeding import perturb, seeded_init
from support.settings import FAST_SETTINGS

IMAGE = Image.open(case_data("X1_sdxl_fal_defaults")["dir"] / "input.png").convert("RGB")
SETTINGS = {**FAST_SETTINGS, "high_level_info": "none", "prompt": "a red barn"}  # prompt stage tested elsewhere
AESTHETIC_IDS = 5  # the refiner's time ids: original size (2), crop (2), aesthetic score (1)


def write_tiny_refiner(folder: Path, seed: int = 0) -> Path:
    """A tiny SDXL refiner in diffusers' layout, as stabilityai/stable-diffusion-xl-refiner-1.0 is: diffusers'
    img2img pipeline with aesthetic-score conditioning, one (OpenCLIP-shaped) text encoder, no first one; the fixture
    SDXL base's VAE, tokenizer_2 and scheduler as parts, a seeded UNet and text encoder of its own."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    encoder_config = CLIPTextConfig.from_pretrained(str(SDXL_BASE / "text_encoder_2"))
    unet_config = read_config(PASD_SDXL / "unet" / "config.json")  # addition_embed_type text_time
    unet_config.update(cross_attention_dim=encoder_config.hidden_size,  # the refiner sees text_encoder_2 alone
                       projection_class_embeddings_input_dim=encoder_config.projection_dim
                       + AESTHETIC_IDS * unet_config["addition_time_embed_dim"])
    with seeded_init(seed):
        unet = perturb(UNet2DConditionModel.from_config(unet_config), seed)
        text_encoder_2 = perturb(CLIPTextModelWithProjection(encoder_config), seed + 1)
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=AutoencoderKL.from_pretrained(str(SDXL_BASE / "vae")), text_encoder=None, text_encoder_2=text_encoder_2,
        tokenizer=None, tokenizer_2=CLIPTokenizer.from_pretrained(str(SDXL_BASE / "tokenizer_2")), unet=unet,
        scheduler=EulerDiscreteScheduler.from_pretrained(str(SDXL_BASE / "scheduler")),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    pipe.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def refiner_folder(tmp_path_factory) -> Path:
    return write_tiny_refiner(tmp_path_factory.mktemp("diffusers") / "stable-diffusion-xl-refiner-1.0")


@pytest.fixture(scope="module")
def refined(refiner_folder) -> PASDPipeline:
    return PASDPipeline.from_pretrained(*MODELS["pasd_sdxl"], device="cpu", dtype="fp32", refiner=refiner_folder)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_a_refined_run_differs_from_the_unrefined_one(refined, tiny_pipeline):
    plain = tiny_pipeline("pasd_sdxl").upscale(IMAGE, SETTINGS)
    result = refined.upscale(IMAGE, SETTINGS)
    assert result.size == plain.size == IMAGE.size  # scale 1: the refiner keeps the size
    assert np.abs(pixels(result) - pixels(plain)).max() > 2


def test_a_refined_run_is_deterministic_per_seed_and_differs_across_seeds(refined):
    first = pixels(refined.upscale(IMAGE, SETTINGS))
    assert np.array_equal(first, pixels(refined.upscale(IMAGE, SETTINGS)))
    assert not np.array_equal(first, pixels(refined.upscale(IMAGE, {**SETTINGS, "seed": 2})))


def test_the_refiner_runs_on_pasds_raw_output_with_the_runs_generator_before_the_colour_fix(refined, refiner_folder):
    """Equal to: PASD's sampling by hand with one seeded generator, decode, a direct diffusers img2img call at strength
    0.1 with that generator as sampling left it (and no negative prompt), then the wavelet fix and the final resize."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    result = refined.upscale(IMAGE, SETTINGS)
    settings = refined.plan(SETTINGS)
    prompt = refined.describe(IMAGE, settings)
    sampler, m = refined._sampler, refined.models
    control_image = control_image_for(IMAGE, settings["scale"], settings["process_size"])
    text = m.family.encode_text(m, prompt.prompt, prompt.negative_prompt, True, control_image.size)
    control = sampler._to_tensor(control_image)
    m.scheduler.set_timesteps(settings["steps"], device=m.device)
    generator = torch.Generator().manual_seed(settings["seed"])
    latents = sampler.denoise(sampler.initial_latents(control, generator, settings), control, text, settings,
                              generator=generator)
    raw = sampler.decode(latents)
    direct = StableDiffusionXLImg2ImgPipeline.from_pretrained(str(refiner_folder), local_files_only=True)
    with torch.no_grad():
        polished = direct(prompt.prompt, image=raw, strength=0.1, generator=generator).images[0]
    expected = color_fix(polished, control_image, "wavelet").resize(result.size, Image.BICUBIC)
    assert np.abs(pixels(result) - pixels(expected)).max() <= 1  # same process: equal in practice
    # the generator continues PASD's state: a freshly seeded one gives another image
    fresh = direct(prompt.prompt, image=raw, strength=0.1, generator=torch.Generator().manual_seed(settings["seed"]))
    assert np.abs(pixels(color_fix(fresh.images[0], control_image, "wavelet")) - pixels(expected)).max() > 2
    # the order matters: the refiner after the colour fix gives another image
    wrong_order = direct(prompt.prompt, image=color_fix(raw, control_image, "wavelet"), strength=0.1,
                         generator=torch.Generator().manual_seed(0)).images[0]
    assert np.abs(pixels(wrong_order) - pixels(expected)).max() > 2


def test_the_refiners_weights_move_and_count_with_the_pipeline(refined, tiny_pipeline):
    extra = sum(p.numel() for module in refined.refiner.modules() for p in module.parameters()) * 4  # fp32
    assert extra > 0
    assert refined.weight_bytes() == tiny_pipeline("pasd_sdxl").weight_bytes() + extra
    assert {p.dtype for module in refined.refiner.modules() for p in module.parameters()} == {torch.float32}


def test_an_interrupt_stops_the_refiner_pass(refined):
    calls = 0

    def should_stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > refined.count_steps(IMAGE.width, IMAGE.height, SETTINGS) + 1  # PASD's steps, then one more

    with pytest.raises(Interrupted, match="refiner"):
        refined.upscale(IMAGE, SETTINGS, should_stop=should_stop)


def test_the_refiner_is_refused_on_pasd_sd15_before_anything_loads(refiner_folder, monkeypatch):
    import pasd_core.weights.pasd_folder as pasd_folder

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(pasd_folder, "load_pasd_checkpoint", no_loading)
    with pytest.raises(ModelMismatchError, match="PASD-SDXL only"):
        PASDPipeline.from_pretrained(*MODELS["pasd"], device="cpu", dtype="fp32", refiner=refiner_folder)


def test_a_folder_that_is_not_a_refiner_is_refused_with_what_to_use(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist.*stable-diffusion-xl-refiner-1.0"):
        PASDPipeline.from_pretrained(*MODELS["pasd_sdxl"], device="cpu", dtype="fp32", refiner=tmp_path / "absent")
    with pytest.raises(ModelError, match="is not an SDXL refiner.*download --family sdxl --refiner"):
        PASDPipeline.from_pretrained(*MODELS["pasd_sdxl"], device="cpu", dtype="fp32", refiner=SDXL_BASE)
    with pytest.raises(ModelError, match="no model_index.json"):
        PASDPipeline.from_pretrained(*MODELS["pasd_sdxl"], device="cpu", dtype="fp32", refiner=tmp_path)


# --- the command line -----------------------------------------------------------------------------------------

def upscale_argv(tmp_path: Path, *extra: str) -> list[str]:
    source = tmp_path / "in.png"
    IMAGE.save(source)
    return ["upscale", str(source), "-o", str(tmp_path / "out.png"), "--steps", "10", "--process-size", "64",
            "--scale", "1", "--seed", "1", "--high-level-info", "none", "--prompt", "a red barn", *extra]


def test_cli_refiner_writes_the_refined_image(tmp_path, refined, refiner_folder, capsys):
    base, pasd = MODELS["pasd_sdxl"]
    argv = upscale_argv(tmp_path, "--base-model", str(base), "--pasd-model", str(pasd), "--device", "cpu",
                        "--dtype", "fp32", "--refiner", str(refiner_folder))
    assert cli_main(argv) == 0, capsys.readouterr().err
    written = pixels(Image.open(tmp_path / "out.png"))
    assert np.abs(written - pixels(refined.upscale(IMAGE, SETTINGS))).max() <= 1


def test_cli_refuses_the_refiner_on_pasd_sd15_before_loading(tmp_path, refiner_folder, capsys, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("models were loaded")

    monkeypatch.setattr(PASDPipeline, "from_pretrained", no_loading)
    base, pasd = MODELS["pasd"]
    code = cli_main(upscale_argv(tmp_path, "--base-model", str(base), "--pasd-model", str(pasd), "--device", "cpu",
                                 "--refiner", str(refiner_folder)))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and not (tmp_path / "out.png").exists()
    assert "PASD-SDXL only" in err and "PASD-SD1.5" in err


def test_cli_refuses_the_refiner_with_remote_fal(tmp_path, refiner_folder, capsys, fal_env):
    source = tmp_path / "in.png"
    IMAGE.save(source)
    code = cli_main(["upscale", str(source), "-o", str(tmp_path / "out.png"), "--remote", "fal",
                     "--refiner", str(refiner_folder)])
    err = capsys.readouterr().err
    assert code == 2 and "--refiner only apply to local runs" in err


# --- download --------------------------------------------------------------------------------------------------

def test_offline_refiner_download_says_what_to_fetch_and_where(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("offline mode is enabled")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", offline)
    with pytest.raises(ModelError) as caught:
        ensure_refiner(tmp_path / "diffusers")
    message = str(caught.value)
    assert message.startswith("cannot download the SDXL 1.0 refiner (LocalEntryNotFoundError")
    assert "https://huggingface.co/stabilityai/stable-diffusion-xl-refiner-1.0/tree/main " in message
    assert "unet/diffusion_pytorch_model.safetensors" in message and "tokenizer_2/vocab.json" in message
    assert f"put them in {tmp_path / 'diffusers' / 'stable-diffusion-xl-refiner-1.0'}/" in message


def test_cli_download_refiner(monkeypatch, tmp_path, capsys):
    """The PASD-SDXL checkpoint and base fetched, then the refiner next to the base and its flag printed; while the
    hub does not have it, the instructions."""
    from pasd_core.weights.download import BASES, PASD_VARIANTS
    from support.hub_stub import HubStub

    pasd = PASD_VARIANTS["pasd_sdxl"]
    repos = {pasd.repo_id: {f"{pasd.folder}/{name}": b"{}" for name in pasd.files},
             BASES["sdxl"].repo_id: dict.fromkeys(BASES["sdxl"].files, b"{}")}
    argv = ["download", "--family", "sdxl", "--refiner", "--models-dir", str(tmp_path)]
    with HubStub(repos) as hub:
        hub.point_hub_here(monkeypatch, tmp_path / "hf_home")
        assert cli_main(argv) == 1
        err = capsys.readouterr().err
        assert err.splitlines()[-1].startswith("error: cannot download the SDXL 1.0 refiner") and "Traceback" not in err
        assert "https://huggingface.co/stabilityai/stable-diffusion-xl-refiner-1.0/tree/main" in err
        hub.add_repo(REFINER.repo_id, dict.fromkeys(REFINER.files, b"{}"))
        assert cli_main(argv) == 0
        assert capsys.readouterr().out.split()[-2:] == [
            "--refiner", str(tmp_path / "diffusers" / "stable-diffusion-xl-refiner-1.0")]
        assert [call.repo_id for call in hub.calls("info")][-1] == REFINER.repo_id


def test_cli_download_refiner_needs_the_sdxl_family(monkeypatch, tmp_path, capsys):
    def no_network(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", no_network)
    assert cli_main(["download", "--refiner", "--models-dir", str(tmp_path)]) == 2
    assert "use it with --family sdxl" in capsys.readouterr().err
