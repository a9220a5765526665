"""Run inside ComfyUI's Python: one denoiser call of a PASD-patched ComfyUI MODEL against the engine.

    python tests/native_parity_comfy.py COMFYUI_DIR PASD_CHECKPOINT_FOLDER [OTHER_FAMILY_FOLDER]

Builds a ComfyUI SD1.5/SDXL model from the same UNet weights as the engine's PASDUNet (the tiny test bases are
diffusers folders ComfyUI's detection would refuse), loads the adapter with PASD Adapter Loader's code, applies it
with PASD Apply, and runs one guided call through ComfyUI's own sampling path (CFGGuider: prepare_sampling,
the ControlNet's pre_run, calc_cond_batch with the cond/uncond pair in one batch). The engine's
PASDControlNet + PASDUNet see the same x_t, integer t, contexts, control image and conditioning_scale. Then the
patched model is unloaded and reloaded by model_management and called again. With OTHER_FAMILY_FOLDER (a PASD
checkpoint of the other family), also the refusals: that adapter on this model, and PASD Apply applied twice.
Prints one JSON line of figures and messages.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

COMFYUI_DIR, FOLDER = Path(sys.argv[1]), Path(sys.argv[2])
DYNAMIC = os.environ.get("PASD_DYNAMIC_HOST") == "1"  # load the adapter as on a 0.38 host under Dynamic VRAM
OTHER_FAMILY = Path(sys.argv[3]) if len(sys.argv) > 3 else None
sys.path.insert(0, str(COMFYUI_DIR))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True  # fp32 on the CPU, whatever the machine has
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.ops  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.supported_models  # noqa: E402
import comfy.utils  # noqa: E402
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding  # noqa: E402

from support.comfyui import pack_module  # noqa: E402

config_module = pack_module("nodes.native.ldm")
native = pack_module("nodes.native")
patch_module = pack_module("nodes.native.patch")
load_pasd_checkpoint = pack_module("pasd_core.weights.pasd_folder").load_pasd_checkpoint
SDXL = pack_module("pasd_core.model_family").SDXL

TIMESTEP, CFG, CONDITIONING_SCALE, SIZE = 500, 5.0, 0.6, 64


def comfy_model(unet: torch.nn.Module, layout) -> comfy.model_patcher.ModelPatcher:
    """A ComfyUI model of the engine UNet's SD weights (its PACA weights are left out: they are the adapter's)."""
    ldm = config_module.ldm_unet_config(layout)
    kind = comfy.supported_models.SDXL if layout.family == SDXL else comfy.supported_models.SD15
    model_config = kind(ldm)
    model_config.unet_config = dict(ldm)  # no family defaults (SD15 would force 8 heads)
    groups = config_module.norm_groups(layout)
    model_config.custom_operations = config_module.groups_ops(comfy.ops.disable_weight_init, groups)
    model = model_config.get_model({})
    keys = comfy.utils.unet_to_diffusers(ldm)
    state = unet.state_dict()
    missing, unexpected = model.diffusion_model.load_state_dict(
        {keys[k]: v for k, v in state.items() if k in keys}, strict=False)
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    if layout.family == SDXL:  # the tiny SDXL's time-id embedding is narrower than ComfyUI's fixed 256
        model.encode_adm = lambda **kwargs: kwargs["test_y"]
    device = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def sdxl_extras(unet, generator):
    """Pooled embeddings and time ids, as the engine takes them and as ComfyUI's `y`."""
    pooled = torch.randn(2, unet.config.projection_class_embeddings_input_dim
                         - 6 * unet.config.addition_time_embed_dim, generator=generator)
    time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * 2, dtype=torch.float32)
    embedded = timestep_embedding(time_ids.flatten(), unet.config.addition_time_embed_dim).reshape(2, -1)
    return {"text_embeds": pooled, "time_ids": time_ids}, torch.cat([pooled, embedded], dim=1)


class OneCall:
    """A sampler that makes one guided denoiser call at sigmas[0] and keeps its result."""

    def __init__(self) -> None:
        self.denoised = None

    def __call__(self, model, x, sigmas, extra_args=None, callback=None, disable=None):
        self.denoised = model(x, sigmas[0] * x.new_ones([x.shape[0]]), **(extra_args or {}))
        return x


