"""Inputs of the generative stages made from scikit-image photos: the depth map, the
grounded subject mask and the RMBG matte the dense and mask stages would write, a style
pool folder and a subject-records pool. Tiny pipelines are built once per session."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from annotate_helpers import photo, stage_samples
from annotators.base import ANNOTATIONS, Sample
from annotators.side_inputs import load_side_input
from graph200k.shards import ShardWriter, encode_image, json_bytes, shard_path

SUBJECT_COLOUR = [255, 0, 0]
OTHER_COLOUR = [0, 0, 255]
CATEGORIES = {"astronaut": "People", "chelsea": "Animals", "coffee": "Food & Drink",
              "rocket": "Vehicles"}
TINY = ("sdxl", "sdxl-controlnet", "ip-adapter-sdxl", "flux-depth", "flux-fill", "flux-redux",
        "qwen2-vl-rewrite")


def ellipse(h: int, w: int, cy=0.5, cx=0.5, ry=0.3, rx=0.25) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return (((yy / h - cy) / ry) ** 2 + ((xx / w - cx) / rx) ** 2) <= 1.0


def depth_png(h: int, w: int) -> bytes:
    """8-bit relative inverse depth as the depth stage stores it: a floor ramp (near, bright,
    at the bottom) and a nearer blob."""
    ramp = np.linspace(4, 117, h, dtype=np.float32)[:, None].repeat(w, axis=1)
    ramp[ellipse(h, w)] = 175
    return cv2.imencode(".png", cv2.GaussianBlur(ramp, (0, 0), 2).astype(np.uint8))[1].tobytes()


def mask_png(h: int, w: int) -> bytes:
    mask = np.zeros((h, w, 3), np.uint8)
    mask[ellipse(h, w)] = SUBJECT_COLOUR
    mask[ellipse(h, w, 0.1, 0.1, 0.08, 0.08)] = OTHER_COLOUR
    return encode_image(mask, "png")


def mask_entry(subject: int | None = 0) -> dict:
    return {"objects": [{"name": "subject", "box": [0.25, 0.2, 0.75, 0.8], "colour": SUBJECT_COLOUR},
                        {"name": "lamp", "box": [0.02, 0.02, 0.18, 0.18], "colour": OTHER_COLOUR}],
            "subject": subject}


def generative_samples(n: int, size: int = 48, seed: int = 0, side: dict | None = None) -> list[Sample]:
    """Samples holding target, reference, depth, mask and matte, with the mask stage's meta."""
    out = []
    for s in stage_samples(n, size, seed=seed):
        m = s.members
        m["depth.png"] = depth_png(size, size)
        m["mask.png"] = mask_png(size, size)
        m["rmbg.png"] = encode_image(np.where(ellipse(size, size, ry=0.35, rx=0.3), 255, 0)
                                     .astype(np.uint8), "png")
        s.meta["category"] = CATEGORIES[s.meta["item"]]
        s.meta[f"{ANNOTATIONS}.mask"] = mask_entry(0)
        s.side = dict(side or {})
        out.append(s)
    return out


def write_style_folder(folder: Path, size: int = 40) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("astronaut", "chelsea", "coffee", "rocket", "camera"):
        img = cv2.resize(np.ascontiguousarray(photo(name)), (size, size + 8))
        (folder / f"{name}.png").write_bytes(encode_image(img, "png"))
    return folder


def write_subject_shards(folder: Path) -> Path:
    """Meta-only samples: two items per category, so a same-category swap has a choice."""
    extra = {"People": "photographer", "Animals": "puppy", "Food & Drink": "teapot",
             "Vehicles": "motorcycle"}
    with ShardWriter(shard_path(folder, 0)) as w:
        for i, (name, cat) in enumerate(CATEGORIES.items()):
            for j, item in enumerate((name, extra[cat])):
                w.write({"__key__": f"{2 * i + j:07d}", "meta.json": json_bytes(
                    {"item": item, "category": cat, "description": f"A {item} on a table."})})
    return folder


def pools(tmp: Path) -> dict:
    return {"style_pool": load_side_input("style_pool", {"kind": "folder",
                                                         "path": str(write_style_folder(tmp / "styles"))}),
            "subject_pool": load_side_input("subject_pool", {"kind": "records",
                                                             "path": str(write_subject_shards(tmp / "subjects"))})}


def tiny_models(out: Path) -> Path:
    from annotators.tiny_models import build

    build(out, TINY, seed=0, log=lambda *_: None)
    return out
