"""The annotator contract and the plan's pure parts, without Ray."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from annotate_helpers import NeedsMissing, make_samples
from annotators.base import (Annotator, MissingDependency, NotApplicable, Prepared, Result,
                             Sample, sample_seed)
from annotators.canny import Canny
from graph200k.config import ConfigError
from graph200k.shards import decode_image, encode_image
from pipelines import stage_ops
from pipelines.annotate_config import Stage, build_stage, dependency_order, parse_shards


def samples(n=4, **meta):
    return [Sample(s["__key__"], {k: v for k, v in s.items() if k.endswith(".jpg")},
                   meta=dict(meta), seed=7, stage="")
            for s in make_samples(0, n)]


def test_canny_ok_failed_and_absent_members():
    batch = samples(3)
    batch[1].members["target.jpg"] = b"not an image"
    del batch[2].members["target.jpg"]
    out = stage_ops.run_inline(Canny({"low_threshold": 50, "high_threshold": 150,
                                      "detect_resolution": None}), batch)  # at 64 px, as is
    assert [o.status.split(":")[0] for o in out] == ["ok", "failed", "failed"]
    assert "target.jpg does not decode" in out[1].status
    assert out[2].status == "failed: needs target.jpg, absent from the sample"
    expected = cv2.Canny(decode_image(batch[0].members["target.jpg"]), 50, 150)
    np.testing.assert_array_equal(decode_image(out[0].members["canny.png"], "L"), expected)
    assert out[1].members == {} and out[0].seconds > 0


@dataclass
class _ToyOptions:
    scale: float = 1.0


class _ToyModel(Annotator):
    """A model stage: prepare (mean of the image) -> predict (scaled) -> encode (a map)."""

    name = "hed"
    produces = ("hed",)
    reads = ("description",)
    Options = _ToyOptions
    loads = 0

    def load(self):
        type(self).loads += 1

    def prepare(self, sample):
        if "skip" in sample.text("description"):
            raise NotApplicable("nothing to draw")
        img = sample.image()
        return Prepared(np.float32(img.mean()), img.shape[:2])

    def predict(self, inputs):
        if any(x < 0 for x in inputs):
            raise ValueError("negative input")
        return [x * self.options.scale for x in inputs]

    def encode(self, sample, context, output):
        value = np.uint8(min(255, output))
        return Result({"hed.png": encode_image(np.full(context, value, np.uint8), "png")},
                      meta={"mean": float(output), "words": len(sample.text("description").split())})


def test_model_stage_runs_prepare_predict_encode_and_writes_meta():
    batch = samples(4, description="a red cup on a table")
    out = stage_ops.run_inline(_ToyModel({"scale": 0.5}), batch, batch_size=3)
    assert all(o.ok for o in out)
    assert out[0].meta["words"] == 6
    img = decode_image(out[0].members["hed.png"], "L")
    assert img.shape == decode_image(batch[0].members["target.jpg"]).shape[:2]
    assert _ToyModel.loads == 1  # one model load for every batch of the instance


def test_a_failing_predict_batch_is_retried_input_by_input():
    class Flaky(_ToyModel):
        def prepare(self, sample):
            p = super().prepare(sample)
            return Prepared(-1.0, p.context) if sample.key == "0000001" else p

    out = stage_ops.run_inline(Flaky(), samples(3))
    assert [o.status for o in out] == ["ok", "failed: ValueError: negative input", "ok"]


def test_not_applicable_is_a_skip_with_its_reason():
    out = stage_ops.run_inline(_ToyModel(), samples(2, description="skip me"))
    assert [o.status for o in out] == ["skipped: nothing to draw"] * 2


def test_results_are_checked():
    class Wrong(Canny):
        def annotate(self, sample):
            return {"depth.png": b"x"}

    class NaNMeta(Canny):
        def annotate(self, sample):
            return Result({"canny.png": b"x"}, meta={"score": float("nan")})

    assert "not one of its node types" in stage_ops.run_inline(Wrong(), samples(1))[0].status
    assert "NaN" in stage_ops.run_inline(NaNMeta(), samples(1))[0].status


def test_checks_for_model_outputs():
    with pytest.raises(ValueError, match="NaN or inf"):
        Annotator.check_finite(np.array([1.0, np.inf]), "depth")
    with pytest.raises(ValueError, match="empty"):
        Annotator.check_not_blank(np.zeros((4, 4)), "edge map")


def test_options_reject_unknown_keys_with_the_close_match_and_wrong_types():
    with pytest.raises(ConfigError, match="unknown config key 'low_treshold'; did you mean "
                                          "'low_threshold'"):
        Canny({"low_treshold": 5})
    with pytest.raises(ConfigError, match="'high_threshold' must be an integer"):
        Canny({"high_threshold": "lots"})
    with pytest.raises(ConfigError, match="low_threshold <= high_threshold"):
        Canny({"low_threshold": 300})


def test_seeds_depend_on_key_stage_variant_only():
    a = sample_seed(0, "0000001", "instantstyle", 2)
    assert a == sample_seed(0, "0000001", "instantstyle", 2)
    others = {sample_seed(1, "0000001", "instantstyle", 2), sample_seed(0, "0000002", "instantstyle", 2),
              sample_seed(0, "0000001", "reduxstyle", 2), sample_seed(0, "0000001", "instantstyle", 3)}
    assert a not in others and len(others) == 4 and 0 <= a < 2 ** 63
    s = Sample("0000001", {}, seed=0, stage="instantstyle")
    assert s.seed_for(2) == a


def test_cells_treat_ray_nan_columns_as_missing():
    batch = {"__key__": np.array(["a", "b"], dtype=object),
             "canny.png": np.array([np.nan, np.nan]),  # what Ray makes of an all-None column
             "__status__:canny": np.array([np.nan, np.nan])}
    assert stage_ops.cell_bytes(batch, "canny.png", 0) is None
    assert stage_ops.cell_str(batch, "__status__:canny", 1) == ""


def test_missing_optional_dependency_names_the_extra():
    with pytest.raises(MissingDependency, match=r"pip install 'graph200k\[annotate\]'"):
        NeedsMissing({})
    with pytest.raises(MissingDependency, match="a_module_that_is_not_installed_xyz"):
        build_stage("mlsd", {"class": "annotate_helpers.NeedsMissing"})


def _stage(name, produces, needs, reads=()):
    cls = type(name, (Annotator,), {"name": name, "produces": produces, "needs": needs,
                                    "reads": reads})
    return Stage(name=name, cls=cls, config={})


def test_stages_run_in_dependency_order_and_cycles_are_refused():
    depth = _stage("depth", ("depth",), ("target",))
    edit = _stage("depthedit", ("depthedit",), ("depth", "target"))
    canny = _stage("canny", ("canny",), ("target",))
    assert [s.name for s in dependency_order([edit, depth, canny])] == ["canny", "depth", "depthedit"]
    a, b = _stage("hed", ("hed",), ("mlsd",)), _stage("mlsd", ("mlsd",), ("hed",))
    with pytest.raises(ConfigError, match="cycle"):
        dependency_order([a, b])
    # reading another stage's meta entry orders it after that stage
    mask = _stage("mask", ("mask",), ("target",))
    fill = _stage("filledit", ("filledit",), ("target",), reads=("annotations.mask",))
    assert [s.name for s in dependency_order([fill, mask])] == ["mask", "filledit"]


def test_stage_config_checks():
    with pytest.raises(ConfigError, match="a model stage needs batch_size"):
        build_stage("wordcount", {"class": "annotate_helpers.WordCount", "batch_size": None})
    with pytest.raises(ConfigError, match="Canny is a CPU stage"):
        build_stage("canny", {"class": "annotators.canny.Canny", "concurrency": 2})
    with pytest.raises(ConfigError, match="concurrency must be N >= 1 or \\[min, max\\]"):
        build_stage("wordcount", {"class": "annotate_helpers.WordCount", "batch_size": 2,
                                  "concurrency": [3, 1]})
    assert build_stage("wordcount", {"class": "annotate_helpers.WordCount", "batch_size": 2,
                                     "concurrency": [1, 4]}).concurrency == (1, 4)
    with pytest.raises(ConfigError, match="named 'canny'"):
        build_stage("hed", {"class": "annotators.canny.Canny"})
    with pytest.raises(ConfigError, match="cannot import"):
        build_stage("canny", {"class": "annotators.nope.Canny"})
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        build_stage("canny", {"class": "annotators.canny.Canny", "batchsize": 4})
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
