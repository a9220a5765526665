"""PASD Color Fix: the official colour correction as a node of its own, for the native path's VAE Decode output (or
any image) and its low-resolution reference."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..pasd_core import params as table
from . import images
from .inputs import DeclaredNode, Input, declare, from_param, socket
from .model_choices import NONE


class PASDColorFix(DeclaredNode):
    """Give an image the colours of a reference (e.g. the low-resolution input), keeping its detail."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "fix"

    @classmethod
    def method_input(cls) -> Input:
        color_fix = from_param(table.BY_NAME["color_fix"])
        choices = [c for c in color_fix.options["options"] if c != NONE]  # "none" would make the node a no-op
        tooltip = f"How to match the colours: {' or '.join(choices)} (wavelet is what the official PASD does)."
        return replace(color_fix, name="method", options={**color_fix.options, "options": choices, "tooltip": tooltip})

    @classmethod
    def inputs(cls) -> list[Input]:
        return declare(socket("image", "IMAGE", "The image(s) to recolour, e.g. the output of PASD Upscale or VAE "
                              "Decode; their detail is kept."),
                       socket("reference", "IMAGE", "Its colours are applied (usually the original low-resolution "
                              "image): one for the whole batch or one per image, resized to the image if needed."),
                       cls.method_input())

    def fix(self, image: Any, reference: Any, method: str) -> tuple[Any]:
        choices = self.method_input().options["options"]
        if method not in choices:
            raise table.ParamError(f"method={method!r} is not allowed: use one of {', '.join(choices)}.")
        from ..pasd_core.engine.color import color_fix_tensor

        image, reference = images.checked(image, "image"), images.checked(reference, "reference")
        reference = images.match_batch(reference, image.shape[0], "reference")
        fixed = color_fix_tensor(images.channels_first(image), images.channels_first(reference, "reference"), method)
        return (fixed.permute(0, 2, 3, 1).contiguous(),)
