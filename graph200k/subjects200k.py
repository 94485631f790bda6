"""Read Subjects200K with `datasets`: split each composite into its two panels, filter by
quality, turn rows into source samples.

Schema (Yuanshi/Subjects200K): `image` (two square panels side by side with a margin:
1056x528 with 8 px margins for 512^2 panels; collection 3 holds 1024^2 panels),
`collection`, `quality_assessment{compositeStructure, objectConsistency, imageQuality}`,
`description{item, description_0, description_1, category, description_valid}`.
`description_0` belongs to the left panel.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

HUB_ID = "Yuanshi/Subjects200K"
QUALITY_FIELDS = ("compositeStructure", "objectConsistency", "imageQuality")
# Presets: VisualCloze keeps pairs whose subject is consistent; OminiControl demands 5/5/5.
QUALITY_PRESETS = {
    "visualcloze": {"objectConsistency": 3},
    "ominicontrol": {"compositeStructure": 5, "objectConsistency": 5, "imageQuality": 5},
    "none": {},
}


class RowError(ValueError):
    """A row that cannot become a sample; the message is the reason recorded in stats."""


@dataclass(frozen=True)
class PanelGeometry:
    panel: int  # side of each square panel
    margin: int  # top / left / between margin

    def boxes(self) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
        s, p = self.panel, self.margin
        return (p, p, p + s, p + s), (s + 2 * p, p, 2 * s + 2 * p, p + s)


def panel_geometry(width: int, height: int) -> PanelGeometry:
    """Derive the panel layout from the composite's size.

    Layout: margin p on top, bottom, left and between the panels; the right margin is p
    (W = 2s + 3p) or 2p (W = 2s + 4p, the published 1056x528 = 2*512 + 4*8). With
    W = 2H the size alone does not fix p, so take the smallest p that makes the panel
    a multiple of 64 (512 -> p 8; 1024 at H 1056 -> p 16, at H 1040 -> p 8).
    """
    if width == 2 * height:
        for p in range(1, height // 16 + 1):
            if (height - 2 * p) % 64 == 0:
                return PanelGeometry(height - 2 * p, p)
    elif 0 < 2 * height - width <= height // 16:  # W = 2s + 3p  =>  p = 2H - W
        p = 2 * height - width
        return PanelGeometry(height - 2 * p, p)
    raise RowError(f"image size {width}x{height} fits no two-panel layout "
                   "(expected W = 2H or W = 2H - margin, square panels)")


def split_panels(image: Image.Image) -> tuple[Image.Image, Image.Image]:
    g = panel_geometry(*image.size)
    left, right = g.boxes()
    return image.crop(left), image.crop(right)


def passes_quality(quality: dict | None, thresholds: dict) -> bool:
    q = quality or {}
    return all((q.get(k) if q.get(k) is not None else -1) >= v for k, v in thresholds.items())


def resolve_quality(spec) -> dict:
    """A preset name, 'k=v,k=v' thresholds, or a dict."""
    if isinstance(spec, dict):
        out = dict(spec)
    elif spec in QUALITY_PRESETS:
        out = dict(QUALITY_PRESETS[spec])
    else:
        out = {}
        for part in str(spec).split(","):
            k, _, v = part.partition("=")
            if not v:
                raise ValueError(f"quality {spec!r}: use a preset {sorted(QUALITY_PRESETS)} "
                                 "or thresholds like objectConsistency=3,imageQuality=4")
            out[k.strip()] = int(v)
    bad = set(out) - set(QUALITY_FIELDS)
    if bad:
        raise ValueError(f"unknown quality field(s) {sorted(bad)}; known: {QUALITY_FIELDS}")
    return out


def load_subjects200k(source: str = HUB_ID, split: str = "train"):
    """A `datasets.Dataset` from a hub id, a parquet file / folder, or a saved Arrow folder.

    Images are left undecoded (raw bytes) so one bad image is a counted row, not a crash.
    """
    import datasets

    path = Path(source)
    saved = ("dataset_info.json", "state.json", "dataset_dict.json")
    if path.is_dir() and any((path / name).exists() for name in saved):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    elif path.exists():
        files = sorted(str(p) for p in path.glob("**/*.parquet")) if path.is_dir() else [str(path)]
        if not files:
            raise FileNotFoundError(f"{source}: no parquet files found")
        ds = datasets.load_dataset("parquet", data_files=files, split="train")
    else:
        ds = datasets.load_dataset(source, split=split)
    if "image" in ds.features:
        ds = ds.cast_column("image", datasets.Image(decode=False))
    return ds


def _image_bytes(value) -> bytes:
    if isinstance(value, dict):
        data = value.get("bytes")
        if data is None and value.get("path"):
            with open(value["path"], "rb") as f:
                data = f.read()
        if data is None:
            raise RowError("image has neither bytes nor a path")
        return data
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    raise RowError(f"image of unexpected type {type(value).__name__}")


def decode_composite(value) -> Image.Image:
    try:
        with Image.open(io.BytesIO(_image_bytes(value))) as img:
            img.load()
            return img.convert("RGB")
    except RowError:
        raise
    except Exception as e:  # PIL raises many types for bad bytes
        # The type alone: PIL's messages embed object addresses, which would make the
        # stats differ between identical runs.
        raise RowError(f"image does not decode ({type(e).__name__})") from None


def row_key(row_id: int, panel: int | None = None) -> str:
    return f"{row_id:07d}" if panel is None else f"{row_id:07d}_{panel}"


def row_to_samples(row: dict, row_id: int, panels: str = "left") -> list[dict]:
    """Turn one Subjects200K row into source samples (target, reference, meta).

    panels: "left" (one sample per row: target = left panel, key = row id, as DESIGN.md),
    "right", or "both" (every image becomes a target; keys `{row:07d}_0` / `_1`).
    Raises RowError with the reason for an undecodable image, a size that fits no
    panel layout, or a missing description.
    """
    desc = row.get("description") or {}
    which = {"left": [0], "right": [1], "both": [0, 1]}[panels]
    texts = [desc.get("description_0"), desc.get("description_1")]
    for i in which:
        if not (isinstance(texts[i], str) and texts[i].strip()):
            raise RowError(f"description_{i} is missing")
    image = decode_composite(row.get("image"))
    halves = split_panels(image)
    out = []
    for i in which:
        target, reference = halves[i], halves[1 - i]
        key = row_key(row_id, None if panels != "both" else i)
        meta = {
            "key": key, "row": row_id, "panel": i, "collection": row.get("collection"),
            "item": desc.get("item"), "category": desc.get("category"),
            "description": texts[i].strip(), "reference_description": texts[1 - i],
            "quality": {k: (row.get("quality_assessment") or {}).get(k) for k in QUALITY_FIELDS},
            "size": list(target.size), "nodes": ["target", "reference"],
        }
        out.append({"__key__": key, "target": np.asarray(target),
                    "reference": np.asarray(reference), "meta": meta})
    return out

