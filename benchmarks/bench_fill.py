"""train.fill throughput, side by side in one run.

CPU (default): the tiny recipe (configs/train/fill-tiny.yaml) with each step's grids cut in
stream order (data.group_by_layout=false: mixed layouts, padding, masked attention), grouped by
layout without caching, with a cold cache (encode + write) and with a warm cache (read);
then the data on the critical path against DataLoader workers, side by side, at the paper's
grid size: 512 px photos (Subjects200K's panel size) composed into grids of 384 px cells
(up to data.max_tokens = 6912 tokens, fill.yaml's), a tiny transformer behind a VAE that
downscales 8x like FLUX's (576 tokens per cell), micro-batch 1 x 2 accumulation.
`data.num_workers=0` (decode, degrade and compose inside the step) against
`data.num_workers=1` (one worker: this machine has 2 cores, one trains). Each variant runs
in its own process so peak RSS is its own.

    python benchmarks/bench_fill.py [--steps 20] [--worker-steps 12] [--workers 1]

GPU (--gpu): first the full-size FluxTransformer2DModel alone (FLUX.1 config, random bf16
weights, Fill in_channels 384) + LoRA rank 256 + gradient checkpointing, one 3x3 grid at 384²
(5184 image + 512 text tokens), micro-batch 1 and 2: step time, tokens/s, MFU, peak memory —
the upper bound (one layout, no VAE, no T5). Then the real step (`bench_gpu_step`): the recipe's
own loop on shards of the task mix at fill.yaml's sizes, data -> VAE -> T5/CLIP -> transformer
fwd/bwd -> AdamW, in stream order and grouped by layout; its ratio is the last line.
Refuses in one line (exit 0) when no CUDA device is present.

    python benchmarks/bench_fill.py --gpu [--peak-tflops 989] [--gpu-steps 6] [--workers-gpu 4]

Layouts (--layouts): the task mix's masked-path and padding shares, stream order vs grouped
(data only, no model; also printed by the CPU run).

Inference (--infer): seconds per grid of `train.infer_fill` (compose the grid from the images,
encode, denoise, decode: `train.visualcloze.infer.solve`) against diffusers'
VisualClozeGenerationPipeline on the same images, prompts, seed and steps, sharing the same
modules; both produce the same image (tests/test_fill_diffusers.py). CPU: the tiny FLUX-Fill
of train.visualcloze.tiny at res 32; `--infer --gpu`: full-size FLUX.1-Fill shapes (random
bf16 weights, T5-XXL / CLIP-L / FLUX VAE configs) at res 384 on CUDA, refused without CUDA.

    python benchmarks/bench_fill.py --infer [--repeats 5] [--infer-steps 4]
    python benchmarks/bench_fill.py --infer --gpu [--infer-steps 28]

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
                                   "peak_rss_gb": peak_memory_gb(),
                                   **{k: sum(r.get(k, 0) for r in rows) for k in LAYOUT_COUNTS}}))


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


LAYOUT_COUNTS = ("micro_batches", "masked_micro_batches", "image_tokens", "padding_tokens")


def _shares(counts: dict) -> tuple[float, float]:
    """(share of micro-batches on the masked per-sample path, share of tokens that are padding)."""
    masked = counts["masked_micro_batches"] / max(counts["micro_batches"], 1)
    pad = counts["padding_tokens"] / max(counts["image_tokens"] + counts["padding_tokens"], 1)
    return masked, pad


def bench_layouts(num_grids: int = 400) -> dict:
    """Masked-path and padding shares of the task mix, cut in stream order vs grouped by layout
    (data only, no model): fill.yaml per rank (micro-batch 2 x 4 accumulation, 384 px cells,
    <= 6912 tokens) and fill-tiny.yaml (micro-batch 2 x 2, 32 px cells, <= 512 tokens)."""
    import itertools

    sys.path.insert(0, str(ROOT / "tests"))
    from annotated_shards import write_annotated_shards

    from graph200k.manifest import Manifest
    from train.common.config import load_config
    from train.visualcloze import recipe as fill
    from train.visualcloze.inputs import grid_tokens
    from train.visualcloze.layouts import consecutive_micro_batches, layout_key, padding_stats, plan_micro_batches

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        write_annotated_shards(shards, num_samples=32, per_shard=8, size=64)
        manifest = Manifest.from_shards(shards).save(shards / "manifest.parquet")
        config_tasks = {"fill": "tasks.yaml", "fill_tiny": "tasks-unseen.yaml"}  # as the configs say
        # (config, VAE downscale, grids per rank and step)
        for name, config, scale, per_step in (("fill", "fill.yaml", 8, 8), ("fill_tiny", "fill-tiny.yaml", 2, 4)):
            cfg = load_config(fill.FillConfig, ROOT / "configs/train" / config,
                              [f"data.shards={shards}", f"data.manifest={manifest}",
                               f"data.tasks_config={ROOT / 'configs' / Path(config_tasks[name]).name}"])
            grids = [g for g in itertools.islice(fill.grid_source(cfg.data), 2 * num_grids)
                     if not cfg.data.max_tokens or grid_tokens(g, scale) <= cfg.data.max_tokens][:num_grids]
            steps = [grids[i:i + per_step] for i in range(0, len(grids) - per_step + 1, per_step)]
            size = cfg.data.micro_batch_size
            plans = {"stream_order": lambda st: consecutive_micro_batches(len(st), size),
                     "grouped": lambda st: plan_micro_batches([layout_key(g) for g in st], size)}
            for variant, plan in plans.items():
                counts = padding_stats([[st[i] for i in mb] for st in steps for mb in plan(st)], scale)
                masked, pad = _shares(counts)
                out[(name, variant)] = (masked, pad, counts["micro_batches"] / len(steps))
                print(f"layout.{name}.{variant}.masked_path_share: {masked:.3f}")
                print(f"layout.{name}.{variant}.padding_share: {pad:.3f}")
                print(f"layout.{name}.{variant}.micro_batches_per_step: {counts['micro_batches'] / len(steps):.2f}")
            print(f"layout.{name}.grids: {len(steps) * per_step} ({len(steps)} steps of {per_step} grids)")
    return out


def bench_cpu(steps: int, worker_steps: int = 12, workers: int = 1) -> None:
    from train.visualcloze.tiny import build_tiny_fill

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = str(build_tiny_fill(tmp / "model"))
        cache = tmp / "cache"
        runs = {
            "stream_order": _run_variant(model, steps, tmp / "s", None, ["data.group_by_layout=false"]),
            "no_cache": _run_variant(model, steps, tmp / "a", None),
            "cache_cold": _run_variant(model, steps, tmp / "b", cache),
            "cache_warm": _run_variant(model, steps, tmp / "c", cache),
        }
    print(f"steps: {steps} (global batch 4 = micro-batch 2 x 2 accumulation, 32 px cells, 1-3 rows); "
          "no_cache and the cache runs group each step's grids by layout, stream_order does not")
    for name in ("stream_order", "no_cache"):
        masked, pad = _shares(runs[name])
        print(f"{name}.masked_path_share: {masked:.3f}")
        print(f"{name}.padding_share: {pad:.3f}")
        print(f"{name}.micro_batches_per_step: {runs[name]['micro_batches'] / steps:.2f}")
    for name, r in runs.items():
        # Median over steps after the first (which pays for lazy model loading).
        print(f"{name}.step_time_ms: {1000 * statistics.median(r['step_times'][1:]):.1f}")
        print(f"{name}.first_step_ms: {1000 * r['step_times'][0]:.1f}")
        print(f"{name}.tokens_per_s: {statistics.median(r['tokens_per_s'][1:]):.0f}")
        print(f"{name}.peak_rss_mb: {1024 * r['peak_rss_gb']:.0f}")
    base = statistics.median(runs["no_cache"]["step_times"][1:])
    print(f"ratio.step_time.grouped_vs_stream_order: "
          f"{base / statistics.median(runs['stream_order']['step_times'][1:]):.2f}")
    print(f"ratio.step_time.cache_warm_vs_no_cache: {statistics.median(runs['cache_warm']['step_times'][1:]) / base:.2f}")
    print(f"ratio.step_time.cache_cold_vs_no_cache: {statistics.median(runs['cache_cold']['step_times'][1:]) / base:.2f}")
    print(f"ratio.peak_rss.cache_warm_vs_no_cache: {runs['cache_warm']['peak_rss_gb'] / runs['no_cache']['peak_rss_gb']:.2f}")
    w = bench_workers(worker_steps, workers)
    bench_layouts()
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


def bench_gpu_step(device: str = "cuda", small: bool = False, steps: int = 6, warmup: int = 2,
                   workers: int = 4) -> dict:
    """The real train.fill step (train.visualcloze.recipe.train itself): data (GridStream over
    annotated shards, DataLoader workers) -> VAE -> T5 + CLIP -> transformer forward/backward
    (LoRA, gradient checkpointing, bf16) -> clip + AdamW, on the task mix at fill.yaml's sizes
    (384 px cells, <= 6912 tokens, micro-batch 2 x 4 accumulation on one GPU), with the step's
    grids cut in stream order (mixed layouts: padding + masked attention) and grouped by layout.
    Full size: FLUX.1-Fill shapes with random bf16 weights (no download), handed to the recipe
    in place of its from_pretrained loaders. `small`: the same route with tiny widths, float32,
    64 px cells (tests/test_bench_gpu_paths.py runs it on the CPU)."""
    import gc
    import json as _json

    import torch

    if device == "cuda" and not torch.cuda.is_available():
        print("gpu.step: skipped (no CUDA device)")
        return {}
    sys.path.insert(0, str(ROOT / "tests"))
    from annotated_shards import write_annotated_shards

    from graph200k.manifest import Manifest
    from train.common.config import load_config
    from train.visualcloze import recipe as fill

    gc.collect()  # what an earlier benchmark in this process left on the card
    if device == "cuda":
        torch.cuda.empty_cache()
    results, shared = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = tmp / "shards"
        write_annotated_shards(shards, num_samples=8 if small else 32, per_shard=4 if small else 8,
                               size=64 if small else 512)
        manifest = Manifest.from_shards(shards).save(shards / "manifest.parquet")
        model = tmp / "model"
        extra = ["train.global_batch_size=8", f"data.num_workers={0 if small else workers}"]
        if small:  # 64 px cells, 8x VAE, 2x2 patches: 16 tokens a cell (fill.yaml: 576 at 384 px)
            extra += ["data.res=64", "data.max_tokens=192", "model.max_sequence_length=32", "model.dtype=float32",
                      'train.mixed_precision="no"']
        shared = _full_size_components(device, small=small, transformer=False)
        shared["vae"].save_config(model / "vae")  # the recipe reads the VAE's downscale from it

        def transformer(*_a, **_k):  # a fresh one for each run: the recipe adds its LoRA to it
            from diffusers import FluxTransformer2DModel

            default = torch.get_default_dtype()
            torch.set_default_dtype(torch.float32 if small else torch.bfloat16)
            torch.manual_seed(0)
            with torch.device(device):
                t = FluxTransformer2DModel(**(TINY if small else FULL))
            torch.set_default_dtype(default)
            return t

        loaders = {"load_transformer": transformer, "load_vae": lambda *a, **k: shared["vae"],
                   "load_text_encoders": lambda *a, **k: (shared["tokenizer"], shared["text_encoder"],
                                                          shared["tokenizer_2"], shared["text_encoder_2"])}
        real = {name: getattr(fill, name) for name in loaders}
        for variant, grouped in (("stream_order", False), ("grouped", True)):
            out = tmp / variant
            cfg = load_config(fill.FillConfig, ROOT / "configs/train/fill.yaml", [
                f"model.pretrained={model}", f"data.shards={shards}", f"data.manifest={manifest}",
                f"data.tasks_config={ROOT / 'configs/tasks.yaml'}", f"train.out_dir={out}",
                f"train.max_steps={warmup + steps}", "train.checkpoint_every=0", "train.tensorboard=false",
                "validation.every=0", f"data.group_by_layout={str(grouped).lower()}", *extra])
            try:
                for name, fn in loaders.items():
                    setattr(fill, name, fn)
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                fill.train(cfg)
            finally:
                for name, fn in real.items():
                    setattr(fill, name, fn)
            rows = [_json.loads(x) for x in open(out / "logs" / "metrics.jsonl")][warmup:]
            counts = {k: sum(r[k] for r in rows) for k in LAYOUT_COUNTS}
            masked, pad = _shares(counts)
            results[variant] = r = {
                "step_time_s": statistics.median(x["step_time_s"] for x in rows),
                "tokens_per_s": statistics.median(x["tokens_per_s"] for x in rows),
                "masked_path_share": masked, "padding_share": pad,
                "micro_batches_per_step": counts["micro_batches"] / len(rows),
                "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")}
            for k, v in r.items():
                print(f"gpu.step.{variant}.{k}: {v:.3f}")
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
    print(f"gpu.step.device: {torch.cuda.get_device_name() if device == 'cuda' else device}")
    print(f"gpu.step.steps: {steps} timed after {warmup} warm-up; 8 grids a step (micro-batch 2 x 4 accumulation)")
    print(f"ratio.gpu.step.tokens_per_s.grouped_vs_stream_order: "
          f"{results['grouped']['tokens_per_s'] / results['stream_order']['tokens_per_s']:.2f}")
    return results


# ----------------------------------------------------------------------------- inference
def _full_size_components(device: str, small: bool = False, transformer: bool = True):
    """FLUX.1-Fill-dev's shapes with random bf16 weights (no download): transformer (Fill
    in_channels 384), FLUX VAE, T5-XXL encoder, CLIP-L text model; small offline tokenizers.
    `small`: the same kinds and channel layout (16 latent channels, 8x downscale) at tiny widths,
    float32, so the GPU code path runs on a CPU first; `transformer=False`: without it."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from train.visualcloze.tiny import _fast_tokenizer, _vocabulary

    vocab = _vocabulary()
    t5_tok, _ = _fast_tokenizer(vocab, ["<pad>", "</s>", "<unk>"], None, "</s>", "<pad>", "<unk>", 512)
    clip_tok, _ = _fast_tokenizer(vocab, ["<|startoftext|>", "<|endoftext|>", "<unk>"], "<|startoftext|>",
                                  "<|endoftext|>", "<|endoftext|>", "<unk>", 77)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32 if small else torch.bfloat16)
    torch.manual_seed(0)
    width = 32 if small else 4096  # T5 d_model = the transformer's joint_attention_dim
    clip_width = 32 if small else 768  # CLIP's pooled output = pooled_projection_dim
    with torch.device(device):
        model = FluxTransformer2DModel(**(TINY if small else FULL)) if transformer else None
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4,
                            block_out_channels=[32] * 4 if small else [128, 256, 512, 512],
                            layers_per_block=1 if small else 2, latent_channels=16, use_quant_conv=False,
                            use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)
        t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=width, d_kv=8 if small else 64,
                                     d_ff=64 if small else 10240, num_layers=1 if small else 24,
                                     num_heads=4 if small else 64, feed_forward_proj="gated-gelu",
                                     is_encoder_decoder=False, use_cache=False))
        clip = CLIPTextModel(CLIPTextConfig(hidden_size=clip_width, intermediate_size=4 * clip_width,
                                            num_hidden_layers=1 if small else 12,
                                            num_attention_heads=4 if small else 12, projection_dim=clip_width,
                                            eos_token_id=1, bos_token_id=0, pad_token_id=1))
    torch.set_default_dtype(default)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return dict(scheduler=scheduler, vae=vae.eval(), text_encoder=clip.eval(), tokenizer=clip_tok,
                text_encoder_2=t5.eval(), tokenizer_2=t5_tok, transformer=model.eval() if model else None)


