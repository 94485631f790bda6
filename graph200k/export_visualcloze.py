"""`export --format visualcloze`: the layout the reference trainer reads (GitHub
lzyhha/VisualCloze), as its `processing.py` writes it from the hub's Graph200K.

    {out}/{split}/{column}/{i}_{column}.jpg          single images (i: row within the split)
    {out}/{split}/{Style}/{i}_{Style}_image_{v}.jpg  + _ref_{v}.jpg, v in 0-2
    {out}/{split}/FillEdit/{i}_FillEdit_image_{v}.jpg  v in 0-4
    {out}/{split}/data.json   [{"quality_assessment", "description", "collection",
                                "condition": {key: absolute path, ...}}, ...]

Rules kept from processing.py: every column in its order, saved as JPEG by PIL with PIL's
default settings; `ref` -> `reference`, `qwen_2_5_mask` -> `mask` and
`qwen_2_5_bounding_box` -> `bbox` (each with `qwen_2_5_meta` beside it); a style written
only when its variants 0-2 all exist (`{image_path, style_path}`), FillEdit only with 0-4
(`{image_path, description, name}`); `json.dump(..., ensure_ascii=False)`. One change: an
image JPEG cannot hold (a palette PNG, 16-bit grey) is converted to RGB first, where
processing.py stops with "cannot write mode P as JPEG".
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from pathlib import Path

from PIL import Image

from graph200k.export_columns import (FILLEDIT_META, QWEN_META, REFERENCE_FILLEDIT_VARIANTS,
                                      REFERENCE_STYLE_VARIANTS, SINGLE)
from graph200k.export_rows import ExportReport, iter_hub_rows
from graph200k.splits import DEFAULT_TEST_FRACTION, SPLITS

# processing.py's `conditions`, in its order: single columns and the three variant groups.
ORDER = ("ref", "target", "InstantStyle", "ReduxStyle", "FillEdit", "DepthEdit",
         "qwen_2_5_mask", "qwen_2_5_bounding_box", "sam2_mask", "uniformer", "foreground",
         "normal", "depth", "canny", "hed", "mlsd", "openpose")
STYLES = ("InstantStyle", "ReduxStyle")
JPEG_MODES = ("RGB", "L", "CMYK")
KEY_OF = {c.hub: c.reference for c in SINGLE}


def save_jpeg(data: bytes, path: Path) -> None:
    """The stored image as a JPEG file, as PIL's `Image.save(path)` writes one."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode not in JPEG_MODES:
            img = img.convert("RGB")
        tmp = path.with_name(f".{path.name}.tmp")
        img.save(tmp, format="JPEG")
    os.replace(tmp, path)


def _all_variants(row: dict, names: list[str]) -> bool:
    return all(row.get(n) is not None for n in names)


def item_of(row: dict, i: int, root: Path, counts: Counter) -> dict:
    """The data.json item of row `i`, writing its images under `root` (the split folder)."""
    item = {"quality_assessment": row["quality_assessment"], "description": row["description"],
            "collection": row["collection"], "condition": {}}
    cond = item["condition"]

    def write(column: str, name: str, data: bytes) -> str:
        path = root / column / f"{i}_{name}.jpg"
        save_jpeg(data, path)
        return os.path.abspath(path)

    for column in ORDER:
        if column in KEY_OF:
            value = row.get(column)
            if value is None:
                continue
            path = write(column, column, value["bytes"])
            if column in ("qwen_2_5_mask", "qwen_2_5_bounding_box"):
                cond[QWEN_META] = row[QWEN_META]
            cond[KEY_OF[column]] = path
            counts[KEY_OF[column]] += 1
        elif column == "FillEdit":
            names = [f"FillEdit_image_{v}" for v in range(REFERENCE_FILLEDIT_VARIANTS)]
            if _all_variants(row, names):
                meta = row.get(FILLEDIT_META) or {}
                cond["FillEdit"] = {"image_path": [write(column, n, row[n]["bytes"]) for n in names],
                                    "description": meta.get("description"),
                                    "name": meta.get("name")}
                counts["FillEdit"] += 1
        else:  # a style
            images = [f"{column}_image_{v}" for v in range(REFERENCE_STYLE_VARIANTS)]
            styles = [f"{column}_ref_{v}" for v in range(REFERENCE_STYLE_VARIANTS)]
            if _all_variants(row, images) and _all_variants(row, styles):
                entry = {"image_path": [], "style_path": []}
                for im, st in zip(images, styles):
                    entry["image_path"].append(write(column, im, row[im]["bytes"]))
                    entry["style_path"].append(write(column, st, row[st]["bytes"]))
                cond[column] = entry
                counts[column] += 1
    return item


def export_visualcloze(src, out, manifest=None, test_fraction: float = DEFAULT_TEST_FRACTION
                       ) -> tuple[ExportReport, dict[str, Counter]]:
    """Write `{out}/train` and `{out}/test`; returns the rows per split and, per split, how
    many items hold each condition key."""
    out = Path(out).absolute()
    report, counts = ExportReport(), {s: Counter() for s in SPLITS}
    items = {s: [] for s in SPLITS}
    for s in SPLITS:
        for column in ORDER:
            (out / s / column).mkdir(parents=True, exist_ok=True)
    for split, _key, row in iter_hub_rows(src, manifest, test_fraction, report):
        items[split].append(item_of(row, len(items[split]), out / split, counts[split]))
    for s in SPLITS:
        path = out / s / "data.json"
        tmp = path.with_name(".data.json.tmp")
        with open(tmp, "w") as f:
            json.dump(items[s], f, ensure_ascii=False)
        os.replace(tmp, path)
    return report, counts
