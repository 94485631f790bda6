import json

import pytest

from graph200k.shards import ShardError, list_shards, read_shard, read_stats, shard_path
from pipelines import ingest


def _all_stats(folder):
    return [read_stats(folder, i) for i in range(len(list_shards(folder)))]


def test_ingest_writes_shards_members_and_stats(source_shards):
    shards = list_shards(source_shards)
    assert [p.name for p in shards] == ["000000.tar", "000001.tar", "000002.tar", "000003.tar"]
    samples = [s for p in shards for s in read_shard(p)]
    for s in samples:
        assert set(s) == {"__key__", "target.jpg", "reference.jpg", "meta.json"}
        meta = json.loads(s["meta.json"])
        assert meta["key"] == s["__key__"] == f"{meta['row']:07d}"
        assert meta["nodes"] == ["target", "reference"] and meta["description"]
    stats = _all_stats(source_shards)
    assert sum(st["samples"] for st in stats) == 15
    assert sum(st["written"] for st in stats) == len(samples)
    assert not list(source_shards.glob(".*tmp*"))


def test_bad_rows_are_counted_and_listed_with_reasons(source_shards):
    stats = _all_stats(source_shards)
    failed = {f["key"]: f["reason"] for st in stats for f in st["failed"]}
    assert set(failed) == {"0000012", "0000013", "0000014"}
    assert "does not decode" in failed["0000012"]
    assert "fits no two-panel layout" in failed["0000013"]
    assert "description_0 is missing" in failed["0000014"]
    filtered = [f["key"] for st in stats for f in st["filtered"]]
    # fixture rows 6 (and every 7th) have objectConsistency 2 < 3
    assert filtered == ["0000006"]
    written = sum(st["written"] for st in stats)
    assert written + len(failed) + len(filtered) == 15


def test_ingest_is_byte_reproducible(mini_parquet, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert ingest.main(["--source", str(mini_parquet), "--out", str(out),
                            "--shard-size", "4", "--shards", "0-1"]) == 0
    for name in ("000000.tar", "000001.tar"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_rerun_skips_complete_shards_and_force_redoes(mini_parquet, tmp_path, capsys):
    args = ["--source", str(mini_parquet), "--out", str(tmp_path), "--shard-size", "4",
            "--shards", "0"]
    ingest.main(args)
    first = shard_path(tmp_path, 0).stat().st_mtime_ns
    capsys.readouterr()
    ingest.main(args)
    assert "0 to write, 1 already complete" in capsys.readouterr().out
    assert shard_path(tmp_path, 0).stat().st_mtime_ns == first
    ingest.main(args + ["--force"])
    assert "1 to write" in capsys.readouterr().out


def test_a_crash_mid_shard_leaves_no_shard_under_its_final_name(mini_parquet, tmp_path,
                                                                monkeypatch):
    calls = {"n": 0}
    real = ingest.encode_image

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(ingest, "encode_image", flaky)
    with pytest.raises(OSError, match="disk full"):
        ingest.main(["--source", str(mini_parquet), "--out", str(tmp_path), "--shard-size", "4",
                     "--shards", "0"])
    assert list(tmp_path.iterdir()) == []  # no shard, no temp file, no stats


def test_out_of_range_shards_are_a_clear_error(mini_parquet, tmp_path):
    with pytest.raises(SystemExit, match=r"out of range: this source has 4 shards"):
        ingest.main(["--source", str(mini_parquet), "--out", str(tmp_path), "--shard-size", "4",
                     "--shards", "7"])


def test_truncated_shard_read_names_the_shard(source_shards, tmp_path):
    data = shard_path(source_shards, 0).read_bytes()
    bad = tmp_path / "000000.tar"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(ShardError, match="000000.tar is truncated or corrupt"):
        list(read_shard(bad))
