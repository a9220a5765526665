"""What differs between PASD-SD1.5 and PASD-SDXL in sampling: text conditioning and start latents.

Everything else (resize rules, tiles and blend, CFG, condition embedding once per tile, colour fix,
progress, interrupts) is the one loop in sampler.py, with a step's tiles called by tile_calls.py and the
out-of-memory retries in tile_calls.py and pipeline.py. Facts from
tests/fixtures/pasd_official_tiny/README.md (SD1.5) and ../shared/fixtures/pasd_sdxl_official_tiny/README.md
(SDXL), both read off the official test_pasd.py / test_pasd_sdxl.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ModelError
from ..model_family import SD15, SDXL, require_lcm_family
from ..params import GRAYSCALE, REALISR
from ..placement import VAE
from ..weights.reader import read_config
from . import memory

if TYPE_CHECKING:
    from ..weights.base_model import BaseModel
    from .components import SamplerModels


@dataclass
class TextConditioning:
    """The text side of one run: hidden states ([negative, positive] when guided) and SDXL's added inputs."""

    hidden_states: torch.Tensor
    added: dict[str, torch.Tensor] = field(default_factory=dict)  # UNet/ControlNet `added_cond_kwargs`

    @property
    def guided(self) -> bool:
        return self.hidden_states.shape[0] == 2

    def repeated(self, times: int) -> TextConditioning:
        """The same conditioning for `times` latent tiles in one batch, each tile's pair after the previous one's."""
        return TextConditioning(torch.cat([self.hidden_states] * times),
                                {name: torch.cat([value] * times) for name, value in self.added.items()})

    def model_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"encoder_hidden_states": self.hidden_states}
        if self.added:
            kwargs["added_cond_kwargs"] = self.added
        return kwargs


def _token_ids(tokenizer: Any, text: str, device: torch.device) -> torch.Tensor:
    """Padded to the tokenizer's 77, truncated, no attention mask (as both official scripts)."""
    return tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


def _pair(negative: torch.Tensor, positive: torch.Tensor, guided: bool) -> torch.Tensor:
    return torch.cat([negative, positive]) if guided else positive


class SD15Family:
    """PASD on Stable Diffusion 1.5: one CLIP encoder, start latents from the noised VAE encoding."""

    name = SD15
    vae_tiles = (1024, 1792)  # test_pasd.py tiles its VAE above these sizes: encoder 1024 px, decoder 224 latents
    # one ControlNet + UNet call's activations per latent pixel of each sample (memory.tiles_per_call): the real-size
    # PASD measured 10,950 (peak RSS, CPU, fp32, latents 48² and 64², batches 2 and 4: linear), plus about a sixth for
    # what a GPU's kernels may add (unmeasured: no GPU); tests/test_gpu.py checks it on one
    denoiser_values = 13_000

    def vae_dtype(self, vae: Any, dtype: torch.dtype) -> torch.dtype:
        return dtype  # SD1.5's VAE runs in fp16 as the official script runs it

    def make_scheduler(self, base: BaseModel, pasd_folder: Path, lcm: bool = False,
                       control_type: str = REALISR) -> Any:
        """UniPC from the SD1.5 base's scheduler config, as test_pasd.py builds it, or for colorization
        (`control_type` grayscale) from the colour checkpoint's own scheduler/ beside its checkpoint folder, every
        key as written there; with an LCM-LoRA (`lcm`), LCMScheduler from that same config, as --use_lcm_lora does."""
        from ..weights.pasd_folder import colorize_scheduler_config

        config = colorize_scheduler_config(pasd_folder) if control_type == GRAYSCALE else base.scheduler_config
        if lcm:
            from diffusers import LCMScheduler

            return LCMScheduler.from_config(config)
        from diffusers import UniPCMultistepScheduler

        return UniPCMultistepScheduler.from_config(config)

    @torch.no_grad()
    def encode_text(self, m: SamplerModels, prompt: str, negative_prompt: str, guided: bool,
                    control_size: tuple[int, int]) -> TextConditioning:
        def embed(text: str) -> torch.Tensor:
            return m.text_encoder(_token_ids(m.tokenizer, text, m.device))[0].to(m.dtype)

        positive = embed(prompt)
        return TextConditioning(torch.cat([embed(negative_prompt), positive]) if guided else positive)

    @torch.no_grad()
    def start_latents(self, m: SamplerModels, control: torch.Tensor, generator: torch.Generator,
                      settings: dict) -> torch.Tensor:
        """Official draw order: VAE posterior sample, noise n1, noise n2 (all from one generator)."""
        from diffusers.utils.torch_utils import randn_tensor

        scheduler, vae = m.scheduler, m.vae
        m.placement.load(VAE, memory.vae_peak_bytes(m.vae_tiles[0], vae.dtype, control.shape[-2] * control.shape[-1]))
        posterior = vae.encode((control * 2.0 - 1.0).to(vae.dtype)).latent_dist
        latents = (posterior.sample(generator) * vae.config.scaling_factor).to(m.dtype)
        n1 = randn_tensor(latents.shape, generator=generator, device=m.device, dtype=m.dtype)
        latents = scheduler.add_noise(latents, n1, scheduler.timesteps[:1])
        n2 = randn_tensor(latents.shape, generator=generator, device=m.device, dtype=m.dtype)
        level = settings["added_noise_level"]
        if settings["added_noise_mode"] == "exact":  # the paper's intent: noise at timestep `level` itself
            alpha_bar = scheduler.alphas_cumprod[level].to(latents.device, torch.float32)
            latents = (alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * n2).to(m.dtype)
        else:  # today's official code: UniPC looks `level` up in the schedule, misses, uses the last entry;
            # LCMScheduler's add_noise uses the timestep itself (LCM fixtures' fact 3), so there it equals "exact"
            latents = scheduler.add_noise(latents, n2, torch.tensor([level], dtype=torch.long, device=m.device))
        return latents * scheduler.init_noise_sigma


