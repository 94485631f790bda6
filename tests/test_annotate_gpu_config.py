"""The shipped annotate configs as the planner reads them (no Ray): the generative wave
grows with the GPUs, each actor on a GPU of its own; the tiny config runs on the CPU on
purpose."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.annotate_config import load_config, plan_waves, select_stages

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
GENERATIVE = ("instantstyle", "reduxstyle", "filledit", "depthedit")


@pytest.fixture(scope="module")
def shipped():
    config = load_config(CONFIGS / "annotate.yaml")
    config["stages"]["rmbg"]["revision"] = "0" * 40  # what its user pins (remote code)
    return {s.name: s for s in select_stages(config, None)}


@pytest.mark.parametrize("gpus", [8, 32, 64])
def test_the_generative_pools_can_use_every_gpu_of_the_cluster(shipped, gpus):
    stages = [shipped[n] for n in GENERATIVE]
    for s in stages:
        assert s.num_gpus == 1, s.name  # one actor per GPU: two do not fit (docs)
        assert s.concurrency[0] == 1 and s.concurrency[1] >= gpus, s.name
    nodes = [{"CPU": 32.0, "GPU": 8.0}] * (gpus // 8)
    capacity = {"CPU": 32.0 * len(nodes), "GPU": float(gpus)}
    waves = plan_waves(stages, capacity, nodes=nodes)
    assert [[s.name for s in w] for w in waves] == [sorted(GENERATIVE)]  # one wave, together
    # each pool alone may grow to every GPU of the cluster (Ray Data's autoscaling pool)
    assert all(s.concurrency[1] * s.num_gpus >= gpus for s in stages)


def test_the_whole_shipped_config_plans_on_one_8_gpu_node(shipped):
    waves = plan_waves(list(shipped.values()), {"CPU": 32.0, "GPU": 8.0},
                       nodes=[{"CPU": 32.0, "GPU": 8.0}])
    generative = [w for w in waves if set(GENERATIVE) & {s.name for s in w}]
    assert len(generative) == 1 and {s.name for s in generative[0]} >= set(GENERATIVE)


def test_the_generative_stages_run_on_a_gpu_with_vae_slicing(shipped):
    for name in GENERATIVE:
        s = shipped[name]
        options = s.cls(s.config).options  # what the actor gets (no weights load here)
        assert options.device == "auto" and options.dtype == "auto", name  # refuses the CPU
        assert options.vae_slicing is True and options.vae_tiling is False, name
        assert options.images_per_call >= 1


def test_the_tiny_config_says_it_runs_on_the_cpu():
    tiny = {s.name: s for s in select_stages(load_config(CONFIGS / "annotate-tiny.yaml"), None)}
    for s in tiny.values():
        if s.uses_actors and "device" in s.cls.option_names():
            assert s.config.get("device") == "cpu", s.name
            assert not s.num_gpus, s.name
