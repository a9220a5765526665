"""Hostile and unusual input images: converted as a viewer shows them, or refused with one clear message
before any model loads, any request is sent or any pixel is resized, and with nothing written."""

from __future__ import annotations

import builtins
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from pasd_core.__main__ import main
from pasd_core.engine import work_limits
from pasd_core.params import defaults
from support.comfyui import FakePipeline, pack_module
from support.fal_stub import FalStub
from support.paths import PASD, SD15
from support.settings import FAST_SETTINGS

KEY = "hostile-images-key:SECRET-1234"
NOWHERE = "no/such/model"  # a local run that got as far as loading would fail on it with exit code 1


@pytest.fixture(autouse=True)
def fal_key(monkeypatch, tmp_path):
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "FAL_QUEUE_URL", "FAL_REST_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PASD_FAL_CONFIG", str(tmp_path / "absent.json"))
    monkeypatch.setenv("FAL_KEY", KEY)


@pytest.fixture
def stub(monkeypatch):
    with FalStub(key=KEY) as server:
        monkeypatch.setenv("FAL_QUEUE_URL", server.url)
        monkeypatch.setenv("FAL_REST_URL", server.url)
        yield server


def _flags(settings: dict) -> list[str]:
    return [flag for name, value in settings.items() for flag in ("--" + name.replace("_", "-"), str(value))]


def local(source: Path, *flags: str, base: str | Path = SD15, output: Path | None = None) -> tuple[int, Path]:
    output = output or source.parent / "out.png"
    code = main(["upscale", str(source), "-o", str(output), "--base-model", str(base), "--pasd-model", str(PASD),
                 "--device", "cpu", *flags])
    return code, output


def remote(source: Path, *flags: str) -> tuple[int, Path]:
    """fal's stub sends back the uploaded image resized by scale: at scale 1, exactly what the CLI read."""
    output = source.parent / "out.png"
    return main(["upscale", str(source), "-o", str(output), "--remote", "fal", "--scale", "1", *flags]), output


def assert_refused(capsys, code: int, output: Path, *words: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert all(w in err for w in words), err
    assert "Traceback" not in err and not output.exists()
    return err


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width×height pixels (its data holds none of them)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# --- files that are not (usable) images -----------------------------------------------------------

def test_a_tiny_png_claiming_ten_gigapixels_is_refused_from_its_header(tmp_path, capsys):
    source = tmp_path / "bomb.png"
    source.write_bytes(png_claiming(100_000, 100_000))
    assert source.stat().st_size == 65
    err = assert_refused(capsys, *local(source, base=NOWHERE), "10000.0 megapixels",
                         "the limit is 67.1 megapixels (8192×8192)", "downscale or crop")
    assert "DecompressionBomb" not in err


def test_a_header_just_over_the_cap_names_its_size(tmp_path, stub, capsys):
    source = tmp_path / "big.png"
    source.write_bytes(png_claiming(9000, 9000))  # under Pillow's own cap, over ours
    assert_refused(capsys, *remote(source), "9000×9000 (81.0 megapixels)", "limit is 67.1 megapixels")
    assert stub.recorded == []


def test_a_png_with_a_huge_compressed_text_chunk_is_refused(tmp_path, capsys):
    buffer = tmp_path / "small.png"
    Image.new("RGB", (8, 8)).save(buffer)
    data = buffer.read_bytes()
    text = b"comment\x00\x00" + zlib.compress(b"a" * 64_000_000, 9)
    chunk = struct.pack(">I", len(text)) + b"zTXt" + text + struct.pack(">I", zlib.crc32(b"zTXt" + text))
    source = tmp_path / "text-bomb.png"
    source.write_bytes(data[:33] + chunk + data[33:])  # right after IHDR
    assert source.stat().st_size < 100_000
    assert_refused(capsys, *local(source, base=NOWHERE), f"input image {source} is not a readable image")


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, words", [
    (lambda d: d / "missing.png", ["does not exist"]),
    (lambda d: written(d / "empty.png", b""), ["not a readable image"]),
    (lambda d: written(d / "notes.png", b"not an image"), ["not a readable image"]),
    (lambda d: (d / "photos").mkdir() or d / "photos", ["is a folder, not an image file"]),
    (lambda d: Path(os.devnull), ["is not a regular file"]),
])
def test_unreadable_inputs_get_one_message_that_names_the_problem(tmp_path, capsys, make, words):
    assert_refused(capsys, *local(make(tmp_path), base=NOWHERE, output=tmp_path / "out.png"), *words)


