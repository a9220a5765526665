"""One side of bench_gpu_vs_official.py's comparison, run in its own process: the official PASD pipeline or this
engine, loaded, warmed up, timed by phase (hooks on the modules; CUDA events on a GPU), its peak memory read, and a
short call profiled for the GPU-busy fraction. Each stage rewrites the side's result file, so a timeout keeps what
was measured."""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

PHASES = ("text_encoders", "vae_encoder", "controlnet", "unet", "vae_decoder")
GIB = 1024**3


# -- the measurements -------------------------------------------------------------------------------------

class Clock:
    """CUDA events on the stream (GPU time between marks) on a GPU, perf_counter on a CPU."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch, self.cuda = torch, device.startswith("cuda")

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = self.torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1000 if self.cuda else end - start

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()


@contextlib.contextmanager
def wrapped(owner: Any, name: str, before: Callable[[], None] | None = None,
            after: Callable[[], None] | None = None) -> Iterator[None]:
    """`owner.name` calls `before` and `after` around it, for the block; functools.wraps keeps its signature for
    callers that inspect it (the official pipelines ask scheduler.step whether it takes a generator)."""
    original = getattr(owner, name)
    had_own = name in vars(owner)

    @functools.wraps(original)
    def call(*args: Any, **kwargs: Any) -> Any:
        if before:
            before()
        result = original(*args, **kwargs)
        if after:
            after()
        return result

    setattr(owner, name, call)
    try:
        yield
    finally:
        if had_own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)


class RunTimer:
    """One call's phases by forward hooks (outermost hooked module only, so nothing counts twice), the end of each
    denoising step by a wrapper on scheduler.step, and the start of denoising (the first ControlNet or UNet call)."""

    def __init__(self, clock: Clock, side: Any) -> None:
        self.clock, self.side = clock, side
        self.spans: list[tuple[str, Any, Any]] = []
        self.step_ends: list[Any] = []
        self.open: list[Any] = []  # [phase, start] of the outermost call running, or empty
        self.depth, self.denoise_start = 0, None

    def enter(self, phase: str, denoising: bool) -> None:
        if self.depth == 0:
            self.open = [phase, self.clock.mark()]
            if denoising and self.denoise_start is None:
                self.denoise_start = self.open[1]
        self.depth += 1

    def exit(self) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.spans.append((self.open[0], self.open[1], self.clock.mark()))

    @contextlib.contextmanager
    def hooked(self) -> Iterator[None]:
        handles = []
        for phase, modules in self.side.phases.items():
            for module in modules:
                denoising = phase in ("controlnet", "unet")
                handles.append(module.register_forward_pre_hook(
                    lambda *_, phase=phase, denoising=denoising: self.enter(phase, denoising)))
                handles.append(module.register_forward_hook(lambda *_: self.exit()))
        with contextlib.ExitStack() as stack:
            for owner, name, phase in self.side.methods:
                stack.enter_context(wrapped(owner, name, functools.partial(self.enter, phase, False), self.exit))
            stack.enter_context(wrapped(self.side.scheduler, "step",
                                        after=lambda: self.step_ends.append(self.clock.mark())))
            try:
                yield
            finally:
                for handle in handles:
                    handle.remove()

    def summary(self, start: Any, end: Any) -> dict[str, Any]:
        """Seconds, once the device is synchronized."""
        seconds = self.clock.seconds
        phases = dict.fromkeys(PHASES, 0.0)
        for phase, a, b in self.spans:
            phases[phase] += seconds(a, b)
        total = seconds(start, end)
        phases["rest"] = total - sum(phases.values())
        ends = self.step_ends
        return {"total_s": total, "phases_s": phases, "steps_counted": len(ends),
                "first_step_s": seconds(start, ends[0]) if ends else None,
                "step_s": seconds(ends[0], ends[-1]) / (len(ends) - 1) if len(ends) > 1 else None,
                "denoise_s": seconds(self.denoise_start, ends[-1]) if ends and self.denoise_start is not None else None}


@contextlib.contextmanager
def peak_memory(record: dict[str, Any]) -> Iterator[None]:
    """The peak GPU memory over the block (allocated and reserved) into `record`, across resets inside it: the
    official pipeline_pasd.py's __call__ is wrapped by vaehook.perfcount, which resets the peaks before and after."""
    import torch

    reset, peaks = torch.cuda.reset_peak_memory_stats, [0, 0]

    def fold(device: Any = None) -> None:
        peaks[:] = (max(peaks[0], torch.cuda.max_memory_allocated(device)),
                    max(peaks[1], torch.cuda.max_memory_reserved(device)))

    def folding_reset(device: Any = None) -> None:
        fold(device)
        reset(device)

    reset()
    torch.cuda.reset_peak_memory_stats = folding_reset
    try:
        yield
    finally:
        torch.cuda.reset_peak_memory_stats = reset
        fold()
        record.update(peak_mem_gib=peaks[0] / GIB, peak_reserved_gib=peaks[1] / GIB)


