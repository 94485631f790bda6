"""Per-shard leases: two annotate runs never do the same (stage, shard), and a run that lost
its lease commits nothing.

A lease is a numbered file, `{out}/_leases/{stage}/{shard:06d}/{generation:08d}.json`,
holding its owner (host, pid, run), a random token and an expiry. The newest generation is
the lease; the generation number and the token are its fencing token.

- Acquire: with no lease, create generation 0; over a stale lease (expired, or its owner
  was a process of this host that is gone), create the next generation. Creation is
  exclusive and writes the whole file at once (pipelines.lease_store: hard link locally,
  `If-None-Match: *` on S3), so of two runs racing for one generation exactly one wins. The
  winner then checks that the lease it superseded is still the one it judged stale (not
  renewed, released or swept meanwhile) — for generation 0, that no newer one exists — else
  it backs off; only then it deletes the older generations.
- Renew: the run's `Heartbeat` rewrites its file with a later expiry every `seconds / 4`
  (a write conditional on the version it wrote last), only while it is more than
  `RENEW_MARGIN` from expiring.
  Others take a lease over only after its expiry, so an owner and a taker never write at
  the same moment, and a live run is never taken over. A killed run stops renewing: its
  shards are free after `lease_seconds` (default 2 min) on any host, at once on its own.
- Fence: `Lease.assert_held()` (the join calls it right before it commits) raises
  `LeaseLost` unless the lease is still the newest generation, with this run's token, not
  expired. A run that stalled past its expiry and was taken over cannot overwrite the new
  owner's sidecar.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from graph200k import storage
from pipelines import lease_store

LEASES_DIR = "_leases"
RENEW_MARGIN = 0.1  # of `seconds`: an owner renews only while this much is left


class LeaseLost(RuntimeError):
    """This run's lease on a (stage, shard) is gone: another run holds it now."""


def run_owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "run": uuid.uuid4().hex[:12]}


def lease_folder(root: str, stage: str, shard: int) -> str:
    return storage.join(root, LEASES_DIR, stage, f"{shard:06d}")


def _generation_path(folder: str, generation: int) -> str:
    return storage.join(folder, f"{generation:08d}.json")


def _generations(folder: str) -> list[int]:
    return sorted(int(n[:-5]) for n in lease_store.listdir(folder)
                  if n.endswith(".json") and n[:-5].isdigit())


def _read(path: str) -> tuple[dict, str] | None:
    got = lease_store.read(path)
    if got is None:
        return None
    try:
        held = json.loads(got[0])
    except ValueError:
        held = {}  # not ours to parse: counts as stale
    return (held if isinstance(held, dict) else {}), got[1]


def _stale(held: dict, owner: dict, now: float) -> bool:
    """Whether a lease no longer counts: expired, or its owner ran on this host and is gone."""
    return now > float(held.get("expires", 0)) or (
        held.get("host") == owner["host"] and not storage.pid_alive(int(held.get("pid", -1))))


def _holder(held: dict) -> str:
    until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(held.get("expires", 0))))
    return (f"run {held.get('run')} (pid {held.get('pid')} on {held.get('host')}, "
            f"renewed until {until})")


@dataclass
class Lease:
    folder: str
    generation: int
    token: str
    owner: dict
    seconds: float
    expires: float = 0.0
    tag: str = field(default="", repr=False)

    @property
    def path(self) -> str:
        return _generation_path(self.folder, self.generation)

    def body(self, expires: float) -> bytes:
        return json.dumps({**self.owner, "token": self.token, "generation": self.generation,
                           "expires": expires}).encode()

    def assert_held(self, clock=time.time) -> None:
        """Raise `LeaseLost` unless this run still holds the lease (the fencing check)."""
        got = _read(self.path)
        newest = _generations(self.folder)
        if got is None or got[0].get("token") != self.token or \
                (newest and newest[-1] != self.generation):
            taker = _read(_generation_path(self.folder, newest[-1])) if newest else None
            by = _holder(taker[0]) if taker else "nobody (released)"
            raise LeaseLost(f"the lease {self.path} was taken over, now held by {by}; "
                            "this run's result is not committed")
        if clock() > float(got[0].get("expires", 0)):
            raise LeaseLost(f"the lease {self.path} expired (its run stopped renewing it); "
                            "this run's result is not committed")


