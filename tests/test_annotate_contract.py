"""The annotator contract and the plan's pure parts, without Ray."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from annotate_helpers import NeedsMissing, make_samples
from annotators.base import ERROR_COLUMN, Annotator, MissingDependency, status_column
from annotators.canny import Canny
from graph200k.shards import decode_image
from pipelines.annotate_config import (
    ConfigError,
    Stage,
    build_stage,
    dependency_order,
    parse_shards,
)


def as_batch(samples):
    names = sorted({k for s in samples for k in s})
    batch = {}
    for name in names:
        col = np.full(len(samples), None, dtype=object)
        col[:] = [s.get(name) for s in samples]
        batch[name] = col
    return batch


def test_canny_batch_counts_ok_skipped_failed_and_ignores_placeholders():
    samples = list(make_samples(0, 4))
    samples[1]["canny.png"] = b"already here"
    samples[2]["target.jpg"] = b"not an image"
    del samples[3]["target.jpg"]
    batch = as_batch(samples)
    batch[ERROR_COLUMN] = np.array([None, None, None, None], dtype=object)
    out = Canny({"low_threshold": 50, "high_threshold": 150})(batch)

    status = list(out[status_column("canny")])
    assert status[0] == "ok" and status[1] == "skipped"
    assert status[2].startswith("failed: ") and status[3].startswith("failed: needs target.jpg")
    assert out["canny.png"][1] == b"already here"  # kept byte for byte
    expected = cv2.Canny(decode_image(samples[0]["target.jpg"]), 50, 150)
    np.testing.assert_array_equal(decode_image(out["canny.png"][0], "L"), expected)
    assert out["target.jpg"][0] == samples[0]["target.jpg"]

    placeholder = {"__key__": np.array([""], dtype=object),
                   ERROR_COLUMN: np.array(["shard 1: corrupt"], dtype=object)}
    assert list(Canny()(placeholder)[status_column("canny")]) == [None]


class _Batched(Annotator):
    name = "hed"
    produces = ("hed",)

    def annotate_batch(self, samples):
        if any(s["__key__"] == "0000001" for s in samples):
            raise ValueError("bad sample in batch")
        return [{"hed.png": b"png"} for _ in samples]


def test_a_failing_batch_is_retried_sample_by_sample():
    out = _Batched()(as_batch(list(make_samples(0, 3))))
    assert list(out[status_column("hed")]) == ["ok", "failed: ValueError: bad sample in batch", "ok"]


def test_missing_optional_dependency_names_the_extra():
    with pytest.raises(MissingDependency, match=r"pip install 'graph200k\[annotate\]'"):
        NeedsMissing({})
    with pytest.raises(MissingDependency, match="a_module_that_is_not_installed_xyz"):
        build_stage("mlsd", {"class": "annotate_helpers.NeedsMissing"})


def _stage(name, produces, needs):
    cls = type(name, (Annotator,), {"name": name, "produces": produces, "needs": needs})
    return Stage(name=name, cls=cls, config={})


def test_stages_run_in_dependency_order_and_cycles_are_refused():
    depth = _stage("depth", ("depth",), ("target",))
    edit = _stage("depthedit", ("depthedit",), ("depth", "target"))
    canny = _stage("canny", ("canny",), ("target",))
    assert [s.name for s in dependency_order([edit, depth, canny])] == ["canny", "depth", "depthedit"]
    a, b = _stage("hed", ("hed",), ("mlsd",)), _stage("mlsd", ("mlsd",), ("hed",))
    with pytest.raises(ConfigError, match="cycle"):
        dependency_order([a, b])


def test_stage_config_checks():
    with pytest.raises(ConfigError, match="needs batch_size"):
        build_stage("canny", {"class": "annotators.canny.Canny", "concurrency": 2, "batch_size": None})
    with pytest.raises(ConfigError, match="named 'canny'"):
        build_stage("hed", {"class": "annotators.canny.Canny"})
    with pytest.raises(ConfigError, match="cannot import"):
        build_stage("canny", {"class": "annotators.nope.Canny"})
    stage = build_stage("canny", {"class": "annotators.canny.Canny", "low_threshold": 10})
    assert stage.config == {"low_threshold": 10} and not stage.uses_actors


def test_shard_specs():
    assert parse_shards("3", [0, 1]) == [3]
    assert parse_shards("0-2,5", []) == [0, 1, 2, 5]
    assert parse_shards("all", [4, 1]) == [1, 4]
    with pytest.raises(ConfigError):
        parse_shards("3-1", [])
    with pytest.raises(ConfigError):
        parse_shards("x", [])
