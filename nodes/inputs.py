"""ComfyUI input declarations derived from the parameter table (`pasd_core.params`).

Each input is first described neutrally as an `Input` whose option names are those of ComfyUI's
V3 schema (`comfy_api.latest.io.Int.Input(id, default=, min=, ...)`); `classic()` turns it into
the INPUT_TYPES tuple the nodes declare today and `v3()` into a V3 input, so both stay one source.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..pasd_core.params import AUTO, Param

WIDGET_TYPES = {int: "INT", float: "FLOAT", str: "STRING"}
# Inputs ComfyUI re-rolls after each queued prompt (its "control after generate" widget), as core's KSampler.
SEED_NAMES = ("seed",)


@dataclass(frozen=True)
class Input:
    name: str
    io_type: str  # "INT", "FLOAT", "STRING", "COMBO", or a socket type such as "IMAGE"
    options: dict[str, Any] = field(default_factory=dict)  # keyword names of the V3 `Input` constructors
    optional: bool = False  # may be left unconnected / absent from a prompt (INPUT_TYPES "optional")


def from_param(param: Param) -> Input:
    """The widget for one table entry: its type, default, range, step, choices and tooltip."""
    options: dict[str, Any] = {"default": param.default, "tooltip": param.help}
    if param.advanced:  # folded away by front ends that know it (ComfyUI 0.38 reads it from V1 and V3 nodes)
        options["advanced"] = True
    if param.choices is not None:
        return Input(param.name, "COMBO", {"options": list(param.choices), **options}, param.optional)
    # both modes' range: the LCM fast mode's (fewer steps, lower guidance) is only known once a model is loaded
    for key, value in zip(("min", "max", "step"), (*param.widget_limits(), param.step), strict=True):
        if value is not None:
            options[key] = param.kind(value)
    if param.auto and param.kind is int:  # the widget must accept 0, the "auto" value, below the real range
        options["min"] = AUTO[int]
        options["display_name"] = f"{param.name} (0 = auto)"  # the label; the input keeps its name
    if param.multiline:
        options["multiline"] = True
        options["placeholder"] = placeholder(param)
    if param.name in SEED_NAMES:
        options["control_after_generate"] = True
    return Input(param.name, WIDGET_TYPES[param.kind], options, param.optional)


def placeholder(param: Param) -> str:
    """What an empty text box shows: the parameter's name and the first sentence of its tooltip."""
    first = param.tooltip.split(". ")[0].rstrip(".")
    return f"{param.name}: {first}" + (f" ({AUTO[param.kind]!r}: the model's own default)" if param.auto else "")


def combo(name: str, choices: Sequence[str], tooltip: str, *, placeholder: str | None = None,
          optional: bool = False) -> Input:
    """A dropdown whose choices are not in the table (model files found on disk).

    An empty list becomes `[placeholder]`: ComfyUI's front end shows a new node's combo as its first choice, so
    an empty list reads `undefined`; the placeholder says what is missing, and the node's VALIDATE_INPUTS
    explains the fix when it is queued.
    """
    options = list(choices) or ([placeholder] if placeholder else [])
    return Input(name, "COMBO", {"options": options, "tooltip": tooltip}, optional)


def socket(name: str, io_type: str, tooltip: str | None = None) -> Input:
    """A connection-only input such as an IMAGE or a PASD_MODEL."""
    return Input(name, io_type, {"tooltip": tooltip} if tooltip else {})


def classic(item: Input) -> tuple:
    """The INPUT_TYPES entry for `item`: dropdowns as a list of choices, others as (TYPE, options). A label
    (`display_name`) is the V3 schema's alone."""
    options = {k: v for k, v in item.options.items() if k != "display_name"}
    if item.io_type == "COMBO":
        return (options.pop("options"), options)
    return (item.io_type, options)


def declare(*items: Input | Param | Iterable[Param]) -> list[Input]:
    """A node's inputs in order; table entries (or tuples of them) become widgets."""
    out: list[Input] = []
    for item in items:
        if isinstance(item, Input):
            out.append(item)
        elif isinstance(item, Param):
            out.append(from_param(item))
        else:
            out.extend(from_param(p) for p in item)
    return out


def comfy_inputs(inputs: Iterable[Input]) -> dict[str, dict[str, tuple]]:
    """The classic INPUT_TYPES of a node whose inputs are `inputs`, required ones first as ComfyUI orders them."""
    inputs = list(inputs)
    declared = {"required": {item.name: classic(item) for item in inputs if not item.optional}}
    optional = {item.name: classic(item) for item in inputs if item.optional}
    return {**declared, "optional": optional} if optional else declared


class DeclaredNode:
    """Base of this pack's nodes: INPUT_TYPES is made from `inputs()`, the description from the docstring."""

    CATEGORY = "image/upscaling/PASD"
    # Words users search for (read by ComfyUI versions whose node search knows SEARCH_ALIASES; 0.3.64 ignores it).
    SEARCH_ALIASES = ("pasd", "super resolution", "upscale", "restore", "enhance")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.DESCRIPTION = inspect.cleandoc(cls.__doc__ or "")

    @classmethod
    def inputs(cls) -> list[Input]:
        raise NotImplementedError

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:  # noqa: N802 - the name ComfyUI calls
        return comfy_inputs(cls.inputs())


def v3(item: Input, io: Any) -> Any:
    """The same input in ComfyUI's V3 schema; `io` is `comfy_api.latest.io`. `advanced` is kept where the host's
    inputs take it (0.38), dropped where they do not (0.3.64 raises on unknown keywords)."""
    kinds = {"INT": io.Int, "FLOAT": io.Float, "STRING": io.String, "BOOLEAN": io.Boolean, "COMBO": io.Combo,
             "IMAGE": io.Image}
    kind = kinds.get(item.io_type) or io.Custom(item.io_type)
    options = dict(item.options)
    if "advanced" in options and "advanced" not in inspect.signature(kind.Input.__init__).parameters:
        del options["advanced"]
    return kind.Input(item.name, **options, **({"optional": True} if item.optional else {}))
