"""PASD's networks, built on diffusers' own blocks."""

from .controlnet import PASDControlNet
from .unet import PASDUNet

__all__ = ["PASDControlNet", "PASDUNet"]
