"""Grounding answers of Qwen2-VL / Qwen2.5-VL -> boxes in pixels. No model, no torch.

The two answer formats:

- Qwen2-VL: `<|object_ref_start|>cup<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`,
  coordinates normalised to 0-1000 of the image (decode with the special tokens kept).
  Several boxes may follow one name; a box without a name takes the last name seen.
- Qwen2.5-VL: JSON objects `{"bbox_2d": [x1, y1, x2, y2], "label": "cup"}` (usually a list
  in a ```json fence), coordinates in pixels of the image *as the processor resized it*.

A model answer is untrusted text: a random or a confused model writes anything. Every
entry that cannot be a box is dropped and counted with its reason (malformed, truncated,
non-finite, outside the image, degenerate, duplicate, over the limit); a box reaching over
the image border is clipped to it. Nothing here raises on any input string.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass

QWEN2_VL, QWEN2_5_VL = "qwen2_vl", "qwen2_5_vl"
FORMATS = (QWEN2_VL, QWEN2_5_VL)
QWEN2_VL_SCALE = 1000.0  # Qwen2-VL's boxes are normalised to 0..1000

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_REF = re.compile(r"<\|object_ref_start\|>(.*?)<\|object_ref_end\|>", re.S)
_BOX = re.compile(r"<\|box_start\|>(.*?)<\|box_end\|>", re.S)
_TOKEN = re.compile(r"<\|object_ref_start\|>(?P<ref>.*?)<\|object_ref_end\|>"
                    r"|<\|box_start\|>(?P<box>.*?)<\|box_end\|>", re.S)
_PAIR_BOX = re.compile(rf"^\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,\s*\(\s*({_NUM})\s*,"
                       rf"\s*({_NUM})\s*\)\s*$")
_OBJECT = re.compile(r"\{[^{}]*\}", re.S)
_BBOX_2D = re.compile(rf'"bbox_2d"\s*:\s*\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,'
                      rf'\s*({_NUM})\s*\]')
_LABEL = re.compile(r'"(?:label|name)"\s*:\s*"((?:[^"\\]|\\.)*)"')
_SPECIAL = re.compile(r"<\|[a-z_]+\|>")
_MAX_NAME = 64

# Reasons an entry of the answer was not kept (the counter keys, also in the stats).
MALFORMED, TRUNCATED, NON_FINITE = "malformed", "truncated", "non-finite"
OUTSIDE, DEGENERATE, DUPLICATE, OVER_LIMIT = ("outside the image", "degenerate",
                                              "duplicate", "over the limit")


@dataclass(frozen=True)
class Box:
    """One grounded object: its name and box (x1, y1, x2, y2) in pixels of the image."""

    name: str
    box: tuple[float, float, float, float]

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return (x2 - x1) * (y2 - y1)


@dataclass
class Parsed:
    """Raw entries of an answer, in the model's coordinates, and the entries dropped."""

    entries: list[tuple[str, tuple[float, ...]]]
    dropped: Counter


def clean_name(name: str) -> str:
    name = _SPECIAL.sub(" ", str(name))
    name = " ".join(name.replace("\\n", " ").split()).strip(" .,:;\"'`*-_")
    return name[:_MAX_NAME]


def _floats(groups) -> tuple[float, ...]:
    return tuple(float(g) for g in groups)


def parse_qwen2_vl(text: str) -> Parsed:
    """`<|object_ref_start|>name<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`."""
    text = text if isinstance(text, str) else ""
    entries, dropped = [], Counter()
    name, end = "", 0
    for m in _TOKEN.finditer(text):
        end = m.end()
        if m.group("ref") is not None:
            name = clean_name(m.group("ref"))
            continue
        inner = m.group("box")
        if "<|box_start|>" in inner:  # an unclosed box swallowed by the next one
            dropped[TRUNCATED] += inner.count("<|box_start|>")
            inner = inner.rsplit("<|box_start|>", 1)[1]
        pair = _PAIR_BOX.match(inner)
        if pair is None:
            dropped[MALFORMED] += 1
            continue
        entries.append((name, _floats(pair.groups())))
    dropped[TRUNCATED] += text.count("<|box_start|>", end)  # cut off before <|box_end|>
    return Parsed(entries, +dropped)


