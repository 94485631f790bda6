import json

from graph200k import sample_tasks


def test_cli_writes_jsonl_and_prints_stats(source_manifest, tmp_path, capsys):
    mpath = source_manifest.save(tmp_path / "m.parquet")
    out = tmp_path / "tasks.jsonl"
    rc = sample_tasks.main(["--manifest", str(mpath), "--num", "50", "--seed", "3",
                            "--out", str(out), "--stats"])
    assert rc == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 50
    t = lines[0]
    assert set(t) == {"task_id", "family", "variant", "nodes", "columns", "rows", "mask",
                      "prompt", "seed"}
    assert t["rows"][0][0].keys() == {"key", "node", "slot"}
    printed = capsys.readouterr()
    assert "50 tasks, rows per task" in printed.out
    assert "variant(s) have no sample" in printed.err
    # same seed -> same file bytes
    out2 = tmp_path / "again.jsonl"
    sample_tasks.main(["--manifest", str(mpath), "--num", "50", "--seed", "3", "--out", str(out2)])
    assert out2.read_bytes() == out.read_bytes()


def test_cli_fails_clearly_for_unsatisfiable_families(source_shards, capsys):
    rc = sample_tasks.main(["--shards", str(source_shards), "--families", "dense_prediction"])
    assert rc == 2
    assert "no sample has node types" in capsys.readouterr().err
