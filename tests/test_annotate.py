"""`python -m pipelines.annotate`: a full run, resume, --force, adding a stage later."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from annotate_helpers import (  # noqa: F401  (ray_local is a fixture)
    CANNY,
    SAMPLES,
    annotate_args,
    make_source_shard,
    ray_local,
    write_config,
)
from graph200k.nodes import available_nodes
from graph200k.shards import decode_image, read_shard, read_stats, shard_path, stats_path
from pipelines import annotate

# hed as an actor pool (concurrency) covers the model-stage path with a cheap stand-in
HED = {"class": "annotate_helpers.FakeHED", "concurrency": 1, "batch_size": 4}


@pytest.fixture
def src(tmp_path):
    folder = tmp_path / "source"
    for shard in (0, 1):
        make_source_shard(folder, shard, SAMPLES)
    return folder


def test_full_run_adds_canny_and_keeps_source_members(ray_local, src, tmp_path):
    out = tmp_path / "out"
    config = write_config(tmp_path, {"canny": CANNY})
    assert annotate.main(annotate_args(src, out, config)) == 0

    for shard in (0, 1):
        source = list(read_shard(shard_path(src, shard)))
        result = list(read_shard(shard_path(out, shard)))
        assert [s["__key__"] for s in result] == [s["__key__"] for s in source]
        for before, after in zip(source, result):
            assert after["target.jpg"] == before["target.jpg"]
            assert after["reference.jpg"] == before["reference.jpg"]
            edges = decode_image(after["canny.png"], "L")
            expected = cv2.Canny(decode_image(before["target.jpg"]), 100, 200)
            np.testing.assert_array_equal(edges, expected)
            meta_before, meta_after = json.loads(before["meta.json"]), json.loads(after["meta.json"])
            assert "canny" in meta_after["nodes"]
            assert meta_after["nodes"] == available_nodes(k for k in after if k != "__key__")
            meta_after.pop("nodes"), meta_before.pop("nodes")
            assert meta_after == meta_before
        stats = read_stats(out, shard)
        assert stats["samples"] == stats["written"] == SAMPLES
        assert stats["stages"]["canny"]["ok"] == SAMPLES
        assert stats["stages"]["canny"]["failed"] == 0
        assert stats["stages"]["canny"]["images_per_s"] > 0
        assert stats["nodes"]["canny"] == SAMPLES
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_rerun_skips_complete_shards_and_force_redoes_identically(ray_local, src, tmp_path, capsys):
    out = tmp_path / "out"
    config = write_config(tmp_path, {"canny": CANNY})
    assert annotate.main(annotate_args(src, out, config)) == 0
    files = [shard_path(out, 0), stats_path(out, 0), shard_path(out, 1), stats_path(out, 1)]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    capsys.readouterr()

    report = annotate.run("0-1", None, config, str(src), str(out))
    assert report.skipped == [0, 1] and not report.written
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before
    assert "000000: complete" in capsys.readouterr().out

    report = annotate.run("0-1", None, config, str(src), str(out), force=True)
    assert sorted(report.written) == [0, 1] and not report.skipped
    for p in files[::2]:  # shards: rewritten, same bytes
        assert p.stat().st_mtime_ns != before[p][0]
        assert p.read_bytes() == before[p][1]
    assert read_stats(out, 0)["stages"]["canny"]["ok"] == SAMPLES


def test_adding_a_stage_later_computes_only_it_and_keeps_bytes(ray_local, src, tmp_path):
    config = write_config(tmp_path, {"canny": CANNY, "hed": HED})
    step, once = tmp_path / "step", tmp_path / "once"
    assert annotate.main(annotate_args(src, step, config, "0", "--stages", "canny")) == 0
    canny_only = {s["__key__"]: s for s in read_shard(shard_path(step, 0))}
    assert all("hed.png" not in s for s in canny_only.values())

    report = annotate.run("0", None, config, str(src), str(step))  # now canny + hed
    assert sorted(report.written) == [0]
    stages = read_stats(step, 0)["stages"]
    assert stages["canny"]["skipped"] == SAMPLES and stages["canny"]["ok"] == 0
    assert stages["canny"]["previous"]["ok"] == SAMPLES
    assert stages["hed"]["ok"] == SAMPLES
    for s in read_shard(shard_path(step, 0)):
        assert s["canny.png"] == canny_only[s["__key__"]]["canny.png"]
        assert s["target.jpg"] == canny_only[s["__key__"]]["target.jpg"]
        assert "hed" in json.loads(s["meta.json"])["nodes"]

    # Both stages in one go give the very same bytes as adding one later.
    assert annotate.main(annotate_args(src, once, config, "0")) == 0
    assert shard_path(once, 0).read_bytes() == shard_path(step, 0).read_bytes()
