"""Resumable training checkpoints, shared by both recipes. Model-agnostic.

A checkpoint is a directory ``<out_dir>/checkpoints/step_{step:08d}/`` holding

- ``trainable.safetensors``  the trainable weights only (LoRA, new modules), full tensors;
- ``optimizer.pt``           optimizer state (``optimizer.rank{r}.pt`` per rank when the
                             optimizer is sharded (FSDP): each rank's local shards);
- ``lr_scheduler.pt``        LR scheduler state;
- ``rng.rank{r}.pt``         python / numpy / torch (+ CUDA) RNG states of every rank;
- ``data.rank{r}.json``      the data position of every rank (any JSON);
- ``state.json``             step, world size, extra metadata, the sha256 of
                             ``trainable.safetensors`` and the digest of the trainable weights
                             every rank held (equal on all ranks, or the save fails).

``.pt`` files hold only tensors and plain containers and are always read with
``torch.load(..., weights_only=True)``: nothing is unpickled. A checkpoint is written
under ``step_XXXXXXXX.tmp`` and renamed when complete, so a crash mid-write leaves no
directory that :meth:`CheckpointManager.latest` would pick; other folders under
``checkpoints/`` (``step_best``, ``old``) are ignored with a warning.

API
---
``CheckpointManager(out_dir, every=N, keep=K, rank=0, world_size=1, barrier=None, shard_optimizer=False, gather=None)``
    ``.should_save(step)``  — every N steps (or when a SIGTERM arrived);
    ``.save(step, trainable, optimizer, lr_scheduler=None, data_state=None, extra=None) -> Path``
        ``trainable``: ``{name: tensor}`` full tensors on every rank (only rank 0 writes them;
        every rank's digest is compared through ``gather``, a ranks' all-gather of objects);
    ``.latest() -> Path | None``   — newest complete checkpoint;
    ``.read(path) -> Resumed``     — reads and checks every file this rank needs; raises
        :class:`CheckpointError` naming the file;
    ``.resume(agree=None) -> Resumed | None`` — the newest checkpoint every rank can read
        (``agree(ok) -> bool``: True when all ranks are ok). An unreadable one (a truncated
        ``trainable.safetensors``, a checksum mismatch) is renamed ``step_XXXXXXXX.unreadable``
        with a warning and the previous one is used;
    ``Resumed.restore(optimizer, lr_scheduler)`` — optimizer, scheduler and this rank's RNG
        states; the caller loads ``Resumed.trainable`` into its model first;
    ``.load(path, optimizer=None, lr_scheduler=None) -> Resumed`` — ``read`` + ``restore``.

``capture_rng() -> dict`` / ``restore_rng(state)``
    The RNG states the above saves (usable on their own).

``SigtermHandler()``
    ``with SigtermHandler() as stop:`` — ``stop.requested`` turns True on SIGTERM (the
    preemption signal of SLURM / Kubernetes); the loop saves a checkpoint and exits
    cleanly instead of dying mid-step.

Rerunning the same command resumes from ``resume()``; with the RNG and data position
restored, the resumed run's losses equal an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

_PREFIX = "step_"
_TMP = ".tmp"
_UNREADABLE = ".unreadable"
_STEP = re.compile(rf"{_PREFIX}(\d+)")


def sort_safetensors_metadata(path: Path) -> None:
    """Rewrite a safetensors file's header with its `__metadata__` keys sorted, tensors untouched.

    safetensors writes that map in hash order (a Rust HashMap): diffusers' LoRA files carry
    two keys (`format`, `lora_adapter_metadata`), so the same LoRA came out as other bytes in
    another process, and a resumed run's file differed from an uninterrupted run's."""
    path = Path(path)
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", None)
    ordered = {"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}
    text = json.dumps({**ordered, **header}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads its header to 8 bytes with spaces
    tmp = path.with_name(path.name + _TMP)
    tmp.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n:])
    os.replace(tmp, path)


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


class CheckpointError(RuntimeError):
    pass


class CheckpointWarning(UserWarning):
    pass


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _local_optimizer_state(optimizer) -> dict:
    """optimizer.state_dict() with DTensor states (FSDP2) as their local shards: plain tensors
    that torch.load(weights_only=True) reads back."""
    from torch.distributed.tensor import DTensor

    state = optimizer.state_dict()
    state["state"] = {k: {n: (t.to_local() if isinstance(t, DTensor) else t) for n, t in v.items()}
                      for k, v in state["state"].items()}
    return state


def _load_optimizer_state(optimizer, state: dict) -> None:
    from torch.distributed.tensor import DTensor

    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not isinstance(p, DTensor) or p not in optimizer.state:
                continue
            for n, t in optimizer.state[p].items():
                if torch.is_tensor(t) and not isinstance(t, DTensor) and t.shape == p.to_local().shape and t.dim():
                    optimizer.state[p][n] = DTensor.from_local(t, p.device_mesh, p.placements, run_check=False,
                                                               shape=p.shape, stride=p.stride())


@dataclass
class Resumed:
    step: int
    trainable: dict[str, torch.Tensor]
    data_state: Any = None
    extra: dict = field(default_factory=dict)
    path: Path | None = None
    optimizer_state: dict | None = None
    scheduler_state: dict | None = None
    rng_state: dict | None = None

    def restore(self, optimizer=None, lr_scheduler=None) -> None:
        """Optimizer and scheduler state, then this rank's RNG (last: nothing may draw after it)."""
        if optimizer is not None and self.optimizer_state is not None:
            _load_optimizer_state(optimizer, self.optimizer_state)
        if lr_scheduler is not None and self.scheduler_state is not None:
            lr_scheduler.load_state_dict(self.scheduler_state)
        if self.rng_state is not None:
            restore_rng(self.rng_state)


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
        gather: Callable[[Any], list] | None = None,
    ):
        self.dir = Path(out_dir) / "checkpoints"
        self.every = every
        self.keep = keep
        self.rank = rank
        self.world_size = world_size
        self.barrier = barrier or (lambda: None)
        self.shard_optimizer = shard_optimizer
        self.gather = gather or (lambda obj: [obj])
        self._warned: set[str] = set()

    # -- discovery ---------------------------------------------------------------
    def _complete(self) -> list[Path]:
        if not self.dir.exists():
            return []
        out = []
        for p in self.dir.iterdir():
            if not p.is_dir() or p.name.endswith((_TMP, _UNREADABLE)):
                continue
            m = _STEP.fullmatch(p.name)
            if m is None:
                if p.name not in self._warned:
                    self._warned.add(p.name)
                    warnings.warn(f"{p}: not a checkpoint (expected {_PREFIX}NNNNNNNN); ignored", CheckpointWarning,
                                  stacklevel=3)
                continue
            out.append((int(m.group(1)), p))
        return [p for _, p in sorted(out)]

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
        from train.common.distributed import tensor_digest

        final = self.dir / f"{_PREFIX}{step:08d}"
        tmp = self.dir / f"{_PREFIX}{step:08d}{_TMP}"
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in trainable.items()}
        # Replicas that drifted apart (DDP) or a gather that went wrong (FSDP) are caught here,
        # before anything is written: the last checkpoint stays the last good one.
        digests = self.gather(tensor_digest(tensors))
        if len(set(digests)) > 1:
            raise CheckpointError(f"step {step}: the ranks hold different trainable weights (digests "
                                  f"{[d[:12] for d in digests]}); not saving. The last good checkpoint is "
                                  f"{self.latest()}")
        if self.rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)  # leftover of a crash mid-write
            tmp.mkdir(parents=True)
        self.barrier()
        if self.rank == 0:
            save_file(tensors, str(tmp / "trainable.safetensors"))
            if lr_scheduler is not None:
                torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
        if self.shard_optimizer:
            torch.save(_local_optimizer_state(optimizer), tmp / f"optimizer.rank{self.rank}.pt")
        elif self.rank == 0:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(capture_rng(), tmp / f"rng.rank{self.rank}.pt")
        # Every rank reads its own stream: each keeps its own data position.
        (tmp / f"data.rank{self.rank}.json").write_text(json.dumps(data_state))
        self.barrier()
        if self.rank == 0:
            state = {"step": step, "extra": extra or {}, "world_size": self.world_size,
                     "trainable_sha256": file_sha256(tmp / "trainable.safetensors"), "trainable_digests": digests}
            (tmp / "state.json").write_text(json.dumps(state, indent=1))
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
    def read(self, path: str | Path) -> Resumed:
        """Everything this rank needs from `path`, in memory and checked; nothing is applied yet."""
        path = Path(path)

        def fail(name: str, e: Exception | str):
            # One line: the first of the library's message says what broke (truncated, bad header, ...).
            why = e if isinstance(e, str) else f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
            raise CheckpointError(f"{path / name}: {why}") from (e if isinstance(e, Exception) else None)

        try:
            state = json.loads((path / "state.json").read_text())
            step = int(state["step"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            fail("state.json", e)
        if state.get("world_size", 1) != self.world_size:
            raise RuntimeError(
                f"{path}: saved with world_size={state['world_size']}, resuming with {self.world_size}; "
                "the RNG, data positions and optimizer shards are per rank and cannot be remapped — resume "
                "with the same number of processes")
        trainable_file = path / "trainable.safetensors"
        expected = state.get("trainable_sha256")
        try:
            if expected and file_sha256(trainable_file) != expected:
                fail("trainable.safetensors", "sha256 differs from state.json (the file was changed or damaged)")
            trainable = load_file(str(trainable_file))
        except CheckpointError:
            raise
        except Exception as e:  # SafetensorError (truncated header / data), OSError
            fail("trainable.safetensors", e)

        def pt(name: str, required: bool):
            f = path / name
            if not f.exists():
                if required:
                    fail(name, "missing")
                return None
            try:
                return torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e:
                fail(name, e)

        optimizer = pt(f"optimizer.rank{self.rank}.pt" if self.shard_optimizer else "optimizer.pt", True)
        scheduler = pt("lr_scheduler.pt", False)
        rng = pt(f"rng.rank{self.rank}.pt", False)
        data_file = path / f"data.rank{self.rank}.json"
        try:
            data_state = json.loads(data_file.read_text()) if data_file.exists() else None
        except (OSError, ValueError) as e:
            fail(data_file.name, e)
        return Resumed(step, trainable, data_state, state.get("extra", {}), path, optimizer, scheduler, rng)

    def resume(self, agree: Callable[[bool], bool] | None = None) -> Resumed | None:
        """The newest checkpoint every rank reads whole; unreadable ones are set aside with a warning."""
        agree = agree or (lambda ok: ok)
        candidates = self._complete()
        for i, path in enumerate(reversed(candidates)):
            try:
                resumed, error = self.read(path), None
            except CheckpointError as e:
                resumed, error = None, e
            if agree(error is None):
                return resumed
            older = candidates[-i - 2].name if i + 1 < len(candidates) else None
            why = str(error) if error else "another rank could not read its part"
            warnings.warn(f"checkpoint {path.name} is unreadable ({why}); "
                          + (f"resuming from {older} instead" if older else "no older checkpoint: starting afresh")
                          + f"; it is kept as {path.name}{_UNREADABLE}", CheckpointWarning, stacklevel=2)
            self.barrier()  # every rank is done with it before it moves
            if self.rank == 0:
                target = path.with_name(path.name + _UNREADABLE)
                if target.exists():
                    shutil.rmtree(target)
                os.replace(path, target)
            self.barrier()
        return None

    def load(self, path: str | Path, optimizer: torch.optim.Optimizer | None = None, lr_scheduler=None) -> Resumed:
        resumed = self.read(path)
        resumed.restore(optimizer, lr_scheduler)
        return resumed


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
