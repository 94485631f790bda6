"""Our samples as rows of the hub's Graph200K (graph200k.export_columns), split by split.

A row holds our member bytes unchanged in the `{"bytes", "path"}` form of `datasets.Image`
(no image is decoded or re-encoded), the hub's text columns built from `meta.json`, and
`FillEdit_meta` / `qwen_2_5_meta` from the filledit and mask stage entries. Variants beyond
what the hub holds (styles 0-3, FillEdit 0-5, DepthEdit 0) are left out and counted.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from graph200k.dataset import ShardSet, is_annotation_member
from graph200k.export_columns import (FILLEDIT_META, QUALITY_FIELDS, QWEN_META, SINGLE,
                                      VARIANT, hub_columns)
from graph200k.nodes import META_MEMBER, member_node, variant_count
from graph200k.splits import DEFAULT_TEST_FRACTION, SPLITS, split_of


class ExportError(ValueError):
    """A sample that cannot become a hub row; names the shard, key and member."""


@dataclass
class ExportReport:
    rows: Counter = field(default_factory=Counter)          # split -> rows
    dropped: Counter = field(default_factory=Counter)       # member kind -> members left out

    def line(self) -> str:
        rows = ", ".join(f"{s} {self.rows[s]}" for s in SPLITS)
        extra = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items()))
        return f"{rows} rows" + (f"; left out (the hub has no column for them): {extra}"
                                 if extra else "")


def _image(data: bytes | None):
    return None if data is None else {"bytes": data, "path": None}


def _variants_without_holes(sample: dict, node: str, stored: set, where: str) -> int:
    count = variant_count(node, sample)
    expected = {c.member.format(i=i) for c in VARIANT if c.node == node for i in range(count)}
    if stored - expected:
        raise ExportError(f"{where}: {node} variants have a hole: {sorted(stored - expected)} "
                          f"stored after the first {count} complete variant(s); re-annotate "
                          "the shard (python -m pipelines.annotate --force --stages "
                          f"{node})")
    return count


def hub_row(sample: dict, where: str, report: ExportReport | None = None) -> dict:
    """One sample (member name -> bytes, `meta.json` joined) as a row of the hub's columns."""
    try:
        meta = json.loads(sample[META_MEMBER])
    except KeyError:
        raise ExportError(f"{where}: meta.json is missing; re-create the source shard") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{where}: meta.json is not JSON ({e})") from None
    row = {c: None for c in hub_columns()}
    for c in SINGLE:
        row[c.hub] = _image(sample.get(c.member))
    nodes = {m: member_node(m) for m in sample}
    for node in ("instantstyle", "reduxstyle", "filledit"):
        stored = {m for m, n in nodes.items() if n == node}
        count = _variants_without_holes(sample, node, stored, where) if stored else 0
        for c in (c for c in VARIANT if c.node == node):
            for i in range(count):
                if i < c.variants:
                    row[c.hub.format(i=i)] = _image(sample[c.member.format(i=i)])
                elif report is not None:
                    report.dropped[c.member.format(i="N")] += 1
    extra_depthedits = variant_count("depthedit", sample) - 1  # the hub holds one
    if report is not None and extra_depthedits > 0:
        report.dropped["depthedit.N.jpg"] += extra_depthedits
    annotations = meta.get("annotations") or {}
    edits = (annotations.get("filledit") or {}).get("variants") or []
    if row["FillEdit_image_0"] is not None and edits:
        row[FILLEDIT_META] = {"name": edits[0].get("subject"), "description": edits[0].get("caption")}
    objects = (annotations.get("mask") or {}).get("objects")
    if objects is not None and (row["qwen_2_5_mask"] or row["qwen_2_5_bounding_box"]):
        row[QWEN_META] = [{"bbox": [int(v) for v in o.get("box", [])], "name": o.get("name"),
                           "color": [int(v) for v in o.get("colour", [])]} for o in objects]
    quality = meta.get("quality") or {}
    row["quality_assessment"] = ({q: quality.get(q) for q in QUALITY_FIELDS}
                                 if any(quality.get(q) is not None for q in QUALITY_FIELDS)
                                 else None)
    row["description"] = {"item": meta.get("item"), "category": meta.get("category"),
                          "description_0": meta.get("description"),
                          "description_1": meta.get("reference_description"),
                          "description_valid": meta.get("description_valid")}
    collection = meta.get("collection")
    row["collection"] = None if collection is None else str(collection)
    return row


def split_for(key: str, meta: dict, manifest=None,
              test_fraction: float = DEFAULT_TEST_FRACTION) -> str:
    """The manifest's split when one is given, else the released split an imported sample
    carries in meta.json, else the split of the key's hash (graph200k.splits)."""
    if manifest is not None:
        return str(manifest.splits[manifest.index_of(key)])
    if meta.get("split") in SPLITS:
        return meta["split"]
    return split_of(key, test_fraction)


def iter_samples(src):
    """(shard, sample) for every joined sample of a dataset folder (plain or stages layout),
    in shard and key order; sidecar stage entries are already merged into meta.json."""
    from graph200k.assemble import joined_samples

    shard_set = src if isinstance(src, ShardSet) else ShardSet(src)
    for shard in sorted(shard_set.shards()):
        for sample in joined_samples(shard_set, shard):
            yield shard, {k: v for k, v in sample.items() if not is_annotation_member(k)}


def iter_hub_rows(src, manifest=None, test_fraction: float = DEFAULT_TEST_FRACTION,
                  report: ExportReport | None = None, split: str | None = None):
    """(split, key, row) for every sample of `src` (only `split`'s when given)."""
    for shard, sample in iter_samples(src):
        key = sample["__key__"]
        where = f"shard {shard:06d} key {key!r}"
        meta = json.loads(sample.get(META_MEMBER) or b"{}")
        s = split_for(key, meta, manifest, test_fraction)
        if split is not None and s != split:
            continue
        row = hub_row(sample, where, report)
        if report is not None:
            report.rows[s] += 1
        yield s, key, row
