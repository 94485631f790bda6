"""One evaluation run: items -> generated images -> per-image scores -> merged figures.

Under `accelerate launch` (or any torch.distributed launcher) process r of w takes items
r, r + w, r + 2w, ... of the one deterministic item list, generates and scores them, and the
per-item records are gathered to process 0, which sorts them back into item order and
writes the outputs: the same records, hence the same figures, as one process. Each image's
seed comes from (seed, item id), never from the process.

Outputs in `out_dir`: images/<item id>.png (generated), items.jsonl (every item and its
scores), metrics.json, metrics.md, samples.png. `reuse=True` keeps generated images that
exist and only generates the missing ones: metrics are recomputed without regenerating.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from train.evaluate.config import EvalConfig, check
from train.evaluate.sets import FolderSet, HeldOutSet, Item

IMAGES = "images"


def build_set(cfg: EvalConfig):
    d, m = cfg.data, cfg.model
    if d.source == "graph200k":
        return HeldOutSet(d.shards, d.manifest, d.tasks_config, m.recipe, d.split, d.per_task, d.contexts, cfg.seed,
                          pair_res=m.res)
    return FolderSet(d.prompts, m.recipe, d.contexts, cfg.seed, d.tasks, pair_res=m.res)


def plan(cfg: EvalConfig, evalset) -> list[Item]:
    """Every item of the run, identical in every process. CogVideoX: one copy per adapter,
    its group the adapter's mask variant."""
    items = evalset.items()
    if cfg.model.recipe == "cogvideox":
        from train.evaluate.generate import adapter_config

        configs = [adapter_config(p) for p in cfg.model.loras]
        labels = [c["mask_variant"] for c in configs]
        labels = [lab if labels.count(lab) == 1 else f"{lab}:{Path(p).parent.name}" for lab, p in
                  zip(labels, cfg.model.loras)]
        kept = []
        for j, (lab, conf) in enumerate(zip(labels, configs)):
            for it in items:
                name = evalset.pair_task(it)
                if name not in conf["tasks"]:  # UCE has no task bias for it: the adapter never learned it
                    evalset.skipped[f"{it.task} ({lab})"] = f"pair task {name!r} is not among the adapter's UCE tasks"
                    continue
                kept.append(Item(f"{it.id}_{lab.replace(':', '-')}", it.task, it.family, it.kind, lab, it.seed,
                                 it.prompt, {**it.source, "lora": j}))
        items = kept
    return items[: cfg.limit] if cfg.limit else items


def make_generator(cfg: EvalConfig, lora_index: int | None):
    from train.evaluate import generate

    m = cfg.model
    if m.recipe == "fill":
        return generate.FillGenerator(m.pretrained, m.loras[0] if m.loras else None, m.device, m.dtype, m.steps,
                                      m.guidance, m.res, m.max_sequence_length, m.revision)
    return generate.CogVideoXGenerator(m.pretrained, m.loras[lora_index], m.device, m.dtype, m.steps, m.guidance,
                                       m.scheduler, m.revision)


def write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.array(Image.open(path).convert("RGB"))  # writable: torch.from_numpy warns on read-only


def generate_items(cfg: EvalConfig, evalset, items: list[Item], folder: Path, reuse: bool, say=print) -> dict:
    """Generated images for `items` (missing ones only with `reuse`); id -> error for failures."""
    failed, generator, loaded = {}, None, object()
    todo = [it for it in items if not (reuse and (folder / f"{it.id}.png").is_file())]
    # CogVideoX items come adapter by adapter: one model in memory at a time.
    todo.sort(key=lambda it: it.source.get("lora", 0))
    for it in todo:
        key = it.source.get("lora")
        if loaded != key:
            generator, loaded = None, key
            generator = make_generator(cfg, key)
        try:
            image = generator(evalset.inputs(it), it.seed)
        except Exception as e:  # one bad item never fails its neighbours
            failed[it.id] = f"generation: {type(e).__name__}: {e}"
            continue
        write_png(folder / f"{it.id}.png", image)
    if todo:
        say(f"evaluate: generated {len(todo) - len(failed)} image(s), {len(items) - len(todo)} reused")
    return failed


