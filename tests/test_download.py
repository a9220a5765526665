"""Downloads land in the official layout; without a network the error says what to fetch and where (no real network)."""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

from pasd_core.__main__ import main
from pasd_core.errors import ModelError
from pasd_core.weights.download import SDXL_FILES, ensure_base, ensure_fp16_fix_vae, ensure_pasd_checkpoint

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
    folder = ensure_base(tmp_path)
    assert folder == tmp_path / "stable-diffusion-v1-5"
    assert sorted(p.parent.name for p in folder.rglob("*.*")).count("tokenizer") == 4
    assert not (folder / "unet").exists() and not (folder / "text_encoder" / "model.fp16.safetensors").exists()
    assert calls[0][0] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    failing_hub(monkeypatch, AssertionError("the network was used"))
    assert ensure_base(tmp_path) == folder


def test_offline_sd15_download_says_what_to_fetch_and_where(monkeypatch, tmp_path):
    failing_hub(monkeypatch, LocalEntryNotFoundError("offline"))
    with pytest.raises(ModelError) as caught:
        ensure_base(tmp_path)
    message = str(caught.value)
    assert "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert "text_encoder/model.safetensors" in message and "vae/diffusion_pytorch_model.safetensors" in message
    assert f"put them in {tmp_path / 'stable-diffusion-v1-5'}/" in message
    assert "single-file checkpoint" in message


# --- PASD-SDXL: the checkpoint from yangtao9009/PASD-SDXL, the base parts from stabilityai's SDXL 1.0 ------------

PASD_SDXL_REPO_FILES = [f"pasd_sdxl/checkpoint-200000/{name}" for name in (
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "controlnet/config.json",
    "controlnet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json", "optimizer.bin")]
SDXL_REPO_FILES = [*SDXL_FILES, "unet/diffusion_pytorch_model.safetensors", "text_encoder_2/model.fp16.safetensors",
                   "sd_xl_base_1.0.safetensors", "scheduler/scheduler_config.json"]
VAE_REPO_FILES = ["config.json", "diffusion_pytorch_model.safetensors", "sdxl_vae.safetensors", "README.md"]
REPOS = {"yangtao9009/PASD": PASD_REPO_FILES, "yangtao9009/PASD-SDXL": PASD_SDXL_REPO_FILES,
         "stable-diffusion-v1-5/stable-diffusion-v1-5": SD15_REPO_FILES,
         "stabilityai/stable-diffusion-xl-base-1.0": SDXL_REPO_FILES, "madebyollin/sdxl-vae-fp16-fix": VAE_REPO_FILES}


def fake_hubs(monkeypatch, calls: list) -> None:
    """snapshot_download over several repositories (REPOS), recording (repo, patterns) of each call."""
    def snapshot_download(repo_id, *, allow_patterns, local_dir, **kwargs):
        calls.append((repo_id, list(allow_patterns)))
        for name in REPOS[repo_id]:
            if any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(local_dir) / name).write_text("{}")
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)


