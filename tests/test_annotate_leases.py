"""Annotate and its leases, end to end on Ray: a run whose lease is taken over mid-run
commits nothing for that shard (the sidecar there stays as it was) and exits 4 naming it;
the command line refuses bad CPU counts in one line; Ray's own logs go to a file, not to
the terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from annotate_helpers import (  # noqa: F401  (ray_local is a fixture)
    CANNY,
    REPO,
    make_source_shard,
    ray_local,
    slow_canny_setup,
    write_config,
)
from pipelines import annotate, lease_store, leases
from pipelines.annotate_run import EXIT_LEASED


def _take_over_when_leased(root: str, stage: str, shard: int, stop: threading.Event) -> None:
    """What a second run does once a stalled owner's lease has expired: the next generation
    of the lease, its own."""
    folder = leases.lease_folder(root, stage, shard)
    while not stop.is_set():
        names = [n for n in lease_store.listdir(folder) if n.endswith(".json")]
        if names:
            generation = int(max(names)[:-5]) + 1
            body = {"host": "another-host", "pid": 1, "run": "taker", "token": "t",
                    "generation": generation, "expires": time.time() + 3600}
            lease_store.create(f"{folder}/{generation:08d}.json", json.dumps(body).encode())
            return
        time.sleep(0.005)


def test_a_run_whose_lease_was_taken_commits_nothing_and_exits_4(ray_local, tmp_path, capsys):
    src, config = slow_canny_setup(tmp_path, 2, 6)
    out = tmp_path / "out"
    argv = ["--shards", "0-1", "--config", config, "--src", str(src), "--out", str(out)]
    assert annotate.main(argv) == 0
    before = {n: {s: (out / "canny" / f"00000{n}{s}").read_bytes()
                  for s in (".tar", ".index.json", ".stats.json")} for n in (0, 1)}

    stop = threading.Event()
    taker = threading.Thread(target=_take_over_when_leased, args=(str(out), "canny", 0, stop))
    taker.start()
    try:
        code = annotate.main([*argv, "--force"])
    finally:
        stop.set()
        taker.join()
    captured = capsys.readouterr()
    assert code == EXIT_LEASED == 4, captured
    assert "left undone, leased by another run: canny 000000" in captured.err
    assert "run taker" in captured.err  # who holds it now
    for suffix, data in before[0].items():  # shard 0: untouched, the old run's sidecar
        assert (out / "canny" / f"000000{suffix}").read_bytes() == data, suffix
    stats = json.loads((out / "canny" / "000001.stats.json").read_text())
    assert stats["run"] != json.loads(before[1][".stats.json"])["run"]  # shard 1: redone
    # the taker's lease is left as it is; this run's own lease of shard 1 is released
    assert [json.loads(p.read_text())["run"] for p in (out / "_leases").rglob("*.json")] == \
        ["taker"]
    report = json.loads(sorted((out / "_report").glob("*.json"))[-1].read_text())
    assert list(report["busy"]) == ["canny/000000"] and report["exit_code"] == 4


def test_num_cpus_below_one_is_a_one_line_usage_error(tmp_path, capsys):
    src, out = tmp_path / "source", tmp_path / "out"
    make_source_shard(src, 0, 2)
    config = write_config(tmp_path, {"canny": CANNY})
    for bad in ("-1", "0", "two"):
        args = ["--shards", "0", "--config", config, "--src", str(src), "--out", str(out),
                "--num-cpus", bad]
        assert annotate.main(args) == 2, bad
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "--num-cpus" in err, err
    assert not out.exists()  # refused before anything was written
    # the config's own value is checked as well
    cfg = tmp_path / "zero.yaml"
    cfg.write_text(open(config).read() + "\nray:\n  num_cpus: 0\n")
    assert annotate.main(["--shards", "0", "--config", str(cfg), "--src", str(src),
                          "--out", str(out)]) == 2
    assert "ray.num_cpus must be at least 1" in capsys.readouterr().err


# Ray Data's own output: operator bars and names, its issue detectors, its execution plan.
RAY_DATA_LINES = ("MapBatches(", "Running Dataset", "Execution plan", "Found ", "issue detection",
                  "(WaveCoordinator", "ReadRange", "Operator", "ray.data")


def test_the_terminal_shows_our_lines_only_and_ray_logs_to_a_file(ray_local, tmp_path):
    src, out = tmp_path / "source", tmp_path / "out"
    for shard in (0, 1):
        make_source_shard(src, shard, 4)
    config = write_config(tmp_path, {"canny": CANNY}, rows_per_block=2)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get(
        "PYTHONPATH", "")]), RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)
    proc = subprocess.run([sys.executable, "-m", "pipelines.annotate", "--shards", "0-1",
                           "--config", config, "--src", str(src), "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    terminal = proc.stdout + proc.stderr
    for marker in RAY_DATA_LINES:
        assert marker not in terminal, (marker, terminal)
    logs = list((out / "_logs").glob("annotate-*.log"))
    assert len(logs) == 1
    assert f"Ray's own logs -> {logs[0]}" in proc.stdout
    assert "ray.data" in logs[0].read_text()  # Ray Data's records went there instead
    assert "canny" in proc.stdout and "2 stage sidecar(s) written" in proc.stdout
