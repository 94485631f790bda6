"""`normal`: a surface normal map of `target`, batched; three models, chosen by the stage
block's `class:`, each with its own colour convention (docs/annotators-dense.md):

- `DSINE` (default): DSINE (Bae & Davison, CVPR 2024), the model behind Graph200K's
  `normal` column (VisualCloze's docs/DATASET.md; its example files are named
  `*_dsine_normal_map.jpg`). Stored as DSINE's own scripts save it and as Graph200K's files
  are: R, G, B = (n + 1) / 2 x 255 (truncated) of the network's (x, y, z); a surface facing
  the camera is lavender-blue (127, 127, 255), R grows as it turns to face left, G as it
  turns to face up.
- `NormalBae`: ControlNet 1.1's normal annotator (NormalBae, `scannet.pt`), a network that
  predicts normals directly; the same (n + 1) / 2 encoding and the same axes.
- `MidasNormal`: ControlNet 1.0's normal annotator, the map derived from MiDaS DPT-Hybrid
  depth (controlnet_aux's MidasDetector with `depth_and_normal=True`): stored as
  (z, y, x) in R, G, B, a surface facing the camera salmon (255, 127, 127).

All three write `normal.png`, RGB 8-bit, at the image's size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from annotators.base import ConfigError, Prepared, Result, Sample
from annotators.controlnet_nets import checkpoint, dpt_hybrid_net, normalbae_net
from annotators.imaging import back_to, check_model_size, detect_image
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
    predictions, `normal_rgb` on the device; resized to the sample's size."""

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
        return list(zip(normal_rgb(normal), finite_rows(normal)))

    def encode(self, sample: Sample, context, output) -> Result:
        normal, finite = output
        require_finite(finite, "NormalBae normals")
        self.check_not_blank(normal, "NormalBae normal map")
        return Result({"normal.png": encode_image(back_to(normal, context), "png")})


def normal_rgb(normal) -> list[np.ndarray]:
    """B x 3 x H x W normals in [-1, 1] -> H x W x 3 uint8 rows, R, G, B = (n + 1) / 2 x 255
    of (x, y, z), truncated: what DSINE's scripts and controlnet_aux's NormalBaeDetector
    save (`astype(np.uint8)`), and what Graph200K's `*_dsine_normal_map.jpg` files hold
    (their vector lengths come out closer to 1 read as truncated than as rounded)."""
    rgb = ((normal + 1) * 0.5).clamp(0, 1) * 255.0
    return uint8_rows(rgb.permute(0, 2, 3, 1))


@dataclass
class DSINEOptions(ModelStageOptions):
    model: str = "camenduru/DSINE"  # dsine.pt: the file DSINE's own hubconf.py downloads
    fov: float = 60.0  # degrees across the longer side: DSINE's default for an unknown camera
    iterations: int = 5  # rotation-refinement passes (the released model's test setting)
    resolution: int | None = None  # short side the net sees; None: the image's own size


class DSINE(ModelStage):
    """`normal.png` from DSINE (`annotators.dsine_net`), as DSINE's own inference scripts
    compute it: the image at its own size (or its short side at `resolution`), zero-padded
    (black) to multiples of 32 around the centre, ImageNet-normalised; intrinsics from
    `fov` with the principal point at the image centre (Subjects200K has no camera data);
    the last refinement's normals, cropped, resized back if `resolution` resized them
    (bilinear, renormalised), encoded by `normal_rgb` on the device.

    Graph200K ran DSINE at the image's own size: its example normal maps have blocky
    steps every 8 px on the file's own grid (DSINE's x8 convex upsampling; 1.3-2.0x the
    median gradient at phase 7 mod 8, against 1.0-1.3x in the JPEG photo beside them),
    which a 512-px run resized to 1024 would put every 16 px."""

    name: ClassVar[str] = "normal"
    produces: ClassVar[tuple[str, ...]] = ("normal",)
    needs: ClassVar[tuple[str, ...]] = ("target",)
    requires: ClassVar[tuple[str, ...]] = ("torch", "timm", "cv2")
    Options = DSINEOptions

    def __init__(self, config: dict | None = None):
        super().__init__(config)
        o = self.options
        if not 0 < o.fov < 180:
            raise ConfigError(f"stage 'normal': fov {o.fov} must be in (0, 180) degrees")
        if o.iterations < 0:
            raise ConfigError("stage 'normal': iterations must be >= 0")
        if o.resolution is not None and o.resolution < 32:
            raise ConfigError(f"stage 'normal': resolution {o.resolution} is below 32 "
                              "(or leave it out: the image's own size)")

    def build_model(self):
        from annotators.dsine_net import from_pretrained

        return from_pretrained(self.options.model, self.options.revision, self.name)

    def load(self) -> None:
        super().load()
        self.model.keep_refinement_float32()

    def prepare(self, sample: Sample) -> Prepared:
        rgb = sample.image("target")
        check_model_size(rgb, self.name)
        if self.options.resolution is None:
            return Prepared(ImageInput(rgb), None)
        h, w = rgb.shape[:2]
        scale = self.options.resolution / min(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        pixels = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1
                            else cv2.INTER_CUBIC)
        return Prepared(ImageInput(pixels, (h, w)), None)

    def forward(self, x, out_size):
        import torch.nn.functional as F

        from annotators.dsine_net import camera_from_fov

        batch, _, h, w = x.shape
        left, right, top, bottom = centred_padding(h, w, 32)
        x = F.pad(x / 255.0, (left, right, top, bottom))  # black, as DSINE pads
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        camera = camera_from_fov(self.options.fov, h, w, left, top, batch, x.device)
        normal = self.model((x - mean) / std, camera, self.options.iterations)
        normal = normal[:, :, top:top + h, left:left + w].float()
        if out_size is not None and tuple(out_size) != (h, w):
            normal = F.normalize(F.interpolate(normal, size=tuple(out_size), mode="bilinear",
                                               align_corners=False), dim=1)
        return list(zip(normal_rgb(normal), finite_rows(normal)))

    def encode(self, sample: Sample, context, output) -> Result:
        rgb, finite = output
        require_finite(finite, "DSINE normals")
        return Result({"normal.png": encode_image(rgb, "png")})


def centred_padding(h: int, w: int, multiple: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) taking h x w up to multiples of `multiple`, the extra
    split around the centre (the odd pixel right / bottom), as DSINE's `get_padding`."""
    extra_w, extra_h = -w % multiple, -h % multiple
    return extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2
