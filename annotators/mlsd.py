"""`mlsd`: straight line segments of `target` (M-LSD large), batched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from annotators.base import ConfigError, NotApplicable, Prepared, Result, Sample
from annotators.controlnet_nets import checkpoint, mlsd_net, quiet_import
from annotators.imaging import back_to, detect_image
from annotators.model_stage import (ImageInput, ModelStage, ModelStageOptions, finite_rows,
                                    require_finite)
from graph200k.shards import encode_image

TOP_K = 200  # line-centre candidates per image, as M-LSD's decoder takes


@dataclass
class MLSDOptions(ModelStageOptions):
    model: str = "lllyasviel/Annotators"
    filename: str = "mlsd_large_512_fp32.pth"
    detect_resolution: int = 512
    score_threshold: float = 0.1  # ControlNet's value_threshold: min line-centre score
    distance_threshold: float = 0.1  # ControlNet's distance_threshold: min segment length


class MLSD(ModelStage):
    """`mlsd.png`: M-LSD's line segments drawn 1 px white on black, one channel.

    As controlnet_aux's MLSDdetector: the image at the detect resolution plus a channel of
    ones, all scaled by x / 127.5 - 1; the centre map's top 200 local maxima (M-LSD's own
    decoder, run on the device per image) with their endpoint displacements come back;
    segments whose score and length pass the thresholds are drawn at the detect size, then
    resized to the sample's. An image with no segment is skipped (nothing to condition
    on), not failed.
    """

    name: ClassVar[str] = "mlsd"
    produces: ClassVar[tuple[str, ...]] = ("mlsd",)
    needs: ClassVar[tuple[str, ...]] = ("target",)
    requires: ClassVar[tuple[str, ...]] = ("torch", "controlnet_aux", "cv2")
    Options = MLSDOptions

    def __init__(self, config: dict | None = None):
        super().__init__(config)
        o = self.options
        if o.score_threshold < 0 or o.distance_threshold < 0:
            raise ConfigError("stage 'mlsd': score_threshold and distance_threshold must be "
                              ">= 0 (configs/annotate.yaml)")

    def build_model(self):
        return mlsd_net(checkpoint(self.name, self.options, self.options.filename))

    def prepare(self, sample: Sample) -> Prepared:
        rgb = sample.image("target")
        pixels = detect_image(rgb, self.options.detect_resolution, self.name)
        return Prepared(ImageInput(pixels), {"size": rgb.shape[:2], "detect": pixels.shape[:2]})

    def forward(self, x, out_size):
        import torch

        decode = quiet_import("controlnet_aux.mlsd.utils").deccode_output_score_and_ptss
        # M-LSD's fourth input channel is ones *before* the [-1, 1] scaling (as trained)
        maps = self.model(torch.cat([x, torch.ones_like(x[:, :1])], dim=1) / 127.5 - 1.0).float()
        outputs = []
        for i, finite in enumerate(finite_rows(maps)):
            if not finite:  # top-k over NaN is meaningless: report, decode nothing
                outputs.append((None, None, None, False))
                continue
            points, scores, displacement = decode(maps[i:i + 1], TOP_K, 3)
            outputs.append((points.astype(np.int32), scores.astype(np.float32),
                            displacement[points[:, 0], points[:, 1]].astype(np.float32), True))
        return outputs

    def segments(self, points, scores, displacement) -> np.ndarray:
        """(x0, y0, x1, y1) at the model's output scale, of the candidates passing both
        thresholds (the detector's rule)."""
        o = self.options
        length = np.sqrt(((displacement[:, :2] - displacement[:, 2:]) ** 2).sum(axis=1))
        keep = (scores > o.score_threshold) & (length > o.distance_threshold)
        yx = points[keep].astype(np.float32)
        centre = np.concatenate([yx[:, ::-1], yx[:, ::-1]], axis=1)  # (x, y, x, y)
        return centre + displacement[keep]

    def encode(self, sample: Sample, context, output) -> Result:
        points, scores, displacement, finite = output
        require_finite(finite, "M-LSD line map")
        h_in, w_in = context["detect"]
        lines = 2.0 * self.segments(points, scores, displacement)  # output is half size
        canvas = np.zeros((h_in, w_in), np.uint8)
        for x0, y0, x1, y1 in lines:
            cv2.line(canvas, (int(x0), int(y0)), (int(x1), int(y1)), 255, 1)
        if not canvas.any():
            raise NotApplicable("no straight line segment above the thresholds")
        return Result({"mlsd.png": encode_image(back_to(canvas, context["size"]), "png")},
                      {"segments": int(len(lines))})
