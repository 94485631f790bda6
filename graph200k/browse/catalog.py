"""What the browser's pages show, computed from the manifest and the stats files.

The manifest answers every sample-level question (which nodes, which split, which item)
with numpy over its columns, so a filter over 200K samples costs milliseconds. The stats
files (one per stage sidecar and shard, a few kB each) are read once, on the first page
that needs them: stage totals, failure / not-applicable reasons, and which keys they name.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from graph200k import storage
from graph200k.dataset import ShardSet
from graph200k.nodes import (DEGRADATION, NODE_BIT, NODE_TYPES, VARIANT_NODES,
                             mask_of, names_of)
from graph200k.reader import SampleReader
from graph200k.shards import decode_image, jpeg_size, read_json
from graph200k.splits import SPLITS
from graph200k.tasks import TaskConfig, TaskSampler, Variant

PER_PAGE = 48
MAX_PER_PAGE = 200
FAILED, SKIPPED = "failed", "skipped"
STATS_THREADS = 16
TARGET_SIZES = 100_000  # (w, h) kept per key: a few MB at most


@dataclass
class StageTotals:
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    shards: int = 0
    seconds: float = 0.0
    failed_reasons: Counter = field(default_factory=Counter)
    skipped_reasons: Counter = field(default_factory=Counter)


@dataclass
class Stats:
    """Everything the stats files say: per stage totals, per key its (status, stage, reason)."""

    stages: dict[str, StageTotals]
    by_key: dict[str, list[tuple[str, str, str]]]
    ingest: dict  # source stats: filtered / failed rows (keys that never became samples)


@dataclass(frozen=True)
class Filters:
    has: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    item: str = ""
    split: str = ""
    issue: str = ""  # "failed:<stage>[:<reason>]" or "skipped:<stage>[:<reason>]"
    q: str = ""
    page: int = 1
    per_page: int = PER_PAGE

    @classmethod
    def from_query(cls, query: dict[str, list[str]]) -> "Filters":
        """From a parsed query string; unknown node types and splits are errors (ValueError)."""
        def nodes(name):
            out = tuple(n for v in query.get(name, []) for n in v.split(",") if n)
            bad = [n for n in out if n not in NODE_BIT]
            if bad:
                raise ValueError(f"{name}: unknown node type(s) {bad}")
            return out

        def one(name):
            return (query.get(name) or [""])[-1].strip()

        split = one("split")
        if split and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        try:
            page = max(1, int(one("page") or 1))
            per_page = min(MAX_PER_PAGE, max(1, int(one("per_page") or PER_PAGE)))
        except ValueError:
            raise ValueError("page and per_page must be whole numbers") from None
        return cls(nodes("has"), nodes("missing"), one("item"), split, one("issue"), one("q"),
                   page, per_page)


class Catalog:
    """The shard set, its manifest and stats, behind one lock (SampleReader is not
    thread-safe: its open-file LRU is shared)."""

    def __init__(self, shards, manifest=None, tasks_config=None):
        self.shard_set = ShardSet(shards)
        self.manifest_source = None if manifest is None else storage.normalize(manifest)
        # Read-only: never write a header-walk index into the shard folder. Freshness is
        # shown on the overview instead of refusing to start on a stale manifest.
        self.reader = SampleReader(self.shard_set, manifest, write_index=False,
                                   manifest_check="ignore")
        self.manifest = self.reader.manifest
        self.tasks = tasks_config if isinstance(tasks_config, TaskConfig) else (
            TaskConfig.load(tasks_config) if tasks_config else TaskConfig.load())
        self.lock = threading.RLock()
        self._stats: Stats | None = None
        self._quality: dict | None = None
        self._variant_table: list[dict] | None = None
        self._items: list[tuple[str, int]] | None = None
        self._freshness: list[str] | None = None
        self._target_sizes: dict[str, tuple[int, int]] = {}

    # ---- samples ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.manifest)

    def index_of(self, key: str) -> int | None:
        try:
            return self.manifest.index_of(key)
        except KeyError:
            return None

    def nodes_of(self, i: int) -> list[str]:
        return names_of(int(self.manifest.masks[i]))

    def stored_nodes_of(self, i: int) -> list[str]:
        return [n for n in self.nodes_of(i) if NODE_TYPES[n].kind != DEGRADATION]

    def record(self, i: int) -> dict:
        m = self.manifest
        return {"key": m.key(i), "item": m.item(i), "description": m.description(i),
                "shard": int(m.shards[i]), "split": str(m.splits[i]),
                "quality": dict(zip(("compositeStructure", "objectConsistency", "imageQuality"),
                                    (int(q) for q in m.quality[i]))),
                "nodes": self.nodes_of(i),
                "variants": {n: m.variant_count(i, n) for n in VARIANT_NODES
                             if m.variant_count(i, n)}}

    def meta(self, key: str) -> dict:
        with self.lock:
            return json.loads(self.reader.member_bytes(key, "meta.json"))

    def target_size(self, key: str) -> tuple[int, int]:
        """(width, height) of the sample's target, from its JPEG header (no decode); kept
        per key (the source photo never changes under a running browser)."""
        size = self._target_sizes.get(key)
        if size is None:
            size = self._target_sizes[key] = self._read_target_size(key)
            if len(self._target_sizes) > TARGET_SIZES:
                self._target_sizes.pop(next(iter(self._target_sizes)))
        return size

    def _read_target_size(self, key: str) -> tuple[int, int]:
        with self.lock:
            data = self.reader.member_bytes(key, "target.jpg", "target")
        hw = jpeg_size(data)
        if hw is None:
            hw = decode_image(data).shape[:2]
        return int(hw[1]), int(hw[0])

    def items(self) -> list[tuple[str, int]]:
        """Distinct items (Subjects200K's subject names) by how many samples have them."""
        if self._items is None:
            vc = pc.value_counts(self.manifest.items)
            pairs = [(v["values"].as_py(), v["counts"].as_py()) for v in vc]
            self._items = sorted(pairs, key=lambda p: (-p[1], p[0] or ""))
        return self._items

    def select(self, f: Filters) -> np.ndarray:
        """Indices of the samples matching every filter, in manifest order."""
        m = self.manifest
        ok = np.ones(len(m), dtype=bool)
        if f.has:
            need = np.uint64(mask_of(f.has))
            ok &= (m.masks & need) == need
        if f.missing:
            ok &= (m.masks & np.uint64(mask_of(f.missing))) == 0
        if f.split:
            ok &= m.splits == f.split
        if f.item:
            ok &= pc.equal(m.items, f.item).to_numpy(zero_copy_only=False)
        if f.q:
            key_hit = self.index_of(f.q)
            if key_hit is not None:
                hit = np.zeros(len(m), dtype=bool)
                hit[key_hit] = True
            else:
                hit = (pc.match_substring(m.keys, f.q, ignore_case=True)
                       .to_numpy(zero_copy_only=False)
                       | pc.fill_null(pc.match_substring(m.items, f.q, ignore_case=True), False)
                       .to_numpy(zero_copy_only=False))
            ok &= hit
        if f.issue:
            ok &= self._issue_mask(f.issue)
        return np.flatnonzero(ok)

    def _issue_mask(self, issue: str) -> np.ndarray:
        status, _, rest = issue.partition(":")
        stage, _, reason = rest.partition(":")
        if status not in (FAILED, SKIPPED) or not stage:
            raise ValueError(f"issue must be 'failed:<stage>[:<reason>]' or "
                             f"'skipped:<stage>[:<reason>]', not {issue!r}")
        keys = [k for k, entries in self.stats().by_key.items()
                if any(s == status and st == stage and (not reason or r == reason)
                       for s, st, r in entries)]
        hit = np.zeros(len(self.manifest), dtype=bool)
        if keys:
            present = pc.is_in(self.manifest.keys, value_set=pa.array(keys, pa.string()))
            hit |= present.to_numpy(zero_copy_only=False)
        return hit

    def quality_summary(self) -> dict:
        """Score histograms and gate removals (graph200k.quality), computed once."""
        with self.lock:
            if self._quality is None:
                from graph200k.quality import summarize

                self._quality = summarize(self.manifest.quality_scores.to_pylist(),
                                          self.tasks.quality)
            return self._quality

    # ---- stats -----------------------------------------------------------------------
    def stats(self) -> Stats:
        with self.lock:
            if self._stats is None:
                self._stats = self._read_stats()
            return self._stats

    def _read_stats(self) -> Stats:
        ss = self.shard_set
        shards = ss.shards()
        stage_names = ss.stages if ss.layout == "stages" else []
        urls = [ss.source_part(n).stats_url for n in shards] + [
            ss.stage_part(st, n).stats_url for n in shards for st in stage_names]
        # Thousands of small files (shards x stages): one at a time that is minutes of
        # round trips on an object store, so they are fetched side by side.
        with ThreadPoolExecutor(STATS_THREADS) as pool:
            loaded = dict(zip(urls, pool.map(read_json, urls)))
        stages: dict[str, StageTotals] = {}
        by_key: dict[str, list] = {}
        ingest = {"filtered": Counter(), "failed": Counter(), "shards": 0}
        for n in shards:
            source = loaded[ss.source_part(n).stats_url] or {}
            if source:
                ingest["shards"] += 1
            for kind in ("filtered", "failed"):
                ingest[kind].update(e.get("reason", "?") for e in source.get(kind) or [])
            # stages layout: one stats file per sidecar; a published (plain) shard keeps
            # the stage entries in its own stats file under "stages".
            entries = ({st: loaded[ss.stage_part(st, n).stats_url] for st in stage_names}
                       if ss.layout == "stages" else dict(source.get("stages") or {}))
            for stage, s in entries.items():
                if s is None:
                    continue
                t = stages.setdefault(stage, StageTotals())
                t.shards += 1
                t.ok += int(s.get("ok", 0) or 0)
                t.skipped += int(s.get(SKIPPED, 0) or 0)
                t.failed += int(s.get(FAILED, 0) or 0)
                t.seconds += float(s.get("seconds", 0.0) or 0.0)
                for status, field_, counter in ((FAILED, "failed_keys", t.failed_reasons),
                                                (SKIPPED, "skipped_keys", t.skipped_reasons)):
                    for e in s.get(field_) or []:
                        reason = str(e.get("reason", ""))
                        counter[reason] += 1
                        by_key.setdefault(str(e.get("key")), []).append((status, stage, reason))
        return Stats(dict(sorted(stages.items())), by_key, ingest)

    def issues_of(self, key: str) -> list[tuple[str, str, str]]:
        return self.stats().by_key.get(key, [])

    # ---- overview --------------------------------------------------------------------
    def node_counts(self) -> dict[str, int]:
        return self.manifest.node_counts()

    def split_counts(self) -> dict[str, int]:
        return {s: int((self.manifest.splits == s).sum()) for s in SPLITS}

    def freshness(self) -> list[str]:
        """What changed in the shards since the manifest was built ([] = fresh)."""
        with self.lock:
            if self._freshness is None:
                m = self.manifest
                self._freshness = m.check(self.shard_set) if m.parts else [
                    "the manifest records no shard fingerprints (built from records or by an "
                    "older version): its freshness cannot be checked"]
            return self._freshness

    def manifest_age(self) -> float | None:
        """Seconds since the manifest file was written (None when scanned at start)."""
        if self.manifest_source is None or storage.is_url(self.manifest_source):
            return None
        try:
            return max(0.0, time.time() - os.path.getmtime(self.manifest_source))
        except OSError:
            return None

    def variant_table(self) -> list[dict]:
        """Every configured task variant: its family, whether it is held out as unseen, and
        how many samples of each split could fill it."""
        if self._variant_table is None:
            rows = []
            for fam, variants in self.tasks.families.items():
                for v in variants:
                    counts = {s: int(len(self.manifest.having(v.required_mask, s)))
                              for s in SPLITS}
                    rows.append({"family": fam, "variant": v.name, "nodes": list(v.nodes),
                                 "unseen": v.name in self.tasks.unseen, **counts})
            self._variant_table = rows
        return self._variant_table

    # ---- tasks -----------------------------------------------------------------------
    def find_variant(self, family: str, variant: str) -> Variant:
        for v in self.tasks.families.get(family, []):
            if v.name == variant:
                return v
        raise ValueError(f"no variant {variant!r} in family {family!r} (see the overview's "
                         "task table)")

    def draw_task(self, family: str, variant: str, seed: int, split: str = "train"):
        """One task of exactly this variant, drawn by the sampler with `seed`."""
        v = self.find_variant(family, variant)
        one = TaskConfig({family: [v]}, {family: 1.0}, self.tasks.row_counts,
                         self.tasks.row_probs, self.tasks.reverse_mask_prob, self.tasks.prompt,
                         frozenset({v.name}) if split == "unseen" else frozenset())
        return TaskSampler(self.manifest, one, seed=seed, split=split).sample()
