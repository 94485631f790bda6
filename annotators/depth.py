"""`depth`: relative inverse depth of `target` (Depth Anything V2, transformers), batched.

Stored as Graph200K stores it (`*_depth-anything-v2_Large.jpg` in the reference
repository's examples): an 8-bit grey image, near bright, far dark, so any reader that
converts to RGB (PIL, webdataset's "pil" decoder, the reference trainer) sees the map. A
16-bit copy is an opt-in extra member, `depth_16bit.png` (`store_16bit: true`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from annotators.base import Prepared, Result, Sample
from annotators.imaging import check_model_size
from annotators.model_stage import (BadOutput, ImageInput, ModelStage, ModelStageOptions,
                                    ProcessorSettings, finite_rows, require_finite)
from annotators.models import model_dir
from graph200k.shards import encode_image

LEVELS = 255  # depth.png: 8-bit grey, as Graph200K's files
LEVELS_16BIT = 65535
EXTRA_16BIT = "depth_16bit.png"  # the opt-in 16-bit copy (store_16bit)


@dataclass
class DepthOptions(ModelStageOptions):
    model: str = "depth-anything/Depth-Anything-V2-Large-hf"
    resolution: int | None = None  # model input side; default: the image processor's (518)
    store_16bit: bool = False  # also write depth_16bit.png (same map, 65535 levels)


class Depth(ModelStage):
    """`depth.png`: Depth Anything V2's relative inverse depth (near bright, far dark),
    min-max normalised per image to an 8-bit grey PNG; the min and max of the raw prediction
    are in meta, so `raw = min + png / 255 * (max - min)` (relative: an unknown scale and
    shift from metric inverse depth). With `store_16bit`, `depth_16bit.png` holds the same
    map at 65535 levels for whoever needs the precision.

    As transformers' depth-estimation pipeline: the processor's resize (keep aspect ratio,
    a multiple of 14, bicubic) and ImageNet normalisation, the prediction resized back to
    the image's size (bicubic, on the device, as `post_process_depth_estimation`).
    """

    name: ClassVar[str] = "depth"
    produces: ClassVar[tuple[str, ...]] = ("depth",)
    needs: ClassVar[tuple[str, ...]] = ("target",)
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers", "cv2")
    Options = DepthOptions

    def __init__(self, config: dict | None = None):
        super().__init__(config)
        self._settings = None
        if self.options.store_16bit:
            self.output_members = self.output_members + (EXTRA_16BIT,)

    @property
    def settings(self) -> ProcessorSettings:
        if self._settings is None:  # once per process, in prepare (CPU) and predict
            self._settings = ProcessorSettings(self.name, self.options)
        return self._settings

    def build_model(self):
        from transformers import DepthAnythingForDepthEstimation

        return DepthAnythingForDepthEstimation.from_pretrained(
            model_dir(self.name, self.options.model, self.options.revision),
            revision=self.options.revision)

    def prepare(self, sample: Sample) -> Prepared:
        rgb = sample.image("target")
        check_model_size(rgb, self.name)
        h, w = self.settings.input_size(*rgb.shape[:2])
        pixels = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_CUBIC)
        return Prepared(ImageInput(pixels, tuple(rgb.shape[:2])), None)

    def forward(self, x, out_size):
        import torch
        import torch.nn.functional as F

        depth = self.model(pixel_values=self.settings.normalise(x)).predicted_depth.float()
        depth = F.interpolate(depth[:, None], size=out_size, mode="bicubic",
                              align_corners=False)[:, 0]
        return quantise(depth)

    def encode(self, sample: Sample, context, output) -> Result:
        unit, lo, hi, finite = output
        require_finite(finite, "depth")
        if not hi > lo:
            raise BadOutput("the model's depth is constant (no relative depth to store)")
        levels = levels_of(unit, LEVELS)
        self.check_not_blank(levels, "depth map")
        members = {"depth.png": encode_image(levels, "png")}
        meta = {"min": lo, "max": hi, "levels": LEVELS, "near": "bright",
                "kind": "relative inverse depth, min-max normalised per image"}
        if self.options.store_16bit:
            members[EXTRA_16BIT] = encode_image(levels_of(unit, LEVELS_16BIT), "png")
            meta["levels_16bit"] = LEVELS_16BIT
        return Result(members, meta)


def quantise(depth) -> list:
    """Per image of a (B, H, W) relative inverse depth tensor: the map min-max scaled to
    [0, 1] (float32, near = 1), its raw min and max, and whether it was finite."""
    import torch

    flat = depth.flatten(1)
    finite = finite_rows(depth)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    span = (hi - lo).clamp_min(torch.finfo(torch.float32).tiny)
    unit = ((depth - lo[:, None, None]) / span[:, None, None]).clamp(0, 1)
    return [(u, float(a), float(b), bool(f))
            for u, a, b, f in zip(unit.float().cpu().numpy(), lo.tolist(), hi.tolist(), finite)]


def levels_of(unit: np.ndarray, levels: int) -> np.ndarray:
    """[0, 1] -> integer grey levels: uint8 for 255, uint16 for 65535."""
    dtype = np.uint8 if levels <= 255 else np.uint16
    return np.round(np.nan_to_num(unit) * levels).clip(0, levels).astype(dtype)
