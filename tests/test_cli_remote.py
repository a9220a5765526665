"""`python -m pasd_core upscale ... --remote fal`: the shared parameters go to fal, nothing else does."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from pasd_core.__main__ import main
from support.fal_stub import FalStub, Job, Reply

KEY = "cli-test-key:SECRET-0a1b2c3d"


@pytest.fixture(autouse=True)
def no_machine_key(monkeypatch, tmp_path):
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "FAL_QUEUE_URL", "FAL_REST_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PASD_FAL_CONFIG", str(tmp_path / "absent.json"))


@pytest.fixture
def stub(monkeypatch):
    with FalStub(key=KEY) as server:
        monkeypatch.setenv("FAL_QUEUE_URL", server.url)
        monkeypatch.setenv("FAL_REST_URL", server.url)
        yield server


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "in.png"
    Image.new("RGB", (12, 8), (20, 140, 220)).save(path)
    return path


def _remote(source, output, *flags):
    return main(["upscale", str(source), "-o", str(output), "--remote", "fal", *flags])


def test_remote_run_sends_the_shared_parameters_and_writes_the_result(stub, source, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAL_KEY", KEY)
    output = tmp_path / "out.png"
    assert _remote(source, output, "--scale", "3", "--guidance-scale", "4.5", "--prompt", "a lake") == 0
    assert Image.open(output).size == (36, 24)
    (submit,) = stub.calls("submit")
    body = json.loads(submit.body)
    assert submit.headers["authorization"] == f"Key {KEY}"
    assert {k: v for k, v in body.items() if k != "image_url"} == {
        "scale": 3, "steps": 25, "guidance_scale": 4.5, "conditioning_scale": 0.8, "prompt": "a lake",
        "negative_prompt": "blurry, dirty, messy, frames, deformed, dotted, noise, raster lines, unclear, lowres, "
                           "over-smoothed, painting, ai generated"}
    assert KEY not in capsys.readouterr().err


@pytest.mark.parametrize("flags, words", [
    (["--seed", "3"], ["--seed", "only apply to local runs"]),
    (["--process-size", "512", "--color-fix", "none"], ["--process-size", "--color-fix"]),
    (["--pasd-model", "models/pasd"], ["--pasd-model"]),
    (["--steps", "5"], ["steps=5", "between 10 and 50"]),
])
def test_local_only_or_invalid_flags_are_refused_before_any_request(stub, source, tmp_path, monkeypatch, capsys,
                                                                    flags, words):
    monkeypatch.setenv("FAL_KEY", KEY)
    output = tmp_path / "out.png"
    assert _remote(source, output, *flags) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words) and "Traceback" not in err
    assert stub.recorded == [] and not output.exists()


def test_missing_key_fails_before_any_request(stub, source, tmp_path, capsys):
    output = tmp_path / "out.png"
    assert _remote(source, output) == 1
    assert "FAL_KEY" in capsys.readouterr().err
    assert stub.recorded == [] and not output.exists()


def test_rejected_key_is_explained_without_echoing_it(stub, source, tmp_path, monkeypatch, capsys):
    wrong = "wrong-key:SECRET-ffffffff"
    monkeypatch.setenv("FAL_KEY", wrong)
    output = tmp_path / "out.png"
    assert _remote(source, output) == 1
    err = capsys.readouterr().err
    assert "401" in err and "FAL_KEY" in err and "SECRET-ffffffff" not in err
    assert not output.exists()


@pytest.mark.parametrize("flags", [["--guidance-scale", "nan"], ["--conditioning-scale", "inf"]])
def test_a_number_that_is_not_finite_is_refused_before_any_request(stub, source, tmp_path, monkeypatch, capsys,
                                                                   flags):
    monkeypatch.setenv("FAL_KEY", KEY)
    output = tmp_path / "out.png"
    assert _remote(source, output, *flags) == 2
    err = capsys.readouterr().err
    assert flags[0].removeprefix("--").replace("-", "_") in err and "finite" in err and "Traceback" not in err
    assert stub.recorded == [] and not output.exists()


def test_a_key_with_a_line_break_is_refused_without_printing_it(stub, source, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAL_KEY", KEY.replace(":", "\n:"))
    output = tmp_path / "out.png"
    assert _remote(source, output) == 1
    err = capsys.readouterr().err
    assert "FAL_KEY contains a line break" in err and "SECRET" not in err and "cli-test" not in err
    assert stub.recorded == [] and not output.exists()


def test_a_plain_http_queue_url_is_refused_before_the_key_is_sent(source, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAL_KEY", KEY)
    monkeypatch.setenv("FAL_QUEUE_URL", "http://queue.example.com")
    output = tmp_path / "out.png"
    assert _remote(source, output) == 1
    err = capsys.readouterr().err
    assert "FAL_QUEUE_URL='http://queue.example.com' is plain http" in err and "SECRET" not in err
    assert not output.exists()


def test_the_key_echoed_in_fal_log_lines_is_not_printed(stub, source, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAL_KEY", KEY)
    stub.plan = lambda index, image, body: Job(queue_positions=(), progress_polls=0)
    stub.push("status", Reply(200, {"status": "IN_PROGRESS", "logs": [{"message": f"header: Key {KEY}"}]}))
    output = tmp_path / "out.png"
    assert _remote(source, output) == 0
    err = capsys.readouterr().err
    assert "fal: fal-ai/pasd: header: Key [FAL_KEY]" in err and "SECRET" not in err
