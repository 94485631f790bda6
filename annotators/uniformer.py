"""`uniformer`: ADE20K semantic segmentation of `target` in ControlNet's palette, batched.

ControlNet's `uniformer` annotator is UniFormer + UperNet from mmsegmentation, which is not
packaged for current torch; an ADE20K UperNet from transformers stands in (default
`openmmlab/upernet-convnext-small`), under the node's name. The classes and the palette
are the same 150 ADE20K ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from annotators.base import ConfigError, Prepared, Result, Sample
from annotators.controlnet_nets import cn_util
from annotators.imaging import check_model_size, indexed_png
from annotators.model_stage import (ImageInput, ModelStage, ModelStageOptions,
                                    ProcessorSettings, finite_rows, require_finite)
from annotators.models import model_dir

_FRACTION_DIGITS = 4
MIN_FRACTION = 1e-4  # classes covering less of the image are left out of meta


@dataclass
class UniformerOptions(ModelStageOptions):
    model: str = "openmmlab/upernet-convnext-small"
    resolution: int | None = None  # model input side; default: the image processor's (512)


class Uniformer(ModelStage):
    """`uniformer.png`: the ADE20K class of every pixel as a palette PNG, so a reader that
    decodes to RGB sees ControlNet's ADE20K colours while the pixel values *are* the class
    ids (`PIL.Image.open` mode "P"; exact even where two classes share a colour, as
    classes 6 and 48 do in that palette). Meta lists the classes present: id, name (the
    model's `id2label`) and the fraction of pixels, largest first.

    As transformers' semantic segmentation: the processor's resize (bilinear) and ImageNet
    normalisation, logits resized to the image's size (bilinear) and argmax, on the device.
    """

    name: ClassVar[str] = "uniformer"
    produces: ClassVar[tuple[str, ...]] = ("uniformer",)
    needs: ClassVar[tuple[str, ...]] = ("target",)
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers", "controlnet_aux", "cv2")
    Options = UniformerOptions

    def __init__(self, config: dict | None = None):
        super().__init__(config)
        self._settings = self._labels = None

    @property
    def settings(self) -> ProcessorSettings:
        if self._settings is None:  # once per process: prepare (CPU tasks) and predict
            self._settings = ProcessorSettings(self.name, self.options)
        return self._settings

    @property
    def palette(self) -> np.ndarray:
        return np.asarray(cn_util().ade_palette(), np.uint8)  # ControlNet's ADE20K colours

    @property
    def labels(self) -> dict[int, str]:
        """Class names from the model's config (read once per process, in encode)."""
        if self._labels is None:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(
                model_dir(self.name, self.options.model, self.options.revision),
                revision=self.options.revision)
            self._labels = {int(k): str(v) for k, v in config.id2label.items()}
        return self._labels

    def build_model(self):
        from transformers import UperNetForSemanticSegmentation

        model = UperNetForSemanticSegmentation.from_pretrained(
            model_dir(self.name, self.options.model, self.options.revision),
            revision=self.options.revision)
        if model.config.num_labels > len(self.palette):
            raise ConfigError(f"stage 'uniformer': {self.options.model} has "
                              f"{model.config.num_labels} classes; ControlNet's ADE20K palette "
                              f"colours {len(self.palette)}")
        return model

    def prepare(self, sample: Sample) -> Prepared:
        rgb = sample.image("target")
        check_model_size(rgb, self.name)
        h, w = self.settings.input_size(*rgb.shape[:2])
        pixels = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
        return Prepared(ImageInput(pixels, tuple(rgb.shape[:2])), None)

    def forward(self, x, out_size):
        import torch
        import torch.nn.functional as F

        logits = self.model(pixel_values=self.settings.normalise(x)).logits.float()
        # checked at the model's resolution: bilinear upsampling carries any NaN/inf along,
        # and this is 4-16x fewer values than at the image's (150 classes a pixel)
        finite = finite_rows(logits)
        if tuple(logits.shape[-2:]) != tuple(out_size):  # UperNet already returns input size
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        ids = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
        return list(zip(ids, finite))

    def encode(self, sample: Sample, context, output) -> Result:
        ids, finite = output
        require_finite(finite, "segmentation logits")
        palette, labels = self.palette, self.labels
        counts = np.bincount(ids.ravel(), minlength=len(palette))
        total = float(ids.size)
        classes = [{"id": int(c), "name": labels.get(int(c), str(c)),
                    "fraction": round(counts[c] / total, _FRACTION_DIGITS)}
                   for c in np.argsort(-counts, kind="stable") if counts[c] / total >= MIN_FRACTION]
        meta = {"palette": "ade20k", "classes": classes}
        return Result({"uniformer.png": indexed_png(ids, palette)}, meta)
