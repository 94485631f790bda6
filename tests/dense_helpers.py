"""Shared by the dense-stage tests: the stages at test size on tiny models, and a way to
make a tiny model misbehave on one input of a batch (third-party nets, not our code)."""

from __future__ import annotations

import cv2
import numpy as np

from annotators.base import Sample
from annotators.depth import Depth
from annotators.hed import HED
from annotators.mlsd import MLSD
from annotators.normal import DSINE, MidasNormal, NormalBae
from annotators.openpose import OpenPose
from annotators.uniformer import Uniformer
from devices import STAGE_DTYPE
from graph200k.shards import encode_image

SIZE = 128  # test images and detect resolution: small, and a multiple of 64

# test id -> (class, tiny model folder name, options at test size)
STAGES = {
    "hed": (HED, "hed", {"detect_resolution": SIZE}),
    "mlsd": (MLSD, "mlsd", {"detect_resolution": SIZE}),
    "openpose": (OpenPose, "openpose", {"detect_resolution": SIZE}),
    "normal": (DSINE, "normal", {}),  # at the image's own size, as Graph200K
    "midas_normal": (MidasNormal, "midas_normal", {"detect_resolution": SIZE}),
    "normalbae": (NormalBae, "normalbae", {"detect_resolution": SIZE}),
    "depth": (Depth, "depth", {"resolution": 126}),  # a multiple of DINOv2's 14-px patch
    "uniformer": (Uniformer, "uniformer", {"resolution": SIZE}),
}


def make_stage(test_id: str, tiny, device: str = "cpu", **extra):
    """The stage on its tiny model, on `device` in the precision `dtype: auto` picks there
    (explicit: the same test on a GPU box). `micro_batch` 64: a whole test batch in one
    forward pass on the CPU too (the CPU default is one image per pass), as on a GPU."""
    cls, folder, options = STAGES[test_id]
    dtype = extra.pop("dtype", STAGE_DTYPE.get(device.split(":")[0], "float32"))
    return cls({"model": str(tiny(folder)), "micro_batch": 64, "device": device, "dtype": dtype, **options,
                **extra})


def flat_sample(key: str, value: int = 77, size: int = SIZE) -> Sample:
    """A uniform grey image: what `poison` recognises as the input to break."""
    img = np.full((size, size, 3), value, np.uint8)
    return Sample(key, {"target.jpg": encode_image(img, "png")})


def sliver_sample(key: str) -> Sample:
    img = cv2.resize(np.arange(256, dtype=np.uint8)[None].repeat(3, 0)[..., None].repeat(3, 2),
                     (1024, 16))
    return Sample(key, {"target.jpg": encode_image(img, "png")})


def _first_tensor(args, kwargs):
    if "pixel_values" in kwargs:
        return kwargs["pixel_values"]
    return args[0]


def _flat_rows(x) -> list[int]:
    per_channel = x.float().flatten(2).std(dim=2)  # B x C
    return [i for i in range(x.shape[0]) if float(per_channel[i].max()) == 0.0]


def poison(stage, output_fn) -> None:
    """Make the stage's loaded (third-party) net misbehave on part of a batch: the rows
    whose input is spatially uniform (a `flat_sample`) get `output_fn(tensor)` applied to
    every output tensor of the forward; the other rows are untouched. A wrapper rather
    than hooks: controlnet_aux's HED overrides `__call__`, which skips module hooks."""
    import torch

    net = stage.model

    def change(value, rows):
        if isinstance(value, torch.Tensor) and value.ndim >= 1 and rows:
            value = value.clone()
            value[rows] = output_fn(value[rows])
            return value
        if hasattr(value, "keys"):  # transformers ModelOutput
            for k in list(value.keys()):
                value[k] = change(value[k], rows)
            return value
        if isinstance(value, (list, tuple)):
            return type(value)(change(v, rows) for v in value)
        return value

    class Poisoned(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, *args, **kwargs):
            rows = _flat_rows(_first_tensor(args, kwargs))
            return change(net(*args, **kwargs), rows)

    stage.model = Poisoned()
