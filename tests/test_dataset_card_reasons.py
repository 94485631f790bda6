"""The dataset card's stage table names why samples were not applicable to a stage or failed
(it said "skipped (already present)" for samples filledit found no usable box in)."""

from __future__ import annotations

import json

from browse_shards import stages_dataset
from graph200k.assemble import assemble
from graph200k.dataset_card import render


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
