"""Leases that hold: two processes racing for one lease get exactly one holder (with no lease
and over a dead owner's), a renewing owner is never taken over, and an owner that lost its
lease is told so before it commits. Local disk here; S3 (moto's server) at the end."""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys
import time

import pytest

from pipelines import lease_store, leases

TRIALS = 300


def _racer(root: str, stage: str, trials: int, barrier, results) -> None:
    owner = leases.run_owner()
    for shard in range(trials):
        barrier.wait()
        got = leases.acquire(root, stage, shard, owner, 60)
        results.put((shard, owner["run"], not isinstance(got, str)))


def _race(root: str, stage: str, trials: int) -> dict[int, list[str]]:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(root, stage, trials, barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    holders: dict[int, list[str]] = {n: [] for n in range(trials)}
    for _ in range(2 * trials):
        shard, run, won = results.get(timeout=60)
        if won:
            holders[shard].append(run)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return holders


def _newest(root: str, stage: str, shard: int) -> dict:
    folder = leases.lease_folder(root, stage, shard)
    newest = max(n for n in lease_store.listdir(folder) if n.endswith(".json"))
    return json.loads(lease_store.read(f"{folder}/{newest}")[0])


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_two_processes_racing_with_no_lease_get_one_holder_every_time(tmp_path):
    start = time.perf_counter()
    holders = _race(str(tmp_path), "canny", TRIALS)
    seconds = time.perf_counter() - start
    both = [n for n, runs in holders.items() if len(runs) != 1]
    assert not both, f"{len(both)} of {TRIALS} trials had {[holders[n] for n in both[:3]]}"
    for shard, (run,) in holders.items():  # the holder is the one the file names
        assert _newest(str(tmp_path), "canny", shard)["run"] == run
    assert seconds < 30, seconds


def test_two_processes_racing_over_a_dead_owners_lease_get_one_holder_every_time(tmp_path):
    root = str(tmp_path)
    me = leases.run_owner()
    dead_here = {"host": me["host"], "pid": _dead_pid(), "run": "killed"}
    expired_elsewhere = {"host": "another-host", "pid": 1, "run": "gone"}
    for shard in range(TRIALS):  # half: a killed run of this host; half: expired elsewhere
        owner, seconds = (dead_here, 60) if shard % 2 else (expired_elsewhere, -1)
        assert not isinstance(leases.acquire(root, "canny", shard, owner, seconds), str)
    start = time.perf_counter()
    holders = _race(root, "canny", TRIALS)
    seconds = time.perf_counter() - start
    both = [n for n, runs in holders.items() if len(runs) != 1]
    assert not both, f"{len(both)} of {TRIALS} trials had {[holders[n] for n in both[:3]]}"
    for shard, (run,) in holders.items():
        assert _newest(root, "canny", shard)["run"] == run
        # the dead owner's generation is gone: one file per lease
        assert len(lease_store.listdir(leases.lease_folder(root, "canny", shard))) == 1
    assert seconds < 30, seconds


def test_a_live_renewing_run_is_never_taken_over_and_a_stopped_one_is(tmp_path):
    root, seconds = str(tmp_path), 0.8
    other = {"host": "another-host", "pid": 1, "run": "other"}  # no pid check: expiry only
    lease = leases.acquire(root, "canny", 0, leases.run_owner(), seconds)
    first_expiry = lease.expires
    beat = leases.Heartbeat(seconds)
    beat.add(("canny", 0), lease)
    while time.time() < first_expiry + 2 * seconds:  # well past the first expiry
        assert "leased by run" in leases.acquire(root, "canny", 0, other, seconds)
        time.sleep(0.05)
    lease.assert_held()
    assert not beat.lost
    assert beat.stop() == [lease]

    time.sleep(seconds + 0.1)  # no heartbeat: it expires and is taken over
    taken = leases.acquire(root, "canny", 0, other, 60)
    assert not isinstance(taken, str) and taken.generation == lease.generation + 1
    with pytest.raises(leases.LeaseLost, match="now held by run other"):
        lease.assert_held()
    assert not leases.renew(lease)
    leases.release(lease)  # not its own any more: leaves the new owner's lease alone
    taken.assert_held()


def test_an_owner_past_its_expiry_does_not_renew_and_fails_the_fence(tmp_path):
    lease = leases.acquire(str(tmp_path), "canny", 0, leases.run_owner(), 0.2)
    time.sleep(0.3)
    with pytest.raises(leases.LeaseLost, match="expired"):
        lease.assert_held()
    assert not leases.renew(lease)  # too late: a taker may be at work


def test_a_shard_of_a_killed_local_run_is_taken_over_at_once(tmp_path):
    root = str(tmp_path)
    me = leases.run_owner()
    dead = {"host": me["host"], "pid": _dead_pid(), "run": "killed"}
    assert not isinstance(leases.acquire(root, "canny", 0, dead, 3600), str)
    assert not isinstance(leases.acquire(root, "canny", 0, me, 3600), str)
    live = {"host": me["host"], "pid": me["pid"], "run": "live"}  # this process: alive
    assert not isinstance(leases.acquire(root, "canny", 1, live, 3600), str)
    assert "leased by run live" in leases.acquire(root, "canny", 1, me, 3600)


def test_a_lease_file_appears_whole_or_not_at_all(tmp_path):
    """create-then-link: the name never points at an empty or partial file."""
    path = str(tmp_path / "x" / "00000000.json")
    assert lease_store.create(path, b'{"a": 1}')
    assert not lease_store.create(path, b'{"b": 2}')
    data, tag = lease_store.read(path)
    assert data == b'{"a": 1}' and not [p for p in (tmp_path / "x").iterdir()
                                        if p.name.startswith(".")]
    assert not lease_store.replace(path, b"{}", "stale-tag")
    assert lease_store.replace(path, b'{"c": 3}', tag)
    assert not lease_store.delete(path, tag)  # the version it named is gone
    assert lease_store.delete(path, lease_store.read(path)[1])


def test_s3_conditional_writes_and_a_race(bucket):
    path = f"{bucket}/_leases/canny/000000/00000000.json"
    assert lease_store.create(path, b'{"a": 1}')
    assert not lease_store.create(path, b'{"b": 2}')  # If-None-Match: *
    data, etag = lease_store.read(path)
    assert data == b'{"a": 1}'
    assert not lease_store.replace(path, b"{}", '"0123"')  # If-Match with a stale ETag
    assert lease_store.replace(path, b'{"c": 3}', etag)
    assert not lease_store.delete(path, etag)
    assert lease_store.delete(path, lease_store.read(path)[1])
    assert lease_store.read(path) is None

    trials = 20
    holders = _race(bucket, "hed", trials)
    assert all(len(runs) == 1 for runs in holders.values()), holders
    other = {"host": "another-host", "pid": 1, "run": "other"}
    lease = leases.acquire(bucket, "depth", 0, leases.run_owner(), 0.5)
    assert leases.renew(lease)
    time.sleep(0.6)
    taken = leases.acquire(bucket, "depth", 0, other, 60)
    assert not isinstance(taken, str)
    with pytest.raises(leases.LeaseLost):
        lease.assert_held()
    assert leases.sweep_stale(bucket, "depth", {0}, other) == []  # live: kept
