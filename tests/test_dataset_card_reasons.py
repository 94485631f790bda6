"""The dataset card's stage table names why samples were not applicable to a stage or failed
(it said "skipped (already present)" for samples filledit found no usable box in)."""

from __future__ import annotations

import json

import numpy as np

from annotate_helpers import make_samples
from graph200k.assemble import assemble
from graph200k.dataset import ShardSet
from graph200k.dataset_card import render
from graph200k.shards import ShardWriter, encode_image, shard_path, write_shard


def stages_dataset(tmp_path):
    """Source shard 0 (6 samples) and a filledit sidecar: 2 ok, 3 not applicable, 1 failed."""
    src, out = tmp_path / "source", tmp_path / "graph200k"
    samples = list(make_samples(0, 6))
    write_shard(shard_path(src, 0), samples)
    shard_set = ShardSet.create(out, src)
    part = shard_set.stage_part("filledit", 0)
    edit = encode_image(np.full((8, 8, 3), 90, np.uint8), "jpg")
    with ShardWriter(part.url) as w:
        for s in samples[:2]:
            w.write({"__key__": s["__key__"], "filledit.0.jpg": edit})
    keys = [s["__key__"] for s in samples]
    stats = {"shard": 0, "stage": "filledit", "samples": 6, "ok": 2, "skipped": 3, "failed": 1,
             "seconds": 1.25,
             "skipped_keys": [{"key": keys[2], "reason": "no usable box"},
                              {"key": keys[3], "reason": "no usable box"},
                              {"key": keys[4], "reason": "subject | too small"}],
             "failed_keys": [{"key": keys[5], "reason": "FLUX-Fill gave a blank image"}]}
    from graph200k.dataset import write_part

    write_part(part, w.record, stats)
    return ShardSet(out), keys


def test_release_stats_keep_the_keys_and_reasons(tmp_path):
    shard_set, keys = stages_dataset(tmp_path)
    release = tmp_path / "release"
    assert assemble(shard_set, 0, release)
    stats = json.loads((release / "000000.stats.json").read_text())["stages"]["filledit"]
    assert stats["skipped"] == 3 and stats["skipped_keys"][0] == {"key": keys[2],
                                                                   "reason": "no usable box"}
    assert stats["failed_keys"] == [{"key": keys[5], "reason": "FLUX-Fill gave a blank image"}]


def test_card_stage_table_names_the_reasons(tmp_path):
    shard_set, _ = stages_dataset(tmp_path)
    release = tmp_path / "release"
    assemble(shard_set, 0, release)
    text = render(release, {}, None)
    assert "already present" not in text
    assert "| stage | ok | not applicable | failed | worker seconds | why not applicable | why failed |" in text
    # a '|' inside a reason would split the markdown cell
    assert ("| filledit | 2 | 3 | 1 | 1.2 | no usable box ×2, subject / too small ×1 "
            "| FLUX-Fill gave a blank image ×1 |") in text
