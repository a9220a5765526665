"""Rewrite example_workflows/api/*.json (the API-format copies) from the UI workflows, as the front end converts them.

Run after changing a UI workflow or a node's declaration: .venv/bin/python tools/write_api_workflows.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]  # the converter lives in tests/support

from support.comfyui import API_WORKFLOWS, ui_workflows, write_api_copies  # noqa: E402

if __name__ == "__main__":
    os.environ.setdefault("PASD_MODELS_DIR", str(ROOT / "models"))
    write_api_copies()
    print(f"wrote {len(ui_workflows())} API workflows to {API_WORKFLOWS}")
