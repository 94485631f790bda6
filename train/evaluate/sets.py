"""Evaluation sets: what is generated, and what each generated image is scored against.

- `HeldOutSet`: tasks of an evaluation task config (e.g. configs/eval/visualcloze-test-tasks.yaml)
  drawn from the manifest's held-out `test` samples (or the `unseen` variants), `per_task`
  tasks per variant. For the Fill recipe each task is drawn with max(contexts) + 1 rows and
  evaluated once per in-context count k: its last k example rows and the same query row
  (same samples, same degradation seeds), so the "0 / 1 / 2 in-context" columns differ
  only in the examples shown. For CogVideoX the task config's two-image variants give
  (condition, target) pairs.
- `FolderSet`: an external folder of images with a JSONL of prompts, one object a line:
  ``{"id": "000000000139", "task": "canny->target", "prompt": "...",
  "images": {"canny": "canny/000000000139.png", "target": "images/000000000139.png"},
  "subject": "dog"}``. `task` is a variant name (condition slots `->` target node), `images`
  maps slot names to paths relative to the JSONL (the target's is the ground truth, optional:
  DreamBench has none); an id is unique within its task. In-context rows for the Fill recipe are other lines of the same
  task that hold every image, chosen with the run's seed.

Every item has a stable id (file-safe), its table row (`task`), column (`group`), task kind
and seed; the seed derives from (run seed, item id) only, so an item's image does not
depend on which other items are evaluated or on which process generates it.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from graph200k.nodes import DEGRADATION, EDIT, NODE_TYPES, SLOT_NODE, SLOTS, STYLE
from graph200k.prompts import PromptConfig, build_prompt
from graph200k.tasks import TaskConfig, TaskError, TaskSampler, Variant, variant_slots

FULL_PROMPT = PromptConfig(keep_task_prob=1.0, keep_content_prob=1.0, drop_caption_prob=0.0)
CONTROL_NODES = ("canny", "depth")


def kind_of(nodes) -> str:
    """The task kind (which table and metrics) of a variant's node path."""
    *conds, target = nodes
    kinds = {NODE_TYPES[c].kind for c in conds}
    if NODE_TYPES[target].kind == STYLE:
        return "style"
    if target == "reference":
        return "extraction"
    if target != "target":
        return "dense"
    if DEGRADATION in kinds:
        return "restoration"
    if EDIT in kinds:
        return "editing"
    if list(conds) == ["reference"]:
        return "subject"
    return "conditional"


def parse_variant(name: str) -> tuple[str, ...]:
    """'reference+canny->target' -> ('reference', 'canny', 'target'), node names checked."""
    if "->" not in name:
        raise ValueError(f"task {name!r} is not a variant name such as 'canny->target'")
    conds, target = name.split("->", 1)
    nodes = tuple(c for c in conds.split("+") if c) + (target,)
    unknown = [n for n in nodes if n not in NODE_TYPES]
    if unknown or len(nodes) < 2:
        raise ValueError(f"task {name!r}: unknown node type(s) {unknown}; see graph200k.nodes")
    return nodes


def item_seed(seed: int, item_id: str) -> int:
    digest = hashlib.blake2b(f"{seed}/{item_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 33  # 31 bits: any generator takes it


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("->", "-to-").replace("+", "-")).strip("_")


@dataclass
class Item:
    id: str  # unique and file-safe: images/<id>.png
    task: str  # table row (a variant name)
    family: str
    kind: str
    group: str  # table column: in-context rows ("0", "1", "2") or the FCD mask variant
    seed: int
    prompt: str  # what the CLIP text metrics compare against
    source: dict = field(default_factory=dict)  # how the set rebuilds the inputs

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Inputs:
    """What the model sees. Fill: grid rows with the masked cell None; CogVideoX: a pair."""

    rows: list | None = None  # rows[r][c]: uint8 image or None (the cell to generate)
    mask: tuple[int, int] | None = None
    grid_prompt: str = ""
    condition: np.ndarray | None = None  # CogVideoX frame 1
    pair_prompt: str = ""
    subject: str = ""
    pair_task: str = ""


@dataclass
class References:
    """What the generated image is scored against (None where the item has none)."""

    truth: np.ndarray | None = None
    reference: np.ndarray | None = None
    style: np.ndarray | None = None
    condition: np.ndarray | None = None
    condition_node: str | None = None


def _slot_refs(kind: str, columns: list[str], row: list, truth) -> References:
    """References from one query row: images[c] for columns[c] (the target last)."""
    refs = References(truth=truth)
    for slot, image in zip(columns[:-1], row[:-1]):
        node = SLOT_NODE[slot]
        if slot == "reference":
            refs.reference = image
        elif slot.endswith("_ref"):
            refs.style = image
        elif node in CONTROL_NODES and refs.condition is None:
            refs.condition, refs.condition_node = image, node
    if kind == "extraction":
        refs.reference = truth  # the extracted subject is compared with the true one
    return refs


