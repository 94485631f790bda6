"""`normal`: a surface normal map of `target` in ControlNet's convention, batched.

Two models, chosen by the stage block's `class:`:

- `MidasNormal` (default): ControlNet 1.0's normal annotator, the normal map derived from
  MiDaS DPT-Hybrid depth (controlnet_aux's MidasDetector with `depth_and_normal=True`;
  VisualCloze's reference code calls this condition `midas_depth_normal`).
- `NormalBae`: ControlNet 1.1's normal annotator (NormalBae, `scannet.pt`), a network
  that predicts normals directly.

Both write `normal.png`, RGB, as the detector returns it to ControlNet; docs/annotators-dense.md
says how another normal model (DSINE, Marigold normals) plugs in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from annotators.base import ConfigError, Prepared, Result, Sample
from annotators.controlnet_nets import checkpoint, dpt_hybrid_net, normalbae_net
from annotators.imaging import back_to, detect_image
from annotators.model_stage import (BadOutput, ImageInput, ModelStage, ModelStageOptions,
                                    finite_rows, require_finite, uint8_rows)
from graph200k.shards import encode_image


@dataclass
class MidasNormalOptions(ModelStageOptions):
    model: str = "lllyasviel/Annotators"
    filename: str = "dpt_hybrid-midas-501f0c75.pt"
    detect_resolution: int = 512
    a: float = 2 * math.pi  # ControlNet's z component before normalising (flatness)
    bg_threshold: float = 0.1  # normalised depth below this (far background) faces the camera


class MidasNormal(ModelStage):
    """`normal.png` from MiDaS depth, as controlnet_aux's MidasDetector computes it.

    The image at the detect resolution, scaled to [-1, 1], through DPT-Hybrid in one
    batched pass; per image, on the CPU: Sobel x/y of the depth, zeroed where the depth
    normalised to [0, 1] is below `bg_threshold`, z = a, normalised, mapped to 0..255 and
    stored in the detector's channel order (z, y, x as R, G, B), resized to the sample's size.
    """

    name: ClassVar[str] = "normal"
    produces: ClassVar[tuple[str, ...]] = ("normal",)
    needs: ClassVar[tuple[str, ...]] = ("target",)
    requires: ClassVar[tuple[str, ...]] = ("torch", "controlnet_aux", "timm", "cv2")
    Options = MidasNormalOptions

    def __init__(self, config: dict | None = None):
        super().__init__(config)
        if not 0 <= self.options.bg_threshold < 1:
            raise ConfigError("stage 'normal': bg_threshold must be in [0, 1)")

    def build_model(self):
        return dpt_hybrid_net(checkpoint(self.name, self.options, self.options.filename))

    def prepare(self, sample: Sample) -> Prepared:
        rgb = sample.image("target")
        return Prepared(ImageInput(detect_image(rgb, self.options.detect_resolution, self.name)),
                        rgb.shape[:2])

    def forward(self, x, out_size):
        depth = self.model(x / 127.5 - 1.0).float()
        return [(d.cpu().numpy(), f) for d, f in zip(depth, finite_rows(depth))]

    def normal_map(self, depth: np.ndarray) -> np.ndarray:
        span = float(depth.max() - depth.min())
        if not span > 0:
            raise BadOutput("the model's depth is constant: no surface to take normals of")
        relative = (depth - depth.min()) / span
        x = cv2.Sobel(depth, cv2.CV_32F, 1, 0, ksize=3)
        y = cv2.Sobel(depth, cv2.CV_32F, 0, 1, ksize=3)
        background = relative < self.options.bg_threshold
        x[background] = 0
        y[background] = 0
        normal = np.stack([x, y, np.full_like(x, self.options.a)], axis=2)
        normal /= np.sum(normal ** 2.0, axis=2, keepdims=True) ** 0.5
        return (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)[:, :, ::-1]

    def encode(self, sample: Sample, context, output) -> Result:
        depth, finite = output
        require_finite(finite, "MiDaS depth")
        normal = np.ascontiguousarray(self.normal_map(depth))
        return Result({"normal.png": encode_image(back_to(normal, context), "png")})


@dataclass
class NormalBaeOptions(ModelStageOptions):
    model: str = "lllyasviel/Annotators"
    filename: str = "scannet.pt"
    detect_resolution: int = 512


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class NormalBae(ModelStage):
    """`normal.png` from NormalBae, as controlnet_aux's NormalBaeDetector computes it: the
    image at the detect resolution, ImageNet-normalised, the finest of the decoder's
    predictions, (n + 1) / 2 mapped to 0..255 on the device; resized to the sample's size."""

    name: ClassVar[str] = "normal"
    produces: ClassVar[tuple[str, ...]] = ("normal",)
    needs: ClassVar[tuple[str, ...]] = ("target",)
    requires: ClassVar[tuple[str, ...]] = ("torch", "controlnet_aux", "cv2")
    Options = NormalBaeOptions

    def build_model(self):
        return normalbae_net(checkpoint(self.name, self.options, self.options.filename))

    def prepare(self, sample: Sample) -> Prepared:
        rgb = sample.image("target")
        return Prepared(ImageInput(detect_image(rgb, self.options.detect_resolution, self.name)),
                        rgb.shape[:2])

    def forward(self, x, out_size):
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        normal = self.model((x / 255.0 - mean) / std)[0][-1][:, :3].float()
        rgb = ((normal + 1) * 0.5).clamp(0, 1) * 255.0
        return list(zip(uint8_rows(rgb.permute(0, 2, 3, 1)), finite_rows(normal)))

    def encode(self, sample: Sample, context, output) -> Result:
        normal, finite = output
        require_finite(finite, "NormalBae normals")
        self.check_not_blank(normal, "NormalBae normal map")
        return Result({"normal.png": encode_image(back_to(normal, context), "png")})