def acquire(root: str, stage: str, shard: int, owner: dict, seconds: float,
            clock=time.time) -> Lease | str:
    """A Lease, or a sentence saying who holds the shard."""
    folder = lease_folder(root, stage, shard)
    for _ in range(4):
        older = _generations(folder)
        superseded = None
        if older:
            got = _read(_generation_path(folder, older[-1]))
            if got is None:
                continue  # released or taken over as we looked
            held, tag = got
            if held.get("run") == owner["run"] and held.get("token"):
                return Lease(folder, older[-1], held["token"], owner, seconds,
                             float(held.get("expires", 0)), tag)
            if not _stale(held, owner, clock()):
                return (f"leased by {_holder(held)}; it is being annotated now: rerun after "
                        f"that run ends (a run that died frees it within {seconds:.0f} s)")
            superseded = (older[-1], tag)
        lease = Lease(folder, older[-1] + 1 if older else 0, uuid.uuid4().hex, owner, seconds)
        lease.expires = clock() + seconds
        lease.tag = lease_store.create(lease.path, lease.body(lease.expires))
        if lease.tag is None:
            continue  # another run created this generation first: look again
        if superseded is None:
            # generation 0 after an empty listing: a run that listed long ago (before the
            # generations now there) may have created it; the newest one counts
            kept = _generations(folder)[-1] == lease.generation
        else:
            # nothing newer can exist (ours is fresh); the one replaced must be unchanged
            now = _read(_generation_path(folder, superseded[0]))
            kept = now is not None and now[1] == superseded[1]
        if not kept:
            lease_store.delete(lease.path, lease.tag)  # lost the race after all
            continue
        for generation in older:
            old = _read(_generation_path(folder, generation))
            if old is not None:
                lease_store.delete(_generation_path(folder, generation), old[1])
        return lease
    return f"could not take the lease in {folder} (other runs kept changing it); rerun"


def renew(lease: Lease, clock=time.time) -> bool:
    """Push the expiry `lease.seconds` ahead: one conditional write of the version this run
    wrote last. False when the lease is no longer this run's (changed by another, or too
    close to its expiry to renew safely: then it is let go). While unexpired, nobody may
    take it over, so no newer generation can exist: no listing needed."""
    now = clock()
    if now > lease.expires - RENEW_MARGIN * lease.seconds:
        return False
    expires = now + lease.seconds
    tag = lease_store.replace(lease.path, lease.body(expires), lease.tag)
    if tag is None:
        return False
    lease.expires, lease.tag = expires, tag
    return True


def release(lease: Lease) -> None:
    got = _read(lease.path)
    if got is not None and got[0].get("token") == lease.token:
        lease_store.delete(lease.path, got[1])
        lease_store.remove_empty_folder(lease.folder)


class Heartbeat:
    """Renews every lease a run holds, every `seconds / 4`, in a daemon thread (16 renewals
    at a time: one conditional write each, thousands of leases on S3 fit in a beat). A
    lease that cannot be renewed is dropped from the beat and named in `lost` (the join's
    fencing check then refuses that shard). `pop` waits for a renewal in flight, so a
    release never races one."""

    def __init__(self, seconds: float, log=None, threads: int = 16):
        self.interval = max(0.05, float(seconds) / 4)
        self.leases: dict = {}
        self.lost: dict = {}
        self.log = log
        self._locks: dict = {}  # key -> held while that lease is renewed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = threads
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def add(self, key, lease: Lease) -> None:
        with self._lock:
            self.leases[key], self._locks[key] = lease, threading.Lock()

    def pop(self, key) -> Lease | None:
        with self._lock:
            lease, busy = self.leases.pop(key, None), self._locks.pop(key, None)
        if busy is not None:
            with busy:  # a renewal in flight ends first
                pass
        return lease

    def _renew(self, key, lease: Lease, busy: threading.Lock) -> None:
        with busy:
            with self._lock:
                if self.leases.get(key) is not lease:
                    return  # popped meanwhile: released by the run
            try:
                ok = renew(lease)
            except OSError as e:  # the store is unreachable this time: try next beat
                if self.log:
                    self.log(f"lease {lease.path}: renewal failed ({e}); retrying")
                return
            if not ok:
                with self._lock:
                    self.leases.pop(key, None)
                    self._locks.pop(key, None)
                self.lost[key] = lease.path
                if self.log:
                    self.log(f"lease {lease.path}: lost (taken over or expired); its shard "
                             "will not be committed by this run", True)

    def _beat(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self._threads, thread_name_prefix="lease-renew") as pool:
            while not self._stop.wait(self.interval):
                with self._lock:
                    held = [(k, lease, self._locks[k]) for k, lease in self.leases.items()]
                list(pool.map(lambda item: self._renew(*item), held))

    def stop(self) -> list[Lease]:
        """End the beat; the leases still held (to release)."""
        self._stop.set()
        self._thread.join()
        with self._lock:
            held, self.leases, self._locks = list(self.leases.values()), {}, {}
        return held


def sweep_stale(root: str, stage: str, complete: set[int], owner: dict,
                clock=time.time) -> list[int]:
    """Remove the stale leases (`_stale`) on shards whose `stage` sidecar is complete: a run
    killed after a sidecar was joined, before it released the lease, leaves one that no
    later run would take (complete shards are skipped before any lease is asked for).
    One listing of the stage's lease folder. Returns the shards whose lease was removed."""
    removed = []
    folder = storage.join(root, LEASES_DIR, stage)
    for name in lease_store.listdir(folder):
        shard = int(name) if name.isdigit() else None
        if shard not in complete:
            continue
        shard_folder = lease_folder(root, stage, shard)
        gone = False
        for generation in _generations(shard_folder):
            got = _read(_generation_path(shard_folder, generation))
            if got is not None and _stale(got[0], owner, clock()):
                gone |= lease_store.delete(_generation_path(shard_folder, generation), got[1])
        lease_store.remove_empty_folder(shard_folder)
        if gone:
            removed.append(shard)
    return removed
