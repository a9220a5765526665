"""Everything this pack asks of open_clip, in one place: building CoCa, its eval transform, the decoder's next-token
logits, and the token decoder.

The official scripts call `CoCa.generate`, whose beam search needs transformers' BeamSearchScorer (gone in
transformers 5); search.py runs the same search on the calls below. They use CoCa's public towers (`visual`, `text`,
`text_decoder`), the way `CoCa.forward(image, text, output_labels=False)` composes them, so no private method is
needed. The oldest open_clip they are tested with is the lower bound in requirements.txt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# The official captioner's name in open_clip (test_pasd.py loads coca_ViT-L-14 / mscoco_finetuned_laion2B-s13B-b90k).
OFFICIAL_CAPTIONER = "coca_ViT-L-14"
# Its pretrained tag's preprocessing (open_clip's pretrained.py): OpenAI mean/std, bicubic, shortest-side, 224 px.
OFFICIAL_PREPROCESS = {"size": 224, "mean": [0.48145466, 0.4578275, 0.40821073],
                       "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic",
                       "resize_mode": "shortest"}
# The CoCa text tokens generate() starts and ends a caption with (open_clip's tokenizer).
START_OF_TEXT, END_OF_TEXT = 49406, 49407


class NotCoCaConfig(ValueError):
    """open_clip cannot build a CoCa from this config."""


def official_config() -> dict[str, Any]:
    """open_clip's own model config of the official captioner, and its pretrained preprocessing."""
    import open_clip

    return {"model_cfg": open_clip.get_model_config(OFFICIAL_CAPTIONER), "preprocess_cfg": dict(OFFICIAL_PREPROCESS)}


def build_coca(model_cfg: dict[str, Any]) -> torch.nn.Module:
    """An open_clip CoCa of this config on the meta device (weights are assigned afterwards); NotCoCaConfig when
    open_clip cannot build it."""
    import open_clip
    import torch

    cfg = {k: v for k, v in model_cfg.items() if k != "custom_text"}  # create_model's class switch, not an argument
    if "timm_model_name" in cfg["vision_cfg"]:  # the weights come from the file, as create_model does for a checkpoint
        cfg["vision_cfg"] = {**cfg["vision_cfg"], "timm_model_pretrained": False}
    try:
        with torch.device("meta"):
            return open_clip.CoCa(**cfg)
    except (TypeError, ValueError, KeyError, AssertionError) as error:
        raise NotCoCaConfig(f"{type(error).__name__}: {error}") from None


def build_masks(model: torch.nn.Module) -> None:
    """The causal attention masks, which are not weights (non-persistent buffers), made by open_clip's own builders
    on a model built on the meta device."""
    import torch

    for module in model.modules():
        mask = getattr(module, "attn_mask", None)
        if isinstance(mask, torch.Tensor) and mask.is_meta:
            builder = getattr(module, "build_causal_mask", None) or getattr(module, "build_attention_mask", None)
            if builder is not None:
                module.attn_mask = builder()


def eval_transform(model: torch.nn.Module, preprocess_cfg: dict[str, Any]) -> Any:
    """open_clip's eval transform as create_model_and_transforms builds it: its preprocessing defaults (those of the
    official mscoco_finetuned CoCa: OpenAI mean/std, bicubic, shortest-side resize) under the folder's values, and
    the size of the model's own image tower."""
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    merged = merge_preprocess_dict(PreprocessCfg(), preprocess_cfg)
    merged["size"] = model.visual.image_size
    return image_transform_v2(PreprocessCfg(**merged), is_train=False)


def image_embeddings(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The image tokens CoCa's text decoder attends to (the second output of its vision tower)."""
    return model.visual(images)[1]


def next_token_logits(model: torch.nn.Module, image_embs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The decoder's logits for the token after `tokens` ([beams, length] -> [beams, vocabulary]), as
    `CoCa.forward(images, tokens, output_labels=False)["logits"][:, -1]` computes them."""
    token_embs = model.text(tokens)[1]
    return model.text_decoder(image_embs, token_embs)[:, -1, :]


def pad_token(model: torch.nn.Module) -> int:
    """What generate() gives the beams of a group that has finished."""
    return model.pad_id


def decode(tokens: list[int]) -> str:
    """open_clip's decode of the token ids (every `</w>` becomes a space)."""
    import open_clip
    import torch

    return open_clip.decode(torch.tensor(tokens, dtype=torch.long))
