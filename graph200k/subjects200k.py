"""Read Subjects200K with `datasets`: split each composite into its two panels, filter by
quality, turn rows into source samples.

Schema (Yuanshi/Subjects200K): `image` (two square panels side by side with a margin:
1056x528 with 8 px margins for 512^2 panels; collection 3 holds 1024^2 panels),
`collection`, `quality_assessment{compositeStructure, objectConsistency, imageQuality}`,
`description{item, description_0, description_1, category, description_valid}`.
`description_0` belongs to the left panel.

Text is cleaned on the way in (`clean_text`): control characters and terminal escape
sequences are removed and each field is capped in length, and a sample's `meta.json`
records what was changed under `cleaned`. `description_valid` is kept in `meta.json`;
dropping the rows it marks false is ingest's filter.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from graph200k import storage

HUB_ID = "Yuanshi/Subjects200K"
QUALITY_FIELDS = ("compositeStructure", "objectConsistency", "imageQuality")
# Presets: VisualCloze keeps pairs whose subject is consistent; OminiControl demands 5/5/5.
QUALITY_PRESETS = {
    "visualcloze": {"objectConsistency": 3},
    "ominicontrol": {"compositeStructure": 5, "objectConsistency": 5, "imageQuality": 5},
    "none": {},
}


# A description becomes part of a FLUX-Fill prompt whose T5 encoder reads 512 tokens;
# 1000 characters is ~250 of them, so the grid's layout and task instructions still fit
# beside it, and a caption of a sentence or two is far below it. Without a cap one
# runaway row (200,000 characters) makes a prompt, manifest cell and preview that size.
MAX_DESCRIPTION_CHARS = 1000
TEXT_FIELDS = ("item", "category", "description_0", "description_1")
# Terminal escape sequences go whole: removing only ESC would leave "[31m" in a prompt.
# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and the short ones (ESC ( B, ESC c).
_ESCAPE_SEQUENCE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]"
                              r"|\][^\x07\x1b]*(?:\x07|\x1b\\)?"
                              r"|[ -/]*[0-~])?")
# C0 and C1 controls and DEL, except tab, newline and carriage return (normal whitespace),
# plus the bidirectional overrides and isolates, which reorder how the text is shown.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


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


def clean_text(text: str, max_chars: int = MAX_DESCRIPTION_CHARS) -> tuple[str, dict]:
    """`text` without control characters or escape sequences, at most `max_chars` long,
    and what was changed: {} for clean text, else `original_chars` with `removed_chars`
    and/or `truncated_to`. A cut ends at a word boundary when one is in the last fifth."""
    cleaned = _CONTROL.sub("", _ESCAPE_SEQUENCE.sub("", text))
    changes = {}
    if len(cleaned) != len(text):
        changes["removed_chars"] = len(text) - len(cleaned)
    if len(cleaned) > max_chars:
        cut = cleaned[:max_chars]
        boundary = max(cut.rfind(c) for c in " \t\n\r")
        if boundary >= max_chars * 0.8 and cleaned[max_chars] not in " \t\n\r":
            cut = cut[:boundary]
        cleaned = cut.rstrip()
        changes["truncated_to"] = len(cleaned)
    if changes:
        changes["original_chars"] = len(text)
    return cleaned, changes


def description_invalid(row: dict) -> bool:
    """Subjects200K marks a description its generator got wrong with
    `description_valid: false`; a row without the flag is not known to be wrong."""
    return (row.get("description") or {}).get("description_valid") is False


_SAVED = ("dataset_info.json", "state.json", "dataset_dict.json")


def _parquet_files(source: str) -> list[str]:
    """The parquet files of a local or fsspec file or folder, sorted; [] if it is absent."""
    if not storage.is_url(source):
        path = Path(source)
        if path.is_dir():
            return sorted(str(p) for p in path.glob("**/*.parquet"))
        return [str(path)] if path.exists() else []
    import fsspec

    fs, root = fsspec.core.url_to_fs(source)
    if fs.isdir(root):
        return sorted(fs.unstrip_protocol(p) for p in fs.glob(root.rstrip("/") + "/**/*.parquet"))
    return [source] if fs.exists(root) else []


def _looks_like_a_path(source: str) -> bool:
    # A hub id is `name` or `org/name`; anything else that does not exist is a mistyped path.
    return (source.endswith((".parquet", ".arrow")) or source.startswith((".", "/", "~"))
            or source.count("/") > 1)


def load_subjects200k(source: str = HUB_ID, split: str = "train"):
    """A `datasets.Dataset` from a hub id, or a parquet file / folder or saved Arrow
    folder on a local disk or behind an fsspec URL (s3://, gs://, memory://, ...).

    Images are left undecoded (raw bytes) so one bad image is a counted row, not a crash.
    """
    import datasets

    source = str(source)
    local = storage.normalize(source) if not storage.is_url(source) else source
    if storage.is_url(source) or Path(local).exists():
        if storage.isdir(local) and any(storage.exists(storage.join(local, n)) for n in _SAVED):
            ds = datasets.load_from_disk(local)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            files = _parquet_files(local)
            if not files:
                found = storage.exists(local)
                raise FileNotFoundError(f"{source}: " + ("no parquet files found" if found
                                                         else "no such file or folder"))
            ds = datasets.load_dataset("parquet", data_files=files, split="train")
    elif _looks_like_a_path(source):
        raise FileNotFoundError(f"{source}: no such file or folder (a hub id is ORG/NAME)")
    else:
        ds = datasets.load_dataset(source, split=split)
    if "image" in ds.features:
        ds = ds.cast_column("image", datasets.Image(decode=False))
    return ds


def image_bytes(value) -> bytes | None:
    """The encoded bytes of a `datasets` image value: an undecoded `{"bytes", "path"}` dict,
    raw bytes, or a PIL image (PNG-encoded); None when it holds neither bytes nor a path.
    Anything else is a TypeError naming its type (the Subjects200K reader and the Graph200K
    import each turn it into their own error)."""
    if value is None:
        return None
    if isinstance(value, dict):
        data = value.get("bytes")
        if data is None and value.get("path"):
            with open(value["path"], "rb") as f:
                data = f.read()
        return data
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    raise TypeError(type(value).__name__)


def _image_bytes(value) -> bytes:
    try:
        data = image_bytes(value)
    except TypeError as e:
        raise RowError(f"image of unexpected type {e}") from None
    if data is None:
        raise RowError("image has neither bytes nor a path")
    return data


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
    """`{row:07d}`, or `{row:07d}_{panel}` for `--panels both`: graph200k.splits reads the
    row back from this form, so both panels of a row share a split."""
    return f"{row_id:07d}" if panel is None else f"{row_id:07d}_{panel}"


def _clean_fields(desc: dict, max_chars: int) -> tuple[dict, dict]:
    texts, changes = {}, {}
    for f in TEXT_FIELDS:
        value = desc.get(f)
        if isinstance(value, str):
            texts[f], changes[f] = clean_text(value, max_chars)
        else:
            texts[f], changes[f] = value, {}
    return texts, changes


def row_to_samples(row: dict, row_id: int, panels: str = "left",
                   max_description_chars: int = MAX_DESCRIPTION_CHARS) -> list[dict]:
    """Turn one Subjects200K row into source samples (target, reference, meta).

    panels: "left" (one sample per row: target = left panel, key = row id), "right",
    or "both" (every image becomes a target; keys `{row:07d}_0` / `_1`). Text fields are
    cleaned and capped (`clean_text`); `meta["cleaned"]` says what changed.
    Raises RowError with the reason for an undecodable image, a size that fits no
    panel layout, or a missing description.
    """
    desc = row.get("description") or {}
    which = {"left": [0], "right": [1], "both": [0, 1]}[panels]
    texts, changes = _clean_fields(desc, max_description_chars)
    for i in which:
        text = texts[f"description_{i}"]
        if not (isinstance(text, str) and text.strip()):
            if isinstance(desc.get(f"description_{i}"), str) and desc[f"description_{i}"].strip():
                raise RowError(f"description_{i} holds only control characters")
            raise RowError(f"description_{i} is missing")
    image = decode_composite(row.get("image"))
    halves = split_panels(image)
    out = []
    for i in which:
        target, reference = halves[i], halves[1 - i]
        key = row_key(row_id, None if panels != "both" else i)
        fields = {"item": "item", "category": "category", "description": f"description_{i}",
                  "reference_description": f"description_{1 - i}"}
        meta = {
            "key": key, "row": row_id, "panel": i, "collection": row.get("collection"),
            "item": texts["item"], "category": texts["category"],
            "description": texts[f"description_{i}"].strip(),
            "reference_description": texts[f"description_{1 - i}"],
            "description_valid": desc.get("description_valid"),
            "quality": {k: (row.get("quality_assessment") or {}).get(k) for k in QUALITY_FIELDS},
            "size": list(target.size), "nodes": ["target", "reference"],
        }
        cleaned = {name: changes[f] for name, f in fields.items() if changes[f]}
        if cleaned:
            meta["cleaned"] = cleaned
        out.append({"__key__": key, "target": np.asarray(target),
                    "reference": np.asarray(reference), "meta": meta})
    return out

