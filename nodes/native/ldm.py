"""ComfyUI's (LDM) way of stating a PASD checkpoint's architecture, from the one description in
pasd_core/models/layout.py.

ComfyUI's model detection matches configs against tables of known models, which rejects every size it does not
list (and the tiny test models); the PASD folder states its architecture, so the LDM settings are derived from
it here: the constructor arguments of ComfyUI's UNetModel and ControlNet, and the GroupNorm groups of its ops.
"""

from __future__ import annotations

from typing import Any

from ...pasd_core.errors import ModelError
from ...pasd_core.model_family import SDXL
from ...pasd_core.models.layout import PASDLayout, per_level

COMFY_GROUPS = 32  # ComfyUI's ResBlock and SpatialTransformer build GroupNorm(32, ...) whatever the model says


def norm_groups(layout: PASDLayout) -> int:
    return int(layout.config.get("norm_num_groups") or COMFY_GROUPS)


def attention_shape(layout: PASDLayout) -> dict[str, int]:
    """ComfyUI's way of stating the head layout: one head count, or one head width, for every level."""
    channels, heads = list(layout.config["block_out_channels"]), layout.heads()
    if len(set(heads)) == 1:
        return {"num_heads": heads[0], "num_head_channels": -1}
    widths = {c // h for c, h in zip(channels, heads, strict=True)}
    if len(widths) == 1:
        return {"num_heads": -1, "num_head_channels": widths.pop()}
    raise ModelError(f"this PASD checkpoint's attention layout ({heads} heads for {channels} channels) has "
                     "neither one head count nor one head width, which ComfyUI's UNet cannot express.")


def ldm_unet_config(layout: PASDLayout) -> dict[str, Any]:
    """The keyword arguments of ComfyUI's UNetModel (and ControlNet) for this UNet."""
    config = layout.config
    channels = list(config["block_out_channels"])
    model_channels = channels[0]
    if any(c % model_channels for c in channels):
        raise ModelError(f"block_out_channels {channels} are not multiples of the first: not an SD UNet layout.")
    layers = [int(n) for n in per_level(config["layers_per_block"], layout.levels)]
    depths, attention = layout.depths(), layout.has_attention()
    depth_in = [d if a else 0 for d, a, n in zip(depths, attention, layers, strict=True) for _ in range(n)]
    depth_out = [d if a else 0 for d, a, n in zip(depths, attention, layers, strict=True) for _ in range(n + 1)]
    unet = {
        "image_size": 32, "in_channels": config["in_channels"],
        "out_channels": config.get("out_channels", config["in_channels"]),  # a ControlNet config has none
        "model_channels": model_channels, "num_res_blocks": layers,
        "channel_mult": [c // model_channels for c in channels],
        "transformer_depth": depth_in, "transformer_depth_output": depth_out,
        "transformer_depth_middle": depths[-1], "context_dim": config["cross_attention_dim"],
        "use_linear_in_transformer": bool(config.get("use_linear_projection")),
        "use_spatial_transformer": True, "legacy": False, "use_checkpoint": False,
        "adm_in_channels": None, "num_classes": None, **attention_shape(layout),
    }
    if layout.family == SDXL:
        unet.update(adm_in_channels=config["projection_class_embeddings_input_dim"], num_classes="sequential")
    return unet


def groups_ops(operations: type, groups: int) -> type:
    """`operations` whose GroupNorm uses `groups` groups, for checkpoints whose config says other than 32."""
    if groups == COMFY_GROUPS:
        return operations

    class GroupsOps(operations):
        class GroupNorm(operations.GroupNorm):
            def __init__(self, num_groups: int, num_channels: int, *args: Any, **kwargs: Any) -> None:
                super().__init__(groups, num_channels, *args, **kwargs)

    return GroupsOps
