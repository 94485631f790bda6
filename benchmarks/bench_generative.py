"""The generative stages: batched generation against one sample at a time, side by side.

CPU (default): the tiny pipelines of configs/annotate-tiny.yaml (built into --models if
absent) on `--samples` photos through the pipeline's operators (`run_inline`): samples/s
with the whole batch in one `predict` and `images_per_call` images per pipeline call,
against one sample per `predict` (its variants in one call). Both must write the same bytes.

    python benchmarks/bench_generative.py [--samples 16] [--stages instantstyle,filledit]

GPU (--gpu): the same comparison with the real architectures at full size (SDXL +
ControlNet + IP-Adapter, FLUX.1 12B transformers with T5-XXL, SigLIP + Redux), random
bf16/fp16 weights built on the device, 1024² samples, a few steps; images/s, seconds per
denoising step and peak memory. Skips (exit 0) when no CUDA device is present.

    python benchmarks/bench_generative.py --gpu [--steps 4] [--images-per-call 4]

Lines are `name: value`; the `ratio_batched_vs_loop_<stage>` lines come last.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

STAGES = ("instantstyle", "reduxstyle", "filledit", "depthedit")
TINY_CONFIG = ROOT / "configs" / "annotate-tiny.yaml"


def tiny_stage(name: str, models: Path):
    import yaml

    from pipelines.annotate_config import RESOURCE_KEYS, import_class

    block = yaml.safe_load(TINY_CONFIG.read_text())["stages"][name]
    cfg = {k: (v.replace("build/tiny-models", str(models)) if isinstance(v, str) else v)
           for k, v in block.items() if k not in RESOURCE_KEYS}
    return import_class(block["class"], name)(cfg)


def compare(stage, samples, rounds: int) -> dict:
    """Best-of-`rounds` seconds of the batch in one predict, and of one sample at a time."""
    from pipelines.stage_ops import run_inline

    o = stage.options
    per_call = o.images_per_call
    run_inline(stage, samples[:2], batch_size=2)  # warm-up: first-call allocations
    best = {}
    for mode in ("batched", "loop"):
        o.images_per_call = per_call if mode == "batched" else o.variants
        batch = len(samples) if mode == "batched" else 1
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            outs = run_inline(stage, samples, batch_size=batch)
            times.append(time.perf_counter() - start)
        best[mode] = (min(times), outs)
    o.images_per_call = per_call
    (tb, a), (tl, b) = best["batched"], best["loop"]
    return {"batched_s": tb, "loop_s": tl, "ok": sum(x.ok for x in a),
            "same_bytes": all(x.members == y.members for x, y in zip(a, b)),
            "images": sum(len([m for m in x.members if "_ref" not in m]) for x in a)}


def cpu_main(args) -> list:
    import torch

    from annotators.tiny_models import build
    from generative_helpers import TINY, generative_samples, pools

    torch.set_num_threads(args.threads)
    models = Path(args.models)
    build(models, TINY, seed=0, log=lambda *_: None)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        samples = generative_samples(args.samples, args.size, side=pools(Path(tmp)))
        for name in args.stages:
            stage = tiny_stage(name, models)
            stage.ensure_loaded()
            r = compare(stage, samples, args.rounds)
            n = len(samples)
            lines += [(f"{name}.samples_ok", r["ok"]), (f"{name}.images", r["images"]),
                      (f"{name}.batched_samples_per_s", n / r["batched_s"]),
                      (f"{name}.loop_samples_per_s", n / r["loop_s"]),
                      (f"{name}.same_bytes_batched_and_loop", int(r["same_bytes"])),
                      (f"ratio_batched_vs_loop_{name}", r["loop_s"] / r["batched_s"])]
    return lines


# -- GPU: full-size architectures, random weights --------------------------------------
def random_stage(name: str, shapes, device: str, dtype: str, size: int, steps: int,
                 variants: int, per_call: int):
    """A stage whose pipelines are the real architectures (at `shapes`) with random
    weights, built on the device and handed to the stage (no weights are loaded)."""
    import torch
    from diffusers import (FluxControlPipeline, FluxFillPipeline, FluxPriorReduxPipeline)
    from transformers import CLIPImageProcessor

    from annotators.depthedit import DepthEdit
    from annotators.diffusion import vae_memory
    from annotators.filledit import FillEdit
    from annotators.instantstyle import InstantStyle, per_image_style_sdxl
    from annotators.reduxstyle import ReduxStyle
    from annotators.tiny_models import generative as g

    torch_dtype = getattr(torch, dtype)
    common = dict(resolution=size, steps=steps, variants=variants, images_per_call=per_call,
                  device=device, dtype=dtype, max_sequence_length=512)
    # Made on the device in float32 (random init there is fast), then cast: the FLUX stages
    # peak near 70 GB while their 12B transformer and T5-XXL are cast.
    with torch.device(device):
        if name == "instantstyle":
            common.pop("max_sequence_length")
            stage = InstantStyle({**common, "reference_side": shapes.ip_vision[4]})
            base = g.sdxl_base(shapes)
            side = shapes.ip_vision[4]
            pipe = per_image_style_sdxl()(
                **base, controlnet=g.sdxl_controlnet(base["unet"], shapes),
                image_encoder=g.ip_image_encoder(shapes),
                feature_extractor=CLIPImageProcessor(size=side, crop_size=side))
            flat = g.ip_adapter_state(base["unet"], shapes.ip_embed)
            nested = {part: {k.split(".", 1)[1]: v for k, v in flat.items()
                             if k.startswith(part + ".")} for part in ("image_proj", "ip_adapter")}
            pipe.load_ip_adapter(nested, subfolder=None, weight_name=None)
            pipe.set_ip_adapter_scale({"up": {"block_0": [0.0, 1.0, 0.0]}})
            stage.pipe = pipe
        elif name == "reduxstyle":
            stage = ReduxStyle({**common, "reference_side": shapes.siglip[4]})
            stage.pipe = FluxControlPipeline(**g.flux_components(shapes, g.CONTROL))
            stage.redux = FluxPriorReduxPipeline(**g.redux_components(shapes))
        elif name == "filledit":
            stage = FillEdit({**common, "rewrite": "same_category"})
            stage.pipe = FluxFillPipeline(**g.flux_components(shapes, g.FILL))
        else:
            stage = DepthEdit({**common, "rewrite": "same_category", "variants": 1,
                               "reference_side": shapes.siglip[4]})
            stage.pipe = FluxControlPipeline(**g.flux_components(shapes, g.CONTROL))
            stage.redux = FluxPriorReduxPipeline(**g.redux_components(shapes))
    for p in (stage.pipe, getattr(stage, "redux", None)):
        if p is not None:
            p.to(device, torch_dtype)
            p.set_progress_bar_config(disable=True)
    vae_memory(stage.pipe, stage.options)  # as `load` sets it: the decode peak is measured
    stage._loaded = True
    return stage


def gpu_main(args, device: str = "cuda", shapes=None, size: int = 1024,
             dtype: str | None = None) -> list:
    import gc

    import torch

    from annotators.tiny_models.generative import FULL
    from generative_helpers import generative_samples, pools

    shapes = shapes or FULL
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        side = pools(Path(tmp))
        for name in args.stages:
            stage_dtype = dtype or ("float16" if name == "instantstyle" else "bfloat16")
            variants = 1 if name == "depthedit" else args.variants
            stage = random_stage(name, shapes, device, stage_dtype, size, args.steps, variants,
                                 args.images_per_call)
            samples = generative_samples(args.samples, size, side=side)
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            r = compare(stage, samples, args.rounds)
            images = len(samples) * variants
            lines += [(f"gpu.{name}.samples_ok", r["ok"]),
                      (f"gpu.{name}.batched_images_per_s", images / r["batched_s"]),
                      (f"gpu.{name}.loop_images_per_s", images / r["loop_s"]),
                      (f"gpu.{name}.batched_s_per_step", r["batched_s"] / args.steps),
                      (f"ratio_gpu_batched_vs_loop_{name}", r["loop_s"] / r["batched_s"])]
            if device.startswith("cuda"):
                lines.append((f"gpu.{name}.peak_memory_gb", torch.cuda.max_memory_allocated() / 2**30))
            del stage
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--samples", type=int, default=None, help="default 16 (CPU), 4 (GPU)")
    p.add_argument("--size", type=int, default=64, help="CPU samples' side")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    p.add_argument("--models", default=str(ROOT / "build" / "tiny-models"))
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--steps", type=int, default=4, help="GPU: denoising steps")
    p.add_argument("--variants", type=int, default=2, help="GPU: variants per sample")
    p.add_argument("--images-per-call", type=int, default=4, help="GPU: batched call size")
    args = p.parse_args(argv)
    args.stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        p.error(f"unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            print("gpu: no CUDA device; nothing measured")
            return 0
        args.samples = args.samples or 4
        lines = gpu_main(args)
    else:
        args.samples = args.samples or 16
        lines = cpu_main(args)
    ratios = [line for line in lines if line[0].startswith("ratio_")]
    for key, value in [line for line in lines if not line[0].startswith("ratio_")] + ratios:
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
