"""Render the template browser's thumbnails: `<template name>.jpg` beside each example_workflows/*.json.

ComfyUI's front end shows a custom node's template as its file name over `/api/workflow_templates/<pack>/<name>.jpg`.
Each thumbnail is the template's own graph, drawn from its JSON: a box per node at its position (PASD nodes
highlighted, notes dimmed) with its title, a line per link, and a one-line label. No result pictures: the repository's
models are tiny random-weight ones, whose outputs would only mislead. Not shipped code; Pillow only. Run after adding
or changing a template:

    python tools/make_thumbnails.py                       # every template without a thumbnail
    python tools/make_thumbnails.py --force               # all of them
    python tools/make_thumbnails.py --force "PASD SD1.5 colorize (exact engine)"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "example_workflows"
SIZE = (512, 384)  # the card is 256 px wide; twice that stays sharp on high-density screens
LABEL_HEIGHT = 44
MARGIN = 14
BACKGROUND, LINK, TEXT = (30, 31, 36), (150, 160, 175), (235, 235, 240)
FILL = {"pasd": (64, 92, 160), "note": (90, 74, 50), "core": (62, 64, 72)}


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 scales its built-in font
    except TypeError:
        return ImageFont.load_default()


def kind(node: dict) -> str:
    if node["type"] in ("Note", "MarkdownNote"):
        return "note"
    return "pasd" if node["type"].startswith("PASD") else "core"


def title(node: dict) -> str:
    return node.get("title") or node["type"]


def label(name: str) -> str:
    """One line saying what the graph does, from the template's own name."""
    return name.replace("PASD (start here) ", "Start here: PASD ")


def render(name: str, workflow: dict) -> Image.Image:
    width, height = SIZE
    nodes = {node["id"]: node for node in workflow["nodes"]}
    left = min(n["pos"][0] for n in nodes.values())
    top = min(n["pos"][1] for n in nodes.values())
    right = max(n["pos"][0] + n["size"][0] for n in nodes.values())
    bottom = max(n["pos"][1] + n["size"][1] for n in nodes.values())
    area = (width - 2 * MARGIN, height - LABEL_HEIGHT - 2 * MARGIN)
    scale = min(area[0] / (right - left), area[1] / (bottom - top))
    offset = (MARGIN + (area[0] - (right - left) * scale) / 2, MARGIN + (area[1] - (bottom - top) * scale) / 2)

    def box(node: dict) -> tuple[float, float, float, float]:
        x, y = node["pos"][0] - left, node["pos"][1] - top
        return (offset[0] + x * scale, offset[1] + y * scale, offset[0] + (x + node["size"][0]) * scale,
                offset[1] + (y + node["size"][1]) * scale)

    picture = Image.new("RGB", SIZE, BACKGROUND)
    draw = ImageDraw.Draw(picture)
    for _id, origin, origin_slot, target, target_slot, _type in workflow["links"]:
        if origin not in nodes or target not in nodes:
            continue
        a, b = box(nodes[origin]), box(nodes[target])
        start = (a[2], min(a[1] + 14 + 8 * origin_slot, a[3]))
        end = (b[0], min(b[1] + 14 + 8 * target_slot, b[3]))
        draw.line([start, ((start[0] + end[0]) / 2, start[1]), ((start[0] + end[0]) / 2, end[1]), end], fill=LINK,
                  width=2)
    text_font = font(max(9, min(14, int(22 * scale))))
    for node in sorted(nodes.values(), key=lambda n: kind(n) != "note"):  # notes underneath
        x0, y0, x1, y1 = box(node)
        draw.rounded_rectangle((x0, y0, x1, y1), radius=5, fill=FILL[kind(node)], outline=(200, 200, 210))
        words, lines = title(node).split(), [""]
        for word in words:  # wrap the title to the box
            trial = f"{lines[-1]} {word}".strip()
            if draw.textlength(trial, font=text_font) <= x1 - x0 - 8 or not lines[-1]:
                lines[-1] = trial
            else:
                lines.append(word)
        line_height = text_font.size + 2 if hasattr(text_font, "size") else 12
        for i, line in enumerate(lines[: max(1, int((y1 - y0 - 6) // line_height))]):
            draw.text((x0 + 4, y0 + 3 + i * line_height), line, font=text_font, fill=TEXT)
    draw.rectangle((0, height - LABEL_HEIGHT, width, height), fill=(18, 18, 22))
    draw.text((MARGIN, height - LABEL_HEIGHT + 12), label(name), font=font(17), fill=TEXT)
    return picture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="template names (file names without .json); default: all")
    parser.add_argument("--force", action="store_true", help="replace existing thumbnails")
    args = parser.parse_args()
    names = args.names or sorted(p.stem for p in TEMPLATES.glob("*.json"))
    for name in names:
        source = TEMPLATES / f"{name}.json"
        if not source.is_file():
            parser.error(f"no template {source}")
        target = TEMPLATES / f"{name}.jpg"
        if target.exists() and not args.force:
            continue
        render(name, json.loads(source.read_text())).save(target, quality=88)
        print(f"wrote {target.relative_to(REPO)}")


if __name__ == "__main__":
    main()
