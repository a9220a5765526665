"""The SDXL refiner pass after PASD-SDXL (test_pasd_sdxl.py --use_refiner), on diffusers' own img2img pipeline.

DEPARTS FROM THE OFFICIAL CODE, which crashes there: test_pasd_sdxl.py calls
`refiner_pipeline(validation_prompt, image=image, strength=0.1).images`, a list, which the following
`wavelet_color_fix(image, validation_image)` cannot take; and the call is unseeded. What it evidently means, and
what this offers: one seeded img2img pass of stabilityai/stable-diffusion-xl-refiner-1.0 at strength 0.1 on PASD's
decoded image, `.images[0]`, before the colour fix and the final resize. Seeded with the run's own generator,
continuing the state PASD's sampling left; the positive prompt PASD sampled with, no negative prompt, the pipeline's
other defaults (50 steps × 0.1 = 5 denoising steps, guidance 5.0, aesthetic scores 6.0 / 2.5).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import Interrupted, ModelError, ModelMismatchError, ModelNotFoundError
from ..model_family import SDXL
from ..weights.download import REFINER

if TYPE_CHECKING:  # the checks run before anything heavy is imported (CLI, nodes)
    import torch
    from PIL import Image

REFINER_STRENGTH = 0.1  # the official call's; every other argument is the pipeline's default
REFINER_PARTS = ("scheduler", "text_encoder_2", "tokenizer_2", "unet", "vae")
_GET_IT = f"use {REFINER.repo_id} (python -m pasd_core download --family sdxl --refiner)"


def check_refiner(folder: str | Path, family: str) -> Path:
    """The refiner folder, once it is known to fit: PASD-SDXL only, and an SDXL refiner in diffusers' layout (its
    model_index.json asks for aesthetic-score conditioning and names text_encoder_2). Reads no weights."""
    folder = Path(folder)
    if family != SDXL:
        raise ModelMismatchError("the SDXL refiner (--refiner) runs after PASD-SDXL only, as test_pasd_sdxl.py "
                                 "--use_refiner; this PASD checkpoint is PASD-SD1.5: drop the refiner, or use a "
                                 "PASD-SDXL checkpoint with an SDXL base.")
    if not folder.exists():
        raise ModelNotFoundError(f"SDXL refiner folder {folder} does not exist: {_GET_IT}.")
    index = folder / "model_index.json"
    if not folder.is_dir() or not index.is_file():
        raise ModelError(f"{folder} is not a diffusers SDXL refiner folder (no model_index.json): {_GET_IT}.")
    try:
        config = json.loads(index.read_text())
    except (OSError, ValueError) as error:
        raise ModelError(f"{index} cannot be read ({error}): {_GET_IT}.") from None
    components = config if isinstance(config, dict) else {}
    if components.get("requires_aesthetics_score") is not True or not _names_a_class(components.get("text_encoder_2")):
        raise ModelError(f"{folder} is not an SDXL refiner (its model_index.json lacks requires_aesthetics_score or "
                         f"text_encoder_2; an SDXL base is not a refiner): {_GET_IT}.")
    missing = [part for part in REFINER_PARTS if not (folder / part).is_dir()]
    if missing:
        raise ModelError(f"SDXL refiner folder {folder} lacks {', '.join(f'{p}/' for p in missing)}: {_GET_IT}.")
    return folder


def _names_a_class(entry: Any) -> bool:
    return isinstance(entry, list) and len(entry) == 2 and all(isinstance(part, str) for part in entry)


def _variant(folder: Path) -> str | None:
    """"fp16" for a folder holding only the fp16 files (what the official script loads), else the full weights."""
    unet = folder / "unet"
    full = (unet / "diffusion_pytorch_model.safetensors").is_file()
    return "fp16" if not full and (unet / "diffusion_pytorch_model.fp16.safetensors").is_file() else None


class Refiner:
    """A loaded SDXL refiner; called between PASD's decode and the colour fix (sampler.run's `refine` hook)."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe  # diffusers.StableDiffusionXLImg2ImgPipeline
        pipe.set_progress_bar_config(disable=True)  # 5 steps; the run's own progress covers PASD's steps

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype) -> Refiner:
        """diffusers' StableDiffusionXLImg2ImgPipeline from `folder` (which `check_refiner` accepted), offline, in the
        run's dtype, on the CPU."""
        from diffusers import StableDiffusionXLImg2ImgPipeline

        folder = Path(folder)
        try:
            with warnings.catch_warnings():  # newer diffusers rename torch_dtype `dtype`; older know only torch_dtype
                warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
                # no invisible watermark: the official environment has none, and it would change the image
                pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(
                    str(folder), torch_dtype=dtype, local_files_only=True, use_safetensors=True,
                    add_watermarker=False, variant=_variant(folder))
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise ModelError(f"cannot load the SDXL refiner from {folder} ({type(error).__name__}: {error}): "
                             f"{_GET_IT}.") from None
        return cls(pipe)

    def modules(self) -> list[torch.nn.Module]:
        """The refiner's weights (its text encoder, UNet and VAE), which move and count with the PASD pipeline's."""
        return [m for m in (self.pipe.text_encoder_2, self.pipe.unet, self.pipe.vae) if m is not None]

    def __call__(self, image: Image.Image, prompt: str, generator: torch.Generator,
                 should_stop: Callable[[], bool] | None = None) -> Image.Image:
        """`image` refined with `prompt`, drawing from `generator` (the PASD run's, continuing its state)."""
        def stop_between_steps(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
            if should_stop is not None and should_stop():
                raise Interrupted("the SDXL refiner pass was interrupted.")
            return tensors

        if should_stop is not None and should_stop():
            raise Interrupted("PASD sampling was interrupted before the SDXL refiner pass.")
        import torch

        with torch.no_grad():
            return self.pipe(prompt, image=image, strength=REFINER_STRENGTH, generator=generator,
                             callback_on_step_end=stop_between_steps).images[0]
