"""A model stage's GPU failures in `pipelines.stage_ops`: out of memory retries smaller
calls and lets go of the failed batch; a sticky CUDA error exits the actor so that Ray
restarts it; an actor given GPUs that sees none refuses to load. All on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from annotate_helpers import ray_local, stage_samples  # noqa: F401  (a fixture)
from annotators.base import ConfigError, Prepared, Result
from annotators.model_stage import ImageInput, ModelStage, ModelStageOptions
from annotators.models import require_gpu
from device_fault_stages import ILLEGAL_ADDRESS, OOM_TEXT, FakeGenerator, FakeNet
from pipelines import device_faults
from pipelines.device_faults import FATAL, OOM, OTHER
from pipelines.stage_ops import run_inline

REPO = Path(__file__).resolve().parent.parent


def _alive(stage) -> list:
    return [r for r in stage.watched if r() is not None]


def test_out_of_memory_halves_images_per_call_until_it_fits_and_frees_the_batch():
    stage = FakeGenerator({"images_per_call": 8, "fits": 2})
    samples = stage_samples(6)
    outs = run_inline(stage, samples, batch_size=6)
    assert [o.status for o in outs] == ["ok"] * 6
    assert [o.meta["output"] for o in outs] == [s.key for s in samples]
    assert stage.calls == [6, 4, 2, 2, 2]  # 8 -> 4 -> 2 images per call
    assert stage.options.images_per_call == 2  # kept: the next batch starts where it fits
    # neither the errors nor the batches they were raised over are referenced any more
    assert len(stage.watched) == 7 and _alive(stage) == []
    stage.calls.clear()
    assert [o.status for o in run_inline(stage, samples[:4], batch_size=4)] == ["ok"] * 4
    assert stage.calls == [2, 2]


def test_an_input_that_does_not_fit_alone_fails_with_the_reason_and_its_neighbours_do_not():
    samples = stage_samples(4)
    stage = FakeGenerator({"images_per_call": 4, "fits": 4, "too_big": [samples[2].key]})
    outs = run_inline(stage, samples, batch_size=4)
    assert [o.status for o in outs[:2] + outs[3:]] == ["ok"] * 3
    assert outs[2].status.startswith("failed: OutOfMemoryError: CUDA out of memory. Tried")
    assert outs[2].status.endswith("(out of GPU memory alone in its call, at images_per_call 1)")
    assert "\n" not in outs[2].status and outs[2].meta is None
    assert _alive(stage) == []


def test_a_stage_without_a_call_size_option_splits_its_inputs():
    stage = FakeNet({"fits": 2})
    outs = run_inline(stage, stage_samples(5), batch_size=5)
    assert [o.status for o in outs] == ["ok"] * 5
    assert stage.calls == [5, 2, 2, 1]  # 5 inputs -> calls of 2
    assert _alive(stage) == []


@dataclass
class TinyNetOptions(ModelStageOptions):
    fits: int = 2


class TinyNet(ModelStage):
    """A ModelStage whose forward runs out of memory above `fits` images per pass."""

    name = "tinynet"
    produces = ()
    Options = TinyNetOptions

    def build_model(self):
        return torch.nn.Identity()

    def prepare(self, sample):
        return Prepared(ImageInput(np.ascontiguousarray(sample.image("target")[:8, :8])))

    def forward(self, x, out_size):
        if x.shape[0] > self.options.fits:
            raise torch.OutOfMemoryError(OOM_TEXT)
        return [float(v) for v in self.model(x).mean(dim=(1, 2, 3))]

    def encode(self, sample, context, output):
        return Result({}, meta={"mean": round(output, 3)})


def test_a_model_stage_halves_its_micro_batch():
    stage = TinyNet({"device": "cpu", "micro_batch": 8})
    samples = stage_samples(5)
    outs = run_inline(stage, samples, batch_size=5)
    assert [o.status for o in outs] == ["ok"] * 5
    assert stage.options.micro_batch == 2
    alone = run_inline(TinyNet({"device": "cpu", "micro_batch": 1}), samples, batch_size=1)
    assert [o.meta for o in outs] == [o.meta for o in alone]


class Exited(BaseException):
    """What the patched os._exit raises: the process would be gone here."""


def test_a_sticky_cuda_error_exits_the_process_before_anything_is_recorded(monkeypatch, capsys):
    codes = []

    def fake_exit(code):
        codes.append(code)
        raise Exited

    monkeypatch.setattr(device_faults.os, "_exit", fake_exit)
    samples = stage_samples(3)
    stage = FakeGenerator({"images_per_call": 4, "fits": 4, "fatal_on": [samples[1].key]})
    with pytest.raises(Exited):
        run_inline(stage, samples, batch_size=3)
    assert codes == [device_faults.EXIT_CODE]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"stage 'fakegen': RuntimeError: {ILLEGAL_ADDRESS}; the CUDA context is "
                   "unusable after this error, exiting so that Ray restarts the actor and "
                   "retries its batch"]


def test_the_actor_process_really_exits_on_a_sticky_cuda_error(tmp_path):
    code = textwrap.dedent("""
        from annotate_helpers import stage_samples
        from device_fault_stages import FakeGenerator
        from pipelines.stage_ops import run_inline
        samples = stage_samples(2)
        run_inline(FakeGenerator({"fatal_on": [samples[0].key]}), samples, batch_size=2)
        print("still running")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert run.returncode == device_faults.EXIT_CODE, run.stderr[-2000:]
    assert "still running" not in run.stdout
    assert "exiting so that Ray restarts the actor" in run.stderr


