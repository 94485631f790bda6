import numpy as np
import pytest

from graph200k.manifest import Manifest, scan_shard
from graph200k.nodes import DEGRADATIONS, mask_of
from graph200k.shards import ShardError, ShardWriter, shard_path


def test_manifest_from_source_shards(source_manifest, source_shards):
    m = source_manifest
    assert len(m) == 11  # 15 rows - 3 broken - 1 below the quality threshold
    counts = m.node_counts()
    assert counts["target"] == counts["reference"] == 11
    assert all(counts[d] == 11 for d in DEGRADATIONS)  # online: wherever target is
    assert counts["canny"] == 0 and counts["instantstyle"] == 0
    i = m.index_of("0000004")
    assert m.shards[i] == 1 and m.item(i) == "motorcycle"
    assert m.description(i).startswith("A motorcycle parked")
    assert list(m.quality[i]) != [-1, -1, -1]


def test_availability_comes_from_members(tmp_path):
    with ShardWriter(shard_path(tmp_path, 5)) as w:
        w.write({"__key__": "0000001", "target.jpg": b"x", "canny.png": b"x",
                 "instantstyle.0.jpg": b"x", "meta.json": b'{"item": "cup"}'})
        w.write({"__key__": "0000002", "reference.jpg": b"x", "depth.png": b"x",
                 "instantstyle_ref.0.jpg": b"x", "instantstyle.0.jpg": b"x"})
    m = Manifest.from_records(scan_shard(shard_path(tmp_path, 5)))
    a, b = m.index_of("0000001"), m.index_of("0000002")
    assert m.shards[a] == 5 and m.item(a) == "cup"
    assert list(m.having(mask_of(["target", "canny", "blur"]))) == [a]
    assert list(m.having(mask_of(["instantstyle"]))) == [b]  # a lacks the style reference
    assert list(m.having(mask_of(["blur"]))) == [a]  # no target, no degradations


def test_save_load_round_trip(source_manifest, tmp_path):
    p = source_manifest.save(tmp_path / "m.parquet")
    back = Manifest.load(p)
    assert back.keys.to_pylist() == source_manifest.keys.to_pylist()
    assert np.array_equal(back.masks, source_manifest.masks)
    assert np.array_equal(back.quality, source_manifest.quality)
    assert back.descriptions.to_pylist() == source_manifest.descriptions.to_pylist()


def test_corrupt_shard_is_a_clear_error(tmp_path):
    p = shard_path(tmp_path, 0)
    p.write_bytes(b"this is not a tar file at all" * 40)
    with pytest.raises(ShardError, match="000000.tar: cannot scan"):
        scan_shard(p)


def test_unknown_key_is_a_clear_error(source_manifest):
    with pytest.raises(KeyError, match="'9999999' is not in the manifest"):
        source_manifest.index_of("9999999")
