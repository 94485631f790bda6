"""The mask stages on tiny random models: sam2_mask, rmbg, mask (+ bbox).

The tiny models are built once (annotators.tiny_models, production layout) and loaded by
the stages' own loaders. Random weights give nonsense masks: the tests assert shapes,
colours, statuses, batch == one-by-one and determinism, and the failure paths (NaN,
empty, no usable box); a scripted VLM answer covers the grounded path end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("sam2", reason="the sam2 extra (docs/annotators-masks.md)")

import torch  # noqa: E402

from annotate_helpers import stage_samples  # noqa: E402
from annotators import tiny_models  # noqa: E402
from annotators.base import ConfigError, Sample  # noqa: E402
from annotators.grounded_mask import GroundedMask  # noqa: E402
from annotators.palette import PALETTE, colour  # noqa: E402
from annotators.rmbg import RMBG  # noqa: E402
from annotators.sam2_mask import SAM2AutoMask  # noqa: E402
from graph200k.shards import decode_image, encode_image  # noqa: E402
from pipelines.annotate_config import RESOURCE_KEYS, build_stage  # noqa: E402
from pipelines.stage_ops import run_inline  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY = {"sam2_mask": {"points_per_side": 4, "pred_iou_thresh": 0.0,
                      "stability_score_thresh": 0.0, "device": "cpu"},
        "rmbg": {"trust_remote_code": True, "image_size": 64, "device": "cpu"},
        "mask": {"max_new_tokens": 16, "device": "cpu"}}
R0, R1, B0, B1 = "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-models")
    return Path(tiny_models.build(out, ["sam2", "rmbg", "qwen2_vl", "qwen2_vl_grounding"],
                                  seed=0, log=lambda *_: None)["sam2"]).parent


@pytest.fixture(scope="module")
def samples():
    s = stage_samples(4, 64)
    # a flat image: the NaN-injection hooks below recognise it
    s.append(Sample("flat", {"target.jpg": encode_image(np.full((64, 64, 3), 128, np.uint8),
                                                        "jpg")}, meta={"item": "wall"}))
    return s


def is_flat(batch: torch.Tensor) -> torch.Tensor:
    """Which images of an NCHW batch are a single colour (the planted bad sample)."""
    flat = batch.flatten(2)  # N x C x HW: flat in every channel (normalised per channel)
    return ((flat.amax(2) - flat.amin(2)) < 1e-3).all(1)


@pytest.fixture(scope="module")
def sam2_stage(tiny_dir):
    stage = SAM2AutoMask({"model": str(tiny_dir / "sam2"), **TINY["sam2_mask"]})
    stage.ensure_loaded()
    return stage


@pytest.fixture(scope="module")
def rmbg_stage(tiny_dir):
    stage = RMBG({"model": str(tiny_dir / "rmbg"), **TINY["rmbg"]})
    stage.ensure_loaded()
    return stage


@pytest.fixture(scope="module")
def mask_stage(tiny_dir):
    stage = GroundedMask({"model": str(tiny_dir / "sam2"),
                          "grounding_model": str(tiny_dir / "qwen2_vl"), **TINY["mask"]})
    stage.ensure_loaded()
    return stage


def poison(module, fill):
    """A forward hook writing `fill` into the output rows of flat input images."""
    def hook(mod, args, output):
        bad = is_flat(args[0])
        first = output[-1] if isinstance(output, (list, tuple)) else output
        if isinstance(first, dict):  # SAM2's image encoder returns a dict of features
            for v in first.values():
                for t in (v if isinstance(v, list) else [v]):
                    t[bad] = fill
        else:
            first[bad] = fill
        return output
    return module.register_forward_hook(hook)


def colours_in(png: bytes) -> set:
    img = decode_image(png, "RGB")
    return {tuple(int(c) for c in px) for px in np.unique(img.reshape(-1, 3), axis=0)}


# -- sam2_mask --------------------------------------------------------------------------
def test_sam2_mask_batched_equals_one_by_one_and_reruns_equal(sam2_stage, samples):
    good = samples[:4]
    batched = run_inline(sam2_stage, good, batch_size=4)
    single = run_inline(sam2_stage, good, batch_size=1)
    again = run_inline(sam2_stage, good, batch_size=4)
    assert [o.status for o in batched] == ["ok"] * 4
    for a, b, c in zip(batched, single, again):
        assert a.members == b.members == c.members and a.meta == b.meta
    for o in batched:
        img = decode_image(o.members["sam2_mask.png"], "RGB")
        assert img.shape == (64, 64, 3)
        n = o.meta["masks"]
        assert n >= 1 and o.meta["model"] == sam2_stage.options.model
        palette = {tuple(int(v) for v in PALETTE[i]) for i in range(n)}
        assert colours_in(o.members["sam2_mask.png"]) - {(0, 0, 0)} <= palette


def test_sam2_mask_nan_features_fail_that_sample_only(sam2_stage, samples):
    clean = {o.key: o for o in run_inline(sam2_stage, samples[:4], batch_size=4)}
    hook = poison(sam2_stage.generator.predictor.model.image_encoder, float("nan"))
    try:
        out = run_inline(sam2_stage, samples, batch_size=5)
    finally:
        hook.remove()
    by_key = {o.key: o for o in out}
    assert by_key["flat"].status == "failed: ValueError: SAM2 image features hold NaN or inf"
    for key, o in clean.items():
        assert by_key[key].status == "ok" and by_key[key].members == o.members


def test_sam2_mask_no_mask_fails_with_a_reason(tiny_dir, samples):
    strict = SAM2AutoMask({"model": str(tiny_dir / "sam2"), **TINY["sam2_mask"],
                           "pred_iou_thresh": 1.0})  # iou > 1 never holds: nothing survives
    out = run_inline(strict, samples[:2], batch_size=2)
    assert {o.status for o in out} == {"failed: ValueError: SAM2 found no mask (every "
                                       "candidate was filtered out or empty)"}


def test_sam2_loader_builds_only_sam2_classes(tiny_dir, tmp_path):
    bad = tmp_path / "sam2"
    bad.mkdir()
    text = (tiny_dir / "sam2" / "sam2.1_hiera_t.yaml").read_text()
    (bad / "sam2.1_hiera_t.yaml").write_text(
        text.replace("sam2.modeling.backbones.hieradet.Hiera", "os.system", 1))
    (bad / "sam2.1_hiera_tiny.pt").write_bytes(b"")
    stage = SAM2AutoMask({"model": str(bad), "device": "cpu"})
    with pytest.raises(ConfigError, match="names 'os.system' at model.image_encoder.trunk"):
        stage.load()
    (bad / "extra.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"exactly one \*.pt"):
        stage.load()


# -- rmbg -------------------------------------------------------------------------------
def test_rmbg_matte_batched_equals_one_by_one(rmbg_stage, samples):
    batched = run_inline(rmbg_stage, samples[:4], batch_size=4)
    single = run_inline(rmbg_stage, samples[:4], batch_size=1)
    assert [o.status for o in batched] == ["ok"] * 4
    for a, b in zip(batched, single):
        assert a.members == b.members
        matte = decode_image(a.members["rmbg.png"], "L")
        assert matte.shape == (64, 64) and matte.dtype == np.uint8 and matte.any()
        assert a.meta == {"model": rmbg_stage.options.model, "revision": None}


def test_rmbg_keeps_each_samples_own_size(rmbg_stage, samples):
    big = Sample("big", {"target.jpg": encode_image(np.tile(
        decode_image(samples[0].members["target.jpg"]), (2, 3, 1)), "jpg")})
    out = run_inline(rmbg_stage, [samples[1], big], batch_size=2)
    assert decode_image(out[1].members["rmbg.png"], "L").shape == (128, 192)


@pytest.mark.parametrize("fill, reason", [
    (float("nan"), "failed: ValueError: the model's matte holds NaN or inf"),
    (-1e4, "failed: ValueError: the model's matte is empty (all zero)"),
])
def test_rmbg_bad_matte_fails_that_sample_only(rmbg_stage, samples, fill, reason):
    clean = {o.key: o.members for o in run_inline(rmbg_stage, samples[:4], batch_size=4)}
    hook = poison(rmbg_stage.model, fill)
    try:
        out = {o.key: o for o in run_inline(rmbg_stage, samples, batch_size=5)}
    finally:
        hook.remove()
    assert out["flat"].status == reason
    assert all(out[k].status == "ok" and out[k].members == m for k, m in clean.items())


def test_rmbg_remote_code_rules():
    with pytest.raises(ConfigError, match="pin `revision:` to a full 40-hex commit"):
        RMBG.parse_options({"model": "briaai/RMBG-2.0", "trust_remote_code": True})
    with pytest.raises(ConfigError, match="needs remote code; set trust_remote_code: true"):
        RMBG.parse_options({"model": "briaai/RMBG-2.0", "revision": "a" * 40})
    ok = RMBG.parse_options({"model": "briaai/RMBG-2.0", "revision": "0123456789" * 4,
                             "trust_remote_code": True})
    assert ok.revision == "0123456789" * 4


def test_the_shipped_rmbg_block_is_refused_until_pinned():
    block = yaml.safe_load((REPO / "configs" / "annotate.yaml").read_text())["stages"]["rmbg"]
    with pytest.raises(ConfigError, match="refusing to run remote code from briaai/RMBG-2.0"):
        build_stage("rmbg", block)
    build_stage("rmbg", {**block, "revision": "f" * 40})


def test_tiny_rmbg_is_a_remote_code_folder(tiny_dir):
    config = json.loads((tiny_dir / "rmbg" / "config.json").read_text())
    module = config["auto_map"]["AutoModelForImageSegmentation"].split(".")[0]
    assert (tiny_dir / "rmbg" / f"{module}.py").is_file()
    with pytest.raises(ConfigError, match="needs remote code"):
        RMBG.parse_options({"model": str(tiny_dir / "rmbg")})


# -- mask (grounded) --------------------------------------------------------------------
def test_random_vlm_ends_in_no_usable_box_for_every_sample(mask_stage, samples):
    out = run_inline(mask_stage, samples[:4], batch_size=4)
    assert all(o.status.startswith("skipped: no usable box (") for o in out), \
        [o.status for o in out]
    assert all(not o.members for o in out)


def test_vlm_batched_left_padded_generation_equals_one_prompt_at_a_time(mask_stage, samples):
    images = [s.image() for s in samples[:3]]
    images[1] = np.ascontiguousarray(np.tile(images[1], (2, 1, 1)))  # another image size
    questions = ["Find the cup.", "Find every object in this photo, each with its box.",
                 mask_stage.question(samples[2])]
    batched, sizes = mask_stage.generate(images, questions)
    single = [mask_stage.generate([im], [q])[0][0] for im, q in zip(images, questions)]
    assert batched == single
    assert sizes[1] != sizes[0]  # the resized inputs, per image, for Qwen2.5-VL's pixel boxes


def scripted_answers(stage, answer_for):
    """Replace the VLM's generate by fixed token ids: the answer for each prompt's item."""
    tok = stage.processor.tokenizer

    def generate(input_ids=None, **kwargs):
        rows = []
        for prompt in tok.batch_decode(input_ids):
            ids = tok(answer_for(prompt) + "<|im_end|>", add_special_tokens=False)["input_ids"]
            rows.append(ids)
        width = max(map(len, rows))
        pad = tok.pad_token_id
        new = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)

    return generate


GOOD = (f"{R0}astronaut{R1}{B0}(100,50),(700,990){B1} and {R0}flag{R1}{B0}(600,0),(999,400)"
        f"{B1} and {R0}astronaut{R1}{B0}(101,50),(700,990){B1} and {R0}sky{R1}"
        f"{B0}(500,500),(500,900){B1}")


def answer_for(prompt: str) -> str:
    if "coffee" in prompt:
        return "I see a cup of coffee."  # no box: this sample is skipped
    return GOOD


@pytest.fixture()
def scripted(mask_stage):
    real = mask_stage.vlm.generate
    mask_stage.vlm.generate = scripted_answers(mask_stage, answer_for)
    yield mask_stage
    mask_stage.vlm.generate = real


def test_scripted_grounding_end_to_end_into_mask_png(scripted, samples):
    good = samples[:4]  # astronaut, chelsea, coffee, rocket
    batched = {o.key: o for o in run_inline(scripted, good, batch_size=4)}
    single = {o.key: o for o in run_inline(scripted, good, batch_size=1)}
    coffee = good[2].key
    assert batched[coffee].status.startswith("skipped: no usable box (0 found")
    for key, o in batched.items():
        assert o.status == single[key].status
        if key == coffee:
            continue
        assert o.status == "ok" and o.members == single[key].members and o.meta == single[key].meta
        meta = o.meta
        names = [ob["name"] for ob in meta["objects"]]
        assert names == ["astronaut", "flag"]  # the duplicate and the degenerate box dropped
        assert meta["dropped"] == {"duplicate": 1, "degenerate": 1}
        assert meta["objects"][0]["box"] == [6, 3, 45, 63]  # per mille of 64 px, rounded
        assert meta["objects"][1]["colour"] == list(colour(1))
        assert meta["models"] == {"grounding": scripted.options.grounding_model,
                                  "grounding_revision": None, "sam2": scripted.options.model,
                                  "sam2_revision": None}
        mask = decode_image(o.members["mask.png"], "RGB")
        boxes = decode_image(o.members["bbox.png"], "RGB")
        assert mask.shape == boxes.shape == (64, 64, 3)
        assert colours_in(o.members["bbox.png"]) == {(0, 0, 0), colour(0), colour(1)}
        assert colours_in(o.members["mask.png"]) - {(0, 0, 0)} <= {colour(0), colour(1)}
        assert mask.any()
        # a box's outline lies on its box
        x1, y1, x2, y2 = meta["objects"][0]["box"]
        assert (boxes[y1, x1:x2] == colour(0)).all() or (boxes[y1:y2, x1] == colour(0)).all()
    astronaut, chelsea = good[0].key, good[1].key
    assert batched[astronaut].meta["subject"] == 0
    assert batched[astronaut].meta["subject_match"] == "name"
    # chelsea (a cat) has no object of its name: the largest box is the subject
    assert batched[chelsea].meta["subject_match"] == "largest"


def test_scripted_grounding_nan_sam2_fails_that_sample_only(scripted, samples):
    hook = poison(scripted.predictor.model.image_encoder, float("nan"))
    try:
        out = {o.key: o for o in run_inline(scripted, [samples[0], samples[4]], batch_size=2)}
    finally:
        hook.remove()
    assert out["flat"].status == "failed: ValueError: SAM2 image features hold NaN or inf"
    assert out[samples[0].key].status == "ok"


# -- the tiny grounding VLM (configs/annotate-tiny.yaml) ---------------------------------
@pytest.fixture(scope="module")
def grounding_stage(tiny_dir):
    stage = GroundedMask({"model": str(tiny_dir / "sam2"),
                          "grounding_model": str(tiny_dir / "qwen2_vl_grounding"),
                          **TINY["mask"], "max_new_tokens": 24})
    stage.ensure_loaded()
    return stage


def test_tiny_grounding_vlm_answers_its_box_whatever_the_image_and_question(grounding_stage,
                                                                             samples):
    from annotators.tiny_models.masks import GROUNDING_ANSWER

    rng = np.random.default_rng(0)
    images = [s.image() for s in samples[:4]] + [
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((48, 160), (200, 90))]
    questions = [grounding_stage.question(s) for s in samples[:4]] + [
        "Find the cup.", "Detect every object in this photo with its box, please."]
    answers, _ = grounding_stage.generate(images, questions)  # the model's own generate
    assert answers == [GROUNDING_ANSWER] * len(images)
    # and its folder says so, beside the production layout
    assert json.loads((Path(grounding_stage.options.grounding_model) / "TINY.json")
                      .read_text())["answer"] == GROUNDING_ANSWER


def test_tiny_grounding_vlm_draws_mask_and_bbox_for_every_photo(grounding_stage, samples):
    photos = samples[:4]
    out = run_inline(grounding_stage, photos, batch_size=4)
    assert [o.status for o in out] == ["ok"] * 4
    for o in out:
        assert sorted(o.members) == ["bbox.png", "mask.png"]
        assert [ob["name"] for ob in o.meta["objects"]] == ["subject"]
        assert o.meta["objects"][0]["box"] == [10, 8, 54, 60]  # (150,120),(850,930) of 64 px
        assert o.meta["subject"] == 0 and o.meta["subject_match"] == "largest"
        assert colours_in(o.members["bbox.png"]) == {(0, 0, 0), colour(0)}
        assert decode_image(o.members["mask.png"], "RGB").any()


def test_grounded_question_reads_item_and_description(mask_stage, samples):
    q = mask_stage.question(samples[1])
    assert q.startswith("The image shows: a photo of the chelsea. Find the chelsea")
    bare = Sample("x", {}, meta={})
    assert mask_stage.question(bare).startswith("Find the main subject")
    assert GroundedMask.reads == ("item", "description")


def test_grounded_options_are_checked():
    with pytest.raises(ConfigError, match="grounding_format 'florence'"):
        GroundedMask.parse_options({"grounding_format": "florence"})
    with pytest.raises(ConfigError, match=r"prompt may use only \{item\}"):
        GroundedMask.parse_options({"prompt": "Find the {object}"})
    qwen25 = GroundedMask({"grounding_model": "Qwen/Qwen2.5-VL-7B-Instruct"})
    assert qwen25.answer_format() == "qwen2_5_vl" and "bbox_2d" in qwen25.question(
        Sample("x", {}, meta={"item": "cup"}))


# -- configs ----------------------------------------------------------------------------
def test_deep_paths_are_folders_even_before_they_are_built():
    from annotators.models import is_local

    assert is_local("build/tiny-models/rmbg") and not is_local("briaai/RMBG-2.0")


def test_tiny_and_production_blocks_parse():
    tiny = yaml.safe_load((REPO / "configs" / "annotate-tiny.yaml").read_text())
    prod = yaml.safe_load((REPO / "configs" / "annotate.yaml").read_text())
    assert "ray" in tiny
    for name in ("sam2_mask", "rmbg", "mask"):
        stage = build_stage(name, tiny["stages"][name])
        assert stage.uses_actors and stage.config["model"] == {
            "sam2_mask": "build/tiny-models/sam2", "rmbg": "build/tiny-models/rmbg",
            "mask": "build/tiny-models/sam2"}[name]
    # the demo's VLM answers a box (a random one names nothing: no mask would be drawn)
    assert tiny["stages"]["mask"]["grounding_model"] == "build/tiny-models/qwen2_vl_grounding"
    for name in ("sam2_mask", "mask"):
        stage = build_stage(name, prod["stages"][name])
        assert stage.num_gpus > 0 and not any(k in stage.config for k in RESOURCE_KEYS)
    assert prod["stages"]["mask"]["grounding_model"] == "Qwen/Qwen2-VL-7B-Instruct"


def test_mask_benchmark_gpu_mode_on_cpu_is_a_clear_error():
    import argparse
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    import models_masks

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(SystemExit, match="--gpu needs a CUDA device"):
        models_masks.run(argparse.Namespace(gpu=True, stages=[], images=1, batch_size=1,
                                            rounds=1))


def test_stage_outputs_make_their_task_families_sampleable(sam2_stage, rmbg_stage, samples):
    from graph200k.manifest import Manifest
    from graph200k.nodes import available_nodes
    from graph200k.tasks import TaskSampler

    produced = {s.key: set(s.members) for s in samples[:4]}
    for stage in (sam2_stage, rmbg_stage):
        for o in run_inline(stage, samples[:4], batch_size=4):
            produced[o.key] |= set(o.members)
    m = Manifest.from_records({"key": k, "shard": 0, "nodes": available_nodes(members),
                               "item": "x", "description": "d"} for k, members in produced.items())
    counts = m.node_counts()
    assert counts["sam2_mask"] == counts["foreground"] == counts["background"] == 4
    sampler = TaskSampler(m, families=["conditional_generation", "dense_prediction"], seed=0)
    used = {n for t in sampler.take(300) for n in t.nodes}
    assert {"sam2_mask", "foreground", "background"} <= used
