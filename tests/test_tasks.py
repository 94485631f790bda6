import collections
import json

import pytest

from graph200k.manifest import Manifest
from graph200k.nodes import NODE_NAMES, NODE_TYPES, SLOT_NODE, mask_of
from graph200k.tasks import TaskConfig, TaskError, TaskSampler, variant_name

EXPECTED_FAMILIES = {
    "conditional_generation": 11, "conditional_generation_with_reference": 10,
    "conditional_generation_with_style": 18, "image_generation_with_reference": 1,
    "subject_extraction": 1, "style_transfer": 3, "style_transfer_with_condition": 9,
    "image_editing": 2, "image_editing_with_reference": 2, "dense_prediction": 8,
    "restoration": 32, "restoration_with_reference": 32,
}


def full_manifest(n=40, missing_every=None, test_fraction=0.01):
    """Every stored node type on every sample, except `missing_every` = {node: k}: the
    node is absent from samples whose index is a multiple of k."""
    stored = [n_ for n_, t in NODE_TYPES.items() if not t.online or n_ in ("foreground",
                                                                          "background")]
    recs = []
    for i in range(n):
        nodes = [x for x in stored if not (missing_every and x in missing_every
                                           and i % missing_every[x] == 0)]
        recs.append({"key": f"{i:07d}", "shard": i // 10, "nodes": nodes, "item": "cup",
                     "description": f"description of sample {i}"})
    return Manifest.from_records(recs, test_fraction)


@pytest.fixture(scope="module")
def manifest():
    return full_manifest(40, {"canny": 2, "instantstyle": 3})


def test_default_config_has_12_families_and_129_variants():
    cfg = TaskConfig.load()
    assert {f: len(v) for f, v in cfg.families.items()} == EXPECTED_FAMILIES
    assert len(cfg.variants) == 129
    assert len({v.name for v in cfg.variants}) == 129
    assert cfg.row_counts == (1, 2, 3) and cfg.row_probs == (0.3, 0.4, 0.3)
    cg_ref = {v.nodes[1] for v in cfg.families["conditional_generation_with_reference"]}
    assert "foreground" not in cg_ref
    dense = {v.nodes[1] for v in cfg.families["dense_prediction"]}
    assert dense.isdisjoint({"mask", "foreground", "background"})


def test_same_seed_same_tasks_other_seed_other_tasks(manifest):
    a = [json.dumps(t.to_json()) for t in TaskSampler(manifest, seed=7).take(300)]
    b = [json.dumps(t.to_json()) for t in TaskSampler(manifest, seed=7).take(300)]
    c = [json.dumps(t.to_json()) for t in TaskSampler(manifest, seed=8).take(300)]
    assert a == b and a != c


def test_rows_are_distinct_samples_that_have_every_node(manifest):
    for t in TaskSampler(manifest, seed=1).take(2000):
        keys = [row[0]["key"] for row in t.rows]
        assert len(set(keys)) == len(keys)
        need = mask_of(t.nodes)
        for row in t.rows:
            assert {c["key"] for c in row} == {row[0]["key"]}
            assert manifest.masks[manifest.index_of(row[0]["key"])] & need == need
            assert [c["slot"] for c in row] == t.columns  # one permutation for all rows
            assert all(SLOT_NODE[c["slot"]] == c["node"] for c in row)


def test_columns_permute_conditions_and_keep_the_target_last(manifest):
    sampler = TaskSampler(manifest, seed=2, families=["style_transfer_with_condition"])
    orders = collections.Counter()
    for t in sampler.take(600):
        assert t.columns[-1] == "instantstyle"
        assert sorted(t.columns[:-1]) == sorted(["reference", t.nodes[1], "instantstyle_ref"])
        orders[tuple(c if c in ("reference", "instantstyle_ref") else "cond"
                     for c in t.columns[:-1])] += 1
    assert len(orders) == 6  # all 3! orders of the condition columns occur


def test_row_count_probabilities(manifest):
    tasks = TaskSampler(manifest, seed=3).take(20000)
    freq = collections.Counter(len(t.rows) for t in tasks)
    for rows, p in ((1, 0.3), (2, 0.4), (3, 0.3)):
        assert abs(freq[rows] / len(tasks) - p) < 0.015, freq
    assert all(t.mask_row == len(t.rows) - 1 for t in tasks)


