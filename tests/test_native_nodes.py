"""The native nodes' declarations and refusals, without ComfyUI (host.py's fallbacks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.comfyui import load_pack, make_models_dir, pack_module
from support.paths import CHECKPOINTS

pack = load_pack()
native = pack_module("nodes.native")
local = pack_module("nodes.exact")
table = pack_module("pasd_core.params")
errors = pack_module("pasd_core.errors")


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PASD_MODELS_DIR", str(make_models_dir(tmp_path / "models")))
    return tmp_path / "models"


def test_nodes_are_registered_under_the_fixed_names() -> None:
    assert pack.NODE_CLASS_MAPPINGS["PASDAdapterLoader"] is native.PASDAdapterLoader
    assert pack.NODE_CLASS_MAPPINGS["PASDApply"] is native.PASDApply
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["PASDAdapterLoader"] == "PASD Adapter Loader"
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["PASDApply"] == "PASD Apply (super-resolution, restore)"
    for node in (native.PASDAdapterLoader, native.PASDApply):
        assert node.CATEGORY == "image/upscaling/PASD"
        assert node.DESCRIPTION, node


def test_apply_declares_the_fixed_interface_with_tooltips_everywhere() -> None:
    required = native.PASDApply.INPUT_TYPES()["required"]
    assert list(required) == ["model", "positive", "negative", "vae", "image", "pasd_adapter", "scale",
                              "conditioning_scale", "process_size"]
    assert [required[name][0] for name in list(required)[:6]] == ["MODEL", "CONDITIONING", "CONDITIONING", "VAE",
                                                                  "IMAGE", "PASD_ADAPTER"]
    for name in ("scale", "conditioning_scale", "process_size"):  # from the one table, not written again
        param = table.BY_NAME[name]
        assert required[name][1]["default"] == param.default and required[name][1]["max"] == param.max
    assert all(options.get("tooltip") for _, options in required.values())
    assert native.PASDApply.RETURN_TYPES == ("MODEL", "CONDITIONING", "CONDITIONING", "LATENT")
    assert native.PASDApply.RETURN_NAMES == ("model", "positive", "negative", "latent")
    assert len(native.PASDApply.OUTPUT_TOOLTIPS) == 4


def test_loader_lists_the_same_checkpoints_as_the_engine_loader(models_dir: Path) -> None:
    choices, options = native.PASDAdapterLoader.INPUT_TYPES()["required"]["pasd_model"]
    assert choices == local.PASDModelLoader.INPUT_TYPES()["required"]["pasd_model"][0]
    assert choices == ["pasd/checkpoint-100000", "pasd_light/checkpoint-120000", "pasd_sdxl/checkpoint-200000"]
    assert options["tooltip"]
    assert native.PASDAdapterLoader.RETURN_TYPES == ("PASD_ADAPTER",)


@pytest.mark.parametrize("words", ["super resolution", "restore", "upscale", "pasd"])
def test_search_finds_the_native_nodes(words: str) -> None:
    for node in (native.PASDAdapterLoader, native.PASDApply):
        assert words in node.SEARCH_ALIASES


def test_loader_outside_comfyui_says_where_it_works(models_dir: Path) -> None:
    with pytest.raises(errors.ModelError, match="works only inside ComfyUI.*PASD Upscale"):
        native.PASDAdapterLoader().load("pasd/checkpoint-100000")


def test_missing_checkpoint_names_the_folder_searched(models_dir: Path) -> None:
    with pytest.raises(errors.ModelNotFoundError, match=r"pasd_model 'pasd/checkpoint-1' was not found in .*pasd"):
        native.PASDAdapterLoader().load("pasd/checkpoint-1")


def test_a_name_leaving_the_models_folder_is_refused(models_dir: Path) -> None:
    with pytest.raises(table.ParamError, match="not a model name"):
        native.PASDAdapterLoader().load("../" + str(CHECKPOINTS / "pasd"))


def test_apply_refuses_a_control_image_over_the_engines_cap_before_touching_the_model() -> None:
    import torch

    class Adapter:  # only the family is read before the size check
        family = "sd15"

    huge = torch.zeros(1, 1, 1, 3).expand(1, 2100, 2100, 3)  # ×4: 8400² control pixels, over 8192²
    with pytest.raises(errors.InputImageError, match=r"plans a 8400×8400 control image"):
        native.PASDApply().apply(object(), [], [], object(), huge, Adapter(), scale=4, conditioning_scale=0.8,
                                 process_size=0)


def test_apply_refuses_a_setting_out_of_range_by_name() -> None:
    import torch

    class Adapter:
        family = "sd15"

    with pytest.raises(table.ParamError, match="conditioning_scale"):
        native.PASDApply().apply(object(), [], [], object(), torch.zeros(1, 8, 8, 3), Adapter(), scale=2,
                                 conditioning_scale=5.0, process_size=0)
