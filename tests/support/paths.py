"""Where the repository and its test fixtures are: the official-parity data sets and the tiny checkpoints in them.

Imports nothing heavy (json and pathlib only): scripts run in ComfyUI's or the official PASD's Python import it too.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FIXTURES = ROOT / "tests" / "fixtures" / "pasd_official_tiny"
CHECKPOINTS = FIXTURES / "checkpoints"
SD15 = CHECKPOINTS / "stable-diffusion-v1-5"
PASD = CHECKPOINTS / "pasd" / "checkpoint-100000"
PASD_LIGHT = CHECKPOINTS / "pasd_light" / "checkpoint-120000"
CASES = sorted(p.name for p in (FIXTURES / "cases").iterdir())

SDXL_FIXTURES = ROOT / "tests" / "fixtures" / "pasd_sdxl_official_tiny"
SDXL_CHECKPOINTS = SDXL_FIXTURES / "checkpoints"
SDXL_BASE = SDXL_CHECKPOINTS / "stable-diffusion-xl-base-1.0"
PASD_SDXL = SDXL_CHECKPOINTS / "pasd_sdxl" / "checkpoint-200000"
SDXL_CASES = sorted(p.name for p in (SDXL_FIXTURES / "cases").iterdir())

# The prompt stage (caption, classification) and colorization, made by the official scripts (their README).
PROMPT_FIXTURES = ROOT / "tests" / "fixtures" / "pasd_caption_official_tiny"
# pasd_prompt/coca_tiny and pasd_color/{checkpoint-180000,scheduler}
PROMPT_CHECKPOINTS = PROMPT_FIXTURES / "checkpoints"
TINY_COCA = PROMPT_CHECKPOINTS / "pasd_prompt" / "coca_tiny"
PASD_COLOR = PROMPT_CHECKPOINTS / "pasd_color" / "checkpoint-180000"
PROMPT_CASES = sorted(p.name for p in (PROMPT_FIXTURES / "cases").iterdir())

# The fixtures' variant names: (base model folder, PASD checkpoint folder) of each.
MODELS = {"pasd": (SD15, PASD), "pasd_light": (SD15, PASD_LIGHT), "pasd_sdxl": (SDXL_BASE, PASD_SDXL),
          "pasd_color": (SD15, PASD_COLOR)}


def case_data(name: str) -> dict:
    """case.json of a parity case (SD1.5 or SDXL), with the base and checkpoint folders its variant uses."""
    root = SDXL_FIXTURES if name in SDXL_CASES else PROMPT_FIXTURES if name in PROMPT_CASES else FIXTURES
    folder = root / "cases" / name
    data = json.loads((folder / "case.json").read_text())
    data["dir"] = folder
    data.setdefault("family", "sd15")
    data["base"], data["checkpoint"] = MODELS[data["variant"]]
    data["settings"] = {k: v for k, v in data["params"].items() if k != "variant"}
    # these sets were made with the official prompt stage off (--high_level_info given no value)
    data["settings"].setdefault("high_level_info", "none")
    return data
