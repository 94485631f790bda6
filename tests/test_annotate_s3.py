"""The whole data path on object storage: a real S3 endpoint on this machine (moto's server,
reached by s3fs through the usual AWS_ENDPOINT_URL), no mocking of our code."""

from __future__ import annotations

import json


from annotate_helpers import (  # noqa: F401  (fixtures)
    CANNY,
    SAMPLES,
    annotate_args,
    make_source_shard,
    ray_local,
    write_config,
)
from graph200k import manifest as manifest_cli
from graph200k import publish, sample_tasks, storage, verify
from graph200k.reader import SampleReader
from graph200k.stream import GridStream
from pipelines import annotate

WORDS = {"class": "annotate_helpers.WordCount", "batch_size": 3, "concurrency": 1}


def test_annotate_manifest_tasks_stream_and_publish_on_s3(ray_local, bucket, tmp_path, capsys):
    local_src = tmp_path / "source"
    for shard in (0, 1):
        make_source_shard(local_src, shard, SAMPLES)
        for suffix in (".tar", ".index.json", ".stats.json"):
            storage.put_file(str(local_src / f"{shard:06d}{suffix}"),
                             f"{bucket}/source/{shard:06d}{suffix}")
    config = write_config(tmp_path, {"canny": CANNY, "wordcount": WORDS}, seed=3)
    src, out = f"{bucket}/source", f"{bucket}/graph200k"

    assert annotate.main(annotate_args(src, out, config, "all")) == 0
    assert annotate.main(annotate_args(local_src, tmp_path / "local", config, "all")) == 0
    for stage in ("canny", "wordcount"):  # the same bytes on S3 as on a local disk
        for shard in (0, 1):
            assert storage.read_bytes(f"{out}/{stage}/{shard:06d}.tar") == \
                (tmp_path / "local" / stage / f"{shard:06d}.tar").read_bytes()
    assert annotate.run("all", None, config, src, out).written == {}  # resume: all complete
    capsys.readouterr()

    assert verify.main(["--shards", out]) == 0
    assert manifest_cli.main(["--shards", out]) == 0
    manifest = f"{out}/manifest.parquet"
    assert sample_tasks.main(["--manifest", manifest, "--num", "4",
                              "--out", str(tmp_path / "tasks.jsonl")]) == 0
    reader = SampleReader(out, manifest)  # members by ranged reads
    local = SampleReader(tmp_path / "local", manifest_check="ignore")
    assert reader.member_bytes("0000001", "canny.png") == local.member_bytes("0000001", "canny.png")
    stream = GridStream(out, manifest, res=32, seed=0, max_tasks=2, families=["subject_extraction"])
    assert len(list(stream)) == 2

    release = tmp_path / "release"
    assert publish.main(["--src", out, "--to", str(release), "--config", "", "--tasks", ""]) == 0
    assert publish.main(["--src", str(tmp_path / "local"), "--to", str(tmp_path / "rel2"),
                         "--config", "", "--tasks", ""]) == 0
    for shard in (0, 1):
        assert (release / f"{shard:06d}.tar").read_bytes() == \
            (tmp_path / "rel2" / f"{shard:06d}.tar").read_bytes()
    printed = capsys.readouterr()
    assert "testing" not in printed.out + printed.err  # credentials never logged


def test_a_slice_read_from_s3_fetches_its_own_byte_range_not_the_shard(bucket, tmp_path,
                                                                        monkeypatch):
    from graph200k.dataset import ShardSet
    from pipelines import annotate_io

    local = tmp_path / "source"
    make_source_shard(local, 0, 8)
    for suffix in (".tar", ".index.json", ".stats.json"):
        storage.put_file(str(local / f"000000{suffix}"), f"{bucket}/source/000000{suffix}")
    shard_set = ShardSet.create(f"{bucket}/out", f"{bucket}/source")
    fetched = []
    real = storage.read_range

    def counting(path, offset, length):
        fetched.append(length)
        return real(path, offset, length)

    monkeypatch.setattr(storage, "read_range", counting)
    wave = {"root": shard_set.root, "stages": ["canny"], "inputs": [], "members": ["target.jpg"],
            "reads": []}
    job = {"shard": 0, "stages": {"canny": "all"}}
    rows = annotate_io._shard_rows(dict(job, rows=[2, 4]), wave)
    assert [r["key"] for r in rows] == ["0000002", "0000003"]
    assert [r["index"] for r in rows] == [2, 3] and {r["count"] for r in rows} == {8}
    tar = (local / "000000.tar").read_bytes()
    assert len(fetched) == 1 and fetched[0] < len(tar) / 3  # one GET, of about 2/8 of it
    whole = annotate_io._shard_rows(job, wave)  # the same bytes as a read of every row
    assert [r["members"] for r in rows] == [r["members"] for r in whole[2:4]]


