"""The RealGeneral recipe end to end on the tiny CogVideoX, fed by GridStream(mode="pair") from
annotated shards: learning, resume, SIGTERM, inference."""

from __future__ import annotations

import itertools
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("skimage")

from graph200k.reader import SampleReader  # noqa: E402
from graph200k.stream import GridStream  # noqa: E402
from train.realgeneral.recipe import CogVideoXConfig, build, diffusion_loss, main, pair_source, train  # noqa: E402
from train.common.checkpoint import CheckpointManager  # noqa: E402
from train.common.config import load_config  # noqa: E402
from train.realgeneral.infer import generate  # noqa: E402
from train.realgeneral.infer import main as infer_main  # noqa: E402
from train.realgeneral.encoders import encode_text, load_components, tokenize  # noqa: E402
from train.realgeneral.model import RealGeneralModel  # noqa: E402

TINY_YAML = Path(__file__).resolve().parents[1] / "configs" / "train" / "cogvideox-tiny.yaml"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(annotated_shards):
    folder, manifest = annotated_shards
    return [f"data.shards={folder}", f"data.manifest={manifest}"]


def _cfg(tiny_cogvideox_dir, shards, out_dir, *overrides):
    return load_config(
        CogVideoXConfig, TINY_YAML,
        [f"model.pretrained={tiny_cogvideox_dir}", "model.build_tiny=false", f"train.out_dir={out_dir}", "train.tensorboard=false",
         *shards, *overrides],
    )


def test_tiny_recipe_overfits_one_batch(tiny_cogvideox_dir, shards, tmp_path):
    cfg = _cfg(tiny_cogvideox_dir, shards, tmp_path / "run", "train.max_steps=50", "train.global_batch_size=2",
               "train.checkpoint_every=0")
    source = pair_source(cfg.data, 0, 1)
    assert isinstance(source, GridStream) and source.mode == "pair"
    batch = list(itertools.islice(source, 2))

    def held_out_loss(parts, model):  # same noise and timesteps before and after: no luck involved
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return np.mean([diffusion_loss(parts, model, batch, g).item() for _ in range(8)])

    before = held_out_loss(*build(cfg))
    result = train(cfg, pairs=itertools.cycle(batch))
    after = held_out_loss(result["parts"], result["model"])
    assert after < 0.75 * before, (before, after)  # measured 0.67 -> 0.39
    assert np.mean(result["losses"][-10:]) < np.mean(result["losses"][:10])


def test_sigterm_then_resume_equals_uninterrupted(tiny_cogvideox_dir, shards, tmp_path, monkeypatch):
    # Validation reads its own fixed tasks at start (tests/test_validation.py); off here, where
    # every read must be the training stream's.
    steps = ["train.max_steps=6", "train.checkpoint_every=100", "validation.every=0"]
    built, reads = [], []
    real_build, real_bytes = GridStream.build, SampleReader.member_bytes
    monkeypatch.setattr(SampleReader, "member_bytes",
                        lambda self, key, member, node=None: reads.append(key) or real_bytes(self, key, member, node))

    def record(self, task):
        built.append(task.task_id)
        return real_build(self, task)

    monkeypatch.setattr(GridStream, "build", record)
    full = train(_cfg(tiny_cogvideox_dir, shards, tmp_path / "full", *steps))
    full_built, full_reads = list(built), list(reads)

    def preempted(self, task):  # micro_batch 2 x grad_accum 2 = 4 pairs a step: SIGTERM in step 3
        if len(built) == 9:
            os.kill(os.getpid(), signal.SIGTERM)
        return record(self, task)

    built.clear(), reads.clear()
    monkeypatch.setattr(GridStream, "build", preempted)
    cut = _cfg(tiny_cogvideox_dir, shards, tmp_path / "cut", *steps)
    first = train(cut)
    assert first["stopped"] and first["step"] == 3
    saved = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert saved == ["step_00000003"] and not (tmp_path / "cut" / "lora").exists()
    resumed = CheckpointManager(tmp_path / "cut", every=0).load(tmp_path / "cut" / "checkpoints" / saved[0])
    assert resumed.step == 3
    assert resumed.data_state["pairs_consumed"] == 12 and resumed.data_state["consumed"] == 12
    assert resumed.data_state["source"] == {"epoch": 0, "next_index": 12}
    first_built, first_reads = list(built), list(reads)

    built.clear(), reads.clear()
    monkeypatch.setattr(GridStream, "build", record)
    second = train(cut)  # the same command again: resumes at step 3
    assert second["step"] == 6 and len(second["losses"]) == 3
    # The stream restarted at task 12: tasks 0-11 were neither built nor read again.
    assert built[0] == "0-0-12" and first_built + built == full_built and first_reads + reads == full_reads
    np.testing.assert_allclose(second["losses"], full["losses"][3:], rtol=1e-6)
    a, b = full["model"].trainable_state_dict(), second["model"].trainable_state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)
    assert second["model"].uce.counts["samples"] == full["model"].uce.counts["samples"] == 24


