"""What PASD takes from its base model, in either family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class BaseModel:
    """Tokenizer(s), text encoder(s) and VAE of an SD1.5 or SDXL base, and SD1.5's scheduler config.

    PASD-SDXL checkpoints bring their own scheduler, so an SDXL base has no `scheduler_config`.
    """

    family: str  # model_family.SD15 or SDXL
    tokenizer: Any
    text_encoder: Any
    vae: Any
    scheduler_config: dict | None = None
    tokenizer_2: Any = None  # SDXL: the OpenCLIP ViT-bigG tokenizer and text encoder
    text_encoder_2: Any = None
