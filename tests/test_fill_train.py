"""train.fill on the tiny model: overfitting, exact resume, token budget, NaN guard."""

import os
import signal

import pytest

import train.fill as fill
from train.checkpoint import CheckpointManager
from train.config import load_config
from train.fill_data import PhotoGrids
from train.fill_inputs import grid_tokens
from train.nan_guard import NonFiniteLossError


def _cfg(tiny_fill_dir, out, *overrides):
    return load_config(fill.FillConfig, "configs/train/fill-tiny.yaml", [
        f"model.pretrained={tiny_fill_dir}", f"train.out_dir={out}", "train.tensorboard=false", *overrides])


def test_tiny_recipe_overfits_one_batch(tiny_fill_dir, tmp_path):
    # data.distinct=2 with micro-batch 2, global batch 2: the same two grids every step.
    cfg = _cfg(tiny_fill_dir, tmp_path / "run", "data.distinct=2", "train.global_batch_size=2", "train.max_steps=50",
               "optim.lr=1e-2", "lora.rank=16", "lora.alpha=16", "train.checkpoint_every=0")
    losses = fill.train(cfg)["losses"]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last <= 0.5 * first, (first, last)
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").exists()


def test_sigterm_then_rerun_equals_uninterrupted(tiny_fill_dir, tmp_path, monkeypatch):
    # Mixed 1- and 2-row grids -> padded batches with per-sample position ids.
    steps = ["train.max_steps=6", "train.checkpoint_every=100"]
    full = fill.train(_cfg(tiny_fill_dir, tmp_path / "full", *steps))["losses"]

    real_source = fill.grid_source

    def preempted(data_cfg, rank=0, world_size=1):  # SIGTERM while step 3's grids are being read
        for i, grid in enumerate(real_source(data_cfg, rank, world_size)):
            if i == 9:
                os.kill(os.getpid(), signal.SIGTERM)
            yield grid

    monkeypatch.setattr(fill, "grid_source", preempted)
    first = fill.train(_cfg(tiny_fill_dir, tmp_path / "resumed", *steps))
    assert first["last_step"] == 3
    assert CheckpointManager(tmp_path / "resumed", 100).latest().name == "step_00000003"
    monkeypatch.setattr(fill, "grid_source", real_source)
    second = fill.train(_cfg(tiny_fill_dir, tmp_path / "resumed", *steps))
    assert second["last_step"] == 6
    assert first["losses"] + second["losses"] == full  # bitwise: same floats


def test_token_budget_skips_and_counts(tiny_fill_dir, tmp_path):
    # res 32, s = 2: a 1-row grid (2 cells) = 128 tokens, a 2-row grid = 256.
    cfg = _cfg(tiny_fill_dir, tmp_path / "run", "data.max_tokens=128", "train.max_steps=3",
               "train.checkpoint_every=0")
    result = fill.train(cfg)
    used, expected_skipped = 0, 0
    for grid in PhotoGrids(res=32, seed=0, rows=(1, 2)):
        if grid_tokens(grid, 2) > 128:
            expected_skipped += 1
        else:
            used += 1
        if used == 3 * cfg.train.global_batch_size:
            break
    assert expected_skipped > 0
    assert result["skipped_over_budget"] == expected_skipped


def test_nan_loss_stops_with_step_and_task_ids(tiny_fill_dir, tmp_path, monkeypatch):
    real_loss, calls = fill.velocity_loss, {"n": 0}

    def nan_at_step_4(*args):
        calls["n"] += 1
        loss = real_loss(*args)
        return loss * float("nan") if calls["n"] > 6 else loss  # 2 micro-batches per step

    monkeypatch.setattr(fill, "velocity_loss", nan_at_step_4)
    cfg = _cfg(tiny_fill_dir, tmp_path / "run", "train.max_steps=6", "train.checkpoint_every=2")
    with pytest.raises(NonFiniteLossError) as e:
        fill.train(cfg)
    err = e.value
    assert err.step == 4
    assert len(err.task_ids) == 4 and all(t.startswith("photos/") for t in err.task_ids)
    assert "step 4" in str(err) and err.task_ids[0] in str(err)
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step_00000002"]  # the one before the NaN is kept, nothing after it
    assert err.last_checkpoint.name == "step_00000002"


def test_warm_cache_equals_uncached_without_loading_encoders(tiny_fill_dir, tmp_path, monkeypatch):
    steps = ["train.max_steps=2", "train.checkpoint_every=0"]
    plain = fill.train(_cfg(tiny_fill_dir, tmp_path / "plain", *steps))["losses"]
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    cold = fill.train(_cfg(tiny_fill_dir, tmp_path / "cold", cache, *steps))
    assert cold["losses"] == plain and cold["cache_hits"] < 2 * 4  # only grids that repeat by chance

    def must_not_load(*a, **k):
        raise AssertionError("encoder loaded although every latent/prompt is cached")

    monkeypatch.setattr(fill, "load_vae", must_not_load)
    monkeypatch.setattr(fill, "load_text_encoders", must_not_load)
    warm = fill.train(_cfg(tiny_fill_dir, tmp_path / "warm", cache, *steps))
    assert warm["losses"] == plain and warm["cache_hits"] == 2 * 4
