"""Everything this pack asks of ComfyUI, in one place, each with an honest fallback outside ComfyUI.

Inside ComfyUI: `folder_paths` for the models folders, `comfy.model_management` for the device,
memory and the cancel button, `comfy.utils.ProgressBar` for the progress bar. Outside (tests,
scripts): models are looked up under `$PASD_MODELS_DIR` (default `./models`) with ComfyUI's folder
names, the device comes from torch, progress goes to tqdm, and nothing ever interrupts a run.
ComfyUI's modules are imported when used, never at import time, so this module loads anywhere.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Callable, Iterator
from types import ModuleType

from ..pasd_core.errors import Interrupted

log = logging.getLogger("ComfyUI-PASD")

PASD_FOLDER = "pasd"  # models/pasd: PASD checkpoint folders (each with unet/ and controlnet/)
# The file types ComfyUI itself lists in its model folders (folder_paths.supported_pt_extensions).
MODEL_FILE_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")


def _comfy(module: str) -> ModuleType | None:
    """ComfyUI's `module` when running inside ComfyUI, else None."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def in_comfyui() -> bool:
    return _comfy("folder_paths") is not None


# --- models folders ---------------------------------------------------------------------------

def register_model_folder() -> None:
    """Make `models/pasd` a ComfyUI model folder, after any paths extra_model_paths.yaml gave it."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        folder_paths.add_model_folder_path(PASD_FOLDER, os.path.join(folder_paths.models_dir, PASD_FOLDER))


def model_folders(kind: str) -> list[str]:
    """The directories searched for models of `kind` ("pasd", "checkpoints", "diffusers", "loras")."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is None:
        return [os.path.join(os.environ.get("PASD_MODELS_DIR", "models"), kind)]
    if kind == PASD_FOLDER:
        register_model_folder()
    return folder_paths.get_folder_paths(kind)


def model_files(kind: str) -> list[str]:
    """Model file names of `kind`, relative to their folder, as ComfyUI's loaders list them."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        return folder_paths.get_filename_list(kind)
    names = set()
    for folder in model_folders(kind):
        for root, _dirs, files in os.walk(folder, followlinks=True):
            names.update(os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/")
                         for f in files if f.lower().endswith(MODEL_FILE_EXTENSIONS))
    return sorted(names)


def model_dirs(kind: str, markers: tuple[str, ...]) -> list[str]:
    """Folders of `kind` (relative, `/`-separated, nested allowed) that contain every entry of `markers`."""
    names = set()
    for folder in model_folders(kind):
        for root, dirs, _files in os.walk(folder, followlinks=True):
            if all(os.path.exists(os.path.join(root, m)) for m in markers):
                names.add(os.path.relpath(root, folder).replace(os.sep, "/"))
                dirs.clear()  # a model's own subfolders (unet/, vae/...) hold no further models
    return sorted(names)


def model_path(kind: str, name: str) -> str:
    """The full path of the model file or folder `name` listed for `kind`."""
    for folder in model_folders(kind):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    searched = ", ".join(model_folders(kind)) or "(none registered)"
    raise FileNotFoundError(f"{kind} model {name!r} not found in {searched}; put it there and refresh.")


# --- device and memory ------------------------------------------------------------------------

def torch_device() -> str:
    """The device ComfyUI computes on (honouring --cpu and friends), else CUDA, MPS, CPU."""
    model_management = _comfy("comfy.model_management")
    if model_management is not None:
        return str(model_management.get_torch_device())
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def preferred_dtype(device: str) -> str:
    """The weight precision ComfyUI would pick for a diffusion model on `device`, else "auto"."""
    model_management = _comfy("comfy.model_management")
    if model_management is None:
        return "auto"
    import torch

    dtype = model_management.unet_dtype(device=torch.device(device),
                                        supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])
    return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}.get(dtype, "auto")


def free_memory() -> None:
    """Ask ComfyUI to unload its own models and release cached VRAM before a big allocation."""
    model_management = _comfy("comfy.model_management")
    if model_management is not None:
        model_management.unload_all_models()
        model_management.soft_empty_cache()
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def keeps_models_on_device() -> bool:
    """True when ComfyUI runs with --highvram (models stay on the GPU between runs)."""
    model_management = _comfy("comfy.model_management")
    if model_management is None:
        return False
    return str(model_management.unet_offload_device()) == str(model_management.get_torch_device())


# --- progress and interruption ----------------------------------------------------------------

@contextlib.contextmanager
def progress(total: int | None, description: str = "PASD") -> Iterator[Callable[[], None]]:
    """A `tick()` that advances ComfyUI's progress bar (tqdm outside ComfyUI) by one of `total`.

    With `total=None` (the number of ticks is not known, e.g. polls of a remote queue) the bar
    shows activity: after n ticks it stands at n of n + 1.
    """
    utils = _comfy("comfy.utils")
    if utils is not None:
        bar = utils.ProgressBar(total or 1)
        if total is None:
            yield lambda: bar.update_absolute(bar.current + 1, total=bar.current + 2)
        else:
            yield lambda: bar.update(1)
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=description) as bar:
        yield lambda: bar.update(1)


def interrupted() -> bool:
    """True once the user pressed ComfyUI's cancel button; never outside ComfyUI."""
    model_management = _comfy("comfy.model_management")
    return model_management is not None and model_management.processing_interrupted()


def interruption(cause: BaseException) -> BaseException:
    """The exception that makes ComfyUI report the run as interrupted (`cause` outside ComfyUI)."""
    model_management = _comfy("comfy.model_management")
    if model_management is None:
        return cause
    model_management.interrupt_current_processing(False)  # consumed, as throw_exception_if_processing_interrupted does
    return model_management.InterruptProcessingException()


@contextlib.contextmanager
def cancellable() -> Iterator[Callable[[], bool]]:
    """Yields the engine's `should_stop` check; the engine's Interrupted leaves as ComfyUI's interruption."""
    try:
        yield lambda: interrupted()
    except Interrupted as stop:
        raise interruption(stop) from stop