@pytest.mark.parametrize("error,kind", [
    (torch.OutOfMemoryError(OOM_TEXT), OOM),
    (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), OOM),
    (torch.AcceleratorError("CUDA error: device-side assert triggered"), FATAL),
    (RuntimeError(ILLEGAL_ADDRESS), FATAL),
    (RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx"), FATAL),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"), OTHER),
    (ValueError("the reply does not parse"), OTHER),
])
def test_errors_are_told_apart(error, kind):
    assert device_faults.kind(error) == kind


def test_an_actor_given_a_gpu_that_sees_none_refuses_to_load():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the refusal is for actors that see none")
    with pytest.raises(ConfigError, match=r"^stage 'depth': num_gpus: 0.5 but this actor sees "
                                          r"no CUDA GPU .* set device: cpu"):
        require_gpu("depth", 0.5, "auto")
    with pytest.raises(ConfigError, match="num_gpus: 1 "):
        require_gpu("depth", 1, "cuda")
    require_gpu("depth", 1, "cpu")  # told to: runs on the CPU
    require_gpu("depth", 0, "auto")  # no GPU asked for


def test_the_predict_actor_checks_before_loading_weights():
    from pipelines.annotate_ray import PredictActor

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    loaded = []

    class Loading(TinyNet):
        def load(self):
            loaded.append(True)

    with pytest.raises(ConfigError, match="stage 'tinynet': num_gpus: 1 but"):
        PredictActor(Loading, {}, 0, {}, num_gpus=1)
    assert loaded == []
    PredictActor(Loading, {"device": "cpu"}, 0, {}, num_gpus=1)
    assert loaded == [True]


def test_ray_restarts_an_actor_that_exits_on_a_cuda_error_and_reruns_its_batch(ray_local,
                                                                                 tmp_path):
    import json

    from annotate_helpers import (SAMPLES, annotate_args, joined, make_source_shard,
                                  stage_stats, write_config)
    from pipelines import annotate

    src = tmp_path / "source"
    make_source_shard(src, 0, SAMPLES)
    marker = tmp_path / "crashed-once"
    config = write_config(tmp_path, {"crashonce": {
        "class": "device_fault_stages.CrashOnce", "marker": str(marker), "batch_size": 3,
        "concurrency": 1, "num_cpus": 0.5}})
    assert annotate.main(annotate_args(src, tmp_path / "out", config, "0")) == 0
    assert marker.read_text() == "crashed"  # the actor did exit once
    stats = stage_stats(tmp_path / "out", "crashonce", 0)
    assert (stats["ok"], stats["failed"]) == (SAMPLES, 0)  # its batch was rerun, not lost
    samples = joined(tmp_path / "out", 0)
    assert len(samples) == SAMPLES
    for s in samples:
        entry = json.loads(s["meta.json"])["annotations"]["crashonce"]
        assert entry == {"bytes_mod_251": len(s["target.jpg"]) % 251}
