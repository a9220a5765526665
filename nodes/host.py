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
import re
from collections.abc import Callable, Iterator
from types import ModuleType

from ..pasd_core.errors import Interrupted, ModelError, ModelNotFoundError
from ..pasd_core.params import ParamError
from ..pasd_core.prompt.folders import PROMPT_FOLDER  # models/pasd_prompt: captioner and classifier folders

log = logging.getLogger("ComfyUI-PASD")

PASD_FOLDER = "pasd"  # models/pasd: PASD checkpoint folders (each with unet/ and controlnet/)
OWN_FOLDERS = (PASD_FOLDER, PROMPT_FOLDER)  # the models folders this pack adds to ComfyUI's
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


def patcher_class() -> type:
    """The patcher core holds its own models with now: CoreModelPatcher (ComfyUI 0.38; main.py rebinds it to the
    dynamic patcher when it starts Dynamic VRAM, so it is read at call time), else ModelPatcher (0.3.64)."""
    model_patcher = importlib.import_module("comfy.model_patcher")
    return getattr(model_patcher, "CoreModelPatcher", model_patcher.ModelPatcher)


def is_dynamic(patcher: object) -> bool:
    """True for a Dynamic VRAM patcher (0.38); 0.3.64's have no is_dynamic."""
    return bool(getattr(patcher, "is_dynamic", lambda: False)())


def has_model_manager() -> bool:
    """True where ComfyUI's model manager can hold this pack's models (its patchers and load_models_gpu)."""
    return _comfy("comfy.model_patcher") is not None and _comfy("comfy.model_management") is not None


def require_comfyui(needed_by: str) -> None:
    """Nothing inside ComfyUI; outside it, for code that only makes sense there (the native adapter patches ComfyUI's
    own MODEL), a clear error that names the alternative."""
    if _comfy("comfy.model_patcher") is None:
        raise ModelError(f"{needed_by} works only inside ComfyUI (ComfyUI's comfy.model_patcher could not be "
                         "imported): outside ComfyUI use PASD Model Loader + PASD Upscale, or the command line "
                         "(python -m pasd_core).")


# --- models folders ---------------------------------------------------------------------------

def register_model_folder() -> None:
    """Make `models/pasd` and `models/pasd_prompt` ComfyUI model folders, after any paths extra_model_paths.yaml
    gave them."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        for kind in OWN_FOLDERS:
            folder_paths.add_model_folder_path(kind, os.path.join(folder_paths.models_dir, kind))


def models_root() -> str:
    """The real path of ComfyUI's models folder (outside ComfyUI: $PASD_MODELS_DIR, default ./models)."""
    folder_paths = _comfy("folder_paths")
    root = folder_paths.models_dir if folder_paths is not None else os.environ.get("PASD_MODELS_DIR", "models")
    return os.path.realpath(root)


