"""`hed`: ControlNet's soft HED edges of `target`, batched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from annotators.base import Prepared, Result, Sample
from annotators.controlnet_nets import checkpoint, hed_net
from annotators.imaging import back_to, detect_image
from annotators.model_stage import (ImageInput, ModelStage, ModelStageOptions, finite_rows,
                                    require_finite, uint8_rows)
from graph200k.shards import encode_image


@dataclass
class HEDOptions(ModelStageOptions):
    model: str = "lllyasviel/Annotators"
    filename: str = "ControlNetHED.pth"
    detect_resolution: int = 512  # controlnet_aux's default: the short side the net sees


class HED(ModelStage):
    """`hed.png`: the edge probability of ControlNet's HED net, one channel, 0..255.

    As controlnet_aux's HEDdetector: the image at the detect resolution (0..255 RGB, the
    net subtracts its own mean), the five side outputs resized to that size, averaged,
    sigmoid. The fusion runs on the device in float32, so only one uint8 map per image
    comes back; the map is then resized to the sample's size (bilinear, as the detector
    resizes to `image_resolution`). One channel where the detector repeats it three times.
    """

    name: ClassVar[str] = "hed"
    produces: ClassVar[tuple[str, ...]] = ("hed",)
    needs: ClassVar[tuple[str, ...]] = ("target",)
    requires: ClassVar[tuple[str, ...]] = ("torch", "controlnet_aux", "cv2")
    Options = HEDOptions

    def build_model(self):
        return hed_net(checkpoint(self.name, self.options, self.options.filename))

    def prepare(self, sample: Sample) -> Prepared:
        rgb = sample.image("target")
        return Prepared(ImageInput(detect_image(rgb, self.options.detect_resolution, self.name)),
                        rgb.shape[:2])

    def forward(self, x, out_size):
        import torch
        import torch.nn.functional as F

        size = x.shape[-2:]
        sides = [F.interpolate(p.float(), size=size, mode="bilinear", align_corners=False)
                 for p in self.model(x)]
        edge = torch.sigmoid(torch.cat(sides, dim=1).mean(dim=1))
        return list(zip(uint8_rows(edge * 255.0), finite_rows(edge)))

    def encode(self, sample: Sample, context, output) -> Result:
        edge, finite = output
        require_finite(finite, "HED edge map")
        self.check_not_blank(edge, "HED edge map")
        return Result({"hed.png": encode_image(back_to(edge, context), "png")})
