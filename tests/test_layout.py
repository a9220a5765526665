"""The one description of a PASD UNet (pasd_core/models/layout.py) is what the engine's UNet builds: the same
layers, skip widths, heads and PACA widths for every published variant and both families."""

from __future__ import annotations

import pytest

from pasd_core.models.layout import PASDLayout
from pasd_core.weights.pasd_folder import load_pasd_checkpoint
from pasd_core.weights.reader import read_config
from support.paths import PASD, PASD_LIGHT, PASD_SDXL


@pytest.mark.parametrize("folder", [PASD, PASD_LIGHT, PASD_SDXL], ids=["pasd", "pasd_light", "pasd_sdxl"])
def test_the_unet_is_built_from_the_layout(folder):
    unet, _ = load_pasd_checkpoint(folder)
    layout = PASDLayout(read_config(folder / "unet" / "config.json"))
    layers = layout.up_layers()
    assert [layer.output_block for layer in layers] == list(range(len(layers)))
    assert len(layers) == sum(len(block.resnets) for block in unet.up_blocks)
    for layer in layers:
        block = unet.up_blocks[layer.block]
        resnet = block.resnets[layer.layer]
        # the skip this layer concatenates, beside the block's input (the previous block's output for its first layer)
        before = _previous_width(unet, layer) if layer.layer == 0 else layer.channels
        assert resnet.conv1.in_channels == before + layer.skip_channels
        assert resnet.conv2.out_channels == layer.channels
        width = layer.pixel_attention_width(unet.variant)
        if unet.variant == "pasd":
            attention = block.pixel_attentions[layer.layer].transformer_blocks[0].attn2
            assert attention.to_k.in_features == width and attention.heads == layer.heads
        elif width is not None:
            plus = block.attentions[layer.layer].transformer_blocks[0].attn2_plus
            assert plus.to_k.in_features == width
        else:
            assert not layer.has_text_attention and not hasattr(block, "attentions")


def _previous_width(unet, layer) -> int:
    """What the first layer of an up block takes besides its skip: the previous block's output."""
    return unet.up_blocks[layer.block - 1].resnets[-1].conv2.out_channels if layer.block else \
        unet.mid_block.resnets[-1].conv2.out_channels


def test_pasd_light_has_no_pixel_attention_where_a_level_has_no_text_attention():
    layout = PASDLayout(read_config(PASD_LIGHT / "unet" / "config.json"))
    plain = [layer for layer in layout.up_layers() if not layer.has_text_attention]
    assert plain and all(layer.pixel_attention_width("pasd_light") is None for layer in plain)
    assert all(layer.pixel_attention_width("pasd") == layer.channels for layer in plain)
