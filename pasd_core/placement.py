"""Where a loaded model's weights are when a pass needs them: the engine names its parts and asks before each pass.

A PASD pipeline's parts are its text encoders, its denoiser (UNet with PACA, and the ControlNet), its VAE and the
optional refiner; the prompt stage's are its captioner and classifier. Before a pass the engine calls
`placement.load(part)`; after a prompt model's pass, `placement.done(part)`.

Outside ComfyUI the engine places its parts itself (LocalPlacement): the pipeline's on the run's device from the
start, as the official scripts; a prompt model visits the device for its pass and goes back, so it never holds
GPU memory while PASD samples. Inside ComfyUI the nodes hand the engine a placement whose parts are ComfyUI's own
models (nodes/host_models.py): loaded by its model manager before each pass and left loaded, evicted only when
another model needs the room. Importing this module loads no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

TEXT, DENOISER, VAE, REFINER = "text encoders", "denoiser", "VAE", "refiner"
CAPTIONER, CLASSIFIER = "captioner", "classifier"
VISITING = (CAPTIONER, CLASSIFIER)  # parts that leave the device after their pass when the engine places them

Parts = Mapping[str, Sequence["torch.nn.Module"]]


class Placement(Protocol):
    """Makes a part's weights ready where its pass runs."""

    def load(self, part: str, memory_required: int = 0) -> None:
        """Before a pass of `part`; `memory_required`: bytes the pass needs beside the weights."""

    def done(self, part: str) -> None:
        """After a pass of `part`."""


# (parts, device) -> a placement for them: LocalPlacement by default; ComfyUI's nodes give their own
PlacementFactory = Callable[[Parts, "torch.device"], Placement]


class AlreadyPlaced:
    """Parts that are where they run already (models loaded on the CPU and run there, or built on their device)."""

    def load(self, part: str, memory_required: int = 0) -> None:
        pass

    def done(self, part: str) -> None:
        pass


class LocalPlacement:
    """The engine's own placement, outside a host: every part but the visiting ones moves to `device` when it is
    made and stays; a visiting part moves there for its pass and back to the CPU after it."""

    def __init__(self, parts: Parts, device: torch.device) -> None:
        import torch

        self.parts, self.device = parts, torch.device(device)
        for name, modules in parts.items():
            if name not in VISITING:
                _move(modules, self.device)

    def load(self, part: str, memory_required: int = 0) -> None:
        if part in VISITING:
            _move(self.parts[part], self.device)

    def done(self, part: str) -> None:
        import torch

        if part in VISITING and self.device.type != "cpu":
            _move(self.parts[part], torch.device("cpu"))
            release(self.device)


def _move(modules: Sequence[torch.nn.Module], device: torch.device) -> None:
    import torch

    for module in modules:
        # plain nn.Module.to (dtypes are set at load): diffusers' override warns about fp32-only modules
        torch.nn.Module.to(module, device=device)


def release(device: torch.device) -> None:
    """Return cached blocks to the driver so other models (and a retry) can use them."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
