"""Shared test fixtures: the official-parity data and tiny PASD pipelines built from it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIXTURES = Path(__file__).parent / "fixtures" / "pasd_official_tiny"
CHECKPOINTS = FIXTURES / "checkpoints"
SD15 = CHECKPOINTS / "stable-diffusion-v1-5"
PASD = CHECKPOINTS / "pasd" / "checkpoint-100000"
PASD_LIGHT = CHECKPOINTS / "pasd_light" / "checkpoint-120000"
CASES = sorted(p.name for p in (FIXTURES / "cases").iterdir())

SDXL_FIXTURES = Path(__file__).parent / "fixtures" / "pasd_sdxl_official_tiny"
SDXL_BASE = SDXL_FIXTURES / "checkpoints" / "stable-diffusion-xl-base-1.0"
PASD_SDXL = SDXL_FIXTURES / "checkpoints" / "pasd_sdxl" / "checkpoint-200000"
SDXL_CASES = sorted(p.name for p in (SDXL_FIXTURES / "cases").iterdir())

# The prompt stage (caption, classification) and colorization, made by the official scripts (their README).
PROMPT_FIXTURES = Path(__file__).parent / "fixtures" / "pasd_caption_official_tiny"
TINY_COCA = PROMPT_FIXTURES / "checkpoints" / "pasd_prompt" / "coca_tiny"
PASD_COLOR = PROMPT_FIXTURES / "checkpoints" / "pasd_color" / "checkpoint-180000"
PROMPT_CASES = sorted(p.name for p in (PROMPT_FIXTURES / "cases").iterdir())

# The fixtures' variant names: (base model folder, PASD checkpoint folder) of each.
MODELS = {"pasd": (SD15, PASD), "pasd_light": (SD15, PASD_LIGHT), "pasd_sdxl": (SDXL_BASE, PASD_SDXL),
          "pasd_color": (SD15, PASD_COLOR)}


def case_data(name: str) -> dict:
    """case.json of a parity case (SD1.5 or SDXL), with the base and checkpoint folders its variant uses."""
    root = SDXL_FIXTURES if name in SDXL_CASES else PROMPT_FIXTURES if name in PROMPT_CASES else FIXTURES
    folder = root / "cases" / name
    data = json.loads((folder / "case.json").read_text())
    data["dir"] = folder
    data.setdefault("family", "sd15")
    data["base"], data["checkpoint"] = MODELS[data["variant"]]
    data["settings"] = {k: v for k, v in data["params"].items() if k != "variant"}
    # these sets were made with the official prompt stage off (--high_level_info given no value)
    data["settings"].setdefault("high_level_info", "none")
    return data


@pytest.fixture(scope="session")
def tiny_pipeline():
    """A loaded tiny PASD pipeline per fixture variant (fp32, CPU), built once per test session."""
    from pasd_core.engine.pipeline import PASDPipeline

    cache: dict[str, PASDPipeline] = {}

    def get(variant: str = "pasd") -> PASDPipeline:
        if variant not in cache:
            cache[variant] = PASDPipeline.from_pretrained(*MODELS[variant], device="cpu", dtype="fp32")
        return cache[variant]

    return get


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> Path:
    """The seeded ResNet-50 of the prompt-stage fixtures (~100 MB, rebuilt from its seed rather than committed)."""
    from tools.prompt_models import write_classifier_folder

    folder = tmp_path_factory.mktemp("pasd_prompt") / "resnet50"
    write_classifier_folder(str(folder))
    return folder


@pytest.fixture()
def pasd_copy(tmp_path: Path) -> Path:
    """A writable copy of the tiny PASD checkpoint (for corrupting it)."""
    target = tmp_path / "pasd"
    shutil.copytree(PASD, target)
    for path in target.rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)
    return target


# Tests of the sampler leave the prompt stage off (captioning has tests of its own); the parity sets ran with it off
FAST_SETTINGS = {"steps": 10, "process_size": 64, "scale": 1, "seed": 1, "high_level_info": "none"}


# --- fal: a clean environment and the stub of fal's queue (tests/fal_stub.py) ---------------------------

@pytest.fixture
def fal_env(monkeypatch, tmp_path):
    """No real key, config file or fal URL from the machine running the tests."""
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "FAL_QUEUE_URL", "FAL_REST_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PASD_FAL_CONFIG", str(tmp_path / "absent-fal.json"))


@pytest.fixture
def stub(monkeypatch, fal_env):
    """fal's queue on 127.0.0.1, with FAKE_KEY as the key and every fal URL pointing at it."""
    from fal_stub import FAKE_KEY, FalStub

    with FalStub(key=FAKE_KEY) as server:
        monkeypatch.setenv("FAL_KEY", FAKE_KEY)
        monkeypatch.setenv("FAL_QUEUE_URL", server.url)
        monkeypatch.setenv("FAL_REST_URL", server.url)
        yield server


@pytest.fixture
def delays():
    """Back-off waits the fal client asked for (recorded instead of slept)."""
    return []


@pytest.fixture
def client(delays):
    """A FalQueueClient factory with quick polls and retries, for the stub."""
    from pasd_core.fal import FalQueueClient, RetryPolicy

    fast_retry = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, jitter=0.0)

    def make(**options):
        settings = {"poll_interval": 0.01, "retry": fast_retry, "sleep": delays.append, "timeout": 10.0,
                    "http_timeout": 5.0, **options}
        return FalQueueClient(**settings)

    return make