def busy_fraction(side: Any, image: Any, steps: int) -> dict[str, Any]:
    """CUDA kernel time (union of intervals) over the wall time of denoising steps 2..steps of a short call, under
    torch.profiler (CUDA activity only), started and stopped at step ends with the device synchronized."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    profiler, ends, window = profile(activities=[ProfilerActivity.CUDA]), [0], {}

    def on_step_end() -> None:
        ends[0] += 1
        if ends[0] in (1, steps):
            torch.cuda.synchronize()
        if ends[0] == 1:
            profiler.start()
            window["start"] = time.perf_counter()
        elif ends[0] == steps:
            window["end"] = time.perf_counter()
            profiler.stop()

    with wrapped(side.scheduler, "step", after=on_step_end):
        side.upscale(image, steps)
    spans = sorted((e.start_ns(), e.start_ns() + e.duration_ns()) for e in profiler.profiler.kineto_results.events()
                   if e.device_type() == DeviceType.CUDA and not getattr(e, "is_user_annotation", bool)())
    busy, reach = 0, 0
    for start, end in spans:
        busy += max(0, end - max(start, reach))
        reach = max(reach, end)
    wall = window["end"] - window["start"]
    return {"busy_fraction": busy / 1e9 / wall if spans else None, "busy_window_s": wall, "busy_kernels": len(spans),
            "busy_method": f"torch.profiler CUDA activity: kernel time (overlaps once) / wall time of steps "
                           f"2..{steps} of a separate {steps}-step call, synchronized at both ends"}


class OfficialSide:
    """The official pipeline as load_pasd_pipeline of test_pasd.py / test_pasd_sdxl.py builds it, called as their
    main() calls it (realisr, no personalized model, no LCM, no refiner)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import torch
        import transformers.utils

        # diffusers 0.29.2's pipeline_loading_utils imports FLAX_WEIGHTS_NAME, which transformers 5 dropped with
        # Flax; only loading a whole pipeline from the Hub reads it, which nothing here does
        if not hasattr(transformers.utils, "FLAX_WEIGHTS_NAME"):
            transformers.utils.FLAX_WEIGHTS_NAME = "flax_model.msgpack"
        self.torch, self.args, self.device = torch, SimpleNamespace(**spec["official_args"]), spec["device"]
        self.sdxl = spec["family"] == "sdxl"
        dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.args.mixed_precision]
        self.pipe = self._load_sdxl(spec, dtype) if self.sdxl else self._load_sd15(spec, dtype)
        self.pipe.set_progress_bar_config(disable=True)
        p = self.pipe
        encoders = [p.text_encoder] + ([p.text_encoder_2] if self.sdxl else [])
        self.phases = {"text_encoders": encoders, "vae_encoder": [p.vae.encoder], "controlnet": [p.controlnet],
                       "unet": [p.unet], "vae_decoder": [p.vae.decoder]}
        self.methods, self.scheduler = [], p.scheduler

    def _load_sd15(self, spec: dict[str, Any], dtype: Any) -> Any:
        from diffusers import AutoencoderKL, UniPCMultistepScheduler
        from pasd.models.pasd.controlnet import ControlNetModel
        from pasd.models.pasd.unet_2d_condition import UNet2DConditionModel
        from pasd.pipelines.pipeline_pasd import StableDiffusionControlNetPipeline
        from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer

        base, pasd = spec["base"], spec["pasd"]
        parts = {"scheduler": UniPCMultistepScheduler.from_pretrained(base, subfolder="scheduler"),
                 "text_encoder": CLIPTextModel.from_pretrained(base, subfolder="text_encoder"),
                 "tokenizer": CLIPTokenizer.from_pretrained(base, subfolder="tokenizer"),
                 "vae": AutoencoderKL.from_pretrained(base, subfolder="vae"),
                 "feature_extractor": CLIPImageProcessor.from_pretrained(f"{base}/feature_extractor"),
                 "unet": UNet2DConditionModel.from_pretrained(pasd, subfolder="unet"),
                 "controlnet": ControlNetModel.from_pretrained(pasd, subfolder="controlnet")}
        for name in ("text_encoder", "vae", "unet", "controlnet"):
            parts[name].requires_grad_(False).to(self.device, dtype=dtype)
        pipe = StableDiffusionControlNetPipeline(**parts, safety_checker=None, requires_safety_checker=False)
        pipe._init_tiled_vae(encoder_tile_size=self.args.encoder_tiled_size,
                             decoder_tile_size=self.args.decoder_tiled_size)
        return pipe

    def _load_sdxl(self, spec: dict[str, Any], dtype: Any) -> Any:
        from diffusers import AutoencoderKL, EulerDiscreteScheduler
        from models.pasd.controlnet import ControlNetModel  # test_pasd_sdxl.py imports them with pasd/ on sys.path
        from models.pasd.unet_2d_condition import UNet2DConditionModel
        from pasd.pipelines.pipeline_pasd_sdxl import StableDiffusionXLControlNetPipeline
        from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

        if self.args.mixed_precision == "fp16":
            raise SystemExit("the official SDXL script swaps in the sdxl-vae-fp16-fix VAE in fp16: run SDXL in bf16")
        base, pasd = spec["base"], spec["pasd"]
        parts = {"scheduler": EulerDiscreteScheduler.from_pretrained(pasd, subfolder="scheduler"),
                 "text_encoder": CLIPTextModel.from_pretrained(base, subfolder="text_encoder"),
                 "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(base, subfolder="text_encoder_2"),
                 "tokenizer": AutoTokenizer.from_pretrained(base, subfolder="tokenizer", use_fast=False),
                 "tokenizer_2": AutoTokenizer.from_pretrained(base, subfolder="tokenizer_2", use_fast=False),
                 "vae": AutoencoderKL.from_pretrained(base, subfolder="vae"),
                 "unet": UNet2DConditionModel.from_pretrained(f"{pasd}/unet"),
                 "controlnet": ControlNetModel.from_pretrained(pasd, subfolder="controlnet")}
        for name in ("text_encoder", "text_encoder_2", "vae", "unet", "controlnet"):
            parts[name].requires_grad_(False).to(self.device, dtype=dtype)
        return StableDiffusionXLControlNetPipeline(**parts)

    def upscale(self, image: Any, steps: int) -> Any:
        from pasd.myutils.wavelet_color_fix import wavelet_color_fix
        from torchvision import transforms

        args = SimpleNamespace(**{**vars(self.args), "num_inference_steps": steps})  # prepare_latents reads args'
        prompt = ("" if args.prompt == "" else f"{args.prompt}, ") + args.added_prompt
        width, height = image.size
        control = image.resize((width * args.upscale, height * args.upscale))
        if min(control.size) < args.process_size:
            control = transforms.Resize(args.process_size, interpolation=transforms.InterpolationMode.BILINEAR)(control)
        control = control.resize((control.size[0] // 8 * 8, control.size[1] // 8 * 8))
        generator = self.torch.Generator(device=self.device).manual_seed(args.seed)
        common = {"num_inference_steps": steps, "generator": generator, "guidance_scale": args.guidance_scale,
                  "negative_prompt": args.negative_prompt}
        if self.sdxl:
            result = self.pipe(args, prompt=prompt, image=control, guess_mode=False,
                               controlnet_conditioning_scale=args.conditioning_scale, **common).images[0]
        else:
            result = self.pipe(args, prompt, control, conditioning_scale=args.conditioning_scale, **common).images[0]
        return wavelet_color_fix(result, control).resize((width * args.upscale, height * args.upscale))


class EngineSide:
    """This engine: PASDPipeline.from_pretrained on the same folders, one RunPlan, upscale."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from pasd_core.engine.pipeline import PASDPipeline

        self.pipe = PASDPipeline.from_pretrained(spec["base"], spec["pasd"], device=spec["device"], dtype=spec["dtype"])
        variant = spec.get("variant", "exact")
        self.plan = self.pipe.plan({**spec["settings"], "speed": "fast" if variant == "fast" else "exact"})
        if variant == "compiled":  # compiled on the first call: the warm-up (compile_s_estimated reports it apart)
            from pasd_core.engine.acceleration import accelerate

            accelerate(self.pipe, compile=True, compile_mode=spec["compile_mode"])
        m = self.pipe.models
        self.phases = {"text_encoders": m.text_encoders(), "vae_encoder": [m.vae.encoder],
                       "controlnet": [m.controlnet], "unet": [m.unet], "vae_decoder": [m.vae.decoder]}
        # the condition embedding runs once per tile before the steps (not through forward): ControlNet work too
        self.methods, self.scheduler = [(m.controlnet, "embed_condition", "controlnet")], m.scheduler

    def upscale(self, image: Any, steps: int) -> Any:
        # replaced, not validated: a warm-up or profiled call may run fewer steps than the table's minimum
        return self.pipe.upscale(image, self.plan.replaced(steps=steps))


def run_side(spec: dict[str, Any]) -> None:
    """Load, warm up, time one call, then profile a short one; spec["result"] is rewritten after each stage."""
    began = time.perf_counter()
    record: dict[str, Any] = {"kind": "side", "job": spec["job"], "side": spec["side"], "complete": False}

    def save(**values: Any) -> None:
        record.update(values)
        Path(spec["result"]).write_text(json.dumps(record))

    import diffusers
    import torch
    import transformers
    from PIL import Image

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    clock, cuda = Clock(spec["device"]), spec["device"].startswith("cuda")
    image = Image.open(spec["input"]).convert("RGB")
    scale = spec["settings"]["scale"]
    save(device=torch.cuda.get_device_name() if cuda else "cpu", dtype=spec["dtype"], size_in=list(image.size),
         size_out=[image.width * scale, image.height * scale], steps=spec["steps"], steps_run=spec["steps_run"],
         warmup_steps=spec["warmup_steps"], timing="cuda events" if cuda else "perf_counter",
         versions={"torch": torch.__version__, "diffusers": diffusers.__version__,
                   "transformers": transformers.__version__}, import_s=time.perf_counter() - began)
    started = time.perf_counter()  # load_s: the pipeline's own modules imported, the weights read and placed
    side = (OfficialSide if spec["side"] == "official" else EngineSide)(spec)
    clock.sync()
    save(load_s=time.perf_counter() - started,
         mem_after_load_gib=torch.cuda.memory_allocated() / GIB if cuda else None)

    started = time.perf_counter()
    side.upscale(image, spec["warmup_steps"])
    clock.sync()
    save(warmup_s=time.perf_counter() - started)

    timer = RunTimer(clock, side)
    with peak_memory(record) if cuda else contextlib.nullcontext(), timer.hooked():
        started, start = time.perf_counter(), clock.mark()
        result = side.upscale(image, spec["steps_run"])
        end = clock.mark()
        clock.sync()
    save(wall_s=time.perf_counter() - started, **timer.summary(start, end))
    if spec.get("variant") == "compiled":  # the phases hang on forward hooks, which compiled modules may skip
        save(phases_s=None, denoise_s=None, phases_method="not measured: forward hooks added after compiling are "
                                                          "not seen by the compiled UNet and ControlNet")
    if not cuda:
        save(peak_mem_gib=None)
    save(extrapolated=spec["steps_run"] < spec["steps"] and record["step_s"] is not None)
    if spec.get("variant") == "compiled" and record["step_s"] is not None:
        # the warm-up call compiled, then ran: what it took beyond the same call once compiled (its fixed part, the
        # timed call's total less its steps, plus its own steps at the timed call's rate)
        fixed = record["total_s"] - record["steps_counted"] * record["step_s"]
        save(compile_s_estimated=record["warmup_s"] - fixed - spec["warmup_steps"] * record["step_s"])
    if record["extrapolated"]:  # the steps not run, at the measured time per step
        save(total_s_extrapolated=record["total_s"] + (spec["steps"] - spec["steps_run"]) * record["step_s"])
    result.save(spec["png"])
    save(png=spec["png"])

    busy = {"busy_fraction": None, "busy_method": "not measured on a CPU"}
    if cuda and spec["busy_steps"] >= 2:
        try:
            busy = busy_fraction(side, image, spec["busy_steps"])
        except Exception as error:  # a profiler that fails must not lose the timings above
            busy = {"busy_fraction": None, "busy_error": f"{type(error).__name__}: {error}"}
    save(**busy, busy_steps=spec["busy_steps"], complete=True)
