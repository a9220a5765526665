"""The one table of PASD parameters; every front end (nodes, fal body, CLI) is derived from it.

A default, range or choice list written anywhere else is a bug: change it here and it changes
in the ComfyUI inputs, the fal request, the CLI flags and the validation messages.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .errors import PASDError
from .model_family import LABELS, SD15, SDXL

# Where a parameter is used: by both engines, by the local sampler only, or by the model loader.
SHARED, LOCAL, LOADER = "shared", "local", "loader"
# The value that stands for "the loaded model family's default" (see Param.auto): 0 for numbers, "auto" for text.
AUTO = {int: 0, str: "auto"}
# high_level_info: how the prompt starts (the official prompt stage); control_type: the task of the loaded model.
CAPTION, CLASSIFICATION, NO_DESCRIPTION = "caption", "classification", "none"
REALISR, GRAYSCALE = "realisr", "grayscale"
# speed: the official arithmetic, or the labelled fast mode (engine/tiling.py, engine/fast.py)
EXACT, FAST = "exact", "fast"


class ParamError(PASDError, ValueError):
    """A parameter value is out of range, of the wrong type, or not one of the choices."""


@dataclass(frozen=True)
class FastMode:
    """A parameter's range and default in the LCM fast mode (an LCM-LoRA loaded, official test_pasd.py
    --use_lcm_lora): LCM samples in a few steps at low guidance, below the ranges fal-ai/pasd shares."""

    min: float
    max: float
    default: Any


@dataclass(frozen=True)
class Param:
    name: str
    kind: type  # int, float or str
    default: Any
    tooltip: str
    scope: str = SHARED
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None
    multiline: bool = False
    # Per-family values of a default that differs between PASD-SD1.5 and PASD-SDXL (the official scripts'
    # own); the parameter's default is then AUTO[kind], resolved once the model's family is known.
    auto: tuple[tuple[str, Any], ...] = ()
    families: tuple[str, ...] = (SD15, SDXL)  # the families it means something for; ignored by the others
    lcm: FastMode | None = None  # its range and default in the LCM fast mode (local runs with an LCM-LoRA)
    advanced: bool = False  # an expert setting: folded away where the front end can (ComfyUI's "advanced" inputs)
    optional: bool = False  # added after the first release: a node may leave it out (its default then applies)

    @property
    def help(self) -> str:
        """The tooltip with what `auto` gives per family and where the parameter is ignored."""
        text = self.tooltip
        if self.auto:
            each = ", ".join(f"{value!r} for {LABELS[family]}" for family, value in self.auto)
            text += f" {AUTO[self.kind]!r} = the model's own default: {each}."
        if len(self.families) == 1:
            text += f" {LABELS[self.families[0]]} only; ignored for the other family."
        if self.lcm:
            text += (f" With an LCM-LoRA (fast mode, SD1.5): {self.lcm.min}-{self.lcm.max}, "
                     f"{self.lcm.default} by default.")
        return text

    def limits(self, lcm: bool = False) -> tuple[float | None, float | None]:
        """(min, max) in the normal or the LCM fast mode."""
        return (self.lcm.min, self.lcm.max) if lcm and self.lcm else (self.min, self.max)

    def widget_limits(self) -> tuple[float | None, float | None]:
        """(min, max) a widget must allow: both modes' values."""
        if not self.lcm:
            return self.min, self.max
        return min(self.min, self.lcm.min), max(self.max, self.lcm.max)

    def default_for(self, lcm: bool = False) -> Any:
        return self.lcm.default if lcm and self.lcm else self.default

    def resolve(self, value: Any, family: str) -> Any:
        """`value`, or this family's default when it is the auto value."""
        return dict(self.auto)[family] if self.auto and value == AUTO[self.kind] else value

    @property
    def remote(self) -> bool:
        """True when the hosted fal-ai/pasd endpoint accepts this parameter."""
        return self.scope == SHARED

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def describe_range(self, lcm: bool = False) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        low, high = self.limits(lcm)
        if low is not None and high is not None:
            auto = f"{AUTO[self.kind]} (auto) or " if self.auto else ""
            return f"{auto}between {low} and {high}"
        return "a string" if self.kind is str else f"a {self.kind.__name__}"

    def check(self, value: Any, lcm: bool = False) -> Any:
        """Return `value` coerced to this parameter's type, or raise ParamError naming it; `lcm`: the range of
        the LCM fast mode applies."""
        value = self._coerce(value)
        if self.choices is not None and value not in self.choices:
            raise ParamError(f"{self.name}={value!r} is not allowed: use {self.describe_range()}.")
        if self.auto and value == AUTO[self.kind]:
            return value
        low, high = self.limits(lcm)
        if low is not None and value < low or high is not None and value > high:
            fast = lcm and self.lcm is not None
            mode = " for the LCM fast mode (an LCM-LoRA is loaded)" if fast else ""
            other = (f"; {self.lcm.default} suits it" if fast else
                     f" ({self.lcm.min}-{self.lcm.max} only with an LCM-LoRA)" if self.lcm else "")
            raise ParamError(f"{self.name}={value!r} is out of range{mode}: use a value "
                             f"{self.describe_range(lcm)}{other}.")
        return value

    def _coerce(self, value: Any) -> Any:
        kind = {int: "a whole number", float: "a number", str: "a string"}[self.kind]
        limits = "" if self.kind is str or self.min is None else f" {self.describe_range()}"
        wrong = ParamError(f"{self.name}={value!r} is not {kind}{limits}.")
        if self.kind is str:
            if not isinstance(value, str):
                raise wrong
            return value
        if isinstance(value, bool):
            raise wrong
        if self.kind is int:
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                try:
                    return int(value.strip())
                except ValueError:
                    raise wrong from None
            if not isinstance(value, int):
                raise wrong
            return value
        number = value
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise wrong from None
        if not isinstance(number, (int, float)):
            raise wrong
        try:
            number = float(number)
        except OverflowError:  # an int too large for a float
            number = math.inf
        if not math.isfinite(number):  # NaN passes every range comparison; "1e999" parses as inf
            raise ParamError(f"{self.name}={value!r} is not a finite number: use a value {self.describe_range()}.")
        return number


