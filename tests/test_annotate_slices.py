"""Read slices: the driver cuts each shard into slices of `rows_per_block` rows from its
recorded count; Ray fuses each slice's read into the first stage's task (no repartition,
no block copied between them); a shard whose count is unknown is read whole, to the same
bytes."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest

from annotate_helpers import (  # noqa: F401  (ray_local is a fixture)
    CANNY,
    SAMPLES,
    annotate_args,
    make_source_shard,
    ray_local,
    sidecar,
    write_config,
)
from graph200k.dataset import ShardSet
from pipelines import annotate, annotate_ray
from pipelines.annotate_config import load_config, run_options, select_stages

WORDS = {"class": "annotate_helpers.WordCount", "batch_size": 3, "concurrency": 1}


def test_slices_cut_each_shard_by_its_count_and_keep_unknown_counts_whole():
    jobs = [{"shard": 0, "count": 5, "stages": {"canny": "all"}},
            {"shard": 1, "count": 0, "stages": {"canny": "all"}},  # empty, or count unknown
            {"shard": 2, "stages": {"canny": ["0000007"]}},  # no count recorded
            {"shard": 3, "count": 2, "stages": {"canny": "all"}}]
    out = annotate_ray.slices(jobs, 2)
    assert [(j["shard"], j.get("rows")) for j in out] == [
        (0, [0, 2]), (0, [2, 4]), (0, [4, 5]), (1, None), (2, None), (3, [0, 2])]
    assert all("count" not in j for j in out)
    assert out[4]["stages"] == {"canny": ["0000007"]}  # a retry list travels with each slice
    assert [j["rows"] for j in annotate_ray.slices(jobs[:1], 0)] == [[0, 1], [1, 2], [2, 3],
                                                                   [3, 4], [4, 5]]


def _wave(tmp_path, stages: dict, rows_per_block: int, count: int):
    make_source_shard(tmp_path / "src", 0, count)
    config = load_config(write_config(tmp_path, stages, rows_per_block=rows_per_block))
    shard_set = ShardSet.create(str(tmp_path / "out"), str(tmp_path / "src"))
    return annotate_ray.build_wave([{"shard": 0, "count": count, "stages": {
        name: "all" for name in stages}}], select_stages(config, None), shard_set.root, 0, {},
        run_options(config).ray, {})


def _optimized_plan(ds) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ds.explain()
    return buf.getvalue().split("Physical Plan (Optimized)")[1]


def test_the_read_runs_in_the_first_stage_task_one_task_per_slice(ray_local, tmp_path):
    # canny's batch_size (4) is larger than a slice (2 rows): a batch size on the fused task
    # op would make Ray bundle two slices into one task
    ds = _wave(tmp_path, {"canny": {**CANNY, "batch_size": 4}}, rows_per_block=2, count=6)
    plan = _optimized_plan(ds)
    assert "MapBatches(read)->MapBatches(canny)->MapBatches(canny.write)->" \
           "MapBatches(collect)" in plan
    assert "Repartition" not in plan
    rows = ds.take_all()
    assert sorted((r["start"], r["end"]) for r in rows) == [(0, 2), (2, 4), (4, 6)]
    fused = [line for line in ds.stats().splitlines() if "MapBatches(read)->" in line]
    assert re.search(r": 3 tasks executed", fused[0]), fused


def test_a_model_stage_reads_in_its_prepare_task(ray_local, tmp_path):
    ds = _wave(tmp_path, {"wordcount": WORDS}, rows_per_block=2, count=4)
    plan = _optimized_plan(ds)
    assert "MapBatches(read)->MapBatches(wordcount.prepare)" in plan
    assert "Repartition" not in plan


@pytest.mark.parametrize("rows", [1, 4])
def test_a_shard_without_a_recorded_count_is_read_whole_to_the_same_bytes(ray_local, tmp_path,
                                                                          rows):
    config = write_config(tmp_path, {"canny": CANNY}, rows_per_block=rows)
    for name in ("counted", "uncounted"):
        make_source_shard(tmp_path / name, 0, SAMPLES)
    stats = tmp_path / "uncounted" / "000000.stats.json"
    recorded = json.loads(stats.read_text())
    recorded.pop("written")
    recorded.get("file", {}).pop("samples", None)
    stats.write_text(json.dumps(recorded))
    for name in ("counted", "uncounted"):
        assert annotate.main(annotate_args(tmp_path / name, tmp_path / f"out-{name}", config,
                                           "0")) == 0
    assert sidecar(tmp_path / "out-uncounted", "canny", 0).read_bytes() == \
        sidecar(tmp_path / "out-counted", "canny", 0).read_bytes()
