"""bench_generative's `--gpu` path (full-size architectures with random weights, built on
the device) runs here on the CPU with the tiny shapes, so the code a GPU session measures
has executed before it gets there."""

import argparse
import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_generative.py"


def test_gpu_benchmark_path_runs_tiny_on_cpu(one_torch_thread):
    spec = importlib.util.spec_from_file_location("bench_generative", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_generative"] = bench
    spec.loader.exec_module(bench)
    from annotators.tiny_models.generative import TINY

    args = argparse.Namespace(stages=list(bench.STAGES), samples=2, steps=1, variants=2,
                              images_per_call=4, rounds=1)
    lines = dict(bench.gpu_main(args, device="cpu", shapes=TINY, size=32, dtype="float32"))
    for name in bench.STAGES:
        assert lines[f"gpu.{name}.samples_ok"] == 2
        assert lines[f"gpu.{name}.batched_images_per_s"] > 0
        assert f"ratio_gpu_batched_vs_loop_{name}" in lines
