"""Deterministic tiny stand-ins for PASD's prompt-stage models (test data only).

``seeded_resnet50_state_dict(seed)`` makes weights for torchvision's real ``resnet50()``
architecture (1000 ImageNet classes, 25,557,032 parameters) from numpy's
``np.random.default_rng(seed)`` alone, so that the identical ~100 MB file can be rebuilt at test
time on any numpy/torch version instead of being committed. ``write_classifier_folder(path)``
writes ``model.safetensors`` (torchvision state-dict keys) and ``categories.txt`` (the 1000
ImageNet category names of ``ResNet50_Weights.DEFAULT.meta["categories"]``, one per line).

This module imports only numpy, torch and safetensors at top level (torchvision only inside
``imagenet_categories()``), so the project's own tests can import it.
"""

from __future__ import annotations

import os

import numpy as np
import torch

# The parity fixtures were made with these; keep them or the expected outputs no longer match.
CLASSIFIER_SEED = 50
# Multiplier of the fc weights (on top of the He scale): makes the softmax peaked enough that
# one fixture input gives a top score >= 0.1 and another one < 0.1.
CLASSIFIER_FC_GAIN = 3.0

_LAYERS = ((64, 3), (128, 4), (256, 6), (512, 3))  # (bottleneck width, blocks) of ResNet-50
_EXPANSION = 4


def resnet50_parameter_shapes() -> list[tuple]:
    """(key, shape, kind) in torchvision's ``resnet50().state_dict()`` order."""
    out: list[tuple] = []

    def conv(name, cout, cin, k):
        out.append((f"{name}.weight", (cout, cin, k, k), "conv"))

    def bn(name, c, last=False):
        kind = "bn_last" if last else "bn"
        out.append((f"{name}.weight", (c,), kind + "_weight"))
        out.append((f"{name}.bias", (c,), "bn_bias"))
        out.append((f"{name}.running_mean", (c,), "bn_mean"))
        out.append((f"{name}.running_var", (c,), "bn_var"))
        out.append((f"{name}.num_batches_tracked", (), "bn_count"))

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inplanes = 64
    for li, (width, blocks) in enumerate(_LAYERS, start=1):
        for bi in range(blocks):
            p = f"layer{li}.{bi}"
            conv(f"{p}.conv1", width, inplanes, 1)
            bn(f"{p}.bn1", width)
            conv(f"{p}.conv2", width, width, 3)
            bn(f"{p}.bn2", width)
            conv(f"{p}.conv3", width * _EXPANSION, width, 1)
            bn(f"{p}.bn3", width * _EXPANSION, last=True)
            if bi == 0:
                conv(f"{p}.downsample.0", width * _EXPANSION, inplanes, 1)
                bn(f"{p}.downsample.1", width * _EXPANSION)
            inplanes = width * _EXPANSION
    out.append(("fc.weight", (1000, 2048), "fc_weight"))
    out.append(("fc.bias", (1000,), "fc_bias"))
    return out


def seeded_resnet50_state_dict(
    seed: int = CLASSIFIER_SEED, fc_gain: float = CLASSIFIER_FC_GAIN
) -> dict[str, torch.Tensor]:
    """torchvision ``resnet50`` state dict drawn from ``np.random.default_rng(seed)``.

    Draw order: the keys in ``resnet50_parameter_shapes()`` order, one call per tensor:
    conv weights ``standard_normal * sqrt(2 / fan_in)`` (He, fan_in = cin*k*k); BatchNorm weight
    ``1 + 0.1 * standard_normal`` (the last BN of each bottleneck: ``0.3 + 0.05 * standard_normal``,
    which keeps the residual stream bounded), bias ``0.05 * standard_normal``, running_mean
    ``0.05 * standard_normal``, running_var ``1 + 0.2 * random`` (uniform [0, 1)),
    num_batches_tracked 0 (no draw); fc weight ``z = standard_normal``, each row minus its mean,
    ``* fc_gain / sqrt(2048)``, fc bias ``0.1 * standard_normal``. All float32 (drawn in float64, then cast).
    """
    rng = np.random.default_rng(seed)
    sd: dict[str, torch.Tensor] = {}
    for key, shape, kind in resnet50_parameter_shapes():
        if kind == "conv":
            fan_in = shape[1] * shape[2] * shape[3]
            a = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif kind == "bn_weight":
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        elif kind == "bn_last_weight":
            a = 0.3 + 0.05 * rng.standard_normal(shape)
        elif kind == "bn_bias":
            a = 0.05 * rng.standard_normal(shape)
        elif kind == "bn_mean":
            a = 0.05 * rng.standard_normal(shape)
        elif kind == "bn_var":
            a = 1.0 + 0.2 * rng.random(shape)
        elif kind == "bn_count":
            sd[key] = torch.tensor(0, dtype=torch.int64)
            continue
        elif kind == "fc_weight":
            z = rng.standard_normal(shape)
            # rows centred: the pooled features share a large positive mean (post-ReLU), which
            # would otherwise pick the same class for every image
            a = (z - z.mean(axis=1, keepdims=True)) * (fc_gain / np.sqrt(shape[1]))
        elif kind == "fc_bias":
            a = 0.1 * rng.standard_normal(shape)
        else:  # pragma: no cover
            raise AssertionError(kind)
        sd[key] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return sd


def imagenet_categories() -> list[str]:
    """The 1000 names the official script reads: ``ResNet50_Weights.DEFAULT.meta["categories"]``."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.DEFAULT.meta["categories"])


def write_classifier_folder(path: str, seed: int = CLASSIFIER_SEED, fc_gain: float = CLASSIFIER_FC_GAIN) -> str:
    """Write ``model.safetensors`` + ``categories.txt`` into ``path``; returns ``path``."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    save_file(seeded_resnet50_state_dict(seed, fc_gain), os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "categories.txt"), "w", encoding="utf-8") as f:
        for name in imagenet_categories():
            f.write(name + "\n")
    return path
