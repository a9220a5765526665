"""PASD's models as ComfyUI's own: every part of a loaded PASD model, and every prompt model, is held by a ComfyUI
model patcher and loaded by ComfyUI's model manager before its pass.

How core holds plain torch models (ComfyUI 0.38: comfy_extras/nodes_upscale_model.py, nodes_model_patch.py;
0.3.64 alike without the dynamic parts): a patcher over the module (`CoreModelPatcher` where the host has it, the
Dynamic VRAM patcher on NVIDIA by default; `ModelPatcher` before), `load_models_gpu` before each use, nothing
moved back afterwards. A model so held stays loaded between runs and leaves the device only when ComfyUI needs
the room; its bytes count in ComfyUI's accounting. Plain (non comfy.ops) layers need `force_full_load` on a
non-dynamic patcher, or a partly loaded model would mix devices; the dynamic patcher copies them to the device on
each load (read in 0.38's model_patcher.py), and where it left them behind they are moved as core's upscale node
moves its own.
Each part's modules sit in one container module, because the patcher sets `.device` on the model it holds (a
diffusers model's `device` is a read-only property). A prompt model read from one file is one object with one
patcher, shared by every loader and PASD Prompt node that uses it.

Outside ComfyUI (tests, scripts) the engine places the models itself (pasd_core/placement.py).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..pasd_core.engine.pipeline import PASDPipeline
from ..pasd_core.placement import DENOISER, LocalPlacement, Parts, PlacementFactory
from ..pasd_core.prompt.stage import PromptStage
from . import host

PATCHER = "_pasd_host_patcher"  # the attribute of a part's first module that holds the part's patcher
# (loader, file, size, mtime) -> a loaded prompt model, alive while a pipeline or a node holds it
_PROMPT_MODELS: weakref.WeakValueDictionary[tuple, Any] = weakref.WeakValueDictionary()


class HostPart(torch.nn.ModuleList):
    """The modules of one part in the one module a patcher holds (ComfyUI logs "Requested to load HostPart")."""

    def __init__(self, part: str, modules: Sequence[torch.nn.Module]) -> None:
        super().__init__(modules)
        self.part = part


def patcher_for(part: str, modules: Sequence[torch.nn.Module], device: torch.device) -> Any:
    """The host's patcher of one part, made once per part's weights (kept on its first module, so it lives as long
    as they do and every placement of the same weights shares it), to load on `device`."""
    patcher = getattr(modules[0], PATCHER, None)
    if patcher is None:
        import comfy.model_management

        patcher = host.patcher_class()(HostPart(part, modules), load_device=device,
                                       offload_device=comfy.model_management.unet_offload_device())
        setattr(modules[0], PATCHER, patcher)
    return patcher


class HostPlacement:
    """The engine's placement inside ComfyUI: each part is a host model, loaded by ComfyUI before its pass and
    left loaded."""

    def __init__(self, parts: Parts, device: torch.device) -> None:
        self.device = torch.device(device)
        self.patchers = {name: patcher_for(name, modules, self.device) for name, modules in parts.items()}

    def load(self, part: str, memory_required: int = 0) -> None:
        import comfy.model_management

        patcher = self.patchers[part]
        dynamic = host.is_dynamic(patcher)
        comfy.model_management.load_models_gpu([patcher], memory_required=memory_required, force_full_load=not dynamic)
        first = next(patcher.model.parameters(), None)
        if dynamic and first is not None and first.device != self.device:
            # as core's ImageUpscaleWithModel (0.38) does for plain torch layers a dynamic load left where they were
            patcher.model.to(self.device)

    def done(self, part: str) -> None:
        pass  # left loaded: ComfyUI evicts it when another model needs the room


def placement() -> PlacementFactory:
    """Where a node's models go: ComfyUI's model manager inside ComfyUI, the engine's own placement outside."""
    return HostPlacement if host.in_comfyui() and host.has_model_manager() else LocalPlacement


class HostedPASDPipeline(PASDPipeline):
    """PASD Model Loader's output: a pipeline whose parts are ComfyUI's models, sized and tracked as core's model
    outputs are (0.38's comfy_execution/caching.py reads `.patcher`, `is_dynamic()` and `_comfy_cache_tensors()`;
    its PromptModelTracker `.patcher` and `get_models()`)."""

    def get_models(self) -> list[Any]:
        return list(getattr(self.models.placement, "patchers", {}).values())

    @property
    def patcher(self) -> Any:
        return getattr(self.models.placement, "patchers", {}).get(DENOISER)

    def is_dynamic(self) -> bool:
        models = self.get_models()
        return bool(models) and all(host.is_dynamic(patcher) for patcher in models)

    def _comfy_cache_tensors(self) -> list[torch.Tensor]:
        return self.weight_tensors()  # not the prompt models: they may be shared, and evicting this frees none


def shared_prompt_model(load: Callable[[str | Path], Any], folder: str | Path) -> Any:
    """The prompt model `load` reads from `folder`, loaded once per folder (as its files are now) and shared while
    anything holds it."""
    key = (load.__name__, os.path.realpath(folder), _files(folder))
    model = _PROMPT_MODELS.get(key)
    if model is None:
        model = load(folder)  # refuses a missing or broken folder with its own message
        _PROMPT_MODELS[key] = model
    return model


def _files(folder: str | Path) -> tuple:
    """(name, size, modification time) of every file of `folder`: a changed file is another model."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return ()
    return tuple((e.name, stat.st_size, stat.st_mtime_ns) for e in entries if e.is_file() for stat in [e.stat()])


def shared_prompt_stage(caption_model: str | None, classifier_model: str | None) -> PromptStage:
    """A prompt stage over the shared models of these folders (None: that model is not loaded)."""
    from ..pasd_core.prompt.models import load_captioner, load_classifier

    return PromptStage(shared_prompt_model(load_captioner, caption_model) if caption_model else None,
                       shared_prompt_model(load_classifier, classifier_model) if classifier_model else None)
