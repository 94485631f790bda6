"""`quality`: scores every stored variant of the generated nodes (styles and edits), batched.

It runs after instantstyle, reduxstyle, filledit and depthedit and writes no image, only
its meta entry, `annotations.quality.<node>.<variant>` (variant as a string key):

| node | score | definition |
|---|---|---|
| styles | `style` | cos(CLIP image embedding of the stylized image, of its style reference): InstantStyle / StyleShot's CLIP style score, the one `train.evaluate` reports, so a gate and the evaluation agree on what "styled" means (one embedding pass serves `style` and the duplicate check) |
| styles | `content` | cos(DINOv2 CLS of the stylized image, of `target`): kept semantics; gated for InstantStyle, reported only for Redux (whose content may change) |
| edits | `clip_t` | cos(CLIP image, CLIP text of the variant's new caption), from the edit stage's meta |
| edits | `background` | 1 - mean abs difference (0-1) to `target` outside the subject mask (`mask.png`): FillEdit must keep it |
| edits | `subject_change` | mean abs difference (0-1) to `target` inside the subject mask (the whole image without a mask) |
| all | `flags` | `blank` (near black), `uniform` (near one colour), `saturated` (most values at 0 or 255), `duplicate` (CLIP cosine to an earlier variant of the same node above `duplicate_cosine`), `copies_reference` (a style output that is its reference's pixels), `unchanged` (an edit that is the target's pixels) |

Pixel checks run on the CPU in `prepare` at `size` x `size`; CLIP and DINOv2 see every
image of a batch of samples in one pass per net (`annotators.features`, shared with
`train.evaluate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from annotators import features
from annotators.base import Annotator, ConfigError, NotApplicable, Prepared, Result, Sample
from annotators.models import AUTO, model_dir
from graph200k.nodes import STYLES, VARIANT_NODES, node_type, variant_member
from graph200k.shards import decode_image

EDIT_CAPTION_STAGES = ("filledit", "depthedit")
DESCRIPTOR = "clip_image_cosine"


@dataclass
class QualityOptions:
    clip: str = "openai/clip-vit-large-patch14"
    dino: str = "facebook/dinov2-base"
    revision: str | None = None
    device: str = AUTO
    dtype: str = AUTO
    max_variants: int = 8  # variants 0..max_variants-1 of each node are read when stored
    size: int = 256  # pixel checks and net inputs at size x size (the nets resize to 224 anyway)
    net_batch: int = 32  # images per forward pass of each net (batch_size: samples per call)
    blank_level: float = 8.0  # mean grey level below which an image is blank (black)
    uniform_std: float = 4.0  # grey-level std below which an image is near-uniform
    saturated_fraction: float = 0.5  # share of values at 0 or 255 above which it is saturated
    duplicate_cosine: float = 0.985  # CLIP cosine to an earlier variant: a near-duplicate
    copy_diff: float = 0.02  # mean abs difference (0-1) below which two images are one


class Quality(Annotator):
    name: ClassVar[str] = "quality"
    produces: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[tuple[str, ...]] = ("target",)
    optional: ClassVar[tuple[str, ...]] = VARIANT_NODES + ("mask",)
    reads: ClassVar[tuple[str, ...]] = tuple(f"annotations.{s}" for s in EDIT_CAPTION_STAGES)
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers", "cv2")
    extra: ClassVar[str] = "annotate,train"
    Options = QualityOptions

    def __init__(self, config: dict | None = None):
        super().__init__(config)
        o = self.options
        if o.max_variants < 1 or o.size < 32 or o.net_batch < 1:
            raise ConfigError("stage 'quality': max_variants and net_batch must be >= 1, "
                              "size >= 32")
        # every stored variant member, not only variant 0 (what node_type().members names)
        extra = [variant_member(slot.name, v) for n in VARIANT_NODES
                 for slot in node_type(n).slots for v in range(o.max_variants)]
        self.input_members = tuple(dict.fromkeys(self.input_members + tuple(extra)))

    def load(self) -> None:
        from annotators.models import resolve_device, resolve_dtype

        o = self.options
        self.device = resolve_device(self.name, o.device)
        self.dtype = resolve_dtype(self.name, o.dtype, self.device)
        self.clip = features.load_clip(model_dir(self.name, o.clip, o.revision), o.revision)
        self.dino = features.load_dino(model_dir(self.name, o.dino, o.revision), o.revision)
        for model, _ in (self.clip, self.dino):
            model.to(self.device, self.dtype).requires_grad_(False)

    # -- CPU: decode, reduce, pixel checks -------------------------------------------------
    def _image(self, sample: Sample, member: str) -> np.ndarray | None:
        data = sample.members.get(member)
        if data is None:
            return None
        s = self.options.size
        return cv2.resize(decode_image(data, "RGB"), (s, s), interpolation=cv2.INTER_AREA)

    def prepare(self, sample: Sample) -> Prepared:
        s = self.options.size
        target = cv2.resize(sample.image("target"), (s, s), interpolation=cv2.INTER_AREA)
        mask = None
        if "mask.png" in sample.members:
            grey = decode_image(sample.members["mask.png"], "L")
            mask = cv2.resize(grey, (s, s), interpolation=cv2.INTER_NEAREST) > 0
            mask = mask if mask.any() and not mask.all() else None
        images, texts, dino = [], [], [target]
        rows = []  # one per variant: (node, v, gen index, ref index, text index, dino index, pixels)
        for node in VARIANT_NODES:
            captions = _captions(sample, node)
            for v in range(self.options.max_variants):
                gen = self._image(sample, variant_member(node, v))
                if gen is None:
                    break
                row = {"node": node, "v": v, "gen": len(images), "pixels": self.pixel_scores(gen)}
                images.append(gen)
                if node in STYLES:
                    ref = self._image(sample, variant_member(f"{node}_ref", v))
                    if ref is not None:
                        row["ref"] = len(images)
                        images.append(ref)
                        row["pixels"]["copies_reference"] = bool(_diff(gen, ref) < self.options.copy_diff)
                    row["dino"] = len(dino)
                    dino.append(gen)
                else:
                    if v < len(captions) and captions[v]:
                        row["text"] = len(texts)
                        texts.append(captions[v])
                    row["pixels"].update(edit_pixels(gen, target, mask, self.options.copy_diff))
                rows.append(row)
        if not rows:
            raise NotApplicable("no generated variant stored (run the style and edit stages first)")
        return Prepared({"images": images, "texts": texts, "dino": dino}, rows)

    def pixel_scores(self, image: np.ndarray) -> dict:
        o = self.options
        values = image.astype(np.float32)
        return {"blank": bool(values.mean() < o.blank_level),
                "uniform": bool(values.std() < o.uniform_std),
                "saturated": bool(np.mean((image == 0) | (image == 255)) > o.saturated_fraction)}

    # -- the nets: every image of the batch in one pass per net ----------------------------
    def predict(self, inputs: list) -> list:
        o = self.options
        flat = {k: [x for i in inputs for x in i[k]] for k in ("images", "texts", "dino")}
        clip_i = features.clip_images(self.clip, flat["images"], o.net_batch, self.device, self.dtype)
        clip_t = features.clip_texts(self.clip, flat["texts"], o.net_batch, self.device)
        dino = features.dino_images(self.dino, flat["dino"], o.net_batch, self.device, self.dtype)
        out, at = [], {"images": 0, "texts": 0, "dino": 0}
        for i in inputs:
            part = {}
            for k, arr in (("images", clip_i), ("texts", clip_t), ("dino", dino)):
                part[k] = arr[at[k]:at[k] + len(i[k])]
                at[k] += len(i[k])
            out.append(part)
        return out

    # -- CPU: cosines, duplicates, the meta entry ----------------------------------------
    def encode(self, sample: Sample, context, output) -> Result:
        clip_i, clip_t, dino = output["images"], output["texts"], output["dino"]
        meta: dict = {"descriptor": DESCRIPTOR}
        for row in context:
            node, v = row["node"], row["v"]
            flags = dict(row["pixels"])
            scores = {}
            gen = clip_i[row["gen"]]
            if "ref" in row:
                scores["style"] = _round(gen @ clip_i[row["ref"]])
            if "dino" in row:
                scores["content"] = _round(dino[row["dino"]] @ dino[0])
            if "text" in row:
                scores["clip_t"] = _round(gen @ clip_t[row["text"]])
            for k in ("background", "subject_change"):
                if k in flags:
                    value = flags.pop(k)
                    scores[k] = None if value is None else _round(value)
            earlier = [r["gen"] for r in context if r["node"] == node and r["v"] < v]
            flags["duplicate"] = any(float(gen @ clip_i[j]) > self.options.duplicate_cosine
                                     for j in earlier)
            scores["flags"] = sorted(k for k, on in flags.items() if on)
            meta.setdefault(node, {})[str(v)] = scores
        return Result({}, meta)


def _round(x) -> float:
    return round(float(x), 4)


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() / 255.0)


def edit_pixels(gen: np.ndarray, target: np.ndarray, mask, copy_diff: float) -> dict:
    """background: 1 - mean abs difference outside the subject; subject_change: the mean abs
    difference inside it (whole image without a mask); unchanged: the edit is the target."""
    delta = np.abs(gen.astype(np.float32) - target.astype(np.float32)).mean(axis=2) / 255.0
    if mask is None:
        return {"background": None, "subject_change": float(delta.mean()),
                "unchanged": bool(delta.mean() < copy_diff)}
    return {"background": 1.0 - float(delta[~mask].mean()),
            "subject_change": float(delta[mask].mean()),
            "unchanged": bool(delta.mean() < copy_diff)}


def _captions(sample: Sample, node: str) -> list[str]:
    entry = sample.meta.get(f"annotations.{node}")
    if not isinstance(entry, dict):
        return []
    return [str(v.get("caption") or "") if isinstance(v, dict) else ""
            for v in entry.get("variants") or []]