def test_cli_trains_then_inference_uses_the_saved_adapter(tiny_cogvideox_dir, shards, annotated_shards, tmp_path):
    out = tmp_path / "run"
    main(["--config", str(TINY_YAML), f"model.pretrained={tiny_cogvideox_dir}", "model.build_tiny=false", f"train.out_dir={out}",
          "train.max_steps=4", "train.tensorboard=false", *shards])
    rows = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"loss", "lr", "grad_norm", "samples_per_s", "peak_mem_gb", "keyword_missing"} <= rows[0].keys()

    parts = load_components(str(tiny_cogvideox_dir))
    trained = RealGeneralModel.from_adapter(parts.pop("transformer"), out / "lora")
    lora_b = trained.transformer.transformer_blocks[0].attn1.to_q.lora_B["default"].weight
    assert lora_b.abs().sum() > 0  # four steps moved the zero-initialised B

    folder, manifest = annotated_shards
    condition = SampleReader(folder, manifest).fetch("0000000", "canny")  # 64 x 64 px
    condition = np.ascontiguousarray(condition[::2, ::2])
    args = dict(prompt="a photo of the astronaut", subject="astronaut", task="canny", steps=4, seed=3)
    image = generate(parts, trained, condition, **args)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert np.array_equal(image, generate(parts, trained, condition, **args))  # seeded
    base = RealGeneralModel(load_components(str(tiny_cogvideox_dir))["transformer"], trained.uce.tasks, "A")
    assert not np.array_equal(image, generate(parts, base, condition, **args))  # the adapter matters

    from PIL import Image

    Image.fromarray(condition).save(tmp_path / "condition.png")
    infer_main(["--model", str(tiny_cogvideox_dir), "--lora", str(out / "lora"), "--condition", str(tmp_path / "condition.png"),
                "--prompt", args["prompt"], "--subject", "astronaut", "--task", "canny", "--steps", "4",
                "--seed", "3", "--out", str(tmp_path / "target.png")])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "target.png")), image)
    # Frame 1 straight from the shards: sample 0000000's canny, with the prompt, subject and
    # task name the training stream gives a canny -> target pair.
    infer_main(["--model", str(tiny_cogvideox_dir), "--lora", str(out / "lora"), "--shards", str(folder), "--manifest",
                str(manifest), "--key", "0000000", "--resolution", "32", "--steps", "2",
                "--out", str(tmp_path / "from_shards.png")])
    assert np.asarray(Image.open(tmp_path / "from_shards.png")).shape == (32, 32, 3)
    with pytest.raises(SystemExit):  # --key without --shards names what is missing
        infer_main(["--model", str(tiny_cogvideox_dir), "--lora", str(out / "lora"), "--key", "0000000", "--out", "x.png"])


# ---------------------------------------------------------------------------- caption dropout
def test_caption_dropout_is_seeded_per_pair_and_near_its_share():
    from train.realgeneral.recipe import dropped_captions

    drops = dropped_captions(0, 0, 0, 4000, 0.1)
    assert 0.08 < sum(drops) / len(drops) < 0.12
    assert dropped_captions(0, 0, 1000, 10, 0.1) == drops[1000:1010]  # a resumed run draws the same
    assert dropped_captions(0, 1, 0, 4000, 0.1) != drops  # ranks draw their own
    assert not any(dropped_captions(0, 0, 0, 100, 0.0))


def test_dropped_pairs_train_what_cfg_guides_against(tiny_cogvideox_dir, shards, tmp_path):
    """A dropped pair's transformer sees the empty prompt (the negative of train.infer_cogvideox)
    while UCE still reads the pair's prompt and subject, as in inference's unconditional branch."""
    cfg = _cfg(tiny_cogvideox_dir, shards, tmp_path / "run")
    parts, model = build(cfg)
    pairs = list(itertools.islice(pair_source(cfg.data, 0, 1), 2))
    seen = {}
    model.transformer.register_forward_pre_hook(
        lambda m, args, kwargs: seen.update(context=kwargs["encoder_hidden_states"]), with_kwargs=True)
    model.uce.register_forward_pre_hook(lambda m, args: seen.update(uce=args[0]))
    text_len = model.transformer.config.max_text_seq_length
    prompts = encode_text(parts["text_encoder"], tokenize(parts["tokenizer"], [p.prompt for p in pairs], text_len))
    empty = encode_text(parts["text_encoder"], tokenize(parts["tokenizer"], [""], text_len))[0]
    with torch.no_grad():
        dropped = diffusion_loss(parts, model, pairs, torch.Generator().manual_seed(0), drop=[True, False])
        kept = diffusion_loss(parts, model, pairs, torch.Generator().manual_seed(0), drop=[False, False])
    assert torch.equal(seen["uce"], prompts)  # UCE: the prompts, dropped or not
    assert torch.equal(seen["context"][1], prompts[1])
    assert dropped != kept
    with torch.no_grad():
        diffusion_loss(parts, model, pairs, torch.Generator().manual_seed(0), drop=[True, False])
    assert torch.equal(seen["context"][0], empty) and not torch.equal(seen["context"][0], prompts[0])


def test_recipe_drops_captions_at_the_configured_share(tiny_cogvideox_dir, shards, tmp_path):
    from train.realgeneral.recipe import dropped_captions

    cfg = _cfg(tiny_cogvideox_dir, shards, tmp_path / "run", "train.max_steps=3", "train.checkpoint_every=0",
               "validation.every=0", "realgeneral.caption_dropout=0.5")
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["captions_dropped"] == sum(dropped_captions(0, 0, 0, 3 * 4, 0.5)) > 0
    assert CogVideoXConfig().realgeneral.caption_dropout == 0.1  # the recipe's default



