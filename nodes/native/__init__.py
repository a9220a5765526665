"""The native path: PASD as an adapter on the user's own MODEL, CLIP and VAE (see nodes.py)."""

from .nodes import PASDAdapterLoader, PASDApply

__all__ = ["PASDAdapterLoader", "PASDApply"]
