"""The ComfyUI side of the tests: the pack as ComfyUI imports it, the tiny models laid out as a ComfyUI models
folder, fakes of ComfyUI's modules and of the engine, and the UI-format → API-format workflow converter. Importing
this module loads no heavy module (the pack's import-cost test relies on it).

`python tools/write_api_workflows.py` rewrites example_workflows/api/*.json from the UI workflows with it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.paths import CHECKPOINTS, PROMPT_CHECKPOINTS, ROOT, SDXL_CHECKPOINTS

WORKFLOWS = ROOT / "example_workflows"  # ComfyUI lists a custom node's example_workflows/*.json as templates
API_WORKFLOWS = WORKFLOWS / "api"  # a subfolder: served, but not listed as templates
# The exact-engine templates, by the short names the tests use. A file name is the title ComfyUI's template browser
# shows (and <name>.jpg its thumbnail, made by tools/make_thumbnails.py).
SHIPPED = {
    "pasd_upscale_x2": "PASD (start here) SD1.5 upscale x2 (exact engine)",
    "pasd_sdxl_upscale_x2": "PASD SDXL upscale x2 (exact engine)",
    "pasd_batch": "PASD SD1.5 batch upscale (exact engine)",
    "pasd_upscale_then_stylize": "PASD SD1.5 upscale then ToonYou stylization (exact engine)",
    "pasd_upscale_fal": "PASD on fal.ai (hosted, no GPU)",
    "pasd_sdxl_fal_vs_local": "PASD SDXL on fal.ai vs local (exact engine)",
    "pasd_colorize": "PASD SD1.5 colorize (exact engine)",
}
# The simplest starter sorts first: ComfyUI 0.38 lists a pack's templates by sorted file name (0.3.64 in the order
# its glob finds them, which the file system decides); "(" sorts before every letter.
STARTER = SHIPPED["pasd_upscale_x2"]
NATIVE_MARK = "(native)"  # the native templates' file names end so (tests/test_workflows.py checks them)
PACK_NAME = "ComfyUI-PASD"  # ComfyUI imports a custom node folder under its folder name

# What the workflows need of ComfyUI's own nodes (checked against a real ComfyUI's /object_info by the E2E tests).
CORE_NODES: dict[str, dict[str, Any]] = {
    "LoadImage": {"input": {"required": {"image": ([], {"image_upload": True})}},
                  "output": ["IMAGE", "MASK"], "display_name": "Load Image"},
    "SaveImage": {"input": {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}},
                  "output": [], "display_name": "Save Image"},
    "ImageBatch": {"input": {"required": {"image1": ("IMAGE",), "image2": ("IMAGE",)}}, "output": ["IMAGE"],
                   "display_name": "Batch Images"},
    # the native templates' graph around PASD Apply
    "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": ([],)}}, "output": ["MODEL", "CLIP", "VAE"],
                               "display_name": "Load Checkpoint"},
    "LoraLoader": {"input": {"required": {"model": ("MODEL",), "clip": ("CLIP",), "lora_name": ([],),
                                          "strength_model": ("FLOAT", {"default": 1.0}),
                                          "strength_clip": ("FLOAT", {"default": 1.0})}},
                   "output": ["MODEL", "CLIP"], "display_name": "Load LoRA"},
    "CLIPTextEncode": {"input": {"required": {"text": ("STRING", {"multiline": True}), "clip": ("CLIP",)}},
                       "output": ["CONDITIONING"], "display_name": "CLIP Text Encode (Prompt)"},
    "KSampler": {"input": {"required": {
        "model": ("MODEL",), "seed": ("INT", {"control_after_generate": True}), "steps": ("INT", {"default": 20}),
        "cfg": ("FLOAT", {"default": 8.0}), "sampler_name": ([],), "scheduler": ([],), "positive": ("CONDITIONING",),
        "negative": ("CONDITIONING",), "latent_image": ("LATENT",), "denoise": ("FLOAT", {"default": 1.0})}},
        "output": ["LATENT"], "display_name": "KSampler"},
    "VAEDecode": {"input": {"required": {"samples": ("LATENT",), "vae": ("VAE",)}}, "output": ["IMAGE"],
                  "display_name": "VAE Decode"},
    # the native SDXL template's optional refiner group (test_pasd_sdxl.py --use_refiner in core nodes)
    "VAEEncode": {"input": {"required": {"pixels": ("IMAGE",), "vae": ("VAE",)}}, "output": ["LATENT"],
                  "display_name": "VAE Encode"},
    "CLIPTextEncodeSDXLRefiner": {"input": {"required": {
        "ascore": ("FLOAT", {"default": 6.0}), "width": ("INT", {"default": 1024}),
        "height": ("INT", {"default": 1024}), "text": ("STRING", {"multiline": True}), "clip": ("CLIP",)}},
        "output": ["CONDITIONING"], "display_name": None},  # a V3 node that declares none: give it a title
    "GetImageSize": {"input": {"required": {"image": ("IMAGE",)}}, "output": ["INT", "INT", "INT"],
                     "display_name": "Get Image Size"},
    # the exact templates show PASD Upscale's caption output in it
    # (its front end adds a "preview" text widget, which it saves and sends with the prompt)
    "PreviewAny": {"input": {"required": {"source": ("*", {})}}, "output": [], "display_name": "Preview Any",
                   "frontend_widgets": ("preview",)},
}
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
# Nodes of the front end alone (isVirtualNode): saved in UI workflows, never sent to the server in a prompt.
FRONTEND_ONLY_NODES = ("Note", "MarkdownNote")


def load_pack() -> Any:
    """The repository imported the way ComfyUI imports a custom node folder (a package named after it)."""
    if PACK_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK_NAME, ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)
    return sys.modules[PACK_NAME]


def pack_module(name: str) -> Any:
    """A submodule of the pack, e.g. pack_module("nodes.exact") or pack_module("pasd_core.errors")."""
    load_pack()
    return importlib.import_module(f"{PACK_NAME}.{name}")


def make_models_dir(root: Path, *, sdxl: bool = False, captioner: bool = False, color: bool = False) -> Path:
    """A ComfyUI models folder whose pasd/ and diffusers/ point at the tiny official-layout checkpoints.

    With `sdxl`, also the tiny PASD-SDXL models where the download puts them: models/pasd/pasd_sdxl/checkpoint-200000
    and models/diffusers/stable-diffusion-xl-base-1.0. With `captioner`, the tiny CoCa as
    models/pasd_prompt/coca_tiny; with `color`, the tiny colour checkpoint and its scheduler/ as
    models/pasd/pasd_light_color/ (where the download puts the real one).
    """
    for name in ("pasd", "diffusers", "checkpoints", "loras", "vae", "pasd_prompt"):
        (root / name).mkdir(parents=True, exist_ok=True)
    if captioner:
        (root / "pasd_prompt" / "coca_tiny").symlink_to(PROMPT_CHECKPOINTS / "pasd_prompt" / "coca_tiny",
                                                        target_is_directory=True)
    if color:
        (root / "pasd" / "pasd_light_color").symlink_to(PROMPT_CHECKPOINTS / "pasd_color", target_is_directory=True)
    for variant in ("pasd", "pasd_light"):
        (root / "pasd" / variant).symlink_to(CHECKPOINTS / variant, target_is_directory=True)
    (root / "diffusers" / "stable-diffusion-v1-5").symlink_to(CHECKPOINTS / "stable-diffusion-v1-5",
                                                             target_is_directory=True)
    if sdxl:
        (root / "pasd" / "pasd_sdxl").symlink_to(SDXL_CHECKPOINTS / "pasd_sdxl", target_is_directory=True)
        (root / "diffusers" / "stable-diffusion-xl-base-1.0").symlink_to(
            SDXL_CHECKPOINTS / "stable-diffusion-xl-base-1.0", target_is_directory=True)
    return root


# --- fakes of ComfyUI and of the engine ------------------------------------------------------------

class FakeComfyUI:
    """Just enough of folder_paths, comfy.model_management and comfy.utils to watch the pack use them.

    `host` adds ComfyUI's model manager: "0.3.64" (ModelPatcher) or "0.38" (CoreModelPatcher, a dynamic patcher
    with is_dynamic() and cached_patcher_init, as Dynamic VRAM makes it on NVIDIA); `interrupt_base` is what the
    host's InterruptProcessingException derives from (Exception on 0.3.64, BaseException on 0.38).
    """

    def __init__(self, models_dir: Path, host: str | None = None,
                 interrupt_base: type[BaseException] = Exception) -> None:
        self.host, self.interrupt_base = host, interrupt_base
        self.loaded: list[Any] = []  # the model manager's current_loaded_models, newest first
        self.loads: list[Any] = []  # every patcher.load: weights moved to the device
        self.load_calls: list[dict] = []  # every load_models_gpu call
        self.calls: list[str] = []
        self.ticks = 0
        self.bar_totals: list[int] = []
        self.interrupt = False
        self.interrupt_after: int | None = None  # press cancel after this many progress ticks
        self.device = "cpu"  # what --cpu or a GPU would make get_torch_device() answer
        self.high_vram = False
        self.folder_paths = self._folder_paths(models_dir)
        self.model_management = self._model_management()
        self.utils = self._utils()
        self.model_patcher = self._model_patcher() if host else None

    def install(self, monkeypatch: Any) -> FakeComfyUI:
        """Put the fakes in sys.modules for one test (`monkeypatch` is pytest's fixture)."""
        monkeypatch.setitem(sys.modules, "folder_paths", self.folder_paths)
        comfy = types.ModuleType("comfy")
        monkeypatch.setitem(sys.modules, "comfy", comfy)
        submodules = {"model_management": self.model_management, "utils": self.utils,
                      "model_patcher": self.model_patcher}
        for name, module in submodules.items():
            if module is not None:  # `import comfy.x` binds x on the package, as Python does for real modules
                monkeypatch.setitem(sys.modules, f"comfy.{name}", module)
                setattr(comfy, name, module)
        return self

    def _folder_paths(self, models_dir: Path) -> types.ModuleType:
        module = types.ModuleType("folder_paths")
        module.models_dir = str(models_dir)
        module.folder_names_and_paths = {
            kind: ([str(models_dir / kind)], {".safetensors", ".ckpt"}) for kind in ("checkpoints", "loras", "vae")}
        module.folder_names_and_paths["diffusers"] = ([str(models_dir / "diffusers")], ["folder"])

        def add_model_folder_path(name: str, path: str, is_default: bool = False) -> None:
            paths = module.folder_names_and_paths.setdefault(name, ([], set()))[0]
            if path not in paths:
                paths.insert(0, path) if is_default else paths.append(path)

        def get_filename_list(name: str) -> list[str]:
            folders, extensions = module.folder_names_and_paths[name]
            return sorted(str(p.relative_to(folder)) for folder in map(Path, folders) if folder.is_dir()
                          for p in folder.rglob("*") if p.suffix in extensions)

        module.add_model_folder_path = add_model_folder_path
        module.get_folder_paths = lambda name: list(module.folder_names_and_paths[name][0])
        module.get_filename_list = get_filename_list
        return module

    def _model_management(self) -> types.ModuleType:
        import torch

        module = types.ModuleType("comfy.model_management")

        class InterruptProcessingException(self.interrupt_base):
            pass

        def record(name, result=None):
            return lambda *args, **kwargs: (self.calls.append(name), result)[1]

        def interrupt_current_processing(value: bool = True) -> None:
            self.interrupt = value

        module.InterruptProcessingException = InterruptProcessingException
        module.get_torch_device = lambda: torch.device(self.device)
        module.unet_offload_device = lambda: torch.device(self.device if self.high_vram else "cpu")
        module.unet_dtype = lambda device=None, supported_dtypes=(): torch.float32
        # free_memory only: no unload_all_models here, so a call to it (which evicts the user's graph) fails a test
        module.free_memory = lambda memory_required, device, keep_loaded=(): self.calls.append(
            ("free_memory", memory_required, str(device)))
        module.soft_empty_cache = record("soft_empty_cache")
        module.processing_interrupted = lambda: self.interrupt
        module.interrupt_current_processing = interrupt_current_processing
        if self.host:
            module.load_models_gpu = self._load_models_gpu
            module.current_loaded_models = self.loaded
        return module

    def _load_models_gpu(self, models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                         force_full_load=False) -> None:
        """As ComfyUI's: a model loaded already is not loaded again (a dynamic one re-uploads: counted apart)."""
        self.load_calls.append({"models": list(models), "memory_required": memory_required,
                                "force_full_load": force_full_load})
        for patcher in models:
            if getattr(patcher, "is_dynamic", lambda: False)() and force_full_load:
                raise AssertionError("a dynamic patcher asserts not full_load (0.38 ModelPatcherDynamic.load)")
            if patcher not in self.loaded:
                patcher.load(patcher.load_device)
                self.loaded.insert(0, patcher)

    def unload_all(self) -> None:
        """What ComfyUI does when another graph needs the whole device: every model back to its offload device."""
        for patcher in self.loaded:
            patcher.model.to(patcher.offload_device)
        self.loaded.clear()

    def _model_patcher(self) -> types.ModuleType:
        module = types.ModuleType("comfy.model_patcher")
        fake = self

        class ModelPatcher:
            def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
                self.model, self.load_device, self.offload_device = model, load_device, offload_device
                if fake.host == "0.38":
                    self.cached_patcher_init = None

            def load(self, device) -> None:
                fake.loads.append(self)
                self.model.to(device)

        module.ModelPatcher = ModelPatcher
        if self.host == "0.38":
            ModelPatcher.is_dynamic = lambda self: False  # 0.3.64's patcher has no is_dynamic
            class ModelPatcherDynamic(ModelPatcher):
                def is_dynamic(self) -> bool:
                    return True

            module.ModelPatcherDynamic = ModelPatcherDynamic
            module.CoreModelPatcher = ModelPatcherDynamic  # what main.py rebinds it to under Dynamic VRAM
        return module

    def _utils(self) -> types.ModuleType:
        module = types.ModuleType("comfy.utils")
        fake = self

        class ProgressBar:
            def __init__(self, total: int) -> None:
                self.total, self.current = total, 0
                fake.bar_totals.append(total)

            def update_absolute(self, value: int, total: int | None = None) -> None:
                self.current, self.total = value, total or self.total
                fake.ticks += 1
                if fake.interrupt_after is not None and fake.ticks >= fake.interrupt_after:
                    fake.interrupt = True

            def update(self, value: int) -> None:
                self.update_absolute(self.current + value)

        module.ProgressBar = ProgressBar
        return module


class FakePromptStage:
    """Stands in for PromptStage: `loaded` says which high_level_info modes have their model; the refusal is the
    real one's."""

    def __init__(self, loaded: tuple[str, ...] = ("caption", "classification", "none")) -> None:
        self.loaded = loaded

    def needs(self, high_level_info: str) -> None:
        if high_level_info not in self.loaded:
            pack_module("pasd_core.prompt.stage").PromptStage().needs(high_level_info)

    def describe(self, image: Any, settings: Any, device: Any) -> Any:
        description = f"a fake caption of a {image.width}x{image.height} picture"
        mode = settings.high_level_info
        return pack_module("pasd_core.prompt.stage").run_prompt(settings, description if mode != "none" else "",
                                                                1.0 if mode == "classification" else None)


class FakePipeline:
    """Stands in for PASDPipeline: plans as the real one does, records each image's settings, makes `steps` progress
    calls per image, honours should_stop; its prompt stage describes each picture by its size (`loaded`: the
    high_level_info modes whose model it has)."""

    def __init__(self, steps: int = 3, sizes: list[tuple[int, int]] | None = None,
                 loaded: tuple[str, ...] = ("caption", "classification", "none")) -> None:
        import torch

        self.prompt_stage = FakePromptStage(loaded)
        self.prompts: list[Any] = []  # the prompt each upscale call was given
        self.described: list[dict] = []  # the settings of each describe call
        self.device = torch.device("cpu")
        self.family = "sd15"  # a PASD-SD1.5 model: `auto` settings resolve to test_pasd.py's defaults
        self.lcm = False  # no LCM-LoRA: the normal steps and guidance ranges
        self.steps, self.sizes = steps, sizes
        self.settings: list[dict] = []  # the settings of each image upscaled

    def plan(self, settings):
        plans = pack_module("pasd_core.engine.plan")
        if isinstance(settings, plans.RunPlan):
            return settings
        plan = plans.RunPlan.build(settings, family=self.family, lcm=self.lcm)
        self.prompt_stage.needs(plan["high_level_info"])
        return plan

    def count_steps(self, width: int, height: int, plan) -> int:
        return self.steps

    def describe(self, image, plan):
        self.described.append(dict(plan))
        return self.prompt_stage.describe(image, plan.prompt_settings, self.device)

    def upscale_batch(self, images, plan, *, before_sampling=None, on_step=None, should_stop=None):
        plan = self.plan(plan)
        plans = [plan.for_image(index) for index in range(len(images))]
        prompts = [self.describe(image, each) for image, each in zip(images, plans, strict=True)]
        if before_sampling is not None:
            before_sampling(prompts)
        return [self._upscale(image, each, prompt, on_step, should_stop)
                for image, each, prompt in zip(images, plans, prompts, strict=True)], prompts

    def _upscale(self, image, settings, prompt, on_step, should_stop):
        self.prompts.append(prompt)
        self.settings.append(dict(settings))
        for _ in range(self.steps):
            if should_stop is not None and should_stop():
                raise pack_module("pasd_core.errors").Interrupted("stopped")
            on_step()
        size = self.sizes[len(self.settings) - 1] if self.sizes else (image.width * settings["scale"],
                                                                      image.height * settings["scale"])
        return image.resize(size)


# --- workflows ----------------------------------------------------------------------------------

def ui_workflows() -> dict[str, dict[str, Any]]:
    """Every template, by file name (SHIPPED[short name] for the exact-engine ones)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(WORKFLOWS.glob("*.json"))}


def api_workflows() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(API_WORKFLOWS.glob("*.json"))}


def native_templates() -> dict[str, dict[str, Any]]:
    """The native templates (UI format) by file name without .json, as the template browser titles them."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(WORKFLOWS.glob(f"*{NATIVE_MARK}.json"))}


def native_api_templates() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(API_WORKFLOWS.glob(f"*{NATIVE_MARK}.json"))}


