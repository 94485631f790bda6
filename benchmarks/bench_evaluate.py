"""The evaluation's metric pass: images/s, batched vs one image at a time, side by side.

    .venv/bin/python benchmarks/bench_evaluate.py [--images 64] [--batch-size 16] [--gpu]
        [--arch real|tiny] [--maniqa-crops 20] [--rounds 1]

One Scorer (train.evaluate.metrics) with random weights of the real architectures (the
production ids' configs: CLIP ViT-L/14, DINOv2-base, torch-fidelity's FID InceptionV3,
pyiqa's MANIQA (ViT-B/8 backbone) and MUSIQ), built once; the same 512² photos scored
twice: batches of --batch-size, then one image per network call. Half the images are
conditional-generation items (FID features of generated + ground truth, SSIM, MAN-IQA,
MUSIQ, CLIP-Score), half subject-driven ones (DINOv2, CLIP-I, CLIP-T), each image decoded
once for all its metrics. `--arch tiny` uses the tiny test networks (a quick check of the
code path). On the CPU MANIQA's 20 test crops of ViT-B/8 (~2.7 TFLOP an image) dominate:
`--maniqa-crops` lowers them (the CPU default is 1; the figure is then labelled). Lines are
`name: value`, the ratio last. Targets: CPU ratio >= 1.0, GPU (--gpu, float16) >= 3.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def photos(n: int, size: int) -> list[np.ndarray]:
    from skimage import data

    names = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "coins", "camera", "cat"]
    rgb = [np.atleast_3d(getattr(data, k)())[..., :3] for k in names]
    base = [cv2.resize(np.ascontiguousarray(np.repeat(b, 3, axis=2) if b.shape[2] == 1 else b), (size, size),
                       interpolation=cv2.INTER_AREA) for b in rgb]
    rng = np.random.default_rng(0)  # every image distinct: no cache can help
    return [np.clip(base[i % len(base)] + rng.normal(0, 3, base[0].shape), 0, 255).astype(np.uint8) for i in range(n)]


def real_nets(device, dtype, maniqa_crops: int) -> dict:
    """Random weights of the production architectures, in memory (nothing written or fetched)."""
    from transformers import (BitImageProcessor, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor,
                              Dinov2Config, Dinov2Model)

    from train.evaluate.models import MANIQA_ARCH, MANIQA_BACKBONE, _maniqa_backbone
    from train.evaluate.tiny_models import build_inception, clip_tokenizer

    tok = clip_tokenizer()
    clip = CLIPModel(CLIPConfig(  # openai/clip-vit-large-patch14
        text_config={"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                     "num_attention_heads": 12, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id},
        vision_config={"image_size": 224, "patch_size": 14, "hidden_size": 1024, "intermediate_size": 4096,
                       "num_hidden_layers": 24, "num_attention_heads": 16},
        projection_dim=768))
    clip_proc = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok)
    dino = Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=14,
                                    image_size=518))  # facebook/dinov2-base
    dino_proc = BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                  image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], resample=3)
    import tempfile

    from torchmetrics.image.fid import NoTrainInceptionV3

    from train.evaluate.models import load_inception

    with tempfile.TemporaryDirectory() as tmp:
        inception = load_inception(str(build_inception(Path(tmp))))
    from pyiqa.archs.maniqa_arch import MANIQA
    from pyiqa.archs.musiq_arch import MUSIQ

    with _maniqa_backbone(MANIQA_BACKBONE):
        maniqa = MANIQA(pretrained=False, **{**MANIQA_ARCH, "test_sample": maniqa_crops}).eval()
    musiq = MUSIQ(pretrained=False).eval()
    assert isinstance(inception, NoTrainInceptionV3)
    return {"clip": (clip.eval().to(device, dtype), clip_proc), "dino": (dino.eval().to(device, dtype), dino_proc),
            "inception": inception.to(device), "maniqa": maniqa.to(device), "musiq": musiq.to(device)}


def inputs(images):
    from train.evaluate.metrics import ScoreInput

    half = len(images) // 2
    out = [ScoreInput(im, "conditional", truth=images[(i + 1) % len(images)], prompt="a photo of an object")
           for i, im in enumerate(images[:half])]
    out += [ScoreInput(im, "subject", reference=images[i], prompt="a photo of an object")
            for i, im in enumerate(images[half:])]
    return out


def timed(scorer, batch: list, rounds: int, device) -> float:
    best = float("inf")
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        scorer.score(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def measure(device: torch.device, dtype: torch.dtype, arch: str = "real", images: int = 64,
            batch_size: int = 64, size: int = 512, maniqa_crops: int = 20, rounds: int = 1,
            tiny_models: str = "build/eval-models") -> dict:
    """Build one Scorer, score the same images one at a time and batched: images/s of each."""
    from train.evaluate.metrics import Scorer

    metrics = ("fid", "ssim", "maniqa", "musiq", "clip_score", "dino", "clip_i", "clip_t")
    t = time.perf_counter()
    if arch == "real":
        scorer = Scorer(metrics=metrics, batch_size=batch_size, device=device, dtype=dtype,
                        nets=real_nets(device, dtype, maniqa_crops))
    else:
        from train.evaluate.tiny_models import build, tiny_models_config

        build(tiny_models, log=lambda *_: None)
        scorer = Scorer(tiny_models_config(tiny_models), metrics, batch_size, device, dtype)
    load_s = time.perf_counter() - t
    batch = inputs(photos(images, size))
    scorer.batch_size = 1
    scorer.score(batch[:2] + batch[-2:])  # warm-up: first-call allocations and kernel choices
    one = timed(scorer, batch, rounds, device)
    scorer.batch_size = batch_size
    batched = timed(scorer, batch, rounds, device)
    tag = f"{device.type if device.type == 'cpu' else 'gpu'}.{arch}"
    tag += f".maniqa{maniqa_crops}crops" if arch == "real" and maniqa_crops != 20 else ""
    return {"tag": tag, "models_load_s": load_s, "images": images, "batch_size": batch_size,
            "one_at_a_time_images_per_s": images / one, "batched_images_per_s": images / batched,
            "ratio_batched_vs_one_at_a_time": one / batched}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=None, help="default 16 (CPU), 64 (--gpu)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--gpu", action="store_true", help="CUDA; float16 for the transformers networks")
    p.add_argument("--arch", choices=("real", "tiny"), default="real")
    p.add_argument("--tiny-models", default="build/eval-models", help="--arch tiny: where they are (built if missing)")
    p.add_argument("--maniqa-crops", type=int, default=None, help="MANIQA test crops (default 20 GPU, 1 CPU)")
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args(argv)
    if args.gpu and not torch.cuda.is_available():
        p.error("--gpu: no CUDA device is visible (torch.cuda.is_available() is False)")
    r = measure(torch.device("cuda" if args.gpu else "cpu"), torch.float16 if args.gpu else torch.float32,
                args.arch, args.images, args.batch_size or (64 if args.gpu else 16), args.size,
                args.maniqa_crops or (20 if args.gpu else 1), args.rounds, args.tiny_models)
    tag = r["tag"]
    print(f"models_load_s: {r['models_load_s']:.2f}")
    print(f"images: {r['images']}")
    print(f"batch_size: {r['batch_size']}")
    print(f"{tag}.one_at_a_time.images_per_s: {r['one_at_a_time_images_per_s']:.3f}")
    print(f"{tag}.batched.images_per_s: {r['batched_images_per_s']:.3f}")
    print(f"ratio.{tag}.batched_vs_one_at_a_time: {r['ratio_batched_vs_one_at_a_time']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
