"""The exact-engine nodes: load a PASD model (PASD Model Loader), super-resolve, stylize or colorize an IMAGE batch
with it (PASD Upscale), as the official PASD code does."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

# The table is read at call time (table.X), so every input follows it, even when patched in a test.
from ..pasd_core import params as table
from . import host, images
from . import model_choices as choices
from .inputs import DeclaredNode, Input, combo, declare, from_param, socket
from .model_choices import NONE, base_model_choices
from .model_downloads import download_problem


def base_model_path(choice: str, input_name: str = "base_model") -> str:
    """A base_model (or refiner) choice, `diffusers/<folder>` or `checkpoints/<file>`, resolved inside that models
    folder."""
    kind, _, name = choice.partition("/") if isinstance(choice, str) else ("", "", "")
    if kind not in ("diffusers", "checkpoints"):
        raise table.ParamError(f"{input_name} {repr(choice)[:120]} should start with diffusers/ or checkpoints/: "
                               "pick one from the list.")
    return host.model_path(kind, name, folder=kind == "diffusers", input_name=input_name)


def optional_path(kind: str, choice: str, input_name: str) -> str | None:
    """The file `choice` of models folder `kind`, or None for "none"."""
    return None if choice == NONE else host.model_path(kind, choice, input_name=input_name)


def vae_path(choice: str) -> str | None:
    """A vae choice: "none", a diffusers VAE folder or a single file of models/vae."""
    if choice == NONE:
        return None
    is_folder = choice in host.model_dirs("vae", choices.VAE_FOLDER_MARKERS)
    return host.model_path("vae", choice, folder=is_folder, input_name="vae")


def control_type_problem(pasd_model: str, control_type: str) -> str | None:
    """Why `pasd_model` cannot run `control_type` (read from its configs, nothing loaded), or None."""
    from ..pasd_core.errors import PASDError
    from ..pasd_core.weights.pasd_folder import check_control_type

    try:
        table.BY_NAME["control_type"].check(control_type)  # ComfyUI skips its list check for this input
        check_control_type(host.model_path(host.PASD_FOLDER, pasd_model, folder=True, input_name="pasd_model"),
                           control_type)
    except PASDError as error:
        return str(error)
    return None


class PASDModelLoader(DeclaredNode):
    """Load a PASD checkpoint (PASD-SD1.5 or PASD-SDXL) from models/pasd on a base of the same family, optionally with
    a personalized model, a LoRA and a replacement VAE of that family, for PASD Upscale (the exact PASD engine)."""

    RETURN_TYPES = ("PASD_MODEL",)
    FUNCTION = "load"

    @classmethod
    def inputs(cls) -> list[Input]:
        return declare(
            combo("pasd_model", choices.pasd_model_choices(),
                  "PASD checkpoint folder (with unet/ and controlnet/) from models/pasd: SD1.5 (pasd/checkpoint-100000;"
                  " pasd_light suits stylization) or SDXL (pasd_sdxl/checkpoint-200000, the model fal-ai/pasd runs). "
                  "Its family is read from the checkpoint. The official ones are listed before they are on disk: "
                  "with auto_download on, the first run fetches the one picked."),
            combo("base_model", base_model_choices(),
                  "Base of the PASD checkpoint's family (text encoders, VAE): SD1.5 for pasd/pasd_light, SDXL for "
                  "pasd_sdxl; a diffusers folder from models/diffusers (stable-diffusion-v1-5, "
                  "stable-diffusion-xl-base-1.0) or a single file from models/checkpoints. The download command "
                  "fetches the base with the PASD checkpoint; auto_download fetches the listed diffusers ones."),
            combo("style_model", choices.optional_choices("checkpoints"),
                  "Optional personalized checkpoint of the PASD model's family (e.g. ToonYou for SD1.5) from "
                  "models/checkpoints, for stylization; none keeps plain super-resolution."),
            table.BY_NAME["style_strength"],
            combo("lora", choices.optional_choices("loras"),
                  "Optional LoRA of the PASD model's family from models/loras."),
            table.BY_NAME["lora_strength"],
            table.BY_NAME["device"],
            table.BY_NAME["dtype"],
            # last of the required inputs, so workflows saved before it keep their widget positions
            combo("lcm_lora", choices.lcm_lora_choices(),
                  "Optional LCM-LoRA from models/loras (latent-consistency/lcm-lora-sdv1-5; PASD-SD1.5 only): the "
                  f"official LCM fast mode. Then set in PASD Upscale: {table.lcm_summary()}."),
            combo("vae", choices.vae_choices(),
                  "Optional replacement VAE of the PASD model's family from models/vae (a diffusers folder or a "
                  ".safetensors file), e.g. the fp16-fix SDXL VAE the official SDXL script uses in fp16; none keeps "
                  "the base's VAE.", optional=True),
            # optional and after vae, so workflows saved before them keep their widget positions
            replace(from_param(table.BY_NAME["control_type"]), optional=True),
            *choices.prompt_model_inputs(),
            combo("refiner", choices.refiner_choices(),
                  "Optional SDXL refiner (stabilityai/stable-diffusion-xl-refiner-1.0 as a diffusers folder in "
                  "models/diffusers), PASD-SDXL only: test_pasd_sdxl.py --use_refiner, a seeded img2img pass at "
                  "strength 0.1 after decoding. Departs from the official code, whose refiner step crashes and is "
                  "unseeded; none (default) runs as the official script without it.", optional=True),
            choices.auto_download_input(),
        )

    @classmethod
    def VALIDATE_INPUTS(cls, pasd_model: str, base_model: str, style_model: str, lora: str,  # noqa: N802
                        lcm_lora: str = NONE, vae: str = NONE, control_type: str = table.REALISR,
                        caption_model: str = NONE, classifier_model: str = NONE, refiner: str = NONE,
                        auto_download: bool = True) -> bool:
        """Before the run (ComfyUI calls this instead of its own list check for these inputs): an official model that
        is not on disk passes when this run can fetch it, else all of them are refused in one short message; any
        other model that is not on disk is named with its folder, where to get it and the download command, each
        once (choices.refuse); colorization on a checkpoint that cannot do it is refused from its configs."""
        chosen = _downloadable_inputs(pasd_model, base_model, lcm_lora, vae, caption_model, classifier_model, refiner)
        fetchable = choices.official_missing(chosen)
        pasd_absent = pasd_model not in choices.pasd_models_on_disk()
        pasd_explained = pasd_absent and not choices.on_disk_or_fetchable("pasd_model", pasd_model, fetchable)
        problems = [
            choices.missing_pasd_model(pasd_model) if pasd_explained else None,
            None if choices.on_disk_or_fetchable("base_model", base_model, fetchable) else
            choices.missing_base_model(base_model, pasd_explained),
            None if style_model in choices.optional_choices("checkpoints") else
            choices.missing_file("style_model", "checkpoints", style_model),
            None if lora in choices.optional_choices("loras") else choices.missing_file("lora", "loras", lora),
            None if lcm_lora == NONE or choices.on_disk_or_fetchable("lcm_lora", lcm_lora, fetchable) else
            choices.missing_file("lcm_lora", "loras", lcm_lora),
            None if vae == NONE or choices.on_disk_or_fetchable("vae", vae, fetchable) else
            choices.missing_file("vae", "vae", vae),
            *choices.missing_prompt_models(caption_model, classifier_model, fetchable),
            None if refiner == NONE or choices.on_disk_or_fetchable("refiner", refiner, fetchable) else
            choices.missing_refiner(refiner),
            download_problem(fetchable, auto_download, choices.family_hint(pasd_model)),
            None if pasd_absent else control_type_problem(pasd_model, control_type),
        ]
        return choices.refuse(problems)

    def load(self, pasd_model: str, base_model: str, style_model: str, lora: str, lcm_lora: str = NONE, vae: str = NONE,
             caption_model: str = NONE, classifier_model: str = NONE, refiner: str = NONE,
             auto_download: bool = True, **params: Any) -> tuple[Any]:
        settings = table.validate(params, table.LOADER_PARAMS)
        for line in table.ignored_loader_settings(settings, style_model=style_model != NONE, lora=lora != NONE):
            host.log.warning("PASD: %s", line)
        choices.fetch_if_missing(_downloadable_inputs(pasd_model, base_model, lcm_lora, vae, caption_model,
                                                      classifier_model, refiner), auto_download)
        device = host.torch_device() if settings["device"] == "auto" else settings["device"]
        dtype = host.preferred_dtype(device) if settings["dtype"] == "auto" else settings["dtype"]
        paths = (host.model_path(host.PASD_FOLDER, pasd_model, folder=True, input_name="pasd_model"),
                 base_model_path(base_model), optional_path("checkpoints", style_model, "style_model"),
                 optional_path("loras", lora, "lora"), vae_path(vae))
        from .host_models import HostedPASDPipeline, placement, shared_prompt_stage

        pipeline = HostedPASDPipeline.from_pretrained(
            paths[1], paths[0], style_model=paths[2], style_strength=settings["style_strength"],
            lora=paths[3], lora_strength=settings["lora_strength"], vae=paths[4],
            lcm_lora=optional_path("loras", lcm_lora, "lcm_lora"), device=device, dtype=dtype,
            control_type=settings["control_type"],
            prompt_stage=shared_prompt_stage(choices.prompt_model_path(caption_model, "caption_model"),
                                             choices.prompt_model_path(classifier_model, "classifier_model")),
            refiner=None if refiner == NONE else base_model_path(refiner, "refiner"),
            placement=placement(),
        )
        return (pipeline,)


def _downloadable_inputs(pasd_model: str, base_model: str, lcm_lora: str, vae: str, caption_model: str,
                         classifier_model: str, refiner: str) -> dict[str, str]:
    return {"pasd_model": pasd_model, "base_model": base_model, "lcm_lora": lcm_lora, "vae": vae,
            "caption_model": caption_model, "classifier_model": classifier_model, "refiner": refiner}


class PASDUpscale(DeclaredNode):
    """Super-resolve (restore and upscale 1-4x) or, with a personalized model, stylize an image batch with a loaded
    PASD model, as the official PASD code does."""

    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "caption")
    OUTPUT_TOOLTIPS = ("The super-resolved (stylized, colorized) images.",
                       "What the prompt stage described (high_level_info): the cleaned caption or class name of each "
                       "image, one line per image; empty lines for none.")
    FUNCTION = "upscale"

    @classmethod
    def inputs(cls) -> list[Input]:
        return declare(
            socket("image", "IMAGE", "The low-resolution image(s); a batch is upscaled image by image."),
            socket("pasd_model", "PASD_MODEL", "A PASD model (SD1.5 or SDXL) from PASD Model Loader; auto settings "
                   "take its family's defaults."),
            table.SAMPLER_PARAMS,
        )

    def upscale(self, image: Any, pasd_model: Any, **params: Any) -> tuple[Any, str]:
        pipeline = pasd_model  # a pasd_core.engine.pipeline.PASDPipeline whose parts ComfyUI loads for each pass
        plan = pipeline.plan(params)  # the one validation of the run; refuses a captioner the loader did not load
        image = images.checked(image)
        plan.check_work(image.shape[2], image.shape[1])  # before any model loads or pixel converts
        inputs = images.to_pil(image)
        total = len(inputs) * pipeline.count_steps(*inputs[0].size, plan)

        for line in plan.ignored:
            host.log.warning("PASD: %s", line)

        on_cpu = str(pipeline.device).startswith("cpu")
        with host.cancellable() as should_stop, host.progress(total) as tick:
            step = CpuEstimate(tick, total) if on_cpu else tick

            def announce(prompts: list[Any]) -> None:
                host.log.info("PASD: upscaling %d image(s) of %d×%d by %d, %d denoising steps in all", len(inputs),
                              *inputs[0].size, plan["scale"], total)
                if on_cpu:
                    step.start()

            outputs, prompts = pipeline.upscale_batch(inputs, plan, before_sampling=announce, on_step=step,
                                                      should_stop=should_stop)
        return images.to_batch(outputs), "\n".join(prompt.description for prompt in prompts)


class CpuEstimate:
    """Wraps `tick`: after the first denoising step, says once what the run will take on the CPU (measured, not
    guessed: that step's time × the planned steps) and where it runs faster."""

    def __init__(self, tick: Callable[[], None], total: int) -> None:
        self.tick, self.total, self.started, self.told = tick, total, time.monotonic(), False

    def start(self) -> None:  # sampling begins (the prompt stage's time is not a step's)
        self.started = time.monotonic()

    def __call__(self) -> None:
        self.tick()
        if not self.told:
            self.told = True
            seconds = time.monotonic() - self.started
            host.log.warning("PASD: running on the CPU: the first of %d denoising steps took %.0f s, so this run "
                             "needs about %.0f min more. A GPU takes seconds; PASD Upscale (fal) runs it on fal's "
                             "GPUs (FAL_KEY).", self.total, seconds, seconds * (self.total - 1) / 60)
