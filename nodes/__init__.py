"""The ComfyUI nodes of ComfyUI-PASD: their classic declarations (the V3 schema is made from them, nodes/v3.py)."""

from . import host
from .color_fix import PASDColorFix
from .exact import PASDModelLoader, PASDUpscale
from .native import PASDAdapterLoader, PASDApply
from .prompt import PASDPrompt
from .remote import PASDUpscaleFal

host.register_model_folder()

NODE_CLASS_MAPPINGS = {
    "PASDModelLoader": PASDModelLoader,
    "PASDUpscale": PASDUpscale,
    "PASDUpscaleFal": PASDUpscaleFal,
    "PASDColorFix": PASDColorFix,
    "PASDAdapterLoader": PASDAdapterLoader,
    "PASDApply": PASDApply,
    "PASDPrompt": PASDPrompt,
}

# ComfyUI 0.3.64's node search matches only the class and display names (its front end ignores SEARCH_ALIASES),
# so the sampling nodes say in their names what people search for.
NODE_DISPLAY_NAME_MAPPINGS = {
    "PASDModelLoader": "PASD Model Loader",
    "PASDUpscale": "PASD Upscale (super-resolution, restore)",
    "PASDUpscaleFal": "PASD Upscale (fal)",
    "PASDColorFix": "PASD Color Fix",
    "PASDAdapterLoader": "PASD Adapter Loader",
    "PASDApply": "PASD Apply (super-resolution, restore)",
    "PASDPrompt": "PASD Prompt (caption, official prompt)",
}
