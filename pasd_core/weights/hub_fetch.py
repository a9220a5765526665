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
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from ..errors import Interrupted, ModelError

logger = logging.getLogger(__name__)
STAGING_NAME = ".pasd_download"  # beside the model folders (ComfyUI's models/), which no model list reads


def _log_file(line: str) -> None:
    logger.info(line)


@dataclass(frozen=True)
class HubFetcher:
    """How files come from the hub: where they wait until checked, who hears of each file and of the bytes, and
    whether files already in place are checked again (the explicit download command does; a first run does not)."""

    staging: Path | None = None  # None: a folder in the system's temporary directory
    on_file: Callable[[str], None] = field(default=_log_file)  # one line per file
    on_bytes: Callable[[int, int], None] | None = None  # (bytes done, bytes in all) over one repository's files
    recheck: bool = False
    again: str = "run the same command again"  # how the user repeats the download, for messages

    def staging_for(self, repo_id: str) -> Path:
        root = self.staging if self.staging is not None else Path(tempfile.gettempdir()) / STAGING_NAME
        return root / repo_id.replace("/", "--")


def _size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"  # unreachable; keeps the type checker calm


def _bar_class(report: Callable[[int], None]) -> type:
    """A tqdm class that reports how far the file has come: the furthest of its bars (huggingface_hub's Xet path
    opens two, both counting the same bytes)."""
    from tqdm.auto import tqdm

    class Bar(tqdm):
        def update(self, n: float | None = 1) -> bool | None:
            # counted here: a disabled bar (no terminal, HF_HUB_DISABLE_PROGRESS_BARS) does not move its own `n`
            self.pasd_bytes = getattr(self, "pasd_bytes", 0) + int(n or 0)
            report(self.pasd_bytes)
            return super().update(n)

    return Bar


def _place(staged: Path, final: Path) -> None:
    """Move a checked file to its final name, which it holds only whole: across file systems (an extra model path)
    it is copied under a name no model list shows, then renamed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(staged, final)
    except OSError:
        partial = final.with_name(f".{final.name}.pasd-partial")
        shutil.copyfile(staged, partial)
        os.replace(partial, final)
        staged.unlink()


def fetch(repo_id: str, patterns: list[str], local_dir: Path, fetcher: HubFetcher) -> list[str]:
    """The repository files matching `patterns` (fnmatch; `*` crosses `/`), in `local_dir` under their repository
    paths, downloaded where missing (and, with `fetcher.recheck`, replaced where their bytes differ from the hub's).

    Returns the paths not kept because they arrived damaged (empty when all is well). Errors of the client (offline,
    HTTP, disk) propagate, unless a file in place was found to differ: that is a ModelError, since it is not kept as
    if checked.
    """
    from huggingface_hub import HfApi, hf_hub_download

    from .checksums import holds_listed_bytes, hub_listing

    api = HfApi()
    commit = api.model_info(repo_id).sha  # every read below is at this one commit
    wanted = [path for path in api.list_repo_files(repo_id, revision=commit)
              if any(fnmatchcase(path, pattern) for pattern in patterns)]
    listing = hub_listing(repo_id, commit, wanted)
    differ = [path for path in wanted if fetcher.recheck and (local_dir / path).is_file()
              and not holds_listed_bytes(local_dir / path, listing[path])]
    for path in differ:  # replaced below, once the hub's copy is checked; never deleted first
        fetcher.on_file(f"{path} in {local_dir} differs from the hub's copy: fetching it again")
    # the largest first: configs and model_index.json, which mark a folder for the model lists, come last
    missing = sorted((p for p in wanted if p in differ or not (local_dir / p).is_file()),
                     key=lambda p: -listing[p].size)
    total, before, furthest = sum(listing[path].size for path in missing), 0, 0

    def count(position: int) -> None:
        nonlocal furthest
        furthest = max(furthest, position)
        if fetcher.on_bytes is not None:
            fetcher.on_bytes(min(before + furthest, total), total)

    staging = fetcher.staging_for(repo_id)
    # huggingface_hub < 1.2 takes no tqdm_class here: the bar then moves once per file
    byte_bars = "tqdm_class" in inspect.signature(hf_hub_download).parameters
    damaged = []
    try:
        for index, path in enumerate(missing, 1):
            final = local_dir / path
            if path not in differ and final.is_file():  # placed meanwhile by another run of the download
                continue
            fetcher.on_file(f"downloading {repo_id}/{path} ({_size(listing[path].size)}, file {index} of "
                            f"{len(missing)}) into {local_dir}")
            furthest = 0
            bars = {"tqdm_class": _bar_class(count)} if byte_bars else {}
            staged = Path(hf_hub_download(repo_id, path, revision=commit, local_dir=staging, **bars))
            count(listing[path].size)
            before += listing[path].size
            if holds_listed_bytes(staged, listing[path]):
                _place(staged, final)
            else:
                staged.unlink()
                damaged.append(path)
    except Interrupted:
        raise
    except Exception as error:
        left = [path for path in differ if not holds_listed_bytes(local_dir / path, listing[path])]
        if not left:
            raise
        detail = " ".join(str(error).split())
        raise ModelError(f"{', '.join(left)} in {local_dir} differ from the hub's copy and could not be fetched again "
                         f"({type(error).__name__}: {detail}); they are left as they are, unchecked: "
                         f"{fetcher.again}.") from error
    return damaged
