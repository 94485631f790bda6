"""The dataset card (`README.md`) of a folder of annotated shards.

Counts come from the per-shard stats files written by `pipelines.annotate`; a shard
without stats is counted from its tar's member names (never extracted). Task families
come from configs/tasks.yaml, read defensively: the card is still written, with a note,
when that file is missing or malformed.

No torch here (graph200k.shards imports webdataset lazily).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import yaml

from graph200k import storage
from graph200k.manifest import scan_shard
from graph200k.nodes import NODE_TYPES
from graph200k.release_schema import RAY_SETTING, card_dataset_info, member_names
from graph200k.shards import list_shards, read_stats, shard_index
from graph200k.tasks import load_raw  # resolves `include:` (configs/tasks-extended.yaml)

DEFAULT_CARD = {
    "pretty_name": "Graph200K",
    "license": "other",
    "language": ["en"],
    "task_categories": ["image-to-image", "text-to-image"],
    "tags": ["visualcloze", "in-context-learning", "controlnet", "webdataset"],
}


def count_nodes_from_tar(tar: Path) -> tuple[int, Counter]:
    """Samples and per-node counts of a shard from its member names alone."""
    records = scan_shard(tar)
    return len(records), Counter(n for r in records for n in r["nodes"])


def collect(folder: Path) -> dict:
    """Totals over a folder's shards: samples, node counts, per-stage counts."""
    totals = {"shards": 0, "samples": 0, "nodes": Counter(), "stages": {}, "without_stats": 0}
    for tar in list_shards(folder):
        totals["shards"] += 1
        stats = read_stats(folder, shard_index(tar))
        if stats is None or "nodes" not in stats:
            samples, nodes = count_nodes_from_tar(tar)
            totals["without_stats"] += 1
        else:
            samples, nodes = int(stats.get("written", stats.get("samples", 0))), stats["nodes"]
        totals["samples"] += samples
        totals["nodes"].update(nodes)
        for name, entry in ((stats or {}).get("stages") or {}).items():
            agg = totals["stages"].setdefault(name, {"ok": 0, "skipped": 0, "failed": 0, "seconds": 0.0,
                                                     "why_skipped": Counter(), "why_failed": Counter()})
            for k in ("ok", "skipped", "failed", "seconds"):
                agg[k] += entry.get(k, 0) or 0
            for k, why in (("skipped_keys", "why_skipped"), ("failed_keys", "why_failed")):
                agg[why].update(str(e.get("reason") or "no reason given") for e in entry.get(k) or [])
        # an older stats layout: the shard's failures in one list, each naming its stage
        for e in (stats or {}).get("failed") or []:
            if e.get("stage") in totals["stages"]:
                totals["stages"][e["stage"]]["why_failed"][str(e.get("reason") or "no reason given")] += 1
    return totals


def reasons(counter: Counter, top: int = 3) -> str:
    """`no usable box ×8, subject too small ×3` (+ how many other reasons)."""
    common = counter.most_common(top)
    text = ", ".join(f"{r.replace('|', '/')} ×{n}" for r, n in common)
    more = len(counter) - len(common)
    return text + (f", and {more} other reason{'s' if more > 1 else ''}" if more > 0 else "")


def read_families(path: Path | None) -> tuple[dict, str | None]:
    """`families:` of configs/tasks.yaml as {name: {"weight", "variants"}}, and a note if unusable."""
    if path is None:
        return {}, "no task configuration given"
    try:
        data = load_raw(path)
    except (OSError, yaml.YAMLError, ValueError) as e:
        return {}, f"task families unavailable ({path}: {type(e).__name__})"
    raw = data.get("families") if isinstance(data, dict) else None
    if not isinstance(raw, dict):
        return {}, f"task families unavailable ({path} has no `families:` mapping)"
    families = {}
    for name, spec in raw.items():
        spec = spec if isinstance(spec, dict) else {}
        variants = [v for v in spec.get("variants") or [] if isinstance(v, list)]
        try:
            weight = float(spec.get("weight", 1.0))
        except (TypeError, ValueError):
            weight = 1.0
        families[str(name)] = {"weight": weight, "variants": [[str(n) for n in v] for v in variants]}
    return families, None


def size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M"


def front_matter(card_config: dict, samples: int, members=(), folder=None) -> dict:
    meta = {**DEFAULT_CARD, **{k: v for k, v in (card_config or {}).items() if v is not None}}
    meta["size_categories"] = [size_category(samples)]
    # Lets `datasets.load_dataset(repo)` find the shards with its webdataset builder.
    meta.setdefault("configs", [{"config_name": "default", "data_files": "*.tar"}])
    if members:  # declared, not inferred: samples hold different members (release_schema)
        meta["dataset_info"] = card_dataset_info(members)
    link = meta.get("license_link")
    if link and folder is not None and "://" not in str(link) \
            and not storage.exists(storage.join(str(folder), str(link))):
        meta.pop("license_link")  # never link a file the release does not hold
    return meta