def bench_infer(device: str = "cpu", full: bool = False, repeats: int = 5, steps: int = 4, res: int | None = None,
                msl: int | None = None) -> dict:
    """Median seconds per grid, ours vs diffusers', measured alternately in one process."""
    import numpy as np
    import torch
    from diffusers import VisualClozeGenerationPipeline
    from PIL import Image
    from skimage import data

    from graph200k.grid import INFER, compose_images
    from train.visualcloze import infer

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_fill --infer --gpu needs a CUDA device (none here); "
                         "run `--infer` for the tiny CPU comparison")
    res = res or (384 if full else 32)
    msl = msl or (512 if full else 32)
    if full:
        ours = infer.GridFillPipeline(**_full_size_components(device))
    else:
        from train.visualcloze.tiny import build_tiny_fill

        folder = build_tiny_fill(Path(tempfile.mkdtemp(prefix="bench-infer-")) / "model")
        ours = infer.load_pipeline(str(folder), torch.float32, device)
    theirs = VisualClozeGenerationPipeline(**ours.components, resolution=res)
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    # 3 rows (2 in-context + query) of 3 real photos; the query's last cell is generated.
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.camera()]
    images = [[photos[(r + c) % 5] for c in range(3)] for r in range(3)]
    images[-1][-1] = None
    pil = [[None if im is None else Image.fromarray(im).convert("RGB") for im in row] for row in images]
    task, content = "[IMAGE1] edge map, [IMAGE2] depth map, [IMAGE3] photo.", "a cat"
    multiple = 2 * (2 ** (len(ours.vae.config.block_out_channels) - 1))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run_ours():
        grid = compose_images(pil, 2, 2, res=res, mode=INFER, multiple=multiple)  # both get PIL images
        return infer.solve(ours, infer.with_prompt(grid, None, task, content), steps, 30.0, 0, msl)[1]

    def run_theirs():
        return np.asarray(theirs(task_prompt=task, content_prompt=content, image=pil, num_inference_steps=steps,
                                 max_sequence_length=msl, generator=torch.Generator("cpu").manual_seed(0)
                                 ).images[0][0])

    times = {"ours": [], "diffusers": []}
    outputs = {}
    for i in range(repeats + 1):  # the first round warms up both
        for name, fn in (("ours", run_ours), ("diffusers", run_theirs)):
            sync()
            t0 = time.perf_counter()
            with torch.inference_mode():
                outputs[name] = fn()
            sync()
            if i:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    tag = "gpu" if full else "cpu"
    print(f"infer.{tag}.device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}")
    print(f"infer.{tag}.res: {res}  steps: {steps}  repeats: {repeats}")
    print(f"infer.{tag}.same_image: {np.array_equal(outputs['ours'], outputs['diffusers'])}")
    print(f"infer.{tag}.infer_fill_s_per_grid: {med['ours']:.4f}")
    print(f"infer.{tag}.diffusers_s_per_grid: {med['diffusers']:.4f}")
    print(f"ratio.infer.{tag}.infer_fill_vs_diffusers: {med['ours'] / med['diffusers']:.3f}  (target <= 1.05)")
    return med


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--infer", action="store_true", help="train.infer_fill vs diffusers' pipeline, s per grid")
    p.add_argument("--repeats", type=int, default=5, help="--infer: timed grids per side")
    p.add_argument("--infer-steps", type=int, default=None, help="--infer: denoising steps (4 CPU, 28 GPU)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--worker-steps", type=int, default=12, help="steps of each workers / inline variant")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers of the workers variant")
    p.add_argument("--workers-only", action="store_true", help="only the workers vs inline comparison")
    p.add_argument("--iters", type=int, default=5, help="--gpu: timed steps per micro-batch size")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--gpu-steps", type=int, default=6, help="--gpu: timed real train.fill steps per variant")
    p.add_argument("--workers-gpu", type=int, default=4, help="--gpu: DataLoader workers of the real step")
    p.add_argument("--layouts", action="store_true", help="only the masked-path / padding shares (data only)")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    p.add_argument("--override", action="append", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        _child(args)
    elif args.infer:
        bench_infer("cuda" if args.gpu else "cpu", full=args.gpu, repeats=args.repeats,
                    steps=args.infer_steps or (28 if args.gpu else 4))
    elif args.gpu:
        if bench_gpu(args.peak_tflops, args.iters):  # transformer alone, one layout: the upper bound
            bench_gpu_step(steps=args.gpu_steps, workers=args.workers_gpu)  # the real step: its ratio last
    elif args.layouts:
        bench_layouts()
    elif args.workers_only:
        w = bench_workers(args.worker_steps, args.workers)
        print(f"ratio_step_time_workers_vs_inline: {w['workers'] / w['inline']:.2f}")
    else:
        bench_cpu(args.steps, args.worker_steps, args.workers)


if __name__ == "__main__":
    main()
