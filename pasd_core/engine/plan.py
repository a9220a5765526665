"""A run's settings, validated and resolved once: the frozen plan every front end builds and the pipeline runs.

The node, the CLI and the API hand the table's values to `RunPlan.build` (through `PASDPipeline.plan` once a model is
loaded, or with the checkpoint's family read from its config before anything loads); the pipeline and the sampler
only read the plan. One image of a batch gets `plan.for_image(i)` (its seed), never a second validation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .. import params as table
from ..model_family import LABELS, require_lcm_family
from ..params import GRAYSCALE, REALISR, ParamError
from ..prompt.stage import PromptSettings
from .work_limits import check_planned_work, denoising_calls

SEED_SPACE = 2**64  # seeds wrap like ComfyUI's 64-bit seed widget: image i uses (seed + i) mod 2**64


@dataclass(frozen=True)  # equal plans: the same model kind and the same settings (not any mapping that reads alike)
class RunPlan(Mapping):
    """Every sampler parameter checked against the table, `auto` values resolved for the model's family, and what
    the loaded model is: its family, the LCM fast mode (an LCM-LoRA merged) and its task. Reads like the settings
    mapping it holds (`plan["steps"]`, `plan["control_type"]`)."""

    family: str  # SD15 or SDXL
    lcm: bool
    settings: Mapping[str, Any]

    @classmethod
    def build(cls, values: Mapping[str, Any] | None, *, family: str, lcm: bool = False,
              control_type: str = REALISR) -> RunPlan:
        """The plan of `values` (missing ones take their defaults) for a model of `family` loaded for `control_type`,
        in the LCM fast mode's ranges when `lcm`. Raises ParamError naming the first bad value."""
        values = dict(values or {})
        if "control_type" in values and values.pop("control_type") != control_type:
            raise ParamError(f"control_type is chosen when the model loads; this one was loaded for {control_type!r}.")
        table.BY_NAME["control_type"].check(control_type)
        settings = table.for_family(table.validate(values, table.SAMPLER_PARAMS, lcm=lcm), family)
        return cls(family, lcm, MappingProxyType({**settings, "control_type": control_type}))

    # -- the Mapping the sampler and the work limits read -------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        return self.settings[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.settings)

    def __len__(self) -> int:
        return len(self.settings)

    # -- derived plans, no validation ---------------------------------------------------------------------------------
    @property
    def control_type(self) -> str:
        return self.settings["control_type"]

    def replaced(self, **changes: Any) -> RunPlan:
        """This plan with some settings changed by the engine itself (the out-of-memory retry's smaller tiles)."""
        return RunPlan(self.family, self.lcm, MappingProxyType({**self.settings, **changes}))

    def for_image(self, index: int) -> RunPlan:
        """The plan of image `index` of a batch: seed + index, wrapped as ComfyUI's seed widget wraps."""
        return self.replaced(seed=(self.settings["seed"] + index) % SEED_SPACE) if index else self

    @property
    def prompt_settings(self) -> PromptSettings:
        """What the prompt stage reads of this plan."""
        s = self.settings
        return PromptSettings(s["high_level_info"], s["prompt"], s["added_prompt"], s["negative_prompt"], self.family,
                              self.control_type)

    @property
    def ignored(self) -> list[str]:
        """The settings this run ignores, each as a sentence that says why: a saved workflow keeps running, and the
        user learns that the value does nothing (ComfyUI shows a widget whether it applies or not)."""
        s, notes = self.settings, []
        if self.control_type == GRAYSCALE and s["scale"] != 1:
            notes.append(f"scale={s['scale']} is ignored: colorization keeps the input's size (set scale to 1)")
        for param in table.SAMPLER_PARAMS:  # a setting of the other family (PASD-SDXL starts from pure noise)
            if self.family not in param.families and s[param.name] != param.default:
                notes.append(f"{param.name}={s[param.name]!r} is ignored: it is for {LABELS[param.families[0]]} "
                             f"models and this one is {LABELS[self.family]}")
        return notes

    # -- the planned work of an input size ----------------------------------------------------------------------------
    def denoising_calls(self, width: int, height: int) -> int:
        """Steps × latent tiles one `width`×`height` image plans: its progress steps (a step's tiles may share a call,
        tile_calls.py; the progress bar still moves per tile)."""
        return denoising_calls(width, height, self)

    def check_work(self, width: int, height: int) -> int:
        """denoising_calls, once the work is known to be within the caps (InputImageError otherwise): checked
        before any model moves or pixel converts."""
        check_planned_work(width, height, self)
        return self.denoising_calls(width, height)

    def check_model(self, family: str, lcm: bool, control_type: str) -> None:
        """Refuse a plan built for another model than the one about to run it."""
        mine = (self.family, self.lcm, self.control_type)
        if mine != (family, lcm, control_type):
            raise ParamError(f"this run was planned for a {mine[0]} model (LCM {mine[1]}, {mine[2]}), but the loaded "
                             f"model is {family} (LCM {lcm}, {control_type}): plan it with this model's "
                             "PASDPipeline.plan.")


def check_before_loading(pasd_model: str | Path, control_type: str = REALISR, lcm_lora: str | Path | None = None,
                         refiner: str | Path | None = None) -> str:
    """The PASD checkpoint's family, once the checkpoint, the task and the optional parts are known to fit it; reads
    configs only, no weights."""
    from ..weights.pasd_folder import check_control_type, checkpoint_family

    family = checkpoint_family(pasd_model)
    if refiner is not None:
        from .refiner import check_refiner

        check_refiner(refiner, family)  # SDXL only, and a refiner folder
    if lcm_lora is not None:
        require_lcm_family(family, lcm_lora)
    check_control_type(pasd_model, control_type)
    return family
