"""Every shipped training config fits an 80 GB card: ESTIMATES from fake tensors (tests/memory_model.py)
of one worst-case micro-batch at real size, until a GPU run measures them.

The measurements behind these tests are cached per session (the same fake runs serve the
DDP, single-GPU and docs checks); together they take well under a minute on 2 quiet cores.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import memory_model as mm

LIMIT = mm.LIMIT_GIB * mm.GIB
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def _explain(peak: mm.Peak) -> str:
    return ", ".join(f"{name} {value / mm.GIB:.1f}" for name, value in peak.parts) + f" = {peak.gib:.1f} GiB"


@pytest.mark.parametrize("launcher", mm.LAUNCHERS)
@pytest.mark.parametrize("recipe", ["fill", "cogvideox"])
def test_shipped_config_fits_an_80gb_card(recipe, launcher):
    data, resident = mm.shipped(recipe)
    peak = mm.config_peak(recipe, launcher, data, resident)
    assert peak.total * (1 + mm.EXTRAPOLATION_TOLERANCE) < LIMIT, \
        f"{recipe} under configs/accelerate/{launcher}.yaml: {_explain(peak)}"
    # The pieces the estimate must hold, so that a tracker that lost one cannot pass: the
    # AdamW moments are twice the float32 LoRA (sharded 8 ways under FSDP).
    shards = mm.WORLD if launcher == "8gpu-fsdp" else 1
    opt = sum(v for k, v in peak.parts if k.lower() == "optstate")
    assert opt == pytest.approx(2 * mm.trainable_bytes(recipe) / shards, rel=0.05)
    assert peak.part("encoders") == mm.encoder_bytes(recipe) * resident


def test_fill_ddp_bucket_views_save_a_copy_of_the_lora_gradients():
    """The issue's DDP figure: the bucket copy of 1.39 B float32 LoRA gradients is ~5 GiB
    (the launch sets gradient_as_bucket_view: tests/test_train_precision.py)."""
    data, resident = mm.shipped("fill")
    views = mm.config_peak("fill", "8gpu-ddp", data, resident)
    copies = mm.config_peak("fill", "8gpu-ddp", data, resident, bucket_view=False)
    assert copies.total - views.total == mm.trainable_bytes("fill") > 5 * mm.GIB
    assert mm.trainable_bytes("fill") == pytest.approx(1.39e9 * 4, rel=0.01)  # the parameter count


def test_fsdp_holds_less_than_ddp():
    data, resident = mm.shipped("fill")
    fsdp = mm.config_peak("fill", "8gpu-fsdp", data, resident)
    ddp = mm.config_peak("fill", "8gpu-ddp", data, resident)
    # The bf16 base (~22 GiB) and the LoRA's gradients and moments are sharded 8 ways.
    assert ddp.total - fsdp.total > 20 * mm.GIB, (_explain(ddp), _explain(fsdp))


def test_fill_without_gradient_checkpointing_does_not_fit():
    """What the issue says: the activations of 57 blocks at 2 x 7424 tokens exceed the card."""
    data, resident = mm.shipped("fill")
    peak = mm.config_peak("fill", "8gpu-ddp", data, resident, checkpointing=False)
    assert peak.total > LIMIT, _explain(peak)


def test_docs_table_is_the_model_output():
    text = (ROOT / "docs" / "training.md").read_text()
    assert mm.table() in text, "docs/training.md's memory table is stale: PYTHONPATH=. python tests/memory_model.py"
    assert re.search(r"estimate", text[text.index(mm.table()) - 600:text.index(mm.table())], re.I)


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True])
def test_extrapolation_matches_a_full_depth_run(fsdp):
    """The 1-2 block extrapolation against the whole 19 + 38 block FLUX.1-Fill (minutes)."""
    data, _ = mm.shipped("fill")
    estimate = mm.fill_estimate(data["micro_batch_size"], data["max_tokens"], fsdp)
    with mm.fake_world() if fsdp else _nothing():
        full = mm.fill_peak(mm.FLUX_FILL["num_layers"], mm.FLUX_FILL["num_single_layers"],
                            micro_batch=data["micro_batch_size"], tokens=data["max_tokens"],
                            fsdp_world=mm.WORLD if fsdp else None)
    assert abs(estimate.total - full.total) <= mm.EXTRAPOLATION_TOLERANCE * full.total, \
        (_explain(estimate), _explain(full))


def _nothing():
    import contextlib

    return contextlib.nullcontext()
