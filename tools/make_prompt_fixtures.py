"""Make tests/fixtures/pasd_caption_official_tiny by running the UNMODIFIED official PASD scripts.

Run in the official environment (its own venv: torch 2.14.1, diffusers 0.29.2, transformers
4.44.2, open_clip_torch 3.3.0, numpy<2; see the fixture README), with a checkout of the official
repository (commit 396f9ac) outside this project:

    HF_HUB_OFFLINE=1 /work/official-venv/bin/python tools/make_prompt_fixtures.py \
        --official /work/official-pasd [--case P1_sd15_caption ...]

Only the model CONSTRUCTION is patched: ``open_clip.create_model_and_transforms`` builds the tiny
CoCa through open_clip itself (``local-dir:`` of checkpoints/pasd_prompt/coca_tiny), and
torchvision's ``resnet50(weights=ResNet50_Weights.DEFAULT)`` returns the architecture with the
seeded weights of ``tests/support/prompt_models.py`` (``weights.transforms()`` and
``weights.meta["categories"]`` are the published ones). Everything else runs as published; the
official ``main(args, enable_xformers_memory_efficient_attention=False)`` is called with the
args its own argparse parser builds from the flags below. Hooks only record values.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]  # tools.prompt_fixtures, support.prompt_models
FIX = os.path.join(ROOT, "tests", "fixtures", "pasd_caption_official_tiny")
SD15 = os.path.join(ROOT, "tests", "fixtures", "pasd_official_tiny", "checkpoints")
SDXL = os.path.join(ROOT, "tests", "fixtures", "pasd_sdxl_official_tiny", "checkpoints")
COCA_DIR = os.path.join(FIX, "checkpoints", "pasd_prompt", "coca_tiny")
COLOR_DIR = os.path.join(FIX, "checkpoints", "pasd_color")


def make_input(seed, w, h):
    """Smooth random colours (a (h/8)x(w/8) grid, PIL bicubic up) plus Gaussian noise (sd 12)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3)).astype(np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.BICUBIC)
    a = np.asarray(img).astype(np.float64) + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))


