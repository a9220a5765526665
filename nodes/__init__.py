"""The ComfyUI nodes of ComfyUI-PASD (classic node API)."""

from . import host
from .local import PASDColorFix, PASDModelLoader, PASDUpscale
from .native import PASDAdapterLoader, PASDApply
from .remote import PASDUpscaleFal

host.register_model_folder()

NODE_CLASS_MAPPINGS = {
    "PASDModelLoader": PASDModelLoader,
    "PASDUpscale": PASDUpscale,
    "PASDUpscaleFal": PASDUpscaleFal,
    "PASDColorFix": PASDColorFix,
    "PASDAdapterLoader": PASDAdapterLoader,
    "PASDApply": PASDApply,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "PASDModelLoader": "PASD Model Loader",
    "PASDUpscale": "PASD Upscale",
    "PASDUpscaleFal": "PASD Upscale (fal)",
    "PASDColorFix": "PASD Color Fix",
    "PASDAdapterLoader": "PASD Adapter Loader",
    "PASDApply": "PASD Apply",
}
