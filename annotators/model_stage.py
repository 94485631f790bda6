"""The part every torch model stage shares, so that each stage is only its model.

A model stage subclasses `ModelStage` and writes

    build_model()          the torch module, weights loaded (float32, on the CPU)
    prepare(sample)        -> Prepared(ImageInput(uint8 pixels, out_size), context)
    forward(x, out_size)   x: B x C x H x W on the device, in the model's dtype, values
                           0..255 (normalising is the stage's business); returns one
                           compact output per row (numpy), e.g. a uint8 map and a flag
                           saying whether the raw output was finite
    encode(sample, context, output)

and `load()` / `predict()` come from here: the device and precision are resolved when the
model loads (an actor, which has the GPU: CPU tasks on a GPU-less node build the class
too, so `__init__` only checks the spelling of `device:` / `dtype:`), and `predict` runs
one forward pass per group of inputs of the same shape (a Subjects200K batch is one group;
mixing sizes never pads one image with another's border, so a batch gives the same
pixels as one image at a time).

On the CPU a group goes through the net one image at a time by default (`micro_batch`):
one 512² image already fills the cores, and bigger batches only lose the caches (M-LSD:
8 images as one batch 4.9-5.4 s, one by one 2.8 s; UperNet 4 images 8.1-8.4 s against
7.9-8.0 s; 2 cores). On a GPU the whole group is one pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from annotators.base import Annotator, ConfigError
from annotators.models import AUTO, ModelOptions

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_DTYPES = (AUTO, "float32", "float16", "bfloat16")


@dataclass
class ModelStageOptions(ModelOptions):
    """ModelOptions plus how many images go through the net per forward pass."""

    # default: the whole group on a GPU, 1 on the CPU; out of GPU memory halves it for the
    # actor's later batches (pipelines/stage_ops.py)
    micro_batch: int | None = None


class ImageInput(NamedTuple):
    """A model input: uint8 pixels at the model's size (a quarter of float32's bytes
    through the object store), and the size the forward resizes its output to, if any."""

    pixels: np.ndarray  # H x W x C uint8
    out_size: tuple[int, int] | None = None


class ModelStage(Annotator):
    """An Annotator whose model is one torch module; see the module docstring."""

    extra: ClassVar[str] = "annotate,train"  # torch and transformers are pinned in `train`

    def __init__(self, config: dict | None = None):
        super().__init__(config)
        o = self.options
        if not _DEVICE.match(str(o.device)):
            raise ConfigError(f"stage {self.name!r}: device {o.device!r} is not one of auto, "
                              "cpu, cuda, cuda:N")
        if o.dtype not in _DTYPES:
            raise ConfigError(f"stage {self.name!r}: dtype {o.dtype!r} is not one of "
                              f"{', '.join(_DTYPES)}")
        if o.micro_batch is not None and o.micro_batch < 1:
            raise ConfigError(f"stage {self.name!r}: micro_batch must be >= 1 (or left out)")
        resolution = getattr(o, "detect_resolution", None)
        if resolution is not None and resolution < 64:
            raise ConfigError(f"stage {self.name!r}: detect_resolution {resolution} is below 64 "
                              "(sides are rounded to multiples of 64)")
        self.model = None

    # -- what subclasses implement ---------------------------------------------------
    def build_model(self):
        raise NotImplementedError

    def forward(self, x, out_size) -> list:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------
    def load(self) -> None:
        from annotators.models import resolve_device, resolve_dtype

        self.device = resolve_device(self.name, self.options.device)
        self.dtype = resolve_dtype(self.name, self.options.dtype, self.device)
        model = self.build_model()
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)

    def predict(self, inputs: list) -> list:
        import torch

        groups: dict[Any, list[int]] = {}
        for i, item in enumerate(inputs):
            if not isinstance(item, ImageInput):
                raise TypeError(f"stage {self.name!r}: prepare must return ImageInput inputs")
            groups.setdefault((item.pixels.shape, item.out_size), []).append(i)
        step = self.options.micro_batch or (len(inputs) if self.device.type == "cuda" else 1)
        outputs: list = [None] * len(inputs)
        with torch.inference_mode():
            for (_, out_size), group in groups.items():
                for start in range(0, len(group), step):
                    rows = group[start:start + step]
                    x = torch.from_numpy(np.stack([inputs[i].pixels for i in rows]))
                    # uint8 over the bus, then the net's own dtype on its device: every net here
                    # takes float16 inputs on a GPU (tests/test_fake_cuda.py runs each one so);
                    # controlnet_aux's detectors instead `.float()` theirs, which a half net refuses
                    x = x.to(self.device).permute(0, 3, 1, 2).to(self.dtype)
                    results = list(self.forward(x, out_size))
                    if len(results) != len(rows):
                        raise RuntimeError(f"stage {self.name!r}: forward returned "
                                           f"{len(results)} outputs for {len(rows)} inputs")
                    for i, out in zip(rows, results):
                        outputs[i] = out
        return outputs


class ProcessorSettings:
    """What the model's image processor (its `preprocessor_config.json`) says about input
    size and normalisation; we resize with OpenCV in `prepare` (uint8 through the object
    store) and normalise on the device, instead of running the processor per image."""

    def __init__(self, stage: str, options):
        from transformers import AutoImageProcessor

        from annotators.models import model_dir

        processor = AutoImageProcessor.from_pretrained(
            model_dir(stage, options.model, options.revision), revision=options.revision)
        size = processor.size
        self.height = int(options.resolution or size["height"])
        self.width = int(options.resolution or size["width"])
        self.keep_aspect_ratio = bool(getattr(processor, "keep_aspect_ratio", False))
        self.multiple = int(getattr(processor, "ensure_multiple_of", None) or 1)
        self.mean = tuple(float(v) for v in processor.image_mean)
        self.std = tuple(float(v) for v in processor.image_std)

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        if not self.keep_aspect_ratio and self.multiple == 1:
            return self.height, self.width
        from transformers.models.dpt.image_processing_dpt import get_resize_output_image_size

        shape_only = np.broadcast_to(np.uint8(0), (h, w))  # it reads .shape[-2:] only
        out = get_resize_output_image_size(shape_only, (self.height, self.width),
                                           self.keep_aspect_ratio, self.multiple)
        return int(out["height"]), int(out["width"])

    def normalise(self, x):
        """uint8-valued B x 3 x H x W on the device -> the model's pixel_values."""
        mean = x.new_tensor(self.mean).view(1, 3, 1, 1)
        std = x.new_tensor(self.std).view(1, 3, 1, 1)
        return (x / 255.0 - mean) / std


def finite_rows(t) -> list[bool]:
    """Per batch row: is every value finite? (checked before any cast to integers, which
    would turn NaN into an ordinary-looking number). A float64 sum per row carries any
    NaN or inf through and cannot overflow at any sane output magnitude: one pass, no
    boolean copy of the output (150-class logits at 512² are 157 MB an image)."""
    import torch

    return torch.isfinite(t.reshape(t.shape[0], -1).sum(dim=1, dtype=torch.float64)).tolist()


def uint8_rows(t) -> list[np.ndarray]:
    """Values in 0..255 as uint8 numpy rows, truncated like numpy's astype (what
    controlnet_aux's detectors do after `clip(0, 255)`)."""
    import torch

    return list(t.clamp(0, 255).to(torch.uint8).cpu().numpy())


class BadOutput(ValueError):
    """The model's output for one sample is unusable (NaN/inf, empty)."""


def require_finite(finite: bool, what: str) -> None:
    if not finite:
        raise BadOutput(f"the model's {what} holds NaN or inf")


__all__ = ["ImageInput", "ModelStage", "ModelStageOptions", "ProcessorSettings", "finite_rows",
           "uint8_rows", "require_finite", "BadOutput"]
