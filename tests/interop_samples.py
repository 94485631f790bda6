"""A small Graph200K release holding every member kind, made from scikit-image's photos, in
the encodings the stages write (8-bit grey maps, an indexed-palette `uniformer.png`, RGB
masks, JPEG generations), and a hub-shaped DatasetDict of the same kind.

Samples differ in which nodes and how many variants they hold, as real shards do (FillEdit
only where the subject could be grounded, 2 or 4 style variants, ...).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from graph200k.dataset import part_in, write_part
from graph200k.shards import ShardWriter, encode_image

PHOTOS = [("astronaut", "astronaut", "An astronaut in a white spacesuit in front of a flag."),
          ("chelsea", "tabby cat", "A ginger tabby cat with green eyes looks to the side."),
          ("coffee", "coffee cup", "A coffee cup with latte art on a white saucer."),
          ("rocket", "rocket", "A rocket stands upright on its launch pad.")]
SIZE = 48
# (instantstyle, reduxstyle, filledit, depthedit) variants of sample i % 4
VARIANTS = [(4, 4, 6, 1), (3, 2, 5, 1), (2, 0, 0, 0), (4, 3, 4, 1)]
# Every member kind: (member, PIL mode it opens in)
MEMBER_KINDS = {"target.jpg": "RGB", "reference.jpg": "RGB", "canny.png": "L", "hed.png": "L",
                "mlsd.png": "L", "depth.png": "L", "normal.png": "RGB", "openpose.png": "RGB",
                "uniformer.png": "P", "sam2_mask.png": "RGB", "mask.png": "RGB",
                "bbox.png": "RGB", "rmbg.png": "L", "instantstyle.0.jpg": "RGB",
                "instantstyle_ref.0.jpg": "RGB", "reduxstyle.0.jpg": "RGB",
                "reduxstyle_ref.0.jpg": "RGB", "filledit.0.jpg": "RGB",
                "depthedit.0.jpg": "RGB"}


def photo(name: str, size: int = SIZE) -> np.ndarray:
    from skimage import data

    img = np.ascontiguousarray(getattr(data, name)()[..., :3]).astype(np.uint8)
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def _ellipse(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return ((yy / size - 0.55) / 0.35) ** 2 + ((xx / size - 0.5) / 0.3) ** 2 <= 1.0


def members_of(index: int, size: int = SIZE) -> tuple[dict, dict]:
    """(members, annotations) of sample `index`: member name -> encoded bytes."""
    from annotators.imaging import indexed_png

    name, item, _ = PHOTOS[index % len(PHOTOS)]
    target = photo(name, size)
    grey = cv2.cvtColor(target, cv2.COLOR_RGB2GRAY)
    inside = _ellipse(size)
    palette = np.array([[120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50]], np.uint8)
    ids = (np.arange(size)[:, None] * 4 // size).repeat(size, axis=1).astype(np.uint8)
    normal = np.dstack([np.full_like(grey, 128), np.full_like(grey, 128), np.full_like(grey, 255)])
    mask = np.zeros((size, size, 3), np.uint8)
    mask[inside] = (255, 0, 0)
    bbox = np.zeros((size, size, 3), np.uint8)
    cv2.rectangle(bbox, (8, 10), (40, 44), (255, 0, 0), 1)
    pose = np.zeros((size, size, 3), np.uint8)
    cv2.line(pose, (24, 8), (24, 30), (0, 0, 255), 2)
    members = {
        "target.jpg": encode_image(target, "jpg"),
        "reference.jpg": encode_image(target[:, ::-1].copy(), "jpg"),
        "canny.png": encode_image(cv2.Canny(grey, 100, 200), "png"),
        "hed.png": encode_image(cv2.GaussianBlur(cv2.Canny(grey, 50, 100), (0, 0), 1), "png"),
        "mlsd.png": encode_image(cv2.line(np.zeros_like(grey), (0, 5), (47, 40), 255, 1), "png"),
        "depth.png": encode_image(np.linspace(20, 250, size)[:, None].repeat(size, 1)
                                  .astype(np.uint8), "png"),
        "normal.png": encode_image(normal, "png"),
        "openpose.png": encode_image(pose, "png"),
        "uniformer.png": indexed_png(ids, palette),
        "sam2_mask.png": encode_image(np.where(inside[..., None], (0, 200, 0), (90, 0, 90))
                                      .astype(np.uint8), "png"),
        "mask.png": encode_image(mask, "png"),
        "bbox.png": encode_image(bbox, "png"),
        "rmbg.png": encode_image(inside.astype(np.uint8) * 255, "png"),
    }
    n_instant, n_redux, n_fill, n_depthedit = VARIANTS[index % len(VARIANTS)]
    for v in range(n_instant):
        members[f"instantstyle.{v}.jpg"] = encode_image(255 - target // (v + 2), "jpg")
        members[f"instantstyle_ref.{v}.jpg"] = encode_image(photo(PHOTOS[v % 4][0], size), "jpg")
    for v in range(n_redux):
        members[f"reduxstyle.{v}.jpg"] = encode_image(target // (v + 2), "jpg")
        members[f"reduxstyle_ref.{v}.jpg"] = encode_image(photo(PHOTOS[(v + 1) % 4][0], size),
                                                          "jpg")
    for v in range(n_fill):
        members[f"filledit.{v}.jpg"] = encode_image(np.roll(target, v + 1, axis=1), "jpg")
    for v in range(n_depthedit):
        members[f"depthedit.{v}.jpg"] = encode_image(target[::-1].copy(), "jpg")
    annotations = {"mask": {"objects": [{"name": item, "box": [8, 10, 41, 45],
                                         "colour": [255, 0, 0]}], "subject": 0}}
    if n_fill:
        annotations["filledit"] = {"variants": [{"subject": f"new {item} {v}",
                                                 "caption": f"A new {item}, variant {v}.",
                                                 "seed": v} for v in range(n_fill)]}
    return members, annotations


def full_sample(key: str, index: int, size: int = SIZE) -> dict:
    name, item, desc = PHOTOS[index % len(PHOTOS)]
    members, annotations = members_of(index, size)
    meta = {"key": key, "row": index, "panel": 0, "collection": "collection_2", "item": item,
            "category": "Things", "description": desc,
            "reference_description": f"The same {item}, seen from elsewhere.",
            "description_valid": True,
            "quality": {"compositeStructure": 5, "objectConsistency": 5, "imageQuality": 4},
            "size": [size, size], "annotations": annotations}
    return {"__key__": key, **members, "meta.json": json.dumps(meta, sort_keys=True).encode()}


def write_release(folder, num_samples: int = 8, per_shard: int = 4) -> Path:
    """Plain-layout shards (tar, index, stats) of `num_samples` full samples."""
    folder = Path(folder)
    for shard in range((num_samples + per_shard - 1) // per_shard):
        part = part_in(str(folder), shard)
        with ShardWriter(part.url) as w:
            for i in range(shard * per_shard, min(num_samples, (shard + 1) * per_shard)):
                w.write(full_sample(f"{i:07d}", i))
        write_part(part, w.record, {"shard": shard, "samples": w.count, "written": w.count})
    return folder


# -- the hub's shape -----------------------------------------------------------------------------

def _png(data: bytes) -> bytes:
    """The pixels of an encoded image as PNG bytes (how the hub stores a PIL image)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
    return buf.getvalue()


