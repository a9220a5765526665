"""Native nodes: PASD as an adapter on the user's own MODEL, CONDITIONING and VAE (any sampler downstream).

This is the native path's entry, importable anywhere; the modules that do the work (adapter, control, patch, ldm)
import ComfyUI plainly, so they are imported only after the one guard, host.require_comfyui, has found it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...pasd_core import params as table
from ...pasd_core.errors import ModelError
from ...pasd_core.model_family import SD15
from ...pasd_core.weights.pasd_folder import checkpoint_family, component_weights
from ...pasd_core.weights.reader import CheckpointFile
from .. import host, images
from .. import model_choices as choices
from ..inputs import DeclaredNode, Input, combo, declare, socket
from ..model_downloads import download_problem

SEARCH_ALIASES = ["super resolution", "super-resolution", "restore", "upscale", "enhance", "pasd", "controlnet"]
APPLY_PARAMS = ("scale", "conditioning_scale", "process_size")
UNTILED = 2**31  # a latent tile larger than any image


def check_adapter_checkpoint(folder: str | Path) -> str:
    """The family of a PASD checkpoint folder the adapter can take, from its configs and weight names alone (no
    ComfyUI needed): *_rrdb ControlNets are refused."""
    family = checkpoint_family(folder)  # checks the folder, with the engine's messages
    names = CheckpointFile(component_weights(Path(folder) / "controlnet"), "PASD ControlNet weights").keys
    if any(name.startswith("controlnet_cond_embedding.preprocesser.") for name in names):
        raise ModelError(f"{folder} is an *_rrdb PASD checkpoint: its ControlNet runs RRDB blocks that ComfyUI's "
                         "ControlNet has no place for, so PASD Apply supports pasd, pasd_light and pasd_sdxl only. "
                         "Use PASD Model Loader + PASD Upscale for *_rrdb, or pick another checkpoint.")
    return family


class PASDAdapterLoader(DeclaredNode):
    """Load the ControlNet and pixel-aware attention of a PASD checkpoint (pasd, pasd_light or pasd_sdxl) as an
    adapter for your own SD1.5 or SDXL model: super-resolution, restoration and stylization with any checkpoint,
    LoRA and sampler. Connect it to PASD Apply."""

    RETURN_TYPES = ("PASD_ADAPTER",)
    OUTPUT_TOOLTIPS = ("The PASD adapter: connect it to PASD Apply.",)
    FUNCTION = "load"
    SEARCH_ALIASES = SEARCH_ALIASES

    @classmethod
    def inputs(cls) -> list[Input]:
        return declare(combo(
            "pasd_model", choices.pasd_model_choices(),
            "PASD checkpoint folder (with unet/ and controlnet/) from models/pasd: pasd/checkpoint-100000 or "
            "pasd_light/checkpoint-120000 for SD1.5 models, pasd_sdxl/checkpoint-200000 for SDXL models. Only its "
            "ControlNet and pixel-aware attention are used; the SD weights come from your MODEL. The official ones "
            "are listed before they are on disk: with auto_download on, the first run fetches the one picked."),
            choices.auto_download_input())

    @classmethod
    def VALIDATE_INPUTS(cls, pasd_model: str, auto_download: bool = True) -> bool:  # noqa: N802
        """Before the run, as PASD Model Loader: an official checkpoint not on disk passes when this run can fetch
        it, else the short refusal; any other missing name gets its folder, link and download command."""
        fetchable = choices.official_missing({"pasd_model": pasd_model})  # a copy cut short counts as missing
        if not fetchable and pasd_model in choices.pasd_models_on_disk():
            return True
        return choices.refuse([download_problem(fetchable, auto_download, choices.family_hint(pasd_model))
                               if fetchable else choices.missing_pasd_model(pasd_model)])

    def load(self, pasd_model: str, auto_download: bool = True) -> tuple[Any]:
        choices.fetch_if_missing({"pasd_model": pasd_model}, auto_download)
        folder = host.model_path(host.PASD_FOLDER, pasd_model, folder=True, input_name="pasd_model")
        check_adapter_checkpoint(folder)
        host.require_comfyui("PASD Adapter Loader")
        from .adapter import load_adapter

        return (load_adapter(folder),)


class PASDApply(DeclaredNode):
    """Apply a PASD adapter to your model for super-resolution / restoration (or stylization with a personalized
    checkpoint): patches the MODEL with PASD's pixel-aware attention, puts the PASD ControlNet on both
    conditionings and gives the start latent. Then KSampler (denoise 1.0), VAE Decode and PASD Color Fix."""

    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("model", "positive", "negative", "latent")
    OUTPUT_TOOLTIPS = (
        "The model with PASD's pixel-aware attention: connect it to KSampler.",
        "The positive conditioning carrying the PASD control.",
        "The negative conditioning carrying the PASD control.",
        "The start latent at the output size: the VAE encoding of the enlarged image (SD1.5) or an empty latent "
        "(SDXL), as the official PASD starts. Sample it at denoise 1.0.",
    )
    FUNCTION = "apply"
    SEARCH_ALIASES = SEARCH_ALIASES

    @classmethod
    def inputs(cls) -> list[Input]:
        return declare(
            socket("model", "MODEL", "Your SD1.5 or SDXL model (Load Checkpoint, LoRA loaders...), of the adapter's "
                   "family. A personalized checkpoint stylizes."),
            socket("positive", "CONDITIONING", "What the image shows (CLIP Text Encode); the official PASD appends "
                   "'clean, high-resolution, 8k'."),
            socket("negative", "CONDITIONING", "What the result should not look like (CLIP Text Encode)."),
            socket("vae", "VAE", "The model's VAE: encodes the enlarged image into the start latent (SD1.5)."),
            socket("image", "IMAGE", "The low-resolution image(s); a batch needs images of one size."),
            socket("pasd_adapter", "PASD_ADAPTER", "From PASD Adapter Loader, of the model's family."),
            tuple(table.BY_NAME[name] for name in APPLY_PARAMS),
        )

    def apply(self, model: Any, positive: list, negative: list, vae: Any, image: Any, pasd_adapter: Any,
              **params: Any) -> tuple[Any, ...]:
        """The patched model, both conditionings with the PASD control, and the start latent.

        The control image is the engine's (control_image_for: bicubic ×scale, up to process_size, multiples of 8).
        Start latent, SD1.5: the official code noises a VAE sample of the control image to the schedule's first
        timestep (then adds a second, tiny noise: pasd_core/engine/family.py, SD15Family.start_latents), which
        keeps sqrt(alpha_bar) of it, under 0.1. Here it is ComfyUI's VAE encoding of the control image, and
        KSampler at denoise 1.0 adds noise at sigma_max to it, which keeps sqrt(alpha_bar) of the last training
        step (about 0.07). Both start from near-pure noise carrying a faint copy of the enlarged image; the noise
        (KSampler's seed) and the schedule differ, so the native result is close to the engine's, not equal.
        SDXL: the official start is pure noise, so an empty latent of the control image's latent size.
        """
        import torch

        from ...pasd_core.engine.sampler import control_image_for
        from ...pasd_core.engine.work_limits import check_planned_work

        adapter = pasd_adapter
        settings = table.for_family(table.validate(params, tuple(table.BY_NAME[n] for n in APPLY_PARAMS)),
                                    adapter.family)
        image = images.checked(image)
        # the engine's cap on the control image; steps and tiles are KSampler's business here: one untiled call
        check_planned_work(image.shape[2], image.shape[1], {**settings, "steps": 1, "latent_tile_size": UNTILED,
                                                            "latent_tile_overlap": 0})  # before any model or pixel work
        host.require_comfyui("PASD Apply")
        from .control import add_control
        from .patch import check_model, patch_model

        check_model(model, adapter)
        controls = [control_image_for(picture, settings["scale"], settings["process_size"])
                    for picture in images.to_pil(image)]
        control = images.to_batch(controls)  # [B, H, W, 3], one size for the whole batch
        patched = patch_model(model, adapter)
        positive, negative = add_control(adapter.control, control, settings["conditioning_scale"], positive, negative)
        batch, height, width, _ = control.shape
        if adapter.family == SD15:
            latent = vae.encode(control)
        else:
            latent = torch.zeros([batch, 4, height // 8, width // 8])
        return patched, positive, negative, {"samples": latent}
