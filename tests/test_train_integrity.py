"""Bad input and damaged state in both trainers: each gets a clear error (or a warned fallback),
never a traceback from deep inside, an untrained LoRA or a silently shorter run. DataLoader
workers give the same batches as the training loop itself and resume exactly."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

import train.realgeneral.recipe as cogvideox
import train.visualcloze.recipe as fill
from graph200k.config import ConfigError
from graph200k.shards import list_shards
from train.common.checkpoint import CheckpointManager, CheckpointWarning
from train.common.config import load_config
from train.common.loader import TooManySkipped

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fill(tiny_fill_dir, shards, out, *overrides):
    folder, manifest = shards
    return load_config(fill.FillConfig, ROOT / "configs/train/fill-tiny.yaml", [
        f"model.pretrained={tiny_fill_dir}", f"data.shards={folder}", f"data.manifest={manifest}",
        f"train.out_dir={out}", "train.tensorboard=false", "validation.every=0", *overrides])


def _cog(tiny_cogvideox_dir, shards, out, *overrides):
    folder, manifest = shards
    return load_config(cogvideox.CogVideoXConfig, ROOT / "configs/train/cogvideox-tiny.yaml", [
        f"model.pretrained={tiny_cogvideox_dir}", "model.build_tiny=false", f"data.shards={folder}",
        f"data.manifest={manifest}", f"train.out_dir={out}", "train.tensorboard=false", "validation.every=0",
        *overrides])


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def damaged_shards(annotated_shards, tmp_path_factory):
    """The annotated shards with shard 1 overwritten by junk: the manifest still lists its samples
    (the runs below pass data.manifest_check=ignore: they test what a run does when a shard breaks
    after the manifest check, e.g. mid-run)."""
    folder, manifest = annotated_shards
    copy = tmp_path_factory.mktemp("damaged") / "shards"
    shutil.copytree(folder, copy)
    list_shards(copy)[1].write_bytes(b"this is not a tar archive" * 100)
    return copy, manifest


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("recipe", ["fill", "cogvideox"])
@pytest.mark.parametrize("override, message", [
    ("data.micro_batch_size=0", "data.micro_batch_size=0: must be an integer >= 1"),
    ("data.micro_batch_size=-2", "data.micro_batch_size=-2: must be an integer >= 1"),
    ("train.max_steps=-1", "train.max_steps=-1: must be an integer >= 1"),
    ("train.max_steps=0", "train.max_steps=0: must be an integer >= 1"),
    ("train.global_batch_size=0", "train.global_batch_size=0: must be an integer >= 1"),
    ("train.global_batch_size=5", "train.global_batch_size=5: must be a multiple of data.micro_batch_size x "
                                  "processes = 2 x 1 = 2"),
    ("train.checkpoint_every=-5", "train.checkpoint_every=-5: must be an integer >= 0"),
    ("data.num_workers=-1", "data.num_workers=-1: must be an integer >= 0"),
    ("data.max_skipped_share=1.5", "data.max_skipped_share=1.5: must be a share between 0 and 1"),
    ("data.res=0", "data.res=0: must be an integer >= 16"),
    ("optim.lr=0", "optim.lr=0.0: must be > 0"),
    ("lora.rank=0", "lora.rank=0: must be an integer >= 1"),
    ("validation.every=-1", "validation.every=-1: must be an integer >= 0"),
])
def test_nonsense_sizes_are_config_errors_before_anything_is_written(recipe, override, message, tiny_fill_dir,
                                                                      tiny_cogvideox_dir, annotated_shards, tmp_path):
    cfg = (_fill(tiny_fill_dir, annotated_shards, tmp_path / "run", override) if recipe == "fill"
           else _cog(tiny_cogvideox_dir, annotated_shards, tmp_path / "run", override))
    with pytest.raises(ConfigError) as e:
        (fill if recipe == "fill" else cogvideox).train(cfg)
    assert message in str(e.value)
    assert not (tmp_path / "run").exists()  # no config.yaml, no checkpoint, no untrained LoRA


def test_recipe_specific_values_are_config_errors(tiny_fill_dir, tiny_cogvideox_dir, annotated_shards, tmp_path):
    with pytest.raises(ConfigError, match="realgeneral.caption_dropout=1.0: must be a share in"):
        cogvideox.train(_cog(tiny_cogvideox_dir, annotated_shards, tmp_path, "realgeneral.caption_dropout=1.0"))
    with pytest.raises(ConfigError, match="realgeneral.mask_variant='D': must be one of A, B, C, none"):
        cogvideox.train(_cog(tiny_cogvideox_dir, annotated_shards, tmp_path, "realgeneral.mask_variant=D"))
    with pytest.raises(ConfigError, match="objective.loss_on='cell': must be 'grid'"):
        fill.train(_fill(tiny_fill_dir, annotated_shards, tmp_path, "objective.loss_on=cell"))
    with pytest.raises(ConfigError, match="data.max_tokens=-1: must be >= 0"):
        fill.train(_fill(tiny_fill_dir, annotated_shards, tmp_path, "data.max_tokens=-1"))


@pytest.mark.parametrize("recipe", ["fill", "cogvideox"])
def test_missing_shards_or_manifest_name_the_path(recipe, tiny_fill_dir, tiny_cogvideox_dir, annotated_shards,
                                                  tmp_path):
    make = _fill if recipe == "fill" else _cog
    run = (fill if recipe == "fill" else cogvideox).train
    model = tiny_fill_dir if recipe == "fill" else tiny_cogvideox_dir
    folder, manifest = annotated_shards
    with pytest.raises(FileNotFoundError, match=f"shard folder {tmp_path / 'nope'} does not exist"):
        run(make(model, (tmp_path / "nope", manifest), tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"shard folder {tmp_path / 'empty'} holds no shards"):
        run(make(model, (tmp_path / "empty", manifest), tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match=f"manifest {tmp_path / 'm.parquet'} does not exist: build it with "
                                                "python -m graph200k.manifest"):
        run(make(model, (folder, tmp_path / "m.parquet"), tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_torchrun_without_distributed_accelerate_says_what_to_set():
    from accelerate import Accelerator

    from train.common.distributed import LaunchError, check_launch

    acc = Accelerator(cpu=True)  # what plain `torchrun` gives on CPU: one process per rank, not distributed
    with pytest.raises(LaunchError, match="WORLD_SIZE=2 but accelerate runs this process on its own.*"
                                          "set ACCELERATE_USE_CPU=true"):
        check_launch(acc, {"WORLD_SIZE": "2", "RANK": "1"})
    check_launch(acc, {"WORLD_SIZE": "1"})  # one process is fine
    with pytest.warns(UserWarning, match=r"accelerate launch --cpu --num_processes N started ONE process"):
        check_launch(acc, {"MASTER_ADDR": "127.0.0.1", "ACCELERATE_USE_CPU": "True"})


def test_shipped_fsdp_config_passes_and_unsupported_fsdp_settings_are_named(monkeypatch):
    """The accelerate config as `accelerate launch` turns it into environment variables, then
    into accelerate's FSDP plugin, then through the recipes' own check."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    from train.common.distributed import LaunchError, fsdp_settings

    def plugin(config: Path, **extra):
        args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "train.fill"])
        env = prepare_multi_gpu_env(_validate_launch_command(args)[0])
        env = {**{k: v for k, v in env.items() if k.startswith(("FSDP_", "ACCELERATE_USE_FSDP"))}, **extra}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return FullyShardedDataParallelPlugin(), env

    shipped, env = plugin(ROOT / "configs/accelerate/8gpu-fsdp.yaml")
    assert shipped.fsdp_version == 2 and fsdp_settings(shipped, env) is True
    with pytest.raises(LaunchError, match="fsdp_cpu_ram_efficient_loading must be false"):
        fsdp_settings(shipped, {**env, "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"})
    v1 = copy.copy(shipped)  # (accelerate builds an FSDP1 plugin only where a GPU is)
    v1.fsdp_version = 1
    with pytest.raises(LaunchError, match="fsdp_version 1 is not supported"):
        fsdp_settings(v1, env)


