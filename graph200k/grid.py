"""Visual-cloze grids: rows of images, one masked cell, the prompt and 3D-RoPE row ids.

Contract shared by the composer (this module), the training stream and train.fill.

    grid = compose(task, images, res=384)             # training: every cell res x res
    grid = compose(task, images, res=512, mode="infer")  # diffusers' VisualClozeProcessor sizing

Rows are kept separate: FLUX's 3D RoPE puts the row index on axis 0 and restarts axes 1-2
per row (VisualCloze), so rows may differ in aspect ratio. `Grid.stacked()` pads them to
one width only for viewing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

# FLUX: the VAE downsamples 8x and the transformer packs 2x2 latents into one token, so a
# side must be a multiple of 16 for a cell to cover whole tokens.
MULTIPLE = 16
TRAIN, INFER = "train", "infer"


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
    # The prompt's parts before the drops ({"layout", "task", "content"}), for logging.
    prompt_parts: dict = field(default_factory=dict)
    mode: str = TRAIN
    # Set by graph200k.stream: the DataLoader worker that built the grid, that worker's
    # running skip counts by reason (GridStream.observe sums them in the main process) and
    # the rank's stream position of the task (GridStream.state_dict).
    worker: int = 0
    skipped: dict = field(default_factory=dict)
    position: int = -1

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    @property
    def num_cols(self) -> int:
        return len(self.cell_sizes[0])

    @property
    def row_ids(self) -> list[int]:
        """Axis 0 of FLUX's 3D RoPE for every row: 1, 2, ... (text tokens hold 0; axes 1-2 restart
        per row), as the reference trainer and diffusers' VisualClozeGenerationPipeline."""
        return list(range(1, self.num_rows + 1))

    @property
    def masked_cell(self) -> tuple[int, int]:
        """(row, col) of the cell to generate; with reverse generation it is not the last column."""
        return self.mask_row, self.mask_col

    @property
    def target_col(self) -> int:
        """The column of the task's target (always last; it is masked unless reverse generation)."""
        return self.num_cols - 1

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of a cell inside `rows[row]`."""
        sizes = self.cell_sizes[row]
        x0 = sum(w for _, w in sizes[:col])
        h, w = sizes[col]
        return x0, 0, x0 + w, h

    def stacked(self, pad: int = 255) -> np.ndarray:
        """All rows in one image for viewing, each padded on the right to the widest row."""
        return _stack(self.rows, pad)

    def stacked_mask(self) -> np.ndarray:
        return _stack(self.masks, 0)

    def latent_mask(self, vae_scale: int = 8, patch: int = 2) -> list[np.ndarray]:
        """Per row, the mask as FLUX-Fill consumes it: float32 (tokens, vae_scale² · patch²).

        Same layout as diffusers' FluxFillPipeline.prepare_mask_latents: the pixel mask is
        folded into vae_scale² channels at latent resolution, then packed patch x patch.
        """
        return [pack_mask(m, vae_scale, patch) for m in self.masks]


def _stack(arrays: list[np.ndarray], pad: int) -> np.ndarray:
    width = max(a.shape[1] for a in arrays)
    padded = []
    for a in arrays:
        extra = width - a.shape[1]
        if extra:
            widths = ((0, 0), (0, extra)) + ((0, 0),) * (a.ndim - 2)
            a = np.pad(a, widths, constant_values=pad)
        padded.append(a)
    return np.concatenate(padded, axis=0)


def pack_mask(mask: np.ndarray, vae_scale: int = 8, patch: int = 2) -> np.ndarray:
    """A H x W {0, 255} (or {0, 1}) pixel mask -> float32 (tokens, vae_scale² · patch²)."""
    h, w = mask.shape
    step = vae_scale * patch
    if h % step or w % step:
        raise ValueError(f"mask of {h}x{w} px does not tile into {step}-px tokens "
                         f"(vae_scale {vae_scale} x patch {patch})")
    m = (mask > 0).astype(np.float32)
    lh, lw = h // vae_scale, w // vae_scale
    # (lh, vy, lw, vx) -> (vy, vx, lh, lw): vae_scale² channels at latent resolution.
    m = m.reshape(lh, vae_scale, lw, vae_scale).transpose(1, 3, 0, 2).reshape(-1, lh, lw)
    c = m.shape[0]
    # diffusers' _pack_latents: (c, th, py, tw, px) -> (th, tw, c, py, px).
    m = m.reshape(c, lh // patch, patch, lw // patch, patch).transpose(1, 3, 0, 2, 4)
    return np.ascontiguousarray(m.reshape((lh // patch) * (lw // patch), c * patch * patch))


# ---- sizes ---------------------------------------------------------------------------

def _check_res(res: int, multiple: int = MULTIPLE) -> int:
    if int(res) != res or res <= 0 or res % multiple:
        raise ValueError(f"res {res} must be a positive multiple of {multiple} "
                         "(FLUX: 8x VAE x 2x2 token packing)")
    return int(res)


def train_cell_size(res: int) -> tuple[int, int]:
    """Training cells are res x res (VisualCloze trains at 384² / 512²)."""
    res = _check_res(res)
    return res, res


def infer_cell_size(h: int, w: int, res: int, multiple: int = MULTIPLE) -> tuple[int, int]:
    """The (h, w) of every cell of a row whose first image is h x w: area res² at that aspect,
    each side rounded *down* to `multiple` (at least one). The rule of diffusers'
    VisualClozeProcessor.preprocess_image and the reference's inference, so a grid composed
    here is the grid the released models and diffusers' pipeline see."""
    _check_res(res, multiple)
    aspect = w / h
    new_h = int((res * res / aspect) ** 0.5)
    new_w = int(new_h * aspect)
    return max(new_h // multiple, 1) * multiple, max(new_w // multiple, 1) * multiple


# ---- images --------------------------------------------------------------------------

def to_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {img.dtype}")
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    if img.ndim == 3 and img.shape[2] == 4:
        return np.ascontiguousarray(img[..., :3])
    raise ValueError(f"image of shape {img.shape} is not H x W, H x W x 3 or H x W x 4")


def _checked(img, row: int, col: int) -> np.ndarray:
    """uint8 H x W or H x W x 3 (an alpha channel is dropped); a PIL image becomes its array."""
    if _is_pil(img):
        img = img.convert("RGB") if img.mode not in ("L", "RGB") else img
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3
                                                            and img.shape[2] not in (3, 4)):
        raise ValueError(f"cell ({row}, {col}): image of shape {img.shape} and dtype "
                         f"{img.dtype} is not uint8 H x W, H x W x 3 or H x W x 4")
    return img[..., :3] if img.ndim == 3 and img.shape[2] == 4 else img


