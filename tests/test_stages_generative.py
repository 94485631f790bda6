"""The generative stages on tiny random pipelines (configs/annotate-tiny.yaml), through the
pipeline's operators (`run_inline`): members and meta, seeds, batching, bad inputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from generative_helpers import generative_samples, mask_entry, pools, tiny_models
from annotators.base import ANNOTATIONS
from annotators.side_inputs import ConfigError, load_side_input
from graph200k.shards import decode_image, encode_image
from pipelines.annotate_config import RESOURCE_KEYS, import_class
from pipelines.stage_ops import run_inline

STAGES = ("instantstyle", "reduxstyle", "filledit", "depthedit")
TINY_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "annotate-tiny.yaml"
SIZE = 40  # the samples' side: outputs are resized back to it from the generated 16²


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("tiny-generative"))


@pytest.fixture(scope="session")
def side(tmp_path_factory):
    return pools(tmp_path_factory.mktemp("pools"))


def block(stage: str, tiny_dir: Path, **over) -> dict:
    """The stage's block of the tiny config, pointed at this session's tiny models."""
    raw = yaml.safe_load(TINY_CONFIG.read_text())["stages"][stage]
    cfg = {k: (v.replace("build/tiny-models", str(tiny_dir)) if isinstance(v, str) else v)
           for k, v in raw.items() if k not in RESOURCE_KEYS}
    cfg["variants"] = min(cfg.get("variants", 1), 2)  # two are enough to tell them apart
    cfg.update(over)
    return import_class(raw["class"], stage), cfg


_LOADED: dict = {}


def stage(name: str, tiny_dir: Path, **over):
    """One loaded stage per (name, options): loading is what the actor does once."""
    key = (name, tuple(sorted(over.items())))
    if key not in _LOADED:
        cls, cfg = block(name, tiny_dir, **over)
        _LOADED[key] = cls(cfg)
        _LOADED[key].ensure_loaded()
    return _LOADED[key]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    _LOADED.clear()


@pytest.fixture(scope="module")
def outcomes(tiny_dir, side):
    """Every stage over the same 3 samples, in one batch."""
    samples = generative_samples(3, SIZE, side=side)
    return samples, {n: run_inline(stage(n, tiny_dir), samples, batch_size=3) for n in STAGES}


def test_every_stage_writes_its_variants_at_the_samples_size(outcomes):
    samples, runs = outcomes
    expected = {"instantstyle": ["instantstyle.0.jpg", "instantstyle.1.jpg",
                                 "instantstyle_ref.0.jpg", "instantstyle_ref.1.jpg"],
                "reduxstyle": ["reduxstyle.0.jpg", "reduxstyle.1.jpg", "reduxstyle_ref.0.jpg",
                               "reduxstyle_ref.1.jpg"],
                "filledit": ["filledit.0.jpg", "filledit.1.jpg"], "depthedit": ["depthedit.0.jpg"]}
    for name, outs in runs.items():
        for o in outs:
            assert o.status == "ok", (name, o.status)
            assert sorted(o.members) == expected[name]
            for m, data in o.members.items():
                assert decode_image(data).shape == (SIZE, SIZE, 3), (name, m)
            assert len(o.meta["variants"]) == len([m for m in o.members if "_ref" not in m
                                                   and m.startswith(name)])
    for name in ("instantstyle", "reduxstyle", "filledit"):  # two seeds, two images
        o = runs[name][0]
        assert o.members[f"{name}.0.jpg"] != o.members[f"{name}.1.jpg"]


def test_style_references_come_from_the_pool_and_are_stored_with_their_id(outcomes, side):
    samples, runs = outcomes
    pool = side["style_pool"]
    for name in ("instantstyle", "reduxstyle"):
        for s, o in zip(samples, runs[name]):
            seeds = [dataclasses.replace(s, stage=name).seed_for(v) for v in range(2)]
            assert [v["seed"] for v in o.meta["variants"]] == seeds
            assert [v["style"] for v in o.meta["variants"]] == [pool.choose(x) for x in seeds]
            ref = decode_image(o.members[f"{name}_ref.0.jpg"])
            assert ref.std() > 5  # a photo of the pool, not a blank


def test_filledit_keeps_the_background_and_records_each_variants_subject(outcomes):
    samples, runs = outcomes
    for s, o in zip(samples, runs["filledit"]):
        assert o.meta["mask"] == "grounded" and o.meta["rewrite"] == "same_category"
        target = decode_image(s.members["target.jpg"]).astype(int)
        out = decode_image(o.members["filledit.0.jpg"]).astype(int)
        corner = (slice(0, 4), slice(SIZE - 4, SIZE))  # far outside the dilated subject
        assert np.abs(out[corner] - target[corner]).mean() < 6  # JPEG noise only
        centre = (slice(SIZE // 2 - 3, SIZE // 2 + 3),) * 2
        assert np.abs(out[centre] - target[centre]).mean() > 10  # the subject was repainted
        for v in o.meta["variants"]:
            assert v["subject"] != s.meta["item"] and v["caption"]
    for s, o in zip(samples, runs["depthedit"]):  # depthedit replaces the subject too
        assert o.meta["rewrite"] == "same_category" and o.meta["redux"] == "target"
        assert all(v["subject"] != s.meta["item"] and v["caption"] for v in o.meta["variants"])


class _Recorder:
    """Stands in for a pipeline: records the keyword arguments of each call."""

    def __init__(self, pipe):
        self._pipe, self.calls = pipe, []

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self._pipe(**kwargs)


def test_depthedit_is_the_new_subjects_caption_under_redux_on_the_targets_depth(tiny_dir, side,
                                                                                monkeypatch):
    """VisualCloze §3.2: filledit's new subject and modified caption, then FLUX Redux
    conditioned on depth plus that caption. What reaches the pipeline: the text encoders get
    the modified captions (another item's description, not this sample's), the control image
    is this sample's depth, Redux sees this sample's image; the caption changes the image."""
    from annotators.diffusion import Job, depth_control, fit

    st = stage("depthedit", tiny_dir)
    samples = generative_samples(2, SIZE, side=side)
    texts, refs = [], []
    encode_prompt, encode_image = st.pipe.encode_prompt, st.redux.encode_image
    monkeypatch.setattr(st.pipe, "encode_prompt",  # the pipeline calls it once more, prompt None
                        lambda *a, **k: texts.extend(k["prompt"] or []) or encode_prompt(*a, **k))
    monkeypatch.setattr(st.redux, "encode_image",
                        lambda images, *a: refs.extend(np.asarray(i) for i in images)
                        or encode_image(images, *a))
    recorder = _Recorder(st.pipe)
    monkeypatch.setattr(st, "pipe", recorder)
    outs = run_inline(st, samples, batch_size=2)
    assert [o.status for o in outs] == ["ok", "ok"]
    pool = side["subject_pool"]
    captions = [o.meta["variants"][0]["caption"] for o in outs]
    assert texts == captions
    for s, o in zip(samples, outs):
        v = o.meta["variants"][0]
        assert pool.record(v["source"])["description"].strip() == v["caption"]
        assert pool.record(v["source"])["item"] == v["subject"] != s.meta["item"]
        assert v["caption"] != s.meta["description"]
    controls = [np.asarray(c) for call in recorder.calls for c in call["control_image"]]
    for s, control, ref in zip(samples, controls, refs):
        np.testing.assert_array_equal(control, depth_control(s, st.options.resolution))
        np.testing.assert_array_equal(ref, fit(s.image("target"), st.options.reference_side))
    assert "prompt" not in recorder.calls[0]  # the captions arrive as T5 + Redux tokens
    # the caption conditions the image: same seed, depth and Redux image, another caption
    x = st.prepare(samples[0]).inputs
    seed = samples[0].seed_for(0)
    a, b = (st._generate([x], [Job(0, 0, seed, {"caption": c})])[0] for c in captions)
    assert not np.array_equal(a, b)  # (a random tiny T5 moves few pixels, but it moves them)
    assert np.array_equal(a, st._generate([x], [Job(0, 0, seed, {"caption": captions[0]})])[0])


def _pixels(members: dict) -> dict:
    return {m: decode_image(v).astype(np.int16) for m, v in members.items()}


@pytest.mark.parametrize("name", STAGES)
def test_same_seed_same_bytes_in_the_same_batch_and_nearly_whatever_the_batch(name, tiny_dir,
                                                                              side):
    samples = generative_samples(3, SIZE, side=side)
    st = stage(name, tiny_dir)
    together = run_inline(st, samples, batch_size=3)
    assert [o.members for o in run_inline(st, samples, batch_size=3)] == [
        o.members for o in together]  # a rerun of the same batch: the same bytes
    alone = run_inline(st, samples, batch_size=1)
    reversed_ = run_inline(st, samples[::-1], batch_size=2)[::-1]
    for a, b, c in zip(together, alone, reversed_):
        assert a.status == b.status == c.status == "ok"
        assert a.meta == b.meta == c.meta and a.members.keys() == b.members.keys()
        # float32 on the CPU: oneDNN's kernels depend on the batch size, so another batch
        # composition may round a value the other way (measured: a few levels after JPEG)
        for other in (b, c):
            x, y = _pixels(a.members), _pixels(other.members)
            assert all(np.abs(x[m] - y[m]).max() <= 8 for m in x)
    other = run_inline(st, generative_samples(1, SIZE, seed=1, side=side))[0]
    assert other.members[f"{name}.0.jpg"] != together[0].members[f"{name}.0.jpg"]


def test_output_members_follow_the_variant_count(tiny_dir):
    cls, cfg = block("instantstyle", tiny_dir, variants=4)
    st = cls(cfg)
    assert len(st.output_members) == 8 and "instantstyle_ref.3.jpg" in st.output_members
    cls, cfg = block("filledit", tiny_dir, variants=5, matte_fallback=False)
    st = cls(cfg)
    assert st.output_members[-1] == "filledit.4.jpg" and "rmbg.png" not in st.input_members
    cls, cfg = block("instantstyle", tiny_dir, control="canny")
    assert cls(cfg).input_members == ("target.jpg",)  # edges come from the target


def _statuses(outs):
    return [o.status for o in outs]


def test_filledit_subject_masks_bad_and_fallback(tiny_dir, side):
    hex_colour = generative_samples(1, SIZE, side=side)
    hex_colour[0].meta[f"{ANNOTATIONS}.mask"]["objects"][0]["colour"] = "#ff0000"
    grey = generative_samples(1, SIZE, side=side)
    grey[0].members["mask.png"] = encode_image(
        decode_image(grey[0].members["mask.png"], "L"), "png")  # one channel: red -> 76
    grey[0].meta[f"{ANNOTATIONS}.mask"]["objects"][0]["colour"] = 76
    ok = run_inline(stage("filledit", tiny_dir, matte_fallback=False), hex_colour + grey)
    assert [o.meta["mask"] for o in ok] == ["grounded", "grounded"]
    assert ok[0].meta["mask_area"] == ok[1].meta["mask_area"] > 0.1
    samples = generative_samples(5, SIZE, side=side)
    samples[0].meta[f"{ANNOTATIONS}.mask"] = mask_entry(None)  # grounding found no subject
    samples[1].meta[f"{ANNOTATIONS}.mask"] = {"objects": [{"name": "cup", "colour": [9, 9, 9]}],
                                              "subject": 0}  # a colour painted nowhere
    samples[2].members["mask.png"] = encode_image(np.full((SIZE, SIZE, 3), 255, np.uint8), "png")
    samples[2].meta[f"{ANNOTATIONS}.mask"] = {"objects": [{"name": "x", "colour": [255] * 3}],
                                              "subject": 0}  # covers everything
    del samples[3].meta[f"{ANNOTATIONS}.mask"]
    del samples[4].members["mask.png"]
    strict = run_inline(stage("filledit", tiny_dir, matte_fallback=False), samples)
    s = _statuses(strict)
    assert s[0] == "skipped: grounding found no subject (annotations.mask has no subject)"
    assert s[1].startswith("skipped: the grounded subject mask covers nothing")
    assert s[2] == "skipped: the subject mask covers 100% of the image: no background to keep"
    assert s[3] == "skipped: no annotations.mask entry (run the mask stage first)"
    assert s[4] == "skipped: mask.png is absent (the mask stage drew no mask for this sample)"
    assert all(not o.members for o in strict)
    fallback = run_inline(stage("filledit", tiny_dir), samples)
    assert [o.status for o in fallback][:2] == ["ok", "ok"]
    assert fallback[0].meta["mask"] == fallback[1].meta["mask"] == "rmbg"
    assert fallback[2].status.startswith("skipped")  # covering everything is no grounding miss
    no_matte = generative_samples(1, SIZE, side=side)
    no_matte[0].meta[f"{ANNOTATIONS}.mask"] = mask_entry(None)
    no_matte[0].members["rmbg.png"] = encode_image(np.zeros((SIZE, SIZE), np.uint8), "png")
    assert "the RMBG matte covers nothing" in run_inline(stage("filledit", tiny_dir), no_matte)[0].status


def test_same_category_rewrite_needs_a_category_a_peer_and_the_pool(tiny_dir, side):
    samples = generative_samples(2, SIZE, side=side)
    samples[0].meta["category"] = ""
    samples[1].meta["category"] = "Minerals"
    s = _statuses(run_inline(stage("filledit", tiny_dir), samples))
    assert s[0] == "skipped: no category in meta.json: a same-category subject cannot be drawn"
    assert s[1] == "skipped: no other item of category 'Minerals' in 'subject_pool'"
    s = _statuses(run_inline(stage("filledit", tiny_dir), samples[:1], side={}))
    assert s[0].startswith("failed: ValueError: rewrite: same_category needs the side input "
                           "'subject_pool'")


def test_depth_absent_constant_and_style_pool_missing(tiny_dir, side, tmp_path):
    samples = generative_samples(3, SIZE, side=side)
    del samples[0].members["depth.png"]
    samples[1].members["depth.png"] = encode_image(np.full((SIZE, SIZE), 7, np.uint8), "png")
    for name in ("instantstyle", "reduxstyle"):
        s = _statuses(run_inline(stage(name, tiny_dir), samples))
        assert s[0] == "failed: needs depth.png, absent from the sample"
        assert s[1] == "skipped: depth.png is constant: no structure to keep"
        assert s[2] == "ok"
        s = _statuses(run_inline(stage(name, tiny_dir), samples[2:], side={}))
        assert s[0].startswith("failed: ValueError: side input 'style_pool' is not configured "
                               "or empty")
    s = _statuses(run_inline(stage("depthedit", tiny_dir), samples[:2]))
    assert s == ["failed: needs depth.png, absent from the sample",
                 "skipped: depth.png is constant: no structure to keep"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds nothing to draw from"):
        load_side_input("style_pool", {"kind": "folder", "path": str(tmp_path / "empty")})


def test_a_random_vlm_rewrite_does_not_parse_and_skips_the_sample(tiny_dir, side):
    samples = generative_samples(2, SIZE, side=side)
    for name in ("filledit", "depthedit"):
        st = stage(name, tiny_dir, rewrite="vlm", rewrite_max_new_tokens=12)
        outs = run_inline(st, samples, batch_size=2)
        for o in outs:
            assert o.status.startswith("skipped: the rewrite does not parse"), o.status
            assert not o.members
        # the reply (quoted in the reason) is the same batched or alone: one prompt per call
        assert _statuses(run_inline(st, samples, batch_size=1)) == _statuses(outs)


def _nan_first_row(module):
    """The denoiser's output for the batch's first image becomes NaN (diverged latents)."""
    forward = module.forward

    def poisoned(*args, **kwargs):
        out = forward(*args, **kwargs)
        sample = out[0] if isinstance(out, tuple) else out.sample
        sample[0] = float("nan")
        return out

    module.forward = poisoned
    return lambda: setattr(module, "forward", forward)


@pytest.mark.parametrize("name,denoiser", [("instantstyle", "unet"), ("depthedit", "transformer")])
def test_nan_latents_fail_that_sample_and_write_nothing(name, denoiser, tiny_dir, side):
    st = stage(name, tiny_dir, images_per_call=6)  # the 3 x 2 images in one call
    samples = generative_samples(3, SIZE, side=side)
    restore = _nan_first_row(getattr(st.pipe, denoiser))
    try:
        outs = run_inline(st, samples, batch_size=3)
    finally:
        restore()
    assert outs[0].status.startswith("failed: ValueError: the generated image of variant 0 "
                                     "holds NaN or inf")
    assert outs[0].members == {} and outs[0].meta is None
    assert [o.status for o in outs[1:]] == ["ok", "ok"]
    # the neighbours' bytes are those of a clean run
    clean = run_inline(st, samples[1:], batch_size=2)
    assert [o.members for o in outs[1:]] == [o.members for o in clean]


def test_options_are_checked_when_the_stage_is_built(tiny_dir):
    cls, cfg = block("reduxstyle", tiny_dir)
    with pytest.raises(ConfigError, match="did you mean 'guidance'"):
        cls({**cfg, "guidanse": 3})
    offloaded = cls({**cfg, "offload": "model"})  # CPU tasks build it too: no GPU check yet
    with pytest.raises(ConfigError, match="no GPU is visible; set offload: none"):
        offloaded.load()  # the actor's load says so
    with pytest.raises(ConfigError, match="offload 'cpu' is not one of"):
        cls({**cfg, "offload": "cpu"})
    with pytest.raises(ConfigError, match="resolution 20 must be a multiple of 16"):
        cls({**cfg, "resolution": 20})
    cls, cfg = block("instantstyle", tiny_dir)
    with pytest.raises(ConfigError, match="control 'hed' is not one of"):
        cls({**cfg, "control": "hed"})
    cls, cfg = block("filledit", tiny_dir)
    with pytest.raises(ConfigError, match="rewrite 'llm' is not one of"):
        cls({**cfg, "rewrite": "llm"})


FAMILIES = ("conditional_generation_with_style", "style_transfer",
            "style_transfer_with_condition", "image_editing", "image_editing_with_reference")


def test_the_five_families_that_use_them_sample_and_read_their_variants(outcomes, tmp_path):
    """Stage outputs written as shards -> manifest -> the style and editing families."""
    from graph200k.manifest import Manifest
    from graph200k.reader import SampleReader
    from graph200k.shards import ShardWriter, json_bytes, shard_path
    from graph200k.tasks import TaskSampler

    samples, runs = outcomes
    with ShardWriter(shard_path(tmp_path, 0)) as w:
        for i, s in enumerate(samples):
            meta = {k: v for k, v in s.meta.items() if not k.startswith(ANNOTATIONS)}
            meta[ANNOTATIONS] = {n: runs[n][i].meta for n in STAGES}
            w.write({"__key__": s.key, **s.members, "meta.json": json_bytes(meta),
                     **{m: v for n in STAGES for m, v in runs[n][i].members.items()}})
    manifest = Manifest.from_shards(tmp_path)
    counts = manifest.node_counts()
    assert all(counts[n] == 3 for n in STAGES)
    assert manifest.variant_count(0, "instantstyle") == 2 and manifest.variant_count(0, "depthedit") == 1
    reader = SampleReader(tmp_path, manifest)
    tasks = TaskSampler(manifest, seed=0, families=FAMILIES).take(200)
    assert {t.family for t in tasks} == set(FAMILIES)
    used = {(c["node"], c.get("variant")) for t in tasks for r in t.rows for c in r}
    assert {("instantstyle", 0), ("instantstyle", 1), ("filledit", 1)} <= used
    for family in FAMILIES:
        task = next(t for t in tasks if t.family == family)
        grid = reader.grid(task, res=32)
        assert len(grid.rows) == len(task.rows)


def test_missing_weights_say_how_to_fetch_them(tiny_dir, tmp_path):
    cls, cfg = block("depthedit", tiny_dir, model=str(tmp_path))  # a folder without a model
    with pytest.raises(FileNotFoundError, match="cannot load FluxControlPipeline from .*"
                                                "huggingface-cli download"):
        cls(cfg).load()
    cls, cfg = block("depthedit", tiny_dir, model=str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="model folder .*absent does not exist"):
        cls(cfg).load()


def _generated(st, samples) -> np.ndarray:
    """Every variant image of the samples, in one predict call (uint8, as generated)."""
    out = st.predict([st.prepare(s).inputs for s in samples])
    return np.stack([img for o in out for img in o["images"]]).astype(np.int16)


@pytest.mark.parametrize("name", STAGES)
def test_vae_slicing_and_tiling_reach_the_vae(name, tiny_dir):
    vae = stage(name, tiny_dir).pipe.vae
    assert (vae.use_slicing, vae.use_tiling) == (True, False)  # the defaults
    vae = stage(name, tiny_dir, vae_slicing=False, vae_tiling=True).pipe.vae
    assert (vae.use_slicing, vae.use_tiling) == (False, True)


@pytest.mark.parametrize("name", ["instantstyle", "filledit"])
def test_vae_slicing_keeps_the_pixels(name, tiny_dir, side):
    samples = generative_samples(2, SIZE, side=side)
    sliced = _generated(stage(name, tiny_dir, images_per_call=4), samples)
    whole = _generated(stage(name, tiny_dir, images_per_call=4, vae_slicing=False), samples)
    # one decode (and Fill's masked-image encode) per image: float32 on the CPU may round
    # a value the other way than the batched call, nothing more
    assert sliced.shape == whole.shape == (4, 16, 16, 3)
    assert np.abs(sliced - whole).max() <= 1


def test_vae_tiling_decodes_in_tiles_within_tolerance(tiny_dir, side):
    samples = generative_samples(1, SIZE, side=side)
    images = {}
    for tiling in (False, True):
        st = stage("depthedit", tiny_dir, resolution=64, vae_tiling=tiling)
        vae = st.pipe.vae
        vae.tile_sample_min_size = 32  # 64² in overlapping tiles of 32²
        vae.tile_latent_min_size = 32 // st.pipe.vae_scale_factor
        images[tiling] = _generated(st, samples)
    diff = np.abs(images[True] - images[False])
    assert diff.max() > 0  # the tiles did run
    # a random tiny VAE blends its seams badly (real weights: far less); still the image
    assert diff.mean() < 16


def test_a_generative_stage_runs_on_the_cpu_only_when_told_to_and_never_in_float64(tiny_dir):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: device auto takes it")
    cls, cfg = block("filledit", tiny_dir, device="auto")
    st = cls(cfg)  # CPU tasks build the class too: the GPU is the actor's business
    with pytest.raises(ConfigError, match=r"^stage 'filledit': device: auto and no CUDA GPU is "
                                          r"visible; .* set device: cpu in the stage's block"):
        st.load()
    assert st.pipe is None  # refused before any weights load
    loaded = stage("filledit", tiny_dir)  # the tiny config says device: cpu
    assert loaded.pipe.transformer.dtype == loaded.pipe.vae.dtype == torch.float32
    with pytest.raises(ConfigError, match="dtype 'float64' is not one of auto, float32"):
        cls({**cfg, "device": "cpu", "dtype": "float64"})
