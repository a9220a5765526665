"""The CLI's output path: refused before the run when it could only fail late or replace the input; written
files get the permissions a plain write would give."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from PIL import Image

from pasd_core.__main__ import main
from support.paths import PASD, SD15
from support.settings import FAST_SETTINGS

NOWHERE = "no/such/model"  # a run that got as far as loading models would fail on it with exit code 1


def upscale(source: Path, output: Path, base: str | Path = SD15) -> int:
    flags = [flag for name, value in FAST_SETTINGS.items() for flag in ("--" + name.replace("_", "-"), str(value))]
    return main(["upscale", str(source), "-o", str(output), "--base-model", str(base), "--pasd-model", str(PASD),
                 "--device", "cpu", *flags])


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "in.png"
    Image.new("RGB", (16, 16), (30, 120, 200)).save(path)
    return path


def assert_refused_early(capsys, code: int, *words: str) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert all(w in err for w in words), err


def same_path(source: Path) -> Path:
    return source


def other_spelling(source: Path) -> Path:
    (source.parent / "sub").mkdir()
    return source.parent / "sub" / ".." / source.name


def symlink_to_input(source: Path) -> Path:
    link = source.parent / "link.png"
    link.symlink_to(source)
    return link


def hard_link_to_input(source: Path) -> Path:
    link = source.parent / "hard.png"
    os.link(source, link)
    return link


@pytest.mark.parametrize("name_of_input", [same_path, other_spelling, symlink_to_input, hard_link_to_input])
def test_an_output_that_is_the_input_is_refused_and_the_input_kept(source, capsys, name_of_input):
    before = source.read_bytes()
    output = name_of_input(source)
    assert_refused_early(capsys, upscale(source, output, base=NOWHERE), "is the input image itself",
                         "choose another output file")
    assert source.read_bytes() == before


def test_an_existing_folder_as_output_is_refused_before_the_run(source, tmp_path, capsys):
    folder = tmp_path / "results.png"
    folder.mkdir()
    assert_refused_early(capsys, upscale(source, folder, base=NOWHERE), f"output {folder} is a folder",
                         f"e.g. {folder / 'result.png'}")
    assert list(folder.iterdir()) == []


def test_an_output_inside_a_file_is_refused_before_the_run(source, capsys):
    assert_refused_early(capsys, upscale(source, source / "out.png", base=NOWHERE),
                         f"output folder {source} is a file, not a folder")


@pytest.fixture
def fal(stub):
    """fal's stub (it sends back the uploaded image): a quick run that writes an output file."""
    return lambda source, output: main(["upscale", str(source), "-o", str(output), "--remote", "fal"])


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it afterwards."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_output_gets_the_permissions_the_umask_gives(source, tmp_path, capsys, fal, umask, mask, mode):
    umask(mask)
    output = tmp_path / "out.png"
    assert fal(source, output) == 0, capsys.readouterr().err
    assert stat.S_IMODE(output.stat().st_mode) == mode
    assert Image.open(output).size == (32, 32) and not list(tmp_path.glob("*.part"))


def test_a_replaced_output_keeps_its_permissions(source, tmp_path, capsys, fal, umask):
    umask(0o077)
    output = tmp_path / "out.png"
    output.write_bytes(b"old result")
    output.chmod(0o640)
    assert fal(source, output) == 0, capsys.readouterr().err
    assert stat.S_IMODE(output.stat().st_mode) == 0o640 and Image.open(output).size == (32, 32)

