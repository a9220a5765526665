"""Tiny seeded CoCa captioner in open_clip's own local-dir format (test data only).

Run in an environment with open_clip_torch (3.3.0 was used). ``write_coca_folder(path)`` writes
``open_clip_config.json`` ({"model_cfg", "preprocess_cfg"}) and ``open_clip_model.safetensors``
with EVERY parameter drawn from ``np.random.default_rng(COCA_SEED)`` (open_clip leaves the
decoder's ``text_projection`` as torch.empty, so nothing may be left to open_clip's init), through
``support.seeding.numpy_noise`` (tests/ on sys.path, as tools/make_prompt_fixtures.py puts it).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

COCA_SEED = 7
W = 16
MODEL_CFG = {
    "embed_dim": W,
    "vision_cfg": {
        "image_size": 32,
        "layers": 1,
        "width": W,
        "head_width": 8,
        "patch_size": 8,
        "attentional_pool": True,
        "attn_pooler_heads": 2,
        "attn_pooler_queries": 8,
        "output_tokens": True,
    },
    "text_cfg": {
        "context_length": 76,
        "vocab_size": 49408,
        "width": W,
        "heads": 2,
        "layers": 1,
        "embed_cls": True,
        "output_tokens": True,
    },
    "multimodal_cfg": {
        "context_length": 76,
        "vocab_size": 49408,
        "width": W,
        "heads": 2,
        "layers": 1,
        "attn_pooler_heads": 2,
    },
    "custom_text": True,
}
# as open_clip's pretrained config of coca_ViT-L-14 / mscoco_finetuned_laion2b_s13b_b90k
# (OpenAI mean/std, bicubic, shortest), at this tiny model's image size
PREPROCESS_CFG = {
    "size": 32,
    "mode": "RGB",
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}
# BPE tokens whose decoder output columns are scaled up so that the words the official
# scripts replace show up in captions
BOOST_WORDS = ("blurry</w>", "noisy</w>", "painting</w>", "black</w>", "and</w>", "white</w>")

GAINS = dict(visual=3.0, cross=2.0, proj=4.0, boost=3.0, tok=1.0, eos=6.0, painting=1.6)


def _param_specs():
    from open_clip.coca_model import CoCa

    cfg = json.loads(json.dumps(MODEL_CFG))
    cfg.pop("custom_text")
    model = CoCa(**cfg)
    return model, [(k, tuple(v.shape)) for k, v in model.named_parameters()]


def seeded_coca_state_dict(seed=COCA_SEED, gains=None):
    from open_clip.tokenizer import _tokenizer

    from support.seeding import numpy_noise

    g = dict(GAINS, **(gains or {}))
    model, _ = _param_specs()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for key, parameter, n in numpy_noise(model.named_parameters(), seed):
        shape = tuple(parameter.shape)
        last = key.rsplit(".", 1)[-1]
        if key == "logit_scale":
            a = np.array(np.log(1 / 0.07))
        elif ("ln" in key.split(".")[-2] if "." in key else False) and last == "weight":
            a = 1.0 + 0.1 * n
        elif last == "bias" or last.endswith("_bias"):
            a = 0.05 * n
        elif key in ("text.cls_emb", "visual.class_embedding") or "positional_embedding" in key:
            a = 0.3 * n
        elif key == "visual.attn_pool.query":
            a = n
        elif key == "text.token_embedding.weight":
            a = g["tok"] * n
        elif key == "text_decoder.text_projection":
            a = n * g["proj"] / np.sqrt(shape[0])
            for word in BOOST_WORDS:
                a[:, _tokenizer.encoder[word]] *= g["boost"]
            a[:, _tokenizer.encoder["painting</w>"]] *= g["painting"]
            a[:, _tokenizer.encoder["<end_of_text>"]] *= g["eos"]
        elif key in ("visual.proj", "text.text_projection"):
            a = n / np.sqrt(shape[0])
        else:
            fan_in = int(np.prod(shape[1:]))
            a = n / np.sqrt(fan_in)
            if key.startswith("visual."):
                a = a * g["visual"]
            if key.startswith("text_decoder.cross_attn."):
                a = a * g["cross"]
        sd[key] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).reshape(shape)
    return sd


def write_coca_folder(path, seed=COCA_SEED, gains=None):
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}, f, indent=2)
    sd = seeded_coca_state_dict(seed, gains)
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(path, "open_clip_model.safetensors"))
    return path