def test_a_truncated_image_is_refused(tmp_path, capsys):
    whole = tmp_path / "whole.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(whole)
    source = tmp_path / "cut.png"
    source.write_bytes(whole.read_bytes()[:-2000])
    assert_refused(capsys, *local(source, base=NOWHERE), "not a readable image", "truncated")


def test_an_unreadable_file_says_permission_denied_not_missing(tmp_path, capsys, monkeypatch):
    source = tmp_path / "locked.png"
    Image.new("RGB", (8, 8)).save(source)
    real_open = builtins.open

    def open_denying(file, *args, **kwargs):  # as chmod 000 does, also when the tests run as root
        if str(file) == str(source):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_denying)
    err = assert_refused(capsys, *local(source, base=NOWHERE), "cannot be read: permission denied")
    assert "does not exist" not in err


# --- planned work: refused before any model loads ------------------------------------------------

@pytest.mark.parametrize("size, flags, words", [
    ((4096, 1), ["--scale", "2"], ["4096×1 input at scale 2", "3145728×768 control image", "crop the image"]),
    ((512, 512), ["--scale", "4", "--latent-tile-size", "8", "--latent-tile-overlap", "0", "--steps", "25"],
     ["25600 denoising calls (25 steps × 1024 latent tiles of 8)", "raise latent_tile_size"]),
    ((3208, 128), ["--scale", "4", "--process-size", "512", "--latent-tile-overlap", "64"],
     ["latent tiles are only 64 latents wide", "lower latent_tile_overlap below 64"]),
])
def test_work_too_big_to_finish_is_refused_before_loading(tmp_path, capsys, size, flags, words):
    source = tmp_path / "in.png"
    Image.new("RGB", size, (90, 90, 90)).save(source)
    assert_refused(capsys, *local(source, *flags, base=NOWHERE), *words)


def test_planned_steps_are_what_the_progress_bar_counts(tiny_pipeline):
    pipeline = tiny_pipeline()
    for (width, height), settings in [((16, 16), FAST_SETTINGS), ((300, 40), {"latent_tile_size": 16}),
                                      ((97, 203), {"scale": 3, "process_size": 128, "latent_tile_size": 24,
                                                   "latent_tile_overlap": 5})]:
        full = pipeline.plan({**defaults(), **settings, "high_level_info": "none"})  # `auto` resolved
        assert work_limits.denoising_calls(width, height, full) == pipeline.count_steps(width, height, full)


# --- unusual but valid files: converted as an image viewer shows them ------------------------------

def grey_ramp(values: list[int], dtype: str) -> np.ndarray:
    return np.array([values] * 4, dtype=dtype)


@pytest.mark.parametrize("name, make, expected", [
    ("16-bit.png", lambda: Image.fromarray(grey_ramp([0, 64 * 257, 128 * 257, 65535], "uint16")), [0, 64, 128, 255]),
    ("16-bit-big-endian.tif", lambda: Image.frombytes(
        "I;16B", (4, 4), grey_ramp([0, 64 * 257, 128 * 257, 65535], ">u2").tobytes()), [0, 64, 128, 255]),
    ("32-bit-int.tif", lambda: Image.fromarray(grey_ramp([0, 64 * 257, 128 * 257, 65535], "int32")),
     [0, 64, 128, 255]),
    ("float-0-1.tif", lambda: Image.fromarray(grey_ramp([0.0, 0.25, 0.5, 1.0], "float32")), [0, 64, 128, 255]),
    ("float-0-255.tif", lambda: Image.fromarray(grey_ramp([0.0, 64.0, 128.0, 255.0], "float32")), [0, 64, 128, 255]),
    ("1-bit.png", lambda: Image.fromarray(grey_ramp([0, 0, 1, 1], "bool")), [0, 0, 255, 255]),
])
def test_high_bit_depth_float_and_1_bit_greys_keep_their_tones(tmp_path, stub, capsys, name, make, expected):
    source = tmp_path / name
    make().save(source)
    code, output = remote(source)
    assert code == 0, capsys.readouterr().err
    pixels = np.asarray(Image.open(output))
    assert pixels.shape == (4, 4, 3)
    assert pixels[0, :, 0].tolist() == expected and (pixels == pixels[..., :1]).all()


