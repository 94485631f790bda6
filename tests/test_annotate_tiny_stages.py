"""The real model stages through the Ray pipeline, on tiny models (configs/annotate-tiny.yaml):
dense, matte and generative stages in dependency waves, each stage's sidecar complete, the
joined samples holding every new node, a rerun skipping everything."""

from __future__ import annotations

import json

from annotate_helpers import (  # noqa: F401  (ray_local is a fixture)
    annotate_args,
    joined,
    make_source_shard,
    ray_local,
    stage_stats,
    tiny_stages_config,
)
from graph200k.manifest import Manifest
from pipelines import annotate

STAGES = ("hed", "depth", "rmbg", "mask", "instantstyle", "depthedit")


def test_tiny_model_stages_run_through_the_pipeline_in_waves(ray_local, tiny_models, tmp_path,
                                                           capsys):
    src, out = tmp_path / "source", tmp_path / "out"
    make_source_shard(src, 0, 3, size=64)
    models = {name: tiny_models(name) for name in
              ("hed", "depth", "rmbg", "sdxl", "sdxl-controlnet", "ip-adapter-sdxl",
               "flux-depth", "flux-redux", "sam2", "qwen2_vl_grounding")}
    config = tiny_stages_config(tmp_path, STAGES, str(models["hed"].parent), src)

    assert annotate.main(annotate_args(src, out, config, "0")) == 0
    log = capsys.readouterr().out
    assert "waves: depth+hed+mask+rmbg -> depthedit+instantstyle" in log
    for name in STAGES:
        assert stage_stats(out, name, 0)["ok"] == 3, (name, stage_stats(out, name, 0))
    for s in joined(out, 0):
        nodes = json.loads(s["meta.json"])["nodes"]
        assert {"hed", "depth", "foreground", "background", "mask", "bbox", "instantstyle",
                "depthedit"} <= set(nodes)
        assert "instantstyle_ref.0.jpg" in s and "depthedit.0.jpg" in s
        assert "mask.png" in s and "bbox.png" in s  # the tiny grounding VLM's box, segmented
        grounded = json.loads(s["meta.json"])["annotations"]["mask"]
        assert [o["name"] for o in grounded["objects"]] == ["subject"]
    counts = Manifest.from_shards(out).node_counts()
    assert all(counts[n] == 3 for n in ("hed", "depth", "foreground", "mask", "bbox",
                                        "instantstyle", "depthedit"))
    assert sorted(annotate.run("0", None, str(config), str(src), str(out)).skipped) == \
        sorted((name, 0) for name in STAGES)
