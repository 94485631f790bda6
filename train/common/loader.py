"""The recipes' data: a stream's items built in DataLoader workers, with exact resume and skip accounting.

``TaskLoader(source, to_tensors, cfg, seed, state=None)``
    ``source``: a ``graph200k.stream.GridStream`` (or, in tests, any iterable of items);
    ``to_tensors(item) -> dict[str, list[Tensor]]``: the item's images as uint8 C x H x W
    tensors, made in the worker (module-level function: workers may be spawned);
    ``cfg``: the recipe's ``data:`` section (``num_workers``, ``persistent_workers``,
    ``pin_memory``, ``prefetch_factor``, ``max_skipped_share``).
    ``.next() -> Loaded``  the next built item (``.item``, ``.tensors``); a task the stream
        could not build is counted in ``.skipped`` (by reason) and passed over;
    ``.state() -> dict``  ``{"consumed", "skipped", "source"}``: JSON for the checkpoint;
    ``.check_skipped(seen, skipped, shards)``  raises :class:`TooManySkipped` when more than
        ``max_skipped_share`` of the tasks seen so far (all ranks' sums) were skipped.

Why it resumes exactly with workers: the stream runs with ``skip_markers=True``, so each
position yields one item (the item or a ``SkippedTask``); the DataLoader hands out its
workers' items round-robin, in order; so the k-th item taken here is the stream's position
start + k, and the state after k items is ``next_index = start + k`` — the same batches for
0, 1 or 8 workers, prefetching or not (items prefetched but not taken are built again after
a resume, never skipped). The DataLoader gets its own seeded ``torch.Generator``: making its
iterator would otherwise draw from the global torch RNG that the checkpoint restores.

Workers ignore SIGTERM: a preempted job signals the whole process group, and the training
process must still get its items while it saves. ``persistent_workers`` keeps them for the
whole run (the trainers' stream is endless, so the DataLoader is iterated once either way).
``pin_memory`` puts the image tensors in page-locked memory so ``.to(device, non_blocking=True)``
overlaps the copy with compute; it is on only when CUDA is there.
"""

from __future__ import annotations

import itertools
import math
import signal
from collections import Counter
from dataclasses import dataclass, field

import torch


class TooManySkipped(RuntimeError):
    pass


@dataclass
class Loaded:
    item: object  # graph200k.grid.Grid, graph200k.pair.TwoFramePair or graph200k.stream.SkippedTask
    tensors: dict = field(default_factory=dict)  # name -> list of uint8 C x H x W tensors

    def pin_memory(self) -> "Loaded":
        # The DataLoader's pin thread calls this on every item it hands out.
        return Loaded(self.item, {k: [t.pin_memory() for t in v] for k, v in self.tensors.items()})


class _Collate:
    """Runs in the worker: the item plus its images as tensors (picklable for spawned workers)."""

    def __init__(self, to_tensors):
        self.to_tensors = to_tensors

    def __call__(self, item):
        from graph200k.stream import SkippedTask

        if isinstance(item, SkippedTask):
            return Loaded(item)
        return Loaded(item, self.to_tensors(item))


def _worker_init(_worker_id: int) -> None:
    # (No cv2.setNumThreads here: in a forked worker it tears down the thread pool inherited
    # from the parent and deadlocks on that pool's locks; measured, not guessed.)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def image_tensor(image) -> torch.Tensor:
    """uint8 H x W x 3 (numpy) -> uint8 3 x H x W tensor, contiguous (pinnable)."""
    import numpy as np

    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()


class TaskLoader:
    def __init__(self, source, to_tensors, cfg, seed: int = 0, state: dict | None = None):
        from graph200k.stream import GridStream, SkippedTask

        self._skipped_type = SkippedTask
        self.source, self.cfg = source, cfg
        self.collate = _Collate(to_tensors)
        state = state or {}
        self.consumed = int(state.get("consumed", 0))  # items taken (built or skipped), whole run
        self.skipped: Counter = Counter(state.get("skipped", {}))
        self.stream = source if isinstance(source, GridStream) else None
        if self.stream is not None:
            self.stream.skip_markers = True
            if state.get("source") is not None:
                self.stream.load_state_dict(state["source"])
            self._epoch, self._start = self.stream.epoch, self.stream.start
            self._taken = 0
            workers = cfg.num_workers
            loader = torch.utils.data.DataLoader(
                self.stream, batch_size=None, collate_fn=self.collate, num_workers=workers,
                pin_memory=bool(cfg.pin_memory and torch.cuda.is_available()),
                persistent_workers=bool(cfg.persistent_workers and workers > 0),
                prefetch_factor=cfg.prefetch_factor if workers > 0 else None,
                worker_init_fn=_worker_init if workers > 0 else None,
                generator=torch.Generator().manual_seed(seed),
            )
            self._it = iter(loader)
        else:
            # A plain iterable has no position of its own: fast-forward past what was consumed.
            self._it = (self.collate(item) for item in itertools.islice(iter(source), self.consumed, None))

    def _take(self) -> Loaded:
        try:
            loaded = next(self._it)
        except StopIteration:
            raise RuntimeError(f"the data source ran out after {self.consumed} items") from None
        self.consumed += 1
        if self.stream is not None:
            self._taken += 1
        return loaded

    def next(self) -> Loaded:
        while True:
            loaded = self._take()
            if isinstance(loaded.item, self._skipped_type):
                self.skipped[loaded.item.reason] += 1
                continue
            return loaded

    def state(self) -> dict:
        source = None
        if self.stream is not None:
            source = {"epoch": self._epoch, "next_index": self._start + self._taken}
        return {"consumed": self.consumed, "skipped": dict(self.skipped), "source": source}

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def check_skipped(self, seen: float, skipped: float, shards) -> None:
        """`seen` / `skipped`: tasks over all ranks so far. A share of 0.01 tolerates one skip per
        100 tasks: the check starts once that many were seen, so one early skip does not fail a run."""
        share = self.cfg.max_skipped_share
        if skipped == 0 or share >= 1:
            return
        if seen >= (math.ceil(1 / share) if share > 0 else 1) and skipped > share * seen:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()))
            raise TooManySkipped(
                f"{int(skipped)} of {int(seen)} tasks could not be built ({skipped / seen:.1%} > "
                f"data.max_skipped_share={share}; this rank: {reasons}) from {shards}: shards are damaged, "
                "missing or newer than the manifest. Check them (python -m graph200k.manifest --shards "
                f"{shards} rebuilds the manifest) or raise data.max_skipped_share.")