def _upload_folder(local, url):
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.put_file(str(path), f"{url}/{path.relative_to(local).as_posix()}")


def test_ingest_writes_and_preview_reads_s3_as_they_do_a_local_folder(bucket, mini_parquet,
                                                                     tmp_path, capsys):
    from graph200k import preview
    from pipelines import ingest

    storage.put_file(str(mini_parquet), f"{bucket}/subjects200k/mini.parquet")
    args = ["--shard-size", "5", "--quality", "visualcloze"]
    from_s3 = ["--source", f"{bucket}/subjects200k/mini.parquet", *args]  # S3 -> S3
    assert ingest.main([*from_s3, "--out", f"{bucket}/source"]) == 0
    assert ingest.main(["--source", str(mini_parquet), *args,
                        "--out", str(tmp_path / "source")]) == 0
    local = sorted(p.name for p in (tmp_path / "source").iterdir() if p.is_file())
    assert local and storage.listdir(f"{bucket}/source") == local
    for name in local:  # shards and indexes: the same bytes; stats but for the timing
        remote, here = storage.read_bytes(f"{bucket}/source/{name}"), \
            (tmp_path / "source" / name).read_bytes()
        if name.endswith(".stats.json"):
            remote, here = (dict(json.loads(b), seconds=0) for b in (remote, here))
        assert remote == here, name
    assert ingest.main([*from_s3, "--out", f"{bucket}/source"]) == 0  # resume: all complete
    assert "0 to write" in capsys.readouterr().out

    outputs = {}
    for where, shards in (("s3", f"{bucket}/source"), ("local", str(tmp_path / "source"))):
        manifest, tasks = f"{shards}/manifest.parquet", f"{shards}/tasks.jsonl"
        assert manifest_cli.main(["--shards", shards]) == 0
        assert sample_tasks.main(["--manifest", manifest, "--num", "3", "--seed", "1",
                                  "--out", tasks]) == 0
        png = tmp_path / f"{where}.png"
        assert preview.main(["--task", "2", "--tasks", tasks, "--shards", shards,
                             "--manifest", manifest, "--res", "32", "--out", str(png)]) == 0
        outputs[where] = (storage.read_bytes(tasks), png.read_bytes())
    assert outputs["s3"] == outputs["local"]
    assert "testing" not in "".join(capsys.readouterr())  # credentials never logged


def test_both_trainers_read_their_shards_from_s3_as_from_a_local_folder(
        bucket, annotated_shards, tiny_fill_dir, tiny_cogvideox_dir, one_torch_thread, tmp_path):
    import train.realgeneral.recipe as cogvideox
    import train.visualcloze.recipe as fill
    from train.common.config import load_config

    folder, _ = annotated_shards
    remote = f"{bucket}/graph200k"
    _upload_folder(folder, remote)
    # the same held-out split as the local fixture's manifest (conftest: test_fraction 0.05)
    assert manifest_cli.main(["--shards", remote, "--test-fraction", "0.05"]) == 0
    common = ["train.tensorboard=false", "train.max_steps=2", "train.checkpoint_every=0",
              "validation.every=0"]
    losses = {}
    for where, shards, manifest in (("s3", remote, f"{remote}/manifest.parquet"),
                                    ("local", folder, folder / "manifest.parquet")):
        data = [f"data.shards={shards}", f"data.manifest={manifest}"]
        cfg = load_config(fill.FillConfig, "configs/train/fill-tiny.yaml", [
            f"model.pretrained={tiny_fill_dir}", f"train.out_dir={tmp_path / where / 'fill'}",
            *data, *common])
        video = load_config(cogvideox.CogVideoXConfig, "configs/train/cogvideox-tiny.yaml", [
            f"model.pretrained={tiny_cogvideox_dir}", "model.build_tiny=false",
            f"train.out_dir={tmp_path / where / 'cogvideox'}", *data, *common])
        losses[where] = (fill.train(cfg)["losses"], cogvideox.train(video)["losses"])
    assert len(losses["s3"][0]) == 2 and len(losses["s3"][1]) == 2
    assert losses["s3"] == losses["local"]  # the same grids and pairs, the same steps
