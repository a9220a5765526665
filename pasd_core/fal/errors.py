"""Turning fal's HTTP answers into messages a ComfyUI user can act on.

fal reports problems as `{"detail": ...}`: a string, or for invalid inputs pydantic's list of
`{"loc": ["body", <field>], "msg": ..., "type": ...}` (fal's own `FieldException` builds that shape).
Every piece of server text goes through `redact.excerpt` with the key, so no message shows it.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import PASDError
from .redact import excerpt

ENDPOINT = "fal-ai/pasd"
KEY_HELP = (
    "Create a key at https://fal.ai/dashboard/keys, then either set it in the environment that starts "
    "ComfyUI (export FAL_KEY=...) and restart ComfyUI, or put {\"fal_key\": \"...\"} in "
    "~/.config/comfyui-pasd/fal.json (read on every run; another path with PASD_FAL_CONFIG)."
)
# fal's input name for the picture is image_url; users know it as the node's `image` input.
FIELD_NAMES = {"image_url": "image"}


class FalError(PASDError):
    """The hosted fal-ai/pasd endpoint could not be used; the message says why and what to do."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def field_name(loc: Any) -> str:
    """Our parameter name for a pydantic `loc` such as ["body", "scale"] or ["body", "image_url"]."""
    parts = [str(p) for p in loc] if isinstance(loc, (list, tuple)) else [str(loc)]
    if parts and parts[0] in ("body", "query"):
        parts = parts[1:]
    if not parts:
        return "request"
    parts[0] = FIELD_NAMES.get(parts[0], parts[0])
    return ".".join(parts)


def detail_text(detail: Any) -> str:
    """fal's `detail` as one line: per-field problems become "scale: <msg>; image: <msg>"."""
    if isinstance(detail, list) and all(isinstance(d, dict) for d in detail):
        return "; ".join(f"{field_name(d.get('loc', ()))}: {d.get('msg', d.get('type', 'invalid'))}" for d in detail)
    if isinstance(detail, str):
        return detail
    return json.dumps(detail)


def answer_text(body: bytes, key: str | None) -> str:
    """What fal said in an error answer: its `detail` when it sent one, else the raw text; short, key hidden."""
    text = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict) and "detail" in parsed:
        text = detail_text(parsed["detail"])
    return excerpt(text, key) or "(empty answer)"


def http_error(status: int, body: bytes, *, action: str, attempts: int, key: str | None) -> FalError:
    """The FalError for a non-2xx answer to `action` (e.g. "submitting the image")."""
    said = answer_text(body, key)
    if status in (401, 403):
        problem = "rejected the API key" if status == 401 else "refused this key access to the endpoint"
        return FalError(f"fal {problem} (HTTP {status}) while {action}: {said}. {KEY_HELP}", status_code=status)
    if status == 422:
        return FalError(f"fal-ai/pasd rejected the request (HTTP 422): {said}. Change those inputs and "
                        "run again.", status_code=status)
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    if status == 429:
        return FalError(f"fal is rate-limiting this key (HTTP 429) and still was{tries} while {action}: "
                        f"{said}. Wait a minute, or lower max_in_flight.", status_code=status)
    if status >= 500:
        return FalError(f"fal had a server error (HTTP {status}){tries} while {action}: {said}. "
                        "fal may be having an outage; try again later.", status_code=status)
    if 300 <= status < 400:  # fal's queue API never redirects; following one could carry the key elsewhere
        return FalError(f"fal answered with a redirect (HTTP {status}) while {action}, which was not followed. "
                        "Check FAL_QUEUE_URL / FAL_REST_URL (unset them to use fal's own hosts).", status_code=status)
    return FalError(f"fal answered HTTP {status} while {action}: {said}.", status_code=status)


def malformed(action: str, why: str) -> FalError:
    """`why` must already be our words or an `excerpt` of the server's."""
    return FalError(f"fal's answer to {action} was not what {ENDPOINT} should send ({why}). "
                    "Try again; if it persists, fal's API may have changed.")


def failed_on_fal(error: Any, error_type: Any, key: str | None) -> FalError:
    """A request whose final status is COMPLETED with an `error` (fal's runner failed on it)."""
    kind = f" ({excerpt(str(error_type), key, 60)})" if error_type else ""
    return FalError(f"{ENDPOINT} failed on fal's side{kind}: {excerpt(str(error), key)}")


def download_error(status: int, body: bytes, *, action: str, attempts: int, key: str | None) -> FalError:
    """Result files come from fal's public file host, fetched without the key: a 4xx there is not about FAL_KEY."""
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    said = excerpt(body.decode("utf-8", "replace"), key, 200)
    return FalError(f"Failed {action}: HTTP {status}{tries} ({said or 'empty answer'}). Try again.",
                    status_code=status)


def too_large(action: str, limit: int) -> FalError:
    return FalError(f"The answer to {action} was larger than {limit / 2**20:.1f} MiB and was not read "
                    f"(more than {ENDPOINT} ever sends for this request). Try again; if it persists, "
                    "something between you and fal is answering instead of fal.")
