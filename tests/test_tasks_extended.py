"""The optional extended task config: the defaults plus the `bbox` variants."""

import collections
from pathlib import Path

import pytest

from graph200k.manifest import Manifest
from graph200k.nodes import NODE_TYPES
from graph200k.tasks import TaskConfig, TaskSampler

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
EXTENDED = CONFIGS / "tasks-extended.yaml"


def manifest_with(nodes_of_sample, n=12):
    return Manifest.from_records(
        {"key": f"{i:07d}", "shard": 0, "nodes": nodes_of_sample(i), "item": "cup",
         "description": "a cup on a table"} for i in range(n))


def stored_nodes():
    return [n for n, t in NODE_TYPES.items() if not t.online or n in ("foreground",
                                                                      "background")]


def test_defaults_never_use_bbox_and_the_extension_adds_exactly_its_variants():
    default, extended = TaskConfig.load(), TaskConfig.load(EXTENDED)
    assert all("bbox" not in v.nodes for v in default.variants)
    assert len(default.variants) == 129 and len(extended.variants) == 135
    added = {v.name for v in extended.variants} - {v.name for v in default.variants}
    assert added == {"bbox->target", "reference+bbox->target", "bbox->instantstyle",
                     "bbox->reduxstyle", "reference+bbox->instantstyle", "target->bbox"}
    # the defaults come through unchanged: same families, weights, order and settings
    assert extended.weights == default.weights
    for fam, variants in default.families.items():
        assert extended.families[fam][:len(variants)] == variants
    assert (extended.row_probs, extended.prompt, extended.unseen) == \
        (default.row_probs, default.prompt, default.unseen)


def test_extended_config_samples_bbox_tasks():
    m = manifest_with(lambda i: stored_nodes())
    tasks = TaskSampler(m, TaskConfig.load(EXTENDED), seed=3).take(3000)
    names = collections.Counter(t.variant for t in tasks)
    bbox_tasks = [t for t in tasks if "bbox" in t.nodes]
    assert {"bbox->target", "target->bbox", "reference+bbox->target"} <= set(names)
    assert all("bbox" in t.columns for t in bbox_tasks)
    t = next(t for t in bbox_tasks if t.variant == "target->bbox")
    assert t.columns[-1] == "bbox" and all(c["node"] == "bbox" for c in
                                           (row[-1] for row in t.rows))
    # bbox phrases reach the prompt when the task part is kept
    phrases = NODE_TYPES["bbox"].phrases
    assert any(any(p in t.prompt["task"] for p in phrases) for t in bbox_tasks)


def test_bbox_variants_need_samples_with_boxes():
    no_boxes = manifest_with(lambda i: [n for n in stored_nodes() if n != "bbox"])
    sampler = TaskSampler(no_boxes, TaskConfig.load(EXTENDED), seed=0)
    assert {v.name for v in sampler.unsatisfiable} >= {"bbox->target", "target->bbox"}
    assert all("bbox" not in t.nodes for t in sampler.take(500))


def test_include_and_extend_errors_name_the_problem(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("families:\n  a: {variants: [[canny, target]]}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("include: base.yaml\nextend:\n  b: [[hed, target]]\n")
    with pytest.raises(ValueError, match="extend:. names family 'b'"):
        TaskConfig.load(bad)
    bad.write_text("include: base.yaml\nfamilies:\n  a: {variants: [[hed, target]]}\n")
    with pytest.raises(ValueError, match="already defined in base.yaml"):
        TaskConfig.load(bad)
    bad.write_text("include: base.yaml\nextend:\n  a: [[canny, target]]\n")
    with pytest.raises(ValueError, match=r"\['canny->target'\] listed twice"):
        TaskConfig.load(bad)
    bad.write_text("include: bad.yaml\n")
    with pytest.raises(ValueError, match="includes itself"):
        TaskConfig.load(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text("include: base.yaml\nextend:\n  a: [[bbox, target]]\nreverse_mask_prob: 0\n")
    cfg = TaskConfig.load(ok)
    assert [v.name for v in cfg.families["a"]] == ["canny->target", "bbox->target"]
    assert cfg.reverse_mask_prob == 0
