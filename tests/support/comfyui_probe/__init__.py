"""A test-only custom node package for the end-to-end tests: what ComfyUI's own model manager holds and has loaded,
served at GET /pasd_test/models as {"loads": [...], "loaded": [...]}.

`loads` lists every ModelPatcher.load (weights moved to the load device) by what the patcher holds: the part's name
for this pack's exact-engine parts (nodes/host_models.py HostPart), else the class of the model; `loaded` is
comfy.model_management.current_loaded_models in the same terms. Nothing here changes what ComfyUI does.
"""

import comfy.model_management
import comfy.model_patcher
from aiohttp import web
from server import PromptServer

LOADS: list[str] = []
_load = comfy.model_patcher.ModelPatcher.load


def _name(model) -> str:
    return getattr(model, "part", type(model).__name__)


def _counted_load(self, *args, **kwargs):
    LOADS.append(_name(self.model))
    return _load(self, *args, **kwargs)


comfy.model_patcher.ModelPatcher.load = _counted_load


@PromptServer.instance.routes.get("/pasd_test/models")
async def models(request):
    loaded = [_name(entry.model.model) for entry in comfy.model_management.current_loaded_models
              if entry.model is not None]
    return web.json_response({"loads": LOADS, "loaded": loaded})


NODE_CLASS_MAPPINGS: dict = {}
