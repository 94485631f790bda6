"""`sam2_mask.png`: SAM 2.1 automatic masks of `target`, largest first, one colour each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


from annotators.base import Annotator, ConfigError, Prepared, Result, Sample
from annotators.models import ModelOptions, resolve_device, resolve_dtype
from annotators.palette import PALETTE, paint_masks
from graph200k.shards import encode_image


@dataclass
class SAM2MaskOptions(ModelOptions):
    model: str = "facebook/sam2.1-hiera-large"
    # SAM2AutomaticMaskGenerator's settings; its defaults were chosen for SAM2-large.
    points_per_side: int = 32
    points_per_batch: int = 64  # point prompts per mask-decoder pass
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0  # > 0 re-runs on crops, each encoded on its own (slow)
    use_m2m: bool = False
    max_masks: int = len(PALETTE)  # the largest ones; one palette colour each


def check_sam2_options(stage: str, o) -> None:
    if o.points_per_side < 1 or o.points_per_batch < 1:
        raise ConfigError(f"stage {stage!r}: points_per_side and points_per_batch must be >= 1")
    for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh"):
        if not 0.0 <= getattr(o, name) <= 1.0:
            raise ConfigError(f"stage {stage!r}: {name} must lie in [0, 1]")


def autocast(device, dtype):
    """Half precision on a GPU the way SAM2's own demos run it: float32 weights, autocast."""
    import contextlib

    import torch

    if device.type == "cuda" and dtype != torch.float32:
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


class SAM2AutoMask(Annotator):
    """SAM2's automatic mask generator (a grid of point prompts, filtered by predicted IoU
    and stability, NMS) on the target at its own size. The images of a batch go through
    the image encoder in one pass; the point grid is then decoded image by image.
    The map paints the largest mask first so smaller masks stay visible on top of it."""

    name: ClassVar[str] = "sam2_mask"
    produces: ClassVar[tuple[str, ...]] = ("sam2_mask",)
    needs: ClassVar[tuple[str, ...]] = ("target",)
    requires: ClassVar[tuple[str, ...]] = ("torch", "sam2", "hydra")
    extra: ClassVar[str] = "sam2"
    Options = SAM2MaskOptions

    def __init__(self, config: dict | None = None):
        super().__init__(config)
        check_sam2_options(self.name, self.options)
        if not 1 <= self.options.max_masks <= len(PALETTE):
            raise ConfigError(f"stage {self.name!r}: max_masks must lie in 1..{len(PALETTE)}")

    def load(self) -> None:
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        from annotators.sam2_model import batched_predictor, load_sam2

        o = self.options
        self.device = resolve_device(self.name, o.device)
        self.dtype = resolve_dtype(self.name, o.dtype, self.device)
        net = load_sam2(self.name, o.model, o.revision, self.device)
        self.generator = SAM2AutomaticMaskGenerator(
            net, points_per_side=o.points_per_side, points_per_batch=o.points_per_batch,
            pred_iou_thresh=o.pred_iou_thresh, stability_score_thresh=o.stability_score_thresh,
            box_nms_thresh=o.box_nms_thresh, crop_n_layers=o.crop_n_layers, use_m2m=o.use_m2m,
            output_mode="uncompressed_rle")
        self.generator.predictor = batched_predictor(net)

    def prepare(self, sample: Sample) -> Prepared:
        return Prepared(sample.image("target"))  # uint8 HxWx3; SAM2 resizes on the device

    def predict(self, inputs: list) -> list:
        import torch

        predictor = self.generator.predictor
        with torch.inference_mode(), autocast(self.device, self.dtype):
            bad = set(predictor.encode_batch(inputs))
            outputs = []
            for i, image in enumerate(inputs):
                if i in bad:  # a reason instead of masks: encode fails this sample only
                    outputs.append("SAM2 image features hold NaN or inf")
                    continue
                predictor.select(i)
                records = self.generator.generate(image)
                # compact run-length masks travel to the encoder, largest first
                records.sort(key=lambda r: -r["area"])
                outputs.append([(r["segmentation"], int(r["area"]))
                                for r in records[:self.options.max_masks]])
        predictor.release()
        return outputs

    def encode(self, sample: Sample, context, output) -> Result:
        from sam2.utils.amg import rle_to_mask

        if isinstance(output, str):
            raise ValueError(output)
        masks = [rle_to_mask(rle) for rle, area in output if area > 0]
        if not masks:
            raise ValueError("SAM2 found no mask (every candidate was filtered out or empty)")
        image = self.check_not_blank(paint_masks(masks), "mask map")
        return Result({"sam2_mask.png": encode_image(image, "png")},
                      {"masks": len(masks), "model": self.options.model,
                       "revision": self.options.revision})
