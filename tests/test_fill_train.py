"""train.fill on the tiny model, fed by GridStream from annotated shards: overfitting,
exact resume, token budget, NaN guard, feature cache."""

import itertools
import math
import os
import signal

import pytest

import train.visualcloze.recipe as fill
from graph200k.reader import SampleReader
from graph200k.stream import GridStream
from train.common.checkpoint import CheckpointManager
from train.common.config import load_config
from train.visualcloze.inputs import grid_tokens
from train.common.nan_guard import NonFiniteLossError


def _cfg(tiny_fill_dir, shards, out, *overrides):
    folder, manifest = shards
    return load_config(fill.FillConfig, "configs/train/fill-tiny.yaml", [
        f"model.pretrained={tiny_fill_dir}", f"data.shards={folder}", f"data.manifest={manifest}",
        f"train.out_dir={out}", "train.tensorboard=false", *overrides])


def test_tiny_recipe_trains_from_shards_and_overfits_one_batch(tiny_fill_dir, annotated_shards, tmp_path,
                                                               monkeypatch):
    real_source = fill.grid_source
    fed = []

    def first_two_forever(data_cfg, rank=0, world_size=1):  # the same two shard grids every step
        stream = real_source(data_cfg, rank, world_size)
        assert isinstance(stream, GridStream) and stream.mode == "grid"
        fed.extend(itertools.islice(stream, 2))
        return itertools.cycle(fed)

    monkeypatch.setattr(fill, "grid_source", first_two_forever)
    cfg = _cfg(tiny_fill_dir, annotated_shards, tmp_path / "run", "train.global_batch_size=2", "train.max_steps=50",
               "optim.lr=1e-2", "lora.rank=16", "lora.alpha=16", "train.checkpoint_every=0")
    losses = fill.train(cfg)["losses"]
    assert all(g.task_id.startswith("0-0-") and g.family for g in fed)  # tasks sampled from the shards
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last <= 0.5 * first, (first, last)
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").exists()


def test_sigterm_then_rerun_equals_uninterrupted_without_rereading(tiny_fill_dir, annotated_shards, tmp_path,
                                                                   monkeypatch):
    # Mixed 1- to 3-row grids -> padded batches with per-sample position ids.
    # Validation reads its own fixed tasks at start (tests/test_validation.py); off here, where
    # every read must be the training stream's.
    steps = ["train.max_steps=6", "train.checkpoint_every=100", "validation.every=0"]
    built, reads = [], []
    real_build, real_bytes = GridStream.build, SampleReader.member_bytes
    monkeypatch.setattr(GridStream, "build", lambda self, task: built.append(task.task_id) or real_build(self, task))
    monkeypatch.setattr(SampleReader, "member_bytes",
                        lambda self, key, member, node=None: reads.append((key, member)) or real_bytes(self, key,
                                                                                                    member, node))
    full = fill.train(_cfg(tiny_fill_dir, annotated_shards, tmp_path / "full", *steps))["losses"]
    full_built, full_reads = list(built), list(reads)

    def preempted(self, task):  # SIGTERM while a middle step's grids are being read
        if len(built) == 9:
            os.kill(os.getpid(), signal.SIGTERM)
        built.append(task.task_id)
        return real_build(self, task)

    built.clear(), reads.clear()
    monkeypatch.setattr(GridStream, "build", preempted)
    first = fill.train(_cfg(tiny_fill_dir, annotated_shards, tmp_path / "resumed", *steps))
    cut = first["last_step"]
    assert 1 < cut < 6  # 4 grids a step, plus the over-budget grids skipped
    latest = CheckpointManager(tmp_path / "resumed", 100).latest()
    assert latest.name == f"step_{cut:08d}"
    state = CheckpointManager(tmp_path / "resumed", 100).load(latest).data_state
    assert state["source"] == {"epoch": 0, "next_index": len(built)}
    first_built, first_reads = list(built), list(reads)

    built.clear(), reads.clear()
    monkeypatch.setattr(GridStream, "build", lambda self, task: built.append(task.task_id) or real_build(self, task))
    second = fill.train(_cfg(tiny_fill_dir, annotated_shards, tmp_path / "resumed", *steps))
    assert second["last_step"] == 6
    assert first["losses"] + second["losses"] == full  # bitwise: same floats
    # The resumed stream started at the checkpointed task: nothing before it was built or read.
    assert first_built + built == full_built and built[0] == f"0-0-{state['source']['next_index']}"
    assert first_reads + reads == full_reads