class SDXLFamily:
    """PASD on SDXL: two CLIP encoders (penultimate states + pooled), time ids, a pure-noise start."""

    name = SDXL
    # test_pasd_sdxl.py never tiles its VAE (and never encodes): untiled up to 2048 px a side, which covers the
    # official ×2 of a 1024 px input; beyond that the decoder works in tiles so memory stays bounded.
    vae_tiles = (1024, 2048)
    denoiser_values = 14_000  # as SD15Family's: the real-size PASD-SDXL measured 11,540 (bf16, latents 32², 48²)

    def vae_dtype(self, vae: Any, dtype: torch.dtype) -> torch.dtype:
        """SDXL's own VAE overflows in fp16 (its config says force_upcast): it then runs in fp32, as diffusers'
        SDXL pipelines do; the fp16-fix VAE (madebyollin/sdxl-vae-fp16-fix, force_upcast false) stays in fp16."""
        return torch.float32 if dtype == torch.float16 and vae.config.get("force_upcast", False) else dtype

    def make_scheduler(self, base: BaseModel, pasd_folder: Path, lcm: bool = False,
                       control_type: str = REALISR) -> Any:
        """Euler from the PASD-SDXL checkpoint's own scheduler/ folder, which test_pasd_sdxl.py uses instead of the
        base's. The official code has no LCM mode for SDXL: `lcm` is refused."""
        from diffusers import EulerDiscreteScheduler

        if lcm:
            require_lcm_family(self.name, pasd_folder)

        path = pasd_folder / "scheduler" / "scheduler_config.json"
        if not path.is_file():
            raise ModelError(f"PASD-SDXL checkpoint {pasd_folder} has no {path.relative_to(pasd_folder)}: the "
                             "published checkpoint folder holds unet/, controlnet/ and scheduler/; download it again.")
        return EulerDiscreteScheduler.from_config(read_config(path))

    @torch.no_grad()
    def encode_text(self, m: SamplerModels, prompt: str, negative_prompt: str, guided: bool,
                    control_size: tuple[int, int]) -> TextConditioning:
        def embed(text: str) -> tuple[torch.Tensor, torch.Tensor]:
            states, pooled = [], None
            for tokenizer, encoder in ((m.tokenizer, m.text_encoder), (m.tokenizer_2, m.text_encoder_2)):
                output = encoder(_token_ids(tokenizer, text, m.device), output_hidden_states=True)
                states.append(output.hidden_states[-2])
                pooled = output[0]  # text_encoder_2's projected pooled output (the last encoder's wins)
            return torch.cat(states, dim=-1).to(m.dtype), pooled.to(m.dtype)

        positive, positive_pooled = embed(prompt)
        # The negative prompt is encoded as given, even when empty: SDXL's zero embeddings apply only when no
        # negative prompt is passed at all, which the official script never does.
        negative, negative_pooled = embed(negative_prompt) if guided else (positive, positive_pooled)
        height, width = control_size[1], control_size[0]
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=m.dtype, device=m.device)
        return TextConditioning(_pair(negative, positive, guided), {
            "text_embeds": _pair(negative_pooled, positive_pooled, guided),
            "time_ids": _pair(time_ids, time_ids, guided),
        })

    @torch.no_grad()
    def start_latents(self, m: SamplerModels, control: torch.Tensor, generator: torch.Generator,
                      settings: dict) -> torch.Tensor:
        """Pure Gaussian noise at the control image's latent size; no VAE encoding, no added noise."""
        from diffusers.utils.torch_utils import randn_tensor

        shape = (1, m.unet.config.in_channels, control.shape[-2] // 8, control.shape[-1] // 8)
        latents = randn_tensor(shape, generator=generator, device=m.device, dtype=m.dtype)
        return latents * m.scheduler.init_noise_sigma


FAMILIES = {SD15: SD15Family(), SDXL: SDXLFamily()}
# the SD1.5 family's VAE tile sizes (test_pasd.py's)
OFFICIAL_VAE_TILES = SD15Family.vae_tiles
