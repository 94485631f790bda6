"""Stop training on a non-finite loss, naming the step and the batch's tasks. Model-agnostic.

API
---
``check_finite(loss, step, task_ids, last_checkpoint=None)``
    Raises :class:`NonFiniteLossError` if ``loss`` (a tensor or float) is NaN/inf. The
    message carries the step, the task ids of the batch (to reproduce it) and the last
    good checkpoint. Call it *before* ``optimizer.step()`` so the weights are never
    updated with NaNs and no checkpoint after the last good one is written.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


class NonFiniteLossError(FloatingPointError):
    def __init__(self, step: int, loss: float, task_ids: list[str], last_checkpoint: Path | None):
        self.step, self.loss, self.task_ids, self.last_checkpoint = step, loss, list(task_ids), last_checkpoint
        keep = f"; last good checkpoint kept: {last_checkpoint}" if last_checkpoint else "; no checkpoint written yet"
        super().__init__(
            f"non-finite loss {loss} at step {step}, batch task ids {self.task_ids}{keep}. "
            "Rerun those tasks alone (or lower the LR) to reproduce."
        )


def check_finite(loss, step: int, task_ids, last_checkpoint: Path | None = None) -> None:
    value = float(loss.detach().float().item()) if isinstance(loss, torch.Tensor) else float(loss)
    if not math.isfinite(value):
        raise NonFiniteLossError(step, value, list(task_ids), last_checkpoint)
