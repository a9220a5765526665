"""Start-up stays lean: what each entry point imports, checked in a fresh process (not a timing test).

torch alone takes seconds to import, and diffusers brings torch._dynamo and transformers' model machinery with it
(bench/bench_startup.py measures all of it). ComfyUI's node listing, the CLI's `--help`, the checks that refuse
bad input and the fal path need none of it; a local run needs the model classes, never diffusers' or
transformers' pipelines.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from support.paths import CASES, FIXTURES, PASD, PASD_SDXL, ROOT, SD15

HEAVY = ("torch", "diffusers", "transformers", "safetensors")
# Libraries a run never uses; importing any of them (e.g. `from diffusers import StableDiffusionPipeline`) costs
# start-up for nothing.
# (torchvision is not listed: transformers' image_utils imports it whenever it is installed, which the prompt
# stage's classifier needs)
UNUSED_BY_A_RUN = ("diffusers.pipelines", "transformers.pipelines", "diffusers.loaders.single_file",
                   "diffusers.training_utils", "open_clip")


def imported_after(code: str) -> set[str]:
    """The modules loaded in a fresh interpreter (repository root on sys.path) once `code` has run."""
    script = "\n".join(["import json, sys", f"sys.path.insert(0, {str(ROOT)!r})", textwrap.dedent(code),
                        "print(json.dumps(sorted(sys.modules)))"])
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """Which of `names` (packages included with their submodules) are among `modules`."""
    return [name for name in names if any(m == name or m.startswith(name + ".") for m in modules)]


def test_comfyui_start_up_imports_no_engine_library():
    # as ComfyUI imports a custom node folder: a package named after the folder, from its __init__.py
    modules = imported_after(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("ComfyUI-PASD", {str(ROOT / "__init__.py")!r},
                                                      submodule_search_locations=[{str(ROOT)!r}])
        pack = importlib.util.module_from_spec(spec)
        sys.modules["ComfyUI-PASD"] = pack
        spec.loader.exec_module(pack)
        assert len(pack.NODE_CLASS_MAPPINGS) == 7  # exact engine, fal, the native adapter nodes and PASD Prompt
        for node in pack.NODE_CLASS_MAPPINGS.values():
            node.INPUT_TYPES()  # what ComfyUI asks for every node when it lists them
    """)
    assert loaded(modules, (*HEAVY, "numpy", "PIL", "requests")) == []


def test_an_lcm_lora_on_pasd_sdxl_is_refused_before_torch_loads(tmp_path):
    modules = imported_after(f"""
        from pasd_core.__main__ import main
        code = main(["upscale", {str(FIXTURES / "cases" / CASES[0] / "input.png")!r}, "-o", {str(tmp_path / "o.png")!r},
                     "--base-model", {str(SD15)!r}, "--pasd-model", {str(PASD_SDXL)!r},
                     "--lcm-lora", {str(tmp_path / "lcm.safetensors")!r}])
        assert code == 2, code
    """)
    assert loaded(modules, HEAVY) == []


def test_cli_help_imports_no_engine_library():
    modules = imported_after("""
        from pasd_core.__main__ import main
        try:
            main(["upscale", "--help"])
        except SystemExit as exit:
            assert exit.code == 0
    """)
    assert "pasd_core.__main__" in modules
    assert loaded(modules, (*HEAVY, "numpy", "PIL", "requests")) == []


def test_bad_input_is_refused_before_torch_loads(tmp_path):
    # every check that needs no model runs first, the checkpoint's family included: refused in a blink
    output = tmp_path / "out.png"
    modules = imported_after(f"""
        from pasd_core.__main__ import main
        code = main(["upscale", {str(FIXTURES / "cases" / CASES[0] / "input.png")!r}, "-o", {str(output)!r},
                     "--base-model", {str(SD15)!r}, "--pasd-model", {str(PASD)!r}, "--scale", "4",
                     "--process-size", "4096", "--latent-tile-size", "16", "--steps", "50"])
        assert code == 2, code
    """)
    assert "pasd_core.weights.pasd_folder" in modules  # the family was read from the checkpoint
    assert loaded(modules, HEAVY) == []
    assert not output.exists()


def test_fal_path_imports_no_torch():
    modules = imported_after("import pasd_core.fal")
    assert loaded(modules, HEAVY) == []


def test_local_run_imports_no_pipelines_of_the_libraries(tmp_path):
    output = tmp_path / "out.png"
    modules = imported_after(f"""
        from pasd_core.__main__ import main
        code = main(["upscale", {str(FIXTURES / "cases" / CASES[0] / "input.png")!r}, "-o", {str(output)!r},
                     "--base-model", {str(SD15)!r}, "--pasd-model", {str(PASD)!r}, "--process-size", "64",
                     "--steps", "10", "--scale", "1", "--high-level-info", "none"])
        assert code == 0, code
    """)
    assert output.is_file()
    assert {"diffusers", "transformers"} <= modules  # the check below is not vacuous: the run did load the engine
    assert loaded(modules, UNUSED_BY_A_RUN) == []
