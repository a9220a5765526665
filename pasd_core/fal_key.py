"""Finding the fal API key: never stored in a workflow, never logged, never shown in a message.

Order, as fal's own clients read it: FAL_KEY, then FAL_KEY_ID + FAL_KEY_SECRET ("id:secret");
then this pack's config file (PASD_FAL_CONFIG, default ~/.config/comfyui-pasd/fal.json,
`{"fal_key": "..."}`) for users who cannot set environment variables for ComfyUI.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from .fal_errors import KEY_HELP, FalError

DEFAULT_CONFIG = Path("~/.config/comfyui-pasd/fal.json")


def config_path(env: Mapping[str, str]) -> Path:
    return Path(env.get("PASD_FAL_CONFIG") or DEFAULT_CONFIG).expanduser()


def find_fal_key(env: Mapping[str, str] | None = None) -> str:
    """The fal key to send as `Authorization: Key <key>`, or a FalError saying how to set one."""
    env = os.environ if env is None else env
    if key := env.get("FAL_KEY", "").strip():
        return key
    key_id, key_secret = env.get("FAL_KEY_ID", "").strip(), env.get("FAL_KEY_SECRET", "").strip()
    if key_id and key_secret:
        return f"{key_id}:{key_secret}"
    path = config_path(env)
    if path.is_file():
        return _key_from_file(path)
    raise FalError(f"No fal API key found: FAL_KEY is not set (nor FAL_KEY_ID and FAL_KEY_SECRET) and "
                   f"{path} does not exist. {KEY_HELP}")


def _key_from_file(path: Path) -> str:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        # The parser's message could quote the file, which holds the key: name the problem only.
        raise FalError(f"Cannot read the fal config file {path} ({type(exc).__name__}): it must be JSON "
                       f"like {{\"fal_key\": \"...\"}}. {KEY_HELP}") from None
    key = config.get("fal_key") if isinstance(config, dict) else None
    if not isinstance(key, str) or not key.strip():
        raise FalError(f"The fal config file {path} has no \"fal_key\" string. {KEY_HELP}")
    return key.strip()
