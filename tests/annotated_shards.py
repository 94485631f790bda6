"""Annotated Graph200K shards made from scikit-image's real photos (tests and benchmarks).

Stand-in for the lead's fixture writer until `graph200k.fixtures` / ingest + annotate can
produce annotated shards: every sample holds `target.jpg`, `reference.jpg`, `canny.png`,
`depth.png`, `rmbg.png` (a soft elliptical matte), `instantstyle_ref.0.jpg`,
`instantstyle.0.jpg` and `meta.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from graph200k.shards import ShardWriter, encode_image, shard_path

PHOTOS = [("astronaut", "astronaut", "An astronaut in a white spacesuit in front of a flag."),
          ("chelsea", "tabby cat", "A ginger tabby cat with green eyes looks to the side."),
          ("coffee", "coffee cup", "A coffee cup with latte art on a white saucer."),
          ("rocket", "rocket", "A rocket stands upright on its launch pad.")]


def _photo(name: str) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(getattr(data, name)()[..., :3]).astype(np.uint8)


def _square(img: np.ndarray, size: int, zoom: float = 1.0, shift: float = 0.0) -> np.ndarray:
    h, w = img.shape[:2]
    side = int(min(h, w) * zoom)
    y = (h - side) // 2
    x = max(0, min(w - side, int((w - side) * (0.5 + shift))))
    return cv2.resize(img[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)


def matte(h: int, w: int) -> np.ndarray:
    """A soft elliptical subject matte: 255 inside, 0 outside, a ramp across 0.5 at the rim."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt(((yy - h / 2) / (0.35 * h)) ** 2 + ((xx - w / 2) / (0.3 * w)) ** 2)
    return np.clip((1.2 - r) / 0.4 * 255, 0, 255).astype(np.uint8)


def annotated_sample(key: str, index: int, size: int = 96, height: int | None = None) -> dict:
    name, item, desc = PHOTOS[index % len(PHOTOS)]
    photo = _photo(name)
    target = _square(photo, size, zoom=0.95)
    if height is not None and height != size:  # a non-square target, e.g. 72 x 96
        target = cv2.resize(target, (size, height), interpolation=cv2.INTER_AREA)
    h, w = target.shape[:2]
    reference = _square(photo[:, ::-1], size, zoom=0.7, shift=0.1)
    gray = cv2.cvtColor(target, cv2.COLOR_RGB2GRAY)
    canny = cv2.Canny(gray, 100, 200)
    depth = cv2.GaussianBlur(gray, (0, 0), 3)
    style_ref = _square(_photo(PHOTOS[(index + 1) % len(PHOTOS)][0]), size)
    stylized = (255 - (target // 64) * 64).astype(np.uint8)  # a posterized, inverted "style"
    meta = {"key": key, "item": item, "description": desc,
            "quality": {"compositeStructure": 5, "objectConsistency": 5, "imageQuality": 5}}
    return {
        "__key__": key,
        "target.jpg": encode_image(target, "jpg"),
        "reference.jpg": encode_image(reference, "jpg"),
        "canny.png": encode_image(canny, "png"),
        "depth.png": encode_image(depth, "png"),
        "rmbg.png": encode_image(matte(h, w), "png"),
        "instantstyle_ref.0.jpg": encode_image(style_ref, "jpg"),
        "instantstyle.0.jpg": encode_image(stylized, "jpg"),
        "meta.json": json.dumps(meta, sort_keys=True).encode(),
    }


def write_annotated_shards(folder, num_samples: int = 6, per_shard: int = 3, size: int = 96,
                           odd_key: str | None = "0000001") -> list[Path]:
    """`num_samples` samples in shards of `per_shard`; `odd_key` gets a 72 x `size` target."""
    folder = Path(folder)
    cache: dict[int, dict] = {}  # benchmarks write hundreds of samples: reuse the encodings
    paths = []
    for shard in range((num_samples + per_shard - 1) // per_shard):
        with ShardWriter(shard_path(folder, shard)) as w:
            for i in range(shard * per_shard, min(num_samples, (shard + 1) * per_shard)):
                key = f"{i:07d}"
                if key == odd_key:
                    sample = annotated_sample(key, i, size, height=size * 3 // 4)
                else:
                    base = cache.get(i % len(PHOTOS))
                    if base is None:
                        base = cache[i % len(PHOTOS)] = annotated_sample("x", i, size)
                    meta = json.loads(base["meta.json"])
                    meta["key"] = key
                    sample = {**base, "__key__": key,
                              "meta.json": json.dumps(meta, sort_keys=True).encode()}
                w.write(sample)
        paths.append(shard_path(folder, shard))
    return paths
