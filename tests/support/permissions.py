"""Python run in the repository subject to file permissions, even when the tests run as root."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

from support.paths import ROOT

CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, PR_CAPBSET_DROP = 1, 2, 24  # linux/capability.h, linux/prctl.h


def _drop_permission_override() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_bound_by_permissions(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run Python `code` in the repository, subject to file permissions even when this is root (root reads
    everything: the child drops the override capabilities before it starts)."""
    as_root = os.geteuid() == 0
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env, preexec_fn=_drop_permission_override if as_root else None)
