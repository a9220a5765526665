"""The fal node: the same PASD upscale on fal's hosted `fal-ai/pasd`, no GPU or weights needed."""

from __future__ import annotations

from typing import Any

from ..pasd_core import params as table
from ..pasd_core.image_limits import check_input_size
from . import host, images
from .inputs import DeclaredNode, Input, declare, socket


class PASDUpscaleFal(DeclaredNode):
    """Super-resolve an image batch on fal.ai (fal-ai/pasd); the key comes from FAL_KEY, never the workflow."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"

    @classmethod
    def inputs(cls) -> list[Input]:
        return declare(socket("image", "IMAGE", "The low-resolution image(s), sent to fal one request per image; "
                              "needs FAL_KEY in the environment that starts ComfyUI."), table.REMOTE_PARAMS)

    def upscale(self, image: Any, **params: Any) -> tuple[Any]:
        settings = table.validate(params, table.REMOTE_PARAMS)
        image = images.checked(image)
        check_input_size(image.shape[2], image.shape[1], "image")
        inputs = images.to_pil(image)
        from ..pasd_core.fal import FalQueueClient, upscale_batch

        # one tick per status poll, whose number is not known in advance
        with host.cancellable() as should_stop, host.progress(None, "fal-ai/pasd") as tick:
            outputs = upscale_batch(FalQueueClient(), inputs, settings, on_log=host.log.info, on_progress=tick,
                                    should_stop=should_stop)
        return (images.to_batch(outputs),)
