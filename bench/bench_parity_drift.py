"""How far the parity intermediates move when floats are rounded differently: the basis of the tests' tolerances.

Another CPU (another SIMD width, another BLAS kernel, another thread split) rounds the same sums
differently, by about one float32 ulp per operation; over 20 denoising steps those differences grow.
This benchmark imitates that on one machine and prints how far each intermediate of the parity
fixtures moves, against the official values:

- `this machine`: the plain run;
- `threads=1`: another thread split (reductions summed in another order);
- `ulp noise`: every UNet and ControlNet output multiplied by (1 + ε·N(0, 1)), ε = float32's
  machine epsilon, five noise seeds, the largest drift kept: a rounding difference at every network call.

The parity tests set their tolerances from these figures (INTERMEDIATE_TOLERANCES in tests/support/parity.py).

    .venv/bin/python bench/bench_parity_drift.py
"""

from __future__ import annotations

import numpy as np
import torch
from common import add_project_to_path, machine_header, print_table, torch_threads_note
from PIL import Image

add_project_to_path()

from pasd_core.engine.pipeline import PASDPipeline  # noqa: E402
from support.paths import CASES, MODELS, SDXL_CASES, case_data  # noqa: E402
from support.seeding import generator  # noqa: E402

NAMES = ("init_latents", "final_latents_scaled", "decoded")
NOISE_SEEDS = 5


def run_case(pipeline: PASDPipeline, data: dict) -> dict[str, np.ndarray]:
    """The case's intermediates and final image, captured as test_parity captures them."""
    seen: dict[str, np.ndarray] = {}
    sampler = pipeline._sampler
    real_initial, real_decode = sampler.initial_latents, sampler.decode

    def initial_latents(*args, **kwargs):
        latents = real_initial(*args, **kwargs)
        seen["init_latents"] = latents.numpy().copy()
        return latents

    def decode(latents):
        scaled = latents / pipeline.models.vae.config.scaling_factor
        seen["final_latents_scaled"] = scaled.numpy().copy()
        with torch.no_grad():
            seen["decoded"] = pipeline.models.vae.decode(scaled, return_dict=False)[0].numpy()
        return real_decode(latents)

    sampler.initial_latents, sampler.decode = initial_latents, decode
    try:
        image = pipeline.upscale(Image.open(data["dir"] / "input.png"), data["settings"])
    finally:
        del sampler.initial_latents, sampler.decode
    seen["png"] = np.asarray(image, dtype=np.int16)
    return seen


def drift(seen: dict[str, np.ndarray], data: dict) -> list[float]:
    """Max |ours - official| per intermediate relative to the official tensor's largest |value|, then the final
    image's max difference in levels of 255."""
    official = {n: np.load(data["dir"] / f"{n}.npy") for n in NAMES}
    row = [float(np.abs(seen[n] - official[n]).max() / np.abs(official[n]).max()) for n in NAMES]
    expected = np.asarray(Image.open(data["dir"] / "expected.png").convert("RGB"), dtype=np.int16)
    return row + [float(np.abs(seen["png"] - expected).max())]


def with_ulp_noise(pipeline: PASDPipeline, seed: int):
    """Forward hooks that perturb every network output by one relative ulp (returns the hook handles)."""
    source = generator(seed)
    eps = torch.finfo(torch.float32).eps

    def perturb(output):
        if isinstance(output, torch.Tensor):
            return output * (1 + eps * torch.randn(output.shape, generator=source))
        if isinstance(output, (tuple, list)):
            return type(output)(perturb(o) for o in output)
        return output

    return [module.register_forward_hook(lambda _m, _i, out: perturb(out))
            for module in (pipeline.models.unet, pipeline.models.controlnet)]


def main() -> None:
    print(machine_header("Parity drift: how far rounding differences move the intermediates (CPU fp32, tiny fixtures)"))
    print(torch_threads_note())
    rows = []
    pipelines = {v: PASDPipeline.from_pretrained(*MODELS[v], device="cpu", dtype="fp32") for v in MODELS}
    for case in CASES + SDXL_CASES:
        data = case_data(case)
        pipeline = pipelines[data["variant"]]
        rows.append([case, "this machine", *drift(run_case(pipeline, data), data)])
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        rows.append([case, "threads=1", *drift(run_case(pipeline, data), data)])
        torch.set_num_threads(threads)
        worst = [0.0] * (len(NAMES) + 1)
        for seed in range(NOISE_SEEDS):
            handles = with_ulp_noise(pipeline, seed)
            try:
                worst = [max(a, b) for a, b in zip(worst, drift(run_case(pipeline, data), data), strict=True)]
            finally:
                for handle in handles:
                    handle.remove()
        rows.append([case, f"ulp noise (worst of {NOISE_SEEDS})", *worst])
    headers = ["case", "run", *(f"max |Δ| {n}" for n in NAMES), "PNG levels"]
    cells = [[c, r, *(f"{x:.2e}" for x in xs[:-1]), f"{xs[-1]:.0f}"] for c, r, *xs in rows]
    print_table("max |ours - official| per intermediate", headers, cells)


if __name__ == "__main__":
    main()
