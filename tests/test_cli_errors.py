"""Bad input to the dataset CLIs ends in one line on stderr and a documented exit code
(2: bad input), never a traceback or exit 0."""

from __future__ import annotations

import json

import pytest
from annotated_shards import write_annotated_shards

from graph200k import manifest as manifest_cli
from graph200k import preview, sample_tasks
from pipelines import ingest, report

UNWRITABLE = "/proc/x/{}"  # /proc takes no new folders, even for root


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "shards"
    write_annotated_shards(folder, num_samples=4, per_shard=2, size=32)
    assert manifest_cli.main(["--shards", str(folder)]) == 0
    return folder


def _one_line(capsys, *words) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert all(w in err[0] for w in words), err[0]
    return err[0]


def test_sample_tasks_with_an_unwritable_out(shards, capsys):
    out = UNWRITABLE.format("t.jsonl")
    assert sample_tasks.main(["--shards", str(shards), "--num", "2", "--out", out]) == 2
    _one_line(capsys, "--out", "cannot write /proc/x/t.jsonl")


def test_preview_bad_task_json(shards, tmp_path, capsys):
    assert preview.main(["--task", "{bad", "--shards", str(shards),
                         "--out", str(tmp_path / "p.png")]) == 2
    _one_line(capsys, "--task is not valid JSON")
    assert preview.main(["--task", json.dumps({"task_id": 1}), "--shards", str(shards),
                         "--out", str(tmp_path / "p.png")]) == 2
    _one_line(capsys, "--task is not a task")
    assert not (tmp_path / "p.png").exists()


def test_preview_missing_shards(tmp_path, capsys):
    assert preview.main(["--key", "0000001", "--shards", "/nonexistent",
                         "--out", str(tmp_path / "p.png")]) == 2
    _one_line(capsys, "no shards", "/nonexistent")


def test_preview_unwritable_out(shards, capsys):
    assert preview.main(["--key", "0000001", "--shards", str(shards),
                         "--out", UNWRITABLE.format("p.png")]) == 2
    _one_line(capsys, "cannot write /proc/x/p.png")


def test_manifest_unwritable_out(shards, capsys):
    assert manifest_cli.main(["--shards", str(shards), "--out", UNWRITABLE.format("m.parquet")]) == 2
    _one_line(capsys, "cannot write /proc/x/m.parquet")


def test_ingest_a_zero_byte_parquet(tmp_path, capsys):
    source = tmp_path / "empty.parquet"
    source.write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        ingest.main(["--source", str(source), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--source" in err and "not a readable Subjects200K parquet" in err
    assert "ArrowInvalid" in err and not (tmp_path / "out").exists()


def test_report_on_a_folder_that_is_not_an_annotate_output(tmp_path, shards, capsys):
    assert report.main(["--out", "/nonexistent"]) == 2
    _one_line(capsys, "no annotate output there", "/nonexistent")
    assert report.main(["--out", str(tmp_path)]) == 2  # exists, but empty
    _one_line(capsys, "no annotate output there")
    assert report.main(["--out", str(shards), "--stages", "canny"]) == 2  # plain: no stages
    _one_line(capsys, "--stages: canny not in")
