"""The CLI says what is wrong with a model path: missing, a folder where a file belongs (or the reverse),
a dangling link, unreadable, damaged, or holding pickled code; exit 1 (a model problem), nothing written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from pasd_core.__main__ import main
from support.paths import PASD, SD15
from support.permissions import run_bound_by_permissions
from support.settings import FAST_SETTINGS


def cli_args(tmp_path: Path, base: Path, pasd: Path, *extra: str) -> list[str]:
    source = tmp_path / "in.png"
    if not source.exists():
        Image.new("RGB", (16, 16), (200, 30, 30)).save(source)
    flags = [item for name, value in FAST_SETTINGS.items() for item in ("--" + name.replace("_", "-"), str(value))]
    return ["upscale", str(source), "-o", str(tmp_path / "out.png"), "--base-model", str(base),
            "--pasd-model", str(pasd), "--device", "cpu", *flags, *extra]


def run(tmp_path: Path, capsys, *extra: str, base: Path = SD15, pasd: Path = PASD) -> str:
    """Run the CLI, check it failed as a model problem without a traceback or an output; its message."""
    code = main(cli_args(tmp_path, base, pasd, *extra))
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and not (tmp_path / "out.png").exists()
    return err


# --- PASD checkpoint folder ---------------------------------------------------------------------

def test_pasd_model_that_is_a_file(tmp_path, capsys):
    weights = PASD / "unet" / "diffusion_pytorch_model.safetensors"
    err = run(tmp_path, capsys, pasd=weights)
    assert f"PASD checkpoint folder {weights} is a file, not a folder: give the folder holding unet/ and " \
           "controlnet/" in err
    assert "does not exist" not in err


def test_pasd_model_that_does_not_exist(tmp_path, capsys):
    err = run(tmp_path, capsys, pasd=tmp_path / "pasd" / "checkpoint-1")
    assert f"PASD checkpoint folder {tmp_path / 'pasd' / 'checkpoint-1'} does not exist" in err


def test_pasd_model_that_is_a_dangling_link(tmp_path, capsys):
    (tmp_path / "pasd").symlink_to(tmp_path / "deleted", target_is_directory=True)
    err = run(tmp_path, capsys, pasd=tmp_path / "pasd")
    assert f"PASD checkpoint folder {tmp_path / 'pasd'} is a link to something that does not exist" in err


def test_pasd_weights_with_wrong_keys(tmp_path, capsys, pasd_copy):
    weights = pasd_copy / "controlnet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["renamed.conv_in.weight"] = state.pop("conv_in.weight")
    save_file(state, weights)
    err = run(tmp_path, capsys, pasd=pasd_copy)
    assert f"{pasd_copy / 'controlnet'} does not fit its config.json" in err
    assert "conv_in.weight" in err and "renamed.conv_in.weight" in err


class _TouchOnLoad:
    """Unpickling this would create a file: proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_pasd_bin_weights_with_pickled_code_are_refused_without_running_it(tmp_path, capsys, pasd_copy):
    marker = tmp_path / "code-ran"
    safetensors = pasd_copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights = pasd_copy / "unet" / "diffusion_pytorch_model.bin"
    torch.save({**load_file(safetensors), "hook": _TouchOnLoad(marker)}, str(weights))
    safetensors.unlink()
    err = run(tmp_path, capsys, pasd=pasd_copy)
    assert f"weight file {weights} holds Python objects besides weights" in err and "could run code" in err
    assert not marker.exists()


def test_a_folder_that_is_not_a_pasd_checkpoint_lists_only_a_few_of_its_entries(tmp_path, capsys):
    for index in range(20):
        (tmp_path / "photos" / f"img{index:02d}.png").parent.mkdir(exist_ok=True)
        (tmp_path / "photos" / f"img{index:02d}.png").write_bytes(b"")
    err = run(tmp_path, capsys, pasd=tmp_path / "photos")
    assert "is not a PASD checkpoint: expected unet/ and controlnet/" in err
    assert "img07.png and 12 more" in err and "img19.png" not in err