PARAMS: tuple[Param, ...] = (
    # Shared with fal-ai/pasd: names, ranges and defaults are the hosted API's own.
    Param("scale", int, 2, "Upscaling factor: the output is the input size times this.", min=1, max=4, step=1),
    # LCM: 4-8 steps (the LCM-LoRA's own advice), guidance 1.0-2.0 (1.0 turns CFG off and halves the work;
    # the official-LCM fixtures use 1.0 and 1.5); fal-ai/pasd has no LCM mode and keeps 10-50 and 1-20.
    Param("steps", int, 25, "Number of denoising steps.", min=10, max=50, step=1, lcm=FastMode(4, 8, 4)),
    Param("guidance_scale", float, 7.0, "Classifier-free guidance: how strongly the prompt steers the result "
          "(1.0 turns it off).", min=1.0, max=20.0, step=0.1, lcm=FastMode(1.0, 2.0, 1.0)),
    Param("conditioning_scale", float, 0.8,
          "How strongly the low-resolution image controls the result (0.7 suits stylization).",
          min=0.1, max=1.0, step=0.05),
    Param("prompt", str, "", "What the image shows; helps the model restore detail.", multiline=True),
    Param("negative_prompt", str,
          "blurry, dirty, messy, frames, deformed, dotted, noise, raster lines, unclear, lowres, over-smoothed, "
          "painting, ai generated",
          "What the result should not look like.", multiline=True),
    # Local sampler only.
    Param("seed", int, 0, "Random seed; image i of a batch uses seed + i.", scope=LOCAL, min=0,
          max=2**64 - 1, step=1),
    Param("added_prompt", str, AUTO[str], "Appended to the prompt, as the official PASD does.",
          scope=LOCAL, multiline=True,
          auto=((SD15, "clean, high-resolution, 8k"), (SDXL, "photorealistic, clean, high-resolution, 8k"))),
    Param("process_size", int, AUTO[int], "Images whose short side is below this are enlarged to it before sampling.",
          scope=LOCAL, min=64, max=4096, step=8, auto=((SD15, 768), (SDXL, 1280))),
    Param("latent_tile_size", int, AUTO[int],
          "Latents larger than this (squared) are sampled in tiles of this size; lower it to save memory.",
          scope=LOCAL, min=8, max=1024, step=8, auto=((SD15, 320), (SDXL, 180)), advanced=True),
    Param("latent_tile_overlap", int, 8, "Overlap between latent tiles.", scope=LOCAL, min=0, max=256, step=1,
          advanced=True),
    # PASD-SDXL starts from pure noise (official test_pasd_sdxl.py): these two mean nothing there.
    Param("added_noise_level", int, 900, "Extra noise mixed into the start latents (higher: more generated detail).",
          scope=LOCAL, min=0, max=999, step=1, families=(SD15,), advanced=True),
    Param("added_noise_mode", str, "official",
          "'official' adds noise as the official code does today (at the schedule's last timestep); "
          "'exact' adds it at timestep added_noise_level itself, as the paper intends.",
          scope=LOCAL, choices=("official", "exact"), families=(SD15,), advanced=True),
    Param("color_fix", str, "wavelet", "Match the output's colours to the input: wavelet (official), adain or none.",
          scope=LOCAL, choices=("wavelet", "adain", "none"), advanced=True),
    # The official scripts' prompt stage (--high_level_info, caption by default): fal-ai/pasd calls its prompt an
    # additional one, so it most likely captions too; locally it needs the captioner or classifier weights.
    Param("high_level_info", str, CAPTION,
          "How the prompt starts, as the official PASD does: caption (a CoCa captioner describes the image; your "
          "prompt follows), classification (its ImageNet class when the classifier is at least 10% sure) or none "
          "(your prompt only).", scope=LOCAL, choices=(CAPTION, CLASSIFICATION, NO_DESCRIPTION)),
    # Added after the first release: last of the sampler's inputs and optional in the nodes, so saved workflows keep
    # their widget positions.
    Param("speed", str, EXACT,
          "exact: the official PASD arithmetic, tile layout and precision. fast (not the official numbers): latent "
          "tiles shrunk to overlap by exactly latent_tile_overlap (the official layout overlaps far more), and the "
          "networks in bf16 where the device computes it natively (CUDA GPUs from Ampere on, CPUs with AVX-512 BF16 "
          "or AMX); bench/README.md gives its measured time and drift.", scope=LOCAL, choices=(EXACT, FAST),
          advanced=True, optional=True),
    # Model loader.
    Param("device", str, "auto", "Where to run: auto picks CUDA, then Apple MPS, then CPU.", scope=LOADER,
          choices=("auto", "cpu", "cuda", "mps"), advanced=True),
    Param("dtype", str, "auto", "Weight precision: auto is what the official scripts use on a GPU (fp16 for SD1.5, "
          "bf16 for SDXL on CUDA; fp16 on Apple MPS) and fp32 on CPU.", scope=LOADER,
          choices=("auto", "fp32", "fp16", "bf16"), advanced=True),
    # The official second task (--control_type grayscale): colorization with the pasd_color checkpoint, whose
    # folder brings its own zero-terminal-SNR scheduler; the output keeps the input's size and luminance.
    Param("control_type", str, REALISR,
          "Task: realisr (super-resolution and restoration) or grayscale (colorize a black-and-white photo; needs "
          "the PASD colour checkpoint, pasd_light_color, with its scheduler/ folder).", scope=LOADER,
          choices=(REALISR, GRAYSCALE), families=(SD15,)),
    Param("style_strength", float, 1.0,
          "How much of the personalized model replaces the PASD UNet's SD weights (1.0 = replace).",
          scope=LOADER, min=0.0, max=1.0, step=0.05, advanced=True),
    Param("lora_strength", float, 1.0, "Multiplier of the LoRA weights (the official PASD demo used 0.6).",
          scope=LOADER, min=-4.0, max=4.0, step=0.05, advanced=True),
)

