"""ingest's command line: bad arguments and outputs are clear errors, fsspec URLs work."""

import os
import uuid

import fsspec
import pytest

from graph200k import storage
from graph200k.shards import list_shards, read_shard, read_stats, shard_path
from pipelines import ingest


def _fails(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        ingest.main(argv)
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--shard-size", "-5"], "argument --shard-size: -5 is not allowed: it must be 1 or more"),
    (["--shard-size", "0"], "argument --shard-size: 0 is not allowed"),
    (["--shard-size", "1k"], "argument --shard-size: '1k' is not a whole number"),
    (["--shards", "2-0"], "argument --shards: range '2-0' is empty: write the lower shard first"),
    (["--shards", "-1"], "argument --shards: '-1' is not a shard number or range"),
    (["--shards", "x"], "argument --shards: 'x' is not a shard number or range: use 'all', N"),
    (["--shards", "1,,2"], "argument --shards: '' is not a shard number"),
    (["--workers", "0"], "argument --workers: 0 is not allowed"),
    (["--max-description-chars", "-1"], "argument --max-description-chars: -1 is not allowed"),
    (["--quality", "strict"], "argument --quality: quality 'strict': use a preset"),
    (["--invalid-descriptions", "maybe"], "argument --invalid-descriptions: invalid choice"),
])
def test_bad_arguments_are_usage_errors_and_write_nothing(args, message, mini_parquet, tmp_path,
                                                          capsys):
    out = tmp_path / "out"
    code, err = _fails(["--source", str(mini_parquet), "--out", str(out), *args], capsys)
    assert code == 2
    assert err.startswith("usage: python -m pipelines.ingest") and message in err
    assert "Traceback" not in err and not out.exists()


def test_out_of_range_shards_are_a_usage_error_naming_the_range(mini_parquet, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _fails(["--source", str(mini_parquet), "--out", str(out), "--shard-size", "4",
                        "--shards", "2,7-9"], capsys)
    assert code == 2
    assert "argument --shards: shard(s) [7, 8, 9] out of range: this source has 4 shards (0-3)" \
        in err
    assert not out.exists()


def test_a_missing_source_path_is_a_clear_error(tmp_path, capsys):
    code, err = _fails(["--source", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "o")],
                       capsys)
    assert code == 2 and f"argument --source: {tmp_path / 'nope.parquet'}: no such file" in err
    code, err = _fails(["--source", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "no parquet files found" in err


def test_an_output_folder_that_cannot_be_created_is_a_clear_error(mini_parquet, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a folder")
    out = blocker / "shards"
    with pytest.raises(SystemExit) as e:
        ingest.main(["--source", str(mini_parquet), "--out", str(out), "--shard-size", "4",
                     "--shards", "0"])
    assert str(e.value) == (f"python -m pipelines.ingest: error: cannot write to the output "
                            f"folder {out}: Not a directory; choose another --out or fix its "
                            "permissions")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_a_clear_error(mini_parquet, tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(SystemExit, match=f"cannot write to the output folder {out}: "
                                             "Permission denied"):
            ingest.main(["--source", str(mini_parquet), "--out", str(out), "--shard-size", "4",
                         "--shards", "0"])
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o700)


# -- fsspec URLs (memory:// is fsspec's in-process filesystem) --------------------------------

@pytest.fixture
def memory_root():
    root = f"memory://ingest-{uuid.uuid4().hex[:8]}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root[len("memory://"):]):
        fs.rm(root[len("memory://"):], recursive=True)


def test_out_may_be_a_url_with_the_same_bytes_as_a_local_folder(mini_parquet, tmp_path,
                                                                memory_root, capsys):
    args = ["--source", str(mini_parquet), "--shard-size", "4", "--shards", "0"]
    url = f"{memory_root}/shards/source"
    assert ingest.main([*args, "--out", url]) == 0
    assert ingest.main([*args, "--out", str(tmp_path)]) == 0
    assert storage.read_bytes(shard_path(url, 0)) == shard_path(tmp_path, 0).read_bytes()
    assert read_stats(url, 0)["written"] == read_stats(tmp_path, 0)["written"] == 4
    assert storage.exists(storage.join(url, "000000.index.json"))
    assert [storage.name(p) for p in list_shards(url)] == ["000000.tar"]
    capsys.readouterr()
    assert ingest.main([*args, "--out", url]) == 0  # resume works on URLs too
    assert "0 to write, 1 already complete" in capsys.readouterr().out


@pytest.mark.parametrize("layout", ["file", "folder", "saved"])
def test_source_may_be_a_url(layout, mini_parquet, tmp_path, memory_root):
    fs = fsspec.filesystem("memory")
    if layout == "saved":
        import datasets

        source = f"{memory_root}/saved"
        datasets.load_dataset("parquet", data_files=[str(mini_parquet)],
                              split="train").save_to_disk(source)
    else:
        fs.put_file(str(mini_parquet), f"{memory_root[9:]}/src/part-00000.parquet")
        source = f"{memory_root}/src" + ("/part-00000.parquet" if layout == "file" else "")
    assert ingest.main(["--source", source, "--out", str(tmp_path), "--shard-size", "4",
                        "--shards", "1"]) == 0
    keys = [s["__key__"] for s in read_shard(shard_path(tmp_path, 1))]
    assert keys == ["0000004", "0000005", "0000007"]  # row 6 is below the quality threshold


def test_a_missing_source_url_is_a_clear_error(tmp_path, memory_root, capsys):
    code, err = _fails(["--source", f"{memory_root}/nothing", "--out", str(tmp_path)], capsys)
    assert code == 2 and f"{memory_root}/nothing: no such file or folder" in err


def test_memory_urls_cannot_be_shared_with_worker_processes(mini_parquet, memory_root, capsys):
    code, err = _fails(["--source", str(mini_parquet), "--out", memory_root, "--workers", "2"],
                       capsys)
    assert code == 2 and "memory:// lives inside one process" in err
