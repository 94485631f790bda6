"""Task families and the path-based task sampler (VisualCloze, Sec. 3-4).

A variant is a path of node types (conditions ..., target). One task draws a family by
weight, a variant uniformly, a row count (1/2/3 with p 0.3/0.4/0.3), that many distinct
samples having every node of the variant, one permutation of the first L-1 columns
shared by all rows, and the masked cell of the query row (the last row).

A generated node (style, edit) is stored as several variants per sample: each row of a
task uses one, drawn from the task's seed among those its sample holds and recorded in
the row's cells (`"variant": i`), so reading the task back reads the same images.
With `quality:` gates in the task config (graph200k.quality; default off), a variant a gate
removes is never drawn, and a sample left with no variant of a node is not eligible for
task variants that need that node; `gate_counts` says what each gate removed.
"""

from __future__ import annotations

import bisect
import difflib
import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from graph200k.manifest import Manifest
from graph200k.nodes import NODE_TYPES, SLOT_NODE, VARIANT_NODES, mask_of, node_type
from graph200k.prompts import PromptConfig, build_prompt
from graph200k.quality import QualityGates, allowed_variants, parse_scores

DEFAULT_TASKS_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tasks.yaml"
PATHS_FAMILY = "graph_paths"


def draw_variant(task_seed: int, row: int, node: str, count: int) -> int:
    """The variant of `node` row `row` of a task uses: from the task's seed alone, so the
    draw leaves the sampler's own random sequence (and every other task) unchanged."""
    if count <= 1:
        return 0
    return random.Random(f"graph200k.variant/{int(task_seed)}/{row}/{node}").randrange(count)


class TaskError(ValueError):
    """A task (or family) that cannot be sampled; the message names the node types."""


def variant_name(nodes) -> str:
    *conds, target = nodes
    return "+".join(conds) + "->" + target


def variant_slots(nodes) -> list[str]:
    """The grid columns of a variant: every image slot of every node, in path order."""
    return [s.name for n in nodes for s in NODE_TYPES[n].slots]


@dataclass(frozen=True)
class Variant:
    family: str
    nodes: tuple[str, ...]

    @property
    def name(self) -> str:
        return variant_name(self.nodes)

    @property
    def required_mask(self) -> int:
        return mask_of(self.nodes)

    @property
    def slots(self) -> list[str]:
        return variant_slots(self.nodes)


@dataclass
class TaskConfig:
    families: dict[str, list[Variant]]
    weights: dict[str, float]
    row_counts: tuple[int, ...] = (1, 2, 3)
    row_probs: tuple[float, ...] = (0.3, 0.4, 0.3)
    reverse_mask_prob: float = 0.5
    prompt: PromptConfig = field(default_factory=PromptConfig)
    unseen: frozenset[str] = frozenset()
    quality: QualityGates = field(default_factory=QualityGates)

    @property
    def variants(self) -> list[Variant]:
        return [v for vs in self.families.values() for v in vs]

    @classmethod
    def load(cls, path=DEFAULT_TASKS_CONFIG) -> "TaskConfig":
        try:
            raw = load_raw(path)
        except FileNotFoundError as e:
            raise TaskError(f"task config {e.filename or path} not found (the default is "
                            f"{DEFAULT_TASKS_CONFIG})") from None
        except yaml.YAMLError as e:
            raise TaskError(f"task config {path} is not valid YAML ({e})") from None
        try:
            return cls.from_dict(raw, source=str(path))
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            raise TaskError(f"task config {path}: {e}") from None

    @classmethod
    def from_dict(cls, raw: dict, source: str = "<dict>") -> "TaskConfig":
        known = {"families", "rows", "reverse_mask_prob", "prompt", "unseen", "quality"}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        families, weights = {}, {}
        for fam, spec in (raw.get("families") or {}).items():
            variants = []
            for nodes in spec.get("variants", []):
                for n in nodes:
                    try:
                        node_type(n)
                    except KeyError as e:
                        raise ValueError(f"{source}: family {fam}: {e.args[0]}") from None
                if len(nodes) < 2 or len(set(nodes)) != len(nodes):
                    raise ValueError(f"{source}: family {fam}: variant {nodes} needs >= 2 "
                                     "distinct node types")
                variants.append(Variant(fam, tuple(nodes)))
            names = [v.name for v in variants]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{source}: family {fam}: variant(s) {dup} listed twice")
            families[fam] = variants
            weights[fam] = float(spec.get("weight", 1.0))
        rows = raw.get("rows") or {}
        counts = tuple(rows.get("counts", (1, 2, 3)))
        probs = tuple(rows.get("probs", (0.3, 0.4, 0.3)))
        if len(counts) != len(probs) or abs(sum(probs) - 1) > 1e-6 or min(counts) < 1:
            raise ValueError(f"{source}: rows.counts / rows.probs must pair up and probs sum to 1")
        unseen = frozenset(raw.get("unseen") or ())
        names = {v.name for vs in families.values() for v in vs}
        for name in sorted(unseen - names):
            close = difflib.get_close_matches(name, sorted(names), n=1)
            raise ValueError(f"{source}: unseen variant {name!r} is not a variant of any family"
                             + (f"; did you mean {close[0]!r}?" if close else ""))
        return cls(families, weights, counts, probs, float(raw.get("reverse_mask_prob", 0.5)),
                   PromptConfig.from_dict(raw.get("prompt")), unseen,
                   QualityGates.from_config(raw.get("quality"), f"{source}: quality"))

    def with_paths(self, min_images: int = 2, max_images: int = 4, weight: float = 1.0):
        """Add every simple type-graph path of min..max images as the family `graph_paths`."""
        # networkx is imported here, not at the top: loading it is half a second of every
        # tool that only samples the default families (the browser's cold start).
        from graph200k.graph import enumerate_paths

        fam = [Variant(PATHS_FAMILY, p) for p in enumerate_paths(min_images, max_images)]
        return TaskConfig({**self.families, PATHS_FAMILY: fam},
                          {**self.weights, PATHS_FAMILY: weight}, self.row_counts,
                          self.row_probs, self.reverse_mask_prob, self.prompt, self.unseen,
                          self.quality)


