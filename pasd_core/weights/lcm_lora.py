"""The LCM-LoRA of the official fast mode (`test_pasd.py --use_lcm_lora`): read, check, merge.

The official script loads `latent-consistency/lcm-lora-sdv1-5` with diffusers' `load_lora_weights` and fuses
it at scale 1.0. diffusers honours kohya's `alpha`: each layer gets `W += (alpha / rank) · up @ down`
(tests/fixtures/pasd_lcm_official_tiny/README.md, fact 1), unlike the personalized LoRA (alpha ignored).
Only PASD-SD1.5 has an official LCM mode; an LCM-LoRA on PASD-SDXL is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError
from ..model_family import require_lcm_family
from .download import LCM_LORA
from .kohya_lora import UNET_LORA_PREFIX, MergeLora, lora_layers, plan_merges, text_encoder_lookup, unet_lookup
from .reader import CheckpointFile

logger = logging.getLogger(__name__)

LCM_LORA_REPO, LCM_LORA_FILE = LCM_LORA.repo_id, LCM_LORA.files[0]
TEXT_ENCODER_LORA_PREFIX = "lora_te_"  # diffusers fuses a text-encoder part too, where a file has one


def alpha_scale(parts: dict[str, torch.Tensor]) -> float:
    """diffusers' per-layer LoRA scale: alpha / rank, 1.0 where the file gives no alpha."""
    rank = parts["lora_down.weight"].shape[0]
    alpha = parts.get("alpha")
    return 1.0 if alpha is None else float(alpha.reshape(-1)[0]) / rank


def read_lcm_lora(unet: nn.Module, text_encoder: nn.Module, path: str | Path, family: str) -> list[MergeLora]:
    """The checked merges an LCM-LoRA makes (kohya keys: `lora_unet_*`, optionally `lora_te_*`); no model changes."""
    require_lcm_family(family, path)
    checkpoint = CheckpointFile(path, "LCM-LoRA file")
    groups = lora_layers(checkpoint)
    lookups = {UNET_LORA_PREFIX: unet_lookup(unet), TEXT_ENCODER_LORA_PREFIX: text_encoder_lookup(text_encoder)}
    plan, unknown = plan_merges(checkpoint.path, groups, lookups, alpha_scale,
                                f"is this an LCM-LoRA for SD1.5 ({LCM_LORA_REPO})?")
    if unknown:
        raise ModelError(f"LCM-LoRA {checkpoint.path}: {len(unknown)} of its {len(groups)} layers match no layer of "
                         f"the SD1.5 UNet or text encoder, e.g. {sorted(unknown)[:5]}. The LCM fast mode takes "
                         f"{LCM_LORA_REPO} ({LCM_LORA_FILE}, kohya keys lora_unet_*), e.g. fetched by "
                         "`python -m pasd_core download --lcm-lora`.")
    return plan


def apply_merges(plan: list[MergeLora], path: str | Path) -> None:
    for change in plan:
        change.apply()
    logger.info("merged %d LCM-LoRA layers from %s", len(plan), path)