def test_pasd_sdxl_download_takes_the_checkpoint_with_its_scheduler(monkeypatch, tmp_path):
    calls: list = []
    fake_hubs(monkeypatch, calls)
    folder = ensure_pasd_checkpoint("pasd_sdxl", tmp_path)
    assert folder == tmp_path / "pasd_sdxl" / "checkpoint-200000"
    assert (folder / "scheduler" / "scheduler_config.json").is_file()
    assert (folder / "controlnet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (folder / "optimizer.bin").exists()
    assert [repo for repo, _ in calls] == ["yangtao9009/PASD-SDXL"]


def test_sdxl_base_download_takes_only_what_pasd_uses(monkeypatch, tmp_path):
    calls: list = []
    fake_hubs(monkeypatch, calls)
    folder = ensure_base(tmp_path, "sdxl")
    assert folder == tmp_path / "stable-diffusion-xl-base-1.0"
    assert (folder / "model_index.json").is_file()  # how ComfyUI's models/diffusers list shows the folder
    assert (folder / "text_encoder_2" / "model.safetensors").is_file()
    assert (folder / "tokenizer_2" / "vocab.json").is_file()
    assert not (folder / "unet").exists() and not (folder / "sd_xl_base_1.0.safetensors").exists()
    assert not (folder / "text_encoder_2" / "model.fp16.safetensors").exists()
    assert calls[0][0] == "stabilityai/stable-diffusion-xl-base-1.0"


def test_present_sdxl_files_need_no_network(monkeypatch, tmp_path):
    fake_hubs(monkeypatch, [])
    checkpoint = ensure_pasd_checkpoint("pasd_sdxl", tmp_path / "pasd")
    base = ensure_base(tmp_path / "diffusers", "sdxl")
    failing_hub(monkeypatch, AssertionError("the network was used"))
    assert ensure_pasd_checkpoint("pasd_sdxl", tmp_path / "pasd") == checkpoint
    assert ensure_base(tmp_path / "diffusers", "sdxl") == base


def test_a_sdxl_checkpoint_without_its_scheduler_is_fetched_again(monkeypatch, tmp_path):
    calls: list = []
    fake_hubs(monkeypatch, calls)
    folder = ensure_pasd_checkpoint("pasd_sdxl", tmp_path)
    (folder / "scheduler" / "scheduler_config.json").unlink()
    assert ensure_pasd_checkpoint("pasd_sdxl", tmp_path) == folder
    assert len(calls) == 2 and (folder / "scheduler" / "scheduler_config.json").is_file()


def test_offline_sdxl_download_says_what_to_fetch_and_where(monkeypatch, tmp_path):
    failing_hub(monkeypatch, LocalEntryNotFoundError("offline mode is enabled"))
    with pytest.raises(ModelError) as caught:
        ensure_pasd_checkpoint("pasd_sdxl", tmp_path / "pasd")
    message = str(caught.value)
    assert "LocalEntryNotFoundError" in message
    assert "https://huggingface.co/yangtao9009/PASD-SDXL/tree/main/pasd_sdxl/checkpoint-200000" in message
    assert "controlnet/diffusion_pytorch_model.safetensors, scheduler/scheduler_config.json" in message
    assert f"put them in {tmp_path / 'pasd' / 'pasd_sdxl' / 'checkpoint-200000'}/" in message

    with pytest.raises(ModelError) as caught:
        ensure_base(tmp_path / "diffusers", "sdxl")
    message = str(caught.value)
    assert "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/tree/main " in message
    assert "text_encoder_2/model.safetensors" in message and "tokenizer_2/merges.txt" in message
    assert f"put them in {tmp_path / 'diffusers' / 'stable-diffusion-xl-base-1.0'}/" in message
    assert "SDXL base single-file checkpoint" in message

    with pytest.raises(ModelError) as caught:
        ensure_fp16_fix_vae(tmp_path / "vae")
    assert "https://huggingface.co/madebyollin/sdxl-vae-fp16-fix/tree/main and put them in " \
           f"{tmp_path / 'vae' / 'sdxl-vae-fp16-fix'}/" in str(caught.value)


# --- the command line prints the flags that use what it fetched ------------------------------------------------

def test_cli_download_sd15_by_default(monkeypatch, tmp_path, capsys):
    calls: list = []
    fake_hubs(monkeypatch, calls)
    assert main(["download", "--models-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == [
        "--pasd-model", str(tmp_path / "pasd" / "pasd" / "checkpoint-100000"),
        "--base-model", str(tmp_path / "diffusers" / "stable-diffusion-v1-5")]
    assert [repo for repo, _ in calls] == ["yangtao9009/PASD", "stable-diffusion-v1-5/stable-diffusion-v1-5"]


def test_cli_download_sdxl_prints_its_flags(monkeypatch, tmp_path, capsys):
    calls: list = []
    fake_hubs(monkeypatch, calls)
    models = tmp_path / "Comfy UI" / "models"  # a space: the printed line stays one shell word per path
    assert main(["download", "--family", "sdxl", "--fp16-fix-vae", "--models-dir", str(models)]) == 0
    vae = models / "vae" / "sdxl-vae-fp16-fix"
    assert capsys.readouterr().out.strip() == (
        f"--pasd-model '{models / 'pasd' / 'pasd_sdxl' / 'checkpoint-200000'}' "
        f"--base-model '{models / 'diffusers' / 'stable-diffusion-xl-base-1.0'}' --vae '{vae}'")
    assert (vae / "diffusion_pytorch_model.safetensors").is_file() and not (vae / "sdxl_vae.safetensors").exists()
    assert [repo for repo, _ in calls] == ["yangtao9009/PASD-SDXL", "stabilityai/stable-diffusion-xl-base-1.0",
                                           "madebyollin/sdxl-vae-fp16-fix"]


def test_cli_download_sd15_variant_is_kept(monkeypatch, tmp_path, capsys):
    fake_hubs(monkeypatch, [])
    assert main(["download", "--variant", "pasd_light", "--models-dir", str(tmp_path)]) == 0
    assert str(tmp_path / "pasd" / "pasd_light" / "checkpoint-120000") in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "expected"), [
    (["--family", "sdxl", "--variant", "pasd_light"], "--variant picks a PASD-SD1.5 checkpoint"),
    (["--variant", "pasd_sdxl"], "use --family sdxl"),
    (["--fp16-fix-vae"], "use it with --family sdxl"),
])
def test_cli_download_refuses_mixed_families_before_any_download(monkeypatch, tmp_path, capsys, argv, expected):
    failing_hub(monkeypatch, AssertionError("the network was used"))
    assert main(["download", "--models-dir", str(tmp_path), *argv]) == 2
    assert expected in capsys.readouterr().err


def test_cli_download_offline_prints_the_instructions(monkeypatch, tmp_path, capsys):
    failing_hub(monkeypatch, LocalEntryNotFoundError("offline mode is enabled"))
    assert main(["download", "--family", "sdxl", "--models-dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: cannot download the PASD 'pasd_sdxl' checkpoint") and "Traceback" not in error
    assert "https://huggingface.co/yangtao9009/PASD-SDXL/tree/main/pasd_sdxl/checkpoint-200000" in error
