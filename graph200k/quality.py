"""Quality gates: which stored variants of a style / edit node a task may draw.

The `quality` stage (annotators.quality) scores every variant into
`annotations.quality.<node>.<variant>`; the manifest keeps that entry per sample
(`quality_scores`). A task config's `quality:` block sets thresholds per node kind:

    quality:
      style: {style_min: 0.5, content_min: 0.6}   # content_min: InstantStyle only
      edit: {clip_t_min: 0.2, background_min: 0.9, subject_change_min: 0.05}
      reject_flags: true                           # blank, uniform, saturated, duplicate, ...

Every threshold defaults to off (None / false): the paper's behaviour, every stored
variant drawn. A variant without scores passes (nothing to judge it by); a variant whose
score is absent for a gate (no caption for clip_t) passes that gate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from graph200k.config import build
from graph200k.nodes import EDIT, STYLE, node_type

# Gates that apply to one node only: Redux may change content; DepthEdit replaces the background.
ONLY_FOR = {"content_min": ("instantstyle",), "background_min": ("filledit",)}


@dataclass
class StyleGate:
    style_min: float | None = None
    content_min: float | None = None


@dataclass
class EditGate:
    clip_t_min: float | None = None
    background_min: float | None = None
    subject_change_min: float | None = None


@dataclass
class QualityGates:
    style: StyleGate = field(default_factory=StyleGate)
    edit: EditGate = field(default_factory=EditGate)
    reject_flags: bool = False

    @classmethod
    def from_config(cls, config: dict | None, where: str = "quality") -> "QualityGates":
        return build(cls, dict(config or {}), where)

    @property
    def active(self) -> bool:
        return self.reject_flags or any(v is not None for g in (self.style, self.edit)
                                        for v in vars(g).values())

    def removed_by(self, node: str, scores: dict | None) -> str | None:
        """The gate that removes this variant (`style_min`, `flags`, ...), or None."""
        if not scores:
            return None
        if self.reject_flags and scores.get("flags"):
            return "flags"
        kind = node_type(node).kind
        gate = self.style if kind == STYLE else self.edit if kind == EDIT else None
        if gate is None:
            return None
        for name, threshold in vars(gate).items():
            if threshold is None or node not in ONLY_FOR.get(name, (node,)):
                continue
            value = scores.get(name[:-len("_min")])
            if value is not None and value < threshold:
                return name
        return None


def parse_scores(text) -> dict:
    """The manifest's `quality_scores` cell (JSON text, or '') -> {node: {variant: scores}}."""
    if not text:
        return {}
    return json.loads(text) if isinstance(text, str) else dict(text)


def allowed_variants(gates: QualityGates, node: str, count: int, scores: dict,
                     removed: dict | None = None) -> list[int]:
    """The variants 0..count-1 of `node` no gate removes; `removed` counts the removals
    per gate name (for `sample_tasks --stats`)."""
    per_variant = (scores or {}).get(node) or {}
    out = []
    for v in range(count):
        why = gates.removed_by(node, per_variant.get(str(v)))
        if why is None:
            out.append(v)
        elif removed is not None:
            removed[f"{node}.{why}"] = removed.get(f"{node}.{why}", 0) + 1
    return out


SCORES = ("style", "content", "clip_t", "background", "subject_change")
BINS = 10  # histogram bins over [0, 1]; a negative cosine counts in the first
BARS = " ▁▂▃▄▅▆▇█"


def summarize(score_cells, gates: QualityGates | None = None) -> dict:
    """Over a manifest's `quality_scores` cells: per (node, score) a histogram, per node
    the variants scored and flagged, and what each gate of `gates` removes."""
    gates = gates or QualityGates()
    hist: dict[tuple[str, str], list[int]] = {}
    scored: dict[str, int] = {}
    flags: dict[str, dict[str, int]] = {}
    removed: dict[str, int] = {}
    for cell in score_cells:
        per_node = parse_scores(cell)
        for node, variants in per_node.items():
            if not isinstance(variants, dict):
                continue  # the entry's `descriptor`
            scored[node] = scored.get(node, 0) + len(variants)
            for s in variants.values():
                for name in SCORES:
                    value = s.get(name)
                    if value is None:
                        continue
                    row = hist.setdefault((node, name), [0] * BINS)
                    row[min(BINS - 1, max(0, int(float(value) * BINS)))] += 1
                for f in s.get("flags") or []:
                    flags.setdefault(node, {})[f] = flags.setdefault(node, {}).get(f, 0) + 1
            if gates.active:
                allowed_variants(gates, node, len(variants), per_node, removed)
    return {"histograms": hist, "scored": scored, "flags": flags, "removed": removed,
            "active": gates.active}


def markdown(summary: dict) -> list[str]:
    """The dataset card's section body (also what the browser shows)."""
    if not summary["scored"]:
        return ["No quality scores (the `quality` stage has not run, or no manifest).", ""]
    lines = ["| node | variants scored | flagged (blank, uniform, saturated, duplicate, ...) |",
             "|---|---|---|"]
    for node, n in sorted(summary["scored"].items()):
        f = summary["flags"].get(node, {})
        lines.append(f"| {node} | {n} | {', '.join(f'{k} {v}' for k, v in sorted(f.items())) or '-'} |")
    lines += ["", "Score histograms (10 bins over 0-1, left to right):", "",
              "| node | score | histogram | counts |", "|---|---|---|---|"]
    for (node, name), row in sorted(summary["histograms"].items()):
        top = max(row) or 1
        bars = "".join(BARS[round(v / top * (len(BARS) - 1))] for v in row)
        lines.append(f"| {node} | {name} | `{bars}` | {' '.join(map(str, row))} |")
    lines.append("")
    if summary["active"]:
        lines += ["| gate | variants removed |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(summary["removed"].items())] or ["| - | 0 |"]
    else:
        lines.append("Quality gates: off in the task config (every stored variant is drawn).")
    return lines + [""]
