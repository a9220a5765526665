"""Downloads land in the official layout, hold exactly the hub's bytes or nothing, and without a network the error
says what to fetch and where. The hub is a stub on 127.0.0.1 that huggingface_hub's own client talks to
(tests/support/hub_stub.py); no real network."""

from __future__ import annotations

import hashlib
import sys

import huggingface_hub
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

from pasd_core.__main__ import main
from pasd_core.errors import ModelError
from pasd_core.weights.download import SDXL_FILES, ensure_base, ensure_fp16_fix_vae, ensure_pasd_checkpoint
from support.hub_stub import Fault, HubStub

PASD_REPO_FILES = [
    f"{folder}/{part}/{name}"
    for folder in ("pasd/checkpoint-100000", "pasd_light/checkpoint-120000", "pasd_rrdb/checkpoint-100000")
    for part in ("unet", "controlnet")
    for name in ("config.json", "diffusion_pytorch_model.safetensors")
] + ["pasd/checkpoint-100000/scaler.pt", "README.md"]


SD15_REPO_FILES = ["model_index.json", "unet/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
                   "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors", "tokenizer/merges.txt",
                   "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
                   "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"]


PASD_SDXL_REPO_FILES = [f"pasd_sdxl/checkpoint-200000/{name}" for name in (
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "controlnet/config.json",
    "controlnet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json", "optimizer.bin")]
SDXL_REPO_FILES = [*SDXL_FILES, "unet/diffusion_pytorch_model.safetensors", "text_encoder_2/model.fp16.safetensors",
                   "sd_xl_base_1.0.safetensors", "scheduler/scheduler_config.json"]
VAE_REPO_FILES = ["config.json", "diffusion_pytorch_model.safetensors", "sdxl_vae.safetensors", "README.md"]
PROMPT_REPOS = {"laion/mscoco_finetuned_CoCa-ViT-L-14-laion2B-s13B-b90k": ["open_clip_pytorch_model.bin", "README.md"],
                "timm/resnet50.tv2_in1k": ["model.safetensors", "pytorch_model.bin", "config.json"]}
REPOS = {**PROMPT_REPOS, "yangtao9009/PASD": PASD_REPO_FILES, "yangtao9009/PASD-SDXL": PASD_SDXL_REPO_FILES,
         "stable-diffusion-v1-5/stable-diffusion-v1-5": SD15_REPO_FILES,
         "stabilityai/stable-diffusion-xl-base-1.0": SDXL_REPO_FILES, "madebyollin/sdxl-vae-fp16-fix": VAE_REPO_FILES}


