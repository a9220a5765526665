"""Finding the fal API key: never stored in a workflow, never logged, never shown in a message.

Order, as fal's own clients read it: FAL_KEY, then FAL_KEY_ID + FAL_KEY_SECRET ("id:secret");
then this pack's config file (PASD_FAL_CONFIG, default ~/.config/comfyui-pasd/fal.json,
`{"fal_key": "..."}`) for users who cannot set environment variables for ComfyUI. A key must be
printable ASCII without spaces (it goes into an HTTP header); anything else is refused with a
message that names the problem and where the key came from, never the key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from .errors import KEY_HELP, FalError

DEFAULT_CONFIG = Path("~/.config/comfyui-pasd/fal.json")


def config_path(env: Mapping[str, str]) -> Path:
    return Path(env.get("PASD_FAL_CONFIG") or DEFAULT_CONFIG).expanduser()


def find_fal_key(env: Mapping[str, str] | None = None) -> str:
    """The fal key to send as `Authorization: Key <key>`, or a FalError saying how to set one."""
    env = os.environ if env is None else env
    if key := env.get("FAL_KEY", "").strip():
        return check_key(key, "FAL_KEY")
    key_id, key_secret = env.get("FAL_KEY_ID", "").strip(), env.get("FAL_KEY_SECRET", "").strip()
    if key_id and key_secret:
        return check_key(f"{key_id}:{key_secret}", "FAL_KEY_ID / FAL_KEY_SECRET")
    path = config_path(env)
    if path.is_file():
        return check_key(_key_from_file(path), f"the \"fal_key\" of {path}")
    raise FalError(f"No fal API key found: FAL_KEY is not set (nor FAL_KEY_ID and FAL_KEY_SECRET) and "
                   f"{path} does not exist. {KEY_HELP}")


def _key_from_file(path: Path) -> str:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        # The parser's message could quote the file, which holds the key: name the problem only.
        raise FalError(f"Cannot read the fal config file {path} ({type(exc).__name__}): it must be JSON "
                       f"like {{\"fal_key\": \"...\"}}. {KEY_HELP}") from None
    key = config.get("fal_key") if isinstance(config, dict) else None
    if not isinstance(key, str) or not key.strip():
        raise FalError(f"The fal config file {path} has no \"fal_key\" string. {KEY_HELP}")
    return key.strip()


def check_key(key: str, source: str) -> str:
    """`key` when it can go into an Authorization header, else a FalError naming `source` (never the key)."""
    for position, char in enumerate(key, 1):
        if not "!" <= char <= "~":  # printable ASCII, no space: what fal's keys are made of
            what = ("a line break" if char in "\r\n" else "whitespace" if char.isspace()
                    else "a control character" if char.isascii() else "a non-ASCII character")
            raise FalError(f"The fal key in {source} contains {what} (character {position} of {len(key)}), "
                           "so it cannot be sent. Copy the key again, as one line without spaces or quotes. "
                           f"{KEY_HELP}")
    return key
