"""Whether downloaded files hold the bytes the Hugging Face Hub lists for them.

huggingface_hub's plain-HTTP download checks a file's size, not its hash (only `HfApi.verify_repo_checksums` compares
hashes), so a file that arrives whole but with other bytes would be kept and loaded. The hub lists, for each file,
its git blob sha1 and, for a large (LFS) file, its sha256; these are compared here, and a file that differs is
deleted, so nothing wrong is ever kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ListedFile:
    """A file as the hub lists it at one commit: its size and its checksum (sha256 for LFS files, else git's)."""

    size: int
    algorithm: str  # "sha256" | "sha1"
    digest: str


def hub_listing(repo_id: str, commit: str, paths: Iterable[str]) -> dict[str, ListedFile]:
    """{path: ListedFile} for `paths` of `repo_id` at `commit`; ModelError when the hub does not list one of them."""
    from huggingface_hub import HfApi

    paths = list(paths)
    listed = {}
    for info in HfApi().get_paths_info(repo_id, paths, revision=commit):
        lfs = getattr(info, "lfs", None)
        listed[info.path] = (ListedFile(lfs.size, "sha256", lfs.sha256) if lfs is not None else
                             ListedFile(info.size, "sha1", info.blob_id))
    for path in paths:
        if path not in listed:
            raise ModelError(f"{repo_id} no longer lists {path}: the repository changed; download it by hand.")
    return listed


def holds_listed_bytes(file: Path, listed: ListedFile) -> bool:
    """Whether `file` has exactly the bytes the hub lists (its size first: a cheap no)."""
    if file.stat().st_size != listed.size:
        return False
    return (sha256_of(file) if listed.algorithm == "sha256" else git_blob_sha1(file)) == listed.digest
