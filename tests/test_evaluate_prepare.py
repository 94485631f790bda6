"""train.evaluate.prepare: COCO-layout and DreamBench-layout folders -> prompts.jsonl a FolderSet reads."""

import json

import numpy as np
from PIL import Image
from skimage import data

from train.evaluate import prepare
from train.evaluate.sets import FolderSet


def test_coco_layout(tmp_path):
    (tmp_path / "val").mkdir()
    Image.fromarray(data.astronaut()).save(tmp_path / "val" / "a.jpg")
    Image.fromarray(data.chelsea()).save(tmp_path / "val" / "b.jpg")
    captions = {"images": [{"id": 7, "file_name": "a.jpg"}, {"id": 9, "file_name": "b.jpg"}],
                "annotations": [{"id": 2, "image_id": 7, "caption": "An astronaut. "},
                                {"id": 1, "image_id": 9, "caption": "A cat."},
                                {"id": 3, "image_id": 9, "caption": "Another caption."}]}
    (tmp_path / "cap.json").write_text(json.dumps(captions))
    out = tmp_path / "coco"
    assert prepare.main(["coco", "--images", str(tmp_path / "val"), "--captions", str(tmp_path / "cap.json"),
                         "--out", str(out), "--size", "64", "--tasks", "canny,GaussianBlur"]) == 0
    lines = [json.loads(x) for x in (out / "prompts.jsonl").read_text().splitlines()]
    assert [(x["id"], x["task"]) for x in lines] == [("000000000007", "canny->target"),
                                                     ("000000000007", "GaussianBlur->target"),
                                                     ("000000000009", "canny->target"),
                                                     ("000000000009", "GaussianBlur->target")]
    assert lines[2]["prompt"] == "A cat."
    image = np.asarray(Image.open(out / lines[0]["images"]["target"]))
    assert image.shape == (64, 64, 3)
    edges = np.asarray(Image.open(out / lines[0]["images"]["canny"]))
    from annotators.canny import Canny  # the annotator's map: at 64 px, resized back from 512

    np.testing.assert_array_equal(edges, Canny().edges(image))
    assert (edges > 127).any()
    blurred = np.asarray(Image.open(out / lines[1]["images"]["GaussianBlur"]))
    assert blurred.shape == image.shape and not np.array_equal(blurred, image)
    items = FolderSet(out / "prompts.jsonl", "fill", contexts=(0, 1)).items()
    assert len(items) == 8 and {i.kind for i in items} == {"conditional", "restoration"}


def test_dreambench_layout(tmp_path):
    for subject, photo in (("dog2", data.chelsea()), ("backpack", data.coffee())):
        (tmp_path / "ds" / subject).mkdir(parents=True)
        Image.fromarray(photo).save(tmp_path / "ds" / subject / "00.jpg")
    (tmp_path / "prompts.txt").write_text("a {} in the jungle\na {} on the beach\n")
    out = tmp_path / "db"
    assert prepare.main(["dreambench", "--dataset", str(tmp_path / "ds"), "--prompts", str(tmp_path / "prompts.txt"),
                         "--out", str(out), "--size", "64"]) == 0
    lines = [json.loads(x) for x in (out / "prompts.jsonl").read_text().splitlines()]
    assert [x["prompt"] for x in lines] == ["a backpack in the jungle", "a backpack on the beach",
                                           "a dog in the jungle", "a dog on the beach"]
    assert lines[2]["subject"] == "dog" and lines[2]["images"] == {"reference": "references/dog2.png"}
    items = FolderSet(out / "prompts.jsonl", "fill").items()
    assert {i.kind for i in items} == {"subject"} and {i.group for i in items} == {"0"}
