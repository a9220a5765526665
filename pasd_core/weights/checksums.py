"""Whether downloaded files hold the bytes the Hugging Face Hub lists for them.

huggingface_hub's plain-HTTP download checks a file's size, not its hash (only `HfApi.verify_repo_checksums` compares
hashes), so a file that arrives whole but with other bytes would be kept and loaded. The hub lists, for each file,
its git blob sha1 and, for a large (LFS) file, its sha256; these are compared here, and a file that differs is
deleted, so nothing wrong is ever kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from ..errors import ModelError

_CHUNK = 16 * 1024 * 1024


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The id git (and the hub) gives a file's content: sha1 of "blob <size>\\0" + the bytes."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def expected_hashes(repo_id: str, commit: str, paths: Iterable[str]) -> dict[str, tuple[str, str]]:
    """{path: (algorithm, hex digest)} as the hub lists them at `commit` (sha256 for LFS files, git blob sha1 for the
    rest)."""
    from huggingface_hub import HfApi

    listed = {}
    for info in HfApi().get_paths_info(repo_id, list(paths), revision=commit):
        lfs = getattr(info, "lfs", None)
        listed[info.path] = ("sha256", lfs.sha256) if lfs is not None else ("sha1", info.blob_id)
    return listed


def remove_damaged(repo_id: str, commit: str, local_dir: Path, paths: Iterable[str]) -> list[str]:
    """The files of `paths` (relative to the repository and to `local_dir`) whose bytes differ from the hub's
    listing at `commit`, deleted; raises ModelError when the hub does not list one of them."""
    paths = list(paths)
    listed = expected_hashes(repo_id, commit, paths)
    damaged = []
    for path in paths:
        if path not in listed:
            raise ModelError(f"{repo_id} no longer lists {path}: the repository changed; download it by hand.")
        algorithm, expected = listed[path]
        file = local_dir / path
        actual = sha256_of(file) if algorithm == "sha256" else git_blob_sha1(file)
        if actual != expected:
            file.unlink()
            damaged.append(path)
    return damaged
