"""`ray: {actors: false}` (the tiny config, the demo): a model stage's prepare -> predict ->
encode run in the wave's own tasks, its model loaded once per worker process, instead of
an actor pool per stage. Same bytes as the actor pools; predict still sees `batch_size`
rows at a time."""

from __future__ import annotations

import json

import numpy as np
import yaml

from annotate_helpers import (  # noqa: F401  (ray_local is a fixture)
    CANNY,
    SAMPLES,
    WordCount,
    annotate_args,
    make_source_shard,
    make_samples,
    ray_local,
    sidecar,
    stage_stats,
)
from pipelines import annotate, annotate_ray
from pipelines.annotate_config import load_config, run_options
from pipelines.stage_ops import (KEY, META, do_column, samples_batch, seconds_column,
                                 status_column)


class CountingWords(WordCount):
    """WordCount that records its loads and the size of every predict call."""

    loads = 0

    def load(self):
        type(self).loads += 1
        self.calls = []

    def predict(self, inputs):
        self.calls.append(len(inputs))
        return super().predict(inputs)


def _batch(count: int) -> dict:
    from annotators.base import Sample

    samples = [Sample(s["__key__"], {"target.jpg": s["target.jpg"]},
                      meta=json.loads(s["meta.json"]), seed=3)
               for s in make_samples(0, count)]
    return samples_batch(samples, ["wordcount"])


def test_model_op_predicts_in_stage_batches_and_loads_once_per_process():
    annotate_ray._LOADED.clear()
    CountingWords.loads = 0
    config = {}
    out = annotate_ray.model_op(_batch(5), CountingWords, config, 3, {}, batch_size=2)
    again = annotate_ray.model_op(_batch(3), CountingWords, config, 3, {}, batch_size=2)
    assert CountingWords.loads == 1  # the second block reuses the loaded model
    (annotator,) = annotate_ray._LOADED.values()
    assert annotator.calls == [2, 2, 1, 2, 1]  # 5 rows, then 3, two at a time
    assert list(out[status_column("wordcount")]) == ["ok"] * 5
    assert list(again[status_column("wordcount")]) == ["ok"] * 3
    # the same rows through the actor path's three steps: the same columns, cell for cell
    runner = annotate_ray._runner(WordCount, config, 3, {})
    ref = runner.encode_batch(runner.predict_batch(runner.prepare_batch(_batch(5))))
    assert sorted(out) == sorted(ref)
    for column in ref:
        if column != seconds_column("wordcount"):  # timings differ
            assert list(out[column]) == list(ref[column]), column
    assert set(out[KEY]) and META in out and do_column("wordcount") in out


def test_tiny_config_runs_model_stages_as_tasks():
    assert run_options(load_config("configs/annotate-tiny.yaml")).ray.actors is False
    assert run_options(load_config("configs/annotate.yaml")).ray.actors is True


def _config(tmp_path, name: str, actors: bool) -> str:
    path = tmp_path / name
    words = {"class": "annotate_helpers.WordCount", "batch_size": 2, "num_cpus": 0.1}
    path.write_text(yaml.safe_dump({
        "seed": 5, "ray": {"rows_per_block": 4, "actors": actors},
        "stages": {"canny": CANNY, "wordcount": words}}))
    return str(path)


def test_same_bytes_as_the_actor_pools(ray_local, tmp_path):
    src = tmp_path / "source"
    for shard in (0, 1):
        make_source_shard(src, shard, SAMPLES)
    outs = {}
    for actors in (True, False):
        out = outs[actors] = tmp_path / f"actors-{actors}"
        config = _config(tmp_path, f"a-{actors}.yaml", actors)
        assert annotate.main(annotate_args(src, out, config)) == 0
    for stage in ("canny", "wordcount"):
        for shard in (0, 1):
            assert stage_stats(outs[False], stage, shard)["ok"] == SAMPLES
            assert (sidecar(outs[False], stage, shard).read_bytes()
                    == sidecar(outs[True], stage, shard).read_bytes()), (stage, shard)
    assert np.all([stage_stats(outs[False], "wordcount", s)["failed"] == 0 for s in (0, 1)])
