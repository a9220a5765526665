"""What the official prompt stage adds to a run: the CoCa caption and the ResNet-50 classification against one PASD run.

The captioner is open_clip's real `coca_ViT-L-14` (built with `open_clip.create_model(..., pretrained=None)`, every
parameter then seeded, since open_clip leaves the decoder's text_projection as torch.empty), written as a captioner
folder (open_clip_config.json as the download writes it, open_clip_model.safetensors) and loaded by the pack's
`load_captioner`; `caption` is the official search (6 beams in 3 groups, up to 30 tokens). Random weights seldom
emit <end_of_text>, so the search usually runs the full 30 tokens: the worst case. A second caption row times the
search as it ran before (open_clip's way: the image through the vision tower once per beam, the whole prefix through
the decoder at every token), in the same run, and says whether the tokens are identical. The classifier is torchvision's
ResNet-50 with tests/support/prompt_models.py's seeded weights, loaded by `load_classifier`. The run is
`PASDPipeline.upscale` of the medium-size random-weight PASD-SD1.5 (tests/support/medium_checkpoint.py, built once into
--cache) at scale 1 with high_level_info "none", CPU fp32. Each call is timed once, loading excluded, as the first
call after loading (no warm-up), as in a CLI run; the ratios come from one run on one machine.

Run: .venv/bin/python bench/bench_prompt_stage.py [--size 256] [--steps 20] [--threads 1] [--cache DIR]
Needs about 8 GiB of RAM and 3 GiB of temporary disk; prints a table, never asserts on time.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from common import DEFAULT_PACKAGES, add_project_to_path, machine_header, print_table, torch_threads_note

add_project_to_path()

from safetensors.torch import save_file  # noqa: E402

from pasd_core.engine.pipeline import PASDPipeline  # noqa: E402
from pasd_core.prompt import search as caption_search  # noqa: E402
from pasd_core.prompt.folders import CAPTIONER_WEIGHTS, write_captioner_config  # noqa: E402
from pasd_core.prompt.models import load_captioner, load_classifier  # noqa: E402
from pasd_core.prompt.open_clip_coca import OFFICIAL_CAPTIONER  # noqa: E402
from support.coca_reference import FullRecompute  # noqa: E402
from support.medium_checkpoint import DEFAULT_CACHE, build_medium  # noqa: E402
from support.prompt_models import write_classifier_folder  # noqa: E402
from support.real_size import photo  # noqa: E402
from support.seeding import seeded_noise  # noqa: E402

PACKAGES = (*DEFAULT_PACKAGES, "open_clip_torch", "torchvision")


def seed_coca_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter drawn from one torch generator: matrices at 1/sqrt(fan in), norm scales around 1, biases and
    other vectors small, logit_scale at CLIP's init."""
    with torch.no_grad():
        for name, parameter, noise in seeded_noise(model.named_parameters(), seed):
            if name.endswith("logit_scale"):
                parameter.fill_(math.log(1 / 0.07))
            elif parameter.ndim >= 2:  # `proj` / `text_projection` are applied as x @ P: their fan in is dim 0
                fan_in = parameter.shape[0] if name.endswith("proj") else parameter[0].numel()
                parameter.copy_(noise / math.sqrt(fan_in))
            elif name.endswith("weight"):
                parameter.copy_(1 + 0.1 * noise)
            else:
                parameter.copy_(0.02 * noise)
    return model


def write_coca_folder(folder: Path) -> Path:
    import open_clip

    model = seed_coca_(open_clip.create_model(OFFICIAL_CAPTIONER, pretrained=None))
    folder.mkdir(parents=True, exist_ok=True)
    write_captioner_config(folder)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / CAPTIONER_WEIGHTS[0]))
    return folder


def timed(call, *args):
    start = time.perf_counter()
    result = call(*args)
    return result, time.perf_counter() - start


def timed_caption(captioner, image) -> tuple[list[int], float]:
    """The seconds of `captioner.caption(image)` and the tokens its search returned (recorded on the way out)."""
    tokens: list[int] = []
    search = caption_search.generate_caption_tokens

    def recording(*args, **kwargs):
        tokens.extend(search(*args, **kwargs))
        return tokens

    with mock.patch.object(caption_search, "generate_caption_tokens", recording):
        _, seconds = timed(captioner.caption, image)
    return tokens, seconds


def timed_caption_as_before(captioner, image) -> tuple[list[int], float]:
    """timed_caption as the search ran before this release: the image through the vision tower once per beam and the
    whole prefix through the decoder at every token, as open_clip's generate does; so the two rows of one run compare
    the change."""
    coca = caption_search.coca
    encode = coca.image_embeddings

    def per_beam(model, one_image):
        beams = caption_search.SearchSettings().num_beams
        return encode(model, torch.repeat_interleave(one_image, beams, dim=0))[:1]

    with mock.patch.object(coca, "image_embeddings", per_beam), \
            mock.patch.object(caption_search, "CachedDecoder", FullRecompute):
        return timed_caption(captioner, image)


def parameters(module: torch.nn.Module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.0f}M"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="input side in pixels, also the process size (256)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps of the PASD run (20)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"medium checkpoint folder ({DEFAULT_CACHE})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(machine_header("PASD prompt stage (CoCa caption, ResNet-50 classification) against one PASD run "
                         "(CPU, fp32, random weights)", PACKAGES))
    print(torch_threads_note())
    print(f"input {args.size}x{args.size} px, scale 1, process size {args.size}, {args.steps} steps; each call timed "
          "once, its first after loading")
    image = photo(args.size)
    base, pasd = build_medium(args.cache)
    pipeline = PASDPipeline.from_pretrained(base, pasd, device="cpu", dtype="fp32")
    settings = {"scale": 1, "process_size": args.size, "steps": args.steps, "high_level_info": "none", "seed": 0}
    _, run_seconds = timed(pipeline.upscale, image, settings)
    del pipeline  # one model in memory at a time

    with tempfile.TemporaryDirectory(prefix="pasd-bench-prompt-") as work:
        captioner = load_captioner(write_coca_folder(Path(work) / "coca"))
        before_tokens, before_seconds = timed_caption_as_before(captioner, image)
        tokens, caption_seconds = timed_caption(captioner, image)
        coca = parameters(captioner.model)
        del captioner
        classifier = load_classifier(write_classifier_folder(str(Path(work) / "resnet50")))
        _, classify_seconds = timed(classifier.classify, image)

    ended = tokens[-1] == caption_search.SearchSettings().eos
    print_table("Time added to one run (seconds)", ["what", "wall s", "x PASD run", "note"], [
        ["PASD run (upscale, high_level_info none)", f"{run_seconds:.1f}", "1.00", f"medium PASD, {args.steps} steps"],
        [f"caption ({OFFICIAL_CAPTIONER}, {coca} parameters)", f"{caption_seconds:.1f}",
         f"{caption_seconds / run_seconds:.2f}",
         f"{len(tokens)} of {caption_search.SearchSettings().seq_len} tokens (with <start_of_text>"
         f"{', <end_of_text>)' if ended else '); no <end_of_text>: the full search'}"],
        ["caption as before (no cache, an image per beam)", f"{before_seconds:.1f}",
         f"{before_seconds / run_seconds:.2f}",
         f"now {caption_seconds / before_seconds:.2f}x of it; tokens "
         f"{'identical' if before_tokens == tokens else 'DIFFER'}"],
        [f"classification (ResNet-50, {parameters(classifier.model)} parameters)", f"{classify_seconds:.2f}",
         f"{classify_seconds / run_seconds:.3f}", "top class of 1000"]])


if __name__ == "__main__":
    main()
