"""The mask stages for benchmarks/bench_models.py: our batched stage vs the per-image way.

    .venv/bin/python benchmarks/bench_models.py --families models_masks [--images 4] [--gpu]

Random weights of the real architectures, built from config, saved in production layout
in a temp folder and loaded by the stage's own loader; 512^2 photos (Subjects200K's size).

- sam2_mask: SAM 2.1 hiera-tiny (the smallest production config, 1024 input; hiera-large
  with --gpu). (a) our stage (one encoder pass per batch) vs (b) the library's way,
  `SAM2AutomaticMaskGenerator.generate` one image at a time, decode and PNG included both
  sides. On the CPU the point grid is 8x8 (64 prompts, one decoder pass) instead of 32x32
  so that a run takes minutes, not an hour; --gpu uses the production 32x32.
- rmbg: BiRefNet's code is remote code that ships with the weights, so the real
  architecture is measured only when RMBG_CODE_DIR names a vetted local copy of
  briaai/RMBG-2.0 (its config and birefnet.py; random weights from that config). Without
  it the figure is the tiny stand-in at 1024 and its lines say `rmbg_standin`.
  (b) is the RMBG-2.0 model card's loop: PIL resize, normalise, one image per forward.
- vlm: Qwen2-VL generation, tokens/s, batched with left padding vs one prompt at a time,
  `min_new_tokens = max_new_tokens` so both generate the same count. CPU: a small random
  Qwen2-VL (4 layers, hidden 256, vision depth 2, width 128); --gpu: Qwen2-VL-7B's shapes
  in bfloat16 (random, ~16 GB).
"""

from __future__ import annotations

import io
import os
import tempfile
import timeit
from pathlib import Path

import numpy as np

from annotate_helpers import stage_samples
from graph200k.shards import decode_image, encode_image
from pipelines.stage_ops import run_inline

STAGES = ("sam2_mask", "rmbg", "vlm")


def best_of(rounds: int, fn) -> float:
    return min(timeit.repeat(fn, setup="gc.enable()", number=1, repeat=max(1, rounds)))  # gc on, as in use


def device_of(args) -> str:
    import torch

    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("models_masks: --gpu needs a CUDA device (torch.cuda.is_available() "
                         "is False); run without --gpu for the CPU figures")
    return "cuda" if args.gpu else "cpu"


def sam2_folder(root: Path, config: str, seed: int = 0) -> Path:
    import sam2
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    folder = root / Path(config).stem
    folder.mkdir(parents=True, exist_ok=True)
    cfg = OmegaConf.load(Path(sam2.__path__[0]) / config)
    torch.manual_seed(seed)
    OmegaConf.save(cfg, folder / Path(config).name)
    torch.save({"model": instantiate(cfg.model, _recursive_=True).state_dict()},
               folder / "checkpoint.pt")
    return folder


def bench_sam2(args, root: Path, device: str, folder: Path | None = None,
               points: int | None = None) -> list:
    """`folder`: a SAM 2 model folder to use instead of the real config's random weights
    (bench_gpu's dry run hands the tiny 128 px one)."""
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    from annotators.sam2_mask import SAM2AutoMask, autocast

    config = "configs/sam2.1/sam2.1_hiera_l.yaml" if args.gpu else "configs/sam2.1/sam2.1_hiera_t.yaml"
    points = points or (32 if args.gpu else 8)
    if folder is not None:
        config = "tiny"
    stage = SAM2AutoMask({"model": str(folder or sam2_folder(root, config)), "device": device,
                          "points_per_side": points})
    stage.ensure_loaded()
    samples = stage_samples(args.images, 512)
    generator = SAM2AutomaticMaskGenerator(stage.generator.predictor.model,
                                           points_per_side=points)
    # the library's predictor assumes a 1024 input's feature sizes; the stage's knows the
    # model's own (the same at 1024, different for the tiny 128 px model of a dry run)
    generator.predictor._bb_feat_sizes = stage.generator.predictor._bb_feat_sizes
    run_inline(stage, samples[:1], 1)  # warm-up

    def per_image():
        for s in samples:
            with autocast(stage.device, stage.dtype):
                records = generator.generate(s.image())
            image = np.zeros((*s.image().shape[:2], 3), np.uint8)
            for i, r in enumerate(sorted(records, key=lambda r: -r["area"])):
                image[r["segmentation"]] = (i * 37 % 255, 255 - i * 53 % 255, 128)
            encode_image(image, "png")

    ours = best_of(args.rounds, lambda: run_inline(stage, samples, args.batch_size))
    theirs = best_of(args.rounds, per_image)
    n = len(samples)
    return [("sam2_mask_config", Path(config).stem), ("sam2_mask_points_per_side", points),
            ("sam2_mask_images_per_s", n / ours), ("sam2_mask_per_image_images_per_s", n / theirs),
            ("ratio_stage_vs_per_image_sam2_mask", theirs / ours)]


def rmbg_model(root: Path, device: str):
    """(stage config, label): the real BiRefNet from a vetted folder, or the stand-in."""
    code = os.environ.get("RMBG_CODE_DIR")
    if code:
        import torch
        from transformers import AutoConfig, AutoModelForImageSegmentation

        cfg = AutoConfig.from_pretrained(code, trust_remote_code=True)
        torch.manual_seed(0)
        net = AutoModelForImageSegmentation.from_config(cfg, trust_remote_code=True)
        folder = root / "birefnet"
        net.save_pretrained(folder)
        for f in Path(code).glob("*.py"):  # the remote code travels with the weights
            (folder / f.name).write_bytes(f.read_bytes())
        return {"model": str(folder)}, "rmbg"
    from annotators.tiny_models.masks import build_rmbg

    return {"model": str(build_rmbg(root / "rmbg-standin", 0))}, "rmbg_standin"