def _is_pil(img) -> bool:
    return isinstance(img, Image.Image)


def _size(img) -> tuple[int, int]:
    """(h, w) of an array or a PIL image."""
    return (img.height, img.width) if _is_pil(img) else img.shape[:2]


def resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    # Area averaging when shrinking avoids aliasing on edge maps; cubic when enlarging.
    shrink = h * w < img.shape[0] * img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def resize_and_crop(img, size: tuple[int, int]) -> np.ndarray:
    """Scale (Lanczos) until the image covers (h, w), keeping its aspect, then cut the centre.

    Pixel for pixel what diffusers' VisualClozeProcessor does to each image (VaeImageProcessor
    `_resize_and_crop`, resample "lanczos"): the covering side is computed with integer
    floor division and the crop offset is `src // 2 - size // 2`, as there. `img`: a uint8
    array, or a PIL image (taken as it is: no array round trip at inference)."""
    h, w = size
    pil = img if _is_pil(img) else Image.fromarray(np.ascontiguousarray(img))
    src_h, src_w = pil.height, pil.width
    if w / h > src_w / src_h:
        new_w, new_h = w, src_h * w // src_w
    else:
        new_w, new_h = src_w * h // src_h, h
    scaled = pil.resize((new_w, new_h), resample=Image.Resampling.LANCZOS)
    y, x = new_h // 2 - h // 2, new_w // 2 - w // 2
    scaled = scaled.crop((x, y, x + w, y + h))
    # As diffusers' paste onto an RGB canvas: other modes (RGBA, P, ...) become RGB after the resize.
    return np.asarray(scaled if scaled.mode in ("L", "RGB") else scaled.convert("RGB"))


