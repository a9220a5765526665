"""Command line: `python -m pasd_core upscale INPUT -o OUTPUT ...` (local, or `--remote fal`).

Errors print one message and exit non-zero (2 for bad input, 1 otherwise); `--debug` shows the traceback.
The output file is written atomically: a failed run never leaves a partial file behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import InputImageError, Interrupted, PASDError
from .params import LOADER_PARAMS, REMOTE_PARAMS, SAMPLER_PARAMS, SHARED, add_cli_flags, given_cli_values, validate

OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pasd_core", description="PASD super-resolution and stylization.")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("upscale", help="upscale one image", description="Upscale (or stylize) one image.")
    up.add_argument("input", help="input image file")
    up.add_argument("-o", "--output", required=True, help="output image file (.png, .jpg or .webp)")
    up.add_argument("--remote", choices=("fal",), help="run on fal's hosted fal-ai/pasd instead of locally")
    up.add_argument("--base-model", help="SD1.5 base: diffusers folder or single .safetensors file")
    up.add_argument("--pasd-model", help="PASD checkpoint folder (holding unet/ and controlnet/)")
    up.add_argument("--style-model", help="personalized SD1.5 .safetensors for stylization")
    up.add_argument("--lora", help="kohya-style LoRA .safetensors")
    add_cli_flags(up, SAMPLER_PARAMS)
    add_cli_flags(up, LOADER_PARAMS)
    up.add_argument("--debug", action="store_true", help="show the traceback of an error")
    down = commands.add_parser("download", help="download PASD and SD1.5 weights (needs internet)",
                               description="Download a PASD checkpoint into MODELS/pasd and the SD1.5 base parts "
                                           "into MODELS/diffusers (the layout ComfyUI's models folder uses).")
    down.add_argument("--models-dir", default="models", help="models folder (e.g. ComfyUI/models); default ./models")
    down.add_argument("--variant", default="pasd", help="pasd (default), pasd_light, pasd_rrdb, pasd_light_rrdb")
    down.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def _download(args: argparse.Namespace) -> int:
    from .download import ensure_pasd_checkpoint, ensure_sd15_base

    models = Path(args.models_dir)
    pasd = ensure_pasd_checkpoint(args.variant, models / "pasd")
    base = ensure_sd15_base(models / "diffusers")
    print(f"--pasd-model {pasd} --base-model {base}")
    return 0


def _output_format(path: Path) -> str:
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputImageError(f"output {path}: unknown image type {path.suffix!r}; use one of "
                              f"{', '.join(OUTPUT_FORMATS)}.")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputImageError(f"output folder {folder} does not exist.")
    if not os.access(folder, os.W_OK):
        raise InputImageError(f"output folder {folder} is not writable.")
    return fmt


def read_image(path: str | Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"input image {path} does not exist.")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError) as error:
        raise InputImageError(f"input {path} is not a readable image ({error}).") from None


def write_image_atomically(image: Any, path: Path, fmt: str) -> None:
    """Write next to the target, then rename: readers never see a half-written file."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent or ".")
    try:
        with os.fdopen(handle, "wb") as stream:
            image.save(stream, format=fmt)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _run_local(args: argparse.Namespace, image: Any) -> Any:
    from tqdm import tqdm

    from .pipeline import PASDPipeline

    if not args.base_model or not args.pasd_model:
        raise InputImageError("local runs need --base-model (SD1.5 folder or .safetensors) and --pasd-model "
                              "(PASD checkpoint folder); or use --remote fal.")
    settings = validate(given_cli_values(args, SAMPLER_PARAMS), SAMPLER_PARAMS)
    loader = validate(given_cli_values(args, LOADER_PARAMS), LOADER_PARAMS)
    pipeline = PASDPipeline.from_pretrained(
        args.base_model, args.pasd_model, style_model=args.style_model, style_strength=loader["style_strength"],
        lora=args.lora, lora_strength=loader["lora_strength"], device=loader["device"], dtype=loader["dtype"],
    )
    with tqdm(total=pipeline.count_steps(image.width, image.height, settings), desc="PASD", unit="step") as bar:
        return pipeline.upscale(image, settings, on_step=bar.update)


def _run_remote(args: argparse.Namespace, image: Any) -> Any:
    from .fal import FalQueueClient

    local_only = [p.flag for p in SAMPLER_PARAMS + LOADER_PARAMS if p.scope != SHARED
                  and getattr(args, p.name) is not None]
    local_only += [flag for flag, value in (("--base-model", args.base_model), ("--pasd-model", args.pasd_model),
                                            ("--style-model", args.style_model), ("--lora", args.lora)) if value]
    if local_only:
        raise InputImageError(f"{', '.join(local_only)} only apply to local runs; fal-ai/pasd accepts "
                              f"{', '.join(p.flag for p in REMOTE_PARAMS)}.")
    settings = validate(given_cli_values(args, REMOTE_PARAMS), REMOTE_PARAMS)
    client = FalQueueClient()
    return client.upscale_batch([image], settings, on_log=lambda line: print(f"fal: {line}", file=sys.stderr))[0]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "download":
            return _download(args)
        output = Path(args.output)
        fmt = _output_format(output)
        image = read_image(args.input)
        result = _run_remote(args, image) if args.remote else _run_local(args, image)
        write_image_atomically(result, output, fmt)
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written.", file=sys.stderr)
        return 130
    except PASDError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 130 if isinstance(error, Interrupted) else 2 if isinstance(error, (InputImageError, ValueError)) else 1
    except OSError as error:  # e.g. the disk filled up while writing
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {output} ({result.width}×{result.height})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
