"""The prompt stage and colorization reproduce the official scripts (fixtures: pasd_caption_official_tiny, made by the
unmodified test_pasd.py / test_pasd_sdxl.py): the same caption, class and prompt strings exactly, the same image
within 1/255, through the Python API and the CLI (the nodes: test_nodes.py and the real-ComfyUI e2e tests)."""

from __future__ import annotations

import pytest
from PIL import Image

from pasd_core.__main__ import main as cli_main
from pasd_core.engine.pipeline import PASDPipeline
from pasd_core.prompt.stage import clean_caption
from support.parity import TOLERANCE, max_difference
from support.paths import MODELS, PROMPT_CASES, TINY_COCA, case_data


def _models(data: dict, classifier) -> dict:
    """from_pretrained's prompt-stage and task arguments for a case."""
    mode = data["settings"]["high_level_info"]
    return {"control_type": data["settings"]["control_type"],
            "caption_model": TINY_COCA if mode == "caption" else None,
            "classifier_model": classifier if mode == "classification" else None}


@pytest.fixture(scope="module")
def prompt_pipeline(tiny_classifier):
    """One pipeline per (variant, prompt-stage models), built once for the module."""
    cache: dict[tuple, PASDPipeline] = {}

    def get(data: dict) -> PASDPipeline:
        models = _models(data, tiny_classifier)
        key = (data["variant"], *models.values())
        if key not in cache:
            cache[key] = PASDPipeline.from_pretrained(*MODELS[data["variant"]], device="cpu", dtype="fp32", **models)
        return cache[key]

    return get


@pytest.mark.parametrize("case", PROMPT_CASES)
def test_python_api_matches_official_prompt_and_output(case, prompt_pipeline):
    data = case_data(case)
    pipeline = prompt_pipeline(data)
    image = Image.open(data["dir"] / "input.png")
    prompt = pipeline.describe(image, data["settings"])
    assert (prompt.prompt, prompt.negative_prompt) == (data["official_prompt"], data["official_negative_prompt"])
    if data["caption"] is not None:  # the caption exactly, and what the prompt stage shows of it
        raw = pipeline.prompt_stage.captioner.caption(pipeline.source_image(image))
        assert raw == data["caption"] and prompt.description == clean_caption(raw, data["family"])
    if data["classification"] is not None:
        category, score = pipeline.prompt_stage.classifier.classify(pipeline.source_image(image))
        assert category == data["classification"]["category"]
        assert score == pytest.approx(data["classification"]["score"], rel=1e-4)
    result = pipeline.upscale(image, data["settings"], prompt=prompt)
    assert max_difference(result, data["dir"] / "expected.png") <= TOLERANCE


@pytest.mark.parametrize("case", PROMPT_CASES)
def test_cli_matches_official_prompt_and_output(case, tmp_path, capsys, tiny_classifier):
    data = case_data(case)
    output = tmp_path / "out.png"
    flags = []
    for name, value in data["settings"].items():
        flags += ["--" + name.replace("_", "-"), str(value)]
    models = _models(data, tiny_classifier)
    for flag in ("caption_model", "classifier_model"):
        if models[flag] is not None:
            flags += ["--" + flag.replace("_", "-"), str(models[flag])]
    code = cli_main(["upscale", str(data["dir"] / "input.png"), "-o", str(output), "--base-model", str(data["base"]),
                     "--pasd-model", str(data["checkpoint"]), "--device", "cpu", "--dtype", "fp32", *flags])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"prompt: {data['official_prompt']!r}" in err  # the caption is shown, in the prompt it leads
    assert max_difference(Image.open(output), data["dir"] / "expected.png") <= TOLERANCE


def test_a_default_cli_run_captions_and_refuses_without_the_captioner(tmp_path, capsys):
    data = case_data("P1_sd15_caption")
    code = cli_main(["upscale", str(data["dir"] / "input.png"), "-o", str(tmp_path / "o.png"), "--base-model",
                     str(data["base"]), "--pasd-model", str(data["checkpoint"]), "--caption-model",
                     str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and not (tmp_path / "o.png").exists()
    assert all(word in err for word in ("high_level_info='caption'", str(tmp_path / "nowhere"), "does not exist",
                                        "huggingface.co/laion/mscoco_finetuned_CoCa-ViT-L-14",
                                        "python -m pasd_core download --captioner", "--high-level-info none")), err


def test_the_api_refuses_a_caption_run_without_a_captioner(tiny_pipeline):
    from pasd_core.params import ParamError

    with pytest.raises(ParamError, match="needs the CoCa captioner.*download --captioner"):
        tiny_pipeline("pasd").upscale(Image.new("RGB", (16, 16)), {"steps": 10, "process_size": 64})


@pytest.mark.parametrize("pasd, words", [
    (MODELS["pasd_sdxl"][1], ["PASD-SD1.5 task", "PASD-SDXL checkpoint"]),
    (MODELS["pasd"][1], ["needs the colour checkpoint's own scheduler", "scheduler_config.json", "--variant "
                         "pasd_light_color"]),
])
def test_grayscale_on_the_wrong_checkpoint_is_refused_before_loading(tmp_path, capsys, pasd, words, monkeypatch):
    from pasd_core.weights import pasd_folder

    monkeypatch.setattr(pasd_folder, "load_pasd_checkpoint", lambda *a: pytest.fail("loaded a model"))
    data = case_data("P6_color_none")
    code = cli_main(["upscale", str(data["dir"] / "input.png"), "-o", str(tmp_path / "o.png"), "--base-model",
                     str(data["base"]), "--pasd-model", str(pasd), "--control-type", "grayscale",
                     "--high-level-info", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and all(word in err for word in words), err
    with pytest.raises(ValueError, match=words[0]):
        PASDPipeline.from_pretrained(data["base"], pasd, control_type="grayscale", device="cpu", dtype="fp32")