def declarations() -> dict[str, dict[str, Any]]:
    """INPUT_TYPES and outputs of every node the workflows may use: this pack's and the core ones above."""
    pack = load_pack()
    ours = {name: {"input": cls.INPUT_TYPES(), "output": list(cls.RETURN_TYPES),
                   "display_name": pack.NODE_DISPLAY_NAME_MAPPINGS[name]}
            for name, cls in pack.NODE_CLASS_MAPPINGS.items()}
    return {**CORE_NODES, **ours}


def input_type(spec: tuple) -> str:
    return "COMBO" if isinstance(spec[0], (list, tuple)) else spec[0]


def widget_slots(declaration: dict[str, Any]) -> list[str | None]:
    """Names of the node's widgets in the order the front end stores `widgets_values`.

    None marks a value that belongs to no input: the "control after generate" setting after a seed,
    the upload button after LoadImage's image. A widget the front end adds on its own (Preview Any's text) comes last.
    """
    slots: list[str | None] = []
    inputs = declaration["input"]
    for section in ("required", "optional"):
        for name, spec in inputs.get(section, {}).items():
            if input_type(spec) not in WIDGET_TYPES:
                continue
            options = spec[1] if len(spec) > 1 else {}
            slots.append(name)
            if options.get("control_after_generate") or options.get("image_upload"):
                slots.append(None)
    return slots + list(declaration.get("frontend_widgets", ()))


