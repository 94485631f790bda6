"""The CPU suite runs on the CPU on a GPU box too (tests/conftest.py hides the GPUs before
anything initialises CUDA): in this process, in subprocesses and in Ray's workers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from annotate_helpers import ray_local  # noqa: F401

pytestmark = pytest.mark.skipif(os.environ.get("GRAPH200K_TEST_GPU") == "1",
                                reason="GRAPH200K_TEST_GPU=1 keeps the GPUs visible on purpose")

# the variable only: torch reads it at its first CUDA call (importing torch here costs ~10 s)
PROBE = "import os; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')))"


def test_this_process_and_its_subprocesses_see_no_gpu():
    import torch

    assert os.environ.get("CUDA_VISIBLE_DEVICES") == ""
    assert not torch.cuda.is_available() and torch.cuda.device_count() == 0
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["''"]


def test_ray_workers_see_no_gpu(ray_local):  # noqa: F811
    ray = ray_local

    @ray.remote(num_cpus=0)
    def visible():
        return os.environ.get("CUDA_VISIBLE_DEVICES"), ray.get_gpu_ids()

    assert ray.get(visible.remote()) == ("", [])
    assert ray.cluster_resources().get("GPU", 0) == 0