def model_folders(kind: str) -> list[str]:
    """The directories searched for models of `kind` ("pasd", "checkpoints", "diffusers", "loras")."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is None:
        return [os.path.join(os.environ.get("PASD_MODELS_DIR", "models"), kind)]
    if kind in OWN_FOLDERS:
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


def model_path(kind: str, name: str, *, folder: bool = False, input_name: str | None = None) -> str:
    """The full path of the model file (or, with `folder`, model folder) `name` listed for `kind`.

    `name` comes from a node or a workflow, so it must be a name the lists could hold (see
    `model_name_parts`) and it is joined only under the models folders. Symlinks the user placed
    inside a models folder are followed, as ComfyUI's own `folder_paths.get_full_path` does: the
    check is on the name, not on where a link leads.
    """
    input_name = input_name or f"{kind} model"
    parts = model_name_parts(name, input_name)
    folder_paths = _comfy("folder_paths")
    if not folder and hasattr(folder_paths, "get_full_path"):
        found = folder_paths.get_full_path(kind, "/".join(parts))  # ComfyUI's own lookup of model files
        if found is not None:
            return _readable(found, folder, input_name, name)
    folders = model_folders(kind)
    candidates = [_inside(base, parts) for base in folders]
    for path in candidates:
        if os.path.isdir(path) if folder else os.path.isfile(path):
            return _readable(path, folder, input_name, name)
    for path in candidates:  # not there as asked: say what is there instead, if anything
        if os.path.isdir(path) or os.path.isfile(path):
            found_as, wanted = ("a folder", "a file") if os.path.isdir(path) else ("a file", "a folder")
            raise ModelError(f"{input_name} {name!r} is {found_as} in {os.path.dirname(path)}, but {input_name} "
                             f"takes {wanted}{_WHAT_IT_TAKES.get(kind, '')}: pick one from the list.")
        if os.path.islink(path):
            raise ModelError(f"{input_name} {name!r} is a link in {os.path.dirname(path)} to something that does "
                             "not exist: fix or remove the link, or pick another one from the list.")
    searched = ", ".join(folders) or "(no folder registered)"
    raise ModelNotFoundError(f"{input_name} {name!r} was not found in {searched}: pick one from the list, or put "
                             "it there and refresh the list (R in ComfyUI).")


# What a models folder of each kind holds, for the message when a name is the wrong kind of thing.
_WHAT_IT_TAKES = {PASD_FOLDER: " (a PASD checkpoint holding unet/ and controlnet/)",
                  PROMPT_FOLDER: " (a captioner or classifier folder)",
                  "diffusers": " (a diffusers model with model_index.json)",
                  "checkpoints": " (a .safetensors checkpoint)", "loras": " (a LoRA .safetensors)"}
# Windows lists names with backslashes; elsewhere a backslash is refused (it is no separator there).
_SEPARATORS = re.compile(r"[/\\]" if os.sep == "\\" else "/")
_DRIVE = re.compile(r"^[A-Za-z]:")


def model_name_parts(name: str, input_name: str) -> list[str]:
    """The components of a model name; refuses absolute names, `..`, empty parts, drive letters, NUL."""
    parts = _SEPARATORS.split(name) if isinstance(name, str) else [""]
    if (not isinstance(name, str) or "\0" in name or (os.sep != "\\" and "\\" in name)
            or any(p in ("", ".", "..") or _DRIVE.match(p) for p in parts)):
        raise ParamError(f"{input_name} {repr(name)[:120]} is not a model name: names are relative to a models "
                         "folder, with no leading '/', '..', empty parts, backslashes or drive letters. Pick one "
                         "from the list.")
    return parts


def _inside(base: str, parts: list[str]) -> str:
    """`base` joined with `parts`, which must stay inside it (it does for checked parts; this says so)."""
    path = os.path.normpath(os.path.join(base, *parts))
    if os.path.commonpath([os.path.abspath(base), os.path.abspath(path)]) != os.path.abspath(base):
        raise ParamError(f"{os.path.join(*parts)!r} leads outside the models folder {base}: pick one from the list.")
    return path


def _readable(path: str, folder: bool, input_name: str, name: str) -> str:
    if not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
        raise ModelError(f"{input_name} {name!r} in {os.path.dirname(path)} cannot be read (permission denied): "
                         "give the user running ComfyUI read access to it.")
    return path


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


@contextlib.contextmanager
def progress_to(total: int, description: str = "PASD") -> Iterator[Callable[[int], None]]:
    """A `show(value)` that sets ComfyUI's progress bar (tqdm outside ComfyUI) to `value` of `total`."""
    utils = _comfy("comfy.utils")
    if utils is not None:
        bar = utils.ProgressBar(total)
        yield lambda value: bar.update_absolute(value, total)
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=description) as bar:
        yield lambda value: bar.update(value - bar.n)


def interrupted() -> bool:
    """True once the user pressed ComfyUI's cancel button; never outside ComfyUI."""
    model_management = _comfy("comfy.model_management")
    return model_management is not None and model_management.processing_interrupted()


def is_interruption(error: BaseException) -> bool:
    """Whether `error` is ComfyUI's own "processing interrupted" (raised by its progress hook, among others)."""
    model_management = _comfy("comfy.model_management")
    kind = getattr(model_management, "InterruptProcessingException", None)
    return kind is not None and isinstance(error, kind)


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