def bench_rmbg(args, root: Path, device: str, image_size: int = 1024) -> list:
    import torch
    from PIL import Image

    from annotators.rmbg import IMAGENET_MEAN, IMAGENET_STD, RMBG

    config, label = rmbg_model(root, device)
    stage = RMBG({**config, "trust_remote_code": True, "image_size": image_size,
                  "device": device})
    stage.ensure_loaded()
    samples = stage_samples(args.images, 512)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    run_inline(stage, samples[:1], 1)

    def per_image():  # the model card's way
        for s in samples:
            img = Image.fromarray(decode_image(s.members["target.jpg"]))
            x = torch.from_numpy(np.asarray(img.resize((image_size, image_size), Image.Resampling.BILINEAR))).permute(
                2, 0, 1).float() / 255
            x = ((x - mean) / std)[None].to(stage.device, stage.dtype)
            with torch.inference_mode():
                pred = stage.model(x)[-1].sigmoid()[0, 0].float().cpu().numpy()
            matte = Image.fromarray((pred * 255).astype(np.uint8)).resize(img.size)
            matte.save(io.BytesIO(), format="PNG")

    ours = best_of(args.rounds, lambda: run_inline(stage, samples, args.batch_size))
    theirs = best_of(args.rounds, per_image)
    n = len(samples)
    return [(f"{label}_images_per_s", n / ours), (f"{label}_per_image_images_per_s", n / theirs),
            (f"ratio_stage_vs_per_image_{label}", theirs / ours)]


def vlm_folder(root: Path, gpu: bool) -> Path:
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    from annotators.tiny_models.masks import build_qwen2_vl

    tiny = build_qwen2_vl(root / "qwen-tiny", 0)  # the tokenizer and processor
    processor = Qwen2VLProcessor.from_pretrained(tiny)
    base = Qwen2VLConfig.from_pretrained(tiny)
    if gpu:  # Qwen2-VL-7B's shapes
        text = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                    num_attention_heads=28, num_key_value_heads=4, vocab_size=152064)
        vision = dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4)
    else:
        text = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2)
        vision = dict(depth=2, embed_dim=128, hidden_size=256, num_heads=4, mlp_ratio=2)
    t = base.text_config.to_dict()
    t.update(text)
    t.pop("layer_types", None)  # derived again from num_hidden_layers
    t["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0,
                            "mrope_section": [16, 24, 24] if gpu else [8, 12, 12]}
    v = base.vision_config.to_dict()
    v.update(vision)
    cfg = Qwen2VLConfig(text_config=t, vision_config=v, image_token_id=base.image_token_id,
                        video_token_id=base.video_token_id,
                        vision_start_token_id=base.vision_start_token_id,
                        vision_end_token_id=base.vision_end_token_id)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if gpu else torch.float32
    with torch.device("cuda" if gpu else "cpu"):
        net = Qwen2VLForConditionalGeneration(cfg).to(dtype)
    folder = root / "qwen-bench"
    net.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def bench_vlm(args, root: Path, device: str, sam2_model: Path | None = None) -> list:
    import torch

    from annotators.grounded_mask import GroundedMask

    folder = vlm_folder(root, args.gpu)
    stage = GroundedMask({"grounding_model": str(folder), "device": device,
                          "model": str(sam2_model or
                                       sam2_folder(root, "configs/sam2.1/sam2.1_hiera_t.yaml"))})
    stage.ensure_loaded()
    new_tokens = 32
    real_generate = stage.vlm.generate

    def fixed_length(**kw):
        return real_generate(**kw, min_new_tokens=new_tokens)

    stage.vlm.generate = fixed_length
    stage.options.max_new_tokens = new_tokens
    samples = stage_samples(args.images, 512)
    images = [s.image() for s in samples]
    questions = [stage.question(s) for s in samples]
    stage.generate(images[:1], questions[:1])
    with torch.inference_mode():
        batched = best_of(args.rounds, lambda: [
            stage.generate(images[i:i + args.batch_size], questions[i:i + args.batch_size])
            for i in range(0, len(images), args.batch_size)])
        single = best_of(args.rounds, lambda: [stage.generate([im], [q])
                                               for im, q in zip(images, questions)])
    params = sum(p.numel() for p in stage.vlm.parameters()) / 1e6
    tokens = len(images) * new_tokens
    return [("vlm_params_m", round(params, 1)), ("vlm_batched_tokens_per_s", tokens / batched),
            ("vlm_one_at_a_time_tokens_per_s", tokens / single),
            ("ratio_vlm_batched_vs_one_at_a_time", single / batched)]


def run(args) -> list:
    import torch

    device = device_of(args)
    if device == "cpu":
        # one thread: on 2 shared cores OpenMP's barriers made batched generation 10x slower
        # than one thread under a neighbour's load (measured); the ratios need a fair footing
        torch.set_num_threads(1)
    chosen = [s for s in STAGES if not args.stages or s in args.stages
              or (s == "vlm" and "mask" in args.stages)]
    out = [("masks_load_avg_1min", os.getloadavg()[0]), ("masks_batch_size", args.batch_size),
           ("masks_torch_threads", torch.get_num_threads())]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in chosen:
            out += {"sam2_mask": bench_sam2, "rmbg": bench_rmbg, "vlm": bench_vlm}[name](
                args, root, device)
    out.append(("masks_load_avg_1min_after", os.getloadavg()[0]))
    return out
