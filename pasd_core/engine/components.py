"""What a PASD run is made of: the loaded models, and the callbacks through which a run reports and stops.

The sampler (sampler.py) runs these; the family parts (family.py) read them; the pipeline (pipeline.py) loads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..placement import AlreadyPlaced, Placement

if TYPE_CHECKING:
    import torch
    from PIL import Image


@dataclass
class SamplerModels:
    """The models of one loaded PASD checkpoint and where they run."""

    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any  # models.PASDUNet
    controlnet: Any  # models.PASDControlNet
    scheduler: Any
    device: torch.device
    dtype: torch.dtype
    family: Any  # family.SD15Family or family.SDXLFamily
    vae_tiles: tuple[int, int] | None = None  # (encode, decode) tile sides in pixels; None: the family's own
    tokenizer_2: Any = None  # SDXL's second text encoder
    text_encoder_2: Any = None
    # who makes each part ready on `device` before its pass (placement.py); by default they are there already
    placement: Placement = field(default_factory=AlreadyPlaced)

    def __post_init__(self) -> None:
        if self.vae_tiles is None:
            self.vae_tiles = self.family.vae_tiles

    def text_encoders(self) -> list[Any]:
        return [encoder for encoder in (self.text_encoder, self.text_encoder_2) if encoder is not None]


StepCallback = Callable[[], None]  # called once per denoising call (per tile step when tiled)
StopCheck = Callable[[], bool]  # asked between denoising calls; True stops the run (Interrupted)
# (image, prompt, the run's generator, should_stop) -> image: the SDXL refiner pass (refiner.py) between decode and
# colour fix; departs from the official code, which crashes there
Refine = Callable[["Image.Image", str, "torch.Generator", "StopCheck | None"], "Image.Image"]
