"""Killed runs: their temporary files are swept, and ingest's workers die with it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from graph200k import storage
from graph200k.shards import read_shard, read_stats, shard_path
from pipelines import ingest

ROOT = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _tmp(folder: Path, final: str, pid: int) -> Path:
    path = folder / f".{final}{storage.TMP_MARK}{pid}-0123abcd"
    path.write_bytes(b"half a shard")
    return path


def test_sweep_removes_temporary_files_of_dead_writers_only(tmp_path):
    dead = _dead_pid()
    stale = [_tmp(tmp_path, "000001.tar", dead), _tmp(tmp_path, "000001.stats.json", dead)]
    live = _tmp(tmp_path, "000002.tar", os.getpid())
    others = [tmp_path / "000001.tar", tmp_path / ".hidden", tmp_path / ".x.tmp-notapid-0a"]
    for p in others:
        p.write_bytes(b"kept")
    assert sorted(storage.sweep_stale_tmp(tmp_path)) == sorted(p.name for p in stale)
    assert sorted(tmp_path.iterdir()) == sorted([live, *others])
    assert storage.sweep_stale_tmp(tmp_path / "missing") == []
    assert storage.sweep_stale_tmp("memory://anything") == []


def test_a_zombie_writer_is_dead(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])  # not waited for: a zombie
    try:
        deadline = time.monotonic() + 30
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stale = _tmp(tmp_path, "000000.tar", child.pid)
        assert not storage.pid_alive(child.pid) and storage.pid_alive(os.getpid())
        assert storage.sweep_stale_tmp(tmp_path) == [stale.name]
    finally:
        child.wait()


def test_ingest_sweeps_stale_temporary_files_at_start(mini_parquet, tmp_path, capsys):
    stale = _tmp(tmp_path, "000003.tar", _dead_pid())
    live = _tmp(tmp_path, "000002.tar", os.getpid())
    assert ingest.main(["--source", str(mini_parquet), "--out", str(tmp_path), "--shard-size", "4",
                        "--shards", "3"]) == 0
    out = capsys.readouterr().out
    assert f"removed 1 temporary file(s) left by killed runs: {stale.name}" in out
    assert not stale.exists() and live.exists()


def _writing(out: Path, pids) -> int | None:
    """A worker in the middle of a shard: its pid is in a temporary file's name."""
    for name in os.listdir(out):
        for pid in pids:
            if f"{storage.TMP_MARK}{pid}-" in name and name.endswith(tuple("0123456789abcdef")):
                return pid
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="psutil process tree, Linux")
def test_workers_die_when_ingest_is_killed(mini_parquet, tmp_path):
    out = tmp_path / "out"
    parent = subprocess.Popen(
        [sys.executable, "-m", "pipelines.ingest", "--source", str(mini_parquet), "--out", str(out),
         "--shard-size", "1", "--panels", "both", "--workers", "2"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    workers, frozen = [], None
    try:
        deadline = time.monotonic() + 120
        while frozen is None:
            assert parent.poll() is None, "ingest ended before a worker was caught mid-shard"
            assert time.monotonic() < deadline, "no worker started writing a shard"
            workers = psutil.Process(parent.pid).children()
            frozen = _writing(out, [w.pid for w in workers]) if out.exists() else None
            time.sleep(0.01)
        # Freeze that worker mid-shard so it cannot finish by itself: only the signal its
        # parent's death sends can end it.
        os.kill(frozen, signal.SIGSTOP)
        parent.kill()
        parent.wait()
        gone, alive = psutil.wait_procs(workers, timeout=20)
        alive = [w for w in alive if w.status() != psutil.STATUS_ZOMBIE]
        assert alive == [], f"workers {[w.pid for w in alive]} outlived their killed parent"
    finally:
        for w in workers:
            try:
                w.kill()
            except psutil.NoSuchProcess:
                pass
    # The frozen worker left its temporary shard behind (unless it was stopped just between
    # two shards); the next run sweeps it.
    leftovers = [n for n in os.listdir(out) if f"{storage.TMP_MARK}{frozen}-" in n]
    if not leftovers:
        return
    shard = int(leftovers[0][1:7])
    assert ingest.main(["--source", str(mini_parquet), "--out", str(out), "--shard-size", "1",
                        "--panels", "both", "--shards", str(shard)]) == 0
    assert not [n for n in os.listdir(out) if storage.is_tmp(n)]
    assert read_stats(out, shard)["written"] == len(list(read_shard(shard_path(out, shard))))
