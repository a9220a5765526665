"""The two model families PASD comes in, told apart by the UNet's config alone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SD15, SDXL = "sd15", "sdxl"
LABELS = {SD15: "SD1.5", SDXL: "SDXL"}


def family_of(unet_config: Mapping[str, Any]) -> str:
    """SDXL UNets take pooled text and time ids as an added embedding ("text_time"); SD1.5 UNets take none."""
    return SDXL if unet_config.get("addition_embed_type") == "text_time" else SD15
