"""ComfyUI-PASD: Pixel-Aware Stable Diffusion super-resolution and stylization nodes for ComfyUI.

ComfyUI imports this file; it only exposes the nodes: through `comfy_entrypoint` (the V3 schema) where the host has
`comfy_api.latest`, else (an older host, or outside ComfyUI) as NODE_CLASS_MAPPINGS. A host that finds
NODE_CLASS_MAPPINGS never calls `comfy_entrypoint`, so exactly one of them is exported. The engine (`pasd_core`)
loads its heavy dependencies (torch models, diffusers, transformers) the first time a node runs.
"""

if __package__:  # ComfyUI imports this folder as a package; pytest, in a clone named ComfyUI-PASD, as a lone file
    from .nodes import NODE_CLASS_MAPPINGS as _CLASSES
    from .nodes import NODE_DISPLAY_NAME_MAPPINGS as _DISPLAY_NAMES

    try:
        from comfy_api.latest import ComfyExtension, io
    except ImportError:  # no V3 schema here: the classic node API
        NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = _CLASSES, _DISPLAY_NAMES
        __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
    else:
        from .nodes.v3 import extension

        async def comfy_entrypoint() -> ComfyExtension:
            return extension(io, ComfyExtension, _CLASSES, _DISPLAY_NAMES)

        __all__ = ["comfy_entrypoint"]
