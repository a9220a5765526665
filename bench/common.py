"""What every benchmark prints: the machine and package versions first, then plain-text tables.

Benchmarks report figures; none of them passes or fails on time.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PACKAGES = ("torch", "diffusers", "transformers", "numpy", "Pillow")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):
        return float("nan")


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def versions(packages: Iterable[str]) -> str:
    found = []
    for name in packages:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return " | ".join(found)


def machine_header(title: str, packages: Iterable[str] = DEFAULT_PACKAGES) -> str:
    """Title, then the machine (CPU model, cores, RAM) and the Python and package versions."""
    return (f"{title}\n"
            f"{platform.platform()} | {_cpu_model()} | {_usable_cores()} of {os.cpu_count()} cores | "
            f"{_ram_gib():.0f} GiB RAM\n"
            f"Python {platform.python_version()} | {versions(packages)}")


def torch_threads_note() -> str:
    import torch

    return f"torch threads: {torch.get_num_threads()}"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns right-aligned to the widest cell; floats are expected to be formatted by the caller."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def print_table(title: str, headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    print(f"\n{title}\n{format_table(headers, rows)}", flush=True)


def add_project_to_path() -> None:
    """Make `pasd_core` and the shared helpers of tests/support (`from support.paths import ...`) importable when a
    bench runs as a script. Benchmarks import helpers from `support` only: never a test file, conftest or another
    bench module."""
    for path in (str(ROOT / "tests"), str(ROOT)):
        if path not in sys.path:
            sys.path.insert(0, path)
