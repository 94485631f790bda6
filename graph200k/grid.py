"""Visual-cloze grids: rows of images, one masked cell, the prompt and 3D-RoPE row ids.

Contract shared by the composer (this module), the training stream and train.fill.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Grid:
    # rows[r]: uint8 H_r x W_r x 3, the cells of row r concatenated along width.
    rows: list[np.ndarray]
    # cell_sizes[r][c] = (h, w) of cell c in row r (all cells of a row share h).
    cell_sizes: list[list[tuple[int, int]]]
    # The one masked cell; the query row is the last row.
    mask_row: int
    mask_col: int
    prompt: str
    # Per-row uint8 {0, 255} pixel masks, same H x W as rows[r]; 255 only on the masked cell.
    masks: list[np.ndarray] = field(default_factory=list)
    task_id: str = ""
    family: str = ""
    variant: str = ""
    # cells[r][c] = slot name shown in that cell (e.g. "canny", "instantstyle_ref", "target").
    cells: list[list[str]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # sample key of each row

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    @property
    def num_cols(self) -> int:
        return len(self.cell_sizes[0])

    @property
    def row_ids(self) -> list[int]:
        """Axis 0 of FLUX's 3D RoPE: the row index of every row (axes 1-2 restart per row)."""
        return list(range(self.num_rows))


@dataclass
class TwoFramePair:
    """RealGeneral's training example: condition = frame 1, target = frame 2."""

    condition: np.ndarray  # uint8 H x W x 3
    target: np.ndarray  # uint8 H x W x 3, same size as condition
    prompt: str
    subject: str  # the subject keyword (Subjects200K `item`), found in the prompt by UCE
    task: str  # task name, e.g. "canny" (condition node type) or "subject_extraction"
    key: str = ""
