import json

import pytest

from graph200k import sample_tasks
from graph200k.manifest import Manifest
from graph200k.splits import TEST, TRAIN, split_column, split_of
from graph200k.tasks import TaskError, TaskSampler


def records(n):
    return [{"key": f"{i:07d}", "shard": i // 10, "nodes": ["target", "reference", "canny"],
             "item": "cup", "description": f"a cup {i}"} for i in range(n)]


def test_split_is_a_stable_function_of_the_key_near_the_fraction():
    keys = [f"{i:07d}" for i in range(20000)]
    col = split_column(keys, 0.01)
    share = (col == TEST).mean()
    assert 0.008 < share < 0.012
    # the same key lands in the same split whatever else exists, in any order
    assert [split_of(k, 0.01) for k in keys[::-1][:500]] == list(col[::-1][:500])
    # a larger fraction only moves keys from train to test, never back
    wider = split_column(keys, 0.05)
    assert all(w == TEST for c, w in zip(col, wider) if c == TEST)
    with pytest.raises(ValueError, match="test fraction"):
        split_of("0000001", 1.5)


def test_manifest_saves_and_loads_the_split(tmp_path):
    m = Manifest.from_records(records(200), test_fraction=0.1)
    assert set(m.splits) == {TRAIN, TEST}
    back = Manifest.load(m.save(tmp_path / "m.parquet"))
    assert list(back.splits) == list(m.splits)
    # an older manifest without the column gets the same labels from its keys (default 1%)
    t = m.to_table().drop(["split"])
    import pyarrow.parquet as pq

    pq.write_table(t, tmp_path / "old.parquet")
    old = Manifest.load(tmp_path / "old.parquet")
    assert list(old.splits) == list(split_column(old.keys.to_pylist()))


def test_sampler_train_excludes_test_samples_and_test_draws_only_them():
    m = Manifest.from_records(records(60), test_fraction=0.2)
    test_keys = {m.key(i) for i in range(len(m)) if m.splits[i] == TEST}
    assert 3 <= len(test_keys) < 30
    keys = lambda tasks: {c["key"] for t in tasks for row in t.rows for c in row}
    train = TaskSampler(m, seed=0, families=["conditional_generation"]).take(300)
    test = TaskSampler(m, seed=0, families=["conditional_generation"], split="test").take(100)
    assert not keys(train) & test_keys
    assert keys(test) <= test_keys


def test_no_test_samples_is_a_clear_error():
    m = Manifest.from_records(records(5), test_fraction=0.0)
    with pytest.raises(TaskError, match="no sample in split 'test'.*--test-fraction"):
        TaskSampler(m, seed=0, split="test")


def test_sample_tasks_cli_split_test(tmp_path):
    m = Manifest.from_records(records(60), test_fraction=0.2)
    path = m.save(tmp_path / "m.parquet")
    out = tmp_path / "t.jsonl"
    assert sample_tasks.main(["--manifest", str(path), "--num", "20", "--split", "test",
                              "--families", "conditional_generation", "--out", str(out)]) == 0
    test_keys = {m.key(i) for i in range(len(m)) if m.splits[i] == TEST}
    for line in out.read_text().splitlines():
        assert {c["key"] for row in json.loads(line)["rows"] for c in row} <= test_keys


def test_both_panels_of_a_row_always_land_in_the_same_split():
    from graph200k.splits import split_unit
    from graph200k.subjects200k import row_key

    rows = range(20000)
    one_panel = split_column([row_key(r) for r in rows], 0.02)
    left = split_column([row_key(r, 0) for r in rows], 0.02)
    right = split_column([row_key(r, 1) for r in rows], 0.02)
    assert (left == right).all()
    # one-panel keys (the default `--panels left`) keep the split they had: their row's
    assert (left == one_panel).all()
    assert 0.015 < (left == TEST).mean() < 0.025
    assert split_unit(row_key(42, 1)) == row_key(42) == "0000042"
    # keys of another form are their own unit
    assert split_unit("0000042_2") == "0000042_2" and split_unit("photo_0a") == "photo_0a"


def test_keys_from_panels_both_keep_a_test_target_out_of_training():
    """Through the real row reader: every test target's other panel (its `reference`) is a
    test sample too, so training never sees a test target, not even as a reference."""
    from graph200k import fixtures
    from graph200k.subjects200k import row_to_samples

    samples = [s for i, row in enumerate(fixtures.make_rows(6))
               for s in row_to_samples(row, i * 997, panels="both")]
    assert len(samples) == 12
    recs = [{"key": s["__key__"], "shard": 0, "nodes": ["target", "reference", "canny"]}
            for s in samples]
    by_row = {}
    m = Manifest.from_records(recs, test_fraction=0.5)
    for i in range(len(m)):
        by_row.setdefault(samples[i]["meta"]["row"], set()).add(m.splits[i])
    assert all(len(s) == 1 for s in by_row.values()), by_row
    assert {next(iter(s)) for s in by_row.values()} == {TRAIN, TEST}  # both splits occur


def test_unseen_tasks_query_held_out_samples_only():
    """An unseen variant's nodes were trained on: a query on a training sample would score a
    target the model has learnt (as the target of other tasks). Every row of an unseen task,
    the query above all, is a held-out sample; training never draws one of them."""
    from graph200k.tasks import TaskConfig

    cfg = TaskConfig.load()
    cfg.unseen = frozenset({"canny->target"})
    m = Manifest.from_records(records(60), test_fraction=0.2)
    test_keys = {m.key(i) for i in range(len(m)) if m.splits[i] == TEST}
    unseen = TaskSampler(m, cfg, seed=0, split="unseen").take(200)
    assert {t.variant for t in unseen} == {"canny->target"}
    assert {t.rows[-1][0]["key"] for t in unseen} <= test_keys
    assert {c["key"] for t in unseen for row in t.rows for c in row} <= test_keys
    train = TaskSampler(m, cfg, seed=0, families=["image_generation_with_reference",
                                                  "dense_prediction"]).take(300)
    assert "target->canny" in {t.variant for t in train}
    assert not {c["key"] for t in train for row in t.rows for c in row} & test_keys
    no_test = Manifest.from_records(records(5), test_fraction=0.0)
    with pytest.raises(TaskError, match="no sample in split 'test'"):
        TaskSampler(no_test, cfg, seed=0, split="unseen")
