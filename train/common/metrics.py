"""Training metrics: tqdm progress bar, TensorBoard, JSONL, optional wandb. Model-agnostic.

API
---
``MetricLogger(log_dir, total_steps, initial_step=0, enabled=True, tensorboard=True, wandb_project=None, config=None)``
    ``enabled`` is False on non-main ranks (then every call is a no-op).
    ``.log(step, loss=..., lr=..., grad_norm=..., samples=..., tokens=..., step_time=..., **extra) -> dict``
        ``samples`` / ``tokens``: counts processed in this optimizer step (all ranks);
        derives ``samples_per_s``, ``tokens_per_s`` and ``peak_mem_gb`` (CUDA max allocated,
        or the process's peak RSS on CPU), writes them to TensorBoard, to
        ``<log_dir>/metrics.jsonl`` (one JSON object per step: what tests and plots read) and
        to wandb when configured, and updates the progress bar. Returns the row.
    ``.image(tag, image, step)``: a uint8 H x W x 3 array to TensorBoard (and wandb).
    ``.write(msg)`` prints without breaking the bar; ``.close()``.
    A run resumed at ``initial_step`` first drops the rows after it from ``metrics.jsonl``
    (they belong to steps that are trained again) and tells TensorBoard to purge them, so
    every step is logged once.

``JsonlLog(path, initial_step=0)``
    An append-only ``{"step": ...}`` JSONL file with the same resume rule (``.write(row)``,
    ``.close()``); the recipes' per-rank ``tasks.rank{r}.jsonl`` (the task ids each rank
    trained at each step) uses it too.

``peak_memory_gb() -> float``
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm


def peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the rows with step <= last_step (and drop a line cut short by a crash); atomic."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= last_step:
            kept.append(line + "\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


class JsonlLog:
    def __init__(self, path: str | Path, initial_step: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_jsonl(self.path, initial_step)
        self.file = open(self.path, "a")

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class MetricLogger:
    def __init__(
        self,
        log_dir: str | Path,
        total_steps: int,
        initial_step: int = 0,
        enabled: bool = True,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        config: dict | None = None,
    ):
        self.enabled = enabled
        self.tb = self.wandb = self.bar = self.jsonl = None
        if not enabled:
            return
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = JsonlLog(self.dir / "metrics.jsonl", initial_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides the events a previous attempt wrote after the checkpoint.
            self.tb = SummaryWriter(str(self.dir / "tensorboard"),
                                    purge_step=initial_step + 1 if initial_step else None)
        if wandb_project:
            try:
                import wandb
            except ImportError as e:
                raise ImportError("wandb logging requested (wandb_project set): pip install wandb") from e
            self.wandb = wandb.init(project=wandb_project, config=config, dir=str(self.dir), resume="allow")
        self.bar = tqdm(total=total_steps, initial=initial_step, dynamic_ncols=True, desc="train")

    def log(self, step: int, *, loss: float, lr: float, grad_norm: float | None = None, samples: int = 0,
            tokens: int = 0, step_time: float = 0.0, **extra) -> dict:
        if not self.enabled:
            return {}
        row = {"step": step, "loss": float(loss), "lr": float(lr)}
        if grad_norm is not None:
            row["grad_norm"] = float(grad_norm)
        if step_time > 0:
            row["step_time_s"] = step_time
            row["samples_per_s"] = samples / step_time
            row["tokens_per_s"] = tokens / step_time
        row["peak_mem_gb"] = peak_memory_gb()
        row.update({k: (float(v) if isinstance(v, (int, float)) else v) for k, v in extra.items()})
        self.jsonl.write(row)
        numeric = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        if self.tb is not None:
            for k, v in numeric.items():
                self.tb.add_scalar(f"train/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log(numeric, step=step)
        self.bar.n = step
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", refresh=False)
        self.bar.refresh()
        return row

    def image(self, tag: str, image, step: int) -> None:
        if not self.enabled:
            return
        if self.tb is not None:
            self.tb.add_image(tag, image, step, dataformats="HWC")
        if self.wandb is not None:
            import wandb

            self.wandb.log({tag: wandb.Image(image)}, step=step)

    def write(self, msg: str) -> None:
        if self.enabled:
            tqdm.write(msg)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.bar.close()
        self.jsonl.close()
