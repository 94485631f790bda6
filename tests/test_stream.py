import json
import shutil

import numpy as np
import pytest
import torch
from annotated_shards import write_annotated_shards

from graph200k.grid import Grid
from graph200k.pair import TwoFramePair
from graph200k.manifest import Manifest
from graph200k.reader import FetchError, SampleReader, StaleIndexError
from graph200k.shards import ShardWriter, decode_image, list_shards, read_shard, shard_path
from graph200k.stream import GridStream
from graph200k.tarindex import ShardIndex

# The node types the fixture shards hold (no degradations: they have their own test).
TASKS_YAML = """
families:
  conditional_generation:
    variants: [[canny, target], [depth, target], [foreground, target], [background, target]]
  conditional_generation_with_reference:
    variants: [[reference, canny, target], [reference, depth, target]]
  style_transfer:
    variants: [[target, instantstyle]]
  subject_extraction:
    variants: [[target, reference]]
  dense_prediction:
    variants: [[target, canny], [target, depth]]
"""


@pytest.fixture(scope="module")
def tasks_yaml(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "tasks.yaml"
    p.write_text(TASKS_YAML)
    return p


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("annotated")
    write_annotated_shards(folder, num_samples=6, per_shard=3, size=64)
    return folder, Manifest.from_shards(folder)


@pytest.fixture
def broken_copy(annotated, tmp_path):
    """A copy of the shards whose manifest predates the breakage: 0000000 lost canny.png,
    0000002's depth.png is not an image."""
    folder, _ = annotated
    copy = tmp_path / "shards"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(".index"))
    manifest = Manifest.from_shards(copy)
    samples = list(read_shard(shard_path(copy, 0)))
    with ShardWriter(shard_path(copy, 0)) as w:
        for s in samples:
            if s["__key__"] == "0000000":
                del s["canny.png"]
            if s["__key__"] == "0000002":
                s["depth.png"] = b"\x89PNG\r\n\x1a\n truncated"
            w.write(s)
    return copy, manifest


def _grid_bytes(item) -> tuple:
    if isinstance(item, Grid):
        return (item.task_id, item.prompt, item.mask_row, item.mask_col,
                b"".join(r.tobytes() for r in item.rows), b"".join(m.tobytes() for m in item.masks))
    return (item.key, item.task, item.prompt, item.condition.tobytes(), item.target.tobytes())


def _run(stream, workers: int):
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    return [_grid_bytes(g) for g in loader]


def test_fetch_by_key_returns_the_member_bytes(annotated):
    folder, manifest = annotated
    reader = SampleReader(folder, manifest, max_open=1)
    n = 0
    for path in list_shards(folder):
        for sample in read_shard(path):
            for member, data in sample.items():
                if member != "__key__":
                    assert reader.member_bytes(sample["__key__"], member) == data
                    n += 1
    assert n == 6 * 8
    assert len(reader.open_files) <= 1  # the LRU keeps at most max_open handles
    # Image slots decode their member; a style slot reads its own member.
    raw = dict(next(read_shard(shard_path(folder, 1))))
    key = raw["__key__"]
    assert np.array_equal(reader.fetch(key, "canny"), decode_image(raw["canny.png"]))
    assert np.array_equal(reader.fetch(key, "instantstyle_ref"),
                          decode_image(raw["instantstyle_ref.0.jpg"]))
    assert (folder / ".index" / "000001.json").exists()
    reader.close()


def test_index_is_cached_on_disk_and_reused(annotated, monkeypatch):
    folder, manifest = annotated
    SampleReader(folder, manifest).member_bytes("0000004", "meta.json")
    cached = json.loads((folder / ".index" / "000001.json").read_text())
    assert cached["members"]["0000004"]["target.jpg"][1] > 0

    def no_scan(path):
        raise AssertionError(f"{path} was scanned again despite a fresh cached index")

    monkeypatch.setattr(ShardIndex, "scan", staticmethod(no_scan))
    meta = json.loads(SampleReader(folder, manifest).member_bytes("0000004", "meta.json"))
    assert meta["key"] == "0000004"


