"""`python -m pipelines.annotate`: sidecars per stage, resume, --force, a stage added later,
byte-identical output whatever the blocks, text in / meta out, seeds, side inputs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from annotate_helpers import (  # noqa: F401  (ray_local is a fixture)
    CANNY,
    SAMPLES,
    annotate_args,
    joined,
    make_source_shard,
    ray_local,
    sidecar,
    stage_stats,
    write_config,
)
from graph200k.nodes import available_nodes
from graph200k.shards import decode_image, encode_image, read_shard, shard_path
from pipelines import annotate, annotate_ray

FAKE_HED = {"class": "annotate_helpers.FakeHED", "batch_size": 4}
WORDS = {"class": "annotate_helpers.WordCount", "batch_size": 3, "concurrency": 1}


@pytest.fixture
def src(tmp_path):
    folder = tmp_path / "source"
    for shard in (0, 1):
        make_source_shard(folder, shard, SAMPLES)
    return folder


def test_full_run_writes_a_sidecar_per_stage_and_keeps_the_source(ray_local, src, tmp_path):
    out = tmp_path / "out"
    source_before = {s: shard_path(src, s).read_bytes() for s in (0, 1)}
    config = write_config(tmp_path, {"canny": CANNY})
    assert annotate.main(annotate_args(src, out, config)) == 0

    for shard in (0, 1):
        assert shard_path(src, shard).read_bytes() == source_before[shard]  # never rewritten
        source = list(read_shard(shard_path(src, shard)))
        side = list(read_shard(sidecar(out, "canny", shard)))
        assert [s["__key__"] for s in side] == [s["__key__"] for s in source]
        assert all(sorted(s) == ["__key__", "canny.png"] for s in side)  # only its own bytes
        for before, edges in zip(source, side):
            expected = cv2.Canny(decode_image(before["target.jpg"]), 100, 200)
            np.testing.assert_array_equal(decode_image(edges["canny.png"], "L"), expected)
        for before, after in zip(source, joined(out, shard)):  # the shard as published
            assert after["target.jpg"] == before["target.jpg"]
            meta_before, meta_after = json.loads(before["meta.json"]), json.loads(after["meta.json"])
            assert meta_after["nodes"] == available_nodes(k for k in after if k != "__key__")
            assert "canny" in meta_after["nodes"]
            meta_after.pop("nodes"), meta_before.pop("nodes")
            assert meta_after == meta_before
        stats = stage_stats(out, "canny", shard)
        assert (stats["samples"], stats["ok"], stats["failed"]) == (SAMPLES, SAMPLES, 0)
        assert stats["file"]["size"] == sidecar(out, "canny", shard).stat().st_size
        assert stats["source"]["sha256"]  # which source bytes it was computed from
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or "_parts" in p.parts
                 and p.is_file()]
    assert not leftovers  # no temporary file, no part


def test_rerun_skips_complete_shards_and_force_redoes_identically(ray_local, src, tmp_path, capsys):
    out = tmp_path / "out"
    config = write_config(tmp_path, {"canny": CANNY})
    assert annotate.main(annotate_args(src, out, config)) == 0
    files = [sidecar(out, "canny", s) for s in (0, 1)]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    capsys.readouterr()

    report = annotate.run("0-1", None, config, str(src), str(out))
    assert sorted(report.skipped) == [("canny", 0), ("canny", 1)] and not report.written
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before
    assert "canny: 2 shard(s) complete, skipped" in capsys.readouterr().out

    report = annotate.run("0-1", None, config, str(src), str(out), force=True)
    assert sorted(report.written) == [("canny", 0), ("canny", 1)]
    for p in files:
        assert p.stat().st_mtime_ns != before[p][0] and p.read_bytes() == before[p][1]


def test_a_stage_added_later_writes_only_its_own_bytes(ray_local, src, tmp_path):
    config = write_config(tmp_path, {"canny": CANNY, "hed": FAKE_HED})
    step, once = tmp_path / "step", tmp_path / "once"
    assert annotate.main(annotate_args(src, step, config, "0", "--stages", "canny")) == 0
    canny = sidecar(step, "canny", 0)
    canny_before = (canny.stat().st_mtime_ns, canny.read_bytes())

    report = annotate.run("0", None, config, str(src), str(step))  # now canny + hed
    assert list(report.written) == [("hed", 0)] and report.skipped == [("canny", 0)]
    assert (canny.stat().st_mtime_ns, canny.read_bytes()) == canny_before  # untouched
    assert all("hed" in json.loads(s["meta.json"])["nodes"] for s in joined(step, 0))

    assert annotate.main(annotate_args(src, once, config, "0")) == 0  # both in one go
    for stage in ("canny", "hed"):
        assert sidecar(once, stage, 0).read_bytes() == sidecar(step, stage, 0).read_bytes()


def test_bytes_do_not_depend_on_blocks_batches_or_workers(ray_local, src, tmp_path):
    outs = []
    for k, (rows, batch) in enumerate([(1, 1), (4, 3), (64, 64)]):
        stages = {"canny": {**CANNY, "batch_size": batch}, "wordcount": {**WORDS, "batch_size": batch}}
        config = write_config(tmp_path, stages, rows_per_block=rows, name=f"a{k}.yaml", seed=5)
        out = tmp_path / f"out{k}"
        assert annotate.main(annotate_args(src, out, config)) == 0
        outs.append(out)
    for stage in ("canny", "wordcount"):
        for shard in (0, 1):
            first = sidecar(outs[0], stage, shard).read_bytes()
            assert all(sidecar(o, stage, shard).read_bytes() == first for o in outs[1:])


def test_text_in_meta_out_and_seeds(ray_local, src, tmp_path):
    config = write_config(tmp_path, {"wordcount": WORDS}, seed=7)
    out = tmp_path / "out"
    assert annotate.main(annotate_args(src, out, config, "0")) == 0
    from annotators.base import sample_seed

    samples = joined(out, 0)
    for s in samples:
        meta = json.loads(s["meta.json"])
        entry = meta["annotations"]["wordcount"]
        assert entry["words"] == len(meta["description"].split()) and entry["item"] == meta["item"]
        assert entry["seed"] == sample_seed(7, s["__key__"], "wordcount", 0)
    assert len({json.loads(s["meta.json"])["annotations"]["wordcount"]["draw"] for s in samples}) > 1
    assert "wordcount" not in json.loads(samples[0]["meta.json"])["nodes"]  # meta, not a node

    other = tmp_path / "seed8"
    assert annotate.main(annotate_args(src, other, write_config(tmp_path, {"wordcount": WORDS},
                                                                name="s8.yaml", seed=8), "0")) == 0
    assert sidecar(other, "wordcount", 0).read_bytes() != sidecar(out, "wordcount", 0).read_bytes()


def test_a_side_input_is_read_by_every_worker(ray_local, src, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(5):
        (pool / f"style{i}.png").write_bytes(encode_image(np.full((4 + i, 4, 3), i, np.uint8), "png"))
    config = write_config(tmp_path, {"poolpick": {"class": "annotate_helpers.PoolPick",
                                                  "batch_size": 1, "concurrency": 2,
                                                  "num_cpus": 0.5,
                                                  "marker_dir": str(tmp_path)}},
                          rows_per_block=1,
                          side_inputs={"pool": {"kind": "folder", "path": str(pool)}})
    out = tmp_path / "out"
    assert annotate.main(annotate_args(src, out, config)) == 0
    entries = [json.loads(s["meta.json"])["annotations"]["poolpick"]
               for shard in (0, 1) for s in joined(out, shard)]
    sizes = {f"style{i}.png": len((pool / f"style{i}.png").read_bytes()) for i in range(5)}
    assert all(e["bytes"] == sizes[e["pick"]] for e in entries)
    assert len({e["pick"] for e in entries}) > 1
    actors = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert len(actors) == 2 and all(a == sizes for a in actors)  # each actor read the pool

    missing = write_config(tmp_path / "pool", {"poolpick": {"class": "annotate_helpers.PoolPick",
                                                            "batch_size": 1}},
                           name="nopool.yaml")
    with pytest.raises(annotate.ConfigError, match="declare it under `side_inputs:`"):
        annotate.run("0", None, missing, str(src), str(tmp_path / "x"))


def test_one_coordinator_answers_progress_mid_wave_and_serves_the_next_run(ray_local, src,
                                                                            tmp_path):
    import threading
    import time

    import ray

    # blocks of 2 rows, a task each: parts come back one by one
    slow = write_config(tmp_path, {"canny": {"class": "annotate_helpers.SlowCanny",
                                             "seconds": 0.5, "batch_size": 2}},
                        rows_per_block=2, name="slow.yaml")
    rc = {}
    run = threading.Thread(target=lambda: rc.setdefault(
        "first", annotate.main(annotate_args(src, tmp_path / "a", slow, "0-1"))))
    run.start()
    seen, deadline = [], time.monotonic() + 180
    while run.is_alive() and time.monotonic() < deadline:
        for actor in list(annotate_ray._COORDINATOR.values()):
            # a one-thread actor would queue this behind the wave: a timeout here
            seen.append(ray.get(actor.done.remote(), timeout=5).get("canny", 0))
        time.sleep(0.2)
    run.join()
    assert rc["first"] == 0
    assert any(0 < n < 2 * SAMPLES for n in seen), (len(seen), sorted(set(seen)))  # mid-wave
    first = list(annotate_ray._COORDINATOR.values())
    assert ray.get(first[0].done.remote())["canny"] == 2 * SAMPLES

    assert annotate.main(annotate_args(src, tmp_path / "b", slow, "0")) == 0
    assert list(annotate_ray._COORDINATOR.values()) == first  # the same actor, already warm
    ray.kill(first[0])  # lost (its node gone): the next run starts another
    assert annotate.main(annotate_args(src, tmp_path / "c", slow, "0")) == 0
    assert list(annotate_ray._COORDINATOR.values()) != first
    assert sidecar(tmp_path / "c", "canny", 0).read_bytes() == \
        sidecar(tmp_path / "a", "canny", 0).read_bytes()
