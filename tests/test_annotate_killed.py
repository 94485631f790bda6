"""A driver killed mid-run (SIGKILL: no cleanup of its own) and the same command rerun: the
shards it had finished are kept as they are, the rest are computed, and every sidecar has
the bytes of an uninterrupted run; no part, temporary file or lease is left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from annotate_helpers import (  # noqa: F401  (ray_local is a fixture)
    REPO,
    TESTS_DIR,
    ray_local,
    slow_canny_setup,
)
from pipelines import annotate

SHARDS, SAMPLES = 6, 6

# The driver as `ray job submit` runs one: its own process, a job of the running Ray.
DRIVER = """
import sys
sys.path[:0] = {paths!r}
import ray
ray.init(address={address!r}, log_to_driver=False,
         runtime_env={{"env_vars": {{"PYTHONPATH": {pythonpath!r}}}}})
from pipelines import annotate
sys.exit(annotate.main({argv!r}))
"""


def _complete(out) -> set[int]:
    return {int(p.name[:6]) for p in (out / "canny").glob("*.stats.json")} \
        if (out / "canny").exists() else set()


def _kill_when_one_shard_is_done(proc, out, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while not _complete(out):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no shard completed in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_killed_driver_resumes_to_the_bytes_of_an_uninterrupted_run(ray_local, tmp_path):
    src, config = slow_canny_setup(tmp_path, SHARDS, SAMPLES)
    argv = ["--shards", "all", "--config", config, "--src", str(src)]

    clean = tmp_path / "clean"
    assert annotate.main([*argv, "--out", str(clean)]) == 0
    expected = {n: (clean / "canny" / f"{n:06d}.tar").read_bytes() for n in range(SHARDS)}

    killed = tmp_path / "killed"
    path = os.pathsep.join([str(TESTS_DIR), str(REPO)])
    code = DRIVER.format(paths=[str(TESTS_DIR), str(REPO)], pythonpath=path,
                         address=ray_local.get_runtime_context().gcs_address,
                         argv=[*argv, "--out", str(killed)])
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _kill_when_one_shard_is_done(proc, killed)
    assert proc.returncode == -signal.SIGKILL
    finished = _complete(killed)
    assert 0 < len(finished) < SHARDS, finished  # killed mid-run, some shards done
    first_run = {n: json.loads((killed / "canny" / f"{n:06d}.stats.json").read_text())["run"]
                 for n in finished}
    leftovers = list((killed / "_leases").rglob("*.json"))
    assert leftovers  # the killed driver never released its leases

    report = annotate.run("all", None, config, str(src), str(killed))
    assert not report.errors and not report.busy  # a dead local owner's leases are taken over
    assert sorted(report.skipped) == [("canny", n) for n in sorted(finished)]
    assert sorted(report.written) == [("canny", n) for n in range(SHARDS) if n not in finished]
    for n in range(SHARDS):
        assert (killed / "canny" / f"{n:06d}.tar").read_bytes() == expected[n], n
    for n in finished:  # kept as the first run wrote them, not redone
        stats = json.loads((killed / "canny" / f"{n:06d}.stats.json").read_text())
        assert stats["run"] == first_run[n]
    assert not list((killed / "_parts").rglob("*.*"))
    assert not [p for p in (killed / "canny").iterdir() if p.name.startswith(".")]
    assert not list((killed / "_leases").rglob("*.json"))


def test_only_stale_leases_of_complete_shards_are_swept(tmp_path):
    from pipelines import leases

    root, me = str(tmp_path), leases.run_owner()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here_dead = {"host": me["host"], "pid": dead.pid, "run": "killed"}
    elsewhere = {"host": "other-host", "pid": 1, "run": "live"}
    assert not isinstance(leases.acquire(root, "canny", 0, here_dead, 3600), str)
    assert not isinstance(leases.acquire(root, "canny", 1, elsewhere, 3600), str)
    assert not isinstance(leases.acquire(root, "canny", 2, here_dead, 3600), str)
    assert not isinstance(leases.acquire(root, "canny", 3, elsewhere, -1), str)  # expired
    half = leases.lease_folder(root, "canny", 4)
    os.makedirs(half)
    open(os.path.join(half, "00000000.json"), "wb").write(b'{"host": "oth')  # unreadable
    # 0, 3, 4 complete and stale: swept; 1 complete but held by a live run elsewhere: kept;
    # 2 stale but not complete: left for the run that leases it (acquire takes it over)
    assert leases.sweep_stale(root, "canny", {0, 1, 3, 4}, me) == [0, 3, 4]
    assert sorted(p.name for p in (tmp_path / "_leases" / "canny").iterdir()) == \
        ["000001", "000002"]