def newer_widget_defaults(declaration: dict[str, Any], node: dict[str, Any], slots: list[str | None]) -> list[Any]:
    """The defaults of the optional widgets a node gained after `node` was saved (none when it has every value)."""
    optional = declaration["input"].get("optional", {})
    newer = slots[len(node.get("widgets_values", [])):]
    if not newer or not all(name in optional for name in newer):
        return []
    # a widget's default, or a dropdown's first choice (the front end's default for a combo without one)
    return [optional[name][1]["default"] if "default" in optional[name][1] else optional[name][0][0]
            for name in newer]


def ui_to_api(workflow: dict[str, Any], nodes: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The API-format prompt (what POST /prompt takes) for a UI-format workflow, as the front end builds it. A
    workflow saved before a node gained optional widgets at its end has fewer values: those widgets keep their
    defaults, as the front end leaves a widget it has no saved value for."""
    nodes = declarations() if nodes is None else nodes
    links = {link[0]: link for link in workflow["links"]}
    prompt: dict[str, Any] = {}
    for node in sorted(workflow["nodes"], key=lambda n: n["id"]):
        if node.get("mode", 0) != 0 or node["type"] in FRONTEND_ONLY_NODES:
            continue
        slots = widget_slots(nodes[node["type"]])
        values = [*node.get("widgets_values", []), *newer_widget_defaults(nodes[node["type"]], node, slots)]
        if len(values) != len(slots):
            raise ValueError(f"node {node['id']} ({node['type']}) has {len(values)} widget values for "
                             f"{len(slots)} widgets {slots}")
        inputs: dict[str, Any] = {name: value for name, value in zip(slots, values, strict=True) if name is not None}
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                _id, origin, origin_slot, *_ = links[socket["link"]]
                inputs[socket["name"]] = [str(origin), origin_slot]
        title = node.get("title") or nodes[node["type"]]["display_name"]  # the front end's default title
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": title}}
    return prompt


def write_api_copies(convert: Callable[[dict[str, Any]], dict[str, Any]] = ui_to_api) -> None:
    API_WORKFLOWS.mkdir(exist_ok=True)
    for name, workflow in ui_workflows().items():
        (API_WORKFLOWS / f"{name}.json").write_text(json.dumps(convert(workflow), indent=2) + "\n")

