"""`filledit`: the subject replaced, the background kept (VisualCloze §3.2).

The subject's mask (the grounded subject of the mask stage: the pixels of `mask.png` in
its colour, closed over its own box where smaller objects were painted over it; by config the RMBG matte when grounding found no subject, as Subjects200K
images are product shots) is dilated and inpainted by FLUX.1-Fill-dev with a new caption:
Qwen2-VL's rewrite of the description (the paper), or another Subjects200K item of the
same category with its own description (`rewrite: same_category`, no VLM). Outside the
dilated mask the original pixels are pasted back (feathered), so the background is kept
byte-near exactly. Default 5 variants `filledit.{i}.jpg`; each one's subject and caption
are in the meta entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from annotators.base import (ANNOTATIONS, Annotator, ConfigError, NotApplicable, Prepared,
                             Result, Sample)
from annotators.diffusion import (GenerationOptions, Job, actor_device,
                                  check_generation_options, fit, generators, jpeg,
                                  load_pipeline, outcome_images, pil, place, to_uint8,
                                  torch_dtype, vae_memory)
from annotators.rewrite import FILL, VLMOptions, VLMRewriter, predict_edits, rewrite_prompt

SUBJECT_POOL = "subject_pool"
REWRITES = ("vlm", "same_category")
MASK_FIELD = f"{ANNOTATIONS}.mask"
MATTE_THRESHOLD = 128


@dataclass
class FillEditOptions(VLMOptions, GenerationOptions):
    model: str = "black-forest-labs/FLUX.1-Fill-dev"
    rewrite: str = "vlm"  # vlm (Qwen2-VL rewrites the caption) | same_category (subject_pool)
    matte_fallback: bool = True  # the RMBG matte when grounding found no subject
    dilate: float = 0.03  # dilation radius, as a fraction of the shorter side
    feather: float = 0.01  # blur of the paste-back edge, same unit
    paste_back: bool = True  # outside the dilated mask, keep the original pixels
    min_area: float = 0.01  # a subject mask below this fraction of the image covers nothing
    max_area: float = 0.9  # above it, everything: no background left to keep
    max_sequence_length: int = 512
    steps: int = 28
    guidance: float = 30.0  # FLUX.1-Fill-dev's recommended guidance


def _colour_mask(mask: np.ndarray, colour) -> np.ndarray:
    """The pixels of `mask.png` painted in an object's colour: [r, g, b], a grey value or
    "#rrggbb"; no colour: every non-black pixel (a binary mask)."""
    if colour is None:
        return (mask > 0) if mask.ndim == 2 else mask.any(axis=2)
    if isinstance(colour, str):
        text = colour.lstrip("#")
        try:
            colour = [int(text[i:i + 2], 16) for i in (0, 2, 4)]
        except ValueError:
            raise ValueError(f"annotations.mask: colour {colour!r} is not #rrggbb") from None
    values = [int(c) for c in (colour if isinstance(colour, (list, tuple)) else [colour])]
    if mask.ndim == 2:
        return mask == values[0]
    return np.all(mask == np.array((values * 3)[:3], np.uint8), axis=2)


def _box_of(obj: dict, h: int, w: int) -> tuple[int, int, int, int] | None:
    box = obj.get("box")
    if not (isinstance(box, (list, tuple)) and len(box) == 4):
        return None
    x1, y1, x2, y2 = (int(round(float(c))) for c in box)
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def _nested(inner, outer, slack: int) -> bool:
    return (inner[0] >= outer[0] - slack and inner[1] >= outer[1] - slack
            and inner[2] <= outer[2] + slack and inner[3] <= outer[3] + slack)


def _enclosed(region: np.ndarray) -> np.ndarray:
    """The pixels outside `region` that it encloses: the parts of its complement (4-connected)
    that touch no image border."""
    n, labels = cv2.connectedComponents((~region).astype(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return ~region & ~np.isin(labels, border)


def closed_subject(mask: np.ndarray, objects: list, index: int) -> np.ndarray:
    """The subject's pixels of `mask.png`, closed over its own box.

    The mask stage paints the largest mask first and smaller ones over it (each pixel has
    one colour), so an object on the subject (a logo on a bottle, a label on a jar) takes
    its pixels out of the subject's colour; inpainted as it is, the edit would keep those
    pieces of the old subject. Given back to the subject, inside its box: the pixels of
    every object whose box lies within the subject's (nested), and every hole enclosed by
    the subject that another object painted. Unpainted enclosed holes (the background
    seen through a mug's handle) stay out.
    """
    subject = _colour_mask(mask, objects[index].get("colour"))
    h, w = subject.shape
    box = _box_of(objects[index], h, w)
    if box is None:
        return subject
    slack = max(2, int(round(0.01 * min(h, w))))  # box rounding between grounding and SAM2
    nested = np.zeros_like(subject)
    for j, obj in enumerate(objects):
        inner = _box_of(obj, h, w) if j != index else None
        if inner is not None and _nested(inner, box, slack):
            nested |= _colour_mask(mask, obj.get("colour"))
    painted = (mask > 0) if mask.ndim == 2 else mask.any(axis=2)
    holes = _enclosed(subject) & painted
    in_box = np.zeros_like(subject)
    x1, y1, x2, y2 = box
    in_box[y1:y2, x1:x2] = True
    return subject | ((nested | holes) & in_box)


def subject_mask(sample: Sample, o: FillEditOptions) -> tuple[np.ndarray, str, float]:
    """(subject mask, "grounded" | "rmbg", area fraction); NotApplicable when there is none
    usable (no subject, a mask covering nothing or everything)."""
    entry = sample.meta.get(MASK_FIELD)
    why = "grounding found no subject (annotations.mask has no subject)"
    if isinstance(entry, dict) and "mask.png" not in sample.members:
        why = "mask.png is absent (the mask stage drew no mask for this sample)"
    elif isinstance(entry, dict):
        objects, index = entry.get("objects") or [], entry.get("subject")
        if isinstance(index, int) and 0 <= index < len(objects):
            mask = closed_subject(sample.image("mask", "native"), objects, index)
            area = float(mask.mean())
            if area > o.max_area:
                raise NotApplicable(f"the subject mask covers {area:.0%} of the image: no "
                                    "background to keep")
            if area >= o.min_area:
                return mask, "grounded", area
            why = f"the grounded subject mask covers nothing ({area:.2%} of the image)"
    elif entry is None:
        why = "no annotations.mask entry (run the mask stage first)"
    if not o.matte_fallback:
        raise NotApplicable(why)
    if "rmbg.png" not in sample.members:
        raise NotApplicable(f"{why}, and rmbg.png is absent for the matte fallback")
    mask = sample.image("foreground", "L") >= MATTE_THRESHOLD
    area = float(mask.mean())
    if area < o.min_area:
        raise NotApplicable(f"{why}, and the RMBG matte covers nothing ({area:.2%})")
    if area > o.max_area:
        raise NotApplicable(f"{why}, and the RMBG matte covers {area:.0%} of the image")
    return mask, "rmbg", area


def dilated(mask: np.ndarray, fraction: float) -> np.ndarray:
    r = max(1, int(round(fraction * min(mask.shape[:2]))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(mask.astype(np.uint8) * 255, kernel)


def same_category_edits(sample: Sample, n: int) -> list[dict]:
    """n subjects of other items of this sample's category, each with its own description:
    a shuffled order from the sample's seed, so variant i does not depend on n."""
    pool = sample.side.get(SUBJECT_POOL)
    if pool is None or not hasattr(pool, "of_category"):
        raise ValueError(f"rewrite: same_category needs the side input {SUBJECT_POOL!r} "
                         "(kind: records) under `side_inputs:` in the annotate config")
    category, item = sample.text("category").strip(), sample.text("item").strip().lower()
    if not category:
        raise NotApplicable("no category in meta.json: a same-category subject cannot be drawn")
    others = [i for i in pool.of_category(category)
              if pool.record(i)["item"].strip().lower() not in ("", item)
              and pool.record(i)["description"].strip()]
    if not others:
        raise NotApplicable(f"no other item of category {category!r} in {SUBJECT_POOL!r}")
    order = sample.rng(0).permutation(len(others))
    picks = [others[int(order[v % len(others)])] for v in range(n)]
    return [{"subject": pool.record(i)["item"], "caption": pool.record(i)["description"].strip(),
             "source": i} for i in picks]


class FillEdit(Annotator):
    name: ClassVar[str] = "filledit"
    produces: ClassVar[tuple[str, ...]] = ("filledit",)
    needs: ClassVar[tuple[str, ...]] = ("target",)
    # the grounded subject mask, or by config the RMBG matte when grounding found nothing
    optional: ClassVar[tuple[str, ...]] = ("mask", "foreground")
    reads: ClassVar[tuple[str, ...]] = ("description", "item", "category", MASK_FIELD)
    side_inputs: ClassVar[tuple[str, ...]] = (SUBJECT_POOL,)
    requires: ClassVar[tuple[str, ...]] = ("torch", "diffusers", "transformers", "cv2")
    extra: ClassVar[str] = "train"
    Options = FillEditOptions

    def __init__(self, config: dict | None = None):
        super().__init__(config)
        o = self.options
        check_generation_options(self.name, o)
        if o.rewrite not in REWRITES:
            raise ConfigError(f"stage {self.name!r}: rewrite {o.rewrite!r} is not one of {REWRITES}")
        if not 0 <= o.min_area < o.max_area <= 1:
            raise ConfigError(f"stage {self.name!r}: need 0 <= min_area < max_area <= 1")
        if not o.matte_fallback:  # the matte is then not read at all
            self.input_members = tuple(m for m in self.input_members if m != "rmbg.png")
        self.output_members = tuple(f"filledit.{v}.jpg" for v in range(o.variants))
        if o.rewrite != "same_category":  # only that rewrite draws from the subject pool
            self.side_inputs = ()
        self.pipe = self.rewriter = None

    def load(self) -> None:
        from diffusers import FluxFillPipeline

        o = self.options
        device = actor_device(self.name, o)
        dtype = torch_dtype(self.name, o.dtype, device, "bfloat16")
        self.pipe = place(vae_memory(load_pipeline(FluxFillPipeline, self.name, o.model,
                                                   o.revision, dtype), o),
                          self.name, device, o.offload)
        if o.rewrite == "vlm":
            self.rewriter = VLMRewriter(self.name, o.rewrite_model, o.rewrite_revision, device,
                                        dtype, o.rewrite_max_new_tokens,
                                        offload=o.offload != "none",
                                        batching=o.rewrite_batching)

    def prepare(self, sample: Sample) -> Prepared:
        o = self.options
        target = sample.image("target")
        h, w = target.shape[:2]
        mask, source, area = subject_mask(sample, o)
        if mask.shape != (h, w):
            mask = fit(mask.astype(np.uint8), h, w, nearest=True).astype(bool)
        grown = dilated(mask, o.dilate)
        item = sample.text("item").strip() or "the main subject"
        x = {"image": fit(target, o.resolution),
             "mask": (fit(grown, o.resolution, nearest=True) > 0).astype(np.uint8) * 255,
             "seeds": [sample.seed_for(v) for v in range(o.variants)], "item": item}
        if o.rewrite == "same_category":
            x["edits"] = same_category_edits(sample, o.variants)
        else:
            description = sample.text("description").strip()
            if not description:
                raise NotApplicable("no description for the VLM to rewrite")
            x["rewrite_prompt"] = rewrite_prompt(FILL, item, description, o.variants)
        return Prepared(x, {"size": (h, w), "grown": grown, "mask": source, "area": area})

    def predict(self, inputs: list) -> list:
        return predict_edits(self, inputs)

    def _generate(self, inputs: list, chunk: list[Job]) -> list:
        o = self.options
        images = self.pipe(prompt=[j.payload["caption"] for j in chunk],
                           image=pil([inputs[j.index]["image"] for j in chunk]),
                           mask_image=pil([inputs[j.index]["mask"] for j in chunk]),
                           height=o.resolution, width=o.resolution, num_inference_steps=o.steps,
                           guidance_scale=o.guidance, max_sequence_length=o.max_sequence_length,
                           generator=generators(j.seed for j in chunk), output_type="np").images
        return to_uint8(images)

    def encode(self, sample: Sample, context, output) -> Result:
        o = self.options
        images = outcome_images(output)
        (h, w), grown = context["size"], context["grown"]
        original = sample.image("target").astype(np.float32)
        if o.paste_back:
            sigma = max(0.5, o.feather * min(h, w))
            alpha = cv2.GaussianBlur(grown.astype(np.float32) / 255.0, (0, 0), sigma)
            alpha = np.maximum(alpha, grown > 0)[..., None]  # the inpainted area stays whole
        members = {}
        for v, img in enumerate(images):
            out = fit(img, h, w)
            if o.paste_back:
                out = np.round(alpha * out + (1 - alpha) * original).astype(np.uint8)
            members[f"filledit.{v}.jpg"] = jpeg(out, h, w, o.jpeg_quality)
        seeds = [sample.seed_for(v) for v in range(len(images))]
        return Result(members, {"rewrite": o.rewrite, "mask": context["mask"],
                                "mask_area": round(context["area"], 4),
                                "variants": [{**e, "seed": s}
                                             for e, s in zip(output["edits"], seeds)]})
