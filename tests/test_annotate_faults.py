"""Bad input and faults in `pipelines.annotate`: each is contained to what it broke."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile

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
from graph200k.dataset import part_in, write_part
from graph200k.shards import ShardWriter, read_shard, shard_path
from pipelines import annotate, annotate_io, leases

RAISING = {**CANNY, "class": "annotate_helpers.RaisingCanny"}


def test_corrupt_image_and_raising_annotator_fail_only_their_sample(ray_local, tmp_path):
    src, out = tmp_path / "source", tmp_path / "out"
    make_source_shard(src, 0, SAMPLES, corrupt={"0000002"})
    config = write_config(tmp_path, {"canny": {**RAISING, "raise_on": ["0000004"]}},
                          max_failed_fraction=0.5)
    assert annotate.main(annotate_args(src, out, config, "0")) == 0  # within the failure budget

    bad = {"0000002", "0000004"}
    assert [s["__key__"] for s in read_shard(sidecar(out, "canny", 0))] == \
        [f"{i:07d}" for i in range(SAMPLES) if f"{i:07d}" not in bad]
    for s in joined(out, 0):
        assert ("canny.png" in s) == (s["__key__"] not in bad)
        assert ("canny" in json.loads(s["meta.json"])["nodes"]) == (s["__key__"] not in bad)
    stats = stage_stats(out, "canny", 0)
    assert (stats["ok"], stats["failed"]) == (SAMPLES - 2, 2)
    reasons = {f["key"]: f["reason"] for f in stats["failed_keys"]}
    assert set(reasons) == bad
    assert "target.jpg does not decode" in reasons["0000002"]
    assert "boom on 0000004" in reasons["0000004"]


def test_a_block_whose_every_sample_fails_is_recorded_and_the_exit_code_says_so(
        ray_local, tmp_path, capsys):
    src, out = tmp_path / "source", tmp_path / "out"
    make_source_shard(src, 0, SAMPLES)
    config = write_config(tmp_path, {"canny": CANNY, "mlsd": {
        "class": "annotate_helpers.AlwaysFails", "batch_size": 2}})
    assert annotate.main(annotate_args(src, out, config, "0")) == 3
    captured = capsys.readouterr()
    stats = stage_stats(out, "mlsd", 0)
    assert (stats["ok"], stats["failed"]) == (0, SAMPLES)
    assert all("CUDA out of memory" in f["reason"] for f in stats["failed_keys"])
    assert list(read_shard(sidecar(out, "mlsd", 0))) == []  # an empty, valid sidecar
    assert stage_stats(out, "canny", 0)["ok"] == SAMPLES  # nothing else lost
    assert "6 failed sample(s) remain" in captured.out and "exit 3" in captured.err
    report = json.loads(next((out / "_report").glob("annotate-*.json")).read_text())
    assert report["exit_code"] == 3 and report["stages"]["mlsd"]["failed"] == SAMPLES
    assert report["stages"]["mlsd"]["top_failures"][0]["count"] == SAMPLES

    # the whole output folder, from its stats alone
    make_source_shard(src, 1, SAMPLES)  # a shard no stage has seen yet
    from pipelines import report as report_cli

    assert report_cli.main(["--out", str(out)]) == 1  # shard 1 is missing
    text = capsys.readouterr().out
    assert "missing shards: 1 (make annotate SHARD=1 STAGES=canny)" in text
    assert f"{SAMPLES:>6} x RuntimeError: CUDA out of memory (simulated)" in text


def test_retry_failed_recomputes_only_the_failed_samples(ray_local, tmp_path, capsys):
    src, out, clean = tmp_path / "source", tmp_path / "out", tmp_path / "clean"
    make_source_shard(src, 0, SAMPLES)
    flaky = write_config(tmp_path, {"canny": {**RAISING, "raise_on": ["0000001", "0000003"]}},
                         name="flaky.yaml", max_failed_fraction=1.0)
    fixed = write_config(tmp_path, {"canny": RAISING}, name="fixed.yaml")
    assert annotate.main(annotate_args(src, out, flaky, "0")) == 0
    assert stage_stats(out, "canny", 0)["failed"] == 2
    capsys.readouterr()
    assert annotate.main(annotate_args(src, out, fixed, "0")) == 0  # plain rerun: complete
    assert "1 shard(s) complete, skipped" in capsys.readouterr().out

    assert annotate.main(annotate_args(src, out, fixed, "0", "--retry-failed")) == 0
    stats = stage_stats(out, "canny", 0)
    assert (stats["ok"], stats["failed"], stats["previous"]["failed"]) == (SAMPLES, 0, 2)
    assert annotate.main(annotate_args(src, clean, fixed, "0")) == 0
    assert sidecar(out, "canny", 0).read_bytes() == sidecar(clean, "canny", 0).read_bytes()


def test_a_pool_set_larger_than_the_cluster_runs_in_waves(ray_local, tmp_path, capsys):
    # two model stages each holding the cluster's only `gpu_like` for their actor
    src, out = tmp_path / "source", tmp_path / "out"
    make_source_shard(src, 0, SAMPLES)
    gpu = {"batch_size": 2, "concurrency": 1, "num_cpus": 0.5, "resources": {"gpu_like": 1}}
    config = write_config(tmp_path, {
        "hed": {"class": "annotate_helpers.GpuLikeHED", **gpu},
        "depth": {"class": "annotate_helpers.GpuLikeDepth", **gpu}})
    assert annotate.main(annotate_args(src, out, config, "0")) == 0
    assert "waves: depth -> hed" in capsys.readouterr().out
    assert stage_stats(out, "hed", 0)["ok"] == stage_stats(out, "depth", 0)["ok"] == SAMPLES

    too_big = write_config(tmp_path, {"hed": {"class": "annotate_helpers.GpuLikeHED",
                                              **gpu, "resources": {"gpu_like": 2}}}, name="big.yaml")
    assert annotate.main(annotate_args(src, tmp_path / "big", too_big, "0")) == 2
    assert "needs {'gpu_like': 2.0} at its smallest" in capsys.readouterr().err


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
    assert sidecar(out, "canny", 0).exists() and sidecar(out, "canny", 2).exists()
    assert not sidecar(out, "canny", 1).exists()
    assert not [p for p in out.rglob(".*")]


def test_a_shard_cut_at_a_member_boundary_is_caught(ray_local, tmp_path, capsys):
    src, out = tmp_path / "source", tmp_path / "out"
    path = make_source_shard(src, 0, SAMPLES)
    with tarfile.open(path) as tar:
        offset = [m for m in tar.getmembers() if m.name.startswith("0000003.")][0].offset
    path.write_bytes(path.read_bytes()[:offset])  # a valid-looking tar of 3 samples, no end
    config = write_config(tmp_path, {"canny": CANNY})
    assert annotate.main(annotate_args(src, out, config, "0")) == 1
    assert "truncated" in capsys.readouterr().err
    assert not sidecar(out, "canny", 0).exists()


def test_flipped_bytes_in_a_source_member_fail_that_sample_naming_the_member(ray_local, tmp_path):
    src, out = tmp_path / "source", tmp_path / "out"
    path = make_source_shard(src, 0, SAMPLES)
    record = json.loads((src / "000000.index.json").read_text())["members"]
    _, _, _, data, size, _ = [r for r in record if r[:2] == ["0000002", "target.jpg"]][0]
    raw = bytearray(path.read_bytes())
    raw[data + size // 2] ^= 0xFF  # still a JPEG that decodes, to garbage
    path.write_bytes(bytes(raw))
    config = write_config(tmp_path, {"canny": CANNY}, max_failed_fraction=0.5)
    assert annotate.main(annotate_args(src, out, config, "0")) == 0
    reasons = {f["key"]: f["reason"] for f in stage_stats(out, "canny", 0)["failed_keys"]}
    assert list(reasons) == ["0000002"]
    assert "target.jpg" in reasons["0000002"] and "digest" in reasons["0000002"]


def test_a_truncated_sidecar_is_recomputed_to_the_same_bytes(ray_local, tmp_path, capsys):
    src, out = tmp_path / "source", tmp_path / "out"
    make_source_shard(src, 0, SAMPLES)
    config = write_config(tmp_path, {"canny": CANNY})
    assert annotate.main(annotate_args(src, out, config, "0")) == 0
    good = sidecar(out, "canny", 0).read_bytes()
    sidecar(out, "canny", 0).write_bytes(good[: len(good) // 2])
    assert annotate.main(annotate_args(src, out, config, "0")) == 0
    assert "truncated or replaced" in capsys.readouterr().out
    assert sidecar(out, "canny", 0).read_bytes() == good


def test_missing_source_shard_and_source_folder_are_clear_errors(ray_local, tmp_path, capsys):
    src, out = tmp_path / "source", tmp_path / "out"
    make_source_shard(src, 0, SAMPLES)
    config = write_config(tmp_path, {"canny": CANNY})
    assert annotate.main(annotate_args(src, out, config, "0,7")) == 1
    assert "no source shard 000007.tar" in capsys.readouterr().err
    assert sidecar(out, "canny", 0).exists()
    assert annotate.main(annotate_args(tmp_path / "nonexistent", out, config, "all")) == 2
    assert "holds no source shards" in capsys.readouterr().err


def test_an_empty_source_shard_is_a_valid_shard(ray_local, tmp_path):
    src, out = tmp_path / "source", tmp_path / "out"
    make_source_shard(src, 0, SAMPLES)
    with ShardWriter(shard_path(src, 1)) as w:  # every row of shard 1 was filtered at ingest
        pass
    write_part(part_in(src, 1), w.record, {"shard": 1, "written": 0})
    config = write_config(tmp_path, {"canny": CANNY})
    assert annotate.main(annotate_args(src, out, config, "0-1")) == 0
    assert stage_stats(out, "canny", 1)["samples"] == 0
    assert annotate.run("0-1", None, config, str(src), str(out)).skipped == [("canny", 0),
                                                                              ("canny", 1)]


def test_a_worker_that_dies_is_retried_and_the_shard_matches_a_clean_run(ray_local, tmp_path):
    src = tmp_path / "source"
    make_source_shard(src, 0, SAMPLES)
    marker = tmp_path / "died-once"
    dying = write_config(tmp_path, {"canny": {**CANNY, "class": "annotate_helpers.DyingCanny",
                                              "marker": str(marker)}})
    assert annotate.main(annotate_args(src, tmp_path / "dying", dying, "0")) == 0
    assert marker.exists()  # the worker did die once
    clean = write_config(tmp_path, {"canny": CANNY}, name="clean.yaml")
    assert annotate.main(annotate_args(src, tmp_path / "clean", clean, "0")) == 0
    assert (sidecar(tmp_path / "dying", "canny", 0).read_bytes()
            == sidecar(tmp_path / "clean", "canny", 0).read_bytes())


def test_a_join_that_crashes_leaves_no_sidecar_and_a_rerun_completes(ray_local, tmp_path):
    src, out = tmp_path / "source", tmp_path / "out"
    make_source_shard(src, 0, SAMPLES)
    config = write_config(tmp_path, {"canny": CANNY})
    blocker = sidecar(out, "canny", 0)
    blocker.mkdir(parents=True)  # the sidecar's final name is taken: its rename must fail
    (blocker / "keep").write_text("x")
    report = annotate.run("0", None, config, str(src), str(out))
    assert report.exit_code == 1 and "000000 canny" in report.errors[("canny", 0)]
    assert not (out / "canny" / "000000.stats.json").exists()  # not marked complete
    assert not [p for p in (out / "canny").iterdir() if p.name.startswith(".")]  # no temp
    shutil.rmtree(blocker)
    assert annotate.run("0", None, config, str(src), str(out)).written  # parts swept, redone
    assert not list((out / "_parts").rglob("*.tar"))


def test_a_shard_leased_by_a_live_run_is_skipped_and_stale_leftovers_are_swept(
        ray_local, tmp_path, capsys):
    src, out = tmp_path / "source", tmp_path / "out"
    make_source_shard(src, 0, SAMPLES)
    make_source_shard(src, 1, SAMPLES)
    config = write_config(tmp_path, {"canny": CANNY})
    other = {"host": "elsewhere", "pid": 1, "run": "other-run"}
    held = leases.acquire(str(out), "canny", 1, other, 3600)
    assert not isinstance(held, str)
    # leftovers of a killed run on shard 0: a temporary sidecar and a part
    (out / "canny").mkdir(parents=True)
    stale = out / "canny" / ".000000.tar.tmp-999-deadbeef"
    stale.write_bytes(b"half")
    part = annotate_io.parts_folder(str(out), "canny", 0)
    os.makedirs(part)
    open(os.path.join(part, "000000-000003.tar"), "wb").write(b"old")

    report = annotate.run("0-1", None, config, str(src), str(out))
    assert list(report.written) == [("canny", 0)] and list(report.busy) == [("canny", 1)]
    assert "leased by run other-run" in capsys.readouterr().out
    assert not stale.exists() and not os.path.exists(part)
    # the holder of the lease on this host died: a rerun takes over at once
    dead = {"host": leases.run_owner()["host"], "pid": 2 ** 22 + 12345, "run": "dead-run"}
    leases.release(held)
    assert not isinstance(leases.acquire(str(out), "canny", 1, dead, 3600), str)
    assert list(annotate.run("0-1", None, config, str(src), str(out)).written) == [("canny", 1)]


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
    (src / "000000.index.json").unlink()  # a tar written elsewhere: indexed from its headers
    config = write_config(tmp_path, {"canny": CANNY})
    before = sorted(p for p in tmp_path.rglob("*") if "out" not in p.parts)

    assert annotate.main(annotate_args(src, out, config, "0")) == 1
    err = capsys.readouterr().err
    assert "shard 000000" in err and ("invalid" in err or "bad name" in err)
    assert sorted(p for p in tmp_path.rglob("*") if "out" not in p.parts) == before
    assert not any(p.name.startswith("0000009") for p in tmp_path.parent.rglob("0000009*"))
    assert not (tmp_path.parent.parent / "0000009.target.jpg").exists()


def test_bad_configs_and_outputs_are_clear_errors(tmp_path, capsys):
    src = tmp_path / "source"
    make_source_shard(src, 0, 2)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("stages:\n  canny: {class: annotators.canny.Canny\n")
    assert annotate.main(annotate_args(src, tmp_path / "o1", str(bad_yaml), "0")) == 2
    assert "not valid YAML at line" in capsys.readouterr().err

    typo = write_config(tmp_path, {"canny": CANNY}, name="typo.yaml")
    text = open(typo).read().replace("rows_per_block", "rows_per_blok")
    open(typo, "w").write(text)
    assert annotate.main(annotate_args(src, tmp_path / "o2", typo, "0")) == 2
    assert "unknown config key 'ray.rows_per_blok'; did you mean 'rows_per_block'" in \
        capsys.readouterr().err

    top = write_config(tmp_path, {"canny": CANNY}, name="top.yaml", sead=3)
    assert annotate.main(annotate_args(src, tmp_path / "o3", top, "0")) == 2
    assert "did you mean 'seed'" in capsys.readouterr().err

    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")  # --out names a file: nothing can be written under it
    config = write_config(tmp_path, {"canny": CANNY}, name="ok.yaml")
    assert annotate.main(annotate_args(src, blocked / "out", config, "0")) == 2
    assert "cannot write to --out" in capsys.readouterr().err
