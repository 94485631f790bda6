"""A release is all there and stays right: publish refuses incomplete stages (unless
--allow-partial), duplicate keys and orphan sidecars; republishing repairs a damaged
destination; bad `--to` values are one-line errors with exit code 2."""

from __future__ import annotations

import shutil

from annotate_helpers import SAMPLES, make_source_shard, ray_local  # noqa: F401  (a fixture)
from graph200k import manifest as manifest_cli
from graph200k import verify
from integrity_data import data, pristine, publish_to  # noqa: F401  (fixtures)


def _stderr_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line]


def test_a_stage_missing_one_shard_blocks_publish_unless_allow_partial(data, capsys):
    d, _ = data
    for f in (d / "out" / "canny").glob("000001.*"):  # rm canny/000001.*
        f.unlink()
    assert verify.main(["--shards", str(d / "out")]) == 1
    out = capsys.readouterr().out
    assert "canny/000001.tar" in out and "incomplete: stage canny has not annotated" in out
    assert "--shards 1 --stages canny" in out  # the repair
    assert publish_to(d) == 1
    err = capsys.readouterr().err
    assert "stages are incomplete" in err and "--allow-partial" in err
    assert not (d / "release").exists()

    assert manifest_cli.main(["--shards", str(d / "out")]) == 0  # it was built with canny
    assert verify.main(["--shards", str(d / "out"), "--allow-partial"]) == 0
    assert publish_to(d, "--allow-partial") == 0
    assert (d / "release" / "000001.tar").exists()


def test_a_run_that_left_most_shards_undone_is_not_published(data, capsys):
    d, _ = data
    for shard in range(2, 6):  # four more source shards, never annotated
        make_source_shard(d / "source", shard, SAMPLES)
    assert publish_to(d) == 1
    err = capsys.readouterr().err
    assert [f"canny/{n:06d}.tar" in err for n in range(2, 6)] == [True] * 4
    assert "canny/000000.tar" not in err and not (d / "release").exists()


def test_republishing_repairs_a_damaged_destination_and_says_so(data, capsys):
    d, _ = data
    assert publish_to(d) == 0
    release = d / "release"
    good = {p.name: p.read_bytes() for p in release.iterdir()}
    capsys.readouterr()
    assert publish_to(d) == 0  # nothing damaged: only the card is copied
    assert "publish: 1 file(s) copied" in capsys.readouterr().out

    raw = bytearray(good["000000.tar"])
    raw[len(raw) // 3] ^= 0xFF
    (release / "000000.tar").write_bytes(bytes(raw))
    (release / "000001.tar").write_bytes(good["000001.tar"][:1000])
    assert publish_to(d) == 0
    out = capsys.readouterr().out
    assert "shard 000000 at the destination differs" in out and "sha256 differs" in out
    assert "shard 000001 at the destination differs" in out and "holds 1000 bytes" in out
    assert "2 damaged shard(s) there repaired" in out
    assert {p.name: p.read_bytes() for p in release.iterdir()} == good
    assert verify.main(["--shards", str(release)]) == 0


def test_a_shard_copied_under_another_number_is_reported(data, capsys):
    d, _ = data
    for f in (d / "source").glob("000000.*"):
        shutil.copy(f, d / "source" / f.name.replace("000000", "000007"))
    problems = verify.verify(str(d / "source"))  # the plain folder alone
    assert [(p.shard, p.what.split(":")[0]) for p in problems] == [(0, "duplicate keys")]
    assert "also in shard(s) 000007" in problems[0].what
    assert verify.main(["--shards", str(d / "out"), "--allow-partial"]) == 1
    assert "duplicate keys: 6 key(s)" in capsys.readouterr().out
    assert publish_to(d, "--allow-partial") == 1
    assert "duplicate keys" in capsys.readouterr().err


def test_an_orphan_sidecar_is_reported_and_blocks_publish(data, capsys):
    d, _ = data
    for f in (d / "out" / "canny").glob("000001.*"):
        shutil.copy(f, d / "out" / "canny" / f.name.replace("000001", "000009"))
    problems = [p for p in verify.verify(str(d / "out")) if "orphan" in p.what]
    assert sorted(p.part for p in problems) == ["canny/000009.index.json",
                                                "canny/000009.stats.json", "canny/000009.tar"]
    assert publish_to(d) == 1
    assert "no source shard 000009.tar" in capsys.readouterr().err

    for f in (d / "source").glob("000001.*"):  # the source shard removed, its sidecar kept
        f.unlink()
    assert any(p.part == "canny/000001.tar" and "orphan" in p.what
               for p in verify.verify(str(d / "out")))


def test_bad_destinations_are_one_line_errors(data, tmp_path, capsys):
    d, _ = data
    assert publish_to(d, to="x") == 0  # a folder is fine
    capsys.readouterr()
    from graph200k import publish

    def run(to):
        rc = publish.main(["--src", str(d / "out"), "--to", to, "--config", "", "--tasks", ""])
        return rc, _stderr_lines(capsys)

    rc, err = run("bogus://x/y")
    assert rc == 2 and len(err) == 1 and "bogus://x/y" in err[0] and "Protocol" in err[0]
    (tmp_path / "a-file").write_text("not a folder")
    rc, err = run(str(tmp_path / "a-file"))
    assert rc == 2 and len(err) == 1 and "is a file, not a folder" in err[0]
    rc, err = run("hf://datasets/only-a-name")
    assert rc == 2 and "hf://datasets/ORG/NAME" in err[0]
