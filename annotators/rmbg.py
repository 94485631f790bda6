"""`rmbg.png`: the RMBG-2.0 matte of `target` (8-bit alpha), source of `foreground` and
`background`, which the training stream derives online (graph200k.reader)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from annotators.base import Annotator, ConfigError, Prepared, Result, Sample
from annotators.models import (ModelOptions, check_remote_code, model_dir, resolve_device,
                               resolve_dtype)
from graph200k.shards import encode_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RMBG-2.0's preprocessing (its model card)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class RMBGOptions(ModelOptions):
    model: str = "briaai/RMBG-2.0"
    # BiRefNet is remote code: true only after reading it, with `model:` a local folder
    # or `revision:` a full commit hash (anything else is refused when the config loads).
    trust_remote_code: bool = False
    image_size: int = 1024  # BiRefNet's input size (square)

    def __post_init__(self):
        check_remote_code("rmbg", self.model, self.revision, self.trust_remote_code)
        if self.image_size < 32 or self.image_size % 32:
            raise ConfigError(f"stage 'rmbg': image_size must be a multiple of 32, "
                              f"got {self.image_size}")


class RMBG(Annotator):
    """BiRefNet (RMBG-2.0) through transformers' AutoModelForImageSegmentation. Each image
    is resized to the model's square input on the CPU (prepare), a batch normalised on the
    device and run in one forward pass; each matte is quantised to 8 bits before it leaves
    the device and resized back to its image's size on the CPU (encode)."""

    name: ClassVar[str] = "rmbg"
    produces: ClassVar[tuple[str, ...]] = ("foreground", "background")
    needs: ClassVar[tuple[str, ...]] = ("target",)
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers")
    Options = RMBGOptions

    def load(self) -> None:
        import torch
        from transformers import AutoModelForImageSegmentation

        o = self.options
        self.device = resolve_device(self.name, o.device)
        self.dtype = resolve_dtype(self.name, o.dtype, self.device)
        self.model = AutoModelForImageSegmentation.from_pretrained(
            model_dir(self.name, o.model, o.revision), revision=o.revision,
            trust_remote_code=o.trust_remote_code, dtype=self.dtype).to(self.device).eval()
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def prepare(self, sample: Sample) -> Prepared:
        # Resized on the CPU (cv2's area filter is an antialiased downscale, and several
        # times faster than torch's antialiased bilinear on a CPU): the model input, uint8,
        # travels at s x s, not at the image's size.
        import cv2

        s = self.options.image_size
        img = sample.image("target")
        small = cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA)
        return Prepared(small, img.shape[:2])

    def predict(self, inputs: list) -> list:
        import torch

        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(np.stack(inputs))).to(self.device)
            batch = batch.permute(0, 3, 1, 2).float() / 255.0
            batch = ((batch - self.mean) / self.std).to(self.dtype)
            logits = self.model(batch)[-1].float()
            outputs = []
            for lg in logits:
                if not bool(torch.isfinite(lg).all()):
                    outputs.append("the model's matte holds NaN or inf")
                    continue
                # quantised on the device: a quarter of the bytes of float32 leave it
                matte = (lg[0].sigmoid() * 255).round().clamp(0, 255).to(torch.uint8)
                outputs.append(matte.cpu().numpy())
        return outputs

    def encode(self, sample: Sample, context, output) -> Result:
        import cv2

        if isinstance(output, str):
            raise ValueError(output)
        h, w = context
        matte = cv2.resize(output, (w, h), interpolation=cv2.INTER_LINEAR)
        matte = self.check_not_blank(matte, "matte")
        return Result({"rmbg.png": encode_image(matte, "png")},
                      {"model": self.options.model, "revision": self.options.revision})
