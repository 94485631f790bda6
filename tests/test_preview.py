import json
import re

import numpy as np
import pytest
from annotated_shards import write_annotated_shards
from PIL import Image

from graph200k import preview
from graph200k.manifest import Manifest
from graph200k.reader import SampleReader
from graph200k.tasks import Task, TaskConfig, TaskSampler

CONFIG = {"families": {"conditional_generation_with_reference": {
    "variants": [["reference", "canny", "target"], ["reference", "foreground", "target"]]}},
    "rows": {"counts": [2], "probs": [1.0]},
    "prompt": {"drop_caption_prob": 0.0}}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("preview") / "shards"
    write_annotated_shards(folder, num_samples=4, per_shard=2, size=64)
    manifest = Manifest.from_shards(folder)
    manifest.save(folder / "manifest.parquet")
    tasks = TaskSampler(manifest, TaskConfig.from_dict(CONFIG), seed=0).take(3)
    path = folder.parent / "tasks.jsonl"
    path.write_text("".join(json.dumps(t.to_json()) + "\n" for t in tasks))
    return folder, path, tasks


def test_grid_preview_has_the_grid_and_the_prompt(shards, tmp_path):
    folder, tasks_path, tasks = shards
    out = tmp_path / "grid.png"
    rc = preview.main(["--task", "1", "--tasks", str(tasks_path), "--shards", str(folder),
                       "--manifest", str(folder / "manifest.parquet"), "--res", "64",
                       "--out", str(out)])
    assert rc == 0
    grid = SampleReader(folder).grid(tasks[1], res=64)
    png = np.asarray(Image.open(out).convert("RGB"))
    h, w = grid.stacked().shape[:2]
    assert (png.shape[1], png.shape[0]) == preview.render_grid(grid).size
    assert png.shape[1] == w == 3 * 64 and png.shape[0] > h == 2 * 64
    band = png[h:]
    assert (band < 80).all(axis=2).sum() > 200  # dark prompt text drawn under the grid
    assert tasks[1].prompt["text"]
    # The masked cell is outlined in red.
    x0, y0, x1, y1 = grid.cell_box(grid.mask_row, grid.mask_col)
    y0 += 64 * grid.mask_row
    assert tuple(png[y0 + 40, x0]) == preview.MASK_COLOUR


def test_task_given_as_json(shards, tmp_path):
    folder, _, tasks = shards
    out = tmp_path / "grid.png"
    rc = preview.main(["--task", json.dumps(tasks[0].to_json()), "--shards", str(folder),
                       "--res", "32", "--sizing", "infer", "--out", str(out)])
    assert rc == 0 and Image.open(out).width >= 3 * 32


def test_bad_task_index_says_how_many(shards, tmp_path, capsys):
    folder, tasks_path, _ = shards
    assert preview.main(["--task", "7", "--tasks", str(tasks_path), "--shards", str(folder),
                         "--out", str(tmp_path / "x.png")]) == 2
    assert "holds 3 tasks" in capsys.readouterr().err


def test_a_missing_tasks_file_is_a_clear_error(shards, tmp_path, capsys):
    folder, _, _ = shards
    assert preview.main(["--task", "0", "--tasks", str(tmp_path / "nowhere.jsonl"), "--shards",
                         str(folder), "--out", str(tmp_path / "x.png")]) == 2
    assert re.search("nowhere.jsonl does not exist.*sample_tasks --out",
                     capsys.readouterr().err)
    assert not (tmp_path / "x.png").exists()


def test_contact_sheet_shows_nodes_and_type_graph(shards, tmp_path):
    folder, _, _ = shards
    out = tmp_path / "sheet.png"
    assert preview.main(["--key", "0000001", "--shards", str(folder), "--no-degradations",
                         "--out", str(out)]) == 0
    sheet = Image.open(out)
    # 8 slots (target, reference, canny, depth, foreground, background and the style pair;
    # the matte itself is no node) in one row of tiles, then the type-graph figure.
    assert sheet.width == 8 * (144 + preview.PAD) + preview.PAD
    g = preview.GRAPH_HEIGHT
    assert g + 144 < sheet.height < g + 2 * 144
    graph = np.asarray(sheet.convert("RGB"))[-g:]
    assert len(np.unique(graph.reshape(-1, 3), axis=0)) > 20  # a drawn graph, not blank


def test_render_grid_of_a_handmade_task():
    from graph200k.grid import compose

    task = Task("t", "f", "canny->target", ["canny", "target"], ["canny", "target"],
                [[{"key": "k", "node": s, "slot": s} for s in ("canny", "target")]], 0, 0,
                {"text": "A grid of 1 rows and 2 columns."}, 0)
    g = compose(task, [[np.zeros((40, 40, 3), np.uint8)] * 2], res=48)
    img = preview.render_grid(g)
    assert img.width == 96 and img.height > 48
