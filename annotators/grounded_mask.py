"""`bbox.png` and `mask.png`: Qwen2-VL names and boxes the objects of `target`, SAM2 segments
each box. The meta entry (`annotations.mask`) lists the objects and which one is the subject.

    annotations.mask = {
      "objects": [{"name": "red mug", "box": [x1, y1, x2, y2], "colour": [r, g, b]}, ...],
      "subject": 0,                  # index into objects: the sample's `item`
      "subject_match": "name",       # name | partial | words | largest (see grounding.py)
      "dropped": {"degenerate": 1},  # answer entries not kept, by reason
      "models": {"grounding": ..., "grounding_revision": ..., "sam2": ..., "sam2_revision": ...},
    }

Boxes are pixels of the target (x2, y2 exclusive); object i has palette colour i in both
maps. The editing stages replace `objects[subject]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from annotators import grounding
from annotators.base import Annotator, ConfigError, NotApplicable, Prepared, Result, Sample
from annotators.generation import BATCHING, ONE, generate_grouped
from annotators.models import ModelOptions, model_dir, resolve_device, resolve_dtype
from annotators.palette import PALETTE, colour, draw_boxes, paint_masks
from annotators.sam2_mask import autocast
from graph200k.shards import encode_image

AUTO = "auto"
DEFAULT_PROMPTS = {
    grounding.QWEN2_VL: ("Find the {item} and every other main object in the image. Name "
                         "each object and give its bounding box."),
    grounding.QWEN2_5_VL: ("Locate the {item} and every other main object in the image. "
                           "Output their bbox_2d coordinates and labels in JSON format."),
}
_MODEL_TYPES = {"qwen2_vl": grounding.QWEN2_VL, "qwen2_5_vl": grounding.QWEN2_5_VL}


@dataclass
class GroundedMaskOptions(ModelOptions):
    model: str = "facebook/sam2.1-hiera-large"  # SAM2, prompted with the boxes
    grounding_model: str = "Qwen/Qwen2-VL-7B-Instruct"  # or Qwen/Qwen2.5-VL-7B-Instruct
    grounding_revision: str | None = None
    grounding_format: str = AUTO  # auto (from the model's config) | qwen2_vl | qwen2_5_vl
    prompt: str | None = None  # {item} and {description} are filled in; None: per format
    with_description: bool = True  # start the question with the sample's description
    max_new_tokens: int = 256  # greedy decoding; an answer cut here is parsed as far as it goes
    max_pixels: int | None = None  # the VLM processor's image budget (None: its own)
    max_objects: int = len(PALETTE)
    min_box_side: float = 4.0  # pixels; thinner boxes are degenerate
    duplicate_iou: float = 0.9  # a box overlapping a kept one this much is a duplicate
    # which prompts share a generate call: one (the answer never depends on the batch) |
    # same_length (no padding; faster, narrower promise): annotators.generation
    generation_batching: str = ONE

    def __post_init__(self):
        if self.generation_batching not in BATCHING:
            raise ConfigError(f"stage 'mask': generation_batching {self.generation_batching!r} "
                              f"is not one of {', '.join(BATCHING)}")
        if self.grounding_format not in (AUTO, *grounding.FORMATS):
            raise ConfigError(f"stage 'mask': grounding_format {self.grounding_format!r} is "
                              f"not one of auto, {', '.join(grounding.FORMATS)}")
        if self.prompt is not None:
            try:
                self.prompt.format(item="x", description="y")
            except (KeyError, IndexError, ValueError) as e:
                raise ConfigError(f"stage 'mask': prompt may use only {{item}} and "
                                  f"{{description}} ({type(e).__name__}: {e})") from None
        if not 1 <= self.max_objects <= len(PALETTE):
            raise ConfigError(f"stage 'mask': max_objects must lie in 1..{len(PALETTE)}")


class GroundedMask(Annotator):
    """Qwen2-VL grounding -> boxes -> SAM2 box prompts -> masks: the VLM generates greedily,
    prompts sharing a call only as `generation_batching` allows (by default one per call,
    so a sample's boxes never depend on its batch), SAM2 encodes the batch's images in one
    pass and decodes every box of an image at once."""

    name: ClassVar[str] = "mask"
    produces: ClassVar[tuple[str, ...]] = ("mask", "bbox")
    needs: ClassVar[tuple[str, ...]] = ("target",)
    reads: ClassVar[tuple[str, ...]] = ("item", "description")
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers", "sam2", "hydra")
    extra: ClassVar[str] = "sam2"
    Options = GroundedMaskOptions

    # -- models ----------------------------------------------------------------------------
    def load(self) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from annotators.sam2_model import batched_predictor, load_sam2

        o = self.options
        self.device = resolve_device(self.name, o.device)
        self.dtype = resolve_dtype(self.name, o.dtype, self.device)
        # Qwen2-VL is trained in bfloat16; float16 overflows in its MLPs
        vlm_dtype = torch.bfloat16 if o.dtype == AUTO and self.device.type == "cuda" else self.dtype
        path = model_dir(self.name, o.grounding_model, o.grounding_revision)
        kwargs = {} if o.max_pixels is None else {"max_pixels": o.max_pixels}
        self.processor = AutoProcessor.from_pretrained(path, revision=o.grounding_revision,
                                                       **kwargs)
        self.processor.tokenizer.padding_side = "left"  # batched generation
        self.vlm = AutoModelForImageTextToText.from_pretrained(
            path, revision=o.grounding_revision, dtype=vlm_dtype).to(self.device).eval()
        model_type = getattr(self.vlm.config, "model_type", "")
        fmt = o.grounding_format
        if fmt == AUTO:
            if model_type not in _MODEL_TYPES:
                raise ConfigError(f"stage 'mask': cannot tell the box format of a "
                                  f"{model_type!r} model; set grounding_format")
            fmt = _MODEL_TYPES[model_type]
        self.format = fmt
        self.predictor = batched_predictor(load_sam2(self.name, o.model, o.revision, self.device))

    # -- CPU: the question ------------------------------------------------------------------
    def answer_format(self) -> str:
        """The box format: configured, or told by the model's config once loaded; before
        that (CPU tasks building the question) by the model's name."""
        fmt = getattr(self, "format", None) or self.options.grounding_format
        if fmt == AUTO:
            name = self.options.grounding_model.lower().replace("_", ".")
            fmt = grounding.QWEN2_5_VL if "2.5-vl" in name else grounding.QWEN2_VL
        return fmt

    def question(self, sample: Sample) -> str:
        o = self.options
        item = " ".join(sample.text("item").split()) or "main subject"
        description = " ".join(sample.text("description").split())
        text = (o.prompt or DEFAULT_PROMPTS[self.answer_format()]).format(
            item=item, description=description)
        if o.with_description and description and "{description}" not in (o.prompt or ""):
            text = f"The image shows: {description.rstrip('.')}. {text}"
        return text

    def prepare(self, sample: Sample) -> Prepared:
        return Prepared((sample.image("target"), self.question(sample)))

    # -- the models -------------------------------------------------------------------------
    def generate(self, images, questions) -> tuple[list[str], list[tuple[int, int]]]:
        """The VLM's answers, and the (width, height) each image was resized to for it.
        Prompts share a call only as `generation_batching` allows: a sample's answer does
        not depend on the batch it lands in (annotators.generation)."""
        messages = [[{"role": "user", "content": [{"type": "image"},
                                                  {"type": "text", "text": q}]}]
                    for q in questions]
        texts = [self.processor.apply_chat_template(m, add_generation_prompt=True,
                                                    tokenize=False) for m in messages]

        def lengths():
            return [len(self.processor(text=[t], images=[im])["input_ids"][0])
                    for t, im in zip(texts, images)]

        pairs = generate_grouped(len(texts), lengths, self.options.generation_batching,
                                 lambda group: self._generate([images[i] for i in group],
                                                              [texts[i] for i in group]))
        return [a for a, _ in pairs], [size for _, size in pairs]

    def _generate(self, images, texts) -> list[tuple[str, tuple[int, int]]]:
        """One generate call: (answer, resized input size) per prompt."""
        import torch

        enc = self.processor(text=texts, images=list(images), padding=True,
                             return_tensors="pt").to(self.device)
        tok = self.processor.tokenizer
        with torch.inference_mode():
            out = self.vlm.generate(**enc, do_sample=False, num_beams=1,
                                    max_new_tokens=self.options.max_new_tokens,
                                    pad_token_id=tok.pad_token_id)
        stops = {tok.pad_token_id, tok.eos_token_id}
        eos = getattr(self.vlm.generation_config, "eos_token_id", None)
        stops.update(eos if isinstance(eos, (list, tuple)) else [eos])
        answers = []
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            # a finished row is padded up to the longest one: the answer ends at its stop
            end = next((j for j, t in enumerate(row) if t in stops), len(row))
            # the grounding markers are special tokens: keep them, the parser reads them
            answers.append(tok.decode(row[:end], skip_special_tokens=False))
        patch = int(getattr(self.processor.image_processor, "patch_size", 14))
        sizes = [(w * patch, h * patch) for _, h, w in enc["image_grid_thw"].tolist()]
        return list(zip(answers, sizes))

    def boxes(self, answer: str, image_hw, input_size):
        o = self.options
        h, w = image_hw
        fmt = self.answer_format()
        parsed = grounding.parse(answer, fmt)
        boxes, dropped = grounding.to_pixels(parsed, fmt, (w, h), input_size,
                                             o.min_box_side, o.duplicate_iou, o.max_objects)
        return parsed, boxes, dropped

    def segment(self, images, boxes_per_image) -> list:
        """SAM2 masks (bool N x H x W) of each image's boxes, or a reason string."""
        import torch

        with torch.inference_mode(), autocast(self.device, self.dtype):
            bad = set(self.predictor.encode_batch(images))
            out = []
            for i, (image, boxes) in enumerate(zip(images, boxes_per_image)):
                if i in bad:
                    out.append("SAM2 image features hold NaN or inf")
                    continue
                self.predictor.select(i)
                xyxy = np.array([b.box for b in boxes], dtype=np.float32)
                masks, _, _ = self.predictor.predict(box=xyxy, multimask_output=False,
                                                     return_logits=True)
                masks = masks.reshape(len(boxes), *image.shape[:2])
                if not np.isfinite(masks).all():
                    out.append("SAM2 mask logits hold NaN or inf")
                    continue
                out.append(masks > self.predictor.mask_threshold)
        self.predictor.release()
        return out

    def predict(self, inputs: list) -> list:
        import torch
        from sam2.utils.amg import mask_to_rle_pytorch

        images, questions = [x[0] for x in inputs], [x[1] for x in inputs]
        answers, input_sizes = self.generate(images, questions)
        outputs: list = [None] * len(inputs)
        todo = []
        for i, (image, answer) in enumerate(zip(images, answers)):
            parsed, boxes, dropped = self.boxes(answer, image.shape[:2], input_sizes[i])
            if not boxes:
                outputs[i] = {"skip": grounding.why_none(parsed, dropped, answer)}
            else:
                outputs[i] = {"boxes": boxes, "dropped": dict(dropped)}
                todo.append(i)
        if todo:
            for i, masks in zip(todo, self.segment([images[i] for i in todo],
                                                   [outputs[i]["boxes"] for i in todo])):
                if isinstance(masks, str):
                    outputs[i] = {"fail": masks}
                else:  # run-length masks: compact on the way to the encoder
                    outputs[i]["masks"] = mask_to_rle_pytorch(torch.from_numpy(masks))
        return outputs

    # -- CPU: the maps and the meta entry ----------------------------------------------------
    def encode(self, sample: Sample, context, output) -> Result:
        from sam2.utils.amg import rle_to_mask

        if "skip" in output:
            raise NotApplicable(output["skip"])
        if "fail" in output:
            raise ValueError(output["fail"])
        dropped = dict(output["dropped"])
        objects, masks = [], []
        for box, rle in zip(output["boxes"], output["masks"]):
            m = rle_to_mask(rle)
            if not m.any():
                dropped["empty mask"] = dropped.get("empty mask", 0) + 1
                continue
            objects.append(box)
            masks.append(m)
        if not objects:
            raise ValueError(f"SAM2 gave an empty mask for each of the "
                             f"{len(output['boxes'])} boxes")
        h, w = masks[0].shape
        colours = [colour(i) for i in range(len(objects))]
        # the largest first, under the smaller ones, so that none is hidden
        order = sorted(range(len(objects)), key=lambda i: -int(masks[i].sum()))
        mask_map = paint_masks([masks[i] for i in order], [colours[i] for i in order], (h, w))
        by_box = sorted(range(len(objects)), key=lambda i: -objects[i].area)
        box_map = draw_boxes([objects[i].box for i in by_box], (h, w),
                             [colours[i] for i in by_box])
        subject, how = grounding.match_subject(objects, sample.text("item"))
        o = self.options
        meta = {
            "objects": [{"name": b.name, "box": [int(round(c)) for c in b.box],
                         "colour": list(colours[i])} for i, b in enumerate(objects)],
            "subject": subject, "subject_match": how, "dropped": dropped,
            "models": {"grounding": o.grounding_model, "grounding_revision": o.grounding_revision,
                       "sam2": o.model, "sam2_revision": o.revision},
        }
        return Result({"mask.png": encode_image(self.check_not_blank(mask_map, "mask map"), "png"),
                       "bbox.png": encode_image(box_map, "png")}, meta)
