"""The public entry point: load PASD once, upscale many images.

    pipe = PASDPipeline.from_pretrained("models/diffusers/stable-diffusion-v1-5", "models/pasd/pasd/checkpoint-100000")
    result = pipe.upscale(Image.open("photo.png"), {"scale": 2})
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..image_io import as_rgb
from ..params import SAMPLER_PARAMS, ParamError, for_family, validate
from . import memory
from .components import SamplerModels, StepCallback, StopCheck
from .family import FAMILIES
from .prompt_stage import GRAYSCALE, REALISR, PromptStage, RunPrompt, colorize_input
from .refiner import Refiner, check_refiner
from .sampler import PASDSampler
from .work_limits import check_planned_work

logger = logging.getLogger(__name__)


class PASDPipeline:
    """A loaded PASD model (UNet, ControlNet, the base's text encoder(s) and VAE, scheduler) on one device."""

    def __init__(self, models: SamplerModels, variant: str, lcm: bool = False, control_type: str = REALISR,
                 prompt_stage: PromptStage | None = None, refiner: Refiner | None = None) -> None:
        self.models = models
        self.variant = variant
        self.lcm = lcm  # LCM fast mode: an LCM-LoRA merged, LCMScheduler; steps and guidance take its ranges
        self.control_type = control_type  # realisr, or grayscale: the colour checkpoint with its own scheduler
        self.prompt_stage = prompt_stage or PromptStage()
        self._sampler = PASDSampler(models)
        self.refiner = refiner  # the SDXL refiner pass after decode (refiner.py), or None

    @classmethod
    def from_pretrained(cls, base_model: str | Path, pasd_model: str | Path, *, style_model: str | Path | None = None,
                        style_strength: float = 1.0, lora: str | Path | None = None, lora_strength: float = 1.0,
                        vae: str | Path | None = None, lcm_lora: str | Path | None = None,
                        device: str = "auto", dtype: str = "auto", base_config: str | Path | None = None,
                        control_type: str = REALISR, caption_model: str | Path | None = None,
                        classifier_model: str | Path | None = None,
                        make_room: Callable[[int, str], None] | None = None,
                        refiner: str | Path | None = None) -> "PASDPipeline":
        """Load an official PASD checkpoint folder (PASD-SD1.5 or PASD-SDXL, read from its UNet config) on a base
        of the same family, optionally personalized.

        `base_config` only matters for a single-file base of another architecture than the shipped configs' (tests).
        `vae` replaces the base's VAE (e.g. the fp16-fix SDXL VAE that the official SDXL script uses in fp16).
        `make_room(bytes, device)` is called before the weights move to a GPU (ComfyUI's free_memory).
        `lcm_lora` (PASD-SD1.5 only) turns on the official LCM fast mode: the LCM-LoRA merged with diffusers'
        alpha/rank scale after any personalization, and LCMScheduler; steps and guidance then take their LCM ranges
        and defaults from the parameter table.
        `control_type` "grayscale" is the official colorization (PASD-SD1.5 colour checkpoint, whose folder's
        parent holds its scheduler/); `caption_model` / `classifier_model` are the prompt stage's CoCa and ResNet-50
        folders (high_level_info caption / classification), loaded once and kept on the CPU between passes.
        `refiner` (PASD-SDXL only): a stabilityai/stable-diffusion-xl-refiner-1.0 folder, run as a seeded img2img
        pass at strength 0.1 between decode and colour fix. This departs from the official --use_refiner, which
        crashes there (its result is a list) and is unseeded; see engine/refiner.py.
        """
        from ..model_family import family_of
        from ..weights.bases import check_compatible, load_base, load_vae
        from ..weights.pasd_folder import check_control_type, load_pasd_checkpoint
        from ..weights.prompt_folders import load_prompt_stage
        from .device import resolve_device, resolve_dtype

        torch_device = resolve_device(device)
        check_control_type(pasd_model, control_type)  # before any weights are read
        if refiner is not None:
            from ..weights.pasd_folder import checkpoint_family

            check_refiner(refiner, checkpoint_family(pasd_model))  # SDXL only, and a refiner folder
        prompt_stage = load_prompt_stage(caption_model, classifier_model, make_room)
        unet, controlnet = load_pasd_checkpoint(pasd_model)
        family = FAMILIES[family_of(unet.config)]
        if lcm_lora is not None:
            from ..weights.lcm_lora import apply_merges, read_lcm_lora, require_lcm_family

            require_lcm_family(family.name, lcm_lora)  # before the base loads
        torch_dtype = resolve_dtype(dtype, torch_device, family.name)
        base = load_base(base_model, family.name, base_config)
        check_compatible(base, unet, Path(base_model))
        scheduler = family.make_scheduler(base, Path(pasd_model), lcm=lcm_lora is not None, control_type=control_type)
        # read and checked before any model changes
        replacement_vae = load_vae(vae, family.name, base_config) if vae is not None else None
        text_encoder, vae = base.text_encoder, base.vae
        lcm_merges = read_lcm_lora(unet, text_encoder, lcm_lora, family.name) if lcm_lora is not None else None
        if style_model is not None or lora is not None:
            from ..weights.personalize import personalize

            # the family is the UNet's; SDXL's text encoders go as a pair (CLIP ViT-L, OpenCLIP ViT-bigG)
            encoders = (text_encoder,) if base.text_encoder_2 is None else (text_encoder, base.text_encoder_2)
            personalize(unet, vae, encoders, style_model=style_model, style_strength=style_strength, lora=lora,
                        lora_strength=lora_strength)
        if lcm_merges is not None:  # last, as the official script fuses it into the (personalized) pipeline
            apply_merges(lcm_merges, lcm_lora)
        refiner_model = Refiner.from_pretrained(refiner, torch_dtype) if refiner is not None else None
        if replacement_vae is not None:
            vae = replacement_vae
        models = SamplerModels(
            tokenizer=base.tokenizer, text_encoder=text_encoder, vae=vae, unet=unet, controlnet=controlnet,
            scheduler=scheduler, device=torch.device("cpu"), dtype=torch_dtype, family=family,
            tokenizer_2=base.tokenizer_2, text_encoder_2=base.text_encoder_2,
        )
        pipeline = cls(models, unet.variant, lcm=lcm_lora is not None, control_type=control_type,
                       prompt_stage=prompt_stage, refiner=refiner_model)
        if make_room is not None and torch_device.type != "cpu":
            make_room(pipeline.weight_bytes(), str(torch_device))
        return pipeline.to(torch_device)

    @property
    def family(self) -> str:
        """"sd15" or "sdxl": the PASD checkpoint's model family."""
        return self.models.family.name

    @property
    def device(self) -> torch.device:
        return self.models.device

    def _modules(self) -> list[torch.nn.Module]:
        m = self.models
        return [module for module in (m.text_encoder, m.text_encoder_2, m.vae, m.unet, m.controlnet)
                if module is not None] + (self.refiner.modules() if self.refiner is not None else [])

    def to(self, device: str | torch.device) -> "PASDPipeline":
        device = torch.device(device)
        m = self.models
        for module in self._modules():
            dtype = m.family.vae_dtype(m.vae, m.dtype) if module is m.vae else m.dtype
            # plain nn.Module.to: diffusers' override warns about fp32-only modules these models do not have
            torch.nn.Module.to(module, device=device, dtype=dtype)
        self.models.device = device
        return self

    def weight_bytes(self) -> int:
        """Bytes the weights take on the device, in the run's dtype."""
        size = torch.finfo(self.models.dtype).bits // 8
        return sum(p.numel() for module in self._modules() for p in module.parameters()) * size

    def memory_required(self) -> int:
        """Bytes a run needs on the device: the weights plus the VAE's peak on one tile (the largest activation)."""
        tiles = memory.vae_tiles_for(torch.device("cpu"), self.models.dtype, self.models.family.vae_tiles)
        return self.weight_bytes() + memory.vae_peak_bytes(tiles[1], self.models.dtype)

    def offload(self) -> None:
        """Move the weights to CPU (free GPU memory between runs)."""
        for module in self._modules():
            module.to("cpu")
        memory.release(self.models.device)

    def settings(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """`values` checked against the shared table, with `auto` defaults resolved for this model's family, and the
        loaded task (control_type), which the resize rules and the prompt follow."""
        values = dict(values)
        if values.pop("control_type", self.control_type) != self.control_type:  # settings this method returned
            raise ParamError(f"control_type is chosen when the model loads; this one was loaded for "
                             f"{self.control_type!r}.")
        settings = for_family(validate(values, SAMPLER_PARAMS, lcm=self.lcm), self.family)
        return {**settings, "control_type": self.control_type}

    def source_image(self, image: Image.Image) -> Image.Image:
        """The image the run starts from: the input as RGB, or its luminance when colorizing."""
        image = as_rgb(image)
        return colorize_input(image) if self.control_type == GRAYSCALE else image

    def describe(self, image: Image.Image, settings: Mapping[str, Any] | None = None) -> RunPrompt:
        """The prompt stage alone: the caption (or class) of `image` and the prompt pair it gives."""
        settings = self.settings(settings or {})
        return self.prompt_stage.describe(self.source_image(image), settings, self.family, self.control_type,
                                          self.device)

    def count_steps(self, width: int, height: int, settings: Mapping[str, Any]) -> int:
        """How many `on_step` calls `upscale` makes for one image of this size."""
        return self._sampler.count_steps(width, height, self.settings(settings))

    def upscale(self, image: Image.Image, settings: Mapping[str, Any] | None = None, *, prompt: RunPrompt | None = None,
                on_step: StepCallback | None = None, should_stop: StopCheck | None = None) -> Image.Image:
        """Super-resolve, stylize or colorize one image; `settings` are checked against the shared table. `prompt`:
        the prompt stage's result when the caller ran `describe` already (to show the caption)."""
        settings = self.settings(settings or {})
        image = self.source_image(image)
        check_planned_work(image.width, image.height, settings)
        self.prompt_stage.needs(settings["high_level_info"])
        if prompt is None:
            prompt = self.prompt_stage.describe(image, settings, self.family, self.control_type, self.device)
        self.models.vae_tiles = memory.vae_tiles_for(self.device, self.models.dtype, self.models.family.vae_tiles)
        while True:
            try:
                return self._sampler.run(image, settings, prompt, on_step=on_step, should_stop=should_stop,
                                         refine=self.refiner)
            except RuntimeError as error:  # torch.OutOfMemoryError is a RuntimeError
                if self.device.type == "cpu" or not memory.is_out_of_memory(error):
                    raise
                smaller = memory.halve_tiles(settings, self.models.vae_tiles)
                if smaller is None:
                    raise
            # retried outside the except block, so the failed attempt's tensors are freed with its traceback
            memory.release(self.device)
            settings, self.models.vae_tiles = smaller
            logger.warning("PASD ran out of memory; retrying with latent tiles of %d and VAE tiles of %s",
                           settings["latent_tile_size"], self.models.vae_tiles)

