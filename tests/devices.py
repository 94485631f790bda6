"""Which device a test runs a stage on, and in which precision: explicit, so that a test
means the same on a CPU machine and on a GPU box (where `device: auto` is CUDA + float16).

`DEVICES` parametrizes a test over the CPU and CUDA; the CUDA case is skipped unless a GPU
is visible (the CPU suite hides them: tests/conftest.py; `GRAPH200K_TEST_GPU=1` keeps them).
"""

from __future__ import annotations

import copy

import pytest
import torch

# what `dtype: auto` resolves to on each device (annotators/models.py)
STAGE_DTYPE = {"cpu": "float32", "cuda": "float16"}

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(
               not torch.cuda.is_available(), reason="no visible GPU (GRAPH200K_TEST_GPU=1 on a GPU box)"))]


def stage_options(device: str) -> dict:
    return {"device": device, "dtype": STAGE_DTYPE[torch.device(device).type]}


def float32_copy(net: torch.nn.Module) -> torch.nn.Module:
    """The reference for a comparison: the same weights in float32 on the same device
    (controlnet_aux's detectors feed `.float()` inputs: a float16 net would refuse them).
    A float32 net is its own reference (a deep copy of MiDaS computes 2 levels apart)."""
    if all(p.dtype == torch.float32 for p in net.parameters()):
        return net
    return copy.deepcopy(net).float()


# How far a stage's 8-bit map may be from the float32 detector's: (grey levels, share of
# pixels that must be within them). float16 figures are estimates until a GPU run checks them.
MAP_TOLERANCE = {"float32": (1, 1.0), "float16": (2, 0.99)}


def maps_agree(ours, theirs, dtype: str) -> bool:
    import numpy as np

    levels, share = MAP_TOLERANCE[dtype]
    return float((np.abs(ours.astype(int) - theirs.astype(int)) <= levels).mean()) >= share
