"""Images to and from fal: PNG data URIs going up, results checked before they are decoded.

A result is untrusted bytes: its size in bytes is capped while it downloads, its header's pixel
size must be the input's times the scale before any pixel is decoded (a decompression bomb is a
small file that declares a huge image), and any failure to decode is a FalError, never Pillow's.
"""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image

from ..image_io import as_rgb
from .errors import ENDPOINT, FalError, malformed

RESULT_FORMATS = ("PNG", "JPEG", "WEBP")  # what fal's file host serves for images
MAX_BYTES_PER_PIXEL = 8  # 16-bit RGBA stored uncompressed: no PNG, JPEG or WebP of that size is larger
SLACK_BYTES = 2**20  # headers, metadata, and the worst case of a tiny image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    as_rgb(image).save(buffer, format="PNG")  # 16-bit, float and transparent images convert as in a local run
    return buffer.getvalue()


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def result_byte_cap(size: tuple[int, int]) -> int:
    """The most bytes a result file of `size` (width, height) may take."""
    return size[0] * size[1] * MAX_BYTES_PER_PIXEL + SLACK_BYTES


def data_uri_bytes(uri: str, action: str) -> bytes:
    try:
        return base64.b64decode(uri.partition(",")[2], validate=True)
    except (binascii.Error, ValueError):
        raise malformed(action, "an image data URI that is not base64") from None


def decode_result(data: bytes, source: tuple[int, int], scale: int, shown_as: str) -> Image.Image:
    """The RGB result, once its header says it is `source` times `scale`; `shown_as` names it in messages."""
    expected = (source[0] * scale, source[1] * scale)
    try:
        with Image.open(io.BytesIO(data), formats=RESULT_FORMATS) as result:  # reads the header only
            if result.size != expected:
                raise FalError(f"{ENDPOINT} returned a {result.width}x{result.height} image for a "
                               f"{source[0]}x{source[1]} input at scale {scale}; expected "
                               f"{expected[0]}x{expected[1]}.")
            return result.convert("RGB")
    except FalError:
        raise
    except Image.DecompressionBombError:  # Pillow refuses more than twice Image.MAX_IMAGE_PIXELS
        if expected[0] * expected[1] > 2 * (Image.MAX_IMAGE_PIXELS or 0):
            raise FalError(f"The result ({expected[0]}x{expected[1]}) is larger than Pillow opens "
                           f"(Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}); use a smaller image or "
                           "scale.") from None
        raise FalError(f"The result image {shown_as} declares far more pixels than the expected "
                       f"{expected[0]}x{expected[1]} (a decompression bomb); refused.") from None
    except Exception:  # noqa: BLE001  # a hostile file can make a decoder raise nearly anything
        raise FalError(f"The result image {shown_as} is not a readable image ({len(data)} bytes); "
                       "try again.") from None