def test_mask_is_last_column_or_reverse_uniform(manifest):
    tasks = TaskSampler(manifest, seed=4, families=["conditional_generation_with_reference"]
                        ).take(20000)  # 3 columns: P(last) = 0.5 + 0.5/3
    cols = collections.Counter(t.mask_col for t in tasks)
    n = len(tasks)
    assert abs(cols[2] / n - (0.5 + 0.5 / 3)) < 0.015, cols
    assert abs(cols[0] / n - 0.5 / 3) < 0.015 and abs(cols[1] / n - 0.5 / 3) < 0.015


def test_families_are_drawn_uniformly_then_variants(manifest):
    tasks = TaskSampler(manifest, seed=5).take(24000)
    fam = collections.Counter(t.family for t in tasks)
    assert len(fam) == 12
    assert all(abs(c / len(tasks) - 1 / 12) < 0.012 for c in fam.values()), fam
    rest = collections.Counter(t.variant for t in tasks if t.family == "restoration")
    assert len(rest) == 32


def test_weights_change_the_family_distribution(manifest):
    cfg = TaskConfig.load()
    cfg.weights = {f: (3.0 if f == "restoration" else 0.0 if f != "subject_extraction" else 1.0)
                   for f in cfg.weights}
    fam = collections.Counter(t.family for t in TaskSampler(manifest, cfg, seed=0).take(4000))
    assert set(fam) == {"restoration", "subject_extraction"}
    assert abs(fam["restoration"] / 4000 - 0.75) < 0.03


def test_unseen_variants_are_held_out_of_training():
    cfg = TaskConfig.load()
    cfg.unseen = frozenset({"reference+depth->target", "depth->target"})
    m = full_manifest(20, test_fraction=0.3)
    train = TaskSampler(m, cfg, seed=0, families=["conditional_generation",
                                                  "conditional_generation_with_reference"])
    assert not {t.variant for t in train.take(3000)} & cfg.unseen
    unseen = TaskSampler(m, cfg, seed=0, split="unseen")
    assert {t.variant for t in unseen.take(200)} == cfg.unseen


def test_unsatisfiable_families_name_the_missing_node_types(source_manifest):
    with pytest.raises(TaskError, match=r"no sample has node types \['background', 'canny'"):
        TaskSampler(source_manifest, seed=0, families=["conditional_generation"])
    s = TaskSampler(source_manifest, seed=0)  # default: unsatisfiable variants left out
    fams = {t.family for t in s.take(500)}
    assert fams == {"image_generation_with_reference", "subject_extraction", "restoration",
                    "restoration_with_reference"}
    assert "canny->target" in {v.name for v in s.unsatisfiable}


def test_unknown_family_is_a_clear_error(manifest):
    with pytest.raises(TaskError, match="unknown task family.*'restore'.*known:"):
        TaskSampler(manifest, families=["restore"])


def test_prompt_content_is_the_query_rows_description(manifest):
    for t in TaskSampler(manifest, seed=9, families=["conditional_generation"]).take(200):
        i = manifest.index_of(t.rows[-1][0]["key"])
        assert t.prompt["content"] is None or manifest.description(i) in t.prompt["content"]
    for t in TaskSampler(manifest, seed=9, families=["dense_prediction"]).take(50):
        assert t.prompt["content"] is None  # the target is not the `target` image


def test_graph_paths_family_samples_enumerated_paths(manifest):
    cfg = TaskConfig.load().with_paths()
    tasks = TaskSampler(manifest, cfg, seed=0, families=["graph_paths"]).take(500)
    assert len({t.variant for t in tasks}) > 100
    for t in tasks:
        assert 2 <= len(t.columns) <= 4


def test_config_errors_name_the_problem(tmp_path):
    bad = tmp_path / "tasks.yaml"
    bad.write_text("families:\n  f:\n    variants:\n      - [cany, target]\n")
    with pytest.raises(ValueError, match="family f: unknown node type 'cany'"):
        TaskConfig.load(bad)
    bad.write_text("famlies: {}\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['famlies'\]"):
        TaskConfig.load(bad)


def test_variant_name():
    assert variant_name(("reference", "canny", "target")) == "reference+canny->target"
    assert len(NODE_NAMES) == 50
