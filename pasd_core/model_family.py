"""The two model families PASD comes in, told apart by the UNet's config alone, and which has the LCM fast mode."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ModelMismatchError

SD15, SDXL = "sd15", "sdxl"
LABELS = {SD15: "SD1.5", SDXL: "SDXL"}


def family_of(unet_config: Mapping[str, Any]) -> str:
    """SDXL UNets take pooled text and time ids as an added embedding ("text_time"); SD1.5 UNets take none."""
    return SDXL if unet_config.get("addition_embed_type") == "text_time" else SD15


def require_lcm_family(family: str, path: str | Path) -> None:
    """Raise ModelMismatchError unless `family` has the official LCM fast mode (PASD-SD1.5 only)."""
    if family != SD15:
        raise ModelMismatchError(
            f"LCM-LoRA {path}: the LCM fast mode exists for PASD-SD1.5 only (the official test_pasd.py "
            f"--use_lcm_lora); PASD-{LABELS[family]} has none. Remove the LCM-LoRA (lcm_lora none / no --lcm-lora), "
            f"or load an SD1.5 PASD (pasd, pasd_light) on an SD1.5 base.")
