"""The prompt stage's two models, loaded offline from their folders the way the official scripts use them.

- The CoCa captioner: open_clip's CoCa built from the folder's `open_clip_config.json` (open_clip's hub format,
  `model_cfg` + `preprocess_cfg`) with its weights, and open_clip's eval transform for that preprocessing; it
  captions as test_pasd.py does (`model.generate(transform(image).unsqueeze(0))`, decoded and cut at <end_of_text>).
- The ResNet-50 classifier: torchvision's `resnet50` with the folder's `model.safetensors`, the IMAGENET1K_V2
  preprocessing (`ResNet50_Weights.DEFAULT.transforms()`, what the official uses) and `categories.txt`.

Weights are read by the one checkpoint reader (safetensors, or torch.load(weights_only=True)), the models built on
the meta device and the weights assigned, so nothing is initialised twice. torch, open_clip and torchvision are
imported only when a model loads: dropdowns list these folders by their marker files alone.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelError
from ..weights.reader import check_path, read_config, read_weights
from .folders import CAPTIONER, CAPTIONER_CONFIG, CAPTIONER_WEIGHTS, CATEGORIES_FILE, CLASSIFIER, CLASSIFIER_WEIGHTS

if TYPE_CHECKING:
    import torch
    from PIL import Image

_PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


class PromptModel:
    """A prompt-stage network in fp32 with the preprocessing the official scripts give it; it runs where its weights
    are (its prompt stage's placement puts them there)."""

    def __init__(self, model: torch.nn.Module, preprocess: Any) -> None:
        self.model, self.preprocess = model, preprocess

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in itertools.chain(self.model.parameters(), self.model.buffers()))

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """`image` preprocessed as a batch of one, on the model's device."""
        return self.preprocess(image).unsqueeze(0).to(next(self.model.parameters()).device)


class Captioner(PromptModel):
    """open_clip's CoCa with its eval transform; `caption` is the official generate-and-decode."""

    def caption(self, image: Image.Image) -> str:
        """The raw caption of a PIL RGB image (before the official word replacements)."""
        from .search import decode_caption, generate_caption_tokens

        return decode_caption(generate_caption_tokens(self.model, self.pixels(image)))


class Classifier(PromptModel):
    """torchvision's ResNet-50 with its preprocessing and category names; `classify` is the official top class."""

    def __init__(self, model: torch.nn.Module, preprocess: Any, categories: list[str]) -> None:
        super().__init__(model, preprocess)
        self.categories = categories

    def classify(self, image: Image.Image) -> tuple[str, float]:
        """The top category of a PIL RGB image and its softmax score."""
        import torch

        with torch.no_grad():
            prediction = self.model(self.pixels(image)).squeeze(0).softmax(0)
        class_id = prediction.argmax().item()
        return self.categories[class_id], prediction[class_id].item()


# --- loading -------------------------------------------------------------------------------------------------------

def load_captioner(folder: str | Path) -> Captioner:
    """The CoCa captioner of a folder with open_clip_config.json and open_clip weights, in fp32 on the CPU."""
    from . import open_clip_coca as coca

    folder, fix = Path(folder), CAPTIONER.fix
    check_path(folder, "CoCa captioner folder", folder=True, fix=fix)
    config_path = folder / CAPTIONER_CONFIG
    if not config_path.is_file():
        raise ModelError(f"{folder} is not a CoCa captioner folder: {CAPTIONER_CONFIG} is missing (found "
                         f"{_found(folder)}); {fix}")
    config = read_config(config_path)
    model_cfg = config.get("model_cfg") if isinstance(config, dict) else None
    if not isinstance(model_cfg, dict) or not all(
            isinstance(model_cfg.get(k), dict) for k in ("vision_cfg", "text_cfg", "multimodal_cfg")):
        raise ModelError(f"{config_path} is not an open_clip CoCa config: it needs a 'model_cfg' with vision_cfg, "
                         f"text_cfg and multimodal_cfg (open_clip's hub format); {fix}")
    if model_cfg["text_cfg"].get("hf_model_name"):
        raise ModelError(f"{config_path} describes a CoCa with a Hugging Face text model "
                         f"({model_cfg['text_cfg']['hf_model_name']}), which is not loaded offline; {fix}")
    weights = next((folder / name for name in CAPTIONER_WEIGHTS if (folder / name).is_file()), None)
    if weights is None:
        raise ModelError(f"no captioner weights in {folder}: expected {CAPTIONER_WEIGHTS[0]} or "
                         f"{CAPTIONER_WEIGHTS[-1]}; found {_found(folder)}; {fix}")
    state = _read(weights, "CoCa captioner weights", fix)
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel; open_clip strips it
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        model = coca.build_coca(model_cfg)
    except coca.NotCoCaConfig as error:
        raise ModelError(f"{config_path} is not a CoCa config open_clip can build ({error}); {fix}") from None
    _assign(model, state, weights, CAPTIONER_CONFIG, fix)
    coca.build_masks(model)
    model = _finished(model, weights)
    return Captioner(model, coca.eval_transform(model, config.get("preprocess_cfg") or {}))