def test_stale_index_is_detected_then_rebuilt(annotated, tmp_path):
    folder, _ = annotated
    copy = tmp_path / "shards"
    shutil.copytree(folder, copy)
    manifest = Manifest.from_shards(copy)
    reader = SampleReader(copy, manifest)
    old = reader.member_bytes("0000001", "canny.png")
    samples = list(read_shard(shard_path(copy, 0)))
    with ShardWriter(shard_path(copy, 0)) as w:  # the shard is re-annotated under the reader
        for s in samples:
            s["canny.png"] = s["depth.png"]
            w.write(s)
    with pytest.raises(StaleIndexError) as e:
        reader.fetch("0000001", "canny")
    msg = str(e.value)
    assert str(shard_path(copy, 0)) in msg and "0000001" in msg and "canny" in msg
    assert e.value.reason == "stale_index"
    # A fresh reader finds the cached index stale (size/mtime changed) and rebuilds it.
    new = SampleReader(copy, manifest, manifest_check="ignore").member_bytes("0000001", "canny.png")
    assert new != old and new == samples[1]["depth.png"]


def test_missing_member_undecodable_and_unknown_key_name_the_culprit(broken_copy):
    folder, manifest = broken_copy
    reader = SampleReader(folder, manifest, manifest_check="ignore")
    with pytest.raises(FetchError) as e:
        reader.fetch("0000000", "canny")
    assert e.value.reason == "missing_member"
    for part in (str(shard_path(folder, 0)), "0000000", "canny", "canny.png"):
        assert part in str(e.value)
    with pytest.raises(FetchError) as e:
        reader.fetch("0000002", "depth")
    assert e.value.reason == "undecodable" and "0000002" in str(e.value)
    assert "depth" in str(e.value)
    with pytest.raises(FetchError) as e:
        reader.fetch("9999999", "target")
    assert e.value.reason == "unknown_key"


def test_stream_skips_and_counts_broken_tasks(broken_copy, tasks_yaml):
    folder, manifest = broken_copy
    stream = GridStream(folder, manifest, manifest_check="ignore", res=32, seed=0, tasks_config=tasks_yaml,
                        families=["conditional_generation"], max_tasks=40)
    grids = list(stream)
    assert len(grids) + sum(stream.skipped.values()) == 40
    assert stream.skipped["missing_member"] > 0 and stream.skipped["undecodable"] > 0
    for g in grids:
        assert all(len(row.shape) == 3 for row in g.rows) and len(g.masks) == g.num_rows
        for key, cells in zip(g.keys, g.cells):
            assert not (key == "0000000" and "canny" in cells)
            assert not (key == "0000002" and "depth" in cells)
    # Direct calls raise instead of skipping.
    with pytest.raises(FetchError, match="0000000"):
        stream.fetch("0000000", "canny")
    # With workers, each item carries its worker's counts; observe() sums them.
    stream = GridStream(folder, manifest, manifest_check="ignore", res=32, seed=0, tasks_config=tasks_yaml,
                        families=["conditional_generation"], max_tasks=40)
    for item in torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2):
        stream.observe(item)
    assert stream.skipped["missing_member"] > 0


def test_stream_never_hangs_when_every_task_fails(broken_copy, tasks_yaml):
    folder, manifest = broken_copy
    for p in list_shards(folder):
        p.write_bytes(b"not a tar")  # every read fails (a folder with no shards at all fails at once)
    stream = GridStream(folder, manifest, manifest_check="ignore", res=32, tasks_config=tasks_yaml,
                        max_consecutive_skips=5)
    with pytest.raises(RuntimeError, match="shard_unreadable"):
        next(iter(stream))


