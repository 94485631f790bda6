"""Periodic validation images (train.common.validation) in both recipes: files, sizes, fixed tasks,
training untouched (losses bit-identical, RNG isolated), resume with validation on."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train.realgeneral.recipe as cogvideox
import train.visualcloze.recipe as fill
import train.visualcloze.infer as infer_fill
from graph200k.manifest import Manifest
from graph200k.stream import GridStream
from graph200k.tasks import TaskConfig
from train.common.config import load_config
from train.visualcloze.infer import build_sampled_grid
from train.common.validation import ValidationConfig, isolated, select_tasks, stream_tasks_setup

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fill_cfg(tiny_fill_dir, shards, out, *overrides):
    folder, manifest = shards
    return load_config(fill.FillConfig, ROOT / "configs/train/fill-tiny.yaml", [
        f"model.pretrained={tiny_fill_dir}", f"data.shards={folder}", f"data.manifest={manifest}",
        f"train.out_dir={out}", "train.tensorboard=false", "train.checkpoint_every=100", *overrides])


def _pngs(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted((run / "validation").rglob("*.png"))}


def test_fill_writes_fixed_task_grids_and_leaves_training_untouched(tiny_fill_dir, annotated_shards, tmp_path,
                                                                    capsys, monkeypatch):
    real_solve = infer_fill.solve

    def greedy_solve(*args, **kwargs):  # a sampler that draws from every global RNG (e.g. a CUDA VAE sample)
        torch.randn(7), np.random.rand(3), random.random()
        return real_solve(*args, **kwargs)

    monkeypatch.setattr(infer_fill, "solve", greedy_solve)
    on = ["train.max_steps=4", "validation.every=2", "validation.num_tasks=2", "validation.steps=1"]
    with_val = fill.train(_fill_cfg(tiny_fill_dir, annotated_shards, tmp_path / "on", *on))
    out = capsys.readouterr().out
    assert "validation: no unseen task" not in out  # fill-tiny trains on tasks-unseen.yaml: 5 held out
    without = fill.train(_fill_cfg(tiny_fill_dir, annotated_shards, tmp_path / "off", *on, "validation.every=0"))
    assert with_val["losses"] == without["losses"]  # bitwise: validation drew nothing from the training RNG
    assert not (tmp_path / "off" / "validation").exists()

    run = tmp_path / "on" / "validation"
    tasks = [json.loads(line) for line in (run / "tasks.jsonl").read_text().splitlines()]
    ids = [t["task_id"] for t in tasks]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert {t["variant"] for t in tasks} <= TaskConfig.load(ROOT / "configs/tasks-unseen.yaml").unseen
    assert sorted(p.name for p in run.iterdir()) == ["step_00000002", "step_00000004", "tasks.jsonl"]
    for step in ("step_00000002", "step_00000004"):  # the same tasks at every validation
        assert sorted(p.name for p in (run / step).iterdir()) == sorted(f"{i}{s}" for i in ids
                                                                        for s in (".png", ".cell.png"))
    folder, manifest = annotated_shards
    for task in tasks:
        grid = build_sampled_grid(task, folder, manifest, 32, 4)  # inference sizing, the query cell blank
        solved = np.asarray(Image.open(run / "step_00000004" / f"{task['task_id']}.png"))
        cell = np.asarray(Image.open(run / "step_00000004" / f"{task['task_id']}.cell.png"))
        assert solved.shape == grid.stacked().shape
        x0, y0, x1, y1 = grid.cell_box(grid.mask_row, grid.mask_col)
        y_row = sum(r.shape[0] for r in grid.rows[:grid.mask_row])
        assert cell.shape == (y1 - y0, x1 - x0, 3)
        assert np.array_equal(solved[y_row + y0:y_row + y1, x0:x1], cell)
        blank = grid.stacked()[y_row + y0:y_row + y1, x0:x1]
        assert not blank.any() and cell.any()  # the masked cell was black; now it is filled

    rows = [json.loads(line) for line in (tmp_path / "on" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("validation_images") for r in rows] == [None, 4, None, 4]
    assert rows[3]["validation_dir"] == str(run / "step_00000004")
    assert not list(run.rglob(".*.tmp"))


def test_fill_resume_with_validation_equals_uninterrupted(tiny_fill_dir, annotated_shards, tmp_path, monkeypatch):
    steps = ["train.max_steps=6", "validation.every=2", "validation.num_tasks=1", "validation.steps=1"]
    full = fill.train(_fill_cfg(tiny_fill_dir, annotated_shards, tmp_path / "full", *steps))
    built, real_build = [], GridStream.build

    def preempted(self, task):  # SIGTERM while a middle step's grids are being read
        if len(built) == 9:
            os.kill(os.getpid(), signal.SIGTERM)
        built.append(task.task_id)
        return real_build(self, task)

    monkeypatch.setattr(GridStream, "build", preempted)
    first = fill.train(_fill_cfg(tiny_fill_dir, annotated_shards, tmp_path / "cut", *steps))
    # SIGTERM came in step 2, a validation step: it saved and stopped without sampling; the
    # resumed run wrote step 2's images before its first step.
    assert first["last_step"] == 2 and not (tmp_path / "cut" / "validation" / "step_00000002").exists()
    monkeypatch.setattr(GridStream, "build", real_build)
    second = fill.train(_fill_cfg(tiny_fill_dir, annotated_shards, tmp_path / "cut", *steps))
    assert first["losses"] + second["losses"] == full["losses"]
    # Same weights at every validation step -> the same PNG bytes, none missing after the cut.
    assert _pngs(tmp_path / "cut") == _pngs(tmp_path / "full")
    assert len(_pngs(tmp_path / "full")) == 3 * 2


def test_cogvideox_writes_condition_and_target_and_leaves_training_untouched(tiny_cogvideox_dir, annotated_shards,
                                                                             tmp_path):
    folder, manifest = annotated_shards

    def cfg(out, *overrides):
        return load_config(cogvideox.CogVideoXConfig, ROOT / "configs/train/cogvideox-tiny.yaml", [
            f"model.pretrained={tiny_cogvideox_dir}", "model.build_tiny=false", f"data.shards={folder}",
            f"data.manifest={manifest}", f"train.out_dir={out}", "train.tensorboard=false", "train.max_steps=4",
            "train.checkpoint_every=0", "validation.every=2", "validation.num_tasks=2", "validation.steps=1",
            *overrides])

    on = cogvideox.train(cfg(tmp_path / "on"))
    off = cogvideox.train(cfg(tmp_path / "off", "validation.every=0"))
    assert on["losses"] == off["losses"]
    assert on["model"].uce.counts == off["model"].uce.counts  # validation prompts are not counted as training
    run = tmp_path / "on" / "validation"
    ids = [json.loads(line)["task_id"] for line in (run / "tasks.jsonl").read_text().splitlines()]
    assert len(ids) == 2
    for step in ("step_00000002", "step_00000004"):
        assert sorted(p.name for p in (run / step).iterdir()) == sorted(f"{i}{s}" for i in ids
                                                                        for s in (".png", ".cell.png"))
    for i in ids:
        pair = np.asarray(Image.open(run / "step_00000004" / f"{i}.png"))
        target = np.asarray(Image.open(run / "step_00000004" / f"{i}.cell.png"))
        assert pair.shape == (32, 64, 3) and target.shape == (32, 32, 3)  # condition | target at data.res
        assert np.array_equal(pair[:, 32:], target) and target.any()


def test_isolated_puts_every_rng_back_and_the_mode():
    model = torch.nn.Linear(2, 2).train()
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    with isolated(model):
        assert not model.training and not torch.is_grad_enabled()
        torch.randn(5), np.random.rand(3), random.random()
    after = (torch.randn(3), np.random.rand(2), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    assert model.training
    assert torch.equal(after[0], torch.randn(3)) and np.array_equal(after[1], np.random.rand(2))
    assert after[2] == random.random()


def test_select_tasks_prefers_unseen_variants_then_falls_back(annotated_shards):
    manifest = Manifest.load(annotated_shards[1])
    config = TaskConfig.load(ROOT / "configs/tasks.yaml")
    cfg = ValidationConfig(every=1, num_tasks=2, seed=7)
    held_out = dataclasses.replace(config, unseen=frozenset({"canny->target"}))
    said = []
    tasks = select_tasks(cfg, manifest, held_out, say=said.append)
    assert said == [] and {t.variant for t in tasks} == {"canny->target"}
    assert [t.task_id for t in tasks] == [t.task_id for t in select_tasks(cfg, manifest, held_out)]  # fixed
    assert [t.rows for t in tasks] == [t.rows for t in select_tasks(cfg, manifest, held_out)]
    unsatisfiable = dataclasses.replace(config, unseen=frozenset({"hed->target"}))  # no hed in the shards
    fallback = select_tasks(cfg, manifest, unsatisfiable, families=["conditional_generation"], say=said.append)
    assert len(said) == 1 and "none satisfiable" in said[0]
    assert {t.family for t in fallback} == {"conditional_generation"} and "hed->target" not in {t.variant
                                                                                               for t in fallback}


def test_validation_reuses_the_training_streams_manifest_and_tasks(annotated_shards, monkeypatch):
    folder, manifest_path = annotated_shards
    data = fill.DataConfig(shards=str(folder), manifest=None)  # null: would scan every shard
    stream = GridStream(folder, manifest_path, res=32)

    def no_scan(*a, **k):
        raise AssertionError("the manifest was built a second time")

    monkeypatch.setattr(Manifest, "from_shards", no_scan)
    monkeypatch.setattr(Manifest, "load", no_scan)
    manifest, config = stream_tasks_setup(data, stream)
    assert manifest is stream.manifest and config is stream.config
    monkeypatch.undo()
    # Without a stream (a plain iterable of pairs in tests) it loads them, pair-filtered.
    manifest, config = stream_tasks_setup(data, None, pairs=True)
    assert len(manifest) == len(stream.manifest)
    assert all(len(v.slots) == 2 for v in config.variants)
