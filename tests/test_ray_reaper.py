"""The local Ray's processes end with the driver that started them, even a SIGKILLed one:
pipelines.ray_reaper, checked on a stand-in process tree shaped like Ray's (driver ->
raylet -> agent), with and without the watchdog."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil

from annotate_helpers import REPO

DRIVER = """
import subprocess, sys, time
if {reaper}:
    from pipelines import ray_reaper
    ray_reaper.start(interval=0.1)
agent = "import time; time.sleep(120)"
raylet = ("import subprocess, sys, time; "
          f"p = subprocess.Popen([sys.executable, '-c', {{agent!r}}]); "
          "print(p.pid, flush=True); time.sleep(120)")
child = subprocess.Popen([sys.executable, "-c", raylet], stdout=subprocess.PIPE, text=True)
print(child.pid, child.stdout.readline().strip(), flush=True)
time.sleep(120)
"""


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_driver(reaper: bool) -> list[int]:
    driver = subprocess.Popen([sys.executable, "-c", DRIVER.format(reaper=reaper)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in driver.stdout.readline().split()]
    assert len(pids) == 2 and all(map(_running, pids))
    time.sleep(0.5)  # the watchdog has seen them
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    return pids


def test_a_sigkilled_drivers_ray_processes_end_with_it():
    without = _kill_driver(reaper=False)
    time.sleep(1.0)
    try:  # the control: orphans live on by themselves
        assert all(map(_running, without))
    finally:
        for pid in without:
            psutil.Process(pid).kill()

    pids = _kill_driver(reaper=True)
    deadline = time.monotonic() + 5
    while any(map(_running, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_running, pids)), [psutil.Process(p).as_dict(["pid", "name"])
                                           for p in pids if _running(p)]


RAY_DRIVER = """
import time
import psutil
from pipelines import annotate_ray
annotate_ray.init_ray(1)
time.sleep(2)  # the agents are up
print(" ".join(str(p.pid) for p in psutil.Process().children(recursive=True)), flush=True)
time.sleep(120)
"""


def test_a_sigkilled_annotate_drivers_local_ray_ends_with_it():
    """The real thing: a local Ray started by annotate's init_ray, its driver SIGKILLed."""
    driver = subprocess.Popen([sys.executable, "-c", RAY_DRIVER],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in driver.stdout.readline().split()]
    names = {pid: psutil.Process(pid).name() for pid in pids}
    assert any("Agent" in " ".join(psutil.Process(p).cmdline()) for p in pids), names
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 10
    while any(map(_running, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [names[p] for p in pids if _running(p)]
    assert not left, left
