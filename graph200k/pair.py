"""RealGeneral's training example: two frames, a condition and a target (arXiv 2503.10406).

The stream (`graph200k.stream.GridStream(mode="pair")`) and the reader build these; the
RealGeneral recipe (`train.realgeneral`) consumes them. numpy only, like the rest of graph200k.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TwoFramePair:
    """RealGeneral's training example: condition = frame 1, target = frame 2."""

    condition: np.ndarray  # uint8 H x W x 3
    target: np.ndarray  # uint8 H x W x 3, same size as condition
    prompt: str
    subject: str  # the subject keyword (Subjects200K `item`), found in the prompt by UCE
    task: str  # task name, e.g. "canny" (condition node type) or "subject_extraction"
    key: str = ""
    task_id: str = ""  # "<seed>-<epoch>-<index>", set by graph200k.stream as on Grid
    # Set by graph200k.stream, as on Grid.
    worker: int = 0
    skipped: dict = field(default_factory=dict)
    position: int = -1
