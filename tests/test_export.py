"""`python -m graph200k.export`: the hub's DatasetDict (`--format hf`) and the reference
trainer's images + data.json (`--format visualcloze`), checked as contracts: column names
and types, keys, paths, variant counts, member bytes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graph200k import export
from graph200k.export_columns import SINGLE, hub_columns, hub_features
from graph200k.export_rows import ExportError, ExportReport, hub_row
from graph200k.shards import read_shard
from graph200k.splits import split_of
from interop_samples import VARIANTS, full_sample, write_release

NUM = 8
FRACTION = 0.5


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("graph200k"), NUM, per_shard=4)


@pytest.fixture(scope="module")
def samples(shards) -> dict[str, dict]:
    return {s["__key__"]: s for tar in sorted(shards.glob("*.tar")) for s in read_shard(tar)}


def _expected_split(keys):
    return {k: split_of(k, FRACTION) for k in keys}


@pytest.fixture(scope="module")
def hf_export(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hf"
    assert export.main(["--src", str(shards), "--format", "hf", "--out", str(out),
                        "--test-fraction", str(FRACTION)]) == 0
    return out


def test_hf_export_is_a_datasetdict_with_the_hubs_columns_and_types(hf_export, samples):
    import datasets

    dd = datasets.load_from_disk(str(hf_export))
    assert isinstance(dd, datasets.DatasetDict) and set(dd) == {"train", "test"}
    splits = _expected_split(samples)
    for name, ds in dd.items():
        assert ds.column_names == hub_columns()
        assert ds.features == hub_features()
        assert ds.num_rows == sum(s == name for s in splits.values())
    assert dd["train"].num_rows and dd["test"].num_rows  # both splits hold rows


def test_hf_export_keeps_member_bytes_variants_and_text(hf_export, samples):
    import datasets

    dd = datasets.load_from_disk(str(hf_export))
    splits = _expected_split(samples)
    for name in ("train", "test"):
        keys = [k for k in sorted(samples) if splits[k] == name]
        ds = dd[name].cast_column("target", datasets.Image(decode=False))
        for c in SINGLE:
            ds = ds.cast_column(c.hub, datasets.Image(decode=False))
        for i, key in enumerate(keys):
            row, sample = ds[i], samples[key]
            for c in SINGLE:
                have = row[c.hub]
                assert (have["bytes"] if have else None) == sample.get(c.member), (key, c.hub)
            meta = json.loads(sample["meta.json"])
            n_instant, n_redux, n_fill, _ = VARIANTS[int(key) % 4]
            raw = dd[name].cast_column("FillEdit_image_0", datasets.Image(decode=False))[i]
            assert (raw["FillEdit_image_0"] is not None) == (n_fill > 0)
            present = [v for v in range(4) if dd[name][i][f"ReduxStyle_ref_{v}"] is not None]
            assert present == list(range(n_redux))
            assert row["description"]["description_0"] == meta["description"]
            assert row["description"]["item"] == meta["item"]
            assert row["quality_assessment"] == meta["quality"]
            assert row["qwen_2_5_meta"][0]["name"] == meta["item"]
            if n_fill:
                assert row["FillEdit_meta"]["name"] == f"new {meta['item']} 0"


def test_hub_row_leaves_out_variants_the_hub_has_no_column_for():
    sample = full_sample("0000000", 0)
    sample["instantstyle.4.jpg"] = sample["instantstyle.0.jpg"]
    sample["instantstyle_ref.4.jpg"] = sample["instantstyle_ref.0.jpg"]
    report = ExportReport()
    row = hub_row(sample, "test", report)
    assert "InstantStyle_image_4" not in row and row["InstantStyle_image_3"] is not None
    assert report.dropped == {"instantstyle.N.jpg": 1, "instantstyle_ref.N.jpg": 1}


def test_a_variant_list_with_a_hole_is_an_error_naming_the_key_and_member():
    sample = full_sample("0000042", 0)
    del sample["filledit.2.jpg"]
    with pytest.raises(ExportError, match=r"key '0000042'.*filledit variants have a hole.*"
                                          r"filledit\.3\.jpg"):
        hub_row(sample, "shard 000000 key '0000042'")


# -- the reference trainer's layout -----------------------------------------------------------

@pytest.fixture(scope="module")
def vc_export(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "visualcloze"
    assert export.main(["--src", str(shards), "--format", "visualcloze", "--out", str(out),
                        "--test-fraction", str(FRACTION)]) == 0
    return out


SINGLE_KEYS = {"reference", "target", "DepthEdit", "mask", "bbox", "sam2_mask", "uniformer",
               "foreground", "normal", "depth", "canny", "hed", "mlsd", "openpose"}


def test_visualcloze_export_writes_data_json_as_processing_py(vc_export, samples):
    splits = _expected_split(samples)
    for name in ("train", "test"):
        items = json.loads((vc_export / name / "data.json").read_text())
        keys = [k for k in sorted(samples) if splits[k] == name]
        assert len(items) == len(keys)
        for i, (key, item) in enumerate(zip(keys, items)):
            assert list(item) == ["quality_assessment", "description", "collection", "condition"]
            meta = json.loads(samples[key]["meta.json"])
            assert item["description"]["description_0"] == meta["description"]
            assert item["quality_assessment"]["objectConsistency"] == 5
            cond = item["condition"]
            n_instant, n_redux, n_fill, n_depthedit = VARIANTS[int(key) % 4]
            want = set(SINGLE_KEYS) | {"qwen_2_5_meta"}
            if not n_depthedit:
                want.discard("DepthEdit")
            # a style only with >= 3 variants (3 written), FillEdit only with >= 5 (5 written)
            want |= {s for s, n in (("InstantStyle", n_instant), ("ReduxStyle", n_redux)) if n >= 3}
            if n_fill >= 5:
                want.add("FillEdit")
            assert set(cond) == want, key
            for k in SINGLE_KEYS & set(cond):
                column = {"reference": "ref", "mask": "qwen_2_5_mask",
                          "bbox": "qwen_2_5_bounding_box"}.get(k, k)
                assert cond[k] == str(vc_export / name / column / f"{i}_{column}.jpg")
            for style in ("InstantStyle", "ReduxStyle"):
                if style in cond:
                    assert list(cond[style]) == ["image_path", "style_path"]
                    assert cond[style]["image_path"] == [
                        str(vc_export / name / style / f"{i}_{style}_image_{v}.jpg") for v in range(3)]
                    assert cond[style]["style_path"] == [
                        str(vc_export / name / style / f"{i}_{style}_ref_{v}.jpg") for v in range(3)]
            if "FillEdit" in cond:
                assert list(cond["FillEdit"]) == ["image_path", "description", "name"]
                assert len(cond["FillEdit"]["image_path"]) == 5
                assert cond["FillEdit"]["name"] == f"new {meta['item']} 0"


def test_visualcloze_images_are_jpegs_that_open_as_rgb(vc_export):
    items = json.loads((vc_export / "train" / "data.json").read_text())
    paths = [p for it in items for v in it["condition"].values()
             for p in ([v] if isinstance(v, str) else
                       (v.get("image_path", []) + v.get("style_path", []) if isinstance(v, dict) else []))]
    assert paths and all(Path(p).is_absolute() for p in paths)
    for p in paths:
        with Image.open(p) as img:
            assert img.format == "JPEG" and img.convert("RGB").size == (48, 48)
    # the palette segmentation became an RGB JPEG with its colours, not an error
    seg = next(it["condition"]["uniformer"] for it in items)
    rgb = np.asarray(Image.open(seg).convert("RGB"), np.int32)
    assert abs(rgb[2, 2] - np.array([120, 120, 120])).max() < 12
    # depth: 8-bit grey near bright, as the reference's examples
    depth = np.asarray(Image.open(next(it["condition"]["depth"] for it in items)).convert("L"))
    assert depth[-2].mean() > depth[1].mean() + 150


def test_export_refuses_a_folder_without_shards(tmp_path, capsys):
    assert export.main(["--src", str(tmp_path), "--format", "hf", "--out", str(tmp_path / "o")]) == 1
    assert "no shards" in capsys.readouterr().err


def test_export_error_names_the_shard_key_and_member(tmp_path, capsys):
    from graph200k.shards import ShardWriter, shard_path

    bad = full_sample("0000007", 0)
    del bad["instantstyle_ref.1.jpg"]  # variant 1 incomplete, 2 and 3 stored
    with ShardWriter(shard_path(tmp_path / "src", 0)) as w:
        w.write(bad)
    assert export.main(["--src", str(tmp_path / "src"), "--format", "hf",
                        "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "shard 000000 key '0000007'" in err and "instantstyle" in err
    assert not (tmp_path / "o").exists()  # nothing half-written under the final name


def test_image_bytes_are_not_decoded_on_the_way(samples):
    sample = samples["0000000"]
    row = hub_row(sample, "x")
    assert row["uniformer"]["bytes"] is sample["uniformer.png"]  # the same object: no copy
    assert Image.open(io.BytesIO(row["uniformer"]["bytes"])).mode == "P"
