"""benchmarks/bench_evaluate.py's code path on the tiny metric networks (the real-size run is
the benchmark itself)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_evaluate  # noqa: E402


def test_bench_prints_both_rates_and_the_ratio_last(eval_models, capsys, one_torch_thread):
    folder = str(Path(eval_models.clip).parent)
    assert bench_evaluate.main(["--arch", "tiny", "--tiny-models", folder, "--images", "4", "--batch-size", "2",
                                "--size", "64"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if ": " in x]
    names = [x.split(": ")[0] for x in lines]
    assert "cpu.tiny.one_at_a_time.images_per_s" in names and "cpu.tiny.batched.images_per_s" in names
    assert names[-1] == "ratio.cpu.tiny.batched_vs_one_at_a_time" and float(lines[-1].split(": ")[1]) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_gpu_mode_without_a_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        bench_evaluate.main(["--gpu"])
    assert "no CUDA device is visible" in capsys.readouterr().err
