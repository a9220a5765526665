"""The public entry point: load PASD once, upscale many images.

    pipe = PASDPipeline.from_pretrained("models/diffusers/stable-diffusion-v1-5", "models/pasd/pasd/checkpoint-100000",
                                        caption_model="models/pasd_prompt/coca_ViT-L-14")
    result = pipe.upscale(Image.open("photo.png"), {"scale": 2})
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..image_io import as_rgb
from ..params import GRAYSCALE, REALISR
from ..placement import DENOISER, REFINER, TEXT, VAE, VISITING, LocalPlacement, PlacementFactory, release
from ..prompt.stage import PromptStage, RunPrompt
from . import memory
from .colorize import colorize_input
from .components import SamplerModels, StepCallback, StopCheck
from .family import FAMILIES
from .plan import RunPlan, check_before_loading
from .refiner import Refiner
from .sampler import PASDSampler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Personalization:
    """Stylization: a personalized checkpoint mixed into the PASD UNet (and replacing VAE and text encoders), and/or a
    LoRA; both of the PASD checkpoint's family."""

    style_model: str | Path | None = None
    style_strength: float = 1.0
    lora: str | Path | None = None
    lora_strength: float = 1.0


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
                        classifier_model: str | Path | None = None, refiner: str | Path | None = None,
                        prompt_stage: PromptStage | None = None,
                        placement: PlacementFactory = LocalPlacement) -> PASDPipeline:
        """Load an official PASD checkpoint folder (PASD-SD1.5 or PASD-SDXL, read from its UNet config) on a base
        of the same family, optionally personalized.

        `base_config` only matters for a single-file base of another architecture than the shipped configs' (tests).
        `vae` replaces the base's VAE (e.g. the fp16-fix SDXL VAE that the official SDXL script uses in fp16).
        `lcm_lora` (PASD-SD1.5 only) turns on the official LCM fast mode: the LCM-LoRA merged with diffusers'
        alpha/rank scale after any personalization, and LCMScheduler; steps and guidance then take their LCM ranges
        and defaults from the parameter table.
        `control_type` "grayscale" is the official colorization (PASD-SD1.5 colour checkpoint, whose folder's
        parent holds its scheduler/); `caption_model` / `classifier_model` are the prompt stage's CoCa and ResNet-50
        folders (high_level_info caption / classification), or `prompt_stage` one loaded already (ComfyUI shares
        one per file between its nodes).
        `refiner` (PASD-SDXL only): a stabilityai/stable-diffusion-xl-refiner-1.0 folder, run as a seeded img2img
        pass at strength 0.1 between decode and colour fix. This departs from the official --use_refiner, which
        crashes there (its result is a list) and is unseeded; see engine/refiner.py.
        `placement` decides where the weights are for each pass (placement.py): by default on `device` from now
        on, the prompt models only for their pass; ComfyUI's nodes hand over its model manager instead.
        """
        from .device import resolve_device, resolve_dtype

        torch_device = resolve_device(device)
        family = check_before_loading(pasd_model, control_type, lcm_lora, refiner)
        torch_dtype = resolve_dtype(dtype, torch_device, family)
        if prompt_stage is not None and (caption_model is not None or classifier_model is not None):
            raise ValueError("give the prompt stage's models as caption_model/classifier_model folders or as a loaded "
                             "prompt_stage, not both.")
        prompt_stage = prompt_stage or PromptStage.load(caption_model, classifier_model)
        models = load_sampler_models(base_model, pasd_model, torch_dtype, control_type=control_type, vae=vae,
                                     lcm_lora=lcm_lora, base_config=base_config,
                                     personalization=Personalization(style_model, style_strength, lora, lora_strength))
        pipeline = cls(models, models.unet.variant, lcm=lcm_lora is not None, control_type=control_type,
                       prompt_stage=prompt_stage,
                       refiner=Refiner.from_pretrained(refiner, torch_dtype) if refiner is not None else None)
        pipeline.place(placement, torch_device)
        return pipeline

    @property
    def family(self) -> str:
        """"sd15" or "sdxl": the PASD checkpoint's model family."""
        return self.models.family.name

    @property
    def device(self) -> torch.device:
        return self.models.device

    # -- the weights ------------------------------------------------------------------------------------------------
    def parts(self) -> dict[str, list[torch.nn.Module]]:
        """The pipeline's weights by the part each pass needs (placement.py), the prompt stage's included."""
        m = self.models
        parts = {TEXT: m.text_encoders(), DENOISER: [m.unet, m.controlnet], VAE: [m.vae], **self.prompt_stage.parts()}
        if self.refiner is not None:
            parts[REFINER] = self.refiner.modules()
        return parts

    def place(self, placement: PlacementFactory, device: torch.device) -> None:
        """Cast the PASD parts to the run's dtypes where they are (the prompt models stay fp32, as the official
        scripts run them), then hand every part to `placement` for runs on `device`."""
        m = self.models
        for module in (*m.text_encoders(), m.unet, m.controlnet, *(self.refiner.modules() if self.refiner else ())):
            torch.nn.Module.to(module, dtype=m.dtype)  # plain nn.Module.to: diffusers' override warns needlessly
        torch.nn.Module.to(m.vae, dtype=m.family.vae_dtype(m.vae, m.dtype))
        m.placement = self.prompt_stage.placement = placement(self.parts(), device)
        m.device = torch.device(device)

    def weight_tensors(self) -> list[torch.Tensor]:
        """Every PASD weight the pipeline holds, once each (not the prompt models', which it may share)."""
        tensors = {id(t): t for name, modules in self.parts().items() if name not in VISITING for module in modules
                   for t in itertools.chain(module.parameters(), module.buffers())}
        return list(tensors.values())

    def weight_bytes(self) -> int:
        """Bytes of the PASD weights (not the prompt models') in the run's dtypes."""
        return sum(p.numel() * p.element_size() for name, modules in self.parts().items() if name not in VISITING
                   for module in modules for p in module.parameters())

    def memory_required(self) -> int:
        """Bytes a run needs on the device: the weights plus the VAE's peak on one tile (the largest activation)."""
        tiles = memory.vae_tiles_for(torch.device("cpu"), self.models.vae.dtype, self.models.family.vae_tiles)
        return self.weight_bytes() + memory.vae_peak_bytes(tiles[1], self.models.vae.dtype)

    # -- a run ------------------------------------------------------------------------------------------------------
    def plan(self, settings: Mapping[str, Any] | RunPlan | None = None) -> RunPlan:
        """`settings` checked once against the shared table, `auto` values resolved for this model's family and
        ranges taken for its mode (LCM), with the prompt stage's model known to be loaded; a RunPlan made for this
        model is taken as it is."""
        if isinstance(settings, RunPlan):
            settings.check_model(self.family, self.lcm, self.control_type)
            return settings
        plan = RunPlan.build(settings, family=self.family, lcm=self.lcm, control_type=self.control_type)
        self.prompt_stage.needs(plan["high_level_info"])
        return plan

    def source_image(self, image: Image.Image) -> Image.Image:
        """The image the run starts from: the input as RGB, or its luminance when colorizing."""
        image = as_rgb(image)
        return colorize_input(image) if self.control_type == GRAYSCALE else image

    def describe(self, image: Image.Image, plan: Mapping[str, Any] | RunPlan | None = None) -> RunPrompt:
        """The prompt stage alone: the caption (or class) of `image` and the prompt pair it gives."""
        return self._describe(self.source_image(image), self.plan(plan))

    def _describe(self, source: Image.Image, plan: RunPlan) -> RunPrompt:
        return self.prompt_stage.describe(source, plan.prompt_settings)

    def count_steps(self, width: int, height: int, plan: Mapping[str, Any] | RunPlan | None = None) -> int:
        """How many `on_step` calls `upscale` makes for one image of this size."""
        return self.plan(plan).denoising_calls(width, height)

    def upscale(self, image: Image.Image, plan: Mapping[str, Any] | RunPlan | None = None, *,
                prompt: RunPrompt | None = None, on_step: StepCallback | None = None,
                should_stop: StopCheck | None = None) -> Image.Image:
        """Super-resolve, stylize or colorize one image with `plan` (a RunPlan, or settings checked against the shared
        table). `prompt`: the prompt stage's result when the caller ran `describe` already (to show the caption)."""
        plan = self.plan(plan)
        source = self.source_image(image)
        plan.check_work(source.width, source.height)
        return self._sample(source, plan, prompt or self._describe(source, plan), on_step, should_stop)

    def upscale_batch(self, images: Sequence[Image.Image], plan: Mapping[str, Any] | RunPlan | None = None, *,
                      before_sampling: Callable[[list[RunPrompt]], None] | None = None,
                      on_step: StepCallback | None = None,
                      should_stop: StopCheck | None = None) -> tuple[list[Image.Image], list[RunPrompt]]:
        """Every image with `plan` (image i with seed + i), and the prompt each was sampled with. The work is checked
        for every size first, then the prompt stage describes them all in one pass, then `before_sampling(prompts)`
        runs (to show the captions), then PASD samples them in order."""
        plan = self.plan(plan)
        sources = [self.source_image(image) for image in images]
        for size in dict.fromkeys(source.size for source in sources):
            plan.check_work(*size)
        plans = [plan.for_image(index) for index in range(len(sources))]  # the seeds differ, the prompt settings not
        prompts = self.prompt_stage.describe_batch(sources, plan.prompt_settings)
        if before_sampling is not None:
            before_sampling(prompts)
        outputs = [self._sample(source, each, prompt, on_step, should_stop)
                   for source, each, prompt in zip(sources, plans, prompts, strict=True)]
        return outputs, prompts

    def _sample(self, source: Image.Image, plan: RunPlan, prompt: RunPrompt, on_step: StepCallback | None,
                should_stop: StopCheck | None) -> Image.Image:
        """One image, retried with smaller tiles when a GPU runs out of memory."""
        # the VAE's own dtype: SDXL's runs in fp32 when the run is fp16 (family.vae_dtype)
        self.models.vae_tiles = memory.vae_tiles_for(self.device, self.models.vae.dtype, self.models.family.vae_tiles)
        while True:
            try:
                return self._sampler.run(source, plan, prompt, on_step=on_step, should_stop=should_stop,
                                         refine=self._refine if self.refiner is not None else None)
            except RuntimeError as error:  # torch.OutOfMemoryError is a RuntimeError
                if self.device.type == "cpu" or not memory.is_out_of_memory(error):
                    raise
                smaller = memory.halve_tiles(plan, self.models.vae_tiles)
                if smaller is None:
                    raise
            # retried outside the except block, so the failed attempt's tensors are freed with its traceback
            release(self.device)
            tiles, self.models.vae_tiles = smaller
            plan = plan.replaced(**tiles)
            logger.warning("PASD ran out of memory; retrying with latent tiles of %d and VAE tiles of %s",
                           plan["latent_tile_size"], self.models.vae_tiles)

    def _refine(self, image: Image.Image, prompt: str, generator: torch.Generator,
                should_stop: StopCheck | None) -> Image.Image:
        self.models.placement.load(REFINER)
        return self.refiner(image, prompt, generator, should_stop)


