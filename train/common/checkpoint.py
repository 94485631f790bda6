"""Resumable training checkpoints, shared by every trainer (train.fill, train.cogvideox). Model-agnostic.

A checkpoint is a directory ``<out_dir>/checkpoints/step_{step:08d}/`` holding

- ``trainable.safetensors``  the trainable weights only (LoRA, new modules) — safetensors;
- ``optimizer.pt``           optimizer state (``optimizer.rank{r}.pt`` per rank when the
                             optimizer is sharded, e.g. FSDP);
- ``lr_scheduler.pt``        LR scheduler state;
- ``rng.rank{r}.pt``         python / numpy / torch (+ CUDA) RNG states of every rank;
- ``data.rank{r}.json``      the data position of every rank (any JSON);
- ``state.json``             step, world size, extra metadata.

``.pt`` files hold only tensors and plain containers and are always read with
``torch.load(..., weights_only=True)``: nothing is unpickled. A checkpoint is written
under ``step_XXXXXXXX.tmp`` and renamed when complete, so a crash mid-write leaves no
directory that :meth:`CheckpointManager.latest` would pick.

API
---
``CheckpointManager(out_dir, every=N, keep=K, rank=0, world_size=1, barrier=None, shard_optimizer=False)``
    ``.should_save(step)``  — every N steps (or when a SIGTERM arrived);
    ``.save(step, trainable, optimizer, lr_scheduler=None, data_state=None, extra=None) -> Path``
        ``trainable``: ``{name: tensor}`` (gathered full tensors; only rank 0 writes them);
    ``.latest() -> Path | None``   — newest complete checkpoint;
    ``.load(path, optimizer=None, lr_scheduler=None) -> Resumed`` — restores optimizer,
        scheduler and this rank's RNG states, returns ``Resumed(step, trainable, data_state, extra)``;
        the caller loads ``trainable`` into its model (``model.load_state_dict(..., strict=False)``
        or ``set_peft_model_state_dict``).

``capture_rng() -> dict`` / ``restore_rng(state)``
    The RNG states the above saves (usable on their own).

``SigtermHandler()``
    ``with SigtermHandler() as stop:`` — ``stop.requested`` turns True on SIGTERM (the
    preemption signal of SLURM / Kubernetes); the loop saves a checkpoint and exits
    cleanly instead of dying mid-step.

Rerunning the same command resumes from ``latest()``; with the RNG and data position
restored, the resumed run's losses equal an uninterrupted run's (tests/test_fill_resume.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

_PREFIX = "step_"
_TMP = ".tmp"


def capture_rng() -> dict:
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        # Python's state is (version, tuple of 625 ints, gauss_next): plain containers.
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Resumed:
    step: int
    trainable: dict[str, torch.Tensor]
    data_state: Any = None
    extra: dict = field(default_factory=dict)
    path: Path | None = None


class CheckpointManager:
    def __init__(
        self,
        out_dir: str | Path,
        every: int,
        keep: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        barrier: Callable[[], None] | None = None,
        shard_optimizer: bool = False,
    ):
        self.dir = Path(out_dir) / "checkpoints"
        self.every = every
        self.keep = keep
        self.rank = rank
        self.world_size = world_size
        self.barrier = barrier or (lambda: None)
        self.shard_optimizer = shard_optimizer

    # -- discovery ---------------------------------------------------------------
    def _complete(self) -> list[Path]:
        if not self.dir.exists():
            return []
        out = [p for p in self.dir.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and not p.name.endswith(_TMP)]
        return sorted(out, key=lambda p: int(p.name[len(_PREFIX):]))

    def latest(self) -> Path | None:
        done = self._complete()
        return done[-1] if done else None

    def should_save(self, step: int, stop_requested: bool = False) -> bool:
        return stop_requested or (self.every > 0 and step % self.every == 0)

    # -- save ----------------------------------------------------------------------
    def save(
        self,
        step: int,
        trainable: dict[str, torch.Tensor],
        optimizer: torch.optim.Optimizer,
        lr_scheduler=None,
        data_state: Any = None,
        extra: dict | None = None,
    ) -> Path:
        final = self.dir / f"{_PREFIX}{step:08d}"
        tmp = self.dir / f"{_PREFIX}{step:08d}{_TMP}"
        if self.rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)  # leftover of a crash mid-write
            tmp.mkdir(parents=True)
        self.barrier()
        if self.rank == 0:
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in trainable.items()}
            save_file(tensors, str(tmp / "trainable.safetensors"))
            if lr_scheduler is not None:
                torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
            state = {"step": step, "extra": extra or {}, "world_size": self.world_size}
            (tmp / "state.json").write_text(json.dumps(state, indent=1))
        if self.shard_optimizer:
            torch.save(optimizer.state_dict(), tmp / f"optimizer.rank{self.rank}.pt")
        elif self.rank == 0:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(capture_rng(), tmp / f"rng.rank{self.rank}.pt")
        # Every rank reads its own stream: each keeps its own data position.
        (tmp / f"data.rank{self.rank}.json").write_text(json.dumps(data_state))
        self.barrier()
        if self.rank == 0:
            if final.exists():  # the same step saved twice (e.g. SIGTERM on a save step)
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._prune()
        self.barrier()
        return final

    def _prune(self) -> None:
        if not self.keep:
            return
        for old in self._complete()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    # -- load ------------------------------------------------------------------------
    def load(self, path: str | Path, optimizer: torch.optim.Optimizer | None = None, lr_scheduler=None) -> Resumed:
        path = Path(path)
        state = json.loads((path / "state.json").read_text())
        if state.get("world_size", 1) != self.world_size and (self.shard_optimizer or optimizer is None):
            raise RuntimeError(
                f"{path}: saved with world_size={state['world_size']}, resuming with {self.world_size}; "
                "RNG/optimizer shards cannot be remapped — resume with the same number of processes"
            )
        trainable = load_file(str(path / "trainable.safetensors"))
        if optimizer is not None:
            name = f"optimizer.rank{self.rank}.pt" if self.shard_optimizer else "optimizer.pt"
            optimizer.load_state_dict(torch.load(path / name, map_location="cpu", weights_only=True))
        if lr_scheduler is not None and (path / "lr_scheduler.pt").exists():
            lr_scheduler.load_state_dict(torch.load(path / "lr_scheduler.pt", weights_only=True))
        rng_file = path / f"rng.rank{self.rank}.pt"
        if rng_file.exists():
            restore_rng(torch.load(rng_file, weights_only=True))
        data_file = path / f"data.rank{self.rank}.json"
        data_state = json.loads(data_file.read_text()) if data_file.exists() else None
        return Resumed(state["step"], trainable, data_state, state.get("extra", {}), path)


class SigtermHandler:
    """Turn SIGTERM into a flag the loop polls, so a preempted job saves before it exits."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        self.requested = True

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. some notebook runners): no handler
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False
