"""Periodic validation images on fixed held-out tasks, shared by train.fill and train.cogvideox.

API
---
``ValidationConfig``
    The recipes' ``validation:`` section (``every: 0`` = off).
``check_validation(cfg)``
    ConfigError for nonsense values.
``enabled(cfg, accelerator, say, sharded=False) -> bool``
    Whether this process validates: ``every > 0`` and the main process; under FSDP every
    rank (each holds a shard of the weights: the sampler's forward passes are collective).
``select_tasks(cfg, manifest, config, families=None, say=print) -> list[Task]``
    The fixed validation tasks, drawn once from ``cfg.seed`` (never from the training
    stream): the ``unseen`` variants of ``data.tasks_config`` when ``cfg.split == "unseen"``;
    when none are configured or none can be satisfied by the shards, tasks of the training
    families (said once through ``say``). Task ids are ``val-<seed>-<i>``.
``Validator(cfg, out_dir, tasks, build, solve, log=None, write=True)``
    ``build(task) -> item | None`` (None or ``FetchError``: the task is skipped) runs once,
    at construction; ``solve(item, seed) -> (image, cell)`` (uint8 H x W x 3 arrays) runs
    every ``cfg.every`` steps in ``__call__(step, model)``, which writes
    ``<out_dir>/validation/step_XXXXXXXX/<task_id>.png`` (the solved grid / condition|target)
    and ``<task_id>.cell.png`` (the generated cell), each to a temporary name then renamed,
    adds them to TensorBoard and returns metrics for the step's log row. ``write=False``
    (FSDP's other ranks): the same forward passes, nothing written.
    ``pending(step)``: validation is due at `step` and its files are not all there (a run
    resumed from a checkpoint taken at a validation step redoes that validation).

Validation leaves training exactly as it was: the model's train/eval mode is restored and
the python / numpy / torch (+ CUDA) RNG states are captured before and restored after, so a
run with validation draws the same noise, timesteps and tasks as one without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from train.common.checkpoint import capture_rng, restore_rng

SPLITS = ("unseen", "train")


@dataclass
class ValidationConfig:
    every: int = 0  # optimizer steps between validations; 0 = off
    num_tasks: int = 2
    steps: int = 20  # denoising steps
    seed: int = 1234  # draws the tasks and seeds each task's noise: the same images for the same weights
    split: str = "unseen"  # "unseen": the held-out variants of data.tasks_config; "train": training families
    res: int | None = None  # cell area res²; null = data.res
    guidance: float | None = None  # null = the inference CLI's default (fill 30; cogvideox 6 / 2)


def check_validation(cfg: ValidationConfig) -> None:
    from train.common.config import require

    require(isinstance(cfg.every, int) and cfg.every >= 0, "validation.every", cfg.every,
            "must be an integer >= 0 (0 = off)")
    require(isinstance(cfg.num_tasks, int) and cfg.num_tasks >= 1, "validation.num_tasks", cfg.num_tasks,
            "must be an integer >= 1")
    require(isinstance(cfg.steps, int) and cfg.steps >= 1, "validation.steps", cfg.steps, "must be an integer >= 1")
    require(cfg.split in SPLITS, "validation.split", cfg.split, f"must be one of {', '.join(SPLITS)}")


def enabled(cfg: ValidationConfig, acc, say: Callable[[str], None] = print, *, sharded: bool = False) -> bool:
    """Validation runs between optimizer steps on the main process (under DDP the others wait
    at the next collective). Under FSDP no rank holds the whole model: every rank runs the
    same sampling on the same tasks, each forward all-gathering the weights block by block,
    and the main process writes the images."""
    check_validation(cfg)
    return bool(cfg.every) and (acc.is_main_process or sharded)


def stream_tasks_setup(data, source=None, pairs: bool = False):
    """(manifest, task config) of the run: the training stream's own when `source` is a
    GridStream (no second manifest scan, which at 200K samples is a walk over every
    shard), else loaded from the recipe's `data:` section (pair-filtered for RealGeneral)."""
    from graph200k.reader import load_manifest
    from graph200k.stream import GridStream, pair_config
    from graph200k.tasks import TaskConfig

    if isinstance(source, GridStream):
        return source.manifest, source.config
    config = TaskConfig.load(data.tasks_config)
    return load_manifest(data.manifest, data.shards), pair_config(config) if pairs else config


