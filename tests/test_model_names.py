"""Model names from the loader node (or a shared workflow) resolve only inside the models folders.

Hostile names (`../..`, absolute paths, `a//b`, backslashes, drive letters, NUL) are refused before
anything is read; a name that is not there, or is the wrong kind of thing, gets a message that says
so and names only the models folders. Symlinks the user placed inside a models folder are followed,
as ComfyUI's own `folder_paths.get_full_path` does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from support.comfyui import FakeComfyUI, make_models_dir, pack_module
from support.paths import CHECKPOINTS
from support.permissions import run_bound_by_permissions

local = pack_module("nodes.exact")
host = pack_module("nodes.host")
errors = pack_module("pasd_core.errors")
table = pack_module("pasd_core.params")
pipeline_module = pack_module("pasd_core.engine.pipeline")

PASD_NAME, BASE_NAME = "pasd/checkpoint-100000", "diffusers/stable-diffusion-v1-5"
SECRET = "SECRET_ENTRY_OUTSIDE"  # a name that lives only outside the models folders


@pytest.fixture
def world(tmp_path, monkeypatch) -> Path:
    """A models folder (PASD_MODELS_DIR) and, beside it, a folder of weights that must stay out of reach."""
    models = make_models_dir(tmp_path / "models")
    outside = tmp_path / "outside"
    outside.mkdir()
    save_file({"x": torch.zeros(2)}, str(outside / "secret.safetensors"))
    (outside / SECRET).write_text("")
    monkeypatch.setenv("PASD_MODELS_DIR", str(models))
    return tmp_path


@pytest.fixture
def loads(monkeypatch) -> list[dict]:
    """Every PASDPipeline.from_pretrained call the loader node makes (none are really loaded)."""
    calls: list[dict] = []
    monkeypatch.setattr(pipeline_module.PASDPipeline, "from_pretrained",
                        classmethod(lambda cls, base, pasd, **kw: calls.append(dict(base=base, pasd=pasd, **kw))))
    return calls


def load(pasd_model=PASD_NAME, base_model=BASE_NAME, style_model="none", lora="none"):
    return local.PASDModelLoader().load(pasd_model, base_model, style_model, lora, device="cpu", dtype="fp32")


HOSTILE = ["../../outside/secret.safetensors", "../outside", "/etc/passwd", "pasd//checkpoint-100000",
           "pasd/../../outside", "pasd/./checkpoint-100000", "..", "", "a\\..\\..\\outside", "C:/Windows/x",
           "c:secret.safetensors", "sub/D:/x", "secret\0.safetensors", "pasd/checkpoint-100000/"]


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize("input_name", ["pasd_model", "style_model", "lora"])
def test_hostile_names_are_refused_before_anything_is_read(world, loads, input_name, name):
    with pytest.raises(table.ParamError, match=rf"^{input_name} .* is not a model name.*Pick one from the list"):
        load(**{input_name: name})
    assert loads == []


@pytest.mark.parametrize("choice", ["checkpoints//etc/passwd", "checkpoints/../../outside/secret.safetensors",
                                    "diffusers/../../outside", "diffusers//etc", "/etc/passwd", "../outside",
                                    "checkpoints/", "diffusers\\..\\..\\outside"])
def test_hostile_base_model_choices_are_refused(world, loads, choice):
    with pytest.raises(table.ParamError, match=r"^base_model .*(not a model name|should start with).*[Pp]ick one"):
        load(base_model=choice)
    assert loads == []


def test_existing_weights_outside_the_models_folder_are_not_reachable(world, loads):
    # the file exists and is valid, but a workflow cannot point at it
    for name in ("../../outside/secret.safetensors", str(world / "outside" / "secret.safetensors")):
        with pytest.raises(table.ParamError):
            load(style_model=name)
    assert loads == []


def test_messages_never_list_what_is_outside_the_models_folders(world, loads):
    # the review's case: a pasd_model of ../../etc made the loader list the contents of /etc
    for kwargs in ({"pasd_model": "../../outside"}, {"pasd_model": str(world / "outside")},
                   {"base_model": "diffusers/../../outside"}, {"pasd_model": "../../../../../../etc"},
                   {"lora": "../../outside/missing.safetensors"}):
        with pytest.raises(errors.PASDError) as caught:
            load(**kwargs)
        assert SECRET not in str(caught.value) and "passwd" not in str(caught.value)


def test_missing_model_names_the_input_and_the_folders_searched(world, loads):
    with pytest.raises(host.ModelNotFoundError) as caught:
        load(style_model="toonyou.safetensors")
    message = str(caught.value)
    assert message.startswith("style_model 'toonyou.safetensors' was not found in ")
    assert str(world / "models" / "checkpoints") in message and "pick one from the list" in message
    assert isinstance(caught.value, errors.ModelError) and isinstance(caught.value, FileNotFoundError)
    with pytest.raises(host.ModelNotFoundError, match=r"^pasd_model 'pasd/checkpoint-1' was not found"):
        load(pasd_model="pasd/checkpoint-1")
    with pytest.raises(host.ModelNotFoundError, match=r"^base_model 'sd15.safetensors' was not found"):
        load(base_model="checkpoints/sd15.safetensors")
    assert loads == []


def test_a_folder_where_a_file_belongs_and_the_reverse_are_named_as_such(world, loads):
    models = world / "models"
    (models / "checkpoints" / "toonyou").mkdir()
    (models / "loras" / "styles.safetensors").mkdir()
    (models / "pasd" / "pasd.safetensors").write_bytes(b"x")
    (models / "diffusers" / "sd15.safetensors").write_bytes(b"x")
    cases = [({"style_model": "toonyou"}, r"^style_model 'toonyou' is a folder in .*checkpoints, but style_model "
                                          r"takes a file \(a \.safetensors checkpoint\)"),
             ({"lora": "styles.safetensors"}, r"^lora 'styles.safetensors' is a folder in .*loras, but lora takes a "
                                              "file"),
             ({"base_model": "checkpoints/toonyou"}, r"^base_model 'toonyou' is a folder"),
             ({"pasd_model": "pasd.safetensors"}, r"^pasd_model 'pasd.safetensors' is a file in .*pasd, but "
                                                  r"pasd_model takes a folder \(a PASD checkpoint holding unet/ and "
                                                  r"controlnet/\)"),
             ({"base_model": "diffusers/sd15.safetensors"}, r"^base_model 'sd15.safetensors' is a file in .*diffusers, "
                                                            "but base_model takes a folder")]
    for kwargs, message in cases:
        with pytest.raises(errors.ModelError, match=message) as caught:
            load(**kwargs)
        assert "not found" not in str(caught.value) and "does not exist" not in str(caught.value)
    assert loads == []


def test_a_dangling_link_is_called_a_dangling_link(world, loads):
    (world / "models" / "loras" / "gone.safetensors").symlink_to(world / "deleted.safetensors")
    with pytest.raises(errors.ModelError, match=r"^lora 'gone.safetensors' is a link in .*loras to something that "
                                                "does not exist"):
        load(lora="gone.safetensors")
    assert loads == []


def test_symlinks_placed_inside_a_models_folder_are_followed(world, loads):
    # make_models_dir links models/pasd/pasd and models/diffusers/stable-diffusion-v1-5 to the fixtures
    (world / "models" / "loras" / "styles").mkdir()
    (world / "models" / "loras" / "styles" / "shared.safetensors").symlink_to(world / "outside" / "secret.safetensors")
    load(lora="styles/shared.safetensors", style_model="none")
    (call,) = loads
    assert Path(call["pasd"]).resolve() == CHECKPOINTS / "pasd" / "checkpoint-100000"
    assert Path(call["base"]).resolve() == CHECKPOINTS / "stable-diffusion-v1-5"
    assert call["lora"] == str(world / "models" / "loras" / "styles" / "shared.safetensors")


def test_inside_comfyui_files_are_found_by_comfyuis_own_lookup_after_the_name_check(world, loads, monkeypatch):
    comfyui = FakeComfyUI(world / "models").install(monkeypatch)
    asked = []

    def get_full_path(kind: str, name: str) -> str | None:  # as ComfyUI's: a file in one of the kind's folders
        asked.append((kind, name))
        path = Path(comfyui.folder_paths.get_folder_paths(kind)[0]) / name
        return str(path) if path.is_file() else None

    comfyui.folder_paths.get_full_path = get_full_path
    save_file({"x": torch.zeros(2)}, str(world / "models" / "loras" / "detail.safetensors"))
    load(lora="detail.safetensors")
    assert loads[0]["lora"] == str(world / "models" / "loras" / "detail.safetensors")
    with pytest.raises(table.ParamError, match="not a model name"):
        load(lora="../../outside/secret.safetensors")
    with pytest.raises(host.ModelNotFoundError, match=r"^style_model 'toon.safetensors' was not found"):
        load(style_model="toon.safetensors")
    assert asked == [("loras", "detail.safetensors"), ("checkpoints", "toon.safetensors")]
    assert len(loads) == 1


def test_a_damaged_style_model_is_named_through_the_node(world):
    damaged = world / "models" / "checkpoints" / "toonyou.safetensors"
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"x\": trunc")
    with pytest.raises(errors.ModelError, match="damaged or an incomplete download") as caught:
        load(style_model="toonyou.safetensors")
    assert str(damaged) in str(caught.value)


class _TouchOnLoad:
    """Unpickling this would create a file: proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_lora_ckpt_with_code_is_refused_through_the_node_without_running_it(world):
    marker = world / "code-ran"
    lora = world / "models" / "loras" / "evil.ckpt"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(1, 2), "hook": _TouchOnLoad(marker)}, str(lora))
    with pytest.raises(errors.ModelError, match="could run code") as caught:
        load(lora="evil.ckpt")
    assert str(lora) in str(caught.value) and not marker.exists()


@pytest.mark.skipif(sys.platform != "linux", reason="file permissions are simulated with Linux capabilities")
def test_an_unreadable_model_is_called_unreadable_through_the_node(world):
    lora = world / "models" / "loras" / "detail.safetensors"
    save_file({"x": torch.zeros(2)}, str(lora))
    lora.chmod(0o000)
    code = ("import sys; sys.path.insert(0, 'tests'); from support.comfyui import pack_module\n"
            "try:\n"
            f"    pack_module('nodes.exact').PASDModelLoader().load({PASD_NAME!r}, {BASE_NAME!r}, 'none', "
            "'detail.safetensors', device='cpu', dtype='fp32')\n"
            "except pack_module('pasd_core.errors').ModelError as error:\n"
            "    print(error)\n")
    done = run_bound_by_permissions(code, env={**os.environ, "PASD_MODELS_DIR": str(world / "models")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"lora 'detail.safetensors' in {lora.parent} cannot be read (permission denied)")
