"""The CLI contract: one clear message, a non-zero exit, no traceback and nothing written on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pasd_core.__main__ import main
from support.paths import PASD, ROOT, SD15
from support.settings import FAST_SETTINGS


def _flags(settings: dict) -> list[str]:
    flags = []
    for name, value in settings.items():
        flags += ["--" + name.replace("_", "-"), str(value)]
    return flags


def _run(tmp_path: Path, *extra: str, input_path: Path | None = None, base: Path = SD15, pasd: Path = PASD,
         output: Path | None = None) -> tuple[int, Path]:
    if input_path is None:
        input_path = tmp_path / "in.png"
        Image.new("RGB", (24, 16), (200, 30, 30)).save(input_path)
    output = output or tmp_path / "out.png"
    code = main(["upscale", str(input_path), "-o", str(output), "--base-model", str(base), "--pasd-model", str(pasd),
                 "--device", "cpu", *_flags(FAST_SETTINGS), *extra])
    return code, output


def test_success_writes_input_size_times_scale(tmp_path, capsys):
    code, output = _run(tmp_path, "--scale", "2")
    assert code == 0, capsys.readouterr().err
    assert Image.open(output).size == (48, 32)
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "I;16"])
def test_grayscale_palette_and_alpha_inputs_are_converted(tmp_path, capsys, mode):
    source = tmp_path / "in.png"
    Image.new("RGB", (16, 16), (90, 160, 30)).convert(mode).save(source)
    code, output = _run(tmp_path, input_path=source)
    assert code == 0, capsys.readouterr().err
    assert Image.open(output).mode == "RGB"


@pytest.mark.parametrize("make_input, words", [
    (lambda d: d / "missing.png", ["input image", "does not exist"]),
    (lambda d: (d / "notes.png").write_text("not an image") and d / "notes.png", ["not a readable image"]),
])
def test_bad_input_image(tmp_path, capsys, make_input, words):
    code, output = _run(tmp_path, input_path=make_input(tmp_path))
    err = capsys.readouterr().err
    assert code == 2 and not output.exists()
    assert all(w in err for w in words) and "Traceback" not in err


def test_out_of_range_parameter_is_refused_before_loading(tmp_path, capsys):
    code, output = _run(tmp_path, "--steps", "5", base=tmp_path / "nowhere")
    err = capsys.readouterr().err
    assert code == 2 and not output.exists()
    assert "steps=5" in err and "between 10 and 50" in err


def test_unwritable_or_unknown_output(tmp_path, capsys):
    code, _ = _run(tmp_path, output=tmp_path / "no" / "such" / "dir.png")
    assert code == 2 and "does not exist" in capsys.readouterr().err
    code, _ = _run(tmp_path, output=tmp_path / "out.tiff2")
    assert code == 2 and "unknown image type" in capsys.readouterr().err


def test_missing_weight_file_is_named(tmp_path, capsys, pasd_copy):
    (pasd_copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    code, output = _run(tmp_path, pasd=pasd_copy)
    err = capsys.readouterr().err
    assert code == 1 and not output.exists()
    assert "no weights in" in err and "unet" in err and "Traceback" not in err


def test_corrupt_weight_file_is_named(tmp_path, capsys, pasd_copy):
    weights = pasd_copy / "controlnet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 5000])
    code, output = _run(tmp_path, pasd=pasd_copy)
    err = capsys.readouterr().err
    assert code == 1 and not output.exists()
    assert str(weights) in err and "damaged" in err


def test_folder_that_is_not_a_pasd_checkpoint(tmp_path, capsys):
    code, _ = _run(tmp_path, pasd=SD15)
    err = capsys.readouterr().err
    assert code == 1 and "is not a PASD checkpoint" in err and "text_encoder" in err


def test_plain_sd_unet_is_not_taken_for_pasd(tmp_path, capsys, pasd_copy):
    from safetensors.torch import load_file, save_file

    weights = pasd_copy / "unet" / "diffusion_pytorch_model.safetensors"
    state = {k: v for k, v in load_file(weights).items() if ".pixel_attentions." not in k}
    save_file(state, weights)
    code, _ = _run(tmp_path, pasd=pasd_copy)
    assert code == 1 and "plain Stable Diffusion UNet" in capsys.readouterr().err


def test_base_that_is_not_sd15(tmp_path, capsys):
    code, _ = _run(tmp_path, base=PASD)
    err = capsys.readouterr().err
    assert code == 1 and "not an SD1.5 diffusers folder" in err and "text_encoder" in err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        _run(tmp_path, "--debug", input_path=tmp_path / "missing.png")


def test_failure_while_writing_leaves_no_file(tmp_path, monkeypatch, capsys):
    def broken_save(self, fp, format=None, **kwargs):
        fp.write(b"half")
        raise OSError("disk full")

    source = tmp_path / "in.png"
    Image.new("RGB", (16, 16)).save(source)
    monkeypatch.setattr(Image.Image, "save", broken_save)
    code, output = _run(tmp_path, input_path=source)
    assert code == 1 and "disk full" in capsys.readouterr().err
    assert not output.exists() and not list(tmp_path.glob("*.part"))


def test_module_entry_point_exits_cleanly_without_traceback(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "pasd_core", "upscale", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o.png")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 2
    assert "does not exist" in completed.stderr and "Traceback" not in completed.stderr
