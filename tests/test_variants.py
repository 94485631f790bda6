"""Generated nodes stored as N variants per sample: registry, manifest, sampler, reader."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from graph200k import nodes
from graph200k.manifest import VARIANT_FIELDS, Manifest, scan_shard
from graph200k.reader import FetchError, SampleReader
from graph200k.shards import ShardWriter, decode_image, encode_image, shard_path
from graph200k.tasks import TaskConfig, TaskSampler


def test_variant_members_of_style_and_edit_nodes():
    assert nodes.variant_member("instantstyle_ref", 3) == "instantstyle_ref.3.jpg"
    assert nodes.variant_member("filledit", 2) == "filledit.2.jpg"
    assert nodes.variant_member("depthedit") == "depthedit.0.jpg"
    assert nodes.variant_members("reduxstyle", 1) == ("reduxstyle_ref.1.jpg", "reduxstyle.1.jpg")
    assert nodes.variant_member("canny") == "canny.png"
    with pytest.raises(ValueError, match="'canny' has one stored image"):
        nodes.variant_member("canny", 1)
    for m in ("filledit.4.jpg", "instantstyle_ref.7.jpg", "depthedit.0.jpg"):
        assert nodes.member_node(m) == m.split(".")[0].replace("_ref", "")


def test_variant_count_stops_at_the_first_gap_and_needs_both_style_images():
    have = {"instantstyle_ref.0.jpg", "instantstyle.0.jpg", "instantstyle_ref.1.jpg",
            "instantstyle.1.jpg", "instantstyle.2.jpg",  # variant 2 lacks its reference
            "instantstyle_ref.3.jpg", "instantstyle.3.jpg", "filledit.1.jpg", "target.jpg"}
    assert nodes.variant_count("instantstyle", have) == 2
    assert nodes.variant_count("filledit", have) == 0  # variant 0 absent: not available
    assert nodes.variant_count("target", have) == 1
    assert "filledit" not in nodes.available_nodes(have)


def _img(value: int, size: int = 16) -> bytes:
    return encode_image(np.full((size, size, 3), value, np.uint8), "png")


def _shard_with_variants(folder, counts: dict[str, int]):
    """Sample i holds counts[key] instantstyle pairs and filledit variants; pixel values
    encode (sample, variant) so a read can be checked."""
    with ShardWriter(shard_path(folder, 0)) as w:
        for i, (key, n) in enumerate(counts.items()):
            s = {"__key__": key, "target.jpg": encode_image(np.zeros((16, 16, 3), np.uint8), "jpg"),
                 "meta.json": json.dumps({"item": "cup", "description": f"cup {i}"}).encode()}
            for v in range(n):
                s[f"instantstyle_ref.{v}.jpg"] = _img(10 * v + 1)
                s[f"instantstyle.{v}.jpg"] = _img(10 * v + 2)
                s[f"filledit.{v}.jpg"] = _img(10 * v + 3)
            w.write(s)
    return Manifest.from_records(scan_shard(shard_path(folder, 0)))


def test_manifest_counts_variants_and_round_trips(tmp_path):
    m = _shard_with_variants(tmp_path, {"0000000": 5, "0000001": 2, "0000002": 0})
    a, b, c = (m.index_of(k) for k in ("0000000", "0000001", "0000002"))
    assert m.variant_count(a, "instantstyle") == 5 and m.variant_count(b, "filledit") == 2
    assert m.variant_count(c, "instantstyle") == 0 and m.variant_count(a, "reduxstyle") == 0
    assert m.variant_count(a, "target") == 1
    back = Manifest.load(m.save(tmp_path / "m.parquet"))
    assert np.array_equal(back.variants, m.variants)
    # A manifest written before variants existed reads as one variant where the node is.
    table = m.to_table().drop_columns(list(VARIANT_FIELDS))
    old = Manifest(table["key"], table["shard"].to_numpy(), table["nodes"].to_numpy(),
                   table["item"], table["description"], m.quality)
    assert old.variant_count(a, "instantstyle") == 1 and old.variant_count(c, "instantstyle") == 0


def _style_only_config() -> TaskConfig:
    return TaskConfig.from_dict({"families": {
        "style_transfer": {"variants": [["target", "instantstyle"]]},
        "image_editing": {"variants": [["filledit", "target"]]}}})


def test_tasks_draw_one_recorded_variant_per_row_within_what_the_sample_holds(tmp_path):
    counts = {f"{i:07d}": n for i, n in enumerate([5, 5, 1, 3, 5, 2])}
    m = _shard_with_variants(tmp_path, counts)
    tasks = TaskSampler(m, _style_only_config(), seed=3).take(600)
    seen = collections.defaultdict(set)
    for t in tasks:
        for row in t.rows:
            by_node = collections.defaultdict(set)
            for cell in row:
                if cell["node"] in nodes.VARIANT_NODES:
                    by_node[cell["node"]].add(cell["variant"])
                else:
                    assert "variant" not in cell
            for node, vs in by_node.items():
                assert len(vs) == 1  # the style reference and its stylized image pair up
                v = vs.pop()
                assert 0 <= v < counts[row[0]["key"]]
                seen[row[0]["key"]].add(v)
    assert seen["0000000"] == set(range(5)) and seen["0000002"] == {0}
    assert seen["0000003"] == {0, 1, 2}
    again = TaskSampler(m, _style_only_config(), seed=3).take(600)
    assert [t.to_json() for t in again] == [t.to_json() for t in tasks]


def test_variant_draw_leaves_the_task_sequence_unchanged(tmp_path):
    """More variants on disk change which variant a task reads, not which task it is."""
    one = _shard_with_variants(tmp_path / "a", {f"{i:07d}": 1 for i in range(6)})
    five = _shard_with_variants(tmp_path / "b", {f"{i:07d}": 5 for i in range(6)})

    def strip(t):
        d = t.to_json()
        d["rows"] = [[{k: v for k, v in c.items() if k != "variant"} for c in r] for r in d["rows"]]
        return d

    a = TaskSampler(one, _style_only_config(), seed=1).take(50)
    b = TaskSampler(five, _style_only_config(), seed=1).take(50)
    assert [strip(t) for t in a] == [strip(t) for t in b]


def test_reader_fetches_the_variant_a_task_names(tmp_path):
    m = _shard_with_variants(tmp_path, {"0000000": 3, "0000001": 1})
    reader = SampleReader(tmp_path, m)
    assert reader.fetch("0000000", "instantstyle", variant=2)[0, 0, 0] == 22
    assert reader.fetch("0000000", "instantstyle_ref", variant=1)[0, 0, 0] == 11
    assert reader.fetch("0000000", "filledit")[0, 0, 0] == 3  # variant 0 by default
    task = next(t for t in TaskSampler(m, _style_only_config(), seed=0).take(200)
                if t.rows[-1][0]["key"] == "0000000" and t.rows[-1][-1].get("variant", 0) > 0)
    images = reader.task_images(task)
    for cells, imgs in zip(task.rows, images):
        for cell, img in zip(cells, imgs):
            if "variant" in cell:
                slot = cell["slot"]
                expected = decode_image(reader.member_bytes(
                    cell["key"], nodes.variant_member(slot, cell["variant"])), "native")
                assert np.array_equal(img, expected)
    with pytest.raises(FetchError) as e:
        reader.fetch("0000001", "instantstyle", variant=1)
    assert e.value.reason == "missing_member" and "instantstyle.1.jpg" in str(e.value)
