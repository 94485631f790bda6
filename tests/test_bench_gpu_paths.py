"""The benchmarks' `--gpu` code paths run here on CPU with tiny shapes, so the code a GPU
session will measure has executed before it gets there (no GPU in CI)."""

import argparse
import importlib.util
import math
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_fill_gpu_benchmark_path_runs_tiny_on_cpu(capsys):
    bench = _load("bench_fill")
    results = bench.bench_gpu(peak_tflops=1.0, iters=1, device="cpu", tiny=True, res=64,
                              text_tokens=8)
    assert set(results) == {1, 2}
    for mb, r in results.items():
        assert r["step_time_s"] > 0 and math.isfinite(r["loss"])
        assert 0 < r["mfu"] < 1  # FLOPs / time / peak: a fraction of the stated 1 TFLOP/s
    out = capsys.readouterr().out
    # 3 rows x 3 cells of 64 px = 4 x 4 packed tokens each: 144 image tokens
    assert "gpu.image_tokens: 144" in out
    assert "ratio.gpu.tokens_per_s.mb2_vs_mb1" in out.splitlines()[-1]


def test_cogvideox_gpu_benchmark_path_runs_tiny_on_cpu(capsys):
    bench = _load("bench_cogvideox")
    args = argparse.Namespace(gpu_res=32, steps=1, warmup=0, peak_tflops=1.0)
    results = bench.gpu_main(args, device="cpu", cfg=bench.SMALL, rank=4)
    assert set(results["mfu"]) == {"base", "fcd_A", "fcd_B", "fcd_C", "fcd_none"}
    assert all(0 < v < 1 for v in results["mfu"].values())
    assert "sequence_tokens: 40" in capsys.readouterr().out  # 32 text + 2 frames x 2x2


def test_fill_infer_benchmark_compares_the_same_image_and_refuses_gpu_without_cuda(capsys):
    import torch

    bench = _load("bench_fill")
    med = bench.bench_infer(device="cpu", repeats=1, steps=1)
    assert set(med) == {"ours", "diffusers"} and all(v > 0 for v in med.values())
    out = capsys.readouterr().out.splitlines()
    assert "infer.cpu.same_image: True" in out
    assert out[-1].startswith("ratio.infer.cpu.infer_fill_vs_diffusers: ")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a CUDA device"):
            bench.bench_infer(device="cuda", full=True)


def test_fill_real_step_benchmark_runs_small_shapes_on_cpu_and_groups_layouts(capsys):
    bench = _load("bench_fill")
    results = bench.bench_gpu_step(device="cpu", small=True, steps=1, warmup=0)
    assert set(results) == {"stream_order", "grouped"}
    assert results["grouped"]["masked_path_share"] == 0 and results["grouped"]["padding_share"] == 0
    assert results["stream_order"]["masked_path_share"] > 0  # the task mix's layouts differ
    assert all(r["step_time_s"] > 0 and r["tokens_per_s"] > 0 for r in results.values())
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("ratio.gpu.step.tokens_per_s.grouped_vs_stream_order: ")


def test_fill_gpu_benchmark_refuses_in_one_line_without_cuda(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the refusal is for machines without one")
    bench = _load("bench_fill")
    bench.main(["--gpu"])
    assert capsys.readouterr().out.splitlines() == ["gpu: skipped (no CUDA device)"]