@pytest.mark.parametrize("name, make, expected", [
    ("cmyk.tif", lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
    ("cmyk.jpg", lambda: Image.new("CMYK", (4, 4), (255, 0, 255, 0)), (0, 255, 0)),
    ("grey-alpha.png", lambda: Image.new("LA", (4, 4), (0, 0)), (255, 255, 255)),  # transparent: white
    ("grey-half-alpha.png", lambda: Image.new("LA", (4, 4), (0, 128)), (127, 127, 127)),
    ("rgba.webp", lambda: Image.new("RGBA", (4, 4), (0, 0, 255, 0)), (255, 255, 255)),
])
def test_cmyk_and_alpha_images_convert_to_the_colours_a_viewer_shows(tmp_path, stub, capsys, name, make, expected):
    source = tmp_path / name
    make().save(source, **({"lossless": True} if name.endswith(".webp") else {}))
    code, output = remote(source)
    assert code == 0, capsys.readouterr().err
    assert np.abs(np.asarray(Image.open(output), dtype=int) - expected).max() <= 2


def test_palette_transparency_is_composited_on_white(tmp_path, stub, capsys):
    picture = Image.new("P", (4, 4), 0)
    picture.putpalette([255, 0, 0, 0, 0, 255])
    picture.putpixel((3, 3), 1)
    source = tmp_path / "palette.png"
    picture.save(source, transparency=0)  # palette entry 0 (red) is fully transparent
    code, output = remote(source)
    assert code == 0, capsys.readouterr().err
    pixels = np.asarray(Image.open(output))
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[3, 3].tolist() == [0, 0, 255]


def test_sixteen_bit_grey_comes_out_grey_from_a_local_run(tmp_path, capsys):
    source = tmp_path / "grey16.png"
    Image.fromarray(np.full((16, 16), 128 * 257, dtype=np.uint16)).save(source)
    code, output = local(source, *_flags(FAST_SETTINGS))
    assert code == 0, capsys.readouterr().err
    assert abs(np.asarray(Image.open(output)).mean() - 128) < 16  # not near-white as a plain convert("RGB") gives


def phone_photo(path: Path) -> Image.Image:
    """A 24×12 landscape sensor image (red left, blue right) stored with EXIF 'rotate 90° clockwise'."""
    pixels = np.zeros((12, 24, 3), dtype=np.uint8)
    pixels[:, :12] = (220, 20, 20)
    pixels[:, 12:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was held upright
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return ImageOps.exif_transpose(Image.open(path)).convert("RGB")


def test_exif_orientation_is_honoured(tmp_path, stub, capsys):
    upright = phone_photo(tmp_path / "phone.jpg")
    assert upright.size == (12, 24)
    code, output = remote(tmp_path / "phone.jpg")
    assert code == 0, capsys.readouterr().err
    assert np.abs(np.asarray(Image.open(output), dtype=int) - np.asarray(upright, dtype=int)).max() <= 2
    code, output = local(tmp_path / "phone.jpg", *_flags({**FAST_SETTINGS, "scale": 2}))
    assert code == 0, capsys.readouterr().err
    assert Image.open(output).size == (24, 48)


def test_an_animated_image_upscales_its_first_frame_and_says_so(tmp_path, stub, capsys):
    frames = [Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))]
    source = tmp_path / "anim.gif"
    frames[0].save(source, save_all=True, append_images=frames[1:])
    code, output = remote(source)
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"note: input image {source} holds 2 frames; only the first is upscaled." in err
    assert np.asarray(Image.open(output))[0, 0].tolist() == [255, 0, 0]


# --- node inputs ----------------------------------------------------------------------------------

local_nodes = pack_module("nodes.exact")
color_fix_nodes = pack_module("nodes.color_fix")
remote_nodes = pack_module("nodes.remote")
table = pack_module("pasd_core.params")
errors = pack_module("pasd_core.errors")


def sampler_values(**overrides) -> dict:
    return {**table.defaults(table.SAMPLER_PARAMS), "high_level_info": "none", **overrides}


