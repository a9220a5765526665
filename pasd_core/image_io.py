"""Reading input image files and turning any PIL image into the 8-bit RGB the engine samples.

Every way a file can fail to be an image ends in one InputImageError that names the file; the
pixel cap is checked from the header, before anything is decoded.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import InputImageError
from .image_limits import check_input_size, input_too_large, megapixels

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # Pillow's "I" is how 16-bit files used to decode
ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


def read_image(path: str | Path, note: Callable[[str], None] | None = None) -> Image.Image:
    """The file at `path` as an upright 8-bit RGB image (EXIF orientation applied, first frame of many).

    `note` receives one line when the file holds several frames (only the first is used).
    """
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"input image {path} does not exist.")
    if path.is_dir():
        raise InputImageError(f"input image {path} is a folder, not an image file: give the path of one image.")
    if not path.is_file():  # a pipe or a device would block or never end
        raise InputImageError(f"input image {path} is not a regular file: save the image to a file first.")
    try:
        with warnings.catch_warnings():  # Pillow warns of sizes above its own cap; ours is lower and explains
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            check_input_size(image.width, image.height, f"input image {path}")
            frames = getattr(image, "n_frames", 1)
            image.load()
            upright = ImageOps.exif_transpose(image)
    except PermissionError:
        raise InputImageError(f"input image {path} cannot be read: permission denied.") from None
    except Image.DecompressionBombError as error:  # Pillow's own cap, above ours: the header claims a huge size
        claimed = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{megapixels(int(claimed[1]))} megapixels" if claimed else "too many pixels"
        raise InputImageError(input_too_large(f"input image {path}", size)) from None
    except InputImageError:
        raise
    except Exception as error:  # Pillow's decoders raise OSError, ValueError, SyntaxError, struct.error...
        raise InputImageError(f"input image {path} is not a readable image ({error}).") from None
    if frames > 1 and note is not None:
        note(f"input image {path} holds {frames} frames; only the first is upscaled.")
    return as_rgb(upright)


def as_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: 16-bit and float greys rescaled, alpha composited on white as a viewer shows it."""
    if not isinstance(image, Image.Image):
        raise InputImageError(f"expected a PIL image, got {type(image).__name__}.")
    if image.width < 1 or image.height < 1:
        raise InputImageError(f"the input image is empty ({image.width}×{image.height}).")
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "F":
        image = _grey_to_8_bit(image)
    if image.mode == "La":  # premultiplied grey + alpha: Pillow converts it only to LA
        image = image.convert("LA")
    if image.mode in ALPHA_MODES or (image.mode in ("P", "L", "RGB") and "transparency" in image.info):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _grey_to_8_bit(image: Image.Image) -> Image.Image:
    """Pillow's own conversion clips 16-bit greys at 255 (almost all white); rescale the range instead.

    16-bit ("I;16*", "I") spans 0..65535. Float ("F") has no fixed range: 0..1 when its maximum is at
    most 1 (how float images are usually stored), else 0..255. Values outside the range are clipped.
    """
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise InputImageError("the input image holds NaN or infinite values; save it again from an editor.")
        full_scale = 1.0 if values.max() <= 1.0 else 255.0
    else:
        values = np.asarray(image.convert("I"), dtype=np.float64)  # "I" reads every byte order alike
        full_scale = 65535.0
    grey = np.clip(np.round(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey)  # 2-D uint8: mode "L"