def parse_qwen2_5_vl(text: str) -> Parsed:
    """JSON objects holding `"bbox_2d": [x1, y1, x2, y2]` and a `"label"`."""
    text = text if isinstance(text, str) else ""
    entries, dropped = [], Counter()
    end = 0
    for m in _OBJECT.finditer(text):
        chunk = m.group(0)
        if "bbox_2d" not in chunk:
            continue
        end = m.end()
        try:
            obj = json.loads(chunk)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            coords, label = obj.get("bbox_2d"), obj.get("label", obj.get("name", ""))
            ok = (isinstance(coords, list) and len(coords) == 4
                  and all(isinstance(c, (int, float)) and not isinstance(c, bool)
                          for c in coords))
            if not ok:
                dropped[MALFORMED] += 1
                continue
            entries.append((clean_name(label if isinstance(label, str) else ""),
                            tuple(float(c) for c in coords)))
            continue
        # not valid JSON (single quotes elsewhere, a trailing comma): the fields alone
        box, label = _BBOX_2D.search(chunk), _LABEL.search(chunk)
        if box is None:
            dropped[MALFORMED] += 1
            continue
        entries.append((clean_name(label.group(1) if label else ""), _floats(box.groups())))
    dropped[TRUNCATED] += text.count('"bbox_2d"', end)  # an object the answer never closed
    return Parsed(entries, +dropped)


def parse(text: str, fmt: str) -> Parsed:
    if fmt == QWEN2_VL:
        return parse_qwen2_vl(text)
    if fmt == QWEN2_5_VL:
        return parse_qwen2_5_vl(text)
    raise ValueError(f"unknown grounding format {fmt!r}; known: {', '.join(FORMATS)}")


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def to_pixels(parsed: Parsed, fmt: str, image_size, input_size=None, min_side: float = 2.0,
              duplicate_iou: float = 0.9, max_objects: int = 16) -> tuple[list[Box], Counter]:
    """The usable boxes in pixels of the image (width, height), and every drop counted.

    Qwen2-VL's coordinates are per mille of the image; Qwen2.5-VL's are pixels of the
    processor's resized input (`input_size`, width and height), scaled to the image here.
    """
    w, h = (float(v) for v in image_size)
    if fmt == QWEN2_VL:
        sx, sy = w / QWEN2_VL_SCALE, h / QWEN2_VL_SCALE
    elif fmt == QWEN2_5_VL:
        iw, ih = (float(v) for v in (input_size or image_size))
        sx, sy = w / iw, h / ih
    else:
        raise ValueError(f"unknown grounding format {fmt!r}; known: {', '.join(FORMATS)}")
    dropped = Counter(parsed.dropped)
    kept: list[Box] = []
    for name, coords in parsed.entries:
        if len(coords) != 4:
            dropped[MALFORMED] += 1
            continue
        if not all(math.isfinite(c) for c in coords):
            dropped[NON_FINITE] += 1
            continue
        x1, y1, x2, y2 = coords
        x1, x2 = sorted((x1 * sx, x2 * sx))  # a box given corner-swapped is the same box
        y1, y2 = sorted((y1 * sy, y2 * sy))
        if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
            dropped[OUTSIDE] += 1
            continue
        box = (max(0.0, x1), max(0.0, y1), min(w, x2), min(h, y2))
        if box[2] - box[0] < min_side or box[3] - box[1] < min_side:
            dropped[DEGENERATE] += 1
            continue
        if any(iou(box, k.box) >= duplicate_iou for k in kept):
            dropped[DUPLICATE] += 1
            continue
        if len(kept) >= max_objects:
            dropped[OVER_LIMIT] += 1
            continue
        kept.append(Box(name or "object", tuple(round(c, 2) for c in box)))
    return kept, +dropped


def why_none(parsed: Parsed, dropped: Counter, text: str) -> str:
    """The reason a sample has no usable box, for the stats."""
    found = len(parsed.entries) + sum(parsed.dropped.values())
    detail = ", ".join(f"{n} {r}" for r, n in sorted(dropped.items())) or "none in the answer"
    snippet = " ".join(str(text).split())[:80]
    return f"no usable box ({found} found: {detail}); answer begins {snippet!r}"


_ARTICLES = {"a", "an", "the", "some", "this", "that"}


def _words(text: str) -> list[str]:
    words = re.findall(r"[a-z0-9]+", str(text).lower())
    # plural and singular name the same thing: "cups" is the "cup"
    return [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
            for w in words if w not in _ARTICLES]


def match_subject(boxes: list[Box], item: str) -> tuple[int | None, str]:
    """Which box is the sample's subject (its Subjects200K `item`), and how it was matched:
    `name` (the same words), `partial` (one name holds the other), `words` (most words in
    common), or `largest` (no name matches: the largest box, the usual subject of a
    Subjects200K photo). None when there are no boxes."""
    if not boxes:
        return None, "none"
    target = _words(item)
    if target:
        names = [_words(b.name) for b in boxes]
        for i, n in enumerate(names):
            if n == target:
                return i, "name"
        joined = " ".join(target)
        for i, n in enumerate(names):
            s = " ".join(n)
            if s and (f" {s} " in f" {joined} " or f" {joined} " in f" {s} "):
                return i, "partial"
        scores = [len(set(n) & set(target)) / len(set(n) | set(target)) if n else 0.0
                  for n in names]
        best = max(range(len(boxes)), key=lambda i: (scores[i], boxes[i].area))
        if scores[best] > 0:
            return best, "words"
    return max(range(len(boxes)), key=lambda i: boxes[i].area), "largest"
