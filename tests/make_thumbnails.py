"""Render the template browser's thumbnails: `<template name>.jpg` beside each example_workflows/*.json.

ComfyUI's front end (1.27, shipped with 0.3.64) shows a custom node's template as its file name over
`/api/workflow_templates/<pack>/<name>.jpg`. Each thumbnail is a before/after of the parity fixtures: the
low-resolution input (pixelated, as it would look enlarged) beside the output of the tiny test model of the
template's family. Not shipped code; PIL only. Run after adding a template:

    python tests/make_thumbnails.py                       # every template without a thumbnail
    python tests/make_thumbnails.py --force "PASD SD1.5 upscale x2 (exact engine)"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "example_workflows"
CASES = REPO / "tests" / "fixtures"
SIZE = (512, 384)  # the card is 256 px wide; twice that stays sharp on high-density screens
LABEL_HEIGHT = 48


def case_for(name: str) -> tuple[Path, str]:
    """The fixture case that illustrates template `name`, and the label of its model."""
    lowered = name.lower()
    if "sdxl" in lowered or "fal" in lowered:  # fal-ai/pasd runs PASD-SDXL
        return CASES / "pasd_sdxl_official_tiny" / "cases" / "X1_sdxl_fal_defaults", "PASD-SDXL"
    if "styl" in lowered or "light" in lowered:
        return CASES / "pasd_official_tiny" / "cases" / "C_light", "PASD-SD1.5 pasd_light"
    return CASES / "pasd_official_tiny" / "cases" / "B_tiled_x2", "PASD-SD1.5"


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 scales its built-in font
    except TypeError:
        return ImageFont.load_default()


def render(name: str) -> Image.Image:
    case, model = case_for(name)
    width, height = SIZE
    half = (width // 2, height - LABEL_HEIGHT)
    before = Image.open(case / "input.png").convert("RGB").resize(half, Image.Resampling.NEAREST)
    after = Image.open(case / "expected.png").convert("RGB").resize(half, Image.Resampling.LANCZOS)
    picture = Image.new("RGB", SIZE, (24, 24, 28))
    picture.paste(before, (0, 0))
    picture.paste(after, (width // 2, 0))
    draw = ImageDraw.Draw(picture)
    draw.line([(width // 2, 0), (width // 2, half[1])], fill=(255, 255, 255), width=3)
    for x, text in ((12, "before"), (width // 2 + 12, "after")):
        draw.text((x, 10), text, font=font(22), fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    draw.text((12, height - LABEL_HEIGHT + 12), f"{model} (tiny test model)", font=font(20), fill=(230, 230, 230))
    return picture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="template names (file names without .json); default: all")
    parser.add_argument("--force", action="store_true", help="replace existing thumbnails")
    args = parser.parse_args()
    names = args.names or sorted(p.stem for p in TEMPLATES.glob("*.json"))
    for name in names:
        if not (TEMPLATES / f"{name}.json").is_file():
            parser.error(f"no template {TEMPLATES / name}.json")
        target = TEMPLATES / f"{name}.jpg"
        if target.exists() and not args.force:
            continue
        render(name).save(target, quality=88)
        print(f"wrote {target.relative_to(REPO)}")


if __name__ == "__main__":
    main()
