"""A published (plain-layout) shard set for the browser's tests and benchmark, no Ray.

Built on tests/annotated_shards.py's scikit-image samples, plus what the browser shows
beyond them: grounded boxes in `meta.json` (`annotations.mask`) with their `bbox.png`, a
second `instantstyle` variant and two `filledit` variants on some samples, a sample
without `canny`, and per-shard stats files whose `stages` record failed and
not-applicable samples with reasons (the shape `graph200k.assemble` writes).
"""

from __future__ import annotations

import json

import cv2
import numpy as np

from annotated_shards import annotated_sample
from graph200k.dataset import ShardSet, part_in, write_part
from graph200k.manifest import Manifest
from graph200k.shards import ShardWriter, encode_image, shard_path, write_shard

NO_CANNY = "0000002"
# (stage, status, key, reason): what the stats files report
ISSUES = [("mask", "failed", "0000005", "SAM2 gave an empty mask for each of the 1 boxes"),
          ("filledit", "skipped", "0000001", "no usable box"),
          ("filledit", "skipped", "0000003", "no usable box"),
          ("filledit", "skipped", "0000007", "subject too small")]


def browse_sample(key: str, index: int, size: int) -> dict:
    s = annotated_sample(key, index, size)
    meta = json.loads(s["meta.json"])
    target = cv2.imdecode(np.frombuffer(s["target.jpg"], np.uint8), cv2.IMREAD_COLOR)
    h, w = target.shape[:2]
    boxes = [{"name": meta["item"], "box": [w // 5, h // 6, w * 4 // 5, h * 5 // 6],
              "colour": [230, 25, 75]},
             {"name": "background object", "box": [0, 0, w // 3, h // 4], "colour": [60, 180, 75]}]
    box_map = np.zeros((h, w, 3), np.uint8)
    for b in boxes:
        x1, y1, x2, y2 = b["box"]
        cv2.rectangle(box_map, (x1, y1), (x2 - 1, y2 - 1), b["colour"], 2)
    meta["annotations"] = {"mask": {"objects": boxes, "subject": 0, "subject_match": "name",
                                    "dropped": {}}}
    s["bbox.png"] = encode_image(box_map, "png")
    if index % 2 == 0:  # a second style variant and two edits
        s["instantstyle_ref.1.jpg"] = s["reference.jpg"]
        s["instantstyle.1.jpg"] = encode_image(255 - cv2.cvtColor(target, cv2.COLOR_BGR2RGB),
                                               "jpg")
        for v in range(2):
            s[f"filledit.{v}.jpg"] = encode_image(np.roll(target[..., ::-1], (v + 1) * 7, 1),
                                                  "jpg")
    if key == NO_CANNY:
        del s["canny.png"]
    s["meta.json"] = json.dumps(meta, sort_keys=True).encode()
    return s


def write_browse_shards(folder, num_samples: int = 8, per_shard: int = 4, size: int = 64):
    """(folder, manifest path): shards, their index and stats files, then the manifest."""
    for shard in range((num_samples + per_shard - 1) // per_shard):
        keys = [f"{i:07d}" for i in range(shard * per_shard,
                                          min(num_samples, (shard + 1) * per_shard))]
        part = part_in(str(folder), shard)
        with ShardWriter(part.url) as writer:
            for k in keys:
                writer.write(browse_sample(k, int(k), size))
        stages = {}
        for stage in ("mask", "filledit"):
            mine = [i for i in ISSUES if i[0] == stage and i[2] in keys]
            failed = [{"key": k, "reason": r} for _, s, k, r in mine if s == "failed"]
            skipped = [{"key": k, "reason": r} for _, s, k, r in mine if s == "skipped"]
            stages[stage] = {"ok": len(keys) - len(failed) - len(skipped),
                             "skipped": len(skipped), "failed": len(failed),
                             "failed_keys": failed, "skipped_keys": skipped, "seconds": 1.5}
        write_part(part, writer.record, {"shard": shard, "samples": len(keys),
                                         "written": len(keys), "stages": stages})
    manifest = Manifest.from_shards(folder, test_fraction=0.4)
    return folder, manifest.save(f"{folder}/manifest.parquet")


def stages_dataset(tmp_path):
    """A stages-layout dataset (what `pipelines.annotate` writes), by hand: source shard 0
    (6 samples) and a filledit sidecar: 2 ok, 3 not applicable, 1 failed. (ShardSet, keys)"""
    src, out = tmp_path / "source", tmp_path / "graph200k"
    samples = [{k: v for k, v in annotated_sample(f"{i:07d}", i, 32).items()
                if k in ("__key__", "target.jpg", "reference.jpg", "meta.json")} for i in range(6)]
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
    write_part(part, w.record, stats)
    return ShardSet(out), keys