# ----------------------------------------------------------------------------- held-out
class HeldOutSet:
    def __init__(self, shards, manifest, tasks_config, recipe: str, split: str = "test", per_task: int = 20,
                 contexts=(0, 1, 2), seed: int = 0, pair_res: int = 512):
        from graph200k.reader import SampleReader, load_manifest

        self.recipe, self.split, self.per_task, self.seed = recipe, split, int(per_task), int(seed)
        self.contexts = tuple(sorted(set(int(k) for k in contexts)))
        if self.per_task < 1 or not self.contexts or self.contexts[0] < 0:
            raise ValueError(f"per_task must be >= 1 and contexts non-negative, got {per_task}, {contexts}")
        self.manifest = load_manifest(manifest, shards)
        self.reader = SampleReader(shards, self.manifest)
        config = tasks_config if isinstance(tasks_config, TaskConfig) else TaskConfig.load(tasks_config)
        if recipe == "cogvideox":
            from graph200k.stream import pair_config

            config = pair_config(config)
        self.config, self.pair_res = config, pair_res
        self.skipped: dict[str, str] = {}  # variant -> why it has no items

    def _sampler(self, variant: Variant) -> TaskSampler:
        rows = 1 if self.recipe == "cogvideox" else max(self.contexts) + 1
        one = TaskConfig({variant.family: [variant]}, {variant.family: 1.0}, (rows,), (1.0,), 0.0, FULL_PROMPT,
                         self.config.unseen)
        return TaskSampler(self.manifest, one, seed=self.seed, split=self.split)

    def _why(self, variant: Variant, error: TaskError) -> str:
        from graph200k.nodes import mask_of
        from graph200k.tasks import SAMPLE_SPLIT

        split = SAMPLE_SPLIT[self.split]
        missing = [n for n in variant.nodes if not len(self.manifest.having(mask_of([n]), split))]
        if missing:
            return f"no {split or 'manifest'} sample has node type(s) {', '.join(missing)}"
        return str(error)

    def items(self) -> list[Item]:
        items = []
        for variant in self.config.variants:
            try:
                sampler = self._sampler(variant)
            except TaskError as e:
                self.skipped[variant.name] = self._why(variant, e)
                continue
            kind = kind_of(variant.nodes)
            for i in range(self.per_task):
                sampler.rng = random.Random(f"train.evaluate/{self.seed}/{variant.name}/{i}")
                task = sampler.sample()
                task.task_id = f"{safe_name(variant.name)}_{i:04d}"
                query = task.rows[-1][0]["key"]
                prompt = self.manifest.description(self.manifest.index_of(query))
                groups = [None] if self.recipe == "cogvideox" else [k for k in self.contexts if k < len(task.rows)]
                for k in groups:
                    item_id = task.task_id if k is None else f"{task.task_id}_ctx{k}"
                    items.append(Item(item_id, variant.name, variant.family, kind, "" if k is None else str(k),
                                      item_seed(self.seed, item_id), prompt,
                                      {"task": task.to_json(), "context": k}))
        return items

    def _task_images(self, item: Item):
        from graph200k.reader import row_seed
        from graph200k.tasks import Task

        task = Task.from_json(item.source["task"])
        cache: dict = {}
        images = [[self.reader.fetch(c["key"], c["slot"], row_seed(task.seed, r), cache=cache) for c in row]
                  for r, row in enumerate(task.rows)]
        return task, images

    def pair_task(self, item: Item) -> str:
        """RealGeneral's task name of a pair item (what UCE was trained with)."""
        from graph200k.reader import pair_task_name

        t = item.source["task"]
        return pair_task_name(t["family"], t["nodes"], len(self.config.families[t["family"]]))

    def inputs(self, item: Item) -> Inputs:
        if self.recipe == "cogvideox":
            from graph200k.tasks import Task

            task = Task.from_json(item.source["task"])
            name = self.pair_task(item)
            pair = self.reader.pair(task, self.pair_res, name)
            return Inputs(condition=pair.condition, pair_prompt=pair.prompt, subject=pair.subject, pair_task=pair.task)
        task, images = self._task_images(item)
        k = item.source["context"]
        rows = [list(r) for r in images[len(images) - 1 - k:]]
        rows[-1][-1] = None  # the query's target: what the model generates
        rng = random.Random(f"train.evaluate/prompt/{task.seed}")
        prompt = build_prompt(task.columns, k + 1, item.prompt, rng, FULL_PROMPT)["text"]
        return Inputs(rows=rows, mask=(k, len(task.columns) - 1), grid_prompt=prompt)

    def references(self, item: Item) -> References:
        task, images = self._task_images(item)
        if self.recipe == "cogvideox":
            from graph200k.grid import centre_square, resize, to_rgb, train_cell_size

            size = train_cell_size(self.pair_res)
            images = [[to_rgb(resize(centre_square(im), size)) for im in row] for row in images]
        query = images[-1]
        return _slot_refs(item.kind, task.columns, query, query[-1])


