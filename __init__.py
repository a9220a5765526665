"""ComfyUI-PASD: Pixel-Aware Stable Diffusion super-resolution and stylization nodes for ComfyUI.

ComfyUI imports this file; it only exposes the nodes. The engine (`pasd_core`) loads its heavy
dependencies (torch models, diffusers, transformers) the first time a node runs.
"""

if __package__:  # ComfyUI imports this folder as a package; pytest, in a clone named ComfyUI-PASD, as a lone file
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
