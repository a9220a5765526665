"""The hub stub is faithful: huggingface_hub's own client, pointed at it, lists, downloads and fails as it does
against the real hub (no network beyond 127.0.0.1). Where the client keeps a wrong file, the test says so: that
is the gap the project's own checksum step has to close."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder

from support.hub_stub import Fault, HubStub

REPO = "org/pasd-tiny"
UNET = "unet/diffusion_pytorch_model.safetensors"
CONTROLNET = "controlnet/diffusion_pytorch_model.safetensors"
FILES = {
    "README.md": b"# a tiny PASD\n",
    "unet/config.json": b'{"_class_name": "UNet2DConditionModel"}',
    UNET: random.Random(1).randbytes(5000),
    "controlnet/config.json": b'{"_class_name": "ControlNetModel"}',
    CONTROLNET: random.Random(2).randbytes(3000),
    "scaler.pt": random.Random(3).randbytes(2000),  # training state: never asked for
}
TOKEN = "hf_stub_token_not_a_secret"


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    with HubStub({REPO: FILES}, page_size=2) as stub:  # pages of 2 entries: the tree listing is paged
        stub.point_hub_here(monkeypatch, tmp_path / "hf_home")
        yield stub


def files_in(folder: Path) -> dict[str, bytes]:
    """What a download left in `folder`, minus huggingface_hub's own bookkeeping under .cache/."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*")
            if path.is_file() and ".cache" not in path.relative_to(folder).parts}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_snapshot_download_fetches_exactly_the_allowed_files(hub, tmp_path):
    out = tmp_path / "pasd"
    assert snapshot_download(REPO, allow_patterns=["unet/*", "controlnet/*.json", "README.md"], local_dir=out) \
        == str(out)
    wanted = ["README.md", "unet/config.json", UNET, "controlnet/config.json"]
    assert files_in(out) == {path: FILES[path] for path in wanted}
    assert hub.is_lfs(REPO, UNET) and not hub.is_lfs(REPO, "unet/config.json")
    assert [call.file for call in hub.calls("cdn")] == [UNET]  # the LFS file comes from the CDN, the rest from /resolve
    assert sorted(call.file for call in hub.calls("resolve", method="GET")) == sorted(set(wanted) - {UNET})
    assert len(hub.calls("tree")) == 4  # 6 files and 2 folders, 2 a page: it followed every Link: rel="next"
    assert not hub.calls("unknown") and not hub.calls("harnesses") and not hub.calls("telemetry")


def test_hf_hub_download_caches_blobs_under_the_ids_the_hub_gives(hub, tmp_path):
    cache = tmp_path / "cache"
    weights = Path(hf_hub_download(REPO, UNET, cache_dir=cache))
    config = Path(hf_hub_download(REPO, "unet/config.json", cache_dir=cache))
    assert weights.read_bytes() == FILES[UNET] and config.read_bytes() == FILES["unet/config.json"]
    assert weights.parent.parent.name == hub.commit(REPO)  # snapshots/<commit>/unet/...
    assert weights.resolve().name == hashlib.sha256(FILES[UNET]).hexdigest()  # LFS: its sha256 (X-Linked-Etag)
    assert config.resolve().name == git_blob_sha1(FILES["unet/config.json"])  # git: its blob sha1 (ETag)


def test_paths_info_and_listings_give_the_hub_hashes(hub):
    info = {entry.path: entry for entry in HfApi().get_paths_info(REPO, [UNET, "unet/config.json", "unet", "nope.bin"])}
    assert set(info) == {UNET, "unet/config.json", "unet"}  # a missing path is left out, as the hub does
    weights, config, folder = info[UNET], info["unet/config.json"], info["unet"]
    assert isinstance(weights, RepoFile) and isinstance(folder, RepoFolder)
    assert weights.lfs.sha256 == hashlib.sha256(FILES[UNET]).hexdigest() == hub.sha256(REPO, UNET)
    assert weights.size == weights.lfs.size == len(FILES[UNET])
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{weights.lfs.sha256}\nsize 5000\n".encode()
    assert weights.blob_id == git_blob_sha1(pointer) == hub.git_sha1(REPO, UNET)  # git stores the pointer
    assert weights.lfs.pointer_size == len(pointer)
    assert config.lfs is None and config.blob_id == git_blob_sha1(FILES["unet/config.json"])
    # the module-level functions use an HfApi built at import: point_hub_here moved it too
    assert {entry.path for entry in huggingface_hub.list_repo_tree(REPO)} == {"README.md", "scaler.pt", "unet",
                                                                           "controlnet"}
    siblings = {s.rfilename: s for s in huggingface_hub.model_info(REPO, files_metadata=True).siblings}
    assert siblings[UNET].lfs.sha256 == hub.sha256(REPO, UNET) and siblings["README.md"].lfs is None


@pytest.mark.parametrize(("call", "error"), [
    (lambda tmp: hf_hub_download("org/missing", "README.md", local_dir=tmp), RepositoryNotFoundError),
    (lambda tmp: hf_hub_download(REPO, "README.md", revision="v9", local_dir=tmp), RevisionNotFoundError),
    (lambda tmp: hf_hub_download(REPO, "missing.bin", local_dir=tmp), RemoteEntryNotFoundError),
    (lambda tmp: snapshot_download("org/missing", local_dir=tmp), RepositoryNotFoundError),
    (lambda tmp: snapshot_download(REPO, revision="v9", local_dir=tmp), RevisionNotFoundError),
], ids=["repo", "revision", "entry", "snapshot-repo", "snapshot-revision"])
def test_missing_things_raise_the_clients_own_errors(hub, tmp_path, call, error):
    with pytest.raises(error):
        call(tmp_path / "out")