def test_global_clip_matches_torch_on_one_process():
    from accelerate import Accelerator

    from train.common.distributed import Parallel

    torch.manual_seed(0)
    ours, theirs = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(2)], None
    for p in ours:
        p.grad = torch.randn_like(p) * 3
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for p, q in zip(theirs, ours):
        p.grad = q.grad.clone()
    norm = Parallel(Accelerator(cpu=True), {}).clip_grad_norm(ours, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert norm == pytest.approx(float(expected), rel=1e-6) and norm > 1
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.grad, q.grad)


# ---------------------------------------------------------------------------- damaged state
def test_truncated_checkpoint_falls_back_and_stray_folders_and_metrics_do_not_repeat(tiny_fill_dir,
                                                                                    annotated_shards, tmp_path):
    steps = ["train.max_steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=0"]
    run = tmp_path / "run"
    first = fill.train(_fill(tiny_fill_dir, annotated_shards, run, *steps))
    lora = (run / "lora" / "pytorch_lora_weights.safetensors").read_bytes()
    ckpts = run / "checkpoints"
    weights = ckpts / "step_00000004" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a crash mid-copy
    (ckpts / "notes").mkdir()
    (ckpts / "step_best").mkdir()
    shutil.rmtree(run / "lora")
    with pytest.warns(CheckpointWarning) as said:
        again = fill.train(_fill(tiny_fill_dir, annotated_shards, run, *steps))
    messages = [str(w.message) for w in said]
    assert any("step_00000004 is unreadable" in m and "trainable.safetensors" in m
               and "resuming from step_00000002 instead" in m for m in messages), messages
    assert any("notes: not a checkpoint" in m for m in messages) and any("step_best" in m for m in messages)
    assert again["losses"] == first["losses"][2:]  # steps 3 and 4 again, from step 2's state
    assert (run / "lora" / "pytorch_lora_weights.safetensors").read_bytes() == lora
    assert (ckpts / "step_00000004.unreadable").is_dir() and (ckpts / "step_00000004").is_dir()
    assert [r["step"] for r in _rows(run / "logs" / "metrics.jsonl")] == [1, 2, 3, 4]  # once each
    assert [r["step"] for r in _rows(run / "logs" / "tasks.rank0.jsonl")] == [1, 2, 3, 4]


