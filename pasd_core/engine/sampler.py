"""The PASD inference algorithm, step by step as the official test_pasd.py and test_pasd_sdxl.py run it.

Facts it honours (tests/fixtures/pasd_official_tiny/README.md): resize rules, prompt join, one
generator seeded once, CFG with the pair in one batch, latent tiles blended with the official
Gaussian weights, decode, colour fix, final resize. What differs between SD1.5 and SDXL (text
conditioning, start latents) lives in the model family object (family.py); the scheduler and VAE
come with the loaded models. Work the official code repeats for nothing is done once: text
embeddings per run, the ControlNet condition embedding per image (per tile when tiled). A step's
tiles go to the networks together where that pays and memory allows (tile_calls.py).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import Interrupted
from ..params import GRAYSCALE
from ..placement import DENOISER, TEXT, VAE
from ..prompt.stage import RunPrompt
from . import memory
from .color import color_fix
from .components import Refine, SamplerModels, StepCallback, StopCheck
from .family import TextConditioning
from .fast import fast_precision, run_precision
from .tile_calls import Predict, TileCalls
from .tiling import LatentTile, gaussian_weights, latent_tiles, layout_for, needs_tiling
from .work_limits import LATENT_FACTOR, colorize_size, enlarged_size, latent_multiple


def control_image_for(image: Image.Image, scale: int, process_size: int, grayscale: bool = False) -> Image.Image:
    """The image the ControlNet sees and the VAE encodes (official resize rules: bicubic ×scale, bilinear
    up to process_size as torchvision's Resize on a PIL image, bicubic down to multiples of 8). The grayscale
    branch ignores the scale and always resizes, to process_size with the long side at most twice that."""
    if grayscale:
        image = image.resize(colorize_size(*image.size, process_size), Image.BILINEAR)
    else:
        image = image.resize((image.width * scale, image.height * scale), Image.BICUBIC)
        if enlarged_size(*image.size, process_size) != image.size:
            image = image.resize(enlarged_size(*image.size, process_size), Image.BILINEAR)
    return image.resize(latent_multiple(*image.size), Image.BICUBIC)


class PASDSampler:
    def __init__(self, models: SamplerModels) -> None:
        self.m = models

    # -- latents ---------------------------------------------------------------------------------
    def _to_tensor(self, image: Image.Image) -> torch.Tensor:
        array = np.asarray(image, dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1)[None].to(self.m.device, self.m.dtype)

    def initial_latents(self, control: torch.Tensor, generator: torch.Generator,
                        settings: Mapping[str, Any]) -> torch.Tensor:
        """The latents the first denoising step starts from (the family's rule)."""
        self._tile_vae(self.m.vae_tiles[0])
        return self.m.family.start_latents(self.m, control, generator, settings)

    # -- denoising -------------------------------------------------------------------------------
    def _predict(self, latents: torch.Tensor, t: torch.Tensor, text: TextConditioning, embedding: torch.Tensor,
                 conditioning_scale: float) -> torch.Tensor:
        conditioning = text.model_kwargs()
        down, mid = self.m.controlnet(latents, t, condition_embedding=embedding, conditioning_scale=conditioning_scale,
                                      return_dict=False, **conditioning)
        noise = self.m.unet(latents, t, down_block_additional_residuals=down, mid_block_additional_residual=mid,
                            return_dict=False, **conditioning)[0]
        return noise.to(latents.dtype)  # the fast mode's bf16 output back to the latents' precision

    def _predict_in(self, precision: contextlib.AbstractContextManager, conditioning_scale: float) -> Predict:
        def predict(latents: torch.Tensor, t: torch.Tensor, text: TextConditioning,
                    embedding: torch.Tensor) -> torch.Tensor:
            with precision:
                return self._predict(latents, t, text, embedding, conditioning_scale)
        return predict

    @staticmethod
    def tiles_for(latent_height: int, latent_width: int, settings: Mapping[str, Any]) -> list[LatentTile]:
        """The run's latent tiles (its layout: params' speed); one tile of the whole latent when it needs none."""
        tile_size, overlap = settings["latent_tile_size"], settings["latent_tile_overlap"]
        if not needs_tiling(latent_height, latent_width, tile_size):
            return [LatentTile(0, 0, latent_height, latent_width)]
        return latent_tiles(latent_height, latent_width, tile_size, overlap, layout_for(settings))

    @torch.no_grad()
    def denoise(self, latents: torch.Tensor, control: torch.Tensor, text: TextConditioning, settings: Mapping[str, Any],
                on_step: StepCallback | None = None, should_stop: StopCheck | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        guided = text.guided
        tiles = self.tiles_for(*latents.shape[-2:], settings)
        tiled = len(tiles) > 1
        # room for one call's activations (a tile, or the whole latent); more tiles per call where more is free
        one_tile_bytes = memory.denoiser_peak_bytes(self.m.family.denoiser_values, text.hidden_states.shape[0],
                                                    max(tile.height * tile.width for tile in tiles), self.m.dtype)
        self.m.placement.load(DENOISER, one_tile_bytes)
        controlnet, scheduler = self.m.controlnet, self.m.scheduler
        # the run's generator goes to every step of a scheduler that takes one, as diffusers pipelines pass it:
        # LCMScheduler draws fresh noise between steps from it (LCM fixtures' fact 4); UniPC takes none. Asked of
        # the class, so a wrapper put on the instance's step (a profiler) does not hide the parameter.
        takes_generator = "generator" in inspect.signature(type(scheduler).step).parameters
        step_kwargs = {"generator": generator} if takes_generator else {}
        # the control image never changes during sampling: embed it once per tile, not once per step.
        # Embedding the guidance pair as a batch of two (not one copy broadcast) keeps bitwise parity:
        # CPU convolutions round differently for different batch sizes. Paired tile by tile, so no
        # image-sized copy of the control image is held while sampling.
        precision = run_precision(settings, self.m.device, self.m.dtype)
        with precision:
            embeddings = []
            for tile in tiles:
                crop = self._crop(control, tile, LATENT_FACTOR) if tiled else control
                embeddings.append(controlnet.embed_condition(torch.cat([crop] * 2) if guided else crop))
        # official blend: float64 weights times float32 predictions (float32 on MPS, which has no float64); one set
        # per tile shape (official tiles are all one square; even ones differ by a latent at most)
        weight_dtype = torch.float32 if self.m.device.type == "mps" else torch.float64
        weights = {shape: gaussian_weights(*shape).to(self.m.device, weight_dtype)
                   for shape in {tile.shape for tile in tiles}} if tiled else {}
        predict = self._predict_in(precision, settings["conditioning_scale"])
        compute_dtype = fast_precision(settings, self.m.device, self.m.dtype) or self.m.dtype
        calls = TileCalls(predict, self.m.device, compute_dtype, tiles, text, embeddings,
                          one_tile_bytes) if tiled else None
        for t in scheduler.timesteps:
            model_input = torch.cat([latents] * 2) if guided else latents
            model_input = scheduler.scale_model_input(model_input, t)
            if not tiled:
                noise = predict(model_input, t, text, embeddings[0])
                self._ticks(1, on_step, should_stop)
            else:
                parts = calls.predict(model_input, t, lambda count: self._ticks(count, on_step, should_stop))
                # blended in the official tile order, so the float64 sums add up as the official ones
                noise = torch.zeros(model_input.shape, device=model_input.device)
                contributors = torch.zeros(model_input.shape, device=model_input.device)
                for tile, part in zip(tiles, parts, strict=True):
                    noise[:, :, tile.rows(), tile.cols()] += part * weights[tile.shape]
                    contributors[:, :, tile.rows(), tile.cols()] += weights[tile.shape]
                noise /= contributors
            if guided:
                uncond, cond = noise.chunk(2)
                noise = uncond + settings["guidance_scale"] * (cond - uncond)
            latents = scheduler.step(noise, t, latents, return_dict=False, **step_kwargs)[0].to(self.m.dtype)
        return latents

    @staticmethod
    def _crop(image: torch.Tensor, tile: LatentTile, factor: int) -> torch.Tensor:
        return image[:, :, tile.top * factor:(tile.top + tile.height) * factor,
                     tile.left * factor:(tile.left + tile.width) * factor]

    @staticmethod
    def _ticks(count: int, on_step: StepCallback | None, should_stop: StopCheck | None) -> None:
        """`count` tiles done: the progress bar moves by each, the stop request is read once."""
        if on_step is not None:
            for _ in range(count):
                on_step()
        if should_stop is not None and should_stop():
            raise Interrupted("PASD sampling was interrupted.")

    def _tile_vae(self, pixels: int) -> None:
        """diffusers' VAE tiling: images larger than `pixels` are encoded/decoded tile by tile."""
        vae = self.m.vae
        vae.use_tiling = True
        vae.tile_sample_min_size = pixels
        vae.tile_latent_min_size = pixels // LATENT_FACTOR

    # -- decoding --------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> Image.Image:
        vae = self.m.vae
        pixels = latents.shape[-2] * latents.shape[-1] * LATENT_FACTOR**2
        self.m.placement.load(VAE, memory.vae_peak_bytes(self.m.vae_tiles[1], vae.dtype, pixels))
        self._tile_vae(self.m.vae_tiles[1])
        image = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype), return_dict=False)[0]
        image = (image / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).float().cpu().numpy()
        return Image.fromarray((image * 255).round().astype("uint8"))

    # -- the whole run ---------------------------------------------------------------------------
    def run(self, image: Image.Image, settings: Mapping[str, Any], prompt: RunPrompt,
            on_step: StepCallback | None = None, should_stop: StopCheck | None = None,
            refine: Refine | None = None) -> Image.Image:
        """One image; in the grayscale branch `image` is already the luminance input (colorize.colorize_input)."""
        grayscale = settings["control_type"] == GRAYSCALE
        control_image = control_image_for(image, settings["scale"], settings["process_size"], grayscale)
        guided = settings["guidance_scale"] > 1.0
        self.m.placement.load(TEXT)
        text = self.m.family.encode_text(self.m, prompt.prompt, prompt.negative_prompt, guided, control_image.size)
        control = self._to_tensor(control_image)
        self.m.scheduler.set_timesteps(settings["steps"], device=self.m.device)
        generator = torch.Generator(device="cpu" if self.m.device.type == "mps" else self.m.device)
        generator.manual_seed(settings["seed"])
        precision = run_precision(settings, self.m.device, self.m.dtype)  # bf16 in the fast mode, else nothing
        with precision:
            latents = self.initial_latents(control, generator, settings)
        latents = self.denoise(latents, control, text, settings, on_step, should_stop, generator)
        with precision:
            result = self.decode(latents)
        if grayscale:  # no colour fix and no final resize: the result's chroma goes onto the input's luminance
            from .colorize import merge_chroma

            return Image.fromarray(merge_chroma(np.asarray(result), np.asarray(image)))
        if refine is not None:  # drawing on the same generator, continuing its state
            result = refine(result, prompt.prompt, generator, should_stop)
        result = color_fix(result, control_image, settings["color_fix"], self.m.device)
        return result.resize((image.width * settings["scale"], image.height * settings["scale"]), Image.BICUBIC)
