"""Registry readiness: pyproject.toml carries the fields the Comfy Registry reads ([project] and [tool.comfy], as
ComfyUI's own comfy_config/config_parser.py parses them), consistent with each other and with the repository."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT, COMFY = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
# The ComfyUI the end-to-end tests run against (.ci/run unpacks this tarball): the lowest one the pack claims.
TESTED_COMFYUI = re.search(r"ComfyUI-(\d+\.\d+\.\d+)-", (REPO / ".ci" / "run").read_text())[1]


def test_project_identity_follows_the_registry_spec():
    # node id: < 100 characters, letters, digits, - _ . only, no consecutive specials, starts with a letter
    assert re.fullmatch(r"[A-Za-z](?:[A-Za-z0-9]|[-_.](?=[A-Za-z0-9]))*", PROJECT["name"])
    assert len(PROJECT["name"]) < 100
    assert re.fullmatch(r"\d+\.\d+\.\d+", PROJECT["version"])  # semantic version X.Y.Z
    assert PROJECT["description"] and "PASD" in PROJECT["description"]
    assert PROJECT["urls"]["Repository"].startswith("https://github.com/")


def test_license_is_the_apache_2_0_text_the_file_field_names():
    license_file = REPO / PROJECT["license"]["file"]
    text = license_file.read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_tool_comfy_names_the_publisher_an_icon_in_this_repository_and_the_tested_comfyui():
    assert COMFY["PublisherId"] and COMFY["DisplayName"] == "ComfyUI-PASD"
    repository = PROJECT["urls"]["Repository"].removeprefix("https://github.com/")
    icon = re.fullmatch(rf"https://raw\.githubusercontent\.com/{re.escape(repository)}/main/(.+)", COMFY["Icon"])
    assert icon, f"Icon should be the raw GitHub URL of a file in {repository}: {COMFY['Icon']}"
    icon_file = REPO / icon[1]
    assert icon_file.suffix in (".svg", ".png") and icon_file.is_file()
    if icon_file.suffix == ".svg":
        assert icon_file.read_text().lstrip().startswith("<svg") and "<script" not in icon_file.read_text()
    assert COMFY["requires-comfyui"] == f">={TESTED_COMFYUI}"


def test_requirements_name_lower_bounds_only_and_never_torch():
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line]
    assert requirements and PROJECT["dynamic"] == ["dependencies"]
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement)[0].lower()
        assert name not in ("torch", "torchvision", "torchaudio")
        assert not re.search(r"==|<|~=|!=", requirement), requirement
