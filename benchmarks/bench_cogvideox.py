"""Training-step cost of RealGeneral's SC-AdaLN + FCD masks vs the unmodified diffusers transformer.

    python benchmarks/bench_cogvideox.py            # small random CogVideoX1.5-layout model, CPU
    python benchmarks/bench_cogvideox.py --gpu      # full-size CogVideoX1.5-5B transformer, 512^2, bf16

One step = forward + backward + AdamW on LoRA (same rank, same attention + adaLN linears) for a
two-frame [text; condition; target] sequence. "base" is diffusers' CogVideoXTransformer3DModel
as shipped (one adaLN branch, no mask); the others are RealGeneralModel with FCD variants A, B,
C, none. All variants run interleaved round by round in one process so drift hits them alike;
the figure is the fastest step (median alongside). Output: `name: value` lines, ratios last (target <= 1.15).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from train.realgeneral.model import RealGeneralModel, two_frame_rotary_emb  # noqa: E402

VARIANTS = ("A", "B", "C", "none")

# THUDM/CogVideoX1.5-5B transformer/config.json (random init here: only shapes matter).
COGVIDEOX15_5B = dict(
    num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
    text_embed_dim=4096, num_layers=42, sample_width=300, sample_height=300, sample_frames=81,
    patch_size=2, patch_size_t=2, temporal_compression_ratio=4, max_text_seq_length=224,
    use_rotary_positional_embeddings=True, patch_bias=False,
)
SMALL = dict(
    num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=4, time_embed_dim=64,
    text_embed_dim=64, num_layers=4, sample_width=32, sample_height=32, sample_frames=5,
    patch_size=2, patch_size_t=2, temporal_compression_ratio=4, max_text_seq_length=32,
    use_rotary_positional_embeddings=True, patch_bias=False,
)


class Runner:
    """One model + its optimizer + fixed inputs; `step()` runs one timed training step."""

    def __init__(self, name, transformer, variant, rank, latent, text, timestep, device, checkpointing):
        from peft import LoraConfig

        self.name = name
        if variant is None:  # unmodified diffusers transformer, LoRA on the same kinds of layers
            transformer.requires_grad_(False)
            base_targets = r"transformer_blocks\.\d+\.(?:norm1|norm2)\.linear|transformer_blocks\.\d+\.attn1\.(?:to_q|to_k|to_v|to_out\.0)"
            transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=base_targets))
            self.model = transformer
        else:
            self.model = RealGeneralModel(transformer, ["canny"], variant)
            self.model.add_lora(rank, rank)
        for p in self.model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        if checkpointing:
            transformer.enable_gradient_checkpointing()
        self.variant = variant
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4, betas=(0.9, 0.95))
        self.latent, self.text, self.timestep, self.device = latent, text, timestep, device
        self.times: list[float] = []

    def _loss(self):
        condition, target = self.latent, torch.randn_like(self.latent)
        if self.variant is None:
            r = self.model.config.patch_size_t or 1
            b, _, c, h, w = target.shape
            video = torch.cat([condition.expand(b, r, c, h, w), target.expand(b, r, c, h, w)], dim=1)
            rope = two_frame_rotary_emb(self.model.config, h, w, self.device)
            out = self.model(hidden_states=video, encoder_hidden_states=self.text, timestep=self.timestep,
                             image_rotary_emb=rope, return_dict=False)[0]
            pred = out[:, r:].mean(dim=1, keepdim=True)
        else:
            keyword = torch.zeros(self.text.shape[:2], dtype=torch.bool, device=self.device)
            pred = self.model(condition, target, self.text, self.timestep, keyword,
                              torch.zeros(len(self.text), dtype=torch.long, device=self.device))
        return pred.float().pow(2).mean()

    def step(self, sync) -> None:
        sync()
        t0 = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            loss = self._loss()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync()
        self.times.append(time.perf_counter() - t0)


def inputs(config, res_latent, batch, device, dtype):
    latent = torch.randn(batch, 1, config["in_channels"], res_latent, res_latent, device=device, dtype=dtype)
    text = torch.randn(batch, config["max_text_seq_length"], config["text_embed_dim"], device=device, dtype=dtype)
    return latent, text, torch.full((batch,), 500, device=device)


def make_runner(variant, config, data, rank, device, dtype, checkpointing) -> Runner:
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(0)  # every variant starts from the same random weights
    with torch.device(device):
        transformer = CogVideoXTransformer3DModel(**config).to(dtype)
    name = "base" if variant is None else f"fcd_{variant}"
    return Runner(name, transformer, variant, rank, *data, device, checkpointing)


def time_steps(runners, steps, warmup, sync) -> None:
    for _ in range(warmup):
        for r in runners:
            r.step(sync)
    for r in runners:
        r.times.clear()
    for _ in range(steps):  # interleaved: round i runs every variant once
        for r in runners:
            r.step(sync)


def cpu_main(args) -> None:
    torch.set_num_threads(args.threads)
    cpu, data = torch.device("cpu"), inputs(SMALL, args.res // 8, args.batch, "cpu", torch.float32)
    runners = [make_runner(v, SMALL, data, args.rank, cpu, torch.float32, False) for v in (None, *VARIANTS)]
    seq = SMALL["max_text_seq_length"] + 2 * (args.res // 16) ** 2
    print(f"device: cpu ({args.threads} threads)")
    print(f"model: {SMALL['num_layers']} layers x {SMALL['num_attention_heads']} heads x {SMALL['attention_head_dim']}")
    print(f"sequence_tokens: {seq}")
    print(f"batch: {args.batch}")
    time_steps(runners, args.steps, args.warmup, lambda: None)
    report(runners)


def gpu_main(args, device: str = "cuda", cfg: dict = COGVIDEOX15_5B, rank: int = 256,
             variants=(None, *VARIANTS)) -> dict:
    """Full size on CUDA; with device="cpu" and SMALL the same code runs in the tests.
    `variants`: None is the unmodified transformer (always measured: MFU counts its FLOPs)."""
    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("gpu: skipped (no CUDA device on this machine)")
        return {}
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    dev = torch.device(device)
    res_latent = args.gpu_res // 8
    seq = cfg["max_text_seq_length"] + 2 * (res_latent // 2) ** 2
    data = inputs(cfg, res_latent, 1, dev, torch.bfloat16)
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}")
    print(f"sequence_tokens: {seq}")
    # One 5B model at a time (five copies would not fit in 80 GB): variants run one after another.
    runners, peaks = [], {}
    for variant in (None, *[v for v in variants if v is not None]):
        runner = make_runner(variant, cfg, data, rank, dev, torch.bfloat16, True)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        time_steps([runner], args.steps, args.warmup, sync)
        peaks[runner.name] = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        if variant is None:  # MFU counts the base model's FLOPs for every variant
            params = sum(p.numel() for n, p in runner.model.named_parameters() if "lora_" not in n)
        runner.model = runner.optimizer = runner.params = None
        runners.append(runner)
        if cuda:
            torch.cuda.empty_cache()
    report(runners)
    # Model FLOPs of one step: forward (2 x params x tokens + 4 x layers x seq^2 x width for
    # QK^T and AV) plus the backward to the activations (about 1x forward: the base weights are
    # frozen, so no weight gradients); checkpoint recomputation is not counted (MFU convention).
    width = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    forward = 2 * params * seq + 4 * cfg["num_layers"] * seq**2 * width
    if args.peak_tflops is None:
        from gpu_info import bf16_peak_tflops

        args.peak_tflops = (bf16_peak_tflops(torch.cuda.get_device_name()) if cuda else None) or float("nan")
    peak = args.peak_tflops * 1e12
    mfu = {r.name: 2 * forward / min(r.times) / peak for r in runners}
    for name, value in mfu.items():
        print(f"mfu_{name}: {value:.3f}")
    for name, gb in peaks.items():
        print(f"peak_memory_gb_{name}: {gb:.1f}")
    return {"mfu": mfu, "peak_memory_gb": peaks, "steps": {r.name: list(r.times) for r in runners}}


def report(runners) -> None:
    # Ratios use the fastest step of each variant: on shared cores other processes only ever
    # add time, and the minimum is what survives them (medians moved 2x between runs here).
    best = {r.name: min(r.times) for r in runners}
    for r in runners:
        print(f"step_ms_{r.name}: {1000 * best[r.name]:.2f} (median {1000 * statistics.median(r.times):.2f})")
    median = {r.name: statistics.median(r.times) for r in runners}
    for name in best:
        if name != "base":
            print(f"ratio_{name}_vs_base_fastest: {best[name] / best['base']:.3f}")
            print(f"ratio_{name}_vs_base_median: {median[name] / median['base']:.3f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="full-size CogVideoX1.5-5B transformer on CUDA")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--res", type=int, default=256, help="CPU image side (latent = res / 8; 256 -> 544 tokens)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16, help="CPU LoRA rank (GPU: 256, the paper's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gpu-res", type=int, default=512)
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="dense bf16 peak (default: the card's, benchmarks/gpu_info.py)")
    args = parser.parse_args(argv)
    gpu_main(args) if args.gpu else cpu_main(args)


if __name__ == "__main__":
    main()