def centre_square(img: np.ndarray) -> np.ndarray:
    """The centred square crop. Stretching would distort shapes; aligned images of one size
    (a target and its canny map) get the same crop, so correspondences survive."""
    h, w = img.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return img[y:y + s, x:x + s]


# ---- composing -----------------------------------------------------------------------

def compose_images(images, mask_row: int, mask_col: int, prompt: str = "", res: int = 384,
                   mode: str = TRAIN, multiple: int = MULTIPLE, **meta) -> Grid:
    """Compose `images[r][c]` (uint8 H x W [x 3], or PIL images) into a Grid with one masked cell.

    mode "train": every cell res x res (centre square crop, then resize).
    mode "infer": diffusers' VisualClozeProcessor sizing — every cell of a row takes the size
    of the row's first image at area ~ res² (`infer_cell_size`) by `resize_and_crop`; a
    `None` cell (the unknown query target) is left black.
    `meta` fills the remaining Grid fields (task_id, family, variant, cells, keys, ...).
    """
    if mode not in (TRAIN, INFER):
        raise ValueError(f"mode must be {TRAIN!r} or {INFER!r}, not {mode!r}")
    res = _check_res(res, multiple)
    if not images or not images[0]:
        raise ValueError("a grid needs at least one row of at least one image")
    cols = len(images[0])
    for r, row in enumerate(images):
        if len(row) != cols:
            raise ValueError(f"row {r} has {len(row)} images, row 0 has {cols}: every row of "
                             "a grid holds the same columns")
    if not (0 <= mask_row < len(images) and 0 <= mask_col < cols):
        raise ValueError(f"masked cell ({mask_row}, {mask_col}) is outside the "
                         f"{len(images)} x {cols} grid: exactly one cell must be masked")

    rows, sizes, masks = [], [], []
    for r, row in enumerate(images):
        if mode == TRAIN:
            if any(img is None for img in row):
                raise ValueError(f"row {r}: an image is None; only inference (mode='infer') "
                                 "may leave the query cell unknown, not training")
            row_sizes = [train_cell_size(res)] * cols
            row = [centre_square(_checked(img, r, c)) for c, img in enumerate(row)]
        else:
            # PIL images stay PIL until resized: the bytes diffusers' processor would resize.
            row = [img if img is None or _is_pil(img) else _checked(img, r, c) for c, img in enumerate(row)]
            first = next((img for img in row if img is not None), None)
            size = (res, res) if first is None else infer_cell_size(*_size(first), res, multiple)
            row_sizes = [size] * cols
        canvas = np.zeros((row_sizes[0][0], sum(w for _, w in row_sizes), 3), np.uint8)
        x0 = 0
        for img, (h, w) in zip(row, row_sizes):
            if img is not None:
                # Resize before expanding grey maps to 3 channels: a third of the work.
                cell = resize(img, (h, w)) if mode == TRAIN else resize_and_crop(img, (h, w))
                canvas[:, x0:x0 + w] = cell[..., None] if cell.ndim == 2 else cell
            x0 += w
        rows.append(canvas)
        sizes.append([tuple(s) for s in row_sizes])
        mask = np.zeros(canvas.shape[:2], np.uint8)
        if r == mask_row:
            x0 = sum(w for _, w in row_sizes[:mask_col])
            h, w = row_sizes[mask_col]
            mask[:h, x0:x0 + w] = 255
        masks.append(mask)
    return Grid(rows=rows, cell_sizes=sizes, mask_row=mask_row, mask_col=mask_col,
                prompt=prompt, masks=masks, mode=mode, **meta)


def compose(task, images, res: int = 384, mode: str = TRAIN, multiple: int = MULTIPLE) -> Grid:
    """A sampled `graph200k.tasks.Task` and its images (`images[r][c]` for `task.rows[r][c]`)."""
    if len(images) != len(task.rows):
        raise ValueError(f"task {task.task_id}: {len(task.rows)} rows but images for "
                         f"{len(images)}")
    prompt = task.prompt or {}
    return compose_images(
        images, task.mask_row, task.mask_col, prompt.get("text", ""), res, mode, multiple,
        task_id=task.task_id, family=task.family, variant=task.variant,
        cells=[[cell["slot"] for cell in row] for row in task.rows],
        keys=[row[0]["key"] for row in task.rows],
        prompt_parts={k: prompt.get(k) for k in ("layout", "task", "content")})
