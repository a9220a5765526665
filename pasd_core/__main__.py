"""Command line: `python -m pasd_core upscale INPUT -o OUTPUT ...` (local, or `--remote fal`).

Errors print one message and exit non-zero (2 for bad input, 1 otherwise); `--debug` shows the traceback.
The output file is written atomically: a failed run never leaves a partial file behind. It gets the
permissions a plain write would give: the umask's for a new file, its own for a replaced one.
"""

from __future__ import annotations

import argparse
import os
import shlex
import stat
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import InputImageError, Interrupted, PASDError
from .model_family import SD15, SDXL
from .params import (
    LOADER_PARAMS,
    NO_DESCRIPTION,
    REMOTE_PARAMS,
    SAMPLER_PARAMS,
    SHARED,
    ParamError,
    add_cli_flags,
    given_cli_values,
    ignored_loader_settings,
    lcm_summary,
    validate,
)

OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pasd_core", description="PASD super-resolution and stylization.")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("upscale", help="upscale one image", description="Upscale (or stylize) one image.")
    up.add_argument("input", help="input image file")
    up.add_argument("-o", "--output", required=True, help="output image file (.png, .jpg or .webp)")
    up.add_argument("--remote", choices=("fal",), help="run on fal's hosted fal-ai/pasd instead of locally")
    up.add_argument("--base-model", help="SD1.5 or SDXL base (the PASD checkpoint's family): diffusers folder or "
                                         "single .safetensors file")
    up.add_argument("--pasd-model", help="PASD checkpoint folder (holding unet/ and controlnet/; PASD-SDXL also "
                                         "scheduler/)")
    up.add_argument("--style-model", help="personalized checkpoint (.safetensors) of the PASD checkpoint's family, "
                                          "for stylization")
    up.add_argument("--lora", help="kohya-style LoRA .safetensors of the PASD checkpoint's family")
    up.add_argument("--lcm-lora", help="LCM-LoRA .safetensors (latent-consistency/lcm-lora-sdv1-5; PASD-SD1.5 only): "
                                       f"the official LCM fast mode; then {lcm_summary()}")
    up.add_argument("--vae", help="replacement VAE: diffusers folder or .safetensors (e.g. the fp16-fix SDXL VAE, "
                                  "madebyollin/sdxl-vae-fp16-fix, which the official SDXL script uses in fp16)")
    up.add_argument("--caption-model", help="CoCa captioner folder for --high-level-info caption (the default); "
                                            "default ./models/pasd_prompt/coca_ViT-L-14, where download --captioner "
                                            "puts it")
    up.add_argument("--classifier-model", help="ResNet-50 classifier folder for --high-level-info classification; "
                                               "default ./models/pasd_prompt/resnet50 (download --classifier)")
    up.add_argument("--refiner", help="SDXL refiner folder (stabilityai/stable-diffusion-xl-refiner-1.0, diffusers "
                                      "layout; download --refiner), PASD-SDXL only: a seeded img2img pass at strength "
                                      "0.1 between PASD's decode and the colour fix. Departs from the official "
                                      "--use_refiner, which crashes there (its result is a list) and is unseeded")
    add_cli_flags(up, SAMPLER_PARAMS)
    add_cli_flags(up, LOADER_PARAMS)
    up.add_argument("--debug", action="store_true", help="show the traceback of an error")
    down = commands.add_parser("download", help="download PASD weights and their base model (needs internet)",
                               description="Download a PASD checkpoint into MODELS/pasd and its base model's parts "
                                           "into MODELS/diffusers (the layout ComfyUI's models folder uses), then "
                                           "print the upscale flags that use them.")
    down.add_argument("--models-dir", default="models", help="models folder (e.g. ComfyUI/models); default ./models")
    down.add_argument("--family", choices=(SD15, SDXL), default=SD15,
                      help="sd15 (default): a PASD-SD1.5 checkpoint (--variant) and the SD1.5 base; sdxl: PASD-SDXL "
                           "(pasd_sdxl/checkpoint-200000) and the SDXL 1.0 base")
    down.add_argument("--variant", help="the PASD-SD1.5 checkpoint: pasd (default), pasd_light, pasd_rrdb, "
                                        "pasd_light_rrdb, pasd_light_color")
    down.add_argument("--fp16-fix-vae", action="store_true",
                      help="with --family sdxl, also fetch madebyollin/sdxl-vae-fp16-fix into MODELS/vae (SDXL's own "
                           "VAE overflows in fp16; the official SDXL script swaps this one in for --dtype fp16)")
    down.add_argument("--lcm-lora", action="store_true",
                      help="with --family sd15, also fetch the LCM-LoRA (latent-consistency/lcm-lora-sdv1-5) into "
                           "MODELS/loras/lcm-lora-sdv1-5 for the LCM fast mode (upscale --lcm-lora)")
    down.add_argument("--captioner", action="store_true",
                      help="also fetch the prompt stage's CoCa captioner (open_clip coca_ViT-L-14, mscoco finetuned) "
                           "into MODELS/pasd_prompt/coca_ViT-L-14: upscale captions by default, as the official PASD")
    down.add_argument("--classifier", action="store_true",
                      help="also fetch the ResNet-50 classifier (torchvision IMAGENET1K_V2) into "
                           "MODELS/pasd_prompt/resnet50, for --high-level-info classification")
    down.add_argument("--refiner", action="store_true",
                      help="with --family sdxl, also fetch the SDXL 1.0 refiner (stabilityai/stable-diffusion-xl-"
                           "refiner-1.0) into MODELS/diffusers/stable-diffusion-xl-refiner-1.0 (upscale --refiner)")
    down.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def _download(args: argparse.Namespace) -> int:
    from .prompt.folders import CAPTIONER, CLASSIFIER
    from .weights.download import (
        FAMILY_VARIANTS,
        ensure_base,
        ensure_fp16_fix_vae,
        ensure_lcm_lora,
        ensure_pasd_checkpoint,
        ensure_refiner,
    )
    from .weights.hub_fetch import STAGING_NAME, HubFetcher

    if args.family == SDXL and args.variant is not None:
        raise ParamError("--variant picks a PASD-SD1.5 checkpoint; PASD-SDXL has one (pasd_sdxl): drop --variant, "
                         "or use --family sd15.")
    if args.family == SD15 and args.variant == FAMILY_VARIANTS[SDXL]:
        raise ParamError("--variant pasd_sdxl is PASD-SDXL: use --family sdxl instead (it fetches the SDXL base too).")
    if args.fp16_fix_vae and args.family != SDXL:
        raise ParamError("--fp16-fix-vae is an SDXL VAE: use it with --family sdxl.")
    if args.refiner and args.family != SDXL:
        raise ParamError("--refiner fetches the SDXL refiner, which runs after PASD-SDXL only: use it with "
                         "--family sdxl.")
    if args.lcm_lora and args.family != SD15:
        raise ParamError("--lcm-lora fetches the SD1.5 LCM-LoRA; the official PASD has no LCM mode for PASD-SDXL: "
                         "use it with --family sd15.")
    models = Path(args.models_dir)
    # Files already there are checked against the hub again: asked for by name, the command vouches for them all.
    fetcher = HubFetcher(staging=models / STAGING_NAME, on_file=lambda line: print(line, file=sys.stderr),
                         recheck=True)
    pasd = ensure_pasd_checkpoint(args.variant or FAMILY_VARIANTS[args.family], models / "pasd", fetcher)
    base = ensure_base(models / "diffusers", args.family, fetcher)
    flags = ["--pasd-model", str(pasd), "--base-model", str(base)]
    if args.fp16_fix_vae:
        flags += ["--vae", str(ensure_fp16_fix_vae(models / "vae", fetcher))]
    if args.lcm_lora:
        flags += ["--lcm-lora", str(ensure_lcm_lora(models / "loras", fetcher))]
    for kind, wanted in ((CAPTIONER, args.captioner), (CLASSIFIER, args.classifier)):
        if wanted:
            flags += [kind.cli_option, str(kind.ensure(models, fetcher))]
    if args.refiner:
        flags += ["--refiner", str(ensure_refiner(models / "diffusers", fetcher))]
    print(shlex.join(flags))  # quoted, so the line pastes into a shell even when a path has spaces
    return 0


