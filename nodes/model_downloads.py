"""The official models the PASD nodes fetch by themselves on first use, and the short refusal when they cannot.

Only the fixed official repositories are fetched (pasd_core.weights.download names them), into the first folder
ComfyUI searches for their kind, each file checked against the hub's checksum before it is kept. A dropdown lists
these names even before they are on disk, so a new node (or a shared workflow) runs on a fresh install; a model that
is neither on disk nor official is refused as before (model_choices).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..pasd_core.errors import ModelError
from ..pasd_core.model_family import SD15, SDXL
from ..pasd_core.prompt.folders import CAPTIONER, CLASSIFIER, PROMPT_FOLDER
from ..pasd_core.weights import download
from ..pasd_core.weights.hub_fetch import STAGING_NAME, HubFetcher
from . import host

AUTO_DOWNLOAD = "auto_download"  # the loaders' switch
AUTO_DOWNLOAD_TOOLTIP = ("On a first run, fetch the official models this node needs that are not on disk yet (PASD "
                         "checkpoints, bases, captioner/classifier, LCM-LoRA, fp16-fix VAE, SDXL refiner) from "
                         "Hugging Face into ComfyUI's models folders, each file checked against the hub's checksum; "
                         "progress shows in the bar and the console. Off: a missing model is refused with the command "
                         "that fetches it.")
_PROBE_SECONDS = 3.0
_PROBE_KEEP_SECONDS = 30.0
_PROBES: dict[str, tuple[float, str | None]] = {}  # endpoint -> (when, why unreachable or None)
PACK_DIR = Path(__file__).resolve().parent.parent  # where `python -m pasd_core` runs


@dataclass(frozen=True)
class OfficialModel:
    """One official model a node input can name: where it goes, the download flags that fetch it, how to fetch it."""

    input_name: str
    choice: str
    kind: str  # the models folder kind it goes in (pasd, diffusers, vae, loras, pasd_prompt)
    what: str
    family: str
    flags: tuple[str, ...]  # of `python -m pasd_core download`, beside --family
    fetch: Callable[[Path, HubFetcher], Path]  # (its kind's folder, fetcher) -> what was fetched
    files: tuple[str, ...]  # what a complete copy holds, relative to its kind's folder

    def on_disk(self) -> bool:
        """Whether a complete copy is in one of the folders ComfyUI searches (a run cut short leaves a part)."""
        return any(all((Path(folder) / name).is_file() for name in self.files)
                   for folder in host.model_folders(self.kind))


def _pasd(variant: str, choice: str) -> OfficialModel:
    family = SDXL if variant == download.FAMILY_VARIANTS[SDXL] else SD15
    flags = ("--variant", variant) if family == SD15 and variant != download.FAMILY_VARIANTS[SD15] else ()
    extra = download.COLOR_SCHEDULER.patterns() if variant == download.COLOR_VARIANT else []
    return OfficialModel("pasd_model", choice, host.PASD_FOLDER, download.PASD_VARIANTS[variant].what, family, flags,
                         lambda folder, fetcher: download.ensure_pasd_checkpoint(variant, folder, fetcher),
                         (*(f"{choice}/{name}" for name in download.PASD_VARIANTS[variant].files), *extra))


def _listed_pasd_models() -> list[OfficialModel]:
    """The checkpoints whose folder name is known before fetching (the others' step is not documented)."""
    return [_pasd(variant, source.folder) for variant, source in download.PASD_VARIANTS.items()
            if not source.any_step]


def _bases() -> list[OfficialModel]:
    return [OfficialModel("base_model", f"diffusers/{source.repo_name}", "diffusers", source.what, family, (),
                          lambda folder, fetcher, family=family: download.ensure_base(folder, family, fetcher),
                          _inside(source.repo_name, source.files))
            for family, source in download.BASES.items()]


def _inside(folder: str, files: Iterable[str]) -> tuple[str, ...]:
    return tuple(f"{folder}/{name}" for name in files)


def _others() -> list[OfficialModel]:
    lcm, vae, refiner = download.LCM_LORA, download.FP16_FIX_VAE, download.REFINER
    return [
        OfficialModel("refiner", f"diffusers/{refiner.repo_name}", "diffusers", refiner.what, SDXL, ("--refiner",),
                      lambda folder, fetcher: download.ensure_refiner(folder, fetcher),
                      _inside(refiner.repo_name, refiner.files)),
        OfficialModel("vae", vae.repo_name, "vae", vae.what, SDXL, ("--fp16-fix-vae",),
                      lambda folder, fetcher: download.ensure_fp16_fix_vae(folder, fetcher),
                      _inside(vae.repo_name, vae.files)),
        OfficialModel("lcm_lora", f"{lcm.repo_name}/{lcm.files[0]}", "loras", lcm.what, SD15, ("--lcm-lora",),
                      lambda folder, fetcher: download.ensure_lcm_lora(folder, fetcher),
                      _inside(lcm.repo_name, lcm.files)),
        *(OfficialModel(kind.node_input, kind.folder_name, PROMPT_FOLDER, kind.source.what, SD15,
                        (kind.download_flag,), lambda folder, fetcher, kind=kind: kind.ensure_in(folder, fetcher),
                        _inside(kind.folder_name, kind.markers))  # the download writes the last marker last
          for kind in (CAPTIONER, CLASSIFIER)),
    ]


def official_choices(input_name: str) -> list[str]:
    """The official names `input_name`'s dropdown offers, on disk or not."""
    return [model.choice for model in (*_listed_pasd_models(), *_bases(), *_others())
            if model.input_name == input_name]


def official_model(input_name: str, choice: object) -> OfficialModel | None:
    """The official model `choice` names for `input_name`, or None. A PASD checkpoint of a variant whose step is not
    documented is official under any checkpoint-<digits> name; its fetch checks the step it gets."""
    if not isinstance(choice, str):
        return None
    for model in (*_listed_pasd_models(), *_bases(), *_others()):
        if (model.input_name, model.choice) == (input_name, choice):
            return model
    variant, _, step = choice.partition("/")
    source = download.PASD_VARIANTS.get(variant)
    if input_name == "pasd_model" and source is not None and source.any_step and re.fullmatch(r"checkpoint-\d+", step):
        return _pasd(variant, choice)
    return None


def hub_unreachable() -> str | None:
    """Why the hub cannot be used now (offline mode, or no answer within a few seconds through huggingface_hub's own
    HTTP session, proxies included), or None. An answer is kept for half a minute: validation asks per node."""
    try:
        from huggingface_hub import constants
        from huggingface_hub.utils import get_session
    except ImportError:
        return "the huggingface_hub package is not installed (pip install huggingface_hub)"
    if constants.HF_HUB_OFFLINE or constants._is_true(os.environ.get("HF_HUB_OFFLINE")):
        return "HF_HUB_OFFLINE is set"
    now, endpoint = time.monotonic(), constants.ENDPOINT
    cached = _PROBES.get(endpoint)
    if cached is not None and now - cached[0] < _PROBE_KEEP_SECONDS:
        return cached[1]
    try:
        get_session().head(endpoint, timeout=_PROBE_SECONDS)
        answer = None
    except Exception as error:  # any HTTP answer will do; no answer at all is what offline means here
        answer = f"{urlsplit(endpoint).hostname} cannot be reached ({type(error).__name__})"
    _PROBES[endpoint] = (now, answer)
    return answer


def download_command(family: str, variant: str | None = None, extra: str = "") -> str:
    """The `python -m pasd_core download` line, runnable as printed, that fetches into this ComfyUI's models."""
    named = variant not in (None, "pasd") and family == SD15  # pasd is the sd15 default
    flags = f"--family {family}" + (f" --variant {variant}" if named else "") + (f" {extra}" if extra else "")
    return (f"cd {_quoted(str(PACK_DIR))} && python -m pasd_core download {flags} "
            f"--models-dir {_quoted(host.models_root())}")


def _quoted(path: str) -> str:
    return f'"{path}"' if " " in path else path


def download_problem(fetchable: list[OfficialModel], auto_download: bool, family_hint: str) -> str | None:
    """Why the official models `fetchable` cannot be fetched on this run (switch off, offline), or None."""
    if not fetchable:
        return None
    reason = f"{AUTO_DOWNLOAD} is off" if not auto_download else hub_unreachable()
    return None if reason is None else refusal(fetchable, reason, family_hint)


def _folder(kind: str) -> str:
    return os.path.realpath(host.model_folders(kind)[0])


def refusal(missing: Iterable[OfficialModel], reason: str, family_hint: str) -> str:
    """One line per missing model (what, where it goes) and one command that fetches them all."""
    missing = list(missing)
    family = next((m.family for m in missing if m.input_name == "pasd_model"), family_hint)
    flags = [flag for model in missing for flag in model.flags]
    lines = [f"- {m.input_name} {m.choice!r}: {m.what}, into {_folder(m.kind)}" for m in missing]
    return (f"{len(missing)} official model(s) this graph needs are not on disk, and {reason}:\n" + "\n".join(lines)
            + f"\nFetch them all with: {download_command(family, extra=' '.join(dict.fromkeys(flags)))}\n"
            "(running it again resumes), then press R in ComfyUI; or turn auto_download on while online.")


def fetch_missing(missing: Iterable[OfficialModel], should_stop: Callable[[], bool]) -> None:
    """Fetch each model with ComfyUI's progress bar (bytes of the current repository) and a console line per file;
    the stop button ends the download between two chunks, keeping the files already checked."""
    from ..pasd_core.errors import Interrupted

    with host.progress_to(100, "PASD download") as show:
        def on_bytes(done: int, total: int) -> None:
            if should_stop():
                raise Interrupted("download stopped; queue again to resume")
            try:
                show(done * 100 // max(total, 1))
            except Exception as error:  # ComfyUI's progress hook raises its interruption when Stop lands meanwhile
                if host.is_interruption(error):
                    raise Interrupted("download stopped; queue again to resume") from error
                raise

        fetcher = HubFetcher(staging=Path(host.models_root()) / STAGING_NAME,
                             on_file=lambda line: host.log.info("PASD: %s", line), on_bytes=on_bytes,
                             again="queue the prompt again")
        for model in missing:
            host.log.info("PASD: %s %r is not on disk: fetching %s (auto_download)", model.input_name, model.choice,
                          model.what)
            fetched = model.fetch(Path(_folder(model.kind)), fetcher)
            if model.input_name == "pasd_model" and not fetched.as_posix().endswith(model.choice):
                raise ModelError(f"pasd_model {model.choice!r}: the hub holds {fetched.parent.name}/{fetched.name} "
                                 f"instead (now in {fetched.parent.parent}); press R in ComfyUI and pick it.")
