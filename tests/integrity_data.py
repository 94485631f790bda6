"""A small annotated dataset (source shards 0-1, a canny stage) and a fresh copy of it per
test, for the fault tests that damage it (tests/test_index_integrity.py,
tests/test_release_integrity.py)."""

from __future__ import annotations

import json
import shutil

import pytest

from annotate_helpers import CANNY, SAMPLES, annotate_args, make_source_shard, write_config
from graph200k import manifest as manifest_cli
from graph200k import publish
from pipelines import annotate


@pytest.fixture(scope="module")
def pristine(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("annotated")
    src, out = root / "source", root / "out"
    for shard in (0, 1):
        make_source_shard(src, shard, SAMPLES)
    config = write_config(root, {"canny": CANNY})
    assert annotate.main(annotate_args(src, out, config, "0-1")) == 0
    assert manifest_cli.main(["--shards", str(out)]) == 0
    return root, config


@pytest.fixture
def data(pristine, tmp_path):
    """(folder, annotate config) of a copy: `source/`, `out/` (stages layout + manifest)."""
    root, config = pristine
    d = tmp_path / "d"
    shutil.copytree(root, d)
    (d / "out" / "graph200k.json").write_text(json.dumps({"version": 1,
                                                          "source": str(d / "source")}))
    assert manifest_cli.main(["--shards", str(d / "out")]) == 0
    return d, config.replace(str(root), str(d))


def publish_to(d, *extra, to="release") -> int:
    return publish.main(["--src", str(d / "out"), "--to", str(d / to), "--config", "",
                         "--tasks", "", *extra])