def select_tasks(cfg: ValidationConfig, manifest, config, families=None, say: Callable[[str], None] = print,
                 attempts_per_task: int = 20):
    """Candidate validation tasks (num_tasks x attempts_per_task, in a fixed order).

    `config` is the graph200k TaskConfig the recipe trains on (pair_config'd for RealGeneral),
    `families` the recipe's data.families (the fallback draws from them).
    """
    from graph200k.tasks import TaskError, TaskSampler

    families = [f for f in families if f in config.families] if families else None
    sampler, split = None, cfg.split
    if split == "unseen":
        # Held-out variants are never trained on, so every family may hold one.
        try:
            sampler = TaskSampler(manifest, config, seed=cfg.seed, split="unseen")
        except TaskError as e:
            why = "none configured" if not config.unseen else f"none satisfiable here: {e}"
            say(f"validation: no unseen task ({why}); using tasks of the training families drawn with seed {cfg.seed}")
            split = "train"
    if sampler is None:
        sampler = TaskSampler(manifest, config, seed=cfg.seed, families=families, split="train")
    tasks = []
    for i in range(cfg.num_tasks * attempts_per_task):
        # One generator per index, as GridStream does: task i does not depend on the others.
        sampler.rng = random.Random(f"train.common.validation/{cfg.seed}/{split}/{i}")
        task = sampler.sample()
        task.task_id = f"val-{cfg.seed}-{i:02d}"
        tasks.append(task)
    return tasks


def write_png(path: Path, image: np.ndarray) -> Path:
    """Atomic: a reader (TensorBoard, a sync job) never sees half a PNG."""
    from PIL import Image

    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def isolated(model: torch.nn.Module | None = None):
    """no_grad + eval, and every global RNG put back as it was: training cannot tell it ran."""
    rng = capture_rng()
    was_training = model.training if model is not None else False
    try:
        if model is not None:
            model.eval()
        with torch.no_grad():
            yield
    finally:
        if model is not None:
            model.train(was_training)
        restore_rng(rng)


class Validator:
    def __init__(self, cfg: ValidationConfig, out_dir: str | Path, tasks, build: Callable, solve: Callable,
                 log=None, write: bool = True):
        from graph200k.reader import FetchError

        self.cfg, self.solve, self.log, self.write = cfg, solve, log, write
        self.dir = Path(out_dir) / "validation"
        self.items: list[tuple[object, object]] = []  # (task, item): built once, solved at every validation
        skipped = 0
        with isolated():  # reading and degrading images must not draw from the training RNG either
            for task in tasks:
                if len(self.items) == cfg.num_tasks:
                    break
                try:
                    item = build(task)
                except FetchError:
                    item = None
                if item is None:
                    skipped += 1
                    continue
                self.items.append((task, item))
        if not self.items:
            raise RuntimeError(f"validation: none of {len(tasks)} candidate tasks could be built from the shards; "
                               "set validation.every=0 or check data.shards")
        if len(self.items) < cfg.num_tasks:
            self._say(f"validation: only {len(self.items)} of {cfg.num_tasks} tasks could be built "
                      f"({skipped} skipped)")
        if write:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_text(self.dir / "tasks.jsonl",
                       "".join(json.dumps(t.to_json()) + "\n" for t, _ in self.items))

    @property
    def task_ids(self) -> list[str]:
        return [t.task_id for t, _ in self.items]

    def step_dir(self, step: int) -> Path:
        return self.dir / f"step_{step:08d}"

    def due(self, step: int) -> bool:
        return self.cfg.every > 0 and step > 0 and step % self.cfg.every == 0

    def pending(self, step: int) -> bool:
        folder = self.step_dir(step)
        return self.due(step) and not all((folder / f"{t}{suffix}").exists()
                                          for t in self.task_ids for suffix in (".png", ".cell.png"))

    def __call__(self, step: int, model: torch.nn.Module | None = None) -> dict:
        t0 = time.perf_counter()
        folder = self.step_dir(step)
        if self.write:
            folder.mkdir(parents=True, exist_ok=True)
        written = []
        with isolated(model):
            for i, (task, item) in enumerate(self.items):
                image, cell = self.solve(item, self.cfg.seed + i)
                if not self.write:
                    continue
                written += [write_png(folder / f"{task.task_id}.png", image),
                            write_png(folder / f"{task.task_id}.cell.png", cell)]
                if self.log is not None:
                    self.log.image(f"validation/{task.task_id}", image, step)
        return {"validation_images": len(written), "validation_dir": str(folder),
                "validation_s": time.perf_counter() - t0}

    def _say(self, msg: str) -> None:
        (self.log.write if self.log is not None else print)(msg)
