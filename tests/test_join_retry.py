"""The join of a stage's parts is idempotent under retry (Ray reruns a join whose worker
died): killed between moving the new tar and the new index into place, or before its
commit point, a retry produces the very bytes of an uninterrupted join, and a --retry-failed
join never reads the new tar through the old index."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from annotate_helpers import SAMPLES, make_source_shard
from annotators.base import FAILED, OK
from graph200k import storage, verify
from graph200k.dataset import ShardSet
from pipelines import annotate_io
from pipelines.annotate_io import COUNT, INDEX, SHARD, join_parts, write_parts
from pipelines.stage_ops import (KEEP, KEY, RUN, annot_column, do_column, object_column,
                                 status_column)

STAGE = "canny"
KEYS = [f"{i:07d}" for i in range(SAMPLES)]


def _write_parts(root, rows):
    """rows: (do, status, member bytes or None) per key; two parts of 3 rows each."""
    for lo in (0, 3):
        chunk = rows[lo:lo + 3]
        n = len(chunk)
        batch = {KEY: object_column(KEYS[lo:lo + 3]), SHARD: np.zeros(n, np.int64),
                 INDEX: np.arange(lo, lo + n, dtype=np.int64),
                 COUNT: np.full(n, SAMPLES, np.int64),
                 do_column(STAGE): object_column(r[0] for r in chunk),
                 status_column(STAGE): object_column(r[1] for r in chunk),
                 "canny.png": object_column(r[2] for r in chunk),
                 annot_column(STAGE): object_column("" for _ in chunk)}
        write_parts(batch, STAGE, str(root), ["canny.png"], [])


def _join(root, run):
    return join_parts(str(root), STAGE, 0, SAMPLES, [(0, 3), (3, 6)], {"t": 1}, run)


def _files(root):
    part = ShardSet(root).stage_part(STAGE, 0)
    stats = json.loads(storage.read_bytes(part.stats_url))
    stats.pop("source")  # names the folder
    return storage.read_bytes(part.url), storage.read_bytes(part.index_url), stats


@pytest.fixture
def retrying(tmp_path):
    """A sidecar with one failed sample (run r1), and the parts of a --retry-failed run (r2)
    that keeps the five others and now annotates the failed one; plus the files an
    uninterrupted r2 join writes (from a copy)."""
    root, src = tmp_path / "out", tmp_path / "src"
    make_source_shard(src, 0, SAMPLES)
    ShardSet.create(root, src)
    first = [(RUN, f"{FAILED}: boom", None) if k == "0000002" else
             (RUN, OK, f"edges of {k}".encode() * 40) for k in KEYS]
    _write_parts(root, first)
    _join(root, "r1")
    _write_parts(root, [(RUN, OK, b"edges of 0000002, second try" * 30) if k == "0000002"
                        else (KEEP, "", None) for k in KEYS])
    control = tmp_path / "control"
    shutil.copytree(tmp_path, control, ignore=shutil.ignore_patterns("control"))
    (control / "out" / "graph200k.json").write_text(json.dumps(
        {"version": 1, "source": str(control / "src")}))
    _join(control / "out", "r2")
    return root, _files(control / "out")


def test_killed_between_the_tar_and_the_index_a_retry_writes_the_right_bytes(retrying,
                                                                            monkeypatch):
    root, want = retrying
    real = storage.rename
    moved = []

    def dies_after_the_tar(src, dest):
        if moved:
            raise SystemExit("worker killed")  # not an Exception: nothing may catch it
        real(src, dest)
        moved.append(dest)

    monkeypatch.setattr(storage, "rename", dies_after_the_tar)
    with pytest.raises(SystemExit):
        _join(root, "r2")
    monkeypatch.setattr(storage, "rename", real)
    part = ShardSet(root).stage_part(STAGE, 0)
    assert moved == [part.url]  # the new tar is in place, the old index beside it
    assert not storage.exists(part.stats_url)  # which counts as nothing complete

    stats = _join(root, "r2")  # Ray's retry
    assert _files(root) == want
    assert (stats["ok"], stats["failed"]) == (SAMPLES, 0)
    assert not storage.exists(annotate_io.parts_folder(str(root), STAGE, 0))
    assert verify.verify(str(root)) == []
    assert _join(root, "r2")["ok"] == SAMPLES  # a retry after it all: nothing to redo


def test_killed_before_the_commit_point_the_old_sidecar_is_untouched(retrying, monkeypatch):
    root, want = retrying
    before = _files(root)
    real = storage.atomic_write

    def dies_at_commit(path, data):
        if str(path).endswith(annotate_io.COMMIT):
            raise SystemExit("worker killed")
        real(path, data)

    monkeypatch.setattr(storage, "atomic_write", dies_at_commit)
    with pytest.raises(SystemExit):
        _join(root, "r2")
    monkeypatch.setattr(storage, "atomic_write", real)
    assert _files(root) == before  # r1's sidecar, complete and whole
    _join(root, "r2")
    assert _files(root) == want


def test_a_kept_row_is_never_copied_through_another_tars_index(retrying):
    """The case the issue read from the code: the old sidecar's tar replaced under its index
    (here by hand). The join refuses instead of copying wrong byte ranges."""
    root, _ = retrying
    part = ShardSet(root).stage_part(STAGE, 0)
    raw = bytearray(storage.read_bytes(part.url))
    raw[700] ^= 0xFF
    storage.atomic_write(part.url, bytes(raw))
    with pytest.raises(annotate_io.ShardError, match="not the sidecar its stats record"):
        _join(root, "r2")
