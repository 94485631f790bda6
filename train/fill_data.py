"""Where train.fill's `Grid`s come from: the Graph200K stream, or small grids of real photos.

- ``grid_source(data_cfg, rank)`` -> an iterable of ``graph200k.grid.Grid``:
  ``source: stream``  -> ``graph200k.stream.GridStream`` (imported lazily: the stream lands
  separately; the recipe only needs "an iterable of Grid");
  ``source: photos`` -> ``PhotoGrids``: scikit-image's real photos (astronaut, chelsea,
  coffee, ...) with simple online conditions (gray, blur, edges, flip) → target. For the
  tiny recipe, tests and benchmarks: no shards needed.
- ``compose_grid(cells, prompt, mask_row, mask_col)``: cells (uint8 arrays, one row per
  list, all cells of a row the same size) -> ``Grid`` with its per-row pixel masks.
"""

from __future__ import annotations

import random
from typing import Iterator

import numpy as np
from PIL import Image, ImageFilter

from graph200k.grid import Grid


def compose_grid(cells: list[list[np.ndarray]], prompt: str, mask_row: int, mask_col: int, task_id: str = "",
                 family: str = "", variant: str = "", names: list[list[str]] | None = None) -> Grid:
    rows, sizes, masks = [], [], []
    for r, row_cells in enumerate(cells):
        h = row_cells[0].shape[0]
        if any(c.shape[0] != h for c in row_cells):
            raise ValueError(f"row {r}: all cells of a row must share a height, got {[c.shape[:2] for c in row_cells]}")
        rows.append(np.concatenate(row_cells, axis=1))
        sizes.append([tuple(c.shape[:2]) for c in row_cells])
        m = np.zeros(rows[-1].shape[:2], np.uint8)
        if r == mask_row:
            x0 = sum(c.shape[1] for c in row_cells[:mask_col])
            m[:, x0 : x0 + row_cells[mask_col].shape[1]] = 255
        masks.append(m)
    return Grid(rows=rows, cell_sizes=sizes, mask_row=mask_row, mask_col=mask_col, prompt=prompt, masks=masks,
                task_id=task_id, family=family, variant=variant, cells=names or [])


def resize_cell(img: np.ndarray | Image.Image, height: int, width: int) -> np.ndarray:
    img = img if isinstance(img, Image.Image) else Image.fromarray(img)
    return np.asarray(img.convert("RGB").resize((width, height), Image.BICUBIC))


_CONDITIONS = {
    "gray": lambda im: im.convert("L").convert("RGB"),
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(radius=max(1, im.width // 16))),
    "edges": lambda im: im.convert("L").filter(ImageFilter.FIND_EDGES).convert("RGB"),
    "flip": lambda im: im.transpose(Image.FLIP_LEFT_RIGHT),
}


def _photos() -> list[np.ndarray]:
    try:
        from skimage import data
    except ImportError as e:
        raise ImportError("data.source=photos needs scikit-image: pip install -e '.[dev]'") from e
    names = ["astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry"]
    out = []
    for n in names:
        img = getattr(data, n)()
        if img.ndim == 3 and img.shape[2] == 3:
            out.append(img)
    return out


class PhotoGrids:
    """Endless seeded visual-cloze grids of real photos: rows = samples, columns = condition(s) → target.

    ``rows``: choices for the number of rows (in-context rows + query);
    ``distinct``: > 0 repeats the first `distinct` grids forever (overfitting a batch).
    """

    def __init__(self, res: int = 32, seed: int = 0, rows: tuple[int, ...] = (1, 2), distinct: int = 0,
                 conditions: tuple[str, ...] = ("gray", "blur", "edges", "flip")):
        self.res, self.seed, self.rows, self.distinct = res, seed, tuple(rows), distinct
        self.conditions = tuple(conditions)
        self.photos = _photos()

    def make(self, index: int) -> Grid:
        rng = random.Random(self.seed * 1_000_003 + index)
        cond = rng.choice(self.conditions)
        num_rows = rng.choice(self.rows)
        picks = rng.sample(range(len(self.photos)), num_rows)
        cells = []
        for p in picks:
            target = Image.fromarray(self.photos[p]).resize((self.res, self.res), Image.BICUBIC)
            cells.append([np.asarray(_CONDITIONS[cond](target)), np.asarray(target)])
        prompt = (f"[IMAGE1] a {cond} version of a photo, [IMAGE2] the clean photo. "
                  f"{num_rows} rows; fill in the last image of the last row.")
        return compose_grid(cells, prompt, num_rows - 1, 1, task_id=f"photos/{cond}/{index}",
                            family="photos", variant=cond, names=[[cond, "target"]] * num_rows)

    def __iter__(self) -> Iterator[Grid]:
        i = 0
        while True:
            yield self.make(i % self.distinct if self.distinct else i)
            i += 1


def grid_source(data_cfg, rank: int = 0, world_size: int = 1):
    """The recipe's only data entry point: an iterable of Grid for this process."""
    if data_cfg.source == "photos":
        return PhotoGrids(res=data_cfg.res, seed=data_cfg.seed + rank, rows=tuple(data_cfg.photo_rows),
                          distinct=data_cfg.distinct)
    if data_cfg.source == "stream":
        try:
            from graph200k.stream import GridStream
        except ImportError as e:
            raise ImportError("data.source=stream needs graph200k.stream.GridStream (not in this checkout yet); "
                              "use data.source=photos for a smoke run") from e
        # The stream splits its task sequence across ranks itself (DDP/FSDP).
        return GridStream(shards=data_cfg.shards, manifest=data_cfg.manifest, res=data_cfg.res,
                          seed=data_cfg.seed, families=data_cfg.families, tasks_config=data_cfg.tasks_config,
                          mode="grid", rank=rank, world_size=world_size)
    raise ValueError(f"data.source must be 'stream' or 'photos', got {data_cfg.source!r}")