def test_the_only_checkpoint_unreadable_starts_afresh_with_a_warning(tmp_path):
    manager = CheckpointManager(tmp_path, every=1)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    manager.save(1, dict(model.state_dict()), optimizer, data_state={"next": 3})
    (tmp_path / "checkpoints" / "step_00000001" / "optimizer.pt").write_bytes(b"\0" * 10)
    with pytest.warns(CheckpointWarning, match=r"optimizer.pt.*no older checkpoint: starting afresh"):
        assert manager.resume() is None
    manager.save(2, dict(model.state_dict()), optimizer)
    weights = tmp_path / "checkpoints" / "step_00000002" / "trainable.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte of a weight flipped: only the recorded sha256 notices
    weights.write_bytes(bytes(data))
    with pytest.warns(CheckpointWarning, match="sha256 differs from state.json"):
        assert manager.resume() is None


@pytest.mark.parametrize("recipe", ["fill", "cogvideox"])
def test_too_many_skipped_tasks_fail_the_run_naming_the_shards(recipe, damaged_shards, tiny_fill_dir,
                                                               tiny_cogvideox_dir, tmp_path):
    make = _fill if recipe == "fill" else _cog
    train = (fill if recipe == "fill" else cogvideox).train
    model = tiny_fill_dir if recipe == "fill" else tiny_cogvideox_dir
    steps = ["train.max_steps=3", "train.checkpoint_every=0"]
    with pytest.raises(TooManySkipped) as e:
        train(make(model, damaged_shards, tmp_path / "strict", *steps, "data.manifest_check=ignore", "data.max_skipped_share=0.2"))
    message = str(e.value)
    assert f"from {damaged_shards[0]}" in message and "shard_unreadable" in message
    assert "> data.max_skipped_share=0.2" in message
    assert not (tmp_path / "strict" / "lora").exists()
    # Tolerated: the skips are counted in the metrics and the result.
    result = train(make(model, damaged_shards, tmp_path / "lenient", *steps, "data.manifest_check=ignore", "data.max_skipped_share=1"))
    rows = _rows(tmp_path / "lenient" / "logs" / "metrics.jsonl")
    assert rows[-1]["skipped_tasks"] == sum(result["skipped_tasks"].values()) > 0
    assert set(result["skipped_tasks"]) == {"shard_unreadable"}
    assert rows[-1]["tasks_seen"] > rows[-1]["skipped_tasks"]


