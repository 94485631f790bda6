"""A published release loads with `datasets`, `webdataset` and Ray Data, and every image member
opens as a person expects with PIL's `.convert("RGB")` (issue 26)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import yaml
from PIL import Image

from annotate_helpers import REPO
from graph200k import publish
from graph200k.shards import decode_image, read_shard
from interop_samples import MEMBER_KINDS, write_release

NUM = 8


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    write_release(root / "shards", NUM, per_shard=4)
    rc = publish.main(["--src", str(root / "shards"), "--to", str(root / "release"),
                       "--config", str(REPO / "configs/publish.yaml"),
                       "--tasks", str(REPO / "configs/tasks.yaml")])
    assert rc == 0
    return root / "release"


def _members(release) -> set[str]:
    return {m for tar in sorted(release.glob("*.tar")) for s in read_shard(tar) for m in s
            if m != "__key__"}


def test_card_declares_the_union_of_members_and_ships_its_license(release):
    text = (release / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    declared = [f["name"] for f in front["dataset_info"]["features"]]
    assert declared[0] == "__key__" and declared[-1] == "__url__"
    assert set(declared[1:-1]) == _members(release)
    assert front["license_link"] == "LICENSE.md" and (release / "LICENSE.md").read_text().strip()
    assert "enable_tensor_extension_casting = False" in text


def test_card_drops_a_license_link_to_a_missing_file(tmp_path):
    write_release(tmp_path, 2, per_shard=2)
    config = yaml.safe_load((REPO / "configs/publish.yaml").read_text())
    config["card"].pop("license_text")
    publish.write_card(tmp_path, config, None)
    front = yaml.safe_load((tmp_path / "README.md").read_text().split("---\n")[1])
    assert "license_link" not in front and not (tmp_path / "LICENSE.md").exists()


def test_datasets_load_dataset_reads_every_row_and_column(release, tmp_path):
    import datasets

    ds = datasets.load_dataset(str(release), split="train", cache_dir=str(tmp_path / "cache"))
    members = _members(release)
    assert ds.num_rows == NUM
    assert set(ds.column_names) == members | {"__key__", "__url__"}
    # a member absent from some samples is None there (FillEdit: 3 samples of 4 hold it)
    fill = [r is not None for r in ds["filledit.0.jpg"]]
    assert 0 < sum(fill) < NUM
    row = ds[0]
    assert row["meta.json"]["item"] == "astronaut" and row["meta.json"]["quality"]["imageQuality"] == 4
    assert row["meta.json"]["annotations"]["mask"]["objects"][0]["name"] == "astronaut"
    assert row["depth.png"].mode == "L" and row["uniformer.png"].convert("RGB").mode == "RGB"


def test_load_release_prints_the_rows_and_columns_datasets_got(release, capsys):
    from graph200k import load_release

    assert load_release.main([str(release)]) == 0
    out = capsys.readouterr().out
    assert f"{NUM} rows, {len(_members(release)) + 2} columns" in out
    assert "filledit.0.jpg 6" in out and "target.jpg 8" in out


def test_without_the_declared_features_datasets_refuses_the_release(release, tmp_path):
    import datasets

    with pytest.raises(ValueError, match="same prefix or the same types"):
        datasets.load_dataset("webdataset", data_files=str(release / "*.tar"), split="train",
                              cache_dir=str(tmp_path / "cache"))


def test_webdataset_reads_every_sample_with_the_pil_decoder(release):
    import webdataset as wds

    urls = [str(p) for p in sorted(release.glob("*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil"))
    assert len(samples) == NUM
    assert set().union(*[set(s) for s in samples]) - {"__key__", "__url__", "__local_path__"} \
        == _members(release)
    depth = samples[0]["depth.png"]
    assert isinstance(depth, Image.Image) and np.asarray(depth.convert("RGB")).std() > 10


def test_ray_read_webdataset_with_the_card_setting(release):
    import ray

    ray.init(num_cpus=1, include_dashboard=False, ignore_reinit_error=True,
             log_to_driver=False)
    try:
        ctx = ray.data.DataContext.get_current()
        before = ctx.enable_tensor_extension_casting
        ctx.enable_tensor_extension_casting = False  # the one setting the card shows
        try:
            ds = ray.data.read_webdataset(str(release), file_extensions=["tar"],
                                          decoder=None)
            rows = ds.take_all()
        finally:
            ctx.enable_tensor_extension_casting = before
    finally:
        ray.shutdown()
    assert len(rows) == NUM
    columns = set().union(*[set(r) for r in rows])
    assert {"target.jpg", "filledit.0.jpg", "uniformer.png", "meta.json"} <= columns
    # present: the member's bytes; absent: a null (NaN once Ray's blocks went through pandas)
    assert sum(isinstance(r.get("filledit.0.jpg"), bytes) for r in rows) == 6


@pytest.mark.parametrize("member", sorted(MEMBER_KINDS))
def test_every_member_kind_opens_as_rgb_with_its_content(release, member):
    sample = next(s for tar in sorted(release.glob("*.tar")) for s in read_shard(tar)
                  if member in s)
    img = Image.open(io.BytesIO(sample[member]))
    assert img.mode == MEMBER_KINDS[member]
    rgb = np.asarray(img.convert("RGB"))
    # the colours our own decoder sees (palette resolved, grey expanded), not a blank image
    np.testing.assert_array_equal(rgb, decode_image(sample[member], "RGB"))
    assert 0 < (rgb == 255).mean() < 0.9 or rgb.std() > 5
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG")  # what the reference processing.py needs
    assert Image.open(buf).mode == "RGB"