def test_foreground_and_background_come_from_the_matte(annotated):
    folder, manifest = annotated
    reader = SampleReader(folder, manifest, manifest_check="ignore")
    raw = next(s for s in read_shard(shard_path(folder, 0)) if s["__key__"] == "0000001")
    target = decode_image(raw["target.jpg"])
    inside = decode_image(raw["rmbg.png"], "L") >= 128  # threshold 0.5 of the matte
    assert 0 < inside.mean() < 1 and target.shape[:2] == (48, 64)
    fg, bg = reader.fetch("0000001", "foreground"), reader.fetch("0000001", "background")
    assert fg.shape == bg.shape == target.shape
    # black outside the matte, as the reference's `target * (mask > 0.5)`
    assert np.array_equal(fg[inside], target[inside]) and (fg[~inside] == 0).all()
    assert np.array_equal(bg[~inside], target[~inside]) and (bg[inside] == 0).all()


def test_epochs_are_reproducible_across_dataloader_workers(annotated, tasks_yaml):
    folder, manifest = annotated
    stream = GridStream(folder, manifest, res=32, seed=1, tasks_config=tasks_yaml, max_tasks=10)
    a = _run(stream, workers=2)
    assert _run(stream, workers=2) == a  # same seed and epoch -> identical bytes
    assert sorted(t[0] for t in a) == sorted(f"1-0-{i}" for i in range(10))  # disjoint, complete
    # A task's content depends only on (seed, epoch, task index), not on the worker count.
    assert sorted(_run(stream, workers=0)) == sorted(a)
    stream.set_epoch(1)
    b = _run(stream, workers=2)
    assert len(b) == 10 and {t[1:] for t in b} != {t[1:] for t in a}
    other = GridStream(folder, manifest, res=32, seed=2, tasks_config=tasks_yaml, max_tasks=10)
    assert {t[1:] for t in _run(other, workers=0)} != {t[1:] for t in a}


def test_pair_mode_yields_two_frame_pairs(annotated, tasks_yaml):
    folder, manifest = annotated
    stream = GridStream(folder, manifest, res=32, seed=0, tasks_config=tasks_yaml,
                        mode="pair", max_tasks=30)
    pairs = list(stream)
    assert len(pairs) == 30
    names = set()
    for p in pairs:
        assert isinstance(p, TwoFramePair)
        assert p.condition.shape == p.target.shape == (32, 32, 3)
        assert p.condition.dtype == p.target.dtype == np.uint8
        assert p.subject == manifest.item(manifest.index_of(p.key))
        assert p.subject.lower() in p.prompt.lower()  # UCE finds the keyword in the prompt
        names.add(p.task)
    # Two-image variants only: instantstyle (style ref + stylized) never forms a pair.
    allowed = {"canny", "depth", "foreground", "background", "subject_extraction",
               "target->canny", "target->depth"}
    assert names <= allowed and len(names) >= 4
    assert _run(stream, workers=0) == [_grid_bytes(p) for p in pairs]


def test_degradations_are_applied_deterministically(annotated, tmp_path):
    degradations = pytest.importorskip("graph200k.degradations")
    folder, manifest = annotated
    reader = SampleReader(folder, manifest)
    target = reader.fetch("0000003", "target")
    blurred = reader.fetch("0000003", "GaussianBlur", seed=5)
    assert np.array_equal(blurred, reader.fetch("0000003", "GaussianBlur", seed=5))
    assert np.array_equal(blurred, degradations.apply("GaussianBlur", target, 5))
    assert not np.array_equal(blurred, target)
    rotated = reader.fetch("0000001", "rotate90", seed=0)  # 48 x 64 target -> 64 x 48
    assert rotated.shape == (64, 48, 3)
    cfg = tmp_path / "restoration.yaml"
    cfg.write_text("families:\n  restoration:\n    variants: [[GaussianNoise, target], "
                   "[rotate90, target], [JPEG, target]]\n")
    a = GridStream(folder, manifest, res=32, seed=3, tasks_config=cfg, max_tasks=6)
    first = [_grid_bytes(g) for g in a]
    assert first == [_grid_bytes(g) for g in a] and len(first) == 6


