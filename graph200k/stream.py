"""The training stream: sampled tasks -> node images read by key -> composed grids.

    stream = GridStream("shards/graph200k", "shards/graph200k/manifest.parquet", res=384)
    loader = DataLoader(stream, batch_size=None, num_workers=8)   # or collate_fn=collate_list
    for epoch in range(n):
        stream.set_epoch(epoch)
        for grid in loader:          # graph200k.grid.Grid (mode="pair": TwoFramePair)
            stream.observe(grid)     # keeps stream.skipped right when workers build the grids

Task i of epoch e is sampled from a generator seeded by (seed, e, i). DDP rank k of
world_size owns the tasks i = k + p * world_size, p = 0, 1, 2, ... (its *positions*); worker
w of n builds the positions p = start + w + j * n. Ranks and workers are therefore disjoint,
what a rank sees does not depend on its worker count, and `set_epoch` gives the next epoch
its own tasks. Workers are (re)started per epoch, so leave `persistent_workers` False: a
persistent worker keeps the epoch it started with.

Resuming: `state_dict()` is {"epoch", "next_index"} (the rank's next position) and
`load_state_dict` makes the next iteration start there: task p is sampled from its own
seed, so the skipped tasks are neither sampled nor read. Iterated in the process that
checkpoints (the trainers), the state is exact: it advances as each item is yielded,
counting skipped tasks. With DataLoader workers, call `observe(item)` on every item consumed;
the state is then the position after the furthest item seen. The DataLoader takes items
round-robin from the workers, so while no task is skipped the k-th item is position
start + k and the state is exact; a skipped task (rare, counted in `skipped`) puts the
workers out of step, and a resume may then leave out up to n - 1 tasks built but not consumed.

A task whose images cannot be read (missing member, undecodable image, stale index,
unreadable shard) is skipped and counted by reason in `stream.skipped`; only whole grids
are yielded, and too many consecutive skips raise instead of spinning forever.

`skip_markers=True` (what the trainers use, through train.common.loader) makes the stream
yield a `SkippedTask` in place of each task it could not build: every position then yields
exactly one item, so behind a DataLoader (which takes items from its workers round-robin)
the k-th item consumed is position start + k whatever the worker count and however many
tasks are skipped, and `{"epoch", "next_index": start + k}` resumes exactly. The consumer
counts the markers (the trainers log them and fail when too many are skipped).

A shard folder that does not exist or holds no `NNNNNN.tar`, a manifest file that is
missing, or a manifest without samples is an error naming the path and the command that
builds it, raised when the stream is made.

torch is imported in this module only: the rest of `graph200k` holds no torch models.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass

from torch.utils.data import IterableDataset, get_worker_info

from graph200k.grid import TRAIN
from graph200k.reader import FetchError, SampleReader, load_manifest, pair_task_name
from graph200k.tasks import DEFAULT_TASKS_CONFIG, TaskConfig, TaskError, TaskSampler

GRID, PAIR = "grid", "pair"


@dataclass
class SkippedTask:
    """Yielded (with `skip_markers=True`) where a task could not be built: keeps positions in step."""

    task_id: str
    position: int
    reason: str  # a graph200k.reader.REASONS entry
    error: str
    worker: int = 0


def check_shard_folder(shards, manifest=None) -> None:
    """Fail early, naming the folder, instead of sampling from an empty manifest."""
    from graph200k import storage
    from graph200k.dataset import ShardSet

    shard_set = shards if isinstance(shards, ShardSet) else None
    root = shard_set.root if shard_set else storage.normalize(shards)
    if shard_set is None and not storage.isdir(root):
        raise FileNotFoundError(f"shard folder {root} does not exist: point data.shards at "
                                "annotated Graph200K shards (python -m pipelines.annotate --out DIR)")
    if isinstance(manifest, (str, os.PathLike)) and not storage.exists(manifest):
        raise FileNotFoundError(f"manifest {manifest} does not exist: build it with python -m "
                                f"graph200k.manifest --shards {root}, or leave data.manifest null "
                                "to scan the shards")
    shard_set = shard_set or ShardSet(root)
    if not shard_set.shards():
        raise FileNotFoundError(f"shard folder {shard_set.source} holds no shards (NNNNNN.tar): "
                                f"annotate some with python -m pipelines.annotate --out {root}")


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
                      reverse_mask_prob=0.0, prompt=config.prompt, unseen=config.unseen,
                      quality=config.quality)


class GridStream(IterableDataset):
    def __init__(self, shards, manifest=None, res: int = 384, seed: int = 0, families=None,
                 tasks_config=None, mode: str = GRID, max_tasks: int | None = None,
                 index_dir=None, max_open: int = 16, rank: int = 0, world_size: int = 1,
                 max_consecutive_skips: int = 100, skip_markers: bool = False,
                 manifest_check: str = "error"):
        if mode not in (GRID, PAIR):
            raise ValueError(f"mode must be {GRID!r} or {PAIR!r}, not {mode!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.shards = shards
        check_shard_folder(shards, manifest)
        # A stale manifest would send tasks to shards that changed or are gone: refused
        # (or warned about) here, once, not discovered as skips during training.
        self.manifest = load_manifest(manifest, shards, manifest_check)
        if len(self.manifest) == 0:
            raise ValueError(f"the manifest of {shards} lists no samples "
                             f"({manifest if manifest is not None else 'scanned from the shards'}): "
                             "annotate the shards and rebuild it (python -m graph200k.manifest)")
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
        self.skip_markers = skip_markers
        self.epoch = 0
        self.start = 0  # the rank's first position of this epoch's iteration (resume)
        self._next = 0  # the rank's next position: see state_dict
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
        """A new epoch starts at position 0; the epoch a resumed state is in keeps its start."""
        if int(epoch) != self.epoch:
            self.epoch, self.start, self._next = int(epoch), 0, 0

    def state_dict(self) -> dict:
        """Where this rank's stream is: resume with `load_state_dict` (see module doc)."""
        return {"epoch": self.epoch, "next_index": self._next}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.start = self._next = int(state["next_index"])

    def task_index(self, position: int) -> int:
        """The epoch's task index of this rank's `position`."""
        return self.rank + position * self.world_size

    @property
    def skipped(self) -> Counter:
        """Skipped tasks by reason: this process's own, plus what `observe` saw of workers."""
        total = Counter(self._local_skipped)
        for counts in self._observed.values():
            total.update(counts)
        return total

    def observe(self, item) -> None:
        """Record an item consumed from a DataLoader: its worker's skip counts (cumulative)
        and its position (for `state_dict`)."""
        if item.skipped or item.worker in self._observed:
            self._observed[item.worker] = Counter(item.skipped)
        if item.position >= 0:
            self._next = max(self._next, item.position + 1)

    # ---- direct access ---------------------------------------------------------------
    @property
    def reader(self) -> SampleReader:
        # One reader per process: file handles must not cross a fork into workers.
        if self._reader is None or self._reader_pid != os.getpid():
            self._reader = SampleReader(self.shards, self.manifest, self.index_dir,
                                        self.max_open, manifest_check="ignore")
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
        position = self.start + worker
        consecutive = 0
        while self.max_tasks is None or self.task_index(position) < self.max_tasks:
            task = self.task(self.task_index(position))
            done, position = position, position + workers
            try:
                item = self.build(task)
            except FetchError as e:
                self._local_skipped[e.reason] += 1
                if workers == 1:
                    self._next = done + 1
                consecutive += 1
                if consecutive >= self.max_consecutive_skips:
                    raise RuntimeError(
                        f"GridStream: {consecutive} tasks in a row could not be built "
                        f"(skipped so far: {dict(self._local_skipped)}); last error: {e}"
                    ) from e
                if self.skip_markers:
                    yield SkippedTask(task.task_id, done, e.reason, str(e), worker)
                continue
            consecutive = 0
            item.worker, item.position = worker, done
            item.task_id = item.task_id or task.task_id  # pairs carry it too (logs, NaN reports)
            item.skipped = dict(self._local_skipped)
            if workers == 1:  # set before the yield: a checkpoint taken now resumes after it
                self._next = done + 1
            yield item