def make_flat_input(seed, w, h, sd=8.0):
    """Mid grey 128 plus Gaussian noise (sd 8): the classifier is unsure on it."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    a = np.clip(128 + rng.normal(0, sd, (h, w, 3)), 0, 255).round().astype(np.uint8)
    return Image.fromarray(a)


# name -> spec. size is (width, height).
CASES = {
    "P1_sd15_caption": dict(
        script="test_pasd.py",
        variant="pasd",
        family="sd15",
        input=("smooth", 4, (64, 64)),
        high_level_info="caption",
        control_type="realisr",
        prompt="",
        scale=1,
        steps=20,
        tile=(320, 8),
    ),
    "P2_sdxl_caption_prompt": dict(
        script="test_pasd_sdxl.py",
        variant="pasd_sdxl",
        family="sdxl",
        input=("smooth", 1, (48, 64)),
        high_level_info="caption",
        control_type="realisr",
        prompt="a red barn",
        scale=2,
        steps=25,
        tile=(180, 8),
    ),
    "P3_classification_above": dict(
        script="test_pasd.py",
        variant="pasd",
        family="sd15",
        input=("smooth", 3, (48, 64)),
        high_level_info="classification",
        control_type="realisr",
        prompt="a photo",
        scale=1,
        steps=20,
        tile=(320, 8),
    ),
    "P4_classification_below": dict(
        script="test_pasd.py",
        variant="pasd",
        family="sd15",
        input=("flat", 3, (64, 64)),
        high_level_info="classification",
        control_type="realisr",
        prompt="a photo",
        scale=1,
        steps=20,
        tile=(320, 8),
    ),
    "P5_color_caption": dict(
        script="test_pasd.py",
        variant="pasd_color",
        family="sd15",
        input=("smooth", 5, (48, 64)),
        high_level_info="caption",
        control_type="grayscale",
        prompt="",
        scale=1,
        steps=20,
        tile=(320, 8),
    ),
    "P6_color_none": dict(
        script="test_pasd.py",
        variant="pasd_color",
        family="sd15",
        input=("smooth", 6, (64, 48)),
        high_level_info="none",
        control_type="grayscale",
        prompt="",
        scale=1,
        steps=20,
        tile=(320, 8),
    ),
    "P7_sd15_caption_tiled": dict(
        script="test_pasd.py",
        variant="pasd",
        family="sd15",
        input=("smooth", 2, (64, 64)),
        high_level_info="caption",
        control_type="realisr",
        prompt="",
        scale=2,
        steps=20,
        tile=(8, 2),
    ),
}


# ----------------------------------------------------------------------------------------------
# models that the official code would download
def ensure_models():
    from tools.prompt_fixtures.tiny_coca import write_coca_folder

    if not os.path.isfile(os.path.join(COCA_DIR, "open_clip_model.safetensors")):
        write_coca_folder(COCA_DIR)
    ck = os.path.join(COLOR_DIR, "checkpoint-180000")
    if not os.path.isdir(os.path.join(ck, "unet")):
        make_color_checkpoint(ck)
    sched = os.path.join(COLOR_DIR, "scheduler")
    os.makedirs(sched, exist_ok=True)
    cfg = {
        "_class_name": "UniPCMultistepScheduler",
        "_diffusers_version": "0.29.2",
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "trained_betas": None,
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "timestep_spacing": "trailing",
        "steps_offset": 1,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
    }
    with open(os.path.join(sched, "scheduler_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def make_color_checkpoint(ck, seed=180000):
    """pasd_light-shaped (same configs as pasd_official_tiny's pasd_light), every tensor redrawn:
    mean + std * standard_normal of the source tensor's own mean/std, from default_rng(seed + i),
    i the index of the sub-model (unet 0, controlnet 1), tensors in sorted key order."""
    import torch
    from safetensors.torch import load_file, save_file

    from support.seeding import numpy_noise

    src = os.path.join(SD15, "pasd_light", "checkpoint-120000")
    for i, sub in enumerate(("unet", "controlnet")):
        os.makedirs(os.path.join(ck, sub), exist_ok=True)
        shutil.copyfile(os.path.join(src, sub, "config.json"), os.path.join(ck, sub, "config.json"))
        sd = load_file(os.path.join(src, sub, "diffusion_pytorch_model.safetensors"))
        out = {}
        for k, tensor, noise in numpy_noise(((k, sd[k]) for k in sorted(sd)), seed + i):
            t = tensor.double().numpy()
            mean, std = float(t.mean()), float(t.std()) if t.size > 1 else 0.0
            a = mean + std * noise
            out[k] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(sd[k].dtype)
        save_file(out, os.path.join(ck, sub, "diffusion_pytorch_model.safetensors"))


# ----------------------------------------------------------------------------------------------
def official_argv(name, spec, input_path, out_dir):
    p = spec
    tile, overlap = p["tile"]
    argv = [
        "--image_path",
        input_path,
        "--output_dir",
        out_dir,
        "--mixed_precision",
        "no",
        "--seed",
        "42",
        "--process_size",
        "64",
        "--num_inference_steps",
        str(p["steps"]),
        "--upscale",
        str(p["scale"]),
        "--latent_tiled_size",
        str(tile),
        "--latent_tiled_overlap",
        str(overlap),
        "--prompt",
        p["prompt"],
    ]
    if p["family"] == "sd15":
        argv += ["--pretrained_model_path", os.path.join(SD15, "stable-diffusion-v1-5")]
        if p["variant"] == "pasd":
            argv += ["--pasd_model_path", os.path.join(SD15, "pasd", "checkpoint-100000")]
        elif p["variant"] == "pasd_color":
            argv += ["--pasd_model_path", os.path.join(COLOR_DIR, "checkpoint-180000"), "--use_pasd_light"]
    else:
        argv += [
            "--pretrained_model_path",
            os.path.join(SDXL, "stable-diffusion-xl-base-1.0"),
            "--pasd_model_path",
            os.path.join(SDXL, "pasd_sdxl", "checkpoint-200000"),
        ]
    argv += ["--control_type", p["control_type"]]
    if p["high_level_info"] == "none":
        argv += ["--high_level_info"]  # nargs='?' with no value -> None: the prompt stage is off
    else:
        argv += ["--high_level_info", p["high_level_info"]]
    return argv


def run_case(name, official):
    import torch

    torch.set_num_threads(1)
    spec = CASES[name]
    case_dir = os.path.join(FIX, "cases", name)
    os.makedirs(case_dir, exist_ok=True)
    kind, iseed, (w, h) = spec["input"]
    img = make_input(iseed, w, h) if kind == "smooth" else make_flat_input(iseed, w, h)
    input_path = os.path.join(case_dir, "input.png")
    img.save(input_path)
    work = os.path.join("/tmp", "pasd_prompt_fixture_run", name)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    out_dir = os.path.join(work, "output")
    argv = official_argv(name, spec, input_path, out_dir)

    # ---- patches: model construction only --------------------------------------------------
    rec = {"calls": []}
    import open_clip

    real_cmt = open_clip.create_model_and_transforms

    def fake_create_model_and_transforms(model_name=None, pretrained=None, **kw):
        assert model_name == "coca_ViT-L-14" and pretrained == "mscoco_finetuned_laion2B-s13B-b90k", (
            model_name,
            pretrained,
        )
        model, t_train, t_val = real_cmt("local-dir:" + COCA_DIR)
        real_generate = model.generate

        def generate(image, *a, **k):
            rec["caption_input"] = image.detach().clone()
            out = real_generate(image, *a, **k)
            rec["caption_tokens"] = out[0].tolist()
            rec["generate_kwargs"] = {k2: repr(v) for k2, v in k.items()}
            return out

        model.generate = generate
        rec["coca_transform"] = repr(t_val)
        return model, t_train, t_val

    open_clip.create_model_and_transforms = fake_create_model_and_transforms

    import torchvision.models as tvm

    from support.prompt_models import seeded_resnet50_state_dict

    real_resnet50 = tvm.resnet50

    def fake_resnet50(*, weights=None, progress=True, **kw):
        assert weights is tvm.ResNet50_Weights.DEFAULT
        m = real_resnet50(weights=None, **kw)
        m.load_state_dict(seeded_resnet50_state_dict(), strict=True)
        real_forward = m.forward

        def forward(x):
            rec["classifier_input"] = x.detach().clone()
            y = real_forward(x)
            rec["classifier_logits"] = y.detach().clone()
            return y

        m.forward = forward
        return m

    tvm.resnet50 = fake_resnet50

    # The published pasd_light/unet_2d_blocks.py imports UpBlock2D from
    # "diffusers.models.transformers.unet_2d_blocks", a module no diffusers release has (it is
    # diffusers.models.unets.unet_2d_blocks in 0.29.2). Import shim: alias the module name.
    import diffusers.models.unets.unet_2d_blocks as _ub

    sys.modules.setdefault("diffusers.models.transformers.unet_2d_blocks", _ub)

    # ---- load the official script as a module, build its args with its own parser -----------
    sys.path.insert(0, official)
    sys.path.insert(0, os.path.join(official, "pasd"))  # test_pasd_sdxl.py imports "models.*"
    os.chdir(work)
    src_path = os.path.join(official, spec["script"])
    src = open(src_path).read()
    head, tail = src.split('if __name__ == "__main__":', 1)
    g = {"__name__": "official_" + spec["script"][:-3], "__file__": src_path}
    exec(compile(head, src_path, "exec"), g)
    parser_src = textwrap.dedent(tail).replace("main(args)", "")
    sys.argv = [spec["script"]] + argv
    exec(compile(parser_src, src_path + ":argparse", "exec"), g)
    args = g["args"]

    # ---- recording hooks ----------------------------------------------------------------------
    from diffusers import AutoencoderKL

    pipe_cls = (
        g["StableDiffusionControlNetPipeline"] if spec["family"] == "sd15" else g["StableDiffusionXLControlNetPipeline"]
    )
    real_call = pipe_cls.__call__
    real_prep = pipe_cls.prepare_latents
    real_decode = AutoencoderKL.decode

    def call(self, *a, **k):
        if spec["family"] == "sd15":
            prompt, image = a[1], a[2]
        else:
            prompt, image = k["prompt"], k["image"]
        rec["official_prompt"] = prompt
        rec["official_negative_prompt"] = k["negative_prompt"]
        rec["control_image"] = np.asarray(image).copy()
        out = real_call(self, *a, **k)
        rec["timesteps"] = self.scheduler.timesteps.detach().cpu().numpy().copy()
        rec["raw_output"] = out.images[0].copy()
        rec["scheduler_config"] = dict(self.scheduler.config)
        return out

    def prep(self, *a, **k):
        out = real_prep(self, *a, **k)
        rec["init_latents"] = out.detach().cpu().numpy().copy()
        return out

    def decode(self, z, *a, **k):
        rec["final_latents_scaled"] = z.detach().cpu().numpy().copy()
        out = real_decode(self, z, *a, **k)
        rec["decoded"] = (out[0] if isinstance(out, tuple) else out.sample).detach().cpu().numpy().copy()
        return out

    pipe_cls.__call__ = call
    pipe_cls.prepare_latents = prep
    AutoencoderKL.decode = decode

    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        g["main"](args, enable_xformers_memory_efficient_attention=False)
    printed = buf.getvalue()
    sys.stdout.write(printed)

    # ---- write the case ---------------------------------------------------------------------
    out_png = os.path.join(out_dir, "input.png")
    assert os.path.isfile(out_png), "official script produced no output (see printed exception)"
    shutil.copyfile(out_png, os.path.join(case_dir, "expected.png"))
    arrays = {}
    for key in ("control_image", "init_latents", "timesteps", "final_latents_scaled", "decoded"):
        a = rec[key]
        a = a if key == "control_image" else a.astype(np.float32)
        np.save(os.path.join(case_dir, key + ".npy"), a)
        arrays[key] = list(a.shape)
    if spec["control_type"] == "grayscale":
        rec["raw_output"].save(os.path.join(case_dir, "raw_output.png"))
        arrays["raw_output.png"] = [rec["raw_output"].size[1], rec["raw_output"].size[0], 3]

    caption = None
    if "caption_tokens" in rec:
        import torch as _t

        caption = (
            open_clip.decode(_t.tensor(rec["caption_tokens"])).split("<end_of_text>")[0].replace("<start_of_text>", "")
        )
    classification = None
    if "classifier_logits" in rec:
        p = rec["classifier_logits"].squeeze(0).softmax(0)
        cid = int(p.argmax().item())
        classification = {"category": g_categories()[cid], "score": float(p[cid].item()), "class_id": cid}

    sha = hashlib.sha256(open(os.path.join(case_dir, "expected.png"), "rb").read()).hexdigest()
    ps = {
        "scale": spec["scale"],
        "steps": spec["steps"],
        "guidance_scale": float(args.guidance_scale),
        "conditioning_scale": float(args.conditioning_scale),
        "seed": 42,
        "prompt": spec["prompt"],
        "added_prompt": args.added_prompt,
        "negative_prompt": args.negative_prompt,
        "process_size": 64,
        "latent_tile_size": spec["tile"][0],
        "latent_tile_overlap": spec["tile"][1],
        "variant": spec["variant"],
        "color_fix": "wavelet" if spec["control_type"] == "realisr" else "none",
        "high_level_info": spec["high_level_info"],
        "control_type": spec["control_type"],
    }
    if spec["family"] == "sd15":
        ps["added_noise_level"] = int(args.added_noise_level)
    official_args = {k: v for k, v in vars(args).items() if k not in ("image_path", "output_dir")}
    for k in ("pretrained_model_path", "pasd_model_path"):
        official_args[k] = os.path.relpath(official_args[k], FIX)
    case = {
        "variant": spec["variant"],
        "family": spec["family"],
        "input_size": [w, h],
        "input_seed": iseed,
        "input_kind": kind,
        "params": ps,
        "official_script": spec["script"],
        "official_argv": [a if not a.startswith(ROOT) else os.path.relpath(a, FIX) for a in argv],
        "official_args": official_args,
        "caption": caption,
        "caption_tokens": rec.get("caption_tokens"),
        "classification": classification,
        "official_prompt": rec["official_prompt"],
        "official_negative_prompt": rec["official_negative_prompt"],
        "official_printed": printed,
        "scheduler_class": None,
        "expected_png_sha256": sha,
        "arrays": arrays,
    }
    case["scheduler_config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in rec["scheduler_config"].items()}
    with open(os.path.join(case_dir, "case.json"), "w") as f:
        json.dump(case, f, indent=1, ensure_ascii=False, default=str)
    print("WROTE", name, repr(caption), classification, repr(rec["official_prompt"]))


def g_categories():
    from torchvision.models import ResNet50_Weights

    return ResNet50_Weights.DEFAULT.meta["categories"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", default="/work/official-pasd")
    ap.add_argument("--case", action="append")
    ap.add_argument("--inprocess", action="store_true")
    a = ap.parse_args()
    names = a.case or list(CASES)
    if a.inprocess:
        assert len(names) == 1
        run_case(names[0], a.official)
        return
    ensure_models()
    for n in names:
        r = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--official", a.official, "--case", n, "--inprocess"],
            env=dict(os.environ, HF_HUB_OFFLINE="1"),
        )
        if r.returncode:
            print("FAILED", n, r.returncode)


if __name__ == "__main__":
    main()
