"""Seeded random weights: how every builder in tests/support, the benchmarks and the fixture tools draws them.

- `seeded_init(seed)`: torch's global generator seeded for a block, for a module's own default initialisation; the
  caller's random state comes back afterwards.
- `seeded_noise(named_tensors, seed)`: one standard-normal tensor per (name, tensor), in the order given, from one
  generator seeded with `seed`; each builder scales it its own way (`perturb`, the PASD and ComfyUI checkpoint
  builders, the real-size and medium models, the benchmark's CoCa).
- `numpy_noise(named_tensors, seed)`: the same from numpy's `default_rng(seed)`, whose stream is fixed across numpy
  and torch versions: for fixtures made in the official PASD's own environment (tools/) and the tiny CoCa of the
  captioner tests, whose outputs are committed.
- `generator(seed)`: a seeded CPU generator, for draws of other shapes (LoRA factors, noise on outputs).

The seeded ResNet-50 of the prompt fixtures (support/prompt_models.py) draws from numpy too, but in its own order
(uniform draws for running variances, none for counters); it keeps its own loop so that its weights, and the
classification results committed in the fixtures, stay bit-identical.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import numpy as np
import torch


def generator(seed: int) -> torch.Generator:
    """A CPU torch.Generator seeded with `seed`."""
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Modules built inside get their default random initialisation from `seed`; the tests' RNG is left untouched."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def seeded_noise(named_tensors: Iterable[tuple[str, torch.Tensor]],
                 seed: int) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, tensor, noise) for each pair: noise is a float32 standard-normal tensor of the tensor's shape, drawn
    in turn from one generator seeded with `seed` (so the order of the pairs decides every value)."""
    source = generator(seed)
    for name, tensor in named_tensors:
        yield name, tensor, torch.randn(tensor.shape, generator=source)


def numpy_noise(named_tensors: Iterable[tuple[str, torch.Tensor]],
                seed: int) -> Iterator[tuple[str, torch.Tensor, np.ndarray]]:
    """As `seeded_noise`, from numpy's `default_rng(seed)`: float64 `standard_normal` arrays (a float for a 0-d
    tensor)."""
    rng = np.random.default_rng(seed)
    for name, tensor in named_tensors:
        yield name, tensor, rng.standard_normal(tuple(tensor.shape))


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    """Add seeded noise to every weight, so that norms and biases are not their trivial 1s and 0s."""
    with torch.no_grad():
        for _, parameter, noise in seeded_noise(module.named_parameters(), seed):
            parameter.add_(noise * scale)
    return module.eval()