@pytest.mark.parametrize("image, words", [
    (torch.full((1, 4, 4, 3), float("nan")), ["image holds NaN or infinite values"]),
    (torch.tensor([0.5, float("inf"), 0.2]).expand(1, 4, 4, 3), ["NaN or infinite"]),
    (torch.full((1, 4, 4, 3), 200.0), ["values from 200 to 200", "0..255 values: divide by 255"]),
    (torch.full((1, 4, 4, 3), -0.5), ["values from -0.5 to -0.5", "[0, 1]"]),
    (torch.full((1, 4, 4, 3), 128, dtype=torch.uint8), ["holds uint8 values", "floats in [0, 1]"]),
    (torch.zeros(1, 4, 4, 3, dtype=torch.bool), ["holds bool values"]),
    (torch.zeros(0, 4, 4, 3), ["image is empty"]),
    (torch.zeros(1, 0, 4, 3), ["image is empty"]),
    (torch.zeros(4, 4, 3), ["IMAGE batch [B, H, W, C]", "(4, 4, 3)"]),
    (np.zeros((1, 4, 4, 3), dtype=np.float32), ["IMAGE tensor", "got ndarray"]),
    ([[0.5]], ["IMAGE tensor", "got list"]),
])
def test_upscale_node_refuses_unusable_tensors_before_any_work(image, words):
    pipeline = FakePipeline()
    with pytest.raises(errors.InputImageError) as refused:
        local_nodes.PASDUpscale().upscale(image, pipeline, **sampler_values())
    assert all(w in str(refused.value) for w in words), str(refused.value)
    assert pipeline.settings == [] and pipeline.described == []


def test_upscale_node_refuses_a_4096_square_at_x4_before_any_work():
    pipeline = FakePipeline()
    image = torch.zeros(1, 1, 1, 3).expand(1, 4096, 4096, 3)  # a real-size batch without the memory
    with pytest.raises(errors.InputImageError, match=r"16384×16384 control image \(268.4 megapixels\)"):
        local_nodes.PASDUpscale().upscale(image, pipeline, **sampler_values(scale=4))
    assert pipeline.settings == [] and pipeline.described == []


def test_rounding_overshoot_is_clamped_silently():
    pipeline = FakePipeline()
    image = torch.full((1, 2, 2, 3), 0.5)
    image[0, 0, 0] = 1.0005
    image[0, 1, 1] = -0.0005
    result, _caption = local_nodes.PASDUpscale().upscale(image, pipeline, **sampler_values(scale=1))
    assert result[0, 0, 0].tolist() == [1.0, 1.0, 1.0] and result[0, 1, 1].tolist() == [0.0, 0.0, 0.0]


def test_color_fix_node_names_the_bad_input():
    good = torch.rand(1, 8, 8, 3)
    with pytest.raises(errors.InputImageError, match="reference holds NaN"):
        color_fix_nodes.PASDColorFix().fix(good, torch.full((1, 8, 8, 3), float("nan")), "wavelet")
    with pytest.raises(errors.InputImageError, match="reference must be an IMAGE tensor"):
        color_fix_nodes.PASDColorFix().fix(good, None, "wavelet")
    with pytest.raises(errors.InputImageError, match=r"image holds values from 0 to 255.*divide by 255"):
        color_fix_nodes.PASDColorFix().fix(torch.arange(256.0).reshape(1, 16, 16, 1).expand(-1, -1, -1, 3), good,
                                   "adain")


def test_fal_node_refuses_bad_or_oversized_images_before_any_request(stub):
    values = table.defaults(table.REMOTE_PARAMS)
    with pytest.raises(errors.InputImageError, match="NaN"):
        remote_nodes.PASDUpscaleFal().upscale(torch.full((1, 4, 4, 3), float("nan")), **values)
    oversized = torch.zeros(1, 1, 1, 1).expand(1, 8193, 8193, 1)
    with pytest.raises(errors.InputImageError, match=r"image is 8193×8193 \(67.1 megapixels\); the limit is 67.1 "
                                                     r"megapixels \(8192×8192\)"):
        remote_nodes.PASDUpscaleFal().upscale(oversized, **values)
    assert stub.recorded == []
