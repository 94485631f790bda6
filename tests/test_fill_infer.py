"""The saved LoRA loads through diffusers' FluxFillPipeline.load_lora_weights and solves a grid."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import train.visualcloze.recipe as fill
import train.visualcloze.infer as infer
from train.common.config import load_config


@pytest.fixture(scope="module")
def trained_lora(tiny_fill_dir, annotated_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("fill-run")
    folder, manifest = annotated_shards
    cfg = load_config(fill.FillConfig, "configs/train/fill-tiny.yaml", [
        f"model.pretrained={tiny_fill_dir}", f"data.shards={folder}", f"data.manifest={manifest}",
        f"train.out_dir={out}", "train.tensorboard=false",
        "train.max_steps=3", "train.checkpoint_every=0", "optim.lr=1e-2"])
    fill.train(cfg)
    return out / "lora"


def _task(tmp_path):
    from skimage import data

    for name, img in {"a": data.astronaut(), "b": data.chelsea(), "c": data.coffee()}.items():
        Image.fromarray(img).save(tmp_path / f"{name}.png")
    task = {"prompt": "[IMAGE1] a photo, [IMAGE2] the clean photo", "res": 32,
            "rows": [["a.png", "b.png"], ["b.png", "a.png"], ["c.png", None]]}
    (tmp_path / "task.json").write_text(json.dumps(task))
    return tmp_path / "task.json"


def test_lora_loads_into_flux_fill_pipeline_and_changes_output(tiny_fill_dir, trained_lora, tmp_path):
    from diffusers import FluxFillPipeline
    from safetensors.torch import load_file

    task, base = infer.load_task(str(_task(tmp_path)))
    pipe = FluxFillPipeline.from_pretrained(tiny_fill_dir, dtype=torch.float32)
    grid = infer.build_grid(task, base, in_context=1, res=32, multiple=4)
    assert grid.num_rows == 2 and grid.mask_row == 1 and grid.mask_col == 1
    base_grid, base_target = infer.solve(pipe, grid, steps=2, seed=0, max_sequence_length=32)

    pipe.load_lora_weights(trained_lora)
    saved = load_file(str(trained_lora / "pytorch_lora_weights.safetensors"))
    lora_b = [k for k in saved if "lora_B" in k]
    assert lora_b and any(saved[k].abs().sum() > 0 for k in lora_b)  # trained, not the zero init
    name = lora_b[0].removeprefix("transformer.").replace(".lora_B.weight", "")
    module = pipe.transformer.get_submodule(name)
    torch.testing.assert_close(next(iter(module.lora_B.values())).weight, saved[lora_b[0]])

    lora_grid, lora_target = infer.solve(pipe, grid, steps=2, seed=0, max_sequence_length=32)
    h, w = grid.cell_sizes[1][1]
    assert lora_target.shape == (h, w, 3) and lora_target.dtype == np.uint8
    assert lora_grid.shape[0] == sum(r.shape[0] for r in grid.rows)
    assert not np.array_equal(lora_target, base_target)  # the adapter is active


def test_infer_cli_writes_target_and_grid(tiny_fill_dir, trained_lora, tmp_path):
    out = tmp_path / "out"
    infer.main(["--model", str(tiny_fill_dir), "--lora", str(trained_lora), "--task", str(_task(tmp_path)),
                "--out", str(out), "--steps", "1", "--dtype", "float32", "--max-sequence-length", "32"])
    target, grid = Image.open(out / "target.png"), Image.open(out / "grid.png")
    # The query row's first image, coffee (400x600), sets its cells: h = int(sqrt(32² / 1.5)) = 26,
    # w = int(26 * 1.5) = 39, both rounded down to 4 (2 x VAE downscale 2) -> 36x24 (diffusers' rule)
    assert target.size == (36, 24)
    assert grid.size[1] > target.size[1]


def test_infer_cli_solves_a_sampled_task_from_shards(tiny_fill_dir, trained_lora, annotated_shards, tmp_path):
    from graph200k import sample_tasks

    folder, manifest = annotated_shards
    tasks = tmp_path / "tasks.jsonl"
    assert sample_tasks.main(["--manifest", str(manifest), "--num", "40", "--seed", "0", "--out", str(tasks)]) == 0
    lines = [json.loads(x) for x in tasks.read_text().splitlines()]
    # A task whose query row is sample 0000001 (64 x 48 px target) and whose cells all share
    # the target's 4:3 aspect: inference sizing keeps it.
    aligned = {"target", "canny", "depth", "foreground", "background"}
    line = next(i for i, t in enumerate(lines)
                if t["rows"][-1][0]["key"] == "0000001" and set(t["columns"]) <= aligned)
    task = lines[line]

    grid = infer.build_sampled_grid(task, folder, manifest, res=32, multiple=4)
    r, c = task["mask"]["row"], task["mask"]["col"]
    assert (grid.mask_row, grid.mask_col) == (r, c) and grid.num_rows == len(task["rows"])
    x0, y0, x1, y1 = grid.cell_box(r, c)
    assert not grid.rows[r][y0:y1, x0:x1].any()  # the cell to generate is blank, not the answer
    assert all(row.any() for row in grid.rows)
    h, w = grid.cell_sizes[r][c]
    assert (h, w) == (24, 36)  # aspect 4:3 at area ~32²: int(27.7) = 27, int(36.0), rounded down to 4

    out = tmp_path / "out"
    infer.main(["--model", str(tiny_fill_dir), "--lora", str(trained_lora), "--task", str(tasks), "--line", str(line),
                "--shards", str(folder), "--manifest", str(manifest), "--res", "32", "--out", str(out),
                "--steps", "1", "--dtype", "float32", "--max-sequence-length", "32"])
    target, full = np.asarray(Image.open(out / "target.png")), np.asarray(Image.open(out / "grid.png"))
    assert target.shape == (h, w, 3)
    assert full.shape[0] == sum(row.shape[0] for row in grid.rows)
    # The target is the masked cell cut out of the generated grid.
    assert np.array_equal(full[sum(row.shape[0] for row in grid.rows[:r]):][:h, x0:x1], target)
    with pytest.raises(SystemExit):  # a sampled task without --shards names what is missing
        infer.main(["--model", str(tiny_fill_dir), "--task", str(tasks), "--line", str(line)])