# ------------------------------------------------------------------------------- folder
class FolderSet:
    def __init__(self, prompts, recipe: str, contexts=(0, 1, 2), seed: int = 0, tasks=None, pair_res: int = 512):
        self.path = Path(prompts)
        if not self.path.is_file():
            raise FileNotFoundError(f"evaluation prompts {self.path} do not exist (data.prompts: a JSONL file; "
                                    "docs/evaluation.md says how to prepare COCO and DreamBench)")
        self.base = self.path.parent
        self.recipe, self.seed, self.pair_res = recipe, int(seed), pair_res
        self.contexts = tuple(sorted(set(int(k) for k in contexts)))
        self.lines, self.skipped = [], {}
        seen = set()
        for n, raw in enumerate(self.path.read_text().splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                nodes = parse_variant(line["task"])
                slots = variant_slots(nodes)
                missing = [s for s in slots[:-1] if s not in line.get("images", {})]
                if missing:
                    raise ValueError(f"images lacks condition slot(s) {missing}")
                unknown = [s for s in line.get("images", {}) if s not in SLOTS]
                if unknown:
                    raise ValueError(f"unknown slot name(s) {unknown}")
                if (line["task"], str(line["id"])) in seen:
                    raise ValueError(f"id {line['id']!r} appears twice for task {line['task']!r}")
            except (KeyError, ValueError, json.JSONDecodeError) as e:
                raise ValueError(f"{self.path}:{n}: {type(e).__name__}: {e}") from None
            seen.add((line["task"], str(line["id"])))
            if tasks and line["task"] not in tasks:
                continue
            self.lines.append({**line, "id": str(line["id"]), "nodes": nodes, "slots": slots})
        if not self.lines:
            raise ValueError(f"{self.path}: no line of the wanted tasks {tasks}")
        self._by_task: dict[str, list[dict]] = {}
        for line in self.lines:
            self._by_task.setdefault(line["task"], []).append(line)

    def _examples(self, line: dict, k: int) -> list[dict] | None:
        pool = [x for x in self._by_task[line["task"]] if x["id"] != line["id"] and x["slots"][-1] in x["images"]]
        if len(pool) < k:
            return None
        return random.Random(f"train.evaluate/{self.seed}/{line['id']}/context").sample(pool, k)

    def items(self) -> list[Item]:
        items = []
        for line in self.lines:
            kind = kind_of(line["nodes"])
            base = f"{safe_name(line['task'])}_{safe_name(line['id'])}"
            if self.recipe == "cogvideox":
                groups = [None]
            else:
                groups = [k for k in self.contexts if self._examples(line, k) is not None]
                for k in set(self.contexts) - set(groups):
                    self.skipped[f"{line['task']} ctx{k}"] = "fewer other lines with every image than in-context rows"
            for k in groups:
                item_id = base if k is None else f"{base}_ctx{k}"
                items.append(Item(item_id, line["task"], line.get("family", "external"), kind,
                                  "" if k is None else str(k), item_seed(self.seed, item_id), line.get("prompt", ""),
                                  {"line": line["id"], "context": k}))
        return items

    def pair_task(self, item: Item) -> str:
        from graph200k.reader import pair_task_name

        line = self._line(item)
        return line.get("pair_task") or pair_task_name("", line["nodes"], 0)

    def _line(self, item: Item) -> dict:
        return next(x for x in self._by_task[item.task] if x["id"] == item.source["line"])

    def _image(self, line: dict, slot: str):
        from PIL import Image

        rel = line["images"].get(slot)
        if rel is None:
            return None
        path = self.base / rel
        try:
            return np.asarray(Image.open(path).convert("RGB"))
        except Exception as e:
            raise ValueError(f"{self.path}: line {line['id']!r}, slot {slot!r}: cannot read {path} ({e})") from None

    def _row(self, line: dict) -> list:
        return [self._image(line, s) for s in line["slots"]]

    def inputs(self, item: Item) -> Inputs:
        line = self._line(item)
        if self.recipe == "cogvideox":
            from graph200k.grid import centre_square, resize, to_rgb, train_cell_size

            if len(line["slots"]) != 2:
                raise ValueError(f"item {item.id}: a two-frame pair needs a 1-condition task, not {item.task}")
            condition = to_rgb(resize(centre_square(self._image(line, line["slots"][0])), train_cell_size(self.pair_res)))
            return Inputs(condition=condition, pair_prompt=line.get("prompt", ""), subject=line.get("subject", ""),
                          pair_task=self.pair_task(item))
        k = item.source["context"]
        rows = [self._row(x) for x in self._examples(line, k)] + [self._row(line)]
        rows[-1][-1] = None
        rng = random.Random(f"train.evaluate/prompt/{item.seed}")
        prompt = build_prompt(line["slots"], k + 1, line.get("prompt", ""), rng, FULL_PROMPT)["text"]
        return Inputs(rows=rows, mask=(k, len(line["slots"]) - 1), grid_prompt=prompt)

    def references(self, item: Item) -> References:
        line = self._line(item)
        row = self._row(line)
        if self.recipe == "cogvideox":
            from graph200k.grid import centre_square, resize, to_rgb, train_cell_size

            size = train_cell_size(self.pair_res)
            row = [None if im is None else to_rgb(resize(centre_square(im), size)) for im in row]
        return _slot_refs(item.kind, line["slots"], row, row[-1])