BY_NAME: dict[str, Param] = {p.name: p for p in PARAMS}
# fal-ai/pasd has no LCM fast mode: its parameters keep the normal ranges only
REMOTE_PARAMS: tuple[Param, ...] = tuple(replace(p, lcm=None) for p in PARAMS if p.scope == SHARED)
SAMPLER_PARAMS: tuple[Param, ...] = tuple(p for p in PARAMS if p.scope in (SHARED, LOCAL))
LOADER_PARAMS: tuple[Param, ...] = tuple(p for p in PARAMS if p.scope == LOADER)


def lcm_summary() -> str:
    """The LCM fast mode's ranges and defaults in words, for tooltips and help ("steps 1-8 (4 by default), …")."""
    return ", ".join(f"{p.name} {p.lcm.min}-{p.lcm.max} ({p.lcm.default} by default)" for p in PARAMS if p.lcm)


def defaults(params: Iterable[Param] = SAMPLER_PARAMS) -> dict[str, Any]:
    return {p.name: p.default for p in params}


def validate(values: Mapping[str, Any], params: Iterable[Param] = SAMPLER_PARAMS, lcm: bool = False) -> dict[str, Any]:
    """Check `values` against the table; missing ones take their defaults; unknown names are an error.

    `lcm`: the model runs in the LCM fast mode (an LCM-LoRA loaded), whose ranges and defaults apply.
    """
    params = tuple(params)
    known = {p.name: p for p in params}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ParamError(f"unknown parameter(s) {', '.join(unknown)}: expected some of {', '.join(known)}.")
    settings = {p.name: p.check(values[p.name], lcm) if values.get(p.name) is not None else p.default_for(lcm)
                for p in params}
    _check_tiles(settings)
    return settings


