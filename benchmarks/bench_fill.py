"""train.fill throughput, side by side in one run.

CPU (default): the tiny recipe (configs/train/fill-tiny.yaml) without caching, with a cold
cache (encode + write) and with a warm cache (read; VAE and text encoders never loaded);
then the data on the critical path against DataLoader workers, side by side, at the paper's
grid size: 512 px photos (Subjects200K's panel size) composed into grids of 384 px cells
(up to data.max_tokens = 6912 tokens, fill.yaml's), a tiny transformer behind a VAE that
downscales 8x like FLUX's (576 tokens per cell), micro-batch 1 x 2 accumulation.
`data.num_workers=0` (decode, degrade and compose inside the step) against
`data.num_workers=1` (one worker: this machine has 2 cores, one trains). Each variant runs
in its own process so peak RSS is its own.

    python benchmarks/bench_fill.py [--steps 20] [--worker-steps 12] [--workers 1]

GPU (--gpu): the full-size FluxTransformer2DModel (FLUX.1 config, random bf16 weights,
Fill in_channels 384) + LoRA rank 256 + gradient checkpointing, one 3x3 grid at 384²
(5184 image + 512 text tokens), micro-batch 1 and 2: step time, tokens/s, MFU, peak memory.
Skips (exit 0) when no CUDA device is present.

    python benchmarks/bench_fill.py --gpu [--peak-tflops 989]

Output: `name: value` lines, ratios last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]


# ----------------------------------------------------------------------------- CPU
def _child(args) -> None:
    """One variant in this process: prints a JSON line with step times and peak RSS."""
    import json as _json
    import os

    from train.visualcloze import recipe as fill
    from train.common.config import load_config
    from train.common.metrics import peak_memory_gb

    overrides = [f"model.pretrained={args.model}", f"train.out_dir={args.out}", f"train.max_steps={args.steps}",
                 "train.checkpoint_every=0", "train.tensorboard=false", *(args.override or [])]
    if args.cache:
        overrides.append(f"data.cache_dir={args.cache}")
    cfg = load_config(fill.FillConfig, ROOT / "configs/train/fill-tiny.yaml", overrides)
    os.environ.setdefault("TQDM_DISABLE", "1")
    fill.train(cfg)
    rows = [_json.loads(line) for line in open(Path(args.out) / "logs" / "metrics.jsonl")]
    print("RESULT " + _json.dumps({"step_times": [r["step_time_s"] for r in rows],
                                   "tokens_per_s": [r["tokens_per_s"] for r in rows],
                                   "peak_rss_gb": peak_memory_gb()}))


def _run_variant(model: str, steps: int, out: Path, cache: Path | None, overrides=()) -> dict:
    cmd = [sys.executable, __file__, "--_child", "--model", model, "--steps", str(steps), "--out", str(out)]
    if cache:
        cmd += ["--cache", str(cache)]
    for o in overrides:
        cmd += ["--override", o]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"variant failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def bench_workers(steps: int, workers: int) -> dict:
    """Step time with the grids built inline vs in `workers` DataLoader workers, same batches."""
    sys.path.insert(0, str(ROOT / "tests"))
    from annotated_shards import write_annotated_shards

    from graph200k.manifest import Manifest
    from train.visualcloze.tiny import TinyFillConfig, build_tiny_fill

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = tmp / "shards"
        write_annotated_shards(shards, num_samples=32, per_shard=8, size=512)
        manifest = Manifest.from_shards(shards).save(shards / "manifest.parquet")
        model = str(build_tiny_fill(tmp / "model", TinyFillConfig(vae_block_out_channels=[8, 8, 8, 8])))
        common = [f"data.shards={shards}", f"data.manifest={manifest}", "data.res=384", "data.max_tokens=6912",
                  "data.micro_batch_size=1", "train.global_batch_size=2", "validation.every=0",
                  "data.tasks_config=configs/tasks.yaml", "model.gradient_checkpointing=false"]
        runs = {n: _run_variant(model, steps, tmp / f"w{n}", None, [*common, f"data.num_workers={n}"])
                for n in (0, workers)}
    inline = statistics.median(runs[0]["step_times"][2:])
    with_workers = statistics.median(runs[workers]["step_times"][2:])
    print(f"workers.steps: {steps} (global batch 2 = micro-batch 1 x 2, 384 px cells, <= 6912 tokens)")
    print(f"workers.inline.step_time_ms: {1000 * inline:.1f}")
    print(f"workers.num_workers_{workers}.step_time_ms: {1000 * with_workers:.1f}")
    tokens = [t * dt for t, dt in zip(runs[0]["tokens_per_s"], runs[0]["step_times"])]
    print(f"workers.image_tokens_per_step: median {statistics.median(tokens):.0f}, max {max(tokens):.0f}")
    return {"inline": inline, "workers": with_workers}


def bench_cpu(steps: int, worker_steps: int = 12, workers: int = 1) -> None:
    from train.visualcloze.tiny import build_tiny_fill

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = str(build_tiny_fill(tmp / "model"))
        cache = tmp / "cache"
        runs = {
            "no_cache": _run_variant(model, steps, tmp / "a", None),
            "cache_cold": _run_variant(model, steps, tmp / "b", cache),
            "cache_warm": _run_variant(model, steps, tmp / "c", cache),
        }
    print(f"steps: {steps} (global batch 4 = micro-batch 2 x 2 accumulation, 32 px cells, 1-2 rows)")
    for name, r in runs.items():
        # Median over steps after the first (which pays for lazy model loading).
        print(f"{name}.step_time_ms: {1000 * statistics.median(r['step_times'][1:]):.1f}")
        print(f"{name}.first_step_ms: {1000 * r['step_times'][0]:.1f}")
        print(f"{name}.tokens_per_s: {statistics.median(r['tokens_per_s'][1:]):.0f}")
        print(f"{name}.peak_rss_mb: {1024 * r['peak_rss_gb']:.0f}")
    base = statistics.median(runs["no_cache"]["step_times"][1:])
    print(f"ratio.step_time.cache_warm_vs_no_cache: {statistics.median(runs['cache_warm']['step_times'][1:]) / base:.2f}")
    print(f"ratio.step_time.cache_cold_vs_no_cache: {statistics.median(runs['cache_cold']['step_times'][1:]) / base:.2f}")
    print(f"ratio.peak_rss.cache_warm_vs_no_cache: {runs['cache_warm']['peak_rss_gb'] / runs['no_cache']['peak_rss_gb']:.2f}")
    w = bench_workers(worker_steps, workers)
    print(f"ratio_step_time_workers_vs_inline: {w['workers'] / w['inline']:.2f}")


# ----------------------------------------------------------------------------- GPU
def _attention_flops(seq: int, dim: int, layers: int) -> float:
    return layers * 4.0 * seq * seq * dim  # QK^T + AV, forward


# FLUX.1 shapes (the diffusers defaults) with the Fill input width 64 + 64 + 256; the tiny
# shapes run the same code on CPU (tests/test_bench_gpu_paths.py) so it is exercised
# before a GPU session measures it.
FULL = dict(in_channels=384, out_channels=64, guidance_embeds=True)
TINY = dict(in_channels=384, out_channels=64, guidance_embeds=True, num_layers=1,
            num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])


def bench_gpu(peak_tflops: float | None, iters: int, device: str = "cuda", tiny: bool = False,
              res: int = 384, text_tokens: int = 512, micro_batches=(1, 2)) -> dict:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        print("gpu: skipped (no CUDA device)")
        return {}
    from diffusers import FluxTransformer2DModel

    from train.visualcloze.inputs import FillBatch, grid_position_ids
    from train.visualcloze.model import PerSampleRopeAttnProcessor, add_lora, predict_velocity, velocity_loss

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    if peak_tflops is None:
        from gpu_info import bf16_peak_tflops

        peak_tflops = bf16_peak_tflops(name) or float("nan")
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = FluxTransformer2DModel(**(TINY if tiny else FULL))
    torch.set_default_dtype(default_dtype)
    cfg = model.config
    frozen_params = sum(p.numel() for p in model.parameters())
    params = add_lora(model, 8 if tiny else 256, 8.0 if tiny else 256.0)
    model.set_attn_processor(PerSampleRopeAttnProcessor())
    model.enable_gradient_checkpointing()
    model.train()
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)

    cell = res // 16  # packed tokens per side of a res² cell (latent side 2·cell)
    ids = grid_position_ids([(2 * cell, 2 * 3 * cell)] * 3)  # 3 rows of 3 cells
    n, txt = ids.shape[0], text_tokens
    inner = cfg.num_attention_heads * cfg.attention_head_dim
    layers = cfg.num_layers + cfg.num_single_layers
    print(f"gpu.device: {name}")
    print(f"gpu.transformer_params_b: {frozen_params / 1e9:.2f}")
    print(f"gpu.image_tokens: {n}")
    results = {}
    for mb in micro_batches:
        valid = torch.ones(mb, n, dtype=torch.bool)
        cellmask = torch.zeros(mb, n, dtype=torch.bool)
        batch = FillBatch(torch.randn(mb, n, 64 + 256), torch.randn(mb, n, 64), ids, valid, cellmask,
                          torch.randn(mb, txt, cfg.joint_attention_dim),
                          torch.randn(mb, cfg.pooled_projection_dim), ["bench"] * mb)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(iters + 2):
            sync()
            t0 = time.perf_counter()
            x0 = batch.latents.to(device)
            t = torch.rand(mb, device=device)
            noise = torch.randn_like(x0)
            noisy = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = velocity_loss(predict_velocity(model, batch, noisy, t, 1.0), noise, x0,
                                     valid.to(device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 2.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            if i >= 2:  # warm-up steps excluded
                times.append(time.perf_counter() - t0)
        step = statistics.median(times)
        seq = n + txt
        # Model FLOPs (recompute not counted): forward 2·P·tokens + attention, and the
        # backward to the activations ≈ 1× forward: the base weights are frozen (LoRA), so
        # there are no weight gradients. Same convention as bench_cogvideox.
        flops = 2 * mb * (2.0 * frozen_params * seq + _attention_flops(seq, inner, layers))
        mfu = flops / step / (peak_tflops * 1e12)
        peak_gb = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        results[mb] = {"step_time_s": step, "tokens_per_s": mb * seq / step, "mfu": mfu,
                       "peak_mem_gb": peak_gb, "loss": float(loss.detach())}
        for k in ("step_time_s", "tokens_per_s", "mfu", "peak_mem_gb"):
            print(f"gpu.mb{mb}.{k}: {results[mb][k]:.3f}")
    if {1, 2} <= set(results):
        print(f"ratio.gpu.tokens_per_s.mb2_vs_mb1: {2 * results[1]['step_time_s'] / results[2]['step_time_s']:.2f}")
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--worker-steps", type=int, default=12, help="steps of each workers / inline variant")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers of the workers variant")
    p.add_argument("--workers-only", action="store_true", help="only the workers vs inline comparison")
    p.add_argument("--iters", type=int, default=5, help="--gpu: timed steps per micro-batch size")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    p.add_argument("--override", action="append", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        _child(args)
    elif args.gpu:
        bench_gpu(args.peak_tflops, args.iters)
    elif args.workers_only:
        w = bench_workers(args.worker_steps, args.workers)
        print(f"ratio_step_time_workers_vs_inline: {w['workers'] / w['inline']:.2f}")
    else:
        bench_cpu(args.steps, args.worker_steps, args.workers)


if __name__ == "__main__":
    main()
