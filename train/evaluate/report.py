"""Per-item scores -> the figures (`metrics.json`), the papers' tables (`metrics.md`), `samples.png`.

Figures are grouped by (task, column): the column is the number of in-context rows for the
Fill recipe (VisualCloze's "Ours 0 / 1 / 2") and the FCD mask variant for CogVideoX
(RealGeneral's ablation). Every figure carries its n: the items that had that metric (FID:
the generated / ground-truth pairs of the group; null below 2).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from train.evaluate.metrics import KINDS, METRICS, fid

COLUMN_NAMES = {"fill": "in-context rows", "cogvideox": "FCD mask"}
DECIMALS = {"f1": 3, "rmse": 2, "fid": 2, "ssim": 3, "maniqa": 3, "musiq": 2, "clip_score": 2, "dino": 3,
            "clip_i": 3, "clip_t": 3, "clip_style": 3}


def aggregate(records: list[dict]) -> list[dict]:
    """One entry per (kind, task, group), in first-seen order; metric -> {value, n}."""
    groups: "OrderedDict[tuple, list[dict]]" = OrderedDict()
    for r in records:
        groups.setdefault((r["kind"], r["task"], r["group"]), []).append(r)
    out = []
    for (kind, task, group), rs in groups.items():
        figures = {}
        for m in KINDS[kind][1]:
            if m == "fid":
                pairs = [r for r in rs if "fid_fake" in r]
                if pairs:
                    value = fid([r["fid_fake"] for r in pairs], [r["fid_real"] for r in pairs])
                    figures[m] = {"value": value, "n": len(pairs)}
                continue
            values = [r["scores"][m] for r in rs if m in r["scores"]]
            if values:
                figures[m] = {"value": float(np.mean(values)), "n": len(values)}
        out.append({"task": task, "kind": kind, "family": rs[0]["family"], "group": group, "n": len(rs),
                    "metrics": figures})
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, summary: dict) -> None:
    _atomic_write(path, json.dumps(summary, indent=2, sort_keys=False) + "\n")


def _fmt(metric: str, fig: dict | None) -> str:
    if not fig or fig["value"] is None:
        return "–"
    return f"{fig['value']:.{DECIMALS[metric]}f}"


def markdown(summary: dict) -> str:
    """One table per task kind, the papers' column order: rows task x column, each cell a mean."""
    column = COLUMN_NAMES[summary["recipe"]]
    lines = [f"# Evaluation: {summary['recipe']} on {summary['set']}",
             "", f"Model `{summary['model']}`" + (f" + `{', '.join(summary['loras'])}`" if summary["loras"] else "")
             + f"; seed {summary['seed']}; {summary['items']} generated images. Means over the n items of each row "
             "(FID: of the row's n generated / ground-truth pairs); ↑ higher is better, ↓ lower.", ""]
    for kind, (title, metrics) in KINDS.items():
        rows = [e for e in summary["tasks"] if e["kind"] == kind]
        if not rows:
            continue
        present = [m for m in metrics if any(m in e["metrics"] for e in rows)]
        head = [f"{METRICS[m].label} {'↑' if METRICS[m].higher_is_better else '↓'}" for m in present]
        lines += [f"## {title}", "", "| task | " + column + " | n | " + " | ".join(head) + " |",
                  "|---|---|---|" + "---|" * len(present)]
        for e in rows:
            lines.append(f"| {e['task']} | {e['group']} | {e['n']} | "
                         + " | ".join(_fmt(m, e["metrics"].get(m)) for m in present) + " |")
        lines.append("")
    if summary.get("skipped"):
        lines += ["## Not evaluated", ""] + [f"- {k}: {v}" for k, v in summary["skipped"].items()] + [""]
    if summary.get("failed"):
        lines += ["## Failed items", ""] + [f"- {f['id']}: {f['error']}" for f in summary["failed"]] + [""]
    return "\n".join(lines)


def write_markdown(path: Path, summary: dict) -> None:
    _atomic_write(path, markdown(summary))


def _fit(image: np.ndarray, height: int) -> np.ndarray:
    image = np.repeat(image[..., None], 3, 2) if image.ndim == 2 else image
    h, w = image.shape[:2]
    return cv2.resize(image, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA)


def samples_sheet(rows: list[tuple[str, list[np.ndarray], np.ndarray, np.ndarray | None]], height: int = 160):
    """One line per task: label, inputs | generated | ground truth (a grey cell when none)."""
    pad = 6
    lines = []
    for label, inputs, generated, truth in rows:
        cells = [_fit(x, height) for x in inputs] + [None, _fit(generated, height),
                                                    _fit(truth, height) if truth is not None else
                                                    np.full((height, height, 3), 128, np.uint8)]
        parts = []
        for c in cells:
            parts.append(np.full((height, pad * 3, 3), 255, np.uint8) if c is None else c)
            parts.append(np.full((height, pad, 3), 255, np.uint8))
        strip = np.concatenate(parts, axis=1)
        band = np.full((22, strip.shape[1], 3), 255, np.uint8)
        cv2.putText(band, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        lines.append(np.concatenate([band, strip], axis=0))
    if not lines:
        return np.full((height, height, 3), 255, np.uint8)
    width = max(x.shape[1] for x in lines)
    lines = [np.pad(x, ((0, pad), (0, width - x.shape[1]), (0, 0)), constant_values=255) for x in lines]
    return np.concatenate(lines, axis=0)
