"""Per-shard leases: two annotate runs on the same shards never do the same work twice.

Before it plans a (stage, shard), a run creates `{out}/_leases/{stage}/{shard:06d}.json`
exclusively (O_EXCL locally, a conditional PUT on object stores) holding its owner and an
expiry. A second run finds the lease and skips that shard, saying who holds it and until
when. A lease is taken over when it has expired, or when its owner ran on this host and
that process is gone (a killed run: rerunning at once resumes, no waiting for the expiry).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass

from graph200k import storage

LEASES_DIR = "_leases"


def run_owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "run": uuid.uuid4().hex[:12]}


def lease_path(root: str, stage: str, shard: int) -> str:
    return storage.join(root, LEASES_DIR, stage, f"{shard:06d}.json")


def _stale(held: dict, owner: dict) -> bool:
    """Whether a lease no longer counts: expired, or its owner ran on this host and is gone."""
    return time.time() > float(held.get("expires", 0)) or (
        held.get("host") == owner["host"] and not storage.pid_alive(int(held.get("pid", -1))))


@dataclass
class Lease:
    path: str
    owner: dict


def acquire(root: str, stage: str, shard: int, owner: dict, seconds: float) -> Lease | str:
    """A Lease, or a sentence saying who holds the shard."""
    path = lease_path(root, stage, shard)
    body = json.dumps({**owner, "expires": time.time() + seconds}).encode()
    for _ in range(2):
        if storage.create_exclusive(path, body):
            return Lease(path, owner)
        try:
            held = json.loads(storage.read_bytes(path))
        except (FileNotFoundError, ValueError):
            storage.remove(path)  # vanished or half-written: try once more
            continue
        if held.get("run") == owner["run"]:
            return Lease(path, owner)
        if not _stale(held, owner):
            until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(held["expires"])))
            return (f"leased by run {held.get('run')} (pid {held.get('pid')} on "
                    f"{held.get('host')}) until {until}; it is being annotated now: rerun "
                    "later, or delete the lease file if that run is gone: " + path)
        storage.remove(path)
    return f"could not take the lease {path}; rerun"


def release(lease: Lease) -> None:
    try:
        held = json.loads(storage.read_bytes(lease.path))
    except (FileNotFoundError, ValueError):
        return
    if held.get("run") == lease.owner["run"]:
        storage.remove(lease.path)


def sweep_stale(root: str, stage: str, complete: set[int], owner: dict) -> list[int]:
    """Remove the stale leases (`_stale`) on shards whose `stage` sidecar is complete: a run
    killed after a sidecar was joined, before it released the lease, leaves one that no
    later run would take (complete shards are skipped before any lease is asked for).
    One listing of the stage's lease folder. Returns the shards whose lease was removed."""
    removed = []
    wanted = {lease_path(root, stage, shard): shard for shard in complete}
    folder = storage.join(root, LEASES_DIR, stage)
    for name in storage.listdir(folder):
        path = storage.join(folder, name)
        shard = wanted.get(path)
        if shard is None:
            continue
        try:
            held = json.loads(storage.read_bytes(path))
        except FileNotFoundError:
            continue
        except ValueError:
            held = {}  # half-written by a killed run: stale
        if _stale(held, owner):
            storage.remove(path)
            removed.append(shard)
    return removed
