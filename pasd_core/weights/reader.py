"""The one checkpoint reader: files are read with safetensors, or with torch.load(weights_only=True), never
by unpickling arbitrary objects; every failure is a ModelError that names the file and what it is for."""

from __future__ import annotations

import json
import os
import pickle
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelError

if TYPE_CHECKING:
    import torch

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# Key prefixes of the original (CompVis/LDM) single-file layout.
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."


def check_path(path: Path, what: str, *, folder: bool, fix: str) -> None:
    """Raise ModelError unless `path` is a readable folder (`folder`) or file, saying which of missing, a folder
    where a file belongs (or the reverse), a dangling link or unreadable it is; `fix` tells what to give instead."""
    try:
        mode = os.stat(path).st_mode
    except PermissionError:
        raise ModelError(f"{what} {path} cannot be reached (permission denied on a folder above it): {fix}") from None
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            raise ModelError(f"{what} {path} is a link to something that does not exist: {fix}") from None
        raise ModelError(f"{what} {path} does not exist: {fix}") from None
    except OSError as error:
        raise ModelError(f"{what} {path} cannot be read ({error.strerror}): {fix}") from None
    if folder and not stat.S_ISDIR(mode):
        raise ModelError(f"{what} {path} is a file, not a folder: {fix}")
    if not folder and stat.S_ISDIR(mode):
        raise ModelError(f"{what} {path} is a folder, not a file: {fix}")
    if not folder and not stat.S_ISREG(mode):
        raise ModelError(f"{what} {path} is not a regular file: {fix}")
    if not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
        raise ModelError(f"{what} {path} cannot be read (permission denied): give this user read access to it.")


def read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"missing {path}") from None
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot read {path}: {error}") from None


class CheckpointFile:
    """One checkpoint file: its key names at once, its tensors on demand (safetensors reads lazily)."""

    def __init__(self, path: str | Path, what: str = "checkpoint file") -> None:
        self.path, self.what = Path(path), what
        if os.path.isdir(self.path):
            raise ModelError(f"{what} {self.path} is a folder: give a single-file checkpoint (.safetensors) here.")
        check_path(self.path, what, folder=False, fix="give a single-file checkpoint (.safetensors) here.")
        suffix = self.path.suffix.lower()
        self._loaded: dict[str, torch.Tensor] | None = None
        if suffix == ".safetensors":
            self.keys = self._safetensors_call(lambda handle: list(handle.keys()))
        elif suffix in PICKLE_SUFFIXES:
            self._loaded = self._load_pickled()
            self.keys = list(self._loaded)
        else:
            raise ModelError(f"{self.path} is not a checkpoint file: expected .safetensors (or .ckpt/.pt), "
                             f"got '{suffix or 'no extension'}'.")

    def tensors(self, prefixes: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """The tensors whose keys start with one of `prefixes` (all of them without)."""
        wanted = [k for k in self.keys if prefixes is None or k.startswith(tuple(prefixes))]
        if self._loaded is not None:
            return {k: self._loaded[k] for k in wanted}
        return self._safetensors_call(lambda handle: {k: handle.get_tensor(k) for k in wanted})

    def _safetensors_call(self, read: Any) -> Any:
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt", device="cpu") as handle:
                return read(handle)
        except Exception as error:  # safetensors raises its own SafetensorError, OSError, ValueError
            raise ModelError(f"{self.what} {self.path} is not a readable .safetensors file ({error}); it is "
                             "probably damaged or an incomplete download: download it again.") from None

    def _load_pickled(self) -> dict[str, torch.Tensor]:
        import torch  # deferred: checking paths and reading configs must not pay torch's import

        try:
            data = torch.load(str(self.path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # weights_only refuses anything but tensors and plain containers: unpickling the rest
            # could run arbitrary code (the official PASD loader would), so we never do.
            raise ModelError(f"{self.what} {self.path} holds Python objects besides weights and was not loaded, "
                             "because unpickling them could run code: use a .safetensors version of it.") from None
        except Exception as error:  # torch raises RuntimeError/EOFError/... for a damaged archive
            raise ModelError(f"{self.what} {self.path} could not be read ({type(error).__name__}: {error}); it is "
                             "probably damaged or an incomplete download: download it again.") from None
        if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
            data = data["state_dict"]  # Lightning-style .ckpt, as the official loader expects
        if not isinstance(data, dict):
            raise ModelError(f"{self.path} holds a {type(data).__name__}, not a dictionary of weights.")
        return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def read_weights(path: Path, what: str = "weight file") -> dict[str, torch.Tensor]:
    """Every tensor of a weight file (.safetensors, or a .bin/.ckpt read without executing pickled code)."""
    return CheckpointFile(path, what).tensors()


def checkpoint_kind(keys: Iterable[str]) -> str:
    """'sd1', 'sdxl', 'sd2', 'lora', 'diffusers' or 'unknown', from the key names alone."""
    keys = list(keys)

    def has(*prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in keys)

    if has("conditioner.embedders."):
        return "sdxl"
    if has("cond_stage_model.model."):  # OpenCLIP text encoder
        return "sd2"
    if has("lora_unet_", "lora_te"):
        return "lora"
    if has(UNET_PREFIX + "input_blocks.", CLIP_PREFIX, VAE_PREFIX):
        return "sd1"
    if has("down_blocks.", "encoder.down_blocks.", "text_model.", "unet.", "vae."):
        return "diffusers"
    return "unknown"
