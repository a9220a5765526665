"""Opt-in speed-ups for CUDA, by the PyTorch and diffusers books: channels-last and torch.compile.

    pipe = PASDPipeline.from_pretrained(...)
    accelerate(pipe, channels_last=True, compile=True)   # first upscale compiles (slow), later ones are faster

Neither is numerically exact: convolutions in channels-last layout and compiled kernels round
differently, so results stay within 1/255 of the untouched pipeline but are not the official
bit-exact ones. Both are off unless asked for.

- channels_last: the UNet, ControlNet and VAE weights in NHWC layout, which cuDNN's fastest fp16
  convolution kernels use. On CPU it is allowed and gained little: one thread on the medium-size
  model measured the UNet at 0.95x and the VAE decoder at 0.90x of their time (bench/bench_step_cost.py
  --channels-last measures a step).
- compile: `nn.Module.compile` of the UNet and the ControlNet (the modules called every step), in
  place, so the pipeline keeps the same objects (state dicts, offload, personalization unchanged).
  On the pinned torch each traces into one graph with no break, PACA's forward hooks inlined
  (tests/test_acceleration.py); fullgraph=False all the same, because ComfyUI brings its own torch and
  a break there should fall back to Python, not fail the run. Mode "default", not
  "reduce-overhead": CUDA graphs reuse their output buffers on the next replay, and the PASD step
  hands ControlNet outputs to the UNet across two compiled modules; "reduce-overhead" may be passed
  explicitly (the sampler copies a tile's prediction it keeps past the next call, tile_calls.py;
  unmeasured and untested on a GPU: bench/bench_gpu_vs_official.py --ours exact,compiled
  --compile-mode reduce-overhead measures it, its compile time apart). On CPU compiling works
  (checked on the tiny test models: the first upscale spends minutes compiling, later ones are
  faster because tiny models are all per-operation overhead); at the SD1.5 size the CPU time is in
  convolutions and matrix products, where compiling is expected to gain little (not measured at that
  size on CPU).
- attention: diffusers already runs every attention (text, self and PASD's pixel attention) with
  torch's scaled_dot_product_attention (`AttnProcessor2_0`), which uses flash / memory-efficient
  kernels on CUDA; `attention_processors` lists what a pipeline uses, to check it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .pipeline import PASDPipeline

logger = logging.getLogger(__name__)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def accelerate(pipeline: PASDPipeline, *, compile: bool = False, channels_last: bool = False,
               compile_mode: str = "default") -> PASDPipeline:
    """Apply the chosen speed-ups to `pipeline` in place and return it."""
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode={compile_mode!r} is not one of {', '.join(COMPILE_MODES)}.")
    models = pipeline.models
    if (compile or channels_last) and models.device.type != "cuda":
        logger.info("PASD acceleration on %s: channels_last and torch.compile are meant for CUDA and do not "
                    "speed up this device.", models.device.type)
    if channels_last:
        for module in (models.unet, models.controlnet, models.vae):
            module.to(memory_format=torch.channels_last)
    if compile:
        for module in (models.unet, models.controlnet):
            module.compile(mode=compile_mode, fullgraph=False)
    return pipeline


def attention_processors(pipeline: PASDPipeline) -> set[str]:
    """Class names of the attention processors the UNet and the ControlNet run."""
    models = pipeline.models
    return {type(processor).__name__
            for module in (models.unet, models.controlnet)
            for processor in module.attn_processors.values()}
