"""The work a run plans, computed from sizes and settings alone, and the caps that refuse it up front.

A 1×4096 strip enlarged to process_size plans a gigapixel control image (image_limits.py holds that cap);
tiny latent tiles on a large image plan hundreds of thousands of UNet calls. Both are refused before any
model loads or any pixel is resized, with a message that says what is too big and how to fix it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InputImageError
from ..image_limits import MAX_CONTROL_PIXELS, describe_limit, megapixels
from ..params import GRAYSCALE

LATENT_FACTOR = 8  # SD's VAE downsamples by 8
# Each call is one UNet + ControlNet pass (tens of ms on a fast GPU): 20000 is hours of sampling. Past
# it a run is a mistake (tiny latent tiles on a large image), not a job worth starting.
MAX_DENOISING_CALLS = 20_000


def enlarged_size(width: int, height: int, process_size: int) -> tuple[int, int]:
    """Official rule: a short side below process_size becomes process_size, the long one in proportion
    (truncated), as torchvision's Resize(process_size) sizes a PIL image."""
    short, long = min(width, height), max(width, height)
    if short >= process_size:
        return width, height
    size_long = int(process_size * long / short)
    return (process_size, size_long) if width <= height else (size_long, process_size)


def latent_multiple(width: int, height: int) -> tuple[int, int]:
    """Both sides cut down to a multiple of the VAE's factor."""
    return width // LATENT_FACTOR * LATENT_FACTOR, height // LATENT_FACTOR * LATENT_FACTOR


def colorize_size(width: int, height: int, process_size: int) -> tuple[int, int]:
    """The grayscale branch's resize, torchvision's Resize(process_size, max_size=2 * process_size) on a PIL image:
    the short side becomes process_size unless the long one would pass the cap, which then decides (truncated)."""
    short, long = min(width, height), max(width, height)
    new_short, new_long = process_size, int(process_size * long / short)
    if new_long > 2 * process_size:
        new_short, new_long = int(2 * process_size * new_short / new_long), 2 * process_size
    return (new_short, new_long) if width <= height else (new_long, new_short)


def control_size(width: int, height: int, settings: Mapping[str, Any]) -> tuple[int, int]:
    """(width, height) of the image the ControlNet sees: sampler.control_image_for's resize rules, sizes only."""
    if settings.get("control_type") == GRAYSCALE:
        return latent_multiple(*colorize_size(width, height, settings["process_size"]))
    scale = settings["scale"]
    return latent_multiple(*enlarged_size(width * scale, height * scale, settings["process_size"]))


def latent_tiling(width: int, height: int, settings: Mapping[str, Any]) -> tuple[str, int]:
    """(tile size in words, number of tiles) the sampler uses for one image; ("", 1) when untiled."""
    from .tiling import EVEN, layout_for, needs_tiling, tiles_along

    control_width, control_height = control_size(width, height, settings)
    rows, cols = control_height // LATENT_FACTOR, control_width // LATENT_FACTOR
    if not needs_tiling(rows, cols, settings["latent_tile_size"]):
        return "", 1
    overlap = settings["latent_tile_overlap"]
    if layout_for(settings) == EVEN:  # tiles shrink to fit: never thinner than the overlap
        size = settings["latent_tile_size"]
        return f"at most {size}", tiles_along(rows, size, overlap) * tiles_along(cols, size, overlap)
    size = min(settings["latent_tile_size"], rows, cols)
    if size <= overlap:  # tiles would never advance: tiling.latent_tiles would loop forever
        raise InputImageError(
            f"a {width}×{height} input at scale {settings['scale']} is so thin that its latent tiles are only "
            f"{size} latents wide, not more than latent_tile_overlap={overlap}: lower latent_tile_overlap below "
            f"{size}, raise process_size, or crop the image.")
    return str(size), tiles_along(rows, size, overlap) * tiles_along(cols, size, overlap)


def denoising_calls(width: int, height: int, settings: Mapping[str, Any]) -> int:
    """UNet calls (steps × latent tiles) for one image of this size: what the sampler's count_steps counts."""
    return settings["steps"] * latent_tiling(width, height, settings)[1]


def check_planned_work(width: int, height: int, settings: Mapping[str, Any]) -> None:
    """Refuse a run whose control image or number of denoising calls is over the caps (validated settings)."""
    scale, process_size = settings["scale"], settings["process_size"]
    what = f"a {width}×{height} input at scale {scale}"
    control_width, control_height = control_size(width, height, settings)
    pixels = control_width * control_height
    if pixels > MAX_CONTROL_PIXELS:
        raise InputImageError(
            f"{what} with process_size {process_size} plans a {control_width}×{control_height} control image "
            f"({megapixels(pixels)} megapixels); the limit is {describe_limit(MAX_CONTROL_PIXELS)}: lower scale or "
            "process_size, crop the image (a long, thin image is enlarged until its short side reaches "
            "process_size), or split it into parts.")
    size, tiles = latent_tiling(width, height, settings)
    calls = settings["steps"] * tiles
    if calls > MAX_DENOISING_CALLS:
        raise InputImageError(
            f"{what} needs {calls} denoising calls ({settings['steps']} steps × {tiles} latent tiles of {size}); "
            f"the limit is {MAX_DENOISING_CALLS}: raise latent_tile_size, lower steps, scale or process_size, "
            "or split the image into parts.")
