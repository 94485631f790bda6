import numpy as np
import pytest

from graph200k.grid import (Grid, compose, compose_images, infer_cell_size, pack_mask,
                            train_cell_size)
from graph200k.manifest import Manifest
from graph200k.nodes import SLOTS
from graph200k.tasks import Task, TaskConfig, TaskSampler


def _task(rows=3, columns=("reference", "canny", "target"), mask_col=None) -> Task:
    cols = list(columns)
    mask_col = len(cols) - 1 if mask_col is None else mask_col
    return Task(
        task_id="t-0", family="conditional_generation_with_reference",
        variant="reference+canny->target", nodes=["reference", "canny", "target"],
        columns=cols,
        rows=[[{"key": f"{r:07d}", "node": c, "slot": c} for c in cols] for r in range(rows)],
        mask_row=rows - 1, mask_col=mask_col,
        prompt={"layout": "L.", "task": "T.", "content": "C.", "keep_task": True,
                "keep_content": True, "dropped": False, "text": "L. T. C."},
        seed=7)


def _colour(slot: str) -> np.ndarray:
    """A distinct, deterministic colour per slot name."""
    i = sorted(SLOTS).index(slot)
    return np.array([(37 * i) % 256, (91 * i + 40) % 256, (153 * i + 80) % 256], np.uint8)


def _images(task: Task, h=40, w=56):
    return [[np.broadcast_to(_colour(cell["slot"]), (h, w, 3)).copy() for cell in row]
            for row in task.rows]


@pytest.mark.parametrize("mask_col", [2, 0, 1])  # last column, then reverse generation
def test_mask_is_exactly_one_cell_in_the_query_row(mask_col):
    task = _task(mask_col=mask_col)
    g = compose(task, _images(task), res=64)
    assert (g.mask_row, g.mask_col) == (2, mask_col) == g.masked_cell
    assert len(g.masks) == g.num_rows == 3
    for r, m in enumerate(g.masks):
        assert m.shape == g.rows[r].shape[:2] and m.dtype == np.uint8
        assert set(np.unique(m)) <= {0, 255}
        if r != 2:
            assert not m.any()  # in-context rows are never masked
    m = g.masks[2]
    x0, y0, x1, y1 = g.cell_box(2, mask_col)
    assert (x0, y0, x1, y1) == (64 * mask_col, 0, 64 * (mask_col + 1), 64)
    assert (m[y0:y1, x0:x1] == 255).all()
    assert (m == 255).sum() == 64 * 64  # exactly one cell
    # The mask selects the cell's pixels and nothing else in the stacked view too.
    assert (g.stacked_mask() == 255).sum() == 64 * 64


def test_training_cells_are_square_with_area_res_squared():
    task = _task(rows=2)
    imgs = _images(task, h=72, w=96)  # non-square inputs are centre-cropped, not stretched
    for res in (384, 512):
        g = compose(task, imgs, res=res, mode="train")
        assert train_cell_size(res) == (res, res)
        assert all(size == (res, res) for row in g.cell_sizes for size in row)
        assert all(row.shape == (res, 3 * res, 3) and row.dtype == np.uint8 for row in g.rows)
    with pytest.raises(ValueError, match="multiple of 16"):
        compose(task, imgs, res=100)


def test_training_crop_keeps_the_centre():
    img = np.zeros((64, 128, 3), np.uint8)
    img[:, 32:96] = 200  # the centre square is bright, the side bands dark
    task = _task(rows=1, columns=("canny", "target"))
    g = compose(task, [[img, img]], res=32)
    assert g.rows[0].min() > 150


