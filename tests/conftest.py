"""pytest fixtures shared by the test files (their helpers live in tests/support: no module imports this one)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from support.paths import MODELS, PASD, ROOT

sys.path.insert(0, str(ROOT))  # pasd_core and nodes, as the tests import them


@pytest.fixture(autouse=True)
def no_real_hub(monkeypatch):
    """No test reaches the real Hugging Face Hub: offline unless a test points huggingface_hub at the hub stub
    (HubStub.point_hub_here turns this off)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


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
    from support.prompt_models import write_classifier_folder

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


# --- fal: a clean environment and the stub of fal's queue (tests/support/fal_stub.py) -------------------

@pytest.fixture
def fal_env(monkeypatch, tmp_path):
    """No real key, config file or fal URL from the machine running the tests."""
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "FAL_QUEUE_URL", "FAL_REST_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PASD_FAL_CONFIG", str(tmp_path / "absent-fal.json"))


@pytest.fixture
def stub(monkeypatch, fal_env):
    """fal's queue on 127.0.0.1, with FAKE_KEY as the key and every fal URL pointing at it."""
    from support.fal_stub import FAKE_KEY, FalStub

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