def load_raw(path, _seen: tuple = ()) -> dict:
    """A task config file as a mapping, its `include:` resolved.

    A file may start from another one (`include: tasks.yaml`, relative to the including
    file) and then `extend:` its families with more variants (`{family: [[a, b], ...]}`),
    add whole new `families:`, or override any other top-level key. The default families
    are then written once, in the default file.
    """
    path = Path(path)
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise TaskError(f"task config {path} must be a mapping with `families:`, not "
                        f"{type(raw).__name__}")
    extend = raw.pop("extend", None)
    include = raw.pop("include", None)
    if include is None:
        if extend is not None:
            raise ValueError(f"{path}: `extend:` needs an `include:` of the file it extends")
        return raw
    base_path = (path.parent / include).resolve()
    if base_path in _seen:
        raise ValueError(f"{path}: `include: {include}` includes itself (via {list(_seen)})")
    base = load_raw(base_path, _seen + (path.resolve(),))
    families = {f: dict(spec) for f, spec in (base.get("families") or {}).items()}
    for fam, variants in (extend or {}).items():
        if fam not in families:
            raise ValueError(f"{path}: `extend:` names family {fam!r}, which {include} does "
                             f"not define (families: {sorted(families)}); add it under "
                             "`families:` instead")
        families[fam]["variants"] = list(families[fam].get("variants") or []) + list(variants)
    for fam, spec in (raw.pop("families", None) or {}).items():
        if fam in families:
            raise ValueError(f"{path}: family {fam!r} is already defined in {include}; "
                             "add variants to it with `extend:`")
        families[fam] = spec
    return {**base, **raw, "families": families}


@dataclass
class Task:
    task_id: str
    family: str
    variant: str
    nodes: list[str]
    columns: list[str]  # slot per grid column after the shared permutation; target last
    rows: list[list[dict]]  # rows[r][c] = {"key", "node", "slot"}; the last row is the query
    mask_row: int
    mask_col: int
    prompt: dict
    seed: int  # seeds this task's online work (degradations) downstream

    def to_json(self) -> dict:
        return {"task_id": self.task_id, "family": self.family, "variant": self.variant,
                "nodes": self.nodes, "columns": self.columns, "rows": self.rows,
                "mask": {"row": self.mask_row, "col": self.mask_col},
                "prompt": self.prompt, "seed": self.seed}

    @classmethod
    def from_json(cls, d: dict) -> "Task":
        return cls(d["task_id"], d["family"], d["variant"], list(d["nodes"]), list(d["columns"]),
                   d["rows"], d["mask"]["row"], d["mask"]["col"], d["prompt"], int(d["seed"]))


# Which samples (the manifest's key split) each task split draws from. An unseen variant
# was never trained on, but its nodes were: a training sample's target was the target of
# other tasks, so a query on it would score an image the model has learnt. Unseen tasks
# draw from the held-out samples, as `test` does.
SAMPLE_SPLIT = {"train": "train", "test": "test", "unseen": "test"}


