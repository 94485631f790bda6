"""`python -m graph200k.publish`: card generation, local/fsspec copies, the hub call (mocked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from annotate_helpers import REPO, make_samples
from graph200k import publish
from graph200k.dataset_card import collect, read_families, render
from graph200k.shards import encode_image, shard_path, write_json_atomic, write_shard

TASKS = REPO / "configs" / "tasks.yaml"
PUBLISH_CONFIG = REPO / "configs" / "publish.yaml"


@pytest.fixture
def annotated(tmp_path):
    """Shard 0 with stats (canny on 3 of 4 samples); shard 1 without stats (no canny)."""
    folder = tmp_path / "graph200k"
    edges = encode_image(np.zeros((8, 8), np.uint8), "png")
    samples = list(make_samples(0, 4))
    for s in samples[:3]:
        s["canny.png"] = edges
    write_shard(shard_path(folder, 0), samples)
    write_json_atomic(folder / "000000.stats.json", {
        "shard": 0, "samples": 4, "written": 4, "failed_count": 1,
        "failed": [{"key": "0000003", "stage": "canny", "reason": "boom"}],
        "nodes": {"target": 4, "reference": 4, "canny": 3},
        "stages": {"canny": {"ok": 3, "skipped": 0, "failed": 1, "seconds": 0.5}},
    })
    write_shard(shard_path(folder, 1), list(make_samples(1, 2)))
    (folder / ".000002.tar.tmp-123").write_bytes(b"half a shard")  # a run in progress
    return folder


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_counts_nodes_samples_stages_and_families(annotated):
    totals = collect(annotated)
    assert totals["shards"] == 2 and totals["samples"] == 6 and totals["without_stats"] == 1
    assert totals["nodes"]["canny"] == 3 and totals["nodes"]["target"] == 6
    assert totals["nodes"]["blur"] == 2  # shard 1 counted from its members: online nodes too

    config = yaml.safe_load(PUBLISH_CONFIG.read_text())
    publish.write_license(annotated, config)  # the card links LICENSE.md only when it is there
    text = render(annotated, config["card"], TASKS)
    meta = front_matter(text)
    assert meta["license"] == config["card"]["front_matter"]["license"]
    assert meta["license_link"] and meta["size_categories"] == ["n<1K"]
    assert meta["configs"][0]["data_files"] == "*.tar"
    assert "| canny | condition | 3 | canny.png |" in text
    assert "| target | image | 6 | target.jpg |" in text
    assert "| canny | 3 | 0 | 1 | 0.5 |" in text
    families, note = read_families(TASKS)
    assert note is None and families
    for name, fam in families.items():
        assert f"| {name} | {fam['weight']:g} | {len(fam['variants'])} |" in text
    assert "- samples: 6" in text and "- shards: 2" in text


@pytest.mark.parametrize("content", [None, "families: [1, 2]", "::: not yaml", "families:\n  a: 3\n"])
def test_card_survives_a_missing_or_malformed_tasks_file(annotated, tmp_path, content):
    tasks = tmp_path / "tasks.yaml"
    if content is not None:
        tasks.write_text(content)
    text = render(annotated, {}, tasks)
    assert "## Task families" in text and front_matter(text)["pretty_name"] == "Graph200K"


def test_publish_to_a_local_folder_copies_shards_stats_and_card(annotated, tmp_path):
    dest = tmp_path / "release"
    argv = ["--src", str(annotated), "--to", f"file://{dest}", "--config", str(PUBLISH_CONFIG),
            "--tasks", str(TASKS)]
    assert publish.main(argv) == 0
    names = sorted(p.name for p in dest.iterdir())
    assert names == ["000000.stats.json", "000000.tar", "000001.tar", "LICENSE.md", "README.md"]
    for name in names[:-1]:
        assert (dest / name).read_bytes() == (annotated / name).read_bytes()
    assert (dest / "README.md").read_text() == (annotated / "README.md").read_text()

    mtimes = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    copied, repaired = publish.copy_to_fsspec(annotated, str(dest), log=lambda *_: None)
    assert (copied, repaired) == (["LICENSE.md", "README.md"], 0)  # rerun: shards skipped
    card_files = ("README.md", "LICENSE.md")  # copied every time, as the card
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir() if p.name not in card_files} == \
        {k: v for k, v in mtimes.items() if k not in card_files}


def test_publish_to_the_hub_prepares_one_dataset_upload(annotated, monkeypatch):
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw["repo_id"], kw))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    argv = ["--src", str(annotated), "--to", "hf://datasets/someone/graph200k",
            "--config", str(PUBLISH_CONFIG), "--tasks", str(TASKS)]
    assert publish.main(argv) == 0
    (c0, repo0, kw0), (c1, repo1, kw1) = calls
    assert (c0, repo0, kw0["repo_type"], kw0["exist_ok"]) == ("create_repo", "someone/graph200k", "dataset", True)
    assert (c1, repo1, kw1["repo_type"]) == ("upload_folder", "someone/graph200k", "dataset")
    assert Path(kw1["folder_path"]) == annotated and "README.md" in kw1["allow_patterns"]
    assert (annotated / "README.md").read_text().startswith("---\n")


def test_publish_imports_no_torch():
    code = "import sys, graph200k.publish, graph200k.dataset_card; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "False", out.stderr
