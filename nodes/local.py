"""Local PASD nodes: load a model, super-resolve or stylize an IMAGE batch, colour-correct."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

# The table is read at call time (table.X), so every input follows it, even when patched in a test.
from ..pasd_core import params as table
from ..pasd_core.engine.work_limits import check_planned_work
from . import host, images
from .inputs import DeclaredNode, Input, combo, declare, from_param, socket

NONE = "none"
# The same test as pasd_core.weights.pasd_folder.is_pasd_checkpoint, without importing torch to fill a dropdown.
PASD_CHECKPOINT_MARKERS = ("unet/config.json", "controlnet/config.json")
SEED_SPACE = 2**64  # seeds wrap like ComfyUI's 64-bit seed widget: image i uses (seed + i) mod 2**64


def base_model_choices() -> list[str]:
    """SD1.5 and SDXL bases: diffusers folders from models/diffusers, single files from models/checkpoints."""
    folders = [f"diffusers/{name}" for name in host.model_dirs("diffusers", ("model_index.json",))]
    return folders + [f"checkpoints/{name}" for name in host.model_files("checkpoints")]


def base_model_path(choice: str) -> str:
    """A base_model choice, `diffusers/<folder>` or `checkpoints/<file>`, resolved inside that models folder."""
    kind, _, name = choice.partition("/") if isinstance(choice, str) else ("", "", "")
    if kind not in ("diffusers", "checkpoints"):
        raise table.ParamError(f"base_model {repr(choice)[:120]} should start with diffusers/ or checkpoints/: "
                               "pick one from the list.")
    return host.model_path(kind, name, folder=kind == "diffusers", input_name="base_model")


def optional_path(kind: str, choice: str, input_name: str) -> str | None:
    """The file `choice` of models folder `kind`, or None for "none"."""
    return None if choice == NONE else host.model_path(kind, choice, input_name=input_name)


class PASDModelLoader(DeclaredNode):
    """Load a PASD checkpoint (PASD-SD1.5 or PASD-SDXL) on a base of the same family, optionally with a personalized
    model and a LoRA of that family."""

    RETURN_TYPES = ("PASD_MODEL",)
    FUNCTION = "load"

    @classmethod
    def inputs(cls) -> list[Input]:
        return declare(
            combo("pasd_model", host.model_dirs(host.PASD_FOLDER, PASD_CHECKPOINT_MARKERS),
                  "PASD checkpoint folder (with unet/ and controlnet/) from models/pasd: SD1.5 (pasd/checkpoint-100000;"
                  " pasd_light suits stylization) or SDXL (pasd_sdxl/checkpoint-200000, the model fal-ai/pasd runs). "
                  "Its family is read from the checkpoint."),
            combo("base_model", base_model_choices(),
                  "Base of the PASD checkpoint's family (text encoders, VAE): SD1.5 for pasd/pasd_light, SDXL for "
                  "pasd_sdxl; a diffusers folder from models/diffusers (stable-diffusion-v1-5, "
                  "stable-diffusion-xl-base-1.0) or a single file from models/checkpoints."),
            combo("style_model", [NONE, *host.model_files("checkpoints")],
                  "Optional personalized checkpoint of the PASD model's family (e.g. ToonYou for SD1.5) from "
                  "models/checkpoints, for stylization; none keeps plain super-resolution."),
            table.BY_NAME["style_strength"],
            combo("lora", [NONE, *host.model_files("loras")],
                  "Optional LoRA of the PASD model's family from models/loras."),
            table.BY_NAME["lora_strength"],
            table.BY_NAME["device"],
            table.BY_NAME["dtype"],
            # last, so workflows saved before it keep their widget positions
            combo("lcm_lora", [NONE, *host.model_files("loras")],
                  "Optional LCM-LoRA from models/loras (latent-consistency/lcm-lora-sdv1-5; PASD-SD1.5 only): the "
                  f"official LCM fast mode. Then set in PASD Upscale: {table.lcm_summary()}."),
        )

    def load(self, pasd_model: str, base_model: str, style_model: str, lora: str, lcm_lora: str = NONE,
             **params: Any) -> tuple[Any]:
        settings = table.validate(params, table.LOADER_PARAMS)
        device = host.torch_device() if settings["device"] == "auto" else settings["device"]
        dtype = host.preferred_dtype(device) if settings["dtype"] == "auto" else settings["dtype"]
        paths = (host.model_path(host.PASD_FOLDER, pasd_model, folder=True, input_name="pasd_model"),
                 base_model_path(base_model), optional_path("checkpoints", style_model, "style_model"),
                 optional_path("loras", lora, "lora"))
        from ..pasd_core.engine.pipeline import PASDPipeline

        pipeline = PASDPipeline.from_pretrained(
            paths[1], paths[0], style_model=paths[2], style_strength=settings["style_strength"],
            lora=paths[3], lora_strength=settings["lora_strength"],
            lcm_lora=optional_path("loras", lcm_lora, "lcm_lora"), device=device, dtype=dtype,
            make_room=host.free_memory,
        )
        return (pipeline,)


class PASDUpscale(DeclaredNode):
    """Super-resolve (or, with a personalized model, stylize) an image batch with a loaded PASD model."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"

    @classmethod
    def inputs(cls) -> list[Input]:
        return declare(
            socket("image", "IMAGE", "The low-resolution image(s); a batch is upscaled image by image."),
            socket("pasd_model", "PASD_MODEL", "A PASD model (SD1.5 or SDXL) from PASD Model Loader; auto settings "
                   "take its family's defaults."),
            table.SAMPLER_PARAMS,
        )

    def upscale(self, image: Any, pasd_model: Any, **params: Any) -> tuple[Any]:
        pipeline = pasd_model  # a pasd_core.engine.pipeline.PASDPipeline; its device stays the target while offloaded
        settings = table.for_family(table.validate(params, table.SAMPLER_PARAMS, lcm=pipeline.lcm), pipeline.family)
        image = images.checked(image)
        check_planned_work(image.shape[2], image.shape[1], settings)  # before any model moves or pixel converts
        inputs = images.to_pil(image)
        host.free_memory(pipeline.memory_required(), str(pipeline.device))
        pipeline.to(pipeline.device)
        total = len(inputs) * pipeline.count_steps(*inputs[0].size, settings)
        host.log.info("PASD: upscaling %d image(s) of %d×%d by %d, %d denoising steps in all", len(inputs),
                      *inputs[0].size, settings["scale"], total)
        try:
            with host.cancellable() as should_stop, host.progress(total) as tick:
                outputs = [
                    pipeline.upscale(picture, {**settings, "seed": (settings["seed"] + i) % SEED_SPACE},
                                     on_step=tick, should_stop=should_stop)
                    for i, picture in enumerate(inputs)
                ]
        finally:
            if not host.keeps_models_on_device():
                pipeline.offload()
        return (images.to_batch(outputs),)