# ---------------------------------------------------------------------------- DataLoader workers
def test_fill_workers_give_the_same_batches_and_resume_exactly(tiny_fill_dir, damaged_shards, tmp_path,
                                                               monkeypatch):
    # Damaged shards: skipped tasks are where worker streams could drift out of step.
    steps = ["train.max_steps=4", "train.checkpoint_every=100", "data.max_skipped_share=1"]
    inline = fill.train(_fill(tiny_fill_dir, damaged_shards, tmp_path / "w0", *steps, "data.manifest_check=ignore"))
    workers = fill.train(_fill(tiny_fill_dir, damaged_shards, tmp_path / "w2", *steps, "data.manifest_check=ignore", "data.num_workers=2"))
    assert inline["skipped_tasks"] and workers["skipped_tasks"] == inline["skipped_tasks"]
    assert workers["losses"] == inline["losses"]  # bitwise
    assert _rows(tmp_path / "w2" / "logs" / "tasks.rank0.jsonl") == _rows(tmp_path / "w0" / "logs" / "tasks.rank0.jsonl")

    real_check = fill.check_finite

    def preempted(loss, step, *args):  # SIGTERM in step 2, from the training process
        if step == 2:  # (a step's micro-batch count varies: grids are grouped by layout)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_check(loss, step, *args)

    monkeypatch.setattr(fill, "check_finite", preempted)
    cut = fill.train(_fill(tiny_fill_dir, damaged_shards, tmp_path / "cut", *steps, "data.manifest_check=ignore", "data.num_workers=2"))
    assert cut["last_step"] == 2
    state = CheckpointManager(tmp_path / "cut", 100).read(tmp_path / "cut" / "checkpoints" / "step_00000002")
    assert state.data_state["source"]["next_index"] == state.data_state["consumed"]  # one item per position
    monkeypatch.setattr(fill, "check_finite", real_check)
    rest = fill.train(_fill(tiny_fill_dir, damaged_shards, tmp_path / "cut", *steps, "data.manifest_check=ignore", "data.num_workers=2",
                            "data.persistent_workers=false"))
    assert cut["losses"] + rest["losses"] == inline["losses"]
    assert rest["skipped_tasks"] == inline["skipped_tasks"]  # counts carried over the resume


def test_cogvideox_workers_give_the_same_batches(tiny_cogvideox_dir, annotated_shards, tmp_path):
    steps = ["train.max_steps=2", "train.checkpoint_every=0"]
    inline = cogvideox.train(_cog(tiny_cogvideox_dir, annotated_shards, tmp_path / "w0", *steps))
    workers = cogvideox.train(_cog(tiny_cogvideox_dir, annotated_shards, tmp_path / "w2", *steps,
                                   "data.num_workers=2"))
    assert workers["losses"] == inline["losses"]
    assert _rows(tmp_path / "w2" / "logs" / "tasks.rank0.jsonl") == _rows(tmp_path / "w0" / "logs" / "tasks.rank0.jsonl")
