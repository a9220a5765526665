"""Independent re-derivation of the pasd_caption_official_tiny facts (no official PASD code).

For every case: rebuilds `official_prompt` / `official_negative_prompt` from the README's rules
(caption by OUR OWN group beam search over open_clip's CoCa forward, classification by
torchvision's resnet50 + tests/support/prompt_models.py's seeded weights), and for the grayscale cases
the final YUV merge of `raw_output.png` -> `expected.png` (own integer implementation of
OpenCV's 8-bit BGR<->YUV; cross-checked against cv2 when cv2 is importable).
Needs torch, torchvision, open_clip_torch, pillow, numpy. Does NOT need transformers'
BeamSearchScorer (absent in transformers >= 5).

    python tools/prompt_fixtures/check_independent.py
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # support.prompt_models
FIX = os.path.join(ROOT, "tests", "fixtures", "pasd_caption_official_tiny")
COCA = os.path.join(FIX, "checkpoints", "pasd_prompt", "coca_tiny")
SOT, EOT = 49406, 49407


# ---------------------------------------------------------------------------------- caption
def load_coca():
    import open_clip

    model, _, _ = open_clip.create_model_and_transforms("local-dir:" + COCA)
    model.eval()
    cfg = json.load(open(os.path.join(COCA, "open_clip_config.json")))["preprocess_cfg"]
    return model, cfg


def coca_preprocess(img, cfg):
    """open_clip's val transform for resize_mode 'shortest': Resize(size) on the short side
    (torchvision, bicubic, antialias), CenterCrop(size), RGB, ToTensor, Normalize(mean, std)."""
    from torchvision import transforms as T

    size = cfg["size"]
    tf = T.Compose(
        [
            T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(cfg["mean"], cfg["std"]),
        ]
    )
    return tf(img.convert("RGB")).unsqueeze(0)


def beam_search(model, image, num_beams=6, num_groups=3, seq_len=30, min_len=5):
    """open_clip 3.3.0 CoCa._generate_beamsearch + transformers 4.44.2 BeamSearchScorer, re-derived.
    Batch size 1."""
    gs = num_beams // num_groups
    imgs = image.repeat_interleave(num_beams, 0)
    with torch.no_grad():
        latent, embs = model._encode_image(imgs)
    ids = torch.full((num_beams, 1), SOT, dtype=torch.long)
    scores = torch.full((num_beams,), -1e9)
    scores[::gs] = 0.0
    hyps = [[] for _ in range(num_groups)]  # (score, tokens) per group, at most gs kept
    worst = [1e9] * num_groups
    done = [False] * num_groups

    def add(g, toks, s, length):
        sc = s / length  # length_penalty 1.0
        if len(hyps[g]) < gs or sc > worst[g]:
            hyps[g].append((sc, toks))
            if len(hyps[g]) > gs:
                order = sorted([(h[0], i) for i, h in enumerate(hyps[g])])
                del hyps[g][order[0][1]]
                worst[g] = order[1][0]
            else:
                worst[g] = min(sc, worst[g])

    while True:
        with torch.no_grad():
            logits = model(imgs, ids, image_latent=latent, image_embs=embs, output_labels=False)["logits"][:, -1, :]
        cur = torch.zeros(num_beams, dtype=torch.long)
        new_ids = ids.clone()
        for g in range(num_groups):
            rows = list(range(g * gs, (g + 1) * gs))
            gids = ids[rows]
            lg = logits[rows].clone()
            if gids.shape[1] < min_len:
                lg[:, EOT] = -float("inf")
            # repetition penalty 1.0: identity
            cand = (lg + scores[rows].unsqueeze(-1)).view(-1)
            vs = lg.shape[-1]
            top_s, top_i = torch.topk(cand, 2 * gs, largest=True, sorted=True)
            beam_of, tok = top_i // vs, top_i % vs
            cur_len = gids.shape[1] + 1
            if done[g]:
                nb_s = torch.zeros(gs)
                nb_t = torch.zeros(gs, dtype=torch.long)
                nb_i = torch.zeros(gs, dtype=torch.long)
            else:
                nb_s, nb_t, nb_i, k = [], [], [], 0
                for rank in range(2 * gs):
                    if tok[rank].item() == EOT:
                        if rank >= gs:
                            continue
                        add(g, gids[beam_of[rank]].clone(), top_s[rank].item(), cur_len)
                    else:
                        nb_s.append(top_s[rank])
                        nb_t.append(tok[rank])
                        nb_i.append(beam_of[rank])
                        k += 1
                    if k == gs:
                        break
                nb_s = torch.stack(nb_s)
                nb_t = torch.stack(nb_t)
                nb_i = torch.stack(nb_i)
                if len(hyps[g]) >= gs:
                    done[g] = worst[g] >= top_s.max().item() / cur_len
            scores[rows] = nb_s
            new_ids[rows] = gids[nb_i]
            cur[rows] = nb_t
        ids = torch.cat([new_ids, cur.unsqueeze(-1)], dim=-1)
        if all(done) or ids.shape[1] >= seq_len:
            break
    for g in range(num_groups):  # finalize
        if done[g]:
            continue
        for r in range(g * gs, (g + 1) * gs):
            add(g, ids[r], scores[r].item(), ids.shape[1])
    allh = sorted([h for g in range(num_groups) for h in hyps[g]], key=lambda h: h[0])
    best = allh[-1][1].tolist()
    if len(best) < seq_len:
        best = best + [EOT]
    return best


def decode(tokens):
    """open_clip.decode: BPE -> text, '</w>' -> ' '; then the official split/replace."""
    from open_clip.tokenizer import _tokenizer

    text = _tokenizer.decode(tokens)
    return text.split("<end_of_text>")[0].replace("<start_of_text>", "")


# ---------------------------------------------------------------------------- classification
def classify(img):
    from torchvision.models import ResNet50_Weights, resnet50

    from support.prompt_models import seeded_resnet50_state_dict

    w = ResNet50_Weights.DEFAULT
    net = resnet50()
    net.load_state_dict(seeded_resnet50_state_dict())
    net.eval()
    with torch.no_grad():
        p = net(w.transforms()(img).unsqueeze(0)).squeeze(0).softmax(0)
    cid = int(p.argmax().item())
    return cid, float(p[cid].item()), w.meta["categories"][cid]


# ------------------------------------------------------------------------------------ prompt
def build_prompt(case, caption, cls):
    p = case["params"]
    sdxl = case["family"] == "sdxl"
    user = p["prompt"]
    hli = p["high_level_info"]
    if hli == "caption":
        c = caption.replace("blurry", "clear").replace("noisy", "clean")
        if sdxl:
            c = c.replace("painting", "photo")
        vp = c if user == "" else f"{c} {user}"
    elif hli == "classification":
        cid, score, name = cls
        vp = ""
        if score >= 0.1:
            vp = f"{name}, " if user == "" else f"{user}, {name}, "
    else:
        vp = "" if user == "" else f"{user}, "
    if p["control_type"] == "grayscale":
        return vp.replace("black and white", "color"), "b&w, color bleeding"
    return vp + p["added_prompt"], p["negative_prompt"]


# ---------------------------------------------------------------------------------- YUV merge
def _descale(x, n=14):
    return (x + (1 << (n - 1))) >> n


def bgr2yuv(bgr):
    b, g, r = [bgr[..., i].astype(np.int64) for i in range(3)]
    y = _descale(b * 1868 + g * 9617 + r * 4899)
    delta = 128 << 14
    u = _descale((b - y) * 8061 + delta)
    v = _descale((r - y) * 14369 + delta)
    return np.clip(np.stack([y, u, v], -1), 0, 255).astype(np.uint8)


def yuv2bgr(yuv):
    y, u, v = [yuv[..., i].astype(np.int64) for i in range(3)]
    u -= 128
    v -= 128
    b = y + _descale(u * 33292)
    g = y + _descale(u * -6472 + v * -9519)
    r = y + _descale(v * 18678)
    return np.clip(np.stack([b, g, r], -1), 0, 255).astype(np.uint8)


def _lin_coeffs(ssize, dsize):
    scale = ssize / dsize
    idx = np.zeros((dsize, 2), np.int64)
    a = np.zeros((dsize, 2), np.int64)
    for d in range(dsize):
        f = np.float32((d + 0.5) * scale - 0.5)
        s = int(np.floor(f))
        f = np.float32(f - s)
        if s < 0:
            s, f = 0, np.float32(0)
        if s >= ssize - 1:
            s, f = ssize - 1, np.float32(0)
        idx[d] = (s, min(s + 1, ssize - 1))
        a[d] = (int(np.rint(np.float32(1.0 - f) * 2048)), int(np.rint(f * 2048)))
    return idx, a


def resize_linear(img, w, h):
    """cv2.resize(img, (w, h)) (INTER_LINEAR) for uint8 HWC, as OpenCV 4.11 computes it on x86:
    half-pixel centres, float32 source positions clamped to the edge, 11-bit weights
    round(w*2048); horizontal pass in int; vertical pass as its SIMD kernel:
    ((b0*(S0>>4))>>16 + (b1*(S1>>4))>>16 + 2) >> 2."""
    H, W, _ = img.shape
    xi, xa = _lin_coeffs(W, w)
    yi, ya = _lin_coeffs(H, h)
    src = img.astype(np.int64)
    hr = src[:, xi[:, 0], :] * xa[None, :, 0, None] + src[:, xi[:, 1], :] * xa[None, :, 1, None]
    s0, s1 = hr[yi[:, 0]], hr[yi[:, 1]]
    b0, b1 = ya[:, 0][:, None, None], ya[:, 1][:, None, None]
    out = (((b0 * (s0 >> 4)) >> 16) + ((b1 * (s1 >> 4)) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def yuv_merge(raw_rgb, gray_rgb, use_cv2):
    """The official grayscale tail: RGB->BGR, cv2.resize INTER_LINEAR to the input size,
    U/V of the result + Y of the grey input (as BGR, all channels equal), back to BGR."""
    h, w = gray_rgb.shape[:2]
    bgr = np.ascontiguousarray(raw_rgb[:, :, ::-1])
    if use_cv2:
        import cv2

        if bgr.shape[:2] != (h, w):
            bgr = cv2.resize(bgr, (w, h))

        cy = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
        oy = cv2.cvtColor(np.ascontiguousarray(gray_rgb), cv2.COLOR_BGR2YUV)
        hi = oy.copy()
        hi[:, :, 1:3] = cy[:, :, 1:3]
        out = cv2.cvtColor(hi, cv2.COLOR_YUV2BGR)
    else:
        if bgr.shape[:2] != (h, w):
            bgr = resize_linear(bgr, w, h)
        cy = bgr2yuv(bgr)
        oy = bgr2yuv(gray_rgb)
        hi = oy.copy()
        hi[:, :, 1:3] = cy[:, :, 1:3]
        out = yuv2bgr(hi)
    return out[:, :, ::-1]  # cv2.imwrite writes BGR -> the PNG holds RGB


def main():
    try:
        import cv2  # noqa: F401

        have_cv2 = True
    except ImportError:
        have_cv2 = False
    model, pcfg = load_coca()
    ok = True
    if have_cv2:  # own YUV vs cv2 on random data
        import cv2

        a = np.random.default_rng(0).integers(0, 256, (512, 512, 3)).astype(np.uint8)
        e1 = np.array_equal(bgr2yuv(a), cv2.cvtColor(a, cv2.COLOR_BGR2YUV))
        e2 = np.array_equal(yuv2bgr(a), cv2.cvtColor(a, cv2.COLOR_YUV2BGR))
        print(f"own BGR2YUV == cv2: {e1}; own YUV2BGR == cv2: {e2}")
    for name in sorted(os.listdir(os.path.join(FIX, "cases"))):
        d = os.path.join(FIX, "cases", name)
        if not os.path.isfile(os.path.join(d, "case.json")):
            print(name, "no case.json, skipped")
            continue
        case = json.load(open(os.path.join(d, "case.json")))
        img = Image.open(os.path.join(d, "input.png")).convert("RGB")
        if case["params"]["control_type"] == "grayscale":
            img = img.convert("L").convert("RGB")
        caption = cls = None
        line = [name]
        if case["params"]["high_level_info"] == "caption":
            toks = beam_search(model, coca_preprocess(img, pcfg))
            caption = decode(toks)
            m = toks == case["caption_tokens"] and caption == case["caption"]
            ok &= m
            line.append(f"caption_match={m}")
        if case["params"]["high_level_info"] == "classification":
            cls = classify(img)
            ref = case["classification"]
            m = cls[0] == ref["class_id"] and cls[2] == ref["category"] and abs(cls[1] - ref["score"]) < 1e-4
            ok &= m
            line.append(f"class_match={m} ({cls[2]}, {cls[1]:.4f})")
        pr, neg = build_prompt(case, caption, cls)
        m = pr == case["official_prompt"] and neg == case["official_negative_prompt"]
        ok &= m
        line.append(f"prompt_match={m}")
        if case["params"]["control_type"] == "grayscale":
            raw = np.asarray(Image.open(os.path.join(d, "raw_output.png")).convert("RGB"))
            exp = np.asarray(Image.open(os.path.join(d, "expected.png")).convert("RGB"))
            out = yuv_merge(raw, np.asarray(img), False)
            m = np.array_equal(out, exp)
            ok &= m
            line.append(f"own_yuv_merge_exact={m}")
            if have_cv2:
                m = np.array_equal(yuv_merge(raw, np.asarray(img), True), exp)
                ok &= m
                line.append(f"cv2_yuv_merge_exact={m}")
        print("  ".join(line))
    print("ALL OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
