"""The nodes in ComfyUI's V3 schema (nodes/v3.py), on fake `comfy_api.latest.io` modules shaped like ComfyUI 0.3.64's
(no advanced inputs, no search aliases or price badges: passing them raises, as the real dataclasses do) and 0.38's.
The real 0.3.64 serves them in the end-to-end tests (tests/test_comfyui_e2e.py)."""

from __future__ import annotations

import dataclasses
import inspect
import types

import pytest
import torch

from support.comfyui import load_pack, pack_module

pack = load_pack()
v3 = pack_module("nodes.v3")


def fake_io(host: str) -> types.SimpleNamespace:
    newer = host == "0.38"

    class Input:
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                     max=None, step=None, control_after_generate=None, multiline=False, placeholder=None,
                     options=None):
            self.id, self.display_name, self.optional, self.options = id, display_name, optional, {
                k: v for k, v in dict(tooltip=tooltip, default=default, min=min, max=max, step=step, options=options,
                                      control_after_generate=control_after_generate, placeholder=placeholder).items()
                if v is not None}

    class NewerInput(Input):
        def __init__(self, id, advanced=None, **options):
            super().__init__(id, **options)
            self.advanced = advanced

    class Output:
        def __init__(self, display_name=None, tooltip=None):
            self.display_name, self.tooltip = display_name, tooltip

    def kind(io_type: str) -> type:
        return type(io_type, (), {"io_type": io_type, "Input": NewerInput if newer else Input, "Output": Output})

    fields = [("node_id", str), ("display_name", str), ("category", str), ("description", str),
              ("inputs", list), ("outputs", list)]
    if newer:
        fields += [("search_aliases", list, dataclasses.field(default_factory=list)),
                   ("price_badge", object, dataclasses.field(default=None))]
    io = types.SimpleNamespace(
        Schema=dataclasses.make_dataclass("Schema", fields),
        ComfyNode=type("ComfyNode", (), {}),
        NodeOutput=lambda *values: values,
        Custom=kind,
        **{name: kind(name.upper()) for name in ("Int", "Float", "String", "Boolean", "Combo", "Image")},
    )
    if newer:
        io.PriceBadge = lambda expr, depends_on: types.SimpleNamespace(expr=expr, depends_on=depends_on)
        io.PriceBadgeDepends = lambda widgets, inputs, input_groups: (widgets, inputs, input_groups)
    return io


class ComfyExtension:
    pass


async def listed(extension) -> list[type]:
    return await extension.get_node_list()


def nodes_on(host: str) -> dict[str, type]:
    import asyncio

    io = fake_io(host)
    extension = v3.extension(io, ComfyExtension, pack.NODE_CLASS_MAPPINGS, pack.NODE_DISPLAY_NAME_MAPPINGS)
    return {node.define_schema().node_id: node for node in asyncio.run(listed(extension))}


@pytest.mark.parametrize("host", ["0.3.64", "0.38"])
def test_every_node_keeps_its_id_inputs_outputs_and_names(host):
    nodes = nodes_on(host)
    assert list(nodes) == list(pack.NODE_CLASS_MAPPINGS)
    for node_id, classic in pack.NODE_CLASS_MAPPINGS.items():
        schema = nodes[node_id].define_schema()
        assert schema.display_name == pack.NODE_DISPLAY_NAME_MAPPINGS[node_id]
        assert schema.description == classic.DESCRIPTION and schema.category == classic.CATEGORY
        declared = classic.INPUT_TYPES()
        assert [i.id for i in schema.inputs if not i.optional] == list(declared["required"])
        assert [i.id for i in schema.inputs if i.optional] == list(declared.get("optional", {}))
        names = getattr(classic, "RETURN_NAMES", None) or classic.RETURN_TYPES
        assert [o.display_name for o in schema.outputs] == list(names)  # 0.38 would name them after their ids


def test_on_0_3_64_no_field_it_lacks_is_passed():
    for node in nodes_on("0.3.64").values():
        schema = node.define_schema()  # the dataclass would raise on search_aliases or price_badge
        assert all(not hasattr(i, "advanced") for i in schema.inputs)


def test_on_0_38_expert_widgets_fold_away_search_finds_the_nodes_and_fal_shows_its_price():
    nodes = nodes_on("0.38")
    upscale = nodes["PASDUpscale"].define_schema()
    advanced = {i.id for i in upscale.inputs if i.advanced}
    assert advanced == {"latent_tile_size", "latent_tile_overlap", "added_noise_level", "added_noise_mode", "speed",
                        "color_fix"}
    loader = nodes["PASDModelLoader"].define_schema()
    assert {i.id for i in loader.inputs if i.advanced} == {"style_strength", "lora_strength", "device", "dtype"}
    assert {"upscale", "restore", "super resolution"} <= set(upscale.search_aliases)
    badge = nodes["PASDUpscaleFal"].define_schema().price_badge
    assert '"usd":0.03' in badge.expr and "output MP" in badge.expr
    assert upscale.price_badge is None  # only the paid node has one


def test_validate_inputs_names_what_the_classic_one_named_and_answers_the_same():
    node = nodes_on("0.3.64")["PASDModelLoader"]
    classic = pack.NODE_CLASS_MAPPINGS["PASDModelLoader"].VALIDATE_INPUTS
    # ComfyUI passes only the inputs this signature names, and skips its own checks of exactly those
    assert inspect.getfullargspec(node.validate_inputs).args == ["cls", *inspect.signature(classic).parameters]
    with pytest.raises(pack_module("nodes.model_choices").ModelsMissing) as caught:
        node.validate_inputs(pasd_model="pasd/checkpoint-5", base_model="diffusers/x", style_model="none",
                             lora="none")
    assert "pasd_model 'pasd/checkpoint-5' is not in" in str(caught.value)
    assert not hasattr(nodes_on("0.3.64")["PASDUpscale"], "validate_inputs")  # none declared: none made


def test_execute_runs_the_classic_function():
    node = nodes_on("0.3.64")["PASDColorFix"]
    image = torch.rand(1, 8, 8, 3)
    (fixed,) = node.execute(image=image, reference=image, method="adain")
    classic = pack.NODE_CLASS_MAPPINGS["PASDColorFix"]
    (expected,) = getattr(classic(), classic.FUNCTION)(image=image, reference=image, method="adain")
    assert torch.equal(fixed, expected)


def test_a_widget_where_0_means_auto_says_so_in_its_label():
    """The label only (ComfyUI 0.3.64's front end, 1.27.10, still shows the name: seen once in its e2e server); the
    input keeps its name, so prompts and saved workflows are unchanged."""
    upscale = nodes_on("0.3.64")["PASDUpscale"].define_schema()
    labels = {i.id: i.display_name for i in upscale.inputs if i.display_name}
    assert labels == {"process_size": "process_size (0 = auto)", "latent_tile_size": "latent_tile_size (0 = auto)"}
    assert "display_name" not in pack.NODE_CLASS_MAPPINGS["PASDUpscale"].INPUT_TYPES()["required"]["process_size"][1]