def load_classifier(folder: str | Path) -> Classifier:
    """The ResNet-50 classifier of a folder with model.safetensors (torchvision keys) and categories.txt, in fp32 on
    the CPU."""
    import torch
    from torchvision.models import ResNet50_Weights, resnet50

    folder, fix = Path(folder), CLASSIFIER.fix
    check_path(folder, "ResNet-50 classifier folder", folder=True, fix=fix)
    weights = folder / CLASSIFIER_WEIGHTS
    if not weights.is_file():
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in _PICKLED_SUFFIXES)
        what = (f"it holds {', '.join(pickled)}, a pickled format this pack does not load for the classifier" if pickled
                else f"found {_found(folder)}")
        raise ModelError(f"no classifier weights in {folder}: expected {CLASSIFIER_WEIGHTS}; {what}; {fix}")
    categories_path = folder / CATEGORIES_FILE
    if not categories_path.is_file():
        raise ModelError(f"{folder} has no {CATEGORIES_FILE} (one category name per line, in the order of the "
                         f"model's outputs), so its classes cannot be named; {fix}")
    try:
        categories = [line.strip() for line in categories_path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise ModelError(f"cannot read {categories_path} ({error}); {fix}") from None
    categories = [name for name in categories if name]
    state = _read(weights, "ResNet-50 classifier weights", fix)
    head = state.get("fc.weight")
    if head is None or head.ndim != 2:
        raise ModelError(f"{weights} is not a torchvision ResNet-50 state dict (no fc.weight; its keys start with "
                         f"{sorted(state)[:3]}); {fix}")
    if len(categories) != head.shape[0]:
        raise ModelError(f"{categories_path} names {len(categories)} categories, but {weights} classifies into "
                         f"{head.shape[0]}: they do not belong together; {fix}")
    with torch.device("meta"):
        model = resnet50(num_classes=head.shape[0])
    _assign(model, state, weights, "torchvision's resnet50", fix)
    for module in model.modules():  # BatchNorm's step counters, which eval never reads and some exports omit
        counter = getattr(module, "num_batches_tracked", None)
        if isinstance(counter, torch.Tensor) and counter.is_meta:
            module.num_batches_tracked = torch.tensor(0, dtype=torch.long)
    return Classifier(_finished(model, weights), ResNet50_Weights.DEFAULT.transforms(), categories)


def _found(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir())
    return (", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")) or "an empty folder"


def _read(path: Path, what: str, fix: str) -> dict[str, torch.Tensor]:
    """The file's tensors, or the reader's ModelError (damaged, or pickled objects refused) with `fix` added."""
    try:
        return read_weights(path, what)
    except ModelError as error:
        raise ModelError(f"{error} Or {fix}") from None


def _assign(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path, config_name: str,
            fix: str) -> None:
    """Assign the weights to a model built on the meta device; every key must match (BatchNorm's step counters
    excepted)."""
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as error:  # shapes that do not fit the config
        detail = "; ".join(line.strip() for line in str(error).splitlines()[1:4])
        raise ModelError(f"{source} does not fit {config_name}: {detail}. Or {fix}") from None
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ModelError(
            f"{source} does not fit {config_name}: {len(missing)} missing weights (e.g. {missing[:3]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]}). It is not the model the "
            f"folder's config describes: {fix}")


def _finished(model: torch.nn.Module, source: Path) -> torch.nn.Module:
    """The model in fp32 eval mode once nothing of it is left on the meta device."""
    left = [name for name, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left:
        raise ModelError(f"{source} was loaded, but this open_clip/torchvision version builds parts it cannot fill "
                         f"({', '.join(left[:3])}): install the versions in requirements.txt.")
    return model.float().eval().requires_grad_(False)