def test_inference_rows_take_their_first_image_aspect_sides_rounded_down_to_16():
    h, w = infer_cell_size(300, 450, 384)
    assert h % 16 == 0 and w % 16 == 0
    assert abs(w / h - 1.5) < 0.06 and 0.9 < h * w / 384 ** 2 <= 1
    assert infer_cell_size(10, 10000, 64) == (16, 2000)  # h: int(2.02) -> at least one multiple
    task = _task(rows=2)
    portrait = np.full((450, 300, 3), 90, np.uint8)
    landscape = np.full((300, 450, 3), 160, np.uint8)
    imgs = [[portrait] * 3, [landscape, landscape.transpose(1, 0, 2), landscape]]
    g = compose(task, imgs, res=384, mode="infer")
    (h0, w0), (h1, w1) = g.cell_sizes[0][0], g.cell_sizes[1][0]
    assert h0 > w0 and h1 < w1  # rows keep their own aspect ratio (3D-RoPE rows may differ)
    for r, row in enumerate(g.cell_sizes):
        assert len(set(row)) == 1  # every cell of a row has the row's first image's size
        assert g.rows[r].shape[:2] == (row[0][0], sum(cw for _, cw in row))
    assert (g.rows[1] == 160).all()  # the rotated cell is scaled to cover and cropped, no bars
    stacked = g.stacked()
    assert stacked.shape == (sum(r.shape[0] for r in g.rows), max(r.shape[1] for r in g.rows), 3)


def _processor_rows(images, res, vae_scale):
    """diffusers' VisualClozeProcessor on the same images: (uint8 rows, cell sizes)."""
    import torch
    from diffusers.pipelines.visualcloze.visualcloze_utils import VisualClozeProcessor
    from PIL import Image

    proc = VisualClozeProcessor(vae_scale_factor=2 * vae_scale, resolution=res)
    pil = [[None if im is None else Image.fromarray(im).convert("RGB") for im in row] for row in images]
    tensors, sizes, _ = proc.preprocess_image(pil, vae_scale_factor=vae_scale)
    rows = [((torch.cat(row, dim=3)[0].permute(1, 2, 0) + 1) / 2 * 255).round().byte().numpy() for row in tensors]
    return rows, [[tuple(s) for s in row] for row in sizes]


@pytest.mark.parametrize("mask_col", [2, 0])
def test_inference_grid_is_pixel_identical_to_diffusers_visualcloze_processor(mask_col):
    from PIL import Image
    from skimage import data

    # Real photos of four aspects, a grey 2-D map, an RGBA image; the query's unknown cell first
    # or last (reverse generation: the row's size then comes from its first *known* image).
    rgba = np.dstack([data.coffee(), np.full(data.coffee().shape[:2], 255, np.uint8)])
    query = [data.rocket(), data.astronaut(), data.chelsea()]
    query[mask_col] = None
    images = [[data.chelsea(), data.camera(), data.astronaut()], [data.rocket(), rgba, data.chelsea()], query]
    for res, vae_scale in ((384, 8), (32, 2)):
        rows, sizes = _processor_rows(images, res, vae_scale)
        # numpy arrays (graph200k's images) and PIL images (files, as diffusers' load_image gives them)
        pil = [[None if im is None else Image.fromarray(im).convert("RGB") for im in row] for row in images]
        for given in (images, pil):
            g = compose_images(given, 2, mask_col, "p", res=res, mode="infer", multiple=2 * vae_scale)
            assert g.cell_sizes == sizes
            for ours, theirs in zip(g.rows, rows):
                np.testing.assert_array_equal(ours, theirs)


def test_inference_unknown_query_cell_is_blank_and_sized_from_its_row():
    task = _task(rows=1)
    img = np.full((300, 450, 3), 128, np.uint8)
    g = compose(task, [[img, img, None]], res=256, mode="infer")
    assert g.cell_sizes[0][2] == g.cell_sizes[0][0]
    x0, y0, x1, y1 = g.cell_box(0, 2)
    assert not g.rows[0][y0:y1, x0:x1].any()
    with pytest.raises(ValueError, match="training"):
        compose(task, [[img, img, None]], res=256, mode="train")


