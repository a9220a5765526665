"""Fetching some files of a Hugging Face repository into a models folder, each checked before it is kept.

huggingface_hub downloads every file (under its own temporary name, with its retries) into a staging folder that no
model list reads; the file is compared with the hub's checksum there and only then moved into place, so a file is at
its final name only once it is known to hold the hub's bytes. A run that fails keeps the files already checked: the
next run fetches only the rest.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

logger = logging.getLogger(__name__)
STAGING_NAME = ".pasd_download"  # beside the model folders (ComfyUI's models/), which no model list reads


def _log_file(line: str) -> None:
    logger.info(line)


@dataclass(frozen=True)
class HubFetcher:
    """How files come from the hub: where they wait until checked, who hears of each file and of the bytes, and
    whether files already in place are checked again (the explicit download command does; a first run does not)."""

    staging: Path | None = None  # None: a hidden folder inside the target folder
    on_file: Callable[[str], None] = field(default=_log_file)  # one line per file
    on_bytes: Callable[[int, int], None] | None = None  # (bytes done, bytes in all) over one repository's files
    recheck: bool = False
    again: str = "run the same command again"  # how the user repeats the download, for messages

    def staging_for(self, local_dir: Path) -> Path:
        return self.staging if self.staging is not None else local_dir / ".cache" / STAGING_NAME


def _size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"  # unreachable; keeps the type checker calm


def _bar_class(report: Callable[[int], None]) -> type:
    """A tqdm class that also reports every byte huggingface_hub counts."""
    from tqdm.auto import tqdm

    class Bar(tqdm):
        def update(self, n: float | None = 1) -> bool | None:
            report(int(n or 0))
            return super().update(n)

    return Bar


def _place(staged: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(staged, final)
    except OSError:  # another file system (an extra model path): copied, then the staged copy removed
        shutil.move(str(staged), str(final))


def fetch(repo_id: str, patterns: list[str], local_dir: Path, fetcher: HubFetcher) -> list[str]:
    """The repository files matching `patterns` (fnmatch; `*` crosses `/`), in `local_dir` under their repository
    paths, downloaded where missing (and, with `fetcher.recheck`, replaced where their bytes differ from the hub's).

    Returns the paths deleted because they arrived damaged (empty when all is well). Errors of the client (offline,
    HTTP, disk) propagate; the caller turns them into a message.
    """
    from huggingface_hub import HfApi, hf_hub_download

    from .checksums import holds_listed_bytes, hub_listing

    api = HfApi()
    commit = api.model_info(repo_id).sha  # every read below is at this one commit
    wanted = [path for path in api.list_repo_files(repo_id, revision=commit)
              if any(fnmatchcase(path, pattern) for pattern in patterns)]
    listing = hub_listing(repo_id, commit, wanted)
    damaged = []
    if fetcher.recheck:
        for path in wanted:
            final = local_dir / path
            if final.is_file() and not holds_listed_bytes(final, listing[path]):
                final.unlink()
                fetcher.on_file(f"{path} in {local_dir} differs from the hub's copy: fetched again")
    missing = [path for path in wanted if not (local_dir / path).is_file()]
    total, done = sum(listing[path].size for path in missing), 0

    def count(n: int) -> None:
        nonlocal done
        done += n
        if fetcher.on_bytes is not None:
            fetcher.on_bytes(min(done, total), total)

    staging = fetcher.staging_for(local_dir) / repo_id.replace("/", "--")
    # huggingface_hub < 1.2 takes no tqdm_class here: the bar then moves once per file
    byte_bars = "tqdm_class" in inspect.signature(hf_hub_download).parameters
    for index, path in enumerate(missing, 1):
        fetcher.on_file(f"downloading {repo_id}/{path} ({_size(listing[path].size)}, file {index} of "
                        f"{len(missing)}) into {local_dir}")
        before = done
        bars = {"tqdm_class": _bar_class(count)} if byte_bars else {}
        staged = Path(hf_hub_download(repo_id, path, revision=commit, local_dir=staging, **bars))
        done = before  # a retried transfer counts its bytes again; the file counts once
        count(listing[path].size)
        if holds_listed_bytes(staged, listing[path]):
            _place(staged, local_dir / path)
        else:
            staged.unlink()
            damaged.append(path)
    return damaged