class PASDColorFix(DeclaredNode):
    """Give an image the colours of a reference (e.g. the low-resolution input), keeping its detail."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "fix"

    @classmethod
    def method_input(cls) -> Input:
        color_fix = from_param(table.BY_NAME["color_fix"])
        choices = [c for c in color_fix.options["options"] if c != NONE]  # "none" would make the node a no-op
        tooltip = f"How to match the colours: {' or '.join(choices)} (wavelet is what the official PASD does)."
        return replace(color_fix, name="method", options={**color_fix.options, "options": choices, "tooltip": tooltip})

    @classmethod
    def inputs(cls) -> list[Input]:
        return declare(socket("image", "IMAGE"),
                       socket("reference", "IMAGE", "Its colours are applied; resized to the image if needed."),
                       cls.method_input())

    def fix(self, image: Any, reference: Any, method: str) -> tuple[Any]:
        choices = self.method_input().options["options"]
        if method not in choices:
            raise table.ParamError(f"method={method!r} is not allowed: use one of {', '.join(choices)}.")
        from ..pasd_core.engine.color import color_fix_tensor

        image, reference = images.checked(image, "image"), images.checked(reference, "reference")
        reference = images.match_batch(reference, image.shape[0], "reference")
        fixed = color_fix_tensor(images.channels_first(image), images.channels_first(reference, "reference"), method)
        return (fixed.permute(0, 2, 3, 1).contiguous(),)
