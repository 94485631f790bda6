"""The quality stage for bench_models.py: batched vs one image at a time.

Random weights of the real architectures (CLIP ViT-L/14 as openai/clip-vit-large-patch14,
DINOv2-base), built in memory and handed to both sides. Each sample holds one InstantStyle
variant (stylized + reference) and one FillEdit variant with its caption, 512² JPEGs:
  (a) our stage through the pipeline's operators (`run_inline`): every image and caption of
      the batch through each net in one pass (`net_batch` = all of them);
  (b) the per-image way: the same stage code with `net_batch: 1`, i.e. one forward per
      image / caption (what a loop over `CLIPModel` / DINOv2 per variant does).
Same images and weights; best of --rounds after a warm-up. Lines: `quality.stage_images_per_s`,
`quality.per_image_images_per_s`, `ratio_stage_vs_per_image_quality` (CPU target >= 1.0).
"""

from __future__ import annotations

import time

import numpy as np

SIZE = 512


def _nets(device, dtype):
    from transformers import (BitImageProcessor, CLIPConfig, CLIPImageProcessor, CLIPModel,
                              CLIPProcessor, Dinov2Config, Dinov2Model)

    from annotators.tiny_models.metrics import byte_clip_tokenizer

    tok = byte_clip_tokenizer()
    clip = CLIPModel(CLIPConfig(  # openai/clip-vit-large-patch14
        text_config={"vocab_size": len(tok), "hidden_size": 768, "intermediate_size": 3072,
                     "num_hidden_layers": 12, "num_attention_heads": 12,
                     "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id},
        vision_config={"image_size": 224, "patch_size": 14, "hidden_size": 1024,
                       "intermediate_size": 4096, "num_hidden_layers": 24,
                       "num_attention_heads": 16},
        projection_dim=768)).eval().to(device, dtype)
    dino = Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                    patch_size=14, image_size=518)).eval().to(device, dtype)
    clip_proc = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok)
    dino_proc = BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                  image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                                  resample=3)
    return (clip, clip_proc), (dino, dino_proc)


def _samples(n: int):
    import cv2
    from skimage import data

    from annotators.base import Sample
    from graph200k.shards import encode_image

    photos = [cv2.resize(np.ascontiguousarray(getattr(data, k)()[..., :3]), (SIZE, SIZE))
              for k in ("astronaut", "chelsea", "coffee", "rocket")]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        def jpg(a):
            noisy = np.clip(a + rng.normal(0, 3, a.shape), 0, 255).astype(np.uint8)
            return encode_image(noisy, "jpg")
        t, r = photos[i % 4], photos[(i + 1) % 4]
        members = {"target.jpg": jpg(t), "instantstyle.0.jpg": jpg(t[:, ::-1]),
                   "instantstyle_ref.0.jpg": jpg(r), "filledit.0.jpg": jpg(t[::-1])}
        meta = {"annotations.filledit": {"variants": [{"caption": f"a photo of thing {i}"}]}}
        out.append(Sample(f"{i:07d}", members, meta, seed=0, stage="quality"))
    return out


def _stage(nets, device, dtype, net_batch):
    from annotators.quality import Quality

    stage = Quality({"device": str(device), "net_batch": net_batch})
    stage.clip, stage.dino = nets
    stage.device, stage.dtype, stage._loaded = device, dtype, True
    return stage


def run(args) -> list[tuple[str, float]]:
    if args.stages and "quality" not in args.stages:
        return []
    import torch

    from pipelines.stage_ops import run_inline

    if args.gpu and not torch.cuda.is_available():
        return [("quality.gpu", "skipped (no CUDA device)")]
    device = torch.device("cuda" if args.gpu else "cpu")
    dtype = torch.float16 if args.gpu else torch.float32
    n = args.images
    nets = _nets(device, dtype)
    samples = _samples(n)
    images = n * 4  # target, stylized, reference, edit

    def best(stage, batch):
        times = []
        run_inline(stage, samples[:1], batch_size=1)  # warm-up
        for _ in range(args.rounds):
            start = time.perf_counter()
            outcomes = run_inline(stage, samples, batch_size=batch)
            if args.gpu:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            assert all(o.ok for o in outcomes), [o.status for o in outcomes]
        return min(times)

    ours = best(_stage(nets, device, dtype, 4 * max(n, args.batch_size)), args.batch_size)
    one = best(_stage(nets, device, dtype, 1), 1)
    return [("quality.stage_images_per_s", images / ours),
            ("quality.per_image_images_per_s", images / one),
            ("ratio_stage_vs_per_image_quality", one / ours)]