@torch.no_grad()
def native_eps(patched, positive, negative, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """CFG eps of one call of the patched MODEL through ComfyUI's sampling path, at model input x_t."""
    scale = (sigma**2 + 1).sqrt()  # ComfyUI's input is x_t·sqrt(σ²+1); it divides by that before the UNet
    call = OneCall()
    guider = comfy.samplers.CFGGuider(patched)
    guider.set_conds(positive, negative)
    guider.set_cfg(CFG)
    guider.sample(x_t * scale / sigma, torch.zeros_like(x_t), comfy.samplers.KSAMPLER(call),
                  torch.stack([sigma, sigma * 0]), disable_pbar=True, seed=0)
    return (x_t * scale - call.denoised) / sigma


def engine_eps(unet, controlnet, x_t, contexts, control, added) -> torch.Tensor:
    """The engine's CFG eps: PASDControlNet + PASDUNet on the [negative, positive] batch."""
    x2, t = torch.cat([x_t] * 2), torch.tensor(TIMESTEP)
    kwargs = {"encoder_hidden_states": contexts}
    if added:
        kwargs["added_cond_kwargs"] = added
    with torch.no_grad():
        down, mid = controlnet(x2, t, controlnet_cond=torch.cat([control] * 2), conditioning_scale=CONDITIONING_SCALE,
                               return_dict=False, **kwargs)
        eps = unet(x2, t, down_block_additional_residuals=down, mid_block_additional_residual=mid,
                   return_dict=False, **kwargs)[0]
    uncond, cond = eps.chunk(2)
    return uncond + CFG * (cond - uncond)


def without_control(conditioning: list) -> list:
    return [[c, {k: v for k, v in o.items() if k not in ("control", "control_apply_to_uncond")}]
            for c, o in conditioning]


def loaded(module: torch.nn.Module) -> bool:
    return any(m.model.model is module for m in comfy.model_management.current_loaded_models
               if m.model is not None)


def load_adapter(folder: Path):
    return pack_module("nodes.native.adapter").load_adapter(folder)


def load_adapter_on_dynamic_host() -> tuple[dict, object]:
    """The adapter loaded as on ComfyUI 0.38 under Dynamic VRAM, as far as it can tell: CoreModelPatcher (and the
    ModelPatcher core's ControlNet wraps its model in) answers is_dynamic() True. Records how the weights went in
    and whether `cached_patcher_init` rebuilds PACA's patcher."""
    original = comfy.model_patcher.ModelPatcher
    real_load_state_dict = torch.nn.Module.load_state_dict
    assigned: dict[str, bool] = {}

    class DynamicPatcher(original):
        def is_dynamic(self) -> bool:
            return True

    def recording(module, state_dict, strict=True, assign=False):
        assigned[type(module).__name__] = assign
        return real_load_state_dict(module, state_dict, strict=strict, assign=assign)

    comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcher = DynamicPatcher
    torch.nn.Module.load_state_dict = recording
    try:
        adapter = load_adapter(FOLDER)
    finally:
        comfy.model_patcher.ModelPatcher = original
        del comfy.model_patcher.CoreModelPatcher
        torch.nn.Module.load_state_dict = real_load_state_dict
    factory, arguments = adapter.patcher.cached_patcher_init
    rebuilt = factory(*arguments, disable_dynamic=True)
    same = all(torch.equal(a, b) for a, b in zip(rebuilt.model.state_dict().values(),
                                                   adapter.patcher.model.state_dict().values(), strict=True))
    return {"patchers_dynamic": [isinstance(p, DynamicPatcher) for p in adapter.get_models()],
            "assigned": assigned, "rebuilt_dynamic": isinstance(rebuilt, DynamicPatcher), "rebuilt_same": same,
            "control_reinit": adapter.control.control_model_wrapped.cached_patcher_init is not None}, adapter


def main() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    unet, controlnet = load_pasd_checkpoint(FOLDER)
    layout = pack_module("pasd_core.models.layout").PASDLayout(dict(unet.config))
    model = comfy_model(unet, layout)
    host_figures, adapter = load_adapter_on_dynamic_host() if DYNAMIC else ({}, load_adapter(FOLDER))
    contexts = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)  # [negative, positive]
    added, y = sdxl_extras(unet, generator) if layout.family == SDXL else ({}, None)
    negative = [[contexts[:1], {} if y is None else {"test_y": y[:1]}]]
    positive = [[contexts[1:], {} if y is None else {"test_y": y[1:]}]]
    image = torch.rand(1, SIZE, SIZE, 3, generator=generator)

    class NoVAE:  # the start latent is not part of one denoiser call
        def encode(self, pixels):
            return torch.zeros(pixels.shape[0], 4, pixels.shape[1] // 8, pixels.shape[2] // 8)

    patched, positive, negative, _ = native.PASDApply().apply(
        model, positive, negative, NoVAE(), image, adapter, scale=1, conditioning_scale=CONDITIONING_SCALE,
        process_size=SIZE)
    control = positive[0][1]["control"].cond_hint_original  # the control image PASD Apply built, [1, 3, H, W]
    x_t = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=generator)
    sigma = model.model.model_sampling.sigma(torch.tensor(float(TIMESTEP)))
    expected = engine_eps(unet, controlnet, x_t, contexts, control, added)
    first = native_eps(patched, positive, negative, x_t, sigma)
    figures = {**host_figures, "variant": adapter.variant, "family": adapter.family,
               "max_abs_diff": float((first - expected).abs().max()),
               "eps_scale": float(expected.abs().max()),
               "adapter_loaded_with_model": loaded(adapter.pixel_attention),
               "control_loaded_with_model": loaded(adapter.control.control_model)}
    # the same call without PASD: shows the comparison sees PACA and the ControlNet at all
    plain = native_eps(model, without_control(positive), without_control(negative), x_t, sigma)
    figures["diff_without_pasd"] = float((plain - expected).abs().max())
    # the PASD control without PACA: shows the comparison sees the pixel-aware attention itself
    control_only = native_eps(model, positive, negative, x_t, sigma)
    figures["diff_without_paca"] = float((control_only - expected).abs().max())
    figures["base_unpatched_after_plain_run"] = not any(
        isinstance(m, patch_module.PixelAttentionStep) for m in model.model.modules())
    comfy.model_management.free_memory(1e30, torch.device("cpu"))  # offload everything, then sample again
    figures["adapter_unloaded"] = not loaded(adapter.pixel_attention)
    again = native_eps(patched, positive, negative, x_t, sigma)
    figures["max_abs_diff_after_reload"] = float((again - expected).abs().max())
    # a few steps of a real sampler through the patched model: the patches hold across steps and batches
    noise = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=generator)
    sampler, scheduler = ("uni_pc_bh2", "karras") if layout.family != SDXL else ("euler", "normal")
    embedded = []  # PASD's conditioning embedding runs once per control image, not once per step
    hint_block = adapter.control.control_model.input_hint_block
    counting = hint_block[0].register_forward_hook(lambda module, args, output: embedded.append(1))
    with torch.no_grad():
        sampled = comfy.sample.sample(patched, noise, 3, CFG, sampler, scheduler, positive, negative,
                                      torch.zeros_like(noise), denoise=1.0, disable_pbar=True, seed=0)
    counting.remove()
    figures["condition_embeddings_in_3_steps"] = len(embedded)
    figures["embedding_kept_after_sampling"] = hint_block._last is not None
    figures["sampled_shape"] = list(sampled.shape)
    figures["sampled_finite"] = bool(torch.isfinite(sampled).all())
    figures["refusals"] = refusals(patched, model, positive, negative, image, adapter, NoVAE())
    print("PARITY " + json.dumps(figures))


def refusals(patched, model, positive, negative, image, adapter, vae) -> dict[str, str]:
    """The messages of PASD Apply's refusals (an empty string where it did not refuse)."""
    attempts = {"applied_twice": lambda: native.PASDApply().apply(patched, positive, negative, vae, image, adapter,
                                                                  scale=1, conditioning_scale=0.5, process_size=64)}
    if OTHER_FAMILY is not None:
        other = load_adapter(OTHER_FAMILY)
        attempts["other_family"] = lambda: native.PASDApply().apply(model, positive, negative, vae, image, other,
                                                                    scale=1, conditioning_scale=0.5, process_size=64)
    messages = {}
    for name, attempt in attempts.items():
        try:
            attempt()
            messages[name] = ""
        except pack_module("pasd_core.errors").ModelMismatchError as error:
            messages[name] = str(error)
    return messages


if __name__ == "__main__":
    main()