def check_output(output: Path, input_path: Path) -> str:
    """The output's image format, once nothing about the path would fail after the run or replace the input."""
    if output.is_dir():
        raise InputImageError(f"output {output} is a folder: give a file name inside it, e.g. "
                              f"{output / 'result.png'}.")
    fmt = OUTPUT_FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise InputImageError(f"output {output}: unknown image type {output.suffix!r}; use one of "
                              f"{', '.join(OUTPUT_FORMATS)}.")
    folder = output.parent
    if folder.exists() and not folder.is_dir():
        raise InputImageError(f"output folder {folder} is a file, not a folder.")
    if not folder.is_dir():
        raise InputImageError(f"output folder {folder} does not exist.")
    if not os.access(folder, os.W_OK):
        raise InputImageError(f"output folder {folder} is not writable.")
    if input_path.is_file() and _same_file(output, input_path):
        raise InputImageError(f"output {output} is the input image itself; writing it would replace the input: "
                              "choose another output file.")
    return fmt


def _same_file(a: Path, b: Path) -> bool:
    """One file under two names: the same resolved path, or (when both exist) a symlink or hard link to it."""
    try:
        return os.path.samefile(a, b) if a.exists() else a.resolve() == b.resolve()
    except OSError:
        return False


def _output_mode(path: Path) -> int:
    """A replaced output keeps its permissions; a new one gets what the umask gives, as a plain open() would."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0o022)  # reading the umask means setting it; restored at once
        os.umask(umask)
        return 0o666 & ~umask


def write_image_atomically(image: Any, path: Path, fmt: str) -> None:
    """Write next to the target, then rename: readers never see a half-written file."""
    mode = _output_mode(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        os.chmod(temporary, mode)  # mkstemp makes it 0600
        with os.fdopen(handle, "wb") as stream:
            image.save(stream, format=fmt)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _local_plan(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """(the run's plan, loader settings) of a local run, checked before anything is loaded: `auto` defaults resolved
    for the PASD checkpoint's family, read from its config alone, and the checkpoint known to fit its task and its
    optional parts."""
    from .engine.plan import RunPlan, check_before_loading

    if not args.base_model or not args.pasd_model:
        raise InputImageError("local runs need --base-model (an SD1.5 or SDXL base: diffusers folder or .safetensors) "
                              "and --pasd-model (PASD checkpoint folder); or use --remote fal.")
    loader = validate(given_cli_values(args, LOADER_PARAMS), LOADER_PARAMS)
    family = check_before_loading(args.pasd_model, loader["control_type"], args.lcm_lora, args.refiner)
    plan = RunPlan.build(given_cli_values(args, SAMPLER_PARAMS), family=family, lcm=args.lcm_lora is not None,
                         control_type=loader["control_type"])
    return plan, loader


def _prompt_models(args: argparse.Namespace, high_level_info: str) -> tuple[str | None, str | None]:
    """(caption model, classifier model) folders the run needs: the one its high_level_info uses, checked now."""
    from .prompt.folders import CAPTIONER, KINDS, check_prompt_model

    kind = KINDS.get(high_level_info)
    if kind is None:
        return None, None
    given = getattr(args, kind.node_input)
    folder = given or str(kind.default_folder("models"))
    check_prompt_model(folder, high_level_info, given=given is not None)
    return (folder, None) if kind is CAPTIONER else (None, folder)


def _run_local(args: argparse.Namespace, image: Any, plan: Any, loader: dict[str, Any]) -> Any:
    steps = plan.check_work(image.width, image.height)  # before anything loads
    caption_model, classifier_model = _prompt_models(args, plan["high_level_info"])
    from tqdm import tqdm

    from .engine.pipeline import PASDPipeline

    for line in [*ignored_loader_settings(loader, style_model=bool(args.style_model), lora=bool(args.lora)),
                 *plan.ignored]:  # said before the models load, which may take a while
        _note(line)
    pipeline = PASDPipeline.from_pretrained(
        args.base_model, args.pasd_model, style_model=args.style_model, style_strength=loader["style_strength"],
        lora=args.lora, lora_strength=loader["lora_strength"], vae=args.vae, lcm_lora=args.lcm_lora,
        device=loader["device"], dtype=loader["dtype"], control_type=loader["control_type"],
        caption_model=caption_model, classifier_model=classifier_model, refiner=args.refiner,
    )

    bars: list[Any] = []  # the progress bar opens once the prompt is shown, so the notes come first

    def show_prompt(prompts: list[Any]) -> None:
        if plan["high_level_info"] != NO_DESCRIPTION:
            _note(f"{plan['high_level_info']}: {prompts[0].description!r}")
        _note(f"prompt: {prompts[0].prompt!r}")
        bars.append(tqdm(total=steps, desc="PASD", unit="step"))

    try:
        outputs, _ = pipeline.upscale_batch([image], plan, before_sampling=show_prompt,
                                            on_step=lambda: bars[0].update())
    finally:
        for bar in bars:
            bar.close()
    return outputs[0]


def _remote_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The fal request's settings; local-only flags are refused, not silently dropped."""
    local_only = [p.flag for p in SAMPLER_PARAMS + LOADER_PARAMS if p.scope != SHARED
                  and getattr(args, p.name) is not None]
    local_only += [flag for flag, value in (("--base-model", args.base_model), ("--pasd-model", args.pasd_model),
                                            ("--style-model", args.style_model), ("--lora", args.lora),
                                            ("--vae", args.vae), ("--lcm-lora", args.lcm_lora),
                                            ("--caption-model", args.caption_model),
                                            ("--classifier-model", args.classifier_model),
                                            ("--refiner", args.refiner)) if value]
    if local_only:
        raise InputImageError(f"{', '.join(local_only)} only apply to local runs; fal-ai/pasd accepts "
                              f"{', '.join(p.flag for p in REMOTE_PARAMS)}.")
    return validate(given_cli_values(args, REMOTE_PARAMS), REMOTE_PARAMS)


def _run_remote(image: Any, settings: dict[str, Any]) -> Any:
    from .fal import FalQueueClient, upscale_batch

    return upscale_batch(FalQueueClient(), [image], settings,
                         on_log=lambda line: print(f"fal: {line}", file=sys.stderr))[0]


def _note(line: str) -> None:
    print(f"note: {line}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "download":
            return _download(args)
        # every check that needs no model comes first: loading is slow and a fal request costs money
        output = Path(args.output)
        fmt = check_output(output, Path(args.input))
        from .image_io import read_image  # deferred (numpy, Pillow): `--help` and `download` stay quick

        image = read_image(args.input, note=_note)
        if args.remote:
            result = _run_remote(image, _remote_settings(args))
        else:
            result = _run_local(args, image, *_local_plan(args))
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