# -- loading --------------------------------------------------------------------------------------------------------

def load_sampler_models(base_model: str | Path, pasd_model: str | Path, dtype: torch.dtype, *,
                        control_type: str = REALISR, vae: str | Path | None = None, lcm_lora: str | Path | None = None,
                        base_config: str | Path | None = None,
                        personalization: Personalization = Personalization()) -> SamplerModels:
    """The PASD checkpoint on its base, personalized, with the LCM-LoRA merged last (as the official script fuses it
    into the personalized pipeline), on the CPU; every file is read and checked before any model changes, each once.
    Safetensors files are mapped, not copied: until place() casts them, the weights are the file's own pages, so the
    cast's copy in the run's dtype is the only one made (casting as read measured no gain: 2.74 GiB either way for
    the real-size PASD-SD1.5 parts in fp16)."""
    from ..model_family import family_of
    from ..weights.bases import check_compatible, load_base, load_vae
    from ..weights.lcm_lora import apply_merges, read_lcm_lora
    from ..weights.pasd_folder import load_pasd_checkpoint

    unet, controlnet = load_pasd_checkpoint(pasd_model)
    family = FAMILIES[family_of(unet.config)]
    base = load_base(base_model, family.name, base_config)
    check_compatible(base, unet, Path(base_model))
    scheduler = family.make_scheduler(base, Path(pasd_model), lcm=lcm_lora is not None, control_type=control_type)
    replacement_vae = load_vae(vae, family.name, base_config) if vae is not None else None
    lcm_merges = read_lcm_lora(unet, base.text_encoder, lcm_lora, family.name) if lcm_lora is not None else None
    if personalization.style_model is not None or personalization.lora is not None:
        from ..weights.personalize import personalize

        # SDXL's text encoders go as a pair (CLIP ViT-L, OpenCLIP ViT-bigG)
        encoders = (base.text_encoder,) if base.text_encoder_2 is None else (base.text_encoder, base.text_encoder_2)
        personalize(unet, base.vae, encoders, style_model=personalization.style_model,
                    style_strength=personalization.style_strength, lora=personalization.lora,
                    lora_strength=personalization.lora_strength)
    if lcm_merges is not None:
        apply_merges(lcm_merges, lcm_lora)
    return SamplerModels(
        tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=replacement_vae or base.vae, unet=unet,
        controlnet=controlnet, scheduler=scheduler, device=torch.device("cpu"), dtype=dtype, family=family,
        tokenizer_2=base.tokenizer_2, text_encoder_2=base.text_encoder_2)
