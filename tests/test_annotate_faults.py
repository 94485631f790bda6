"""Bad input and faults in `pipelines.annotate`: each is contained to what it broke."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from annotate_helpers import (  # noqa: F401  (ray_local is a fixture)
    CANNY,
    SAMPLES,
    annotate_args,
    make_source_shard,
    ray_local,
    write_config,
)
from graph200k.shards import read_shard, read_stats, shard_path, stats_path
from pipelines import annotate


def test_corrupt_image_and_raising_annotator_fail_only_their_sample(ray_local, tmp_path):
    src, out = tmp_path / "source", tmp_path / "out"
    make_source_shard(src, 0, SAMPLES, corrupt={"0000002"})
    config = write_config(tmp_path, {"canny": {**CANNY, "class": "annotate_helpers.RaisingCanny",
                                                "raise_on": ["0000004"]}})
    assert annotate.main(annotate_args(src, out, config, "0")) == 0  # failed samples are data, not errors

    samples = list(read_shard(shard_path(out, 0)))
    assert [s["__key__"] for s in samples] == [f"{i:07d}" for i in range(SAMPLES)]
    bad = {"0000002", "0000004"}
    for s in samples:
        nodes = json.loads(s["meta.json"])["nodes"]
        assert ("canny.png" in s) == (s["__key__"] not in bad)
        assert ("canny" in nodes) == (s["__key__"] not in bad)

    stats = read_stats(out, 0)
    canny = stats["stages"]["canny"]
    assert (canny["ok"], canny["failed"]) == (SAMPLES - 2, 2)
    reasons = {f["key"]: f["reason"] for f in canny["failed_keys"]}
    assert set(reasons) == bad
    assert "target.jpg does not decode" in reasons["0000002"]
    assert "boom on 0000004" in reasons["0000004"]
    assert {f["key"] for f in stats["failed"]} == bad and stats["failed_count"] == 2


def test_truncated_source_shard_is_a_clear_error_and_the_others_proceed(ray_local, tmp_path,
                                                                        capsys):
    src, out = tmp_path / "source", tmp_path / "out"
    for shard in (0, 1, 2):
        make_source_shard(src, shard, SAMPLES)
    broken = shard_path(src, 1)
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2 + 100])
    config = write_config(tmp_path, {"canny": CANNY})

    assert annotate.main(annotate_args(src, out, config, "0-2")) == 1
    err = capsys.readouterr().err
    assert "shard 000001" in err and str(broken) in err and "pipelines.ingest" in err
    assert shard_path(out, 0).exists() and shard_path(out, 2).exists()
    assert not shard_path(out, 1).exists() and not stats_path(out, 1).exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_a_shard_cut_at_a_member_boundary_is_caught_by_its_stats(ray_local, tmp_path, capsys):
    src, out = tmp_path / "source", tmp_path / "out"
    path = make_source_shard(src, 0, SAMPLES)
    with tarfile.open(path) as tar:
        offset = [m for m in tar.getmembers() if m.name.startswith("0000003.")][0].offset
    path.write_bytes(path.read_bytes()[:offset])  # reads as a valid tar of 3 samples
    config = write_config(tmp_path, {"canny": CANNY})
    assert annotate.main(annotate_args(src, out, config, "0")) == 1
    assert "holds 3 samples but its stats file says 6" in capsys.readouterr().err
    assert not shard_path(out, 0).exists()


def test_a_corrupt_annotated_shard_asks_for_force_which_rebuilds_it(ray_local, tmp_path, capsys):
    src, out = tmp_path / "source", tmp_path / "out"
    make_source_shard(src, 0, SAMPLES)
    config = write_config(tmp_path, {"canny": CANNY})
    assert annotate.main(annotate_args(src, out, config, "0")) == 0
    good = shard_path(out, 0).read_bytes()
    shard_path(out, 0).write_bytes(good[: len(good) // 2])
    stats_path(out, 0).unlink()  # as if the run died after the shard, before its stats

    assert annotate.main(annotate_args(src, out, config, "0")) == 1
    assert "--force" in capsys.readouterr().err
    assert annotate.main(annotate_args(src, out, config, "0", "--force")) == 0
    assert shard_path(out, 0).read_bytes() == good


def test_missing_source_shard_is_a_clear_error(ray_local, tmp_path, capsys):
    src, out = tmp_path / "source", tmp_path / "out"
    make_source_shard(src, 0, SAMPLES)
    config = write_config(tmp_path, {"canny": CANNY})
    assert annotate.main(annotate_args(src, out, config, "0,7")) == 1
    assert "000007" in capsys.readouterr().err
    assert shard_path(out, 0).exists()


def test_a_worker_that_dies_is_retried_and_the_shard_matches_a_clean_run(ray_local, tmp_path):
    src = tmp_path / "source"
    make_source_shard(src, 0, SAMPLES)
    marker = tmp_path / "died-once"
    dying = write_config(tmp_path, {"canny": {**CANNY, "class": "annotate_helpers.DyingCanny",
                                              "marker": str(marker)}})
    assert annotate.main(annotate_args(src, tmp_path / "dying", dying, "0")) == 0
    assert marker.exists()  # the worker did die once

    (tmp_path / "clean").mkdir()
    clean = write_config(tmp_path / "clean", {"canny": CANNY})
    assert annotate.main(annotate_args(src, tmp_path / "clean", clean, "0")) == 0
    assert (shard_path(tmp_path / "dying", 0).read_bytes()
            == shard_path(tmp_path / "clean", 0).read_bytes())


def test_a_crash_while_writing_leaves_no_shard_under_its_final_name(ray_local, tmp_path,
                                                                    monkeypatch):
    src, out = tmp_path / "source", tmp_path / "out"
    make_source_shard(src, 0, SAMPLES)
    config = write_config(tmp_path, {"canny": CANNY})
    real_write = annotate.ShardWriter.write

    def crash_after_two(self, sample):
        if self.count == 2:
            raise OSError("disk full")
        real_write(self, sample)

    monkeypatch.setattr(annotate.ShardWriter, "write", crash_after_two)
    with pytest.raises(OSError, match="disk full"):
        annotate.run("0", None, config, str(src), str(out))
    assert list(out.iterdir()) == []  # neither the shard, its temp file, nor stats

    monkeypatch.setattr(annotate.ShardWriter, "write", real_write)
    assert annotate.run("0", None, config, str(src), str(out)).written  # resume completes it


def _tar_with(path, members: dict[str, bytes]):
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("name", ["../../0000009.target.jpg", "/tmp/0000009.target.jpg",
                                  "0000009.__meta", "0000009.a/../b.jpg"])
def test_member_names_are_never_used_as_paths(ray_local, tmp_path, name, capsys):
    src, out = tmp_path / "deep" / "source", tmp_path / "deep" / "out"
    make_source_shard(src, 0, 2)
    good = {f"{s['__key__']}.{k}": v for s in read_shard(shard_path(src, 0))
            for k, v in s.items() if k != "__key__"}
    _tar_with(shard_path(src, 0), {**good, name: b"\xff\xd8 payload"})
    config = write_config(tmp_path, {"canny": CANNY})
    out.mkdir()
    before = sorted(tmp_path.rglob("*"))

    assert annotate.main(annotate_args(src, out, config, "0")) == 1
    err = capsys.readouterr().err
    assert "shard 000000" in err and ("invalid" in err or "bad name" in err)
    assert sorted(tmp_path.rglob("*")) == before  # nothing was extracted anywhere
    assert not any(p.name.startswith("0000009") for p in tmp_path.parent.rglob("0000009*"))
    assert not (tmp_path.parent.parent / "0000009.target.jpg").exists()
