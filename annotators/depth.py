"""`depth`: relative inverse depth of `target` (Depth Anything V2, transformers), batched."""

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

LEVELS = 65535  # 16-bit PNG


@dataclass
class DepthOptions(ModelStageOptions):
    model: str = "depth-anything/Depth-Anything-V2-Large-hf"
    resolution: int | None = None  # model input side; default: the image processor's (518)


class Depth(ModelStage):
    """`depth.png`: Depth Anything V2's relative inverse depth (near bright, far dark),
    min-max normalised per image to a 16-bit PNG; the min and max of the raw prediction are
    in meta, so `raw = min + png / 65535 * (max - min)` (relative: an unknown scale and
    shift from metric inverse depth). Readers that decode to 8 bit get the high byte.

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
        flat = depth.flatten(1)
        finite = finite_rows(depth)
        lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
        span = (hi - lo).clamp_min(torch.finfo(torch.float32).tiny)
        levels = ((depth - lo[:, None, None]) / span[:, None, None] * LEVELS).round()
        levels = levels.clamp(0, LEVELS).to(torch.int32).cpu().numpy().astype(np.uint16)
        return [(lv, float(a), float(b), bool(f))
                for lv, a, b, f in zip(levels, lo.tolist(), hi.tolist(), finite)]

    def encode(self, sample: Sample, context, output) -> Result:
        levels, lo, hi, finite = output
        require_finite(finite, "depth")
        if not hi > lo:
            raise BadOutput("the model's depth is constant (no relative depth to store)")
        self.check_not_blank(levels, "depth map")
        meta = {"min": lo, "max": hi, "levels": LEVELS,
                "kind": "relative inverse depth, min-max normalised per image"}
        return Result({"depth.png": encode_image(levels, "png")}, meta)
