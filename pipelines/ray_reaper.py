"""Ends the processes of a local Ray when the annotate driver that started it dies, even by
SIGKILL (no atexit, no `ray.shutdown`).

Ray ties its GCS and raylet to the driver (the kernel's parent-death signal), but the
dashboard and runtime-env agents are the raylet's children and only poll their parent: where
the process that inherits orphans does not reap them (pid 1 of many containers), the dead
raylet stays a zombie, the agents keep seeing it, and run on (measured here: still alive
15 s after the driver's SIGKILL, and indefinitely). This watchdog, started by the driver
before `ray.init` in its own session, notes the driver's descendants born after it every
`interval` seconds and kills those still running once the driver is gone. psutil checks a
process's start time with its pid, so a reused pid is never killed.

    python -m pipelines.ray_reaper DRIVER_PID [--interval 0.5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def start(driver_pid: int | None = None, interval: float = 0.5) -> subprocess.Popen:
    """The watchdog for `driver_pid` (default: this process), in its own session so a
    Ctrl-C to the terminal's process group leaves it to clean up."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.ray_reaper", str(driver_pid or os.getpid()),
         "--interval", str(interval)],
        start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def watch(driver_pid: int, interval: float) -> list[int]:
    """Wait for `driver_pid` to end, then kill its descendants seen since this started.
    Returns the pids it killed."""
    import psutil

    me, born_after = os.getpid(), time.time() - 1.0
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return []
    seen: dict[int, psutil.Process] = {}
    while True:
        try:
            if driver.status() == psutil.STATUS_ZOMBIE:
                break
            for p in driver.children(recursive=True):
                if p.pid != me and p.pid not in seen and p.create_time() >= born_after:
                    seen[p.pid] = p
        except psutil.NoSuchProcess:
            break
        time.sleep(interval)
    killed = []
    for pid, p in seen.items():
        try:
            if p.is_running():  # the same process (pid and start time), not a reused pid
                p.kill()
                killed.append(pid)
        except psutil.Error:
            pass
    return killed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.ray_reaper",
                                description=__doc__.split("\n")[0])
    p.add_argument("driver_pid", type=int)
    p.add_argument("--interval", type=float, default=0.5)
    args = p.parse_args(argv)
    watch(args.driver_pid, args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
