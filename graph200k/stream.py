"""The training stream: sampled tasks -> node images read by key -> composed grids.

    stream = GridStream("shards/graph200k", "shards/graph200k/manifest.parquet", res=384)
    loader = DataLoader(stream, batch_size=None, num_workers=8)   # or collate_fn=collate_list
    for epoch in range(n):
        stream.set_epoch(epoch)
        for grid in loader:          # graph200k.grid.Grid (mode="pair": TwoFramePair)
            stream.observe(grid)     # keeps stream.skipped right when workers build the grids

Task i of epoch e is sampled from a generator seeded by (seed, e, i); worker w of n (of
DDP rank k of world_size) builds the tasks i = (k * n + w) + j * world_size * n. The task
streams of workers are therefore disjoint, an epoch is the same whatever the worker count,
and `set_epoch` gives the next epoch its own tasks. Workers are (re)started per epoch, so
leave `persistent_workers` False: a persistent worker keeps the epoch it started with.

A task whose images cannot be read (missing member, undecodable image, stale index,
unreadable shard) is skipped and counted by reason in `stream.skipped`; only whole grids
are yielded, and too many consecutive skips raise instead of spinning forever.

torch is imported in this module only (DESIGN.md: `graph200k` holds no torch models).
"""

from __future__ import annotations

import os
import random
from collections import Counter

from torch.utils.data import IterableDataset, get_worker_info

from graph200k.grid import TRAIN
from graph200k.reader import FetchError, SampleReader, load_manifest, pair_task_name
from graph200k.tasks import DEFAULT_TASKS_CONFIG, TaskConfig, TaskError, TaskSampler

GRID, PAIR = "grid", "pair"


def collate_list(items):
    """Grids differ in size from task to task: batch them as a plain list."""
    return list(items)


def pair_config(config: TaskConfig) -> TaskConfig:
    """RealGeneral's tasks: the 2-image variants only, one row, the target as frame 2."""
    families, weights = {}, {}
    for fam, variants in config.families.items():
        pairs = [v for v in variants if len(v.slots) == 2]
        if pairs:
            families[fam], weights[fam] = pairs, config.weights[fam]
    return TaskConfig(families, weights, row_counts=(1,), row_probs=(1.0,),
                      reverse_mask_prob=0.0, prompt=config.prompt, unseen=config.unseen)


class GridStream(IterableDataset):
    def __init__(self, shards, manifest=None, res: int = 384, seed: int = 0, families=None,
                 tasks_config=None, mode: str = GRID, max_tasks: int | None = None,
                 index_dir=None, max_open: int = 16, rank: int = 0, world_size: int = 1,
                 max_consecutive_skips: int = 100):
        if mode not in (GRID, PAIR):
            raise ValueError(f"mode must be {GRID!r} or {PAIR!r}, not {mode!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.shards = shards
        self.manifest = load_manifest(manifest, shards)
        self.res, self.seed, self.mode = res, int(seed), mode
        self.families = list(families) if families else None
        config = (tasks_config if isinstance(tasks_config, TaskConfig)
                  else TaskConfig.load(tasks_config or DEFAULT_TASKS_CONFIG))
        self.config = pair_config(config) if mode == PAIR else config
        if self.families and mode == PAIR:
            no_pairs = [f for f in self.families
                        if f in config.families and f not in self.config.families]
            if no_pairs:
                raise TaskError(f"famil{'y' if len(no_pairs) == 1 else 'ies'} {no_pairs} "
                                "have no 2-image variant: pair mode (condition -> target) "
                                f"can use {sorted(self.config.families)}")
        self.max_tasks = max_tasks
        self.index_dir, self.max_open = index_dir, max_open
        self.rank, self.world_size = rank, world_size
        self.max_consecutive_skips = max_consecutive_skips
        self.epoch = 0
        # Built here so a bad config / family fails in the main process, not in a worker.
        self._sampler = TaskSampler(self.manifest, self.config, seed=self.seed,
                                    families=self.families)
        self._pairs_per_family = {fam: len(vs) for fam, vs in self.config.families.items()}
        self._reader: SampleReader | None = None
        self._reader_pid = None
        self._local_skipped: Counter = Counter()
        self._observed: dict[int, Counter] = {}

    # ---- epochs and accounting -------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def skipped(self) -> Counter:
        """Skipped tasks by reason: this process's own, plus what `observe` saw of workers."""
        total = Counter(self._local_skipped)
        for counts in self._observed.values():
            total.update(counts)
        return total

    def observe(self, item) -> None:
        """Record the skip counts a worker attached to an item it yielded (cumulative)."""
        if item.skipped or item.worker in self._observed:
            self._observed[item.worker] = Counter(item.skipped)

    # ---- direct access ---------------------------------------------------------------
    @property
    def reader(self) -> SampleReader:
        # One reader per process: file handles must not cross a fork into workers.
        if self._reader is None or self._reader_pid != os.getpid():
            self._reader = SampleReader(self.shards, self.manifest, self.index_dir,
                                        self.max_open)
            self._reader_pid = os.getpid()
        return self._reader

    def fetch(self, key: str, slot: str, seed: int = 0):
        """One node image by key; raises FetchError naming shard, key and node."""
        return self.reader.fetch(key, slot, seed)

    def task(self, i: int):
        """Task i of the current epoch, exactly as the stream samples it."""
        # TaskSampler draws everything from its `rng`: one generator per task index makes
        # a task independent of which worker (and how many workers) sample it. A str seed
        # is hashed with SHA-512, so it is the same in every process (no PYTHONHASHSEED).
        self._sampler.rng = random.Random(f"graph200k.stream/{self.seed}/{self.epoch}/{i}")
        task = self._sampler.sample()
        task.task_id = f"{self.seed}-{self.epoch}-{i}"
        return task

    def build(self, task):
        if self.mode == PAIR:
            pairs = self._pairs_per_family[task.family]
            return self.reader.pair(task, self.res,
                                    pair_task_name(task.family, task.nodes, pairs))
        return self.reader.grid(task, self.res, TRAIN)

    # ---- iteration -------------------------------------------------------------------
    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        stride = self.world_size * workers
        i = self.rank * workers + worker
        consecutive = 0
        while self.max_tasks is None or i < self.max_tasks:
            task = self.task(i)
            i += stride
            try:
                item = self.build(task)
            except FetchError as e:
                self._local_skipped[e.reason] += 1
                consecutive += 1
                if consecutive >= self.max_consecutive_skips:
                    raise RuntimeError(
                        f"GridStream: {consecutive} tasks in a row could not be built "
                        f"(skipped so far: {dict(self._local_skipped)}); last error: {e}"
                    ) from e
                continue
            consecutive = 0
            item.worker = worker
            item.skipped = dict(self._local_skipped)
            yield item
