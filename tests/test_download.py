"""Downloads land in the official layout; without a network the error says what to fetch and where (no real network)."""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

from pasd_core.errors import ModelError
from pasd_core.weights.download import ensure_pasd_checkpoint, ensure_sd15_base

PASD_REPO_FILES = [
    f"{folder}/{part}/{name}"
    for folder in ("pasd/checkpoint-100000", "pasd_light/checkpoint-120000", "pasd_rrdb/checkpoint-100000")
    for part in ("unet", "controlnet")
    for name in ("config.json", "diffusion_pytorch_model.safetensors")
] + ["pasd/checkpoint-100000/scaler.pt", "README.md"]


def fake_hub(monkeypatch, repo_files: list[str], calls: list | None = None) -> None:
    """snapshot_download that 'downloads' the repo files matching allow_patterns, as huggingface_hub does."""
    def snapshot_download(repo_id, *, allow_patterns, local_dir, **kwargs):
        if calls is not None:
            calls.append((repo_id, list(allow_patterns)))
        for name in repo_files:
            if any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(local_dir) / name).write_text("{}")
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)


def failing_hub(monkeypatch, error: Exception) -> None:
    def snapshot_download(*args, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)


def test_pasd_download_lands_in_the_official_layout(monkeypatch, tmp_path):
    calls: list = []
    fake_hub(monkeypatch, PASD_REPO_FILES, calls)
    folder = ensure_pasd_checkpoint("pasd", tmp_path)
    assert folder == tmp_path / "pasd" / "checkpoint-100000"
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (folder / "controlnet" / "config.json").is_file()
    assert not (folder / "scaler.pt").exists()  # training state is not fetched
    assert calls[0][0] == "yangtao9009/PASD"


def test_variant_with_undocumented_step_finds_its_checkpoint(monkeypatch, tmp_path):
    fake_hub(monkeypatch, PASD_REPO_FILES)
    assert ensure_pasd_checkpoint("pasd_rrdb", tmp_path) == tmp_path / "pasd_rrdb" / "checkpoint-100000"


def test_present_checkpoint_needs_no_network(monkeypatch, tmp_path):
    fake_hub(monkeypatch, PASD_REPO_FILES)
    ensure_pasd_checkpoint("pasd_light", tmp_path)
    failing_hub(monkeypatch, AssertionError("the network was used"))
    assert ensure_pasd_checkpoint("pasd_light", tmp_path) == tmp_path / "pasd_light" / "checkpoint-120000"


@pytest.mark.parametrize("error", [LocalEntryNotFoundError("offline mode is enabled"),
                                   ConnectionError("Name or service not known")])
def test_offline_pasd_download_says_what_to_fetch_and_where(monkeypatch, tmp_path, error):
    failing_hub(monkeypatch, error)
    with pytest.raises(ModelError) as caught:
        ensure_pasd_checkpoint("pasd", tmp_path / "models" / "pasd")
    message = str(caught.value)
    assert type(error).__name__ in message
    assert "https://huggingface.co/yangtao9009/PASD/tree/main/pasd/checkpoint-100000" in message
    assert "unet/config.json, unet/diffusion_pytorch_model.safetensors, controlnet/config.json, " \
           "controlnet/diffusion_pytorch_model.safetensors" in message
    assert f"put them in {tmp_path / 'models' / 'pasd' / 'pasd' / 'checkpoint-100000'}/" in message


def test_download_without_the_files_is_an_error(monkeypatch, tmp_path):
    fake_hub(monkeypatch, ["README.md"])
    with pytest.raises(ModelError, match=r"without its files.*main/pasd_light_color \(inside its checkpoint-<step>"):
        ensure_pasd_checkpoint("pasd_light_color", tmp_path)


def test_unknown_variant_lists_the_known_ones(tmp_path):
    with pytest.raises(ModelError, match="pasd, pasd_light, pasd_rrdb, pasd_light_rrdb, pasd_light_color"):
        ensure_pasd_checkpoint("pasd_xl", tmp_path)


def test_missing_huggingface_hub_gives_manual_instructions(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(ModelError, match=r"huggingface_hub package is not installed.*Download unet/config.json"):
        ensure_pasd_checkpoint("pasd", tmp_path)


SD15_REPO_FILES = ["model_index.json", "unet/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
                   "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors", "tokenizer/merges.txt",
                   "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
                   "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"]


def test_sd15_base_download_takes_only_what_pasd_uses(monkeypatch, tmp_path):
    calls: list = []
    fake_hub(monkeypatch, SD15_REPO_FILES, calls)
    folder = ensure_sd15_base(tmp_path)
    assert folder == tmp_path / "stable-diffusion-v1-5"
    assert sorted(p.parent.name for p in folder.rglob("*.*")).count("tokenizer") == 4
    assert not (folder / "unet").exists() and not (folder / "text_encoder" / "model.fp16.safetensors").exists()
    assert calls[0][0] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    failing_hub(monkeypatch, AssertionError("the network was used"))
    assert ensure_sd15_base(tmp_path) == folder


def test_offline_sd15_download_says_what_to_fetch_and_where(monkeypatch, tmp_path):
    failing_hub(monkeypatch, LocalEntryNotFoundError("offline"))
    with pytest.raises(ModelError) as caught:
        ensure_sd15_base(tmp_path)
    message = str(caught.value)
    assert "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert "text_encoder/model.safetensors" in message and "vae/diffusion_pytorch_model.safetensors" in message
    assert f"put them in {tmp_path / 'stable-diffusion-v1-5'}/" in message
    assert "single-file checkpoint" in message