def _check_tiles(settings: Mapping[str, Any]) -> None:
    """Tiles must advance: the overlap stays below the tile size (checked once the size is known)."""
    size, overlap = settings.get("latent_tile_size"), settings.get("latent_tile_overlap")
    if size is not None and overlap is not None and size != AUTO[int] and overlap >= size:
        raise ParamError(f"latent_tile_overlap={overlap} must be smaller than latent_tile_size={size}.")


def for_family(settings: Mapping[str, Any], family: str) -> dict[str, Any]:
    """Validated settings with every auto value replaced by `family`'s default (SD15 or SDXL)."""
    resolved = {name: BY_NAME[name].resolve(value, family) if name in BY_NAME else value
                for name, value in settings.items()}
    _check_tiles(resolved)
    return resolved


def ignored_loader_settings(settings: Mapping[str, Any], *, style_model: bool, lora: bool) -> list[str]:
    """The strengths a load ignores because their model is not given (said, not refused: saved workflows keep
    running), each as a sentence."""
    unused = (("style_strength", style_model, "style_model"), ("lora_strength", lora, "lora"))
    return [f"{name}={settings[name]!r} is ignored: no {model} is loaded" for name, given, model in unused
            if not given and settings[name] != BY_NAME[name].default]


def fal_arguments(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The fal-ai/pasd request fields (without the image) for validated settings."""
    return {p.name: settings[p.name] for p in REMOTE_PARAMS}


def add_cli_flags(parser: argparse.ArgumentParser, params: Iterable[Param]) -> None:
    """One `--kebab-case` flag per parameter; None means 'not given' so front ends can tell."""
    for p in params:
        parser.add_argument(
            p.flag, dest=p.name, type=p.kind, default=None, choices=p.choices, metavar=None if p.choices else "N"
            if p.kind is not str else "TEXT",
            help=f"{p.help} ({p.describe_range()}; default {p.default!r})",
        )


def given_cli_values(namespace: argparse.Namespace, params: Iterable[Param]) -> dict[str, Any]:
    """The parameters actually passed on the command line."""
    return {p.name: getattr(namespace, p.name) for p in params if getattr(namespace, p.name, None) is not None}