def loading_section(members) -> list[str]:
    """How to read the release with `datasets`, `webdataset` and Ray Data."""
    cols = ", ".join(f"`{m}`" for m in members)
    return [
        "## Loading", "",
        f"Columns: `__key__`, {cols}, `__url__`; a member a sample lacks is None. Images open "
        "with PIL (`.convert(\"RGB\")` gives what you expect: depth is 8-bit grey, near bright; "
        "`uniformer.png` is a palette PNG).", "",
        "```python",
        "import datasets",
        "ds = datasets.load_dataset(\"path/or/ORG/NAME\", split=\"train\")  # features from this card",
        "",
        "import webdataset as wds",
        "for sample in wds.WebDataset(\"path/*.tar\", shardshuffle=False).decode(\"pil\"): ...",
        "",
        "import ray",
        f"{RAY_SETTING}  # a member absent from some samples",
        "ds = ray.data.read_webdataset(\"path/\")",
        "```",
    ]


def quality_section(folder: Path, tasks_path: Path | None) -> list[str]:
    """Score histograms and gate counts from the folder's manifest (`manifest.parquet`),
    under the task config's `quality:` gates; a note when either is missing or unusable."""
    from graph200k.manifest import Manifest
    from graph200k.quality import QualityGates, markdown, summarize

    path = Path(folder) / "manifest.parquet"
    if not path.is_file():
        return ["No manifest.parquet in the folder: build it (python -m graph200k.manifest) "
                "to see the quality scores here.", ""]
    try:
        raw = load_raw(tasks_path) if tasks_path else {}
        gates = QualityGates.from_config(raw.get("quality"), "tasks config: quality")
    except (OSError, ValueError, TypeError, yaml.YAMLError):
        gates = QualityGates()
    cells = Manifest.load(path).quality_scores.to_pylist()
    return markdown(summarize(cells, gates))


def render(folder: Path, card_config: dict | None = None, tasks_path: Path | None = None) -> str:
    totals = collect(folder)
    families, note = read_families(tasks_path)
    card_config = card_config or {}
    members = member_names(folder)
    meta = front_matter(card_config.get("front_matter") or {}, totals["samples"], members, folder)
    present = {n for n, c in totals["nodes"].items() if c}

    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    lines += [f"# {meta.get('pretty_name', 'Graph200K')}", ""]
    if card_config.get("description"):
        lines += [str(card_config["description"]).strip(), ""]
    lines += [
        "Graph-structured multi-task image dataset (VisualCloze, arXiv 2504.07960) built from "
        "Subjects200K. Each sample is a WebDataset entry keyed by its Subjects200K row; members "
        "are named by node type (`target.jpg`, `canny.png`, ...) and `meta.json` lists the node "
        "types the sample has.",
        "",
        f"- samples: {totals['samples']}",
        f"- shards: {totals['shards']}",
    ]
    if totals["without_stats"]:
        lines.append(f"- shards without a stats file (counted from their members): "
                     f"{totals['without_stats']}")
    lines += [""] + loading_section(members)
    lines += ["", "## Node types", "", "| node type | kind | samples | stored as |", "|---|---|---|---|"]
    for name, node in NODE_TYPES.items():
        count = totals["nodes"].get(name, 0)
        if count:
            where = "computed online from " if node.online else ""
            lines.append(f"| {name} | {node.kind} | {count} | {where}{', '.join(node.members)} |")
    missing = [n for n in NODE_TYPES if n not in present]
    if missing:
        lines += ["", f"Not in this release: {', '.join(missing)}."]

    lines += ["", "## Annotation stages", ""]
    if totals["stages"]:
        lines += ["| stage | ok | not applicable | failed | worker seconds | why not applicable | why failed |",
                  "|---|---|---|---|---|---|---|"]
        for name, s in sorted(totals["stages"].items()):
            lines.append(f"| {name} | {s['ok']} | {s['skipped']} | {s['failed']} | {s['seconds']:.1f} "
                         f"| {reasons(s['why_skipped'])} | {reasons(s['why_failed'])} |")
        lines += ["", "Counts are those of each shard's latest run. A sample is *not applicable* "
                  "to a stage that has nothing to make for it (the reason says why); failed and "
                  "not-applicable samples are listed by key in the shards' `.stats.json` files."]
    else:
        lines.append("No per-stage statistics found.")

    lines += ["", "## Task families", ""]
    if families:
        lines += ["| family | weight | variants | variants whose node types are all present | example |",
                  "|---|---|---|---|---|"]
        for name, fam in families.items():
            covered = sum(all(n in present for n in v) for v in fam["variants"])
            example = " → ".join(fam["variants"][0]) if fam["variants"] else ""
            lines.append(f"| {name} | {fam['weight']:g} | {len(fam['variants'])} | {covered} | {example} |")
        total = sum(len(f["variants"]) for f in families.values())
        lines += ["", f"{len(families)} families, {total} variants. A family is drawn by weight, "
                  "then a variant uniformly; in a variant every node but the last is a condition "
                  "and the last is the target."]
    else:
        lines.append(note or "No task families configured.")

    lines += ["", "## Quality scores", ""] + quality_section(folder, tasks_path)

    if card_config.get("citation"):
        lines += ["", "## Citation", "", "```bibtex", str(card_config["citation"]).strip(), "```"]
    return "\n".join(lines) + "\n"
