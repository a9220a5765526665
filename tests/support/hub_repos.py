"""The official repositories as the hub stub serves them for a first run: the tiny fixtures' PASD-SD1.5 checkpoints
and SD1.5 base under the official repository ids and paths (yangtao9009/PASD, stable-diffusion-v1-5/...)."""

from __future__ import annotations

from pathlib import Path

from .paths import CHECKPOINTS


def _files(folder: Path, prefix: str = "") -> dict[str, bytes]:
    return {prefix + path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def tiny_official_repos() -> dict[str, dict[str, bytes]]:
    """{repo id: {path: bytes}}: pasd/ and pasd_light/ of yangtao9009/PASD, and the SD1.5 base repository (with a
    UNet file PASD does not fetch, as the real one has)."""
    pasd = {**_files(CHECKPOINTS / "pasd", "pasd/"), **_files(CHECKPOINTS / "pasd_light", "pasd_light/"),
            "README.md": b"# PASD\n"}
    base = _files(CHECKPOINTS / "stable-diffusion-v1-5")
    base["unet/diffusion_pytorch_model.safetensors"] = b"\0" * 4096
    return {"yangtao9009/PASD": pasd, "stable-diffusion-v1-5/stable-diffusion-v1-5": base}