class TaskSampler:
    """Seeded sampler over a manifest. `split="train"` never yields unseen variants nor
    samples of the manifest's `test` split; `split="test"` draws the training variants from
    the `test` samples only; `split="unseen"` yields only the unseen variants (evaluation),
    also from the `test` samples only."""

    def __init__(self, manifest: Manifest, config: TaskConfig | None = None, seed: int = 0,
                 families=None, split: str = "train"):
        self.manifest = manifest
        self.config = config or TaskConfig.load()
        self.seed = seed
        self.rng = random.Random(seed)
        self.count = 0
        if families:
            missing = [f for f in families if f not in self.config.families]
            if missing:
                raise TaskError(f"unknown task famil{'y' if len(missing) == 1 else 'ies'} "
                                f"{missing}; known: {sorted(self.config.families)}")
        wanted = list(families) if families else list(self.config.families)
        if split not in SAMPLE_SPLIT:
            raise ValueError(f"split must be one of {sorted(SAMPLE_SPLIT)}, not {split!r}")
        self._sample_split = SAMPLE_SPLIT[split]
        self._eligible: dict[int, list[int]] = {}
        self.gate_counts: dict[str, int] = {}  # "<node>.<gate>" -> variants it removed
        self._allowed = self._gate(manifest, self.config.quality)
        self.unsatisfiable: list[Variant] = []
        fams, weights = [], []
        for fam in wanted:
            vs = [v for v in self.config.families[fam]
                  if (v.name in self.config.unseen) == (split == "unseen")]
            ok = []
            for v in vs:
                (ok if self._eligible_for(v) else self.unsatisfiable).append(v)
            if ok and self.config.weights[fam] > 0:
                fams.append((fam, ok))
                weights.append(self.config.weights[fam])
        if not fams:
            if self._sample_split and not (manifest.splits == self._sample_split).any():
                raise TaskError(f"the manifest has no sample in split {self._sample_split!r} "
                                f"({len(manifest)} samples); rebuild it with a larger "
                                "--test-fraction (python -m graph200k.manifest)")
            counts = manifest.node_counts()
            missing = sorted({n for v in self.unsatisfiable for n in v.nodes if not counts[n]})
            raise TaskError(
                f"no sample can satisfy any variant of {wanted} ({split} split, "
                f"{len(manifest)} samples): no sample has node types {missing}; annotate the "
                "shards with the stages that produce them (make annotate) or pick other families")
        self._families = fams
        self._cum_weights = list(itertools.accumulate(weights))
        self._row_cum = list(itertools.accumulate(self.config.row_probs))

    def _gate(self, manifest: Manifest, gates: QualityGates) -> dict[tuple[int, str], list[int]]:
        """(row, node) -> the variants the gates leave, for scored rows (gates on only)."""
        allowed: dict[tuple[int, str], list[int]] = {}
        if not gates.active:
            return allowed
        for i in range(len(manifest)):
            scores = parse_scores(manifest.scores(i))
            for node in scores:
                if node in VARIANT_NODES and manifest.variant_count(i, node):
                    allowed[(i, node)] = allowed_variants(
                        gates, node, manifest.variant_count(i, node), scores, self.gate_counts)
        return allowed

    def _eligible_for(self, v: Variant) -> list[int]:
        m = v.required_mask
        e = self._eligible.get(m)
        if e is None:
            e = self.manifest.having(m, self._sample_split).tolist()
            if self._allowed:  # a sample whose every variant of a node was gated out
                e = [i for i in e if all(self._allowed.get((i, n), True) for n in v.nodes)]
            self._eligible[m] = e
        return e

    def sample(self) -> Task:
        rng = self.rng
        fam, variants = self._families[
            bisect.bisect_right(self._cum_weights, rng.random() * self._cum_weights[-1])]
        variant = variants[rng.randrange(len(variants))]
        eligible = self._eligible[variant.required_mask]
        counts = self.config.row_counts
        n_rows = counts[min(bisect.bisect_right(self._row_cum, rng.random()), len(counts) - 1)]
        n_rows = min(n_rows, len(eligible))  # fewer samples than rows: use what exists
        picks = [eligible[i] for i in rng.sample(range(len(eligible)), n_rows)]
        slots = variant.slots
        head = slots[:-1]
        rng.shuffle(head)
        columns = head + slots[-1:]
        cols = len(columns)
        mask_col = rng.randrange(cols) if rng.random() < self.config.reverse_mask_prob else cols - 1
        prompt = build_prompt(columns, n_rows, self.manifest.description(picks[-1]), rng,
                              self.config.prompt)
        seed = rng.getrandbits(63)
        rows = []
        for r, i in enumerate(picks):
            key = self.manifest.key(i)
            chosen = {n: self._draw(seed, r, i, n) for n in variant.nodes if n in VARIANT_NODES}
            rows.append([{"key": key, "node": SLOT_NODE[s], "slot": s,
                          **({"variant": chosen[SLOT_NODE[s]]} if SLOT_NODE[s] in chosen else {})}
                         for s in columns])
        task = Task(f"{self.seed}-{self.count}", fam, variant.name, list(variant.nodes),
                    columns, rows, n_rows - 1, mask_col, prompt, seed)
        self.count += 1
        return task

    def _draw(self, seed: int, row: int, i: int, node: str) -> int:
        allowed = self._allowed.get((i, node))
        if allowed is None:  # ungated (or unscored): the paper's draw
            return draw_variant(seed, row, node, self.manifest.variant_count(i, node))
        return allowed[draw_variant(seed, row, node, len(allowed))]

    def __iter__(self):
        while True:
            yield self.sample()

    def take(self, n: int) -> list[Task]:
        return [self.sample() for _ in range(n)]