def hub_row_of(index: int) -> dict:
    """One row with the hub's columns: photos and generations stored as PNG (no JPEG), maps
    as our PNGs, text columns as Subjects200K's structs."""
    from graph200k.export_columns import SINGLE, VARIANT, hub_columns

    name, item, desc = PHOTOS[index % len(PHOTOS)]
    members, annotations = members_of(index)
    row = {c: None for c in hub_columns()}
    for c in SINGLE:
        if c.member in members:
            data = members[c.member]
            row[c.hub] = {"bytes": _png(data) if c.member.endswith(".jpg") else data, "path": None}
    for c in VARIANT:
        for i in range(c.variants):
            m = c.member.format(i=i)
            if m in members:
                row[c.hub.format(i=i)] = {"bytes": _png(members[m]), "path": None}
    if "filledit" in annotations:
        row["FillEdit_meta"] = {"name": f"new {item}", "description": f"A new {item}."}
    row["qwen_2_5_meta"] = [{"bbox": [8, 10, 41, 45], "name": item, "color": [255, 0, 0]}]
    row["quality_assessment"] = {"compositeStructure": 5, "objectConsistency": 5, "imageQuality": 4}
    row["description"] = {"item": item, "category": "Things", "description_0": desc,
                          "description_1": f"The same {item}, seen from elsewhere.",
                          "description_valid": True}
    row["collection"] = "collection_2"
    return row


def hub_dataset_dict(num_train: int = 6, num_test: int = 2):
    """A DatasetDict with the hub's columns and features (graph200k.export_columns)."""
    import datasets

    from graph200k.export_columns import hub_features

    def split(indices):
        rows = [hub_row_of(i) for i in indices]
        return datasets.Dataset.from_list(rows, features=hub_features())

    return datasets.DatasetDict({"train": split(range(num_train)),
                                 "test": split(range(num_train, num_train + num_test))})