def test_token_budget_skips_and_counts(tiny_fill_dir, annotated_shards, tmp_path):
    # res 32, s = 2: 64 tokens per cell; a budget of 128 keeps 1-row, 2-column grids only.
    cfg = _cfg(tiny_fill_dir, annotated_shards, tmp_path / "run", "data.max_tokens=128", "train.max_steps=3",
               "train.checkpoint_every=0")
    result = fill.train(cfg)  # the recipe as configured: GridStream over the shard folder
    assert len(result["losses"]) == 3 and all(math.isfinite(x) for x in result["losses"])
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").exists()
    used, expected_skipped = 0, 0
    for grid in fill.grid_source(cfg.data):
        if grid_tokens(grid, 2) > 128:
            expected_skipped += 1
        else:
            used += 1
        if used == 3 * cfg.train.global_batch_size:
            break
    assert expected_skipped > 0
    assert result["skipped_over_budget"] == expected_skipped


def test_nan_loss_stops_with_step_and_task_ids(tiny_fill_dir, annotated_shards, tmp_path, monkeypatch):
    real_loss, real_draw, steps = fill.velocity_loss, fill.MicroBatches.draw, {"n": 0}

    def counting_draw(self, accum):  # once per step (its micro-batch count varies with the layouts)
        steps["n"] += 1
        return real_draw(self, accum)

    def nan_at_step_4(*args):
        loss = real_loss(*args)
        return loss * float("nan") if steps["n"] >= 4 else loss

    monkeypatch.setattr(fill.MicroBatches, "draw", counting_draw)
    monkeypatch.setattr(fill, "velocity_loss", nan_at_step_4)
    cfg = _cfg(tiny_fill_dir, annotated_shards, tmp_path / "run", "train.max_steps=6", "train.checkpoint_every=2")
    with pytest.raises(NonFiniteLossError) as e:
        fill.train(cfg)
    err = e.value
    assert err.step == 4
    assert len(err.task_ids) == 4 and all(t.startswith("0-0-") for t in err.task_ids)  # seed-epoch-task
    assert "step 4" in str(err) and err.task_ids[0] in str(err)
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step_00000002"]  # the one before the NaN is kept, nothing after it
    assert err.last_checkpoint.name == "step_00000002"


def test_warm_cache_equals_cold_without_loading_encoders(tiny_fill_dir, annotated_shards, tmp_path, monkeypatch):
    # Families without online degradations: every row is cacheable, so a warm run needs no encoder.
    steps = ["train.max_steps=2", "train.checkpoint_every=0", "data.families=[conditional_generation,dense_prediction]"]
    plain = fill.train(_cfg(tiny_fill_dir, annotated_shards, tmp_path / "plain", *steps))["losses"]
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    cold = fill.train(_cfg(tiny_fill_dir, annotated_shards, tmp_path / "cold", cache, *steps))
    # bf16 entries: the cached run is the plain one up to bf16 rounding of latents and embeddings.
    assert cold["losses"] == pytest.approx(plain, rel=2e-2)

    def must_not_load(*a, **k):
        raise AssertionError("encoder loaded although every latent/prompt is cached")

    monkeypatch.setattr(fill, "load_vae", must_not_load)
    monkeypatch.setattr(fill, "load_text_encoders", must_not_load)
    warm = fill.train(_cfg(tiny_fill_dir, annotated_shards, tmp_path / "warm", cache, *steps))
    assert warm["losses"] == cold["losses"]  # bitwise: a cold run reads what it wrote
    assert warm["cache_hits"] > cold["cache_hits"] and warm["cache_hits"] >= 2 * 4  # >= one row per grid
