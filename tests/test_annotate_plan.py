"""Planning a run before Ray starts anything: where a stage's actors and tasks can go.

Pools start without Ray Data's blocking per-pool wait (they load their weights in
parallel), so an actor no node can host has to be refused here, by name, not left pending.
"""

from __future__ import annotations

import pytest

from graph200k.config import ConfigError
from pipelines.annotate_ray import actor_gate
from pipelines.annotate_config import RayOptions, build_stage, plan_waves

GPU_LIKE = {"class": "annotate_helpers.GpuLikeHED", "batch_size": 2, "concurrency": 1,
            "num_cpus": 0.5}


def stage(name="hed", **block):
    classes = {"hed": "annotate_helpers.GpuLikeHED", "depth": "annotate_helpers.GpuLikeDepth"}
    return build_stage(name, {**GPU_LIKE, "class": classes[name], **block})


def test_an_actor_no_single_node_can_host_is_refused_by_name():
    # two nodes with one GPU each: the cluster has 2 GPUs, but no node has the 2 an actor needs
    nodes = [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0, "GPU": 1.0}]
    big = stage(num_gpus=2)
    with pytest.raises(ConfigError) as e:
        plan_waves([big], {"CPU": 8.0, "GPU": 2.0}, nodes=nodes)
    assert "stage 'hed'" in str(e.value) and "'GPU': 2" in str(e.value)
    assert plan_waves([stage(num_gpus=1)], {"CPU": 8.0, "GPU": 2.0}, nodes=nodes)


def test_an_accelerator_type_no_node_has_is_refused_naming_what_is_there():
    nodes = [{"CPU": 8.0, "GPU": 1.0, "accelerator_type:A100": 1.0}]
    with pytest.raises(ConfigError) as e:
        plan_waves([stage(num_gpus=1, accelerator_type="H100")], {"CPU": 8.0, "GPU": 1.0},
                   nodes=nodes)
    message = str(e.value)
    assert "accelerator_type:H100" in message and "accelerator_type:A100" in message
    waves = plan_waves([stage(num_gpus=1, accelerator_type="A100")], {"CPU": 8.0, "GPU": 1.0},
                       nodes=nodes)
    assert [[s.name for s in w] for w in waves] == [["hed"]]


def test_a_custom_resource_must_sit_on_the_same_node_as_the_cpus():
    nodes = [{"CPU": 0.25, "gpu_like": 1.0}, {"CPU": 4.0}]
    with pytest.raises(ConfigError, match="no node of the cluster can host"):
        plan_waves([stage(resources={"gpu_like": 1})], {"CPU": 4.25, "gpu_like": 1.0},
                   task_cpus=0, nodes=nodes)


def test_model_stage_tasks_take_their_own_cpus_and_count_in_the_waves():
    light = stage(num_cpus=0.1)
    assert light.task_cpus == 1.0  # prepare/encode decode and resize: a core by default
    assert stage(num_cpus=0.1, task_num_cpus=0.5).task_cpus == 0.5
    cpu_stage = build_stage("canny", {"class": "annotators.canny.Canny", "num_cpus": 2})
    assert cpu_stage.task_cpus == 2.0  # a CPU stage's tasks are its num_cpus
    # 2 CPUs: with a core kept for tasks two pools of 0.6 do not fit one wave; with half
    pools = [stage("hed", num_cpus=0.6), stage("depth", num_cpus=0.6)]
    assert [len(w) for w in plan_waves(pools, {"CPU": 2.0}, task_cpus=1.0)] == [1, 1]
    assert [len(w) for w in plan_waves(pools, {"CPU": 2.0}, task_cpus=0.5)] == [2]
    with pytest.raises(ConfigError, match="task_num_cpus"):
        stage(task_num_cpus=-1)


def test_pools_start_at_once_unless_a_gate_is_asked_for():
    assert actor_gate(RayOptions()) == -1  # Ray Data: no blocking wait per pool
    assert actor_gate(RayOptions(actor_start_timeout_s=600)) == 600