def score_items(cfg: EvalConfig, evalset, items: list[Item], folder: Path, failed: dict) -> list[dict]:
    from train.evaluate.metrics import Scorer, ScoreInput
    from train.evaluate.models import MissingWeights  # noqa: F401  (a missing weight is raised as is)

    import torch

    from annotators.models import resolve_device

    scorer = Scorer(cfg.models, tuple(cfg.metrics), cfg.batch_size, resolve_device("evaluate", cfg.metric_device),
                    torch.float32, cfg.fid_features)
    records = []
    todo = [it for it in items if it.id not in failed]
    step = max(cfg.batch_size, 1) * 4  # items read per scoring pass: every net sees full batches
    for start in range(0, len(todo), step):
        part, inputs = [], []
        for it in todo[start:start + step]:
            path = folder / f"{it.id}.png"
            if not path.is_file():
                failed[it.id] = "no generated image (run without --reuse to generate it)"
                continue
            try:
                refs = evalset.references(it)
            except Exception as e:
                failed[it.id] = f"references: {type(e).__name__}: {e}"
                continue
            part.append(it)
            inputs.append(ScoreInput(read_png(path), it.kind, refs.truth, it.prompt, refs.reference, refs.style,
                                     refs.condition, refs.condition_node))
        for it, scores in zip(part, scorer.score(inputs)):
            fake, real = scores.pop("fid_fake", None), scores.pop("fid_real", None)
            record = {**it.to_json(), "scores": scores}
            if fake is not None:
                record["fid_fake"], record["fid_real"] = fake, real
            records.append(record)
    return records


def samples_rows(cfg: EvalConfig, evalset, records: list[dict], folder: Path):
    rows, seen = [], set()
    for r in records:
        if r["task"] in seen or len(rows) >= cfg.samples:
            continue
        seen.add(r["task"])
        it = Item(**{k: r[k] for k in ("id", "task", "family", "kind", "group", "seed", "prompt", "source")})
        inp = evalset.inputs(it)
        shown = [x for x in (inp.rows[-1] if inp.rows else [inp.condition]) if x is not None]
        truth = evalset.references(it).truth
        label = f"{r['task']}  ({'ctx ' if cfg.model.recipe == 'fill' else 'FCD '}{r['group']})  inputs | generated | truth"
        rows.append((label, shown, read_png(folder / f"{r['id']}.png"), truth))
    return rows


def evaluate(cfg: EvalConfig, reuse: bool = False, say=print) -> dict | None:
    """Runs the evaluation; returns the summary on process 0 (None elsewhere)."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    check(cfg)
    state = PartialState(cpu=cfg.model.device == "cpu" and cfg.metric_device == "cpu")
    rank, world = state.process_index, state.num_processes
    if world > 1:  # `auto` on a GPU box: each process on its own GPU (LOCAL_RANK), not all on cuda:0
        if cfg.model.device == "auto":
            cfg.model.device = str(state.device)
        if cfg.metric_device == "auto":
            cfg.metric_device = str(state.device)
    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    folder = out / IMAGES
    folder.mkdir(parents=True, exist_ok=True)
    evalset = build_set(cfg)
    items = plan(cfg, evalset)
    if not items:
        raise ValueError(f"no evaluation item: every task was skipped ({evalset.skipped})")
    mine = items[rank::world]
    failed = generate_items(cfg, evalset, mine, folder, reuse, say if state.is_main_process else lambda *_: None)
    records = score_items(cfg, evalset, mine, folder, failed)
    if world > 1:
        records = gather_object(records)
        failed = {k: v for part in gather_object([failed]) for k, v in part.items()}
    if not state.is_main_process:
        state.wait_for_everyone()
        return None
    order = {it.id: i for i, it in enumerate(items)}
    records.sort(key=lambda r: order[r["id"]])
    from train.evaluate import report

    summary = {
        "recipe": cfg.model.recipe, "model": cfg.model.pretrained, "loras": list(cfg.model.loras),
        "set": cfg.data.source if cfg.data.source == "folder" else f"graph200k {cfg.data.split}",
        "seed": cfg.seed, "items": len(records), "processes": world, "columns": report.COLUMN_NAMES[cfg.model.recipe],
        "tasks": report.aggregate(records), "skipped": evalset.skipped,
        "failed": [{"id": k, "error": failed[k]} for k in sorted(failed, key=lambda k: order[k])],
    }
    report.write_json(out / "metrics.json", summary)
    report.write_markdown(out / "metrics.md", summary)
    lines = "".join(json.dumps({k: v for k, v in r.items() if not k.startswith("fid_")}, sort_keys=True) + "\n"
                    for r in records)
    (out / "items.jsonl").write_text(lines)
    write_png(out / "samples.png", report.samples_sheet(samples_rows(cfg, evalset, records, folder)))
    say(f"evaluate: {len(records)} items, {len(summary['tasks'])} rows, {len(failed)} failed "
        f"in {time.perf_counter() - t0:.1f} s -> {out / 'metrics.md'}")
    state.wait_for_everyone()
    return summary