def content(name: str) -> bytes:
    """A file's stand-in bytes: a config is a small git file, anything else 4 KiB, an LFS file on the hub."""
    return b"{}" if name.endswith((".json", ".txt", ".md")) else hashlib.sha256(name.encode()).digest() * 128


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The hub on 127.0.0.1 serving REPOS, with huggingface_hub pointed at it."""
    with HubStub({repo: {name: content(name) for name in files} for repo, files in REPOS.items()}) as stub:
        stub.point_hub_here(monkeypatch, tmp_path / "hf_home")
        yield stub


def fetched(hub: HubStub) -> list[str]:
    """The repositories downloaded from, in order (each download asks for the repository's current commit first)."""
    return [call.repo_id for call in hub.calls("info")]


def failing_hub(monkeypatch, error: Exception) -> None:
    """The hub out of reach: its first answer (the repository's commit) and any download raise `error`."""
    def unreachable(*args, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)


def test_pasd_download_lands_in_the_official_layout(monkeypatch, tmp_path, hub):
    folder = ensure_pasd_checkpoint("pasd", tmp_path)
    assert folder == tmp_path / "pasd" / "checkpoint-100000"
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (folder / "controlnet" / "config.json").is_file()
    assert not (folder / "scaler.pt").exists()  # training state is not fetched
    assert fetched(hub)[0] == "yangtao9009/PASD"


def test_variant_with_undocumented_step_finds_its_checkpoint(monkeypatch, tmp_path, hub):
    assert ensure_pasd_checkpoint("pasd_rrdb", tmp_path) == tmp_path / "pasd_rrdb" / "checkpoint-100000"


def test_present_checkpoint_needs_no_network(monkeypatch, tmp_path, hub):
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


def test_download_without_the_files_is_an_error(monkeypatch, tmp_path, hub):
    hub.add_repo("yangtao9009/PASD", {"README.md": b"# no checkpoints here\n"})
    with pytest.raises(ModelError, match=r"without its files.*main/pasd_light_color \(inside its checkpoint-<step>"):
        ensure_pasd_checkpoint("pasd_light_color", tmp_path)


UNET = "pasd/checkpoint-100000/unet/diffusion_pytorch_model.safetensors"  # an LFS file on the hub
UNET_CONFIG = "pasd/checkpoint-100000/unet/config.json"  # a plain git file


@pytest.mark.parametrize("damaged", [UNET, UNET_CONFIG])
def test_a_file_with_the_right_size_and_wrong_bytes_is_deleted_and_named(tmp_path, hub, damaged):
    """huggingface_hub checks a file's size only: the hub's sha256 (LFS) or git blob sha1 decides here."""
    hub.misbehave("yangtao9009/PASD", damaged, Fault("corrupt", times=1))
    with pytest.raises(ModelError) as caught:
        ensure_pasd_checkpoint("pasd", tmp_path)
    message = str(caught.value)
    assert damaged in message and "arrived damaged" in message and "run the same command again" in message
    assert not (tmp_path / damaged).exists()  # nothing wrong is kept
    folder = ensure_pasd_checkpoint("pasd", tmp_path)  # the next run fetches it again, right this time
    assert (tmp_path / damaged).read_bytes() == content(damaged) and folder == tmp_path / "pasd/checkpoint-100000"


def test_the_cli_download_of_a_damaged_file_fails_and_keeps_nothing_wrong(tmp_path, hub, capsys):
    hub.misbehave("yangtao9009/PASD", UNET, Fault("corrupt"))
    assert main(["download", "--models-dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err  # huggingface_hub's progress bar, then the error
    assert error.splitlines()[-1].startswith("error: ") and UNET in error and "Traceback" not in error
    assert not (tmp_path / "pasd" / UNET).exists()


@pytest.mark.parametrize("fault", [Fault("truncate"), Fault("fail", status=503), Fault("foreign_redirect")],
                         ids=["truncated", "server error", "redirect to a dead host"])
def test_a_failed_transfer_is_reported_and_leaves_no_file(tmp_path, hub, fault):
    hub.misbehave("yangtao9009/PASD", UNET, fault)
    with pytest.raises(ModelError, match=r"cannot download the PASD 'pasd' checkpoint \(.*\)\. Download unet/config"):
        ensure_pasd_checkpoint("pasd", tmp_path)
    assert not (tmp_path / UNET).exists()


def test_a_redirect_to_another_host_is_followed_but_its_bytes_are_checked(tmp_path, hub):
    hub.misbehave("yangtao9009/PASD", UNET, Fault("foreign_redirect", target=hub.foreign_url))
    ensure_pasd_checkpoint("pasd", tmp_path)  # the other host served the hub's bytes: kept
    assert (tmp_path / UNET).read_bytes() == content(UNET)
    assert all("authorization" not in call.headers for call in hub.calls(origin="foreign"))


def test_unknown_variant_lists_the_known_ones(tmp_path):
    with pytest.raises(ModelError, match="pasd, pasd_light, pasd_rrdb, pasd_light_rrdb, pasd_light_color"):
        ensure_pasd_checkpoint("pasd_xl", tmp_path)


def test_missing_huggingface_hub_gives_manual_instructions(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(ModelError, match=r"huggingface_hub package is not installed.*Download unet/config.json"):
        ensure_pasd_checkpoint("pasd", tmp_path)


def test_sd15_base_download_takes_only_what_pasd_uses(monkeypatch, tmp_path, hub):
    folder = ensure_base(tmp_path)
    assert folder == tmp_path / "stable-diffusion-v1-5"
    files = [p for p in folder.rglob("*.*") if ".cache" not in p.parts]  # not huggingface_hub's own bookkeeping
    assert sorted(p.parent.name for p in files).count("tokenizer") == 4
    assert not (folder / "unet").exists() and not (folder / "text_encoder" / "model.fp16.safetensors").exists()
    assert fetched(hub)[0] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
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

def test_pasd_sdxl_download_takes_the_checkpoint_with_its_scheduler(monkeypatch, tmp_path, hub):
    folder = ensure_pasd_checkpoint("pasd_sdxl", tmp_path)
    assert folder == tmp_path / "pasd_sdxl" / "checkpoint-200000"
    assert (folder / "scheduler" / "scheduler_config.json").is_file()
    assert (folder / "controlnet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (folder / "optimizer.bin").exists()
    assert fetched(hub) == ["yangtao9009/PASD-SDXL"]


def test_sdxl_base_download_takes_only_what_pasd_uses(monkeypatch, tmp_path, hub):
    folder = ensure_base(tmp_path, "sdxl")
    assert folder == tmp_path / "stable-diffusion-xl-base-1.0"
    assert (folder / "model_index.json").is_file()  # how ComfyUI's models/diffusers list shows the folder
    assert (folder / "text_encoder_2" / "model.safetensors").is_file()
    assert (folder / "tokenizer_2" / "vocab.json").is_file()
    assert not (folder / "unet").exists() and not (folder / "sd_xl_base_1.0.safetensors").exists()
    assert not (folder / "text_encoder_2" / "model.fp16.safetensors").exists()
    assert fetched(hub)[0] == "stabilityai/stable-diffusion-xl-base-1.0"


def test_present_sdxl_files_need_no_network(monkeypatch, tmp_path, hub):
    checkpoint = ensure_pasd_checkpoint("pasd_sdxl", tmp_path / "pasd")
    base = ensure_base(tmp_path / "diffusers", "sdxl")
    failing_hub(monkeypatch, AssertionError("the network was used"))
    assert ensure_pasd_checkpoint("pasd_sdxl", tmp_path / "pasd") == checkpoint
    assert ensure_base(tmp_path / "diffusers", "sdxl") == base


def test_a_sdxl_checkpoint_without_its_scheduler_is_fetched_again(monkeypatch, tmp_path, hub):
    folder = ensure_pasd_checkpoint("pasd_sdxl", tmp_path)
    (folder / "scheduler" / "scheduler_config.json").unlink()
    assert ensure_pasd_checkpoint("pasd_sdxl", tmp_path) == folder
    assert len(fetched(hub)) == 2 and (folder / "scheduler" / "scheduler_config.json").is_file()


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

def test_cli_download_sd15_by_default(monkeypatch, tmp_path, capsys, hub):
    assert main(["download", "--models-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == [
        "--pasd-model", str(tmp_path / "pasd" / "pasd" / "checkpoint-100000"),
        "--base-model", str(tmp_path / "diffusers" / "stable-diffusion-v1-5")]
    assert fetched(hub) == ["yangtao9009/PASD", "stable-diffusion-v1-5/stable-diffusion-v1-5"]


def test_cli_download_sdxl_prints_its_flags(monkeypatch, tmp_path, capsys, hub):
    models = tmp_path / "Comfy UI" / "models"  # a space: the printed line stays one shell word per path
    assert main(["download", "--family", "sdxl", "--fp16-fix-vae", "--models-dir", str(models)]) == 0
    vae = models / "vae" / "sdxl-vae-fp16-fix"
    assert capsys.readouterr().out.strip() == (
        f"--pasd-model '{models / 'pasd' / 'pasd_sdxl' / 'checkpoint-200000'}' "
        f"--base-model '{models / 'diffusers' / 'stable-diffusion-xl-base-1.0'}' --vae '{vae}'")
    assert (vae / "diffusion_pytorch_model.safetensors").is_file() and not (vae / "sdxl_vae.safetensors").exists()
    assert fetched(hub) == ["yangtao9009/PASD-SDXL", "stabilityai/stable-diffusion-xl-base-1.0",
                                           "madebyollin/sdxl-vae-fp16-fix"]


def test_cli_download_of_the_prompt_models_adds_what_their_repositories_lack(tmp_path, hub, capsys):
    """The CoCa repository holds only open_clip's weights and the ResNet-50 one no class names: the download writes
    open_clip's config and torchvision's categories beside them, and prints the flags that use them."""
    assert main(["download", "--captioner", "--classifier", "--models-dir", str(tmp_path)]) == 0
    captioner = tmp_path / "pasd_prompt" / "coca_ViT-L-14"
    classifier = tmp_path / "pasd_prompt" / "resnet50"
    assert (captioner / "open_clip_config.json").is_file() and (captioner / "open_clip_pytorch_model.bin").is_file()
    assert len((classifier / "categories.txt").read_text().splitlines()) == 1000
    assert not (classifier / "pytorch_model.bin").exists()  # only the safetensors weights are fetched
    assert capsys.readouterr().out.split()[-4:] == ["--caption-model", str(captioner),
                                                    "--classifier-model", str(classifier)]


def test_cli_download_sd15_variant_is_kept(monkeypatch, tmp_path, capsys, hub):
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


# --- the download command vouches for every file it finds, not only for those it fetched -------------------------

def test_the_download_command_checks_the_files_it_finds_and_replaces_a_damaged_one(tmp_path, hub, capsys):
    assert main(["download", "--models-dir", str(tmp_path)]) == 0
    damaged = tmp_path / "pasd" / UNET
    data = bytearray(damaged.read_bytes())
    data[0] ^= 1  # the right size, other bytes: what a bad disk or an interrupted copy leaves
    damaged.write_bytes(bytes(data))
    assert main(["download", "--models-dir", str(tmp_path)]) == 0
    assert damaged.read_bytes() == content(UNET)
    assert f"{UNET} in {tmp_path / 'pasd'} differs from the hub's copy: fetching it again" in capsys.readouterr().err
    assert not any(p.is_file() for p in (tmp_path / ".pasd_download").rglob("*") if ".cache" not in p.parts)


def test_offline_the_download_command_keeps_the_files_it_finds(monkeypatch, tmp_path, hub, capsys):
    assert main(["download", "--models-dir", str(tmp_path)]) == 0
    failing_hub(monkeypatch, LocalEntryNotFoundError("offline mode is enabled"))
    assert main(["download", "--models-dir", str(tmp_path)]) == 0
    assert "could not check" in capsys.readouterr().err
    assert (tmp_path / "pasd" / UNET).is_file()


def test_a_file_that_differs_is_replaced_only_by_a_checked_copy(tmp_path, hub, capsys):
    """The re-check never deletes first: when the hub's copy cannot come, the command fails and says the file in place
    is unchecked, and nothing is reported as kept."""
    assert main(["download", "--models-dir", str(tmp_path)]) == 0
    damaged = tmp_path / "pasd" / UNET
    data = bytearray(damaged.read_bytes())
    data[0] ^= 1
    damaged.write_bytes(bytes(data))
    hub.misbehave("yangtao9009/PASD", UNET, Fault("fail", status=503))
    assert main(["download", "--models-dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert "differ from the hub's copy and could not be fetched again" in error and "unchecked" in error
    assert damaged.read_bytes() == bytes(data)  # left as it was, not deleted


def test_progress_counts_a_file_once_however_many_bars_the_client_opens():
    """huggingface_hub's Xet path opens two bars over the same bytes: the furthest is what counts."""
    from pasd_core.weights.hub_fetch import _bar_class

    seen = []
    bar = _bar_class(seen.append)
    first, second = bar(total=1000, disable=True), bar(total=1000, disable=True)
    first.update(500)
    second.update(500)
    assert max(seen) == 500
