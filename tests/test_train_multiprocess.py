"""Both tiny recipes on two CPU processes (gloo), DDP and FSDP2: ranks draw disjoint tasks, end
with the same weights, a checkpoint saved by the pair resumes to the weights of the
uninterrupted run, validation runs; FSDP matches DDP.

Two launches in all (tests/multiprocess_train.py runs several recipes per launch): one DDP,
one FSDP, each with both recipes, an uninterrupted run and a resumed one.

Why torchrun and not `accelerate launch --cpu --num_processes 2`: accelerate 1.15's CPU
launcher starts one process unless it is given an mpirun hostfile (train.common.distributed
warns when it sees that); torchrun with ACCELERATE_USE_CPU=true is accelerate's MULTI_CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train.common.distributed import tensor_digest

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4  # checkpoints at 2 and 4; the resumed run starts from 2
FILL = ROOT / "configs/train/fill-tiny.yaml"
COGVIDEOX = ROOT / "configs/train/cogvideox-tiny.yaml"


def _launch(tmp: Path, name: str, steps: list, fsdp: bool) -> subprocess.CompletedProcess:
    spec = tmp / f"{name}.json"
    spec.write_text(json.dumps(steps))
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "ACCELERATE_USE_FSDP": "true" if fsdp else "false",
           "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "multiprocess_train.py"), str(spec)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    (tmp / f"{name}.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stderr[-6000:]}"
    return proc


def _runs(tmp: Path, fill_dir, cog_dir, shards, fsdp: bool) -> dict:
    folder, manifest = shards
    data = [f"data.shards={folder}", f"data.manifest={manifest}", "train.tensorboard=false",
            f"train.max_steps={STEPS}", "train.checkpoint_every=2", "train.keep_checkpoints=0",
            # 2 micro-batches of 2 per rank: the no-sync accumulation path runs (DDP no_sync, FSDP2
            # set_requires_gradient_sync) and the FSDP = DDP comparison covers it.
            "train.global_batch_size=8",
            f"validation.every={STEPS}", "validation.steps=1"]
    mode = "fsdp" if fsdp else "ddp"
    out = {k: tmp / mode / k for k in ("fill", "fill_resumed", "cog", "cog_resumed", "fill_bf16")}
    fill = ["fill", "--config", str(FILL), f"model.pretrained={fill_dir}", *data]
    cog = ["cogvideox", "--config", str(COGVIDEOX), f"model.pretrained={cog_dir}", "model.build_tiny=false", *data]
    steps = [fill + [f"train.out_dir={out['fill']}"],
             ["cut", str(out["fill"]), str(out["fill_resumed"]), 2],
             fill + [f"train.out_dir={out['fill_resumed']}"],
             cog + [f"train.out_dir={out['cog']}"],
             ["cut", str(out["cog"]), str(out["cog_resumed"]), 2],
             cog + [f"train.out_dir={out['cog_resumed']}"]]
    if fsdp:  # the paper's dtypes under FSDP: bf16 frozen base, float32 LoRA, bf16 autocast
        steps.append(fill + [f"train.out_dir={out['fill_bf16']}", "model.dtype=bfloat16",
                             "train.mixed_precision=bf16", "train.max_steps=2", "validation.every=0"])
    _launch(tmp, mode, steps, fsdp)
    return out


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, tiny_fill_dir, tiny_cogvideox_dir, annotated_shards):
    return _runs(tmp_path_factory.mktemp("two-process"), tiny_fill_dir, tiny_cogvideox_dir, annotated_shards, False)


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory, tiny_fill_dir, tiny_cogvideox_dir, annotated_shards):
    return _runs(tmp_path_factory.mktemp("two-process"), tiny_fill_dir, tiny_cogvideox_dir, annotated_shards, True)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _final(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{STEPS:08d}" / "trainable.safetensors"))


def _state(run: Path, step: int = STEPS) -> dict:
    return json.loads((run / "checkpoints" / f"step_{step:08d}" / "state.json").read_text())


@pytest.mark.parametrize("recipe", ["fill", "cog"])
def test_ranks_draw_disjoint_tasks_of_their_own_stride(ddp, recipe):
    per_rank = {r: [t for row in _rows(ddp[recipe] / "logs" / f"tasks.rank{r}.jsonl") for t in row["tasks"]]
                for r in (0, 1)}
    assert [row["step"] for row in _rows(ddp[recipe] / "logs" / "tasks.rank0.jsonl")] == list(range(1, STEPS + 1))
    assert per_rank[0] and per_rank[1] and not set(per_rank[0]) & set(per_rank[1])
    for rank, ids in per_rank.items():  # task i of the epoch belongs to rank i mod 2 ("seed-epoch-i")
        assert all(int(t.rsplit("-", 1)[1]) % 2 == rank for t in ids), (rank, ids)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
@pytest.mark.parametrize("recipe", ["fill", "cog"])
def test_both_ranks_end_with_the_same_weights(ddp, fsdp, mode, recipe):
    run = {"ddp": ddp, "fsdp": fsdp}[mode][recipe]
    digests = _state(run)["trainable_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # each rank's own copy (FSDP: gathered)
    assert tensor_digest(_final(run)) == digests[0]
    lora = run / "lora" / ("pytorch_lora_weights.safetensors" if recipe == "fill" else "realgeneral_lora.safetensors")
    assert lora.exists()


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
@pytest.mark.parametrize("recipe", ["fill", "cog"])
def test_checkpoint_of_the_pair_resumes_to_the_uninterrupted_weights(ddp, fsdp, mode, recipe):
    runs = {"ddp": ddp, "fsdp": fsdp}[mode]
    full, resumed = runs[recipe], runs[f"{recipe}_resumed"]
    a, b = _final(full), _final(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise
    full_rows, resumed_rows = _rows(full / "logs" / "metrics.jsonl"), _rows(resumed / "logs" / "metrics.jsonl")
    # The cut copy kept steps 3-4 of the first run in metrics.jsonl: the resumed run replaced them.
    assert [r["step"] for r in resumed_rows] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in resumed_rows] == [r["loss"] for r in full_rows]
    assert "resumed from" in (full.parents[1] / f"{mode}.log").read_text()


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
@pytest.mark.parametrize("recipe", ["fill", "cog"])
def test_validation_runs_on_held_out_tasks(ddp, fsdp, mode, recipe):
    from graph200k.tasks import TaskConfig

    run = {"ddp": ddp, "fsdp": fsdp}[mode][recipe]
    unseen = TaskConfig.load(ROOT / "configs/tasks-unseen.yaml").unseen
    tasks = _rows(run / "validation" / "tasks.jsonl")
    assert tasks and {t["variant"] for t in tasks} <= unseen
    images = sorted(p.name for p in (run / "validation" / f"step_{STEPS:08d}").iterdir())
    assert images == sorted(f"{t['task_id']}{s}" for t in tasks for s in (".png", ".cell.png"))
    rows = _rows(run / "logs" / "metrics.jsonl")
    assert rows[-1]["validation_images"] == 2 * len(tasks)


@pytest.mark.parametrize("recipe", ["fill", "cog"])
def test_fsdp_trains_what_ddp_trains(ddp, fsdp, recipe):
    """Sharded weights, reduce-scattered gradients, the global norm summed over shards: the same
    run to float rounding. (A per-rank clip, or LoRA initialised differently per rank, is not.)"""
    d, f = _rows(ddp[recipe] / "logs" / "metrics.jsonl"), _rows(fsdp[recipe] / "logs" / "metrics.jsonl")
    for a, b in zip(d, f):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    a, b = _final(ddp[recipe]), _final(fsdp[recipe])
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)
    assert (fsdp[recipe] / "checkpoints" / f"step_{STEPS:08d}" / "optimizer.rank1.pt").exists()  # sharded


def test_fsdp_with_a_bf16_base_keeps_float32_lora(fsdp):
    run = fsdp["fill_bf16"]
    rows = _rows(run / "logs" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(0 < r["loss"] < 10 for r in rows)
    trained = load_file(str(run / "checkpoints" / "step_00000002" / "trainable.safetensors"))
    assert {t.dtype for t in trained.values()} == {torch.float32}
    assert any("lora_B" in k and t.abs().sum() > 0 for k, t in trained.items())  # B left zero: it trained
