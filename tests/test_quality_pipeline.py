"""The quality stage through the Ray pipeline after the tiny generative stages: its meta
entry in the sidecar, the manifest's `quality_scores`, and `sample_tasks --stats`."""

from __future__ import annotations

import json

from annotate_helpers import (  # noqa: F401  (ray_local is a fixture)
    annotate_args,
    make_source_shard,
    ray_local,
    stage_stats,
    tiny_stages_config,
)
from graph200k import sample_tasks
from graph200k.manifest import Manifest
from pipelines import annotate

STAGES = ("depth", "mask", "instantstyle", "filledit", "depthedit", "quality")


def test_quality_scores_every_variant_after_the_generative_stages(ray_local, tiny_models,
                                                                 tmp_path, capsys):
    src, out = tmp_path / "source", tmp_path / "out"
    make_source_shard(src, 0, 2, size=64)
    models = {name: tiny_models(name) for name in
              ("depth", "sdxl", "sdxl-controlnet", "ip-adapter-sdxl", "flux-depth", "flux-redux",
               "flux-fill", "sam2", "qwen2_vl_grounding", "clip", "dino")}
    config = tiny_stages_config(tmp_path, STAGES, str(models["depth"].parent), src)

    assert annotate.main(annotate_args(src, out, config, "0")) == 0
    assert "-> quality" in capsys.readouterr().out
    assert stage_stats(out, "quality", 0)["ok"] == 2, stage_stats(out, "quality", 0)

    filled = {k["key"] for k in stage_stats(out, "filledit", 0).get("skipped_keys") or []}
    m = Manifest.from_shards(out)
    for i in range(len(m)):
        scores = json.loads(m.scores(i))
        assert set(scores["instantstyle"]) == {"0", "1", "2"}  # every stored variant
        assert set(scores["depthedit"]) == {"0"}
        if m.key(i) in filled:  # filledit had nothing to edit (the tiny grounding's box)
            assert "filledit" not in scores
        else:
            assert set(scores["filledit"]) == {"0", "1", "2"}
            assert all(0 <= v["background"] <= 1 for v in scores["filledit"].values())
        assert all(-1 <= v["style"] <= 1 and -1 <= v["content"] <= 1
                   for v in scores["instantstyle"].values())
        assert scores["depthedit"]["0"]["subject_change"] >= 0
    path = m.save(tmp_path / "manifest.parquet")
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(json.dumps({
        "families": {"style": {"variants": [["depth", "instantstyle"]]}},
        "quality": {"style": {"style_min": 2.0}}}))  # above any cosine: every variant gated
    assert sample_tasks.main(["--manifest", str(path), "--config", str(tasks), "--num", "3",
                              "--stats", "--on-stale", "ignore"]) == 2  # nothing left to draw
    tasks.write_text(json.dumps({
        "families": {"style": {"variants": [["depth", "instantstyle"]]}},
        "quality": {"style": {"style_min": -2.0}}}))
    assert sample_tasks.main(["--manifest", str(path), "--config", str(tasks), "--num", "3",
                              "--stats", "--on-stale", "ignore"]) == 0
    assert "quality gates: 0 variant(s) removed" in capsys.readouterr().out
