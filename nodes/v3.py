"""The pack's nodes in ComfyUI's V3 schema (`comfy_api.latest`), for hosts that have it.

Each node keeps its one declaration (`inputs()`, RETURN_TYPES, VALIDATE_INPUTS...) and its work in its classic class;
this module turns that into an `io.ComfyNode` with the same id, inputs, outputs and validation, so saved workflows
load unchanged. Schema fields a host may lack (search aliases, advanced inputs, price badges: ComfyUI 0.38, not
0.3.64) are used only where the host's `io` has them.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from .inputs import DeclaredNode, v3

# What fal bills for fal-ai/pasd (per output megapixel), shown on PASD Upscale (fal) where the host draws badges.
FAL_PRICE = '{"type":"usd","usd":0.03,"format":{"suffix":"/output MP","approximate":false}}'
PRICED = {"PASDUpscaleFal": FAL_PRICE}


def _schema_fields(io: Any) -> set[str]:
    return {field.name for field in dataclasses.fields(io.Schema)}


def _output(io: Any, io_type: str, name: str, tooltip: str | None) -> Any:
    """An output named as the classic node named it (0.38 would otherwise name it after its id)."""
    kind = {"IMAGE": io.Image, "STRING": io.String}.get(io_type) or io.Custom(io_type)
    return kind.Output(display_name=name, tooltip=tooltip)


def _extras(io: Any, node_id: str, node: type[DeclaredNode]) -> dict[str, Any]:
    fields, extras = _schema_fields(io), {}
    if "search_aliases" in fields:
        extras["search_aliases"] = list(node.SEARCH_ALIASES)
    if node_id in PRICED and "price_badge" in fields and hasattr(io, "PriceBadge"):
        depends = io.PriceBadgeDepends(widgets=[], inputs=[], input_groups=[])
        extras["price_badge"] = io.PriceBadge(expr=PRICED[node_id], depends_on=depends)
    return extras


def v3_node(io: Any, node_id: str, display_name: str, node: type[DeclaredNode]) -> type:
    """An `io.ComfyNode` that declares what `node` declares and runs `node`'s function."""
    names = getattr(node, "RETURN_NAMES", None) or node.RETURN_TYPES
    tooltips = getattr(node, "OUTPUT_TOOLTIPS", None) or (None,) * len(node.RETURN_TYPES)

    def define_schema(cls: type) -> Any:
        return io.Schema(node_id=node_id, display_name=display_name, category=node.CATEGORY,
                         description=node.DESCRIPTION, inputs=[v3(item, io) for item in node.inputs()],
                         outputs=[_output(io, t, n, tip) for t, n, tip in zip(node.RETURN_TYPES, names, tooltips,
                                                                              strict=True)],
                         **_extras(io, node_id, node))

    def execute(cls: type, **inputs: Any) -> Any:
        return io.NodeOutput(*getattr(node(), node.FUNCTION)(**inputs))

    members: dict[str, Any] = {"define_schema": classmethod(define_schema), "execute": classmethod(execute),
                               "__doc__": node.__doc__, "__module__": node.__module__}
    if hasattr(node, "VALIDATE_INPUTS"):
        members["validate_inputs"] = classmethod(_same_signature(node.VALIDATE_INPUTS))
    return type(node.__name__, (io.ComfyNode,), members)


def _same_signature(validate: Any) -> Any:
    """`validate` as a V3 validate_inputs: ComfyUI passes only the inputs its signature names (and skips its own
    checks of exactly those), so the signature is the classic one's."""
    def validate_inputs(cls: type, **inputs: Any) -> Any:
        return validate(**inputs)

    parameters = list(inspect.signature(validate).parameters.values())
    cls_parameter = inspect.Parameter("cls", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    validate_inputs.__signature__ = inspect.Signature([cls_parameter, *parameters])  # type: ignore[attr-defined]
    return validate_inputs


def extension(io: Any, extension_base: type, classes: dict[str, type], display_names: dict[str, str]) -> Any:
    """The ComfyExtension ComfyUI asks for its nodes."""
    nodes = [v3_node(io, node_id, display_names[node_id], node) for node_id, node in classes.items()]

    class PASDExtension(extension_base):
        async def get_node_list(self) -> list[type]:
            return nodes

    return PASDExtension()
