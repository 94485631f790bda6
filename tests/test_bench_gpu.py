"""benchmarks/bench_gpu.py without a GPU: its dry run (every part, tiny models, CPU) reports
every part with figures or an explicit reason, the README renderer reads what it wrote, a
part whose budget no longer fits is skipped and says so, and without CUDA it refuses."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_info  # noqa: E402

# each part's headline figure: present whenever the part ran to its end
HEADLINE = {"fill": "mb2.tokens_per_s", "cogvideox": "ratio_fcd_A_vs_base",
            "evaluate": "ratio_batched_vs_one_at_a_time", "annotate": "images_per_s",
            "generative": "ratio_gpu_batched_vs_loop_instantstyle",
            "models": "ratio_stage_vs_per_image_hed"}
REASONS = ("skipped: ", "stopped at its ")


def bench(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-gpu")
    proc = bench("--dry-run", "--json", out / "results.json", "--tiny-models", out / "tiny")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out / "results.json"


def test_dry_run_reports_every_part_with_figures_or_a_reason(dry_run):
    proc, path = dry_run
    report = json.loads(path.read_text())
    assert report["dry_run"] is True
    assert list(report["parts"]) == list(HEADLINE)
    for name, part in report["parts"].items():
        status = part["status"]
        assert not status.startswith("failed"), f"{name}: {status}\n{Path(part['log']).read_text()[-3000:]}"
        if status == "ok":
            value = part["values"][HEADLINE[name]]
            assert isinstance(value, float) and value > 0, (name, value)
        else:
            assert status.startswith(REASONS) and len(status) > 20, (name, status)
        for key, value in part["values"].items():  # an item left out says why
            if key.endswith(".skipped"):
                assert value.startswith("would overrun: needs ~"), (key, value)
    # the whole run keeps to its total budget (a part is stopped at its own)
    assert report["seconds"] <= report["total_budget_s"] + 10
    # the table on stdout: `name: value` lines, one status line per part
    lines = proc.stdout.strip().splitlines()
    assert all(": " in line for line in lines)
    assert [x.split(":")[0] for x in lines if ".status: " in x] == [f"{n}.status" for n in HEADLINE]


def test_readme_table_renders_the_results_with_the_device(dry_run):
    _, path = dry_run
    report = json.loads(path.read_text())
    proc = bench("--readme-table", path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = [x for x in proc.stdout.splitlines() if x.startswith("| ")]
    assert rows[0] == f"| benchmark | figure | GPU: {report['device']} | target |"
    # header; 9 model stages, 4 generative stages, evaluate, fill, cogvideox, annotate
    assert len(rows) == 1 + 9 + 4 + 4
    fill = next(r for r in rows if "micro-batch 2" in r)
    if report["parts"]["fill"]["status"] == "ok":
        tokens = report["parts"]["fill"]["values"]["mb2.tokens_per_s"]
        assert f"{tokens:.0f} tokens/s" in fill
    else:
        assert "not measured: " in fill
    assert "dry run" in proc.stdout.splitlines()[-1]


def test_a_part_whose_budget_no_longer_fits_is_skipped_and_says_so(tmp_path):
    proc = bench("--dry-run", "--budget", "1", "--parts", "fill,cogvideox", "--json",
                 tmp_path / "r.json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    parts = json.loads((tmp_path / "r.json").read_text())["parts"]
    assert list(parts) == ["fill", "cogvideox"]
    for part in parts.values():
        assert re.fullmatch(r"skipped: its budget is 8 s and [01] s of the 1 s total are left",
                            part["status"]), part["status"]
        assert part["values"] == {}
    assert "fill.status: skipped: its budget is 8 s" in proc.stdout


def test_without_cuda_it_refuses_to_start_in_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = bench("--json", tmp_path / "r.json", timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "--dry-run" in lines[0]
    assert not (tmp_path / "r.json").exists()


def test_unknown_part_is_an_error_naming_the_known_ones(tmp_path):
    proc = bench("--dry-run", "--parts", "fill,flux", "--json", tmp_path / "r.json", timeout=60)
    assert proc.returncode == 2 and "unknown part(s) ['flux']" in proc.stderr
    assert "annotate" in proc.stderr


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.4),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L40S", 362.1), ("NVIDIA L4", 121.0),
    ("NVIDIA GeForce RTX 4090", 165.2)])
def test_bf16_peak_is_looked_up_by_the_cuda_device_name(name, tflops):
    assert gpu_info.bf16_peak_tflops(name) == tflops


def test_unknown_card_has_no_peak():
    assert gpu_info.bf16_peak_tflops("Some Future Accelerator") is None


def test_utilisation_without_nvml_says_why():
    sampler = gpu_info.UtilisationSampler(interval=0.01).start()
    result = sampler.stop()
    if sampler.error is None:
        pytest.skip("NVML answers on this machine")
    assert result == {"gpu_util": f"not sampled ({sampler.error})"}
    assert "NVML" in sampler.error or "nvidia-ml-py" in sampler.error
