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
    assert sum(st["samples"] for st in stats) == 16  # 12 rows + 4 bad ones
    assert sum(st["written"] for st in stats) == len(samples) == 11
    assert not list(source_shards.glob(".*tmp*"))


def test_bad_rows_are_counted_and_listed_with_reasons(source_shards):
    stats = _all_stats(source_shards)
    failed = {f["key"]: f["reason"] for st in stats for f in st["failed"]}
    assert set(failed) == {"0000012", "0000013", "0000014"}
    assert "does not decode" in failed["0000012"]
    assert "fits no two-panel layout" in failed["0000013"]
    assert "description_0 is missing" in failed["0000014"]
    filtered = {f["key"]: f for st in stats for f in st["filtered"]}
    # fixture rows 6 (and every 7th) have objectConsistency 2 < 3; row 15 is marked invalid
    assert sorted(filtered) == ["0000006", "0000015"]
    assert filtered["0000006"]["filter"] == "quality"
    assert "objectConsistency" in filtered["0000006"]["reason"]
    assert filtered["0000015"]["filter"] == "description_valid"
    assert "description_valid is false" in filtered["0000015"]["reason"]
    written = sum(st["written"] for st in stats)
    assert written + len(failed) + len(filtered) == 16


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


def test_truncated_shard_read_names_the_shard(source_shards, tmp_path):
    data = shard_path(source_shards, 0).read_bytes()
    bad = tmp_path / "000000.tar"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(ShardError, match="000000.tar is truncated or corrupt"):
        list(read_shard(bad))


def _meta(folder, shard):
    return {s["__key__"]: json.loads(s["meta.json"]) for s in read_shard(shard_path(folder, shard))}


def test_the_validity_flag_is_kept_and_invalid_rows_are_kept_on_request(mini_parquet, tmp_path,
                                                                        source_shards, capsys):
    metas = _meta(source_shards, 0)
    assert all(m["description_valid"] is True for m in metas.values())
    assert "0000015" not in _meta(source_shards, 3)
    assert ingest.main(["--source", str(mini_parquet), "--out", str(tmp_path), "--shard-size", "4",
                        "--shards", "3", "--invalid-descriptions", "keep"]) == 0
    assert "0 filtered, 3 failed" in capsys.readouterr().out
    kept = _meta(tmp_path, 3)["0000015"]
    assert kept["description_valid"] is False and kept["description"]
    stats = read_stats(tmp_path, 3)
    assert stats["invalid_descriptions"] == "keep" and stats["filtered"] == []


def test_the_report_counts_filtered_rows_by_reason(mini_parquet, tmp_path, capsys):
    assert ingest.main(["--source", str(mini_parquet), "--out", str(tmp_path), "--shard-size", "8",
                        "--shards", "0-1"]) == 0
    out = capsys.readouterr().out
    assert "2 filtered (description_valid 1, quality 1), 3 failed, 2 with cleaned text" in out


def test_descriptions_are_cleaned_and_capped_and_the_change_recorded(source_shards, mini_parquet,
                                                                     tmp_path):
    metas = _meta(source_shards, 0)
    coffee, rocket = metas["0000002"], metas["0000003"]
    assert coffee["description"] == ("A cup of coffee with latte art on a white saucer, set on "
                                     "a wooden table.")
    assert coffee["item"] == "coffee cup"
    assert coffee["cleaned"]["description"]["removed_chars"] == 1 + 7 + 4 + 1 + 2
    assert len(rocket["description"]) <= 1000
    assert rocket["cleaned"] == {"description": {"original_chars": 200_000,
                                                 "truncated_to": len(rocket["description"])}}
    assert "cleaned" not in metas["0000000"] and "cleaned" not in metas["0000001"]
    stats = read_stats(source_shards, 0)
    assert stats["max_description_chars"] == 1000 and stats["cleaned_count"] == 2
    assert [c["key"] for c in stats["cleaned"]] == ["0000002", "0000003"]
    assert ingest.main(["--source", str(mini_parquet), "--out", str(tmp_path), "--shard-size", "4",
                        "--shards", "0", "--max-description-chars", "120"]) == 0
    short = _meta(tmp_path, 0)["0000003"]
    assert len(short["description"]) <= 120
    assert short["description"].startswith("A rocket stands upright on its launch pad")


def test_a_shard_whose_rows_were_all_dropped_is_a_valid_empty_shard(source_shards, mini_parquet,
                                                                    capsys):
    # shard 3 = rows 12-15: three broken rows and one marked description_valid: false
    assert list(read_shard(shard_path(source_shards, 3))) == []
    stats = read_stats(source_shards, 3)
    assert (stats["samples"], stats["written"], stats["failed_count"], stats["filtered_count"]) \
        == (4, 0, 3, 1)
    assert stats["file"]["size"] == shard_path(source_shards, 3).stat().st_size
    assert stats["file"]["samples"] == 0
    assert (source_shards / "000003.index.json").exists()
    assert ingest.main(["--source", str(mini_parquet), "--out", str(source_shards),
                        "--shard-size", "4", "--shards", "3"]) == 0
    assert "0 to write, 1 already complete" in capsys.readouterr().out


def test_a_shard_cut_short_after_it_was_written_is_redone(mini_parquet, tmp_path, capsys):
    args = ["--source", str(mini_parquet), "--out", str(tmp_path), "--shard-size", "4",
            "--shards", "1"]
    assert ingest.main(args) == 0
    whole = shard_path(tmp_path, 1).read_bytes()
    shard_path(tmp_path, 1).write_bytes(whole[: len(whole) // 2])
    capsys.readouterr()
    assert ingest.main(args) == 0
    assert "1 to write, 0 already complete" in capsys.readouterr().out
    assert shard_path(tmp_path, 1).read_bytes() == whole