def test_a_transfer_cut_once_is_retried_from_zero_within_the_call(hub, tmp_path):
    hub.misbehave(REPO, UNET, Fault("truncate", times=1))
    assert Path(hf_hub_download(REPO, UNET, local_dir=tmp_path)).read_bytes() == FILES[UNET]
    gets = hub.calls("cdn")
    assert [call.fault for call in gets] == ["truncate", ""]
    # the client reads in 10 MiB chunks and keeps only whole ones: nothing kept, so no Range on the retry
    assert "range" not in gets[1].headers
    assert hub.client_sleeps == [1]


def test_a_transfer_cut_after_whole_chunks_resumes_with_range(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 1024)
    hub.misbehave(REPO, UNET, Fault("truncate", at=2500, times=1))
    assert Path(hf_hub_download(REPO, UNET, local_dir=tmp_path)).read_bytes() == FILES[UNET]
    retry = hub.calls("cdn")[1]
    assert retry.headers["range"] == "bytes=2048-" and retry.status == 206  # two whole chunks kept


def test_a_transfer_always_cut_raises_and_the_next_call_starts_over(hub, tmp_path):
    hub.misbehave(REPO, UNET, Fault("truncate"))
    with pytest.raises(httpx2.RemoteProtocolError, match="peer closed connection without sending complete message"):
        hf_hub_download(REPO, UNET, local_dir=tmp_path)
    assert len(hub.calls("cdn")) == 6 and hub.client_sleeps == [1] * 5  # five retries, one second apart
    assert not (tmp_path / UNET).exists() and not list(tmp_path.rglob("*.incomplete"))  # the partial file is gone
    hub.behave(REPO, UNET)
    assert Path(hf_hub_download(REPO, UNET, local_dir=tmp_path)).read_bytes() == FILES[UNET]
    assert "range" not in hub.calls("cdn")[-1].headers  # no resume across calls: it starts from byte 0


@pytest.mark.parametrize(("path", "status"), [(UNET, 500), ("unet/config.json", 503)])
def test_a_failing_file_raises_an_http_error(hub, tmp_path, path, status):
    hub.misbehave(REPO, path, Fault("fail", status=status))
    with pytest.raises(HfHubHTTPError) as raised:
        snapshot_download(REPO, allow_patterns=[path], local_dir=tmp_path)
    assert type(raised.value) is HfHubHTTPError and raised.value.response.status_code == status
    assert hub.client_sleeps == []  # a 5xx on the file's bytes is not retried


def test_a_failing_resolve_backs_off_then_says_the_file_is_not_cached(hub, tmp_path):
    hub.misbehave(REPO, "unet/config.json", Fault("fail", status=503, on_resolve=True))
    with pytest.raises(LocalEntryNotFoundError) as raised:
        hf_hub_download(REPO, "unet/config.json", local_dir=tmp_path)
    assert isinstance(raised.value.__cause__, HfHubHTTPError) and raised.value.__cause__.response.status_code == 503
    assert len(hub.calls("resolve", method="HEAD")) == 7 and hub.client_sleeps == [1, 2, 4, 8, 8]


@pytest.mark.parametrize("path", [UNET, "unet/config.json"])
def test_a_corrupted_file_is_kept_without_complaint(hub, tmp_path, path):
    """The known gap: the plain-HTTP download checks the size, never the hash."""
    hub.misbehave(REPO, path, Fault("corrupt"))
    kept = Path(hf_hub_download(REPO, path, local_dir=tmp_path)).read_bytes()
    assert len(kept) == len(FILES[path]) and kept != FILES[path]
    checked = HfApi().verify_repo_checksums(REPO, local_dir=tmp_path)  # the library's separate check does see it
    assert [mismatch["path"] for mismatch in checked.mismatches] == [path]


def test_a_redirect_to_a_dead_host_fails_to_connect(hub, tmp_path):
    hub.misbehave(REPO, UNET, Fault("foreign_redirect"))
    with pytest.raises(httpx2.ConnectError):
        hf_hub_download(REPO, UNET, local_dir=tmp_path)
    assert hub.client_sleeps == [1] * 5 and not hub.calls("cdn")


def test_a_redirect_to_another_host_is_followed_without_the_token(hub, tmp_path):
    hub.misbehave(REPO, UNET, Fault("foreign_redirect", target=hub.foreign_url))
    assert Path(hf_hub_download(REPO, UNET, local_dir=tmp_path, token=TOKEN)).read_bytes() == FILES[UNET]
    (head,) = hub.calls("resolve")
    assert head.method == "HEAD" and head.headers["authorization"] == f"Bearer {TOKEN}"
    (taken,) = hub.calls("cdn", origin="foreign")  # the client goes wherever the hub points it...
    assert "authorization" not in taken.headers  # ...but the token stays with the hub
    assert not hub.calls("cdn", origin="cdn")


def test_a_stalled_transfer_times_out_and_is_retried(monkeypatch, tmp_path):
    with HubStub({REPO: FILES}) as stub:
        stub.point_hub_here(monkeypatch, tmp_path / "hf_home", timeout=0.2)
        stub.misbehave(REPO, UNET, Fault("slow", delay=0.5, times=1))
        assert Path(hf_hub_download(REPO, UNET, local_dir=tmp_path / "out")).read_bytes() == FILES[UNET]
        assert [call.fault for call in stub.calls("cdn")] == ["slow", ""] and stub.client_sleeps == [1]