def test_permutation_is_shared_by_all_rows_and_target_stays_last():
    manifest = Manifest.from_records(
        {"key": f"{i:07d}", "shard": 0, "nodes": ["target", "reference", "canny", "depth",
                                                    "instantstyle"], "item": "cup",
         "description": "a cup"} for i in range(5))
    sampler = TaskSampler(manifest, TaskConfig.load(), seed=3)
    for _ in range(30):
        task = sampler.sample()
        g = compose(task, _images(task, 24, 24), res=16)
        assert g.cells == [task.columns] * len(task.rows)
        assert g.cells[0][-1] == SLOTS[task.columns[-1]].name == task.columns[-1]
        for r in range(g.num_rows):
            for c, slot in enumerate(task.columns):
                x0, y0, x1, y1 = g.cell_box(r, c)
                assert (g.rows[r][y0:y1, x0:x1] == _colour(slot)).all()
        assert g.keys == [row[0]["key"] for row in task.rows]


def test_prompt_and_task_metadata_are_carried():
    task = _task()
    g = compose(task, _images(task), res=32)
    assert isinstance(g, Grid)
    assert g.prompt == task.prompt["text"] == "L. T. C."
    assert g.prompt_parts == {k: task.prompt[k] for k in ("layout", "task", "content")}
    assert (g.task_id, g.family, g.variant) == (task.task_id, task.family, task.variant)
    assert g.row_ids == [1, 2, 3] and g.target_col == 2  # RoPE row ids from 1; text holds 0


def test_latent_mask_packing_matches_flux_fill_layout():
    task = _task(mask_col=1)
    g = compose(task, _images(task), res=64)
    lm = g.latent_mask(vae_scale=8, patch=2)
    assert len(lm) == 3
    # row: 64 x 192 px -> latent 8 x 24 -> 4 x 12 tokens of 8*8*2*2 = 256 mask channels
    assert all(m.shape == (4 * 12, 256) and m.dtype == np.float32 for m in lm)
    assert not lm[0].any() and not lm[1].any()
    tokens = lm[2].reshape(4, 12, 256)
    assert (tokens[:, 4:8] == 1).all() and not tokens[:, :4].any() and not tokens[:, 8:].any()

def test_pack_mask_channel_order():
    rng = np.random.default_rng(0)
    m = (rng.random((32, 48)) > 0.5).astype(np.uint8) * 255
    packed = pack_mask(m, vae_scale=8, patch=2)
    assert packed.shape == (2 * 3, 256)
    # diffusers FluxFillPipeline: channel = (vy * 8 + vx) * 4 + py * 2 + px for the pixel
    # (y, x) = ((ty * 2 + py) * 8 + vy, (tx * 2 + px) * 8 + vx) of token (ty, tx).
    for _ in range(50):
        ty, tx, py, px, vy, vx = (int(rng.integers(n)) for n in (2, 3, 2, 2, 8, 8))
        value = m[(ty * 2 + py) * 8 + vy, (tx * 2 + px) * 8 + vx] / 255
        assert packed[ty * 3 + tx, (vy * 8 + vx) * 4 + py * 2 + px] == value


def test_compose_is_deterministic_and_validates_shapes():
    task = _task()
    rng = np.random.default_rng(1)
    imgs = [[rng.integers(0, 255, (50, 70, 3), dtype=np.uint8) for _ in range(3)] for _ in range(3)]
    a, b = compose(task, imgs, res=48), compose(task, imgs, res=48)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a.rows, b.rows))
    gray = [[im[..., 0] for im in row] for row in imgs]  # H x W inputs become 3-channel
    assert compose(task, gray, res=48).rows[0].shape == (48, 144, 3)
    with pytest.raises(ValueError, match="row 1"):
        compose(task, [imgs[0], imgs[1][:2], imgs[2]], res=48)
    with pytest.raises(ValueError, match="exactly one"):
        compose_images(imgs, mask_row=0, mask_col=5, res=48)