# --- SD1.5 base ---------------------------------------------------------------------------------

def test_base_model_single_file_name_that_is_a_folder(tmp_path, capsys):
    folder = tmp_path / "v1-5-pruned.safetensors"
    folder.mkdir()
    err = run(tmp_path, capsys, base=folder)
    assert f"SD1.5 base model {folder} is a folder, though its name ends in .safetensors" in err


@pytest.mark.parametrize("make_base", [lambda d: d / "sd15", lambda d: d / "in.png" / "sd15.safetensors"])
def test_base_model_that_does_not_exist(tmp_path, capsys, make_base):
    base = make_base(tmp_path)
    err = run(tmp_path, capsys, base=base)
    assert f"SD1.5 base model {base} does not exist: give a stable-diffusion-v1-5 diffusers folder or a single " \
           ".safetensors checkpoint" in err


def test_base_model_folder_with_a_file_where_a_part_belongs(tmp_path, capsys):
    base = tmp_path / "sd15"
    shutil.copytree(SD15, base, ignore=shutil.ignore_patterns("vae"))
    (base / "vae").write_text("")
    err = run(tmp_path, capsys, base=base)
    assert "is not an SD1.5 diffusers folder: missing vae/ (vae: a file, not a folder)" in err


# --- personalized model and LoRA ----------------------------------------------------------------

@pytest.mark.parametrize("flag, what", [("--style-model", "personalized model"), ("--lora", "LoRA file")])
def test_style_model_and_lora_paths(tmp_path, capsys, flag, what):
    missing = tmp_path / "toon.safetensors"
    assert f"{what} {missing} does not exist" in run(tmp_path, capsys, flag, str(missing))
    folder = tmp_path / "styles"
    folder.mkdir()
    assert f"{what} {folder} is a folder: give a single-file checkpoint" in run(tmp_path, capsys, flag, str(folder))
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    err = run(tmp_path, capsys, flag, str(empty))
    assert str(empty) in err and "damaged or an incomplete download" in err


def test_style_model_ckpt_with_code_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    style = tmp_path / "toon.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "hook": _TouchOnLoad(marker)}, str(style))
    err = run(tmp_path, capsys, "--style-model", str(style))
    assert str(style) in err and "could run code" in err and not marker.exists()


# --- permissions (root reads everything: run the CLI as root without the override capabilities) -----

def run_cli_bound_by_permissions(args: list[str]) -> subprocess.CompletedProcess:
    return run_bound_by_permissions(f"import sys; from pasd_core.__main__ import main; sys.exit(main({args!r}))")


@pytest.mark.skipif(sys.platform != "linux", reason="file permissions are simulated with Linux capabilities")
def test_unreadable_weights_and_folders_are_called_unreadable(tmp_path, pasd_copy):
    args = cli_args(tmp_path, SD15, pasd_copy)
    weights = pasd_copy / "controlnet" / "diffusion_pytorch_model.safetensors"
    weights.chmod(0o000)
    done = run_cli_bound_by_permissions(args)
    assert done.returncode == 1, done.stderr
    assert f"weight file {weights} cannot be read (permission denied)" in done.stderr
    assert "damaged" not in done.stderr and "Traceback" not in done.stderr

    weights.chmod(0o644)
    (pasd_copy / "unet").chmod(0o000)  # its files are there, but cannot be reached
    try:
        done = run_cli_bound_by_permissions(args)
    finally:
        (pasd_copy / "unet").chmod(0o755)  # so that pytest can clean up
    assert done.returncode == 1, done.stderr
    assert f"PASD checkpoint part {pasd_copy / 'unet'} cannot be read (permission denied)" in done.stderr
    assert "does not exist" not in done.stderr and "not a PASD checkpoint" not in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out.png").exists()
