"""The prompt stage's models: the CoCa captioner gives the official captions (open_clip's CoCa.generate beam search
with transformers 4.44.2's scorer, reproduced without transformers), the ResNet-50 classifier the official class,
and broken or unsafe model folders are refused with a message that says what to do."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pasd_core.errors import ModelError
from pasd_core.prompt.folders import CAPTIONER, CAPTIONER_CONFIG, CATEGORIES_FILE, CLASSIFIER, CLASSIFIER_WEIGHTS
from pasd_core.prompt.models import load_captioner, load_classifier
from pasd_core.prompt.search import decode_caption, generate_caption_tokens
from support.coca_reference import FullRecompute
from support.paths import ROOT, TINY_COCA, case_data
from support.seeding import numpy_noise

CAPTION_CASES = ["P1_sd15_caption", "P2_sdxl_caption_prompt", "P5_color_caption", "P7_sd15_caption_tiled"]
CLASSIFICATION_CASES = ["P3_classification_above", "P4_classification_below"]
EOS = 49407

# Token lists of open_clip 3.3.0's real `model.generate(image)` (defaults) under transformers 4.44.2 and torch 2.14.1
# (CPU, fp32), for `seeded_coca(seed, eos_gain)` and `seeded_image(seed)` below; recorded in the official venv with
# this file imported (pytest stubbed: sys.modules["pytest"] = unittest.mock.MagicMock()) and
#   model = seeded_coca(seed, eos_gain); model.generate(seeded_image(seed))[0].tolist()
# Each stays the same under 1e-5 relative noise on every weight (no near-ties), and each takes a path of the search
# the official fixtures' captions may not.
SEARCH_REFERENCES = {
    # no <end_of_text> ever in the top candidates: the open beams decide
    (0, 1.0): [49406, 45203, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 20695,
        20695, 45203, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 45203, 45203, 45581, 20695, 20695],
    # finished captions that lose to an open beam at the limit
    (3, 5.0): [49406, 28530, 46063, 19468, 19468, 19468, 25014, 46063, 19468, 26344, 25014, 25014, 36733, 47339, 48463,
        32910, 47339, 15124, 36733, 15537, 32910, 23283, 24139, 1318, 37800, 25014, 15124, 46063, 25014, 5684],
    # a finished caption that wins at the length limit
    (0, 4.0): [49406, 45203, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 20695,
        20695, 45203, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 45203, 45203, 45581, 49407],
    # groups full of finished captions before the limit (early stop)
    (0, 6.0): [49406, 45203, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 20695, 20695,
        49407],
    # the shortest caption min_seq_len allows
    (0, 8.0): [49406, 45203, 20695, 20695, 20695, 49407],
}


def seeded_coca_state(model: torch.nn.Module, seed: int, eos_gain: float) -> dict[str, torch.Tensor]:
    """Every tensor of the tiny CoCa drawn from numpy's default_rng(seed) (the same on any machine), norm weights
    around 1; the decoder's <end_of_text> column scaled by `eos_gain` so captions end at different lengths."""
    state = {}
    for key, tensor, noise in numpy_noise(model.state_dict().items(), seed):
        values = noise * 0.5
        if key.endswith(".weight") and tensor.ndim == 1:  # LayerNorm scales
            values = 1.0 + 0.2 * values
        state[key] = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    state["text_decoder.text_projection"][:, EOS] *= eos_gain
    return state


def tiny_coca_config() -> dict:
    return json.loads((TINY_COCA / CAPTIONER_CONFIG).read_text())


def seeded_coca(seed: int, eos_gain: float) -> torch.nn.Module:
    import open_clip

    cfg = {k: v for k, v in tiny_coca_config()["model_cfg"].items() if k != "custom_text"}
    model = open_clip.CoCa(**cfg)
    model.load_state_dict(seeded_coca_state(model, seed, eos_gain))
    return model.eval()


def seeded_image(seed: int) -> torch.Tensor:
    """A preprocessed-looking image tensor (1, 3, 32, 32)."""
    values = np.random.default_rng(1000 + seed).standard_normal((1, 3, 32, 32))
    return torch.from_numpy(values.astype(np.float32))


