"""Render the template browser's thumbnails: `<template name>.jpg` beside each example_workflows/*.json.

ComfyUI's front end shows a custom node's template as its file name over `/api/workflow_templates/<pack>/<name>.jpg`.
Each thumbnail is the template's own graph, drawn from its JSON: a box per node at its position (PASD nodes
highlighted, notes dimmed, bypassed nodes faded) with its title, a line per link, and a one-line label, under a band
coloured by the template's kind (exact, native, colorize, fal) that names the kind, the family and what it does, so
the cards tell apart at the browser's size. No result pictures: the repository's models are tiny random-weight ones,
whose outputs would only mislead. Not shipped code; Pillow only. Run after adding or changing a template:

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
BAND_HEIGHT = 100  # the kind band: about a quarter of the card, readable when the card is 256 px wide
MARGIN = 14
BACKGROUND, LINK, TEXT = (30, 31, 36), (150, 160, 175), (235, 235, 240)
FILL = {"pasd": (64, 92, 160), "note": (90, 74, 50), "core": (62, 64, 72)}
FAMILY = {"SDXL": (240, 186, 64), "SD1.5": (120, 214, 206)}
BYPASSED = 4  # LiteGraph's node mode for a bypassed node
# kind: (band colour, word), first match on the template's name wins
KINDS = (("colorize", (196, 112, 28), "COLORIZE"), ("vs local", (150, 58, 122), "FAL vs LOCAL"),
         ("fal.ai", (112, 66, 168), "FAL.AI"), ("(native)", (40, 128, 84), "NATIVE"), ("", (44, 92, 176), "EXACT"))


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


def band(name: str, workflow: dict) -> tuple[tuple[int, int, int], str, str, str]:
    """The band's colour, its kind word, the family and what the graph does, from the template's name and groups."""
    colour, word = next((c, w) for key, c, w in KINDS if key in name)
    family = "SDXL" if "SDXL" in name or "(hosted" in name else "SD1.5"  # fal-ai/pasd runs PASD-SDXL
    doing = ("batch x2" if "batch" in name else "stylize" if "styliz" in name.lower() else "colour"
             if "colorize" in name else "hosted vs local" if "vs local" in name else "hosted x2" if "(hosted" in name
             else "x2 upscale" if "x2" in name else "upscale")
    if any("refiner" in g["title"].lower() for g in workflow.get("groups", [])):
        doing = doing.replace(" upscale", "") + " + refiner"
    if "(start here)" in name:
        doing = f"start here: {doing}"
    return colour, word, family, doing


def render(name: str, workflow: dict) -> Image.Image:
    width, height = SIZE
    nodes = {node["id"]: node for node in workflow["nodes"]}
    frames = [{"pos": g["bounding"][:2], "size": g["bounding"][2:]} for g in workflow.get("groups", [])]
    shapes = [*nodes.values(), *frames]  # a group's frame reaches past its nodes
    left = min(n["pos"][0] for n in shapes)
    top = min(n["pos"][1] for n in shapes)
    right = max(n["pos"][0] + n["size"][0] for n in shapes)
    bottom = max(n["pos"][1] + n["size"][1] for n in shapes)
    area = (width - 2 * MARGIN, height - BAND_HEIGHT - LABEL_HEIGHT - 2 * MARGIN)
    scale = min(area[0] / (right - left), area[1] / (bottom - top))
    offset = (MARGIN + (area[0] - (right - left) * scale) / 2,
              BAND_HEIGHT + MARGIN + (area[1] - (bottom - top) * scale) / 2)

    def box(node: dict) -> tuple[float, float, float, float]:
        x, y = node["pos"][0] - left, node["pos"][1] - top
        return (offset[0] + x * scale, offset[1] + y * scale, offset[0] + (x + node["size"][0]) * scale,
                offset[1] + (y + node["size"][1]) * scale)

    picture = Image.new("RGB", SIZE, BACKGROUND)
    draw = ImageDraw.Draw(picture)
    colour, word, family, doing = band(name, workflow)
    draw.rectangle((0, 0, width, BAND_HEIGHT), fill=colour)
    draw.text((MARGIN, 8), word, font=font(46), fill=TEXT)
    draw.text((MARGIN, 60), doing, font=font(30), fill=TEXT)
    pill_font = font(34)  # the family, right-aligned on a colour of its own
    pill_width = draw.textlength(family, font=pill_font) + 24
    draw.rounded_rectangle((width - MARGIN - pill_width, 12, width - MARGIN, 56), radius=10, fill=FAMILY[family])
    draw.text((width - MARGIN - pill_width + 12, 15), family, font=pill_font, fill=(20, 20, 24))
    for group in workflow.get("groups", []):  # a group's frame, under its nodes
        x, y, w, h = group["bounding"]
        draw.rounded_rectangle(box({"pos": [x, y], "size": [w, h]}), radius=4, outline=(120, 150, 190), width=2)
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
        fill = FILL[kind(node)]
        if node.get("mode") == BYPASSED:  # faded, as the front end draws a bypassed node
            fill = tuple((c + b) // 2 for c, b in zip(fill, BACKGROUND, strict=True))
        draw.rounded_rectangle((x0, y0, x1, y1), radius=5, fill=fill, outline=(200, 200, 210))
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
