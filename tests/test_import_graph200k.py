"""Importing the released Graph200K (`python -m pipelines.ingest --source <hub-shaped>`):
source shards + one sidecar per stage, the released split kept, then sample_tasks and a few
steps of the tiny Fill recipe on it; the round trip ours -> export hf -> import; bad input."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from graph200k import export
from graph200k.dataset import ShardSet
from graph200k.manifest import Manifest
from graph200k.reader import SampleReader
from graph200k.shards import read_shard
from interop_samples import VARIANTS, hub_dataset_dict, hub_row_of, write_release
from pipelines import import_graph200k, ingest

TRAIN, TEST = 6, 2
STAGES = ["canny", "depth", "depthedit", "filledit", "hed", "instantstyle", "mask", "mlsd",
          "normal", "openpose", "reduxstyle", "rmbg", "sam2_mask", "uniformer"]


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub") / "graph200k-hf"
    hub_dataset_dict(TRAIN, TEST).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def imported(hub_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    rc = ingest.main(["--source", str(hub_folder), "--out", str(root / "source"),
                      "--annotated", str(root / "graph200k"), "--shard-size", "4"])
    assert rc == 0
    manifest = Manifest.from_shards(root / "graph200k")
    manifest.save(root / "graph200k" / "manifest.parquet")
    return root, manifest


def test_import_writes_source_shards_and_one_sidecar_per_stage(imported):
    root, manifest = imported
    shard_set = ShardSet(root / "graph200k")
    assert shard_set.layout == "stages" and sorted(shard_set.stages) == STAGES
    assert shard_set.shards() == [0, 1]
    for stage in STAGES:
        stats = json.loads((root / "graph200k" / stage / "000000.stats.json").read_text())
        assert stats["run"] == "import" and stats["ok"] + stats["skipped"] == 4
        assert stats["source"]["sha256"]  # annotate sees the stage as done for this source
    source = list(read_shard(root / "source" / "000000.tar"))
    assert {m for s in source for m in s} == {"__key__", "target.jpg", "reference.jpg", "meta.json"}
    meta = json.loads(source[0]["meta.json"])
    assert meta["item"] == "astronaut" and meta["split"] == "train"
    assert meta["quality"]["objectConsistency"] == 5 and meta["description"].startswith("An astronaut")


def test_import_keeps_the_released_split_and_variant_counts(imported):
    _, manifest = imported
    assert list(manifest.splits) == ["train"] * TRAIN + ["test"] * TEST
    for i in range(TRAIN + TEST):
        n_instant, n_redux, n_fill, n_depthedit = VARIANTS[i % 4]
        assert manifest.variant_count(i, "instantstyle") == n_instant
        assert manifest.variant_count(i, "reduxstyle") == n_redux
        assert manifest.variant_count(i, "filledit") == n_fill
        assert manifest.variant_count(i, "depthedit") == n_depthedit


def test_imported_members_keep_the_hubs_bytes_or_are_transcoded_to_their_format(imported, hub_folder):
    """Maps stored as PNG keep the hub's bytes; the hub's photos and generations are PNG while
    our `.jpg` members are JPEG: those (and only those) are re-encoded, once."""
    import datasets

    root, manifest = imported
    hub = datasets.load_from_disk(str(hub_folder))["train"]
    reader = SampleReader(root / "graph200k", manifest)
    row = hub.cast_column("canny", datasets.Image(decode=False))[0]
    assert reader.member_bytes("0000000", "canny.png") == row["canny"]["bytes"]
    row = hub.cast_column("uniformer", datasets.Image(decode=False))[0]
    assert reader.member_bytes("0000000", "uniformer.png") == row["uniformer"]["bytes"]
    target = reader.member_bytes("0000000", "target.jpg")
    assert target[:2] == b"\xff\xd8"  # JPEG now
    hub_target = np.asarray(hub[0]["target"].convert("RGB"), np.int32)
    ours = np.asarray(Image.open(io.BytesIO(target)).convert("RGB"), np.int32)
    assert np.abs(ours - hub_target).mean() < 3  # quality 95, the same photo
    entry = json.loads(reader.member_bytes("0000000", "meta.json"))["annotations"]
    assert entry["mask"]["objects"][0] == {"name": "astronaut", "box": [8, 10, 41, 45],
                                           "colour": [255, 0, 0]}
    assert entry["mask"]["subject"] == 0
    assert entry["filledit"]["variants"][0]["subject"] == "new astronaut"


def test_imported_release_runs_sample_tasks_and_the_tiny_fill_recipe(imported, tiny_fill_dir,
                                                                     tmp_path, one_torch_thread):
    import math

    import train.visualcloze.recipe as fill
    from graph200k import sample_tasks
    from train.common.config import load_config

    root, _ = imported
    manifest = root / "graph200k" / "manifest.parquet"
    tasks = tmp_path / "tasks.jsonl"
    assert sample_tasks.main(["--manifest", str(manifest), "--num", "40", "--seed", "0",
                              "--out", str(tasks)]) == 0
    lines = [json.loads(x) for x in tasks.read_text().splitlines()]
    assert len(lines) == 40
    families = {t["family"] for t in lines}
    assert {"style_transfer", "image_editing"} & families  # generated nodes were imported
    cfg = load_config(fill.FillConfig, "configs/train/fill-tiny.yaml", [
        f"model.pretrained={tiny_fill_dir}", f"data.shards={root / 'graph200k'}",
        f"data.manifest={manifest}", f"train.out_dir={tmp_path / 'run'}",
        "train.tensorboard=false", "train.max_steps=3", "train.checkpoint_every=0",
        "validation.every=0"])
    losses = fill.train(cfg)["losses"]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").exists()


def test_a_parquet_release_imports_the_same_rows(hub_folder, imported, tmp_path):
    import datasets

    dd = datasets.load_from_disk(str(hub_folder))
    folder = tmp_path / "parquet"
    folder.mkdir()
    for split, ds in dd.items():
        ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    assert ingest.main(["--source", str(folder), "--out", str(tmp_path / "source"),
                        "--shard-size", "4"]) == 0
    root, manifest = imported
    m = Manifest.from_shards(tmp_path / "graph200k")
    assert list(m.splits) == list(manifest.splits) and list(m.masks) == list(manifest.masks)
    for tar in ("000000.tar", "000001.tar"):
        assert (tmp_path / "graph200k" / "canny" / tar).read_bytes() == \
            (root / "graph200k" / "canny" / tar).read_bytes()


# -- the round trip ---------------------------------------------------------------------------

def test_round_trip_ours_export_hf_import_keeps_node_types_and_member_bytes(tmp_path):
    """No image member is transcoded on the way: the hf export stores our bytes and they are
    already in their member's format. What is rebuilt: the keys (the hub has none: rows are
    numbered train first), `meta.json` (from the hub's text columns) and the mask / filledit
    stage entries (from `qwen_2_5_meta` / `FillEdit_meta`: one new subject per sample)."""
    src = write_release(tmp_path / "ours", 8, per_shard=4)
    assert export.main(["--src", str(src), "--format", "hf", "--out", str(tmp_path / "hf"),
                        "--test-fraction", "0.5"]) == 0
    stats = import_graph200k.import_release(str(tmp_path / "hf"), str(tmp_path / "back" / "source"),
                                            shard_size=4, log=lambda *_: None)
    assert stats.transcoded == {}  # which members were re-encoded: none
    ours = {s["__key__"]: s for tar in sorted(src.glob("*.tar")) for s in read_shard(tar)}
    before = Manifest.from_shards(src, test_fraction=0.5)
    after = Manifest.from_shards(tmp_path / "back" / "graph200k")
    order = [k for split in ("train", "test") for k in sorted(ours)
             if before.splits[before.index_of(k)] == split]
    reader = SampleReader(tmp_path / "back" / "graph200k", after)
    for new_index, key in enumerate(order):
        new_key = f"{new_index:07d}"
        assert after.splits[new_index] == before.splits[before.index_of(key)]
        assert after.masks[new_index] == before.masks[before.index_of(key)], key
        images = sorted(m for m in ours[key] if m.endswith((".jpg", ".png")))
        assert reader.fields(new_key) == sorted(images + ["meta.json"])
        for m in images:
            assert reader.member_bytes(new_key, m) == ours[key][m], (key, m)


# -- bad input ----------------------------------------------------------------------------------

def _save(dd, path):
    dd.save_to_disk(str(path))
    return str(path)


def test_a_missing_column_names_the_column(tmp_path, capsys):
    dd = hub_dataset_dict(2, 1)
    dd = dd.remove_columns("ref")
    rc = ingest.main(["--source", _save(dd, tmp_path / "hub"), "--out", str(tmp_path / "src")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "column 'ref' is missing" in err and "split train" in err


def test_an_image_that_does_not_decode_names_the_row_and_column(tmp_path):
    import datasets

    from graph200k.export_columns import hub_features

    rows = [hub_row_of(0), hub_row_of(1)]
    rows[1]["canny"] = {"bytes": b"not an image at all", "path": None}
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows, features=hub_features())})
    with pytest.raises(import_graph200k.ReleaseImportError,
                       match=r"split train row 1 \(key 0000001\): column 'canny' does not decode"):
        import_graph200k.import_release(_save(dd, tmp_path / "hub"), str(tmp_path / "src"),
                                        log=lambda *_: None)
    assert not list((tmp_path / "src").glob("*.tar"))  # nothing under a final name


def test_a_variant_list_with_holes_names_the_empty_column(tmp_path):
    import datasets

    from graph200k.export_columns import hub_features

    row = hub_row_of(0)  # FillEdit 0-5
    row["FillEdit_image_1"] = None
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list([row], features=hub_features())})
    with pytest.raises(import_graph200k.ReleaseImportError,
                       match=r"filledit variants have a hole: column 'FillEdit_image_1' is empty"):
        import_graph200k.import_release(_save(dd, tmp_path / "hub"), str(tmp_path / "src"),
                                        log=lambda *_: None)


def test_a_half_style_pair_names_its_empty_column(tmp_path):
    import datasets

    from graph200k.export_columns import hub_features

    row = hub_row_of(0)
    row["InstantStyle_ref_2"] = None
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list([row], features=hub_features())})
    with pytest.raises(import_graph200k.ReleaseImportError, match="'InstantStyle_ref_2' is empty"):
        import_graph200k.import_release(_save(dd, tmp_path / "hub"), str(tmp_path / "src"),
                                        log=lambda *_: None)


def test_subjects200k_sources_still_go_through_ingest(mini_parquet):
    assert not import_graph200k.looks_like_graph200k(str(mini_parquet))
    assert not import_graph200k.looks_like_graph200k("Yuanshi/Subjects200K")
    assert import_graph200k.looks_like_graph200k("VisualCloze/Graph200K")