def write_captioner(folder: Path, state: dict[str, torch.Tensor], name: str = "open_clip_model.safetensors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(TINY_COCA / CAPTIONER_CONFIG, folder / CAPTIONER_CONFIG)
    save_file(state, str(folder / name))
    return folder


def case_image(name: str) -> Image.Image:
    """What the official scripts describe: the input as opened, in RGB (its luminance for colorization)."""
    data = case_data(name)
    image = Image.open(data["dir"] / "input.png").convert("RGB")
    return image.convert("L").convert("RGB") if data["params"].get("control_type") == "grayscale" else image


# --- captions: the official ones ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def captioner():
    return load_captioner(TINY_COCA)


@pytest.mark.parametrize("name", CAPTION_CASES)
def test_caption_is_the_official_scripts_caption(captioner, name):
    """The tokens and text the unmodified test_pasd*.py produced with this folder (open_clip 3.3.0, transformers
    4.44.2); P2 runs into the 30-token limit, the others end with <end_of_text>."""
    data = case_data(name)
    image = case_image(name)
    tokens = generate_caption_tokens(captioner.model, captioner.preprocess(image).unsqueeze(0))
    assert tokens == data["caption_tokens"]
    assert captioner.caption(image) == data["caption"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_image_encoded_once_gives_every_beam_what_open_clips_batch_of_copies_gives(seed):
    """The search encodes the image once and shares it; open_clip's generate encodes one copy per beam. Bit-identical
    here (one process, one machine); the captions above and the seeded searches against open_clip's generate check
    the tokens across machines."""
    from pasd_core.prompt.open_clip_coca import image_embeddings

    model, image = seeded_coca(seed, 0.0), seeded_image(seed)
    with torch.no_grad():
        once = torch.repeat_interleave(image_embeddings(model, image), 6, dim=0)
        copies = image_embeddings(model, torch.repeat_interleave(image, 6, dim=0))
    assert torch.equal(once, copies)


@pytest.mark.parametrize("eos_gain", [0.0, 1.5, 3.0])  # no end, some beams ending (padding after), early ends
def test_the_cached_decoder_gives_the_full_recomputes_tokens(monkeypatch, eos_gain):
    """Token for token, over seeded models whose searches end early, late or never (finished groups run on padding,
    which the text tower's mask hides)."""
    from pasd_core.prompt import search

    for seed in range(12):
        model, image = seeded_coca(seed, eos_gain), seeded_image(seed)
        cached = generate_caption_tokens(model, image)
        with monkeypatch.context() as patch:
            patch.setattr(search, "CachedDecoder", FullRecompute)
            assert generate_caption_tokens(model, image) == cached, seed


def test_the_cached_logits_match_the_full_recompute_to_float_rounding():
    """Measured here: at most 4e-6 apart on logits of size 10 (only the order of the attention's sums differs); the
    tolerance leaves 25x of room for another CPU's rounding."""
    from pasd_core.prompt.coca_cache import CachedDecoder
    from pasd_core.prompt.open_clip_coca import image_embeddings, next_token_logits

    model, image = seeded_coca(3, 0.0), seeded_image(3)
    tokens = torch.tensor([[49406, 320, 0, 1125, 0, 0, 530]] * 2)  # with padding ids, which the mask hides
    with torch.no_grad():
        embs = torch.repeat_interleave(image_embeddings(model, image), 2, dim=0)
        decoder = CachedDecoder(model, embs, model.pad_id)
        for length in range(1, tokens.shape[1] + 1):
            cached = decoder.step(tokens[:, length - 1])
            full = next_token_logits(model, embs, tokens[:, :length])
            assert torch.allclose(cached, full, rtol=0, atol=1e-4), length


def test_caption_is_deterministic_and_several_words(captioner):
    image = case_image("P1_sd15_caption")
    first = captioner.caption(image)
    assert first == captioner.caption(image)
    assert len(first.split()) >= 4


def test_decode_cuts_at_end_of_text_and_drops_start_of_text():
    # "a photo" and a token after <end_of_text> that must not show up
    assert decode_caption([49406, 320, 1125, EOS, 320]) == "a photo "


@pytest.mark.parametrize("seed, eos_gain", list(SEARCH_REFERENCES))
def test_beam_search_equals_open_clips_generate(seed, eos_gain):
    model = seeded_coca(seed, eos_gain)
    assert generate_caption_tokens(model, seeded_image(seed)) == SEARCH_REFERENCES[(seed, eos_gain)]


def test_beam_search_checks_its_arguments():
    model = seeded_coca(0, 1.0)
    with pytest.raises(ValueError, match="seq_len"):
        generate_caption_tokens(model, seeded_image(0), seq_len=5)
    with pytest.raises(ValueError, match="one preprocessed image"):
        generate_caption_tokens(model, torch.zeros(2, 3, 32, 32))


def test_captioner_counts_its_weights_and_loads_in_fp32_eval_mode(captioner):
    expected = sum(t.numel() * t.element_size() for t in [*captioner.model.parameters(), *captioner.model.buffers()])
    assert captioner.weight_bytes() == expected
    assert next(captioner.model.parameters()).dtype == torch.float32 and not captioner.model.training


# --- classification: the official class ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", CLASSIFICATION_CASES)
def test_classification_is_the_official_scripts_class(tiny_classifier, name):
    expected = case_data(name)["classification"]
    category, score = load_classifier(tiny_classifier).classify(case_image(name))
    assert category == expected["category"]
    assert score == pytest.approx(expected["score"], abs=1e-5)


# --- folders: found by their marker files, refused when broken ----------------------------------------------------

def test_marker_files_tell_the_folders_apart(tmp_path):
    assert CAPTIONER.is_folder(TINY_COCA) and not CLASSIFIER.is_folder(TINY_COCA)
    (tmp_path / CLASSIFIER_WEIGHTS).write_bytes(b"")
    assert not CLASSIFIER.is_folder(tmp_path)
    (tmp_path / CATEGORIES_FILE).write_text("cat\n")
    assert CLASSIFIER.is_folder(tmp_path) and not CAPTIONER.is_folder(tmp_path)


def test_loading_module_imports_no_torch():
    script = "import sys, pasd_core.prompt.models; print(sorted({'torch', 'open_clip'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


def test_captioner_without_config_is_refused(tmp_path):
    shutil.copy(TINY_COCA / "open_clip_model.safetensors", tmp_path / "open_clip_model.safetensors")
    with pytest.raises(ModelError, match=f"{CAPTIONER_CONFIG} is missing.*download --captioner"):
        load_captioner(tmp_path)


def test_missing_captioner_folder_is_refused(tmp_path):
    with pytest.raises(ModelError, match="does not exist.*download --captioner"):
        load_captioner(tmp_path / "coca")


def test_captioner_without_weights_is_refused(tmp_path):
    shutil.copy(TINY_COCA / CAPTIONER_CONFIG, tmp_path / CAPTIONER_CONFIG)
    with pytest.raises(ModelError, match="no captioner weights.*open_clip_pytorch_model.bin.*download --captioner"):
        load_captioner(tmp_path)


class _RunsCode:
    """Unpickling this calls print: the kind of object weights_only refuses."""

    def __reduce__(self):
        return print, ("unpickled",)


def test_pickled_weights_that_need_code_are_refused(tmp_path, capsys):
    shutil.copy(TINY_COCA / CAPTIONER_CONFIG, tmp_path / CAPTIONER_CONFIG)
    torch.save({"logit_scale": torch.ones(()), "extra": _RunsCode()}, tmp_path / "open_clip_pytorch_model.bin")
    with pytest.raises(ModelError, match="open_clip_pytorch_model.bin holds Python objects.*safetensors"):
        load_captioner(tmp_path)
    assert "unpickled" not in capsys.readouterr().out


def test_plain_pickled_weights_load_like_safetensors(tmp_path, captioner):
    """The published CoCa is a .bin of plain tensors: torch.load(weights_only=True) reads it."""
    state = {k: v.clone() for k, v in captioner.model.state_dict().items() if "attn_mask" not in k}
    shutil.copy(TINY_COCA / CAPTIONER_CONFIG, tmp_path / CAPTIONER_CONFIG)
    torch.save(state, tmp_path / "open_clip_pytorch_model.bin")
    image = case_image("P7_sd15_caption_tiled")
    assert load_captioner(tmp_path).caption(image) == case_data("P7_sd15_caption_tiled")["caption"]


def test_captioner_weights_of_another_model_are_refused(tmp_path, captioner):
    state = {k: v for k, v in captioner.model.state_dict().items() if "attn_mask" not in k}
    state["visual.extra.weight"] = state.pop("visual.conv1.weight")
    write_captioner(tmp_path, state)
    with pytest.raises(ModelError, match=r"does not fit open_clip_config.json: 1 missing.*visual.conv1.weight.*"
                                         r"visual.extra.weight"):
        load_captioner(tmp_path)


def test_captioner_weights_of_another_size_are_refused(tmp_path, captioner):
    state = {k: v for k, v in captioner.model.state_dict().items() if "attn_mask" not in k}
    state["text.token_embedding.weight"] = torch.zeros(49408, 32)
    write_captioner(tmp_path, state)
    with pytest.raises(ModelError, match="does not fit open_clip_config.json.*token_embedding"):
        load_captioner(tmp_path)


def test_damaged_captioner_weights_are_refused(tmp_path):
    shutil.copy(TINY_COCA / CAPTIONER_CONFIG, tmp_path / CAPTIONER_CONFIG)
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="not a readable .safetensors file.*download --captioner"):
        load_captioner(tmp_path)


def test_config_that_is_not_coca_is_refused(tmp_path):
    (tmp_path / CAPTIONER_CONFIG).write_text(json.dumps({"model_cfg": {"embed_dim": 16, "vision_cfg": {},
                                                                       "text_cfg": {}}}))
    with pytest.raises(ModelError, match="not an open_clip CoCa config"):
        load_captioner(tmp_path)


def _classifier_folder(folder: Path, classes: int, categories: int | None) -> Path:
    """A classifier folder whose weights hold only the head (enough for the checks made before the model is built)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"fc.weight": torch.zeros(classes, 2048), "fc.bias": torch.zeros(classes)},
              str(folder / CLASSIFIER_WEIGHTS))
    if categories is not None:
        (folder / CATEGORIES_FILE).write_text("".join(f"class {i}\n" for i in range(categories)))
    return folder


def test_classifier_without_categories_is_refused(tmp_path):
    with pytest.raises(ModelError, match=f"no {CATEGORIES_FILE}.*download --classifier"):
        load_classifier(_classifier_folder(tmp_path, 3, None))


def test_classifier_with_another_category_count_is_refused(tmp_path):
    with pytest.raises(ModelError, match="names 4 categories.*classifies into 3.*download --classifier"):
        load_classifier(_classifier_folder(tmp_path, 3, 4))


def test_classifier_weights_of_another_model_are_refused(tmp_path):
    with pytest.raises(ModelError, match=r"does not fit torchvision's resnet50: \d+ missing weights.*conv1.weight"):
        load_classifier(_classifier_folder(tmp_path, 3, 3))
    save_file({"head.weight": torch.zeros(3, 2048)}, str(tmp_path / CLASSIFIER_WEIGHTS))
    with pytest.raises(ModelError, match="not a torchvision ResNet-50 state dict"):
        load_classifier(tmp_path)


def test_damaged_or_pickled_classifier_weights_are_refused(tmp_path):
    folder = _classifier_folder(tmp_path, 3, 3)
    torch.save({"fc.weight": torch.zeros(3, 2048)}, folder / CLASSIFIER_WEIGHTS)  # a pickle under the safetensors name
    with pytest.raises(ModelError, match="not a readable .safetensors file.*download --classifier"):
        load_classifier(folder)
    (folder / CLASSIFIER_WEIGHTS).rename(folder / "resnet50-11ad3fa6.pth")
    with pytest.raises(ModelError, match=f"expected {CLASSIFIER_WEIGHTS}; it holds resnet50-11ad3fa6.pth, a pickled"):
        load_classifier(folder)


def test_classifier_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "resnet50").write_text("")
    with pytest.raises(ModelError, match="is a file, not a folder.*download --classifier"):
        load_classifier(tmp_path / "resnet50")


def test_legacy_pickle_with_code_is_refused_unrun(tmp_path, capsys):
    with open(tmp_path / "open_clip_pytorch_model.bin", "wb") as handle:
        pickle.dump({"w": _RunsCode()}, handle, protocol=2)
    shutil.copy(TINY_COCA / CAPTIONER_CONFIG, tmp_path / CAPTIONER_CONFIG)
    with pytest.raises(ModelError):
        load_captioner(tmp_path)
    assert "unpickled" not in capsys.readouterr().out
