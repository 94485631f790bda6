"""The quality stage scores broken variants low and the gates drop them (tiny CLIP / DINOv2)."""

import cv2
import numpy as np
import pytest
from skimage import data

from annotators.base import Sample
from graph200k.quality import QualityGates, allowed_variants
from graph200k.shards import encode_image

pytest.importorskip("transformers")

SIZE = 128


def photo(name):
    image = np.ascontiguousarray(getattr(data, name)()[..., :3])
    return cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    from annotators.quality import Quality
    from annotators.tiny_models import build

    out = build(tmp_path_factory.mktemp("quality-models"), only=["clip", "dino"], log=lambda *_: None)
    return Quality({"clip": str(out["clip"]), "dino": str(out["dino"]), "device": "cpu",
                    "size": 64})


def broken_sample(key="s0"):
    target, ref = photo("astronaut"), photo("chelsea")
    styled = np.clip(target.astype(int) + [30, -10, 20], 0, 255).astype(np.uint8)  # keeps content
    grey = np.full_like(target, 128)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[32:96, 32:96] = 255
    edited = target.copy()
    edited[32:96, 32:96] = photo("coffee")[32:96, 32:96]
    jpg = lambda a: encode_image(a, "jpg")  # noqa: E731
    members = {"target.jpg": jpg(target), "mask.png": encode_image(mask, "png"),
               # instantstyle: 0 good, 1 uniform grey, 2 a copy of its style reference
               "instantstyle.0.jpg": jpg(styled), "instantstyle_ref.0.jpg": jpg(ref),
               "instantstyle.1.jpg": jpg(grey), "instantstyle_ref.1.jpg": jpg(ref),
               "instantstyle.2.jpg": jpg(ref), "instantstyle_ref.2.jpg": jpg(ref),
               # filledit: 0 a real edit of the subject, 1 identical to the target
               "filledit.0.jpg": jpg(edited), "filledit.1.jpg": jpg(target)}
    meta = {"annotations.filledit": {"variants": [{"caption": "a cup of coffee"},
                                                  {"caption": "a cup of tea"}]}}
    return Sample(key, members, meta, seed=0, stage="quality")


def test_broken_variants_are_flagged_scored_low_and_gated_out(stage):
    from pipelines.stage_ops import run_inline

    (outcome,) = run_inline(stage, [broken_sample()])
    assert outcome.ok, outcome.status
    q = outcome.meta
    styles, edits = q["instantstyle"], q["filledit"]
    assert set(styles) == {"0", "1", "2"} and set(edits) == {"0", "1"}
    assert styles["0"]["flags"] == []
    assert "uniform" in styles["1"]["flags"]
    assert "copies_reference" in styles["2"]["flags"]
    # the copy matches its reference's style exactly and keeps the least of the target
    assert styles["2"]["style"] > styles["0"]["style"]
    assert styles["2"]["content"] < styles["0"]["content"]
    assert "unchanged" in edits["1"]["flags"] and edits["0"]["flags"] == []
    assert edits["1"]["subject_change"] < 0.02 < edits["0"]["subject_change"]
    assert edits["0"]["background"] > 0.97  # outside the mask the edit is the target
    assert -1 <= edits["0"]["clip_t"] <= 1

    flags = QualityGates.from_config({"reject_flags": True})
    removed: dict = {}
    assert allowed_variants(flags, "instantstyle", 3, q, removed) == [0]
    assert allowed_variants(flags, "filledit", 2, q, removed) == [0]
    assert removed == {"instantstyle.flags": 2, "filledit.flags": 1}
    # thresholds alone (no flags): content keeps the copy out, subject change the no-op edit
    content = (styles["0"]["content"] + styles["2"]["content"]) / 2
    scores = QualityGates.from_config({"style": {"content_min": content},
                                       "edit": {"subject_change_min": 0.02}})
    assert 2 not in allowed_variants(scores, "instantstyle", 3, q)
    assert allowed_variants(scores, "filledit", 2, q) == [0]


def test_scores_do_not_depend_on_the_batch(stage):
    from pipelines.stage_ops import run_inline

    alone = run_inline(stage, [broken_sample("a")], batch_size=1)[0].meta
    together = run_inline(stage, [broken_sample("b"), broken_sample("a")], batch_size=2)[1].meta
    for node in ("instantstyle", "filledit"):
        for v, scores in alone[node].items():
            for k, value in scores.items():
                if isinstance(value, float):
                    assert together[node][v][k] == pytest.approx(value, abs=2e-4), (node, v, k)
                else:
                    assert together[node][v][k] == value


def test_gates_default_off_and_apply_per_node():
    scores = {"reduxstyle": {"0": {"content": 0.1, "style": 0.9, "flags": ["duplicate"]}},
              "depthedit": {"0": {"background": 0.1, "subject_change": 0.5, "flags": []}}}
    assert not QualityGates.from_config(None).active
    assert allowed_variants(QualityGates(), "reduxstyle", 1, scores) == [0]
    gates = QualityGates.from_config({"style": {"content_min": 0.5},
                                      "edit": {"background_min": 0.9}})
    # content is reported, not gated, for Redux; background is FillEdit's, not DepthEdit's
    assert allowed_variants(gates, "reduxstyle", 1, scores) == [0]
    assert allowed_variants(gates, "depthedit", 1, scores) == [0]
    assert allowed_variants(QualityGates.from_config({"reject_flags": True}), "reduxstyle", 1,
                            scores) == []
    assert allowed_variants(gates, "instantstyle", 2, {}) == [0, 1]  # unscored: drawn


def test_an_unknown_gate_is_a_config_error():
    from graph200k.config import ConfigError

    with pytest.raises(ConfigError, match="content_mn"):
        QualityGates.from_config({"style": {"content_mn": 0.5}})


@pytest.mark.parametrize("name", ["annotate.yaml", "annotate-tiny.yaml"])
def test_the_configs_run_quality_after_every_generative_stage(name):
    from pathlib import Path

    from pipelines.annotate_config import build_stage, dependency_levels, load_config

    config = load_config(Path(__file__).resolve().parent.parent / "configs" / name)
    wanted = ("depth", "instantstyle", "reduxstyle", "filledit", "depthedit", "quality")
    stages = [build_stage(n, config["stages"][n]) for n in wanted]
    levels = [[s.name for s in level] for level in dependency_levels(stages)]
    at = {stage: i for i, level in enumerate(levels) for stage in level}
    assert all(at["quality"] > at[g] for g in ("instantstyle", "reduxstyle", "filledit",
                                               "depthedit")), levels
    stage = stages[-1]
    assert stage.cls(stage.config).options.net_batch >= 1


def test_the_benchmark_skips_the_gpu_mode_without_one_and_other_stages(monkeypatch):
    import argparse
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import models_quality

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = argparse.Namespace(gpu=True, images=2, batch_size=2, stages=[], rounds=1)
    assert models_quality.run(args) == [("quality.gpu", "skipped (no CUDA device)")]
    assert models_quality.run(argparse.Namespace(**{**vars(args), "stages": ["hed"]})) == []
