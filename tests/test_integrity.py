"""Corrupt or stale data is never passed on silently: truncation at several offsets, flipped
bytes in a member and in a header, a shard removed or added after the manifest. Each case
is repaired to identical bytes or reported with shard, key and member and a non-zero exit,
and nothing corrupt is published."""

from __future__ import annotations

import json

import pytest

from annotate_helpers import (  # noqa: F401  (ray_local is a fixture)
    SAMPLES,
    annotate_args,
    make_source_shard,
    ray_local,
    sidecar,
)
from graph200k import manifest as manifest_cli
from graph200k import publish, sample_tasks, verify
from graph200k.manifest import Manifest
from graph200k.reader import FetchError, SampleReader, StaleManifestError
from graph200k.stream import GridStream
from integrity_data import data, pristine  # noqa: F401  (fixtures: a canny dataset, a copy per test)
from pipelines import annotate


def _record(folder, shard, key, field):
    members = json.loads((folder / f"{shard:06d}.index.json").read_text())["members"]
    return [m for m in members if m[:2] == [key, field]][0]


def _flip(path, offset):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def _problems(d):
    return verify.verify(str(d / "out"), [str(d / "out" / "manifest.parquet")])


def test_a_clean_dataset_verifies(data, capsys):
    d, _ = data
    assert verify.main(["--shards", str(d / "out")]) == 0
    assert "all good" in capsys.readouterr().out
    assert verify.main(["--shards", str(d / "source")]) == 0  # a plain folder too


@pytest.mark.parametrize("where", ["source", "sidecar"])
@pytest.mark.parametrize("cut", [0.3, 0.75, -600])
def test_truncation_is_reported_and_repaired(data, where, cut, capsys):
    d, config = data
    path = d / "source" / "000001.tar" if where == "source" else sidecar(d / "out", "canny", 1)
    good = path.read_bytes()
    n = int(len(good) * cut) if cut > 0 else len(good) + cut
    path.write_bytes(good[:n])

    assert verify.main(["--shards", str(d / "out")]) == 1
    out = capsys.readouterr().out
    assert "000001" in out and ("truncated" in out or "cut off" in out or "complete tar" in out)
    assert ("pipelines.ingest" if where == "source" else "--stages canny --force") in out
    assert publish.main(["--src", str(d / "out"), "--to", str(d / "release"),
                         "--config", "", "--tasks", ""]) == 1
    assert not (d / "release").exists()  # nothing corrupt is published

    if where == "sidecar":  # annotate notices the size and recomputes the same bytes
        assert annotate.main(annotate_args(d / "source", d / "out", config, "0-1")) == 0
        assert path.read_bytes() == good
        assert verify.verify(str(d / "out")) == []
    else:  # the source cannot be recomputed here: annotate refuses the shard
        assert annotate.main(annotate_args(d / "source", d / "out", config, "1",
                                           "--force")) == 1


def test_flipped_bytes_in_a_member_name_the_key_and_member(data, capsys):
    d, config = data
    _, _, _, offset, size, _ = _record(d / "source", 0, "0000003", "target.jpg")
    _flip(d / "source" / "000000.tar", offset + size // 2)

    problems = _problems(d)
    assert [(p.shard, p.part, p.key, p.member) for p in problems][:1] == \
        [(0, "source/000000.tar", "0000003", "target.jpg")]
    assert "corrupt" in problems[0].what
    reader = SampleReader(d / "out", d / "out" / "manifest.parquet", manifest_check="ignore")
    with pytest.raises(FetchError) as e:
        reader.fetch("0000003", "target")
    assert e.value.reason == "corrupt" and "0000003" in str(e.value)
    assert publish.main(["--src", str(d / "out"), "--config", "", "--tasks", ""]) == 1


def test_a_flipped_sidecar_byte_is_repaired_by_verify_then_republished(data, capsys):
    d, config = data
    release = d / "release"
    assert publish.main(["--src", str(d / "out"), "--to", str(release), "--config", "",
                         "--tasks", ""]) == 0
    published = (release / "000000.tar").read_bytes()
    path = sidecar(d / "out", "canny", 0)
    good = path.read_bytes()
    _, _, _, offset, size, _ = _record(d / "out" / "canny", 0, "0000001", "canny.png")
    _flip(path, offset + 3)  # same size: only the hash can tell

    assert annotate.main(annotate_args(d / "source", d / "out", config, "0")) == 0  # size ok
    assert path.read_bytes() != good
    assert annotate.main(annotate_args(d / "source", d / "out", config, "0", "--verify")) == 0
    assert path.read_bytes() == good  # --verify found it and recomputed it
    assert publish.main(["--src", str(d / "out"), "--to", str(release), "--config", "",
                         "--tasks", ""]) == 0
    assert (release / "000000.tar").read_bytes() == published


def test_a_corrupt_tar_header_is_found_by_the_header_walk(data, capsys):
    d, _ = data
    _, _, header, *_ = _record(d / "source", 1, "0001004", "meta.json")
    (d / "source" / "000001.index.json").unlink()  # as for a tar written elsewhere
    _flip(d / "source" / "000001.tar", header + 20)
    problems = _problems(d)
    assert any(p.shard == 1 and p.part == "source/000001.tar" and "tar" in p.what
               for p in problems)
    assert manifest_cli.main(["--shards", str(d / "out"), "--out", str(d / "m.parquet")]) == 1
    assert "cannot scan" in capsys.readouterr().err


def test_a_shard_added_or_removed_after_the_manifest_is_refused(data, capsys):
    d, config = data
    m = d / "out" / "manifest.parquet"
    make_source_shard(d / "source", 2, SAMPLES)
    assert annotate.main(annotate_args(d / "source", d / "out", config, "2")) == 0
    problems = Manifest.load(m).check(d / "out")
    assert problems == ["shard 000002: not in the manifest (written after it was built)"]
    assert sample_tasks.main(["--manifest", str(m), "--num", "5"]) == 2
    assert "no longer matches" in capsys.readouterr().err
    with pytest.raises(StaleManifestError, match="python -m graph200k.manifest"):
        GridStream(d / "out", m, res=32)
    assert sample_tasks.main(["--manifest", str(m), "--num", "5", "--on-stale", "warn"]) == 0

    for f in (d / "source").glob("000001.*"):
        f.unlink()
    lines = [p.what for p in _problems(d) if p.part == "manifest.parquet"]
    assert any("000001: in the manifest but no longer" in x for x in lines)
    assert verify.main(["--shards", str(d / "out")]) == 1
    assert manifest_cli.main(["--shards", str(d / "out")]) == 0  # the repair
    assert Manifest.load(m).check(d / "out") == []


def test_bad_inputs_of_sample_tasks(data, tmp_path, capsys):
    d, _ = data
    assert sample_tasks.main(["--shards", str(tmp_path / "nonexistent"), "--num", "3"]) == 2
    assert "no shards" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sample_tasks.main(["--shards", str(d / "out"), "--num", "-5"])
    assert "--num must be at least 1" in capsys.readouterr().err
    assert sample_tasks.main(["--manifest", str(tmp_path / "none.parquet")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert sample_tasks.main(["--shards", str(d / "out"), "--config", str(tmp_path / "no.yaml")]) == 2
    assert "task config" in capsys.readouterr().err
    (tmp_path / "t.yaml").write_text("families: [unclosed")
    assert sample_tasks.main(["--shards", str(d / "out"), "--config", str(tmp_path / "t.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