def test_a_stale_shard_is_skipped_in_the_stream_then_reindexed(annotated, tmp_path, tasks_yaml):
    folder, _ = annotated
    copy = tmp_path / "shards"
    shutil.copytree(folder, copy)
    manifest = Manifest.from_shards(copy)
    manifest.save(tmp_path / "manifest.parquet")
    stream = GridStream(copy, str(tmp_path / "manifest.parquet"), res=32, tasks_config=tasks_yaml,
                        families=["subject_extraction"])
    it = iter(stream)
    next(it)
    samples = list(read_shard(shard_path(copy, 0)))
    with ShardWriter(shard_path(copy, 0)) as w:
        for s in samples:
            s["reference.jpg"] = s["target.jpg"]
            w.write(s)
    for _ in range(12):
        next(it)
    assert stream.skipped["stale_index"] == 1  # once: the next read rebuilt the index


def test_reduced_jpeg_decoding_keeps_both_sides_above_min_side():
    from graph200k.shards import decode_image as decode, jpeg_size
    from graph200k.shards import encode_image

    img = np.zeros((1024, 1200, 3), np.uint8)
    img[:, :600] = (200, 30, 10)
    data = encode_image(img, "jpg")
    assert jpeg_size(data) == (1024, 1200)
    assert decode(data, min_side=384).shape == (512, 600, 3)  # 1/2 scale: both >= 384
    assert decode(data, min_side=200).shape == (256, 300, 3)  # 1/4
    assert decode(data).shape == (1024, 1200, 3)
    assert np.abs(decode(data, min_side=200)[10, 10].astype(int) - (200, 30, 10)).max() <= 4
    assert jpeg_size(encode_image(img[:64, :64], "png")) is None


def test_resumed_stream_continues_exactly_without_reading_skipped_tasks(annotated, tasks_yaml,
                                                                      monkeypatch):
    folder, manifest = annotated
    make = lambda: GridStream(folder, manifest, res=32, seed=3, tasks_config=tasks_yaml,  # noqa: E731
                              max_tasks=12)
    full = [_grid_bytes(g) for g in make()]
    stream = make()
    it = iter(stream)
    head = [_grid_bytes(next(it)) for _ in range(5)]
    state = stream.state_dict()
    assert state == {"epoch": 0, "next_index": 5}

    reads = []
    real = SampleReader.member_bytes
    monkeypatch.setattr(SampleReader, "member_bytes",
                        lambda self, key, member, node=None: reads.append(key) or real(self, key, member, node))
    built = []
    real_build = GridStream.build
    monkeypatch.setattr(GridStream, "build", lambda self, task: built.append(task.task_id)
                        or real_build(self, task))
    resumed = make()
    resumed.load_state_dict(state)
    tail = [_grid_bytes(g) for g in resumed]
    assert head + tail == full
    assert built == [f"3-0-{i}" for i in range(5, 12)]  # tasks 0-4 never sampled nor built
    resumed_reads, reads[:] = list(reads), []
    fresh = make()
    for i in range(5, 12):  # exactly the reads of building tasks 5-11, nothing for 0-4
        fresh.build(fresh.task(i))
    assert resumed_reads and resumed_reads == reads
    # With DataLoader workers: observe() the items consumed, resume from that position.
    stream = make()
    loader = iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2))
    first = []
    for _ in range(7):
        item = next(loader)
        stream.observe(item)
        first.append(_grid_bytes(item))
    del loader
    assert stream.state_dict() == {"epoch": 0, "next_index": 7}
    again = make()
    again.load_state_dict(stream.state_dict())
    assert first + _run(again, workers=2) == full
    # A new epoch starts from its beginning.
    again.set_epoch(1)
    assert again.state_dict() == {"epoch": 1, "next_index": 0} and len(list(again)) == 12
