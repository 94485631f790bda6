"""train.fill's step keeps the GPU busy: micro-batches of one layout, one VAE call per row size,
batched text encoding, a feature cache keyed on what repeats (bf16, no mask channels)."""

import dataclasses
import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import train.visualcloze.recipe as fill
from graph200k.grid import compose_images
from train.common.config import load_config
from train.visualcloze.inputs import collate, encode_grid, encode_prompts, grid_latents, masked_rows, vae_scale_factor
from train.visualcloze.layouts import consecutive_micro_batches, layout_key, padding_stats, plan_micro_batches
from train.visualcloze.model import load_text_encoders, load_vae

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(tiny_fill_dir, shards, out, *overrides):
    folder, manifest = shards
    return load_config(fill.FillConfig, "configs/train/fill-tiny.yaml", [
        f"model.pretrained={tiny_fill_dir}", f"data.shards={folder}", f"data.manifest={manifest}",
        f"train.out_dir={out}", "train.tensorboard=false", "validation.every=0", *overrides])


def _photo_grid(rows, cols, mask_row, mask_col, res=32, seed=0):
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    rng = np.random.default_rng(seed)
    images = [[photos[int(rng.integers(len(photos)))] for _ in range(cols)] for _ in range(rows)]
    return compose_images(images, mask_row=mask_row, mask_col=mask_col, prompt="p", res=res)


# ----------------------------------------------------------------------------- layouts
def test_plan_groups_layouts_in_first_seen_order_and_splits_to_a_count():
    keys = ["a", "b", "a", "c", "b", "a"]
    assert plan_micro_batches(keys, 2) == [[0, 2], [5], [1, 4], [3]]
    assert plan_micro_batches(keys, 4) == [[0, 2, 5], [1, 4], [3]]
    # FSDP: a rank with fewer micro-batches splits its largest until it runs as many forwards.
    assert plan_micro_batches(keys, 4, count=5) == [[0], [2], [5], [1, 4], [3]]
    assert sorted(i for mb in plan_micro_batches(keys, 4, count=6) for i in mb) == list(range(6))
    with pytest.raises(ValueError, match="7 micro-batches from 6"):
        plan_micro_batches(keys, 2, count=7)
    assert consecutive_micro_batches(5, 2) == [[0, 1], [2, 3], [4]]


def test_grouping_removes_masked_path_and_padding_on_the_task_mix(annotated_shards, tmp_path):
    # The fill-tiny mix (1-3 rows, 2-4 columns): cut in stream order, most micro-batches of 2 mix
    # layouts; grouped per step of 4 grids, none does, and every grid is still trained once.
    cfg = _cfg(None, annotated_shards, tmp_path, "data.max_tokens=0")
    grids = list(itertools.islice(fill.grid_source(cfg.data), 24))
    steps = [grids[i:i + 4] for i in range(0, len(grids), 4)]
    before = [[s[i] for i in mb] for s in steps for mb in consecutive_micro_batches(len(s), 2)]
    after = [[s[i] for i in mb] for s in steps for mb in plan_micro_batches([layout_key(g) for g in s], 2)]
    b, a = padding_stats(before, 2), padding_stats(after, 2)
    assert b["masked_micro_batches"] > 0 and b["padding_tokens"] > 0
    assert a["masked_micro_batches"] == 0 and a["padding_tokens"] == 0
    assert a["image_tokens"] == b["image_tokens"]
    assert sorted(g.task_id for mb in after for g in mb) == sorted(g.task_id for g in grids)
    for mb in after:
        assert len({layout_key(g) for g in mb}) == 1


def test_grouped_training_logs_no_masked_micro_batch_and_resumes_exactly(tiny_fill_dir, annotated_shards, tmp_path):
    # Resume across the regrouping: 2 steps + 2 more equals 4 uninterrupted (bitwise).
    import json

    full = fill.train(_cfg(tiny_fill_dir, annotated_shards, tmp_path / "full", "train.max_steps=4",
                           "train.checkpoint_every=2"))["losses"]
    rows = [json.loads(x) for x in open(tmp_path / "full" / "logs" / "metrics.jsonl")]
    assert all(r["masked_micro_batches"] == 0 and r["padding_tokens"] == 0 for r in rows)
    assert sum(r["micro_batches"] for r in rows) >= 4 * 2  # 4 grids a step, at most 2 per micro-batch
    first = fill.train(_cfg(tiny_fill_dir, annotated_shards, tmp_path / "cut", "train.max_steps=2",
                            "train.checkpoint_every=2"))["losses"]
    rest = fill.train(_cfg(tiny_fill_dir, annotated_shards, tmp_path / "cut", "train.max_steps=4",
                           "train.checkpoint_every=2"))["losses"]
    assert first + rest == full


# ----------------------------------------------------------------------------- VAE
class _CountingVae(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae, self.calls = vae, []
        self.config, self.device, self.dtype = vae.config, vae.device, vae.dtype

    def encode(self, x):
        self.calls.append(tuple(x.shape))
        return self.vae.encode(x)


def _per_row_reference(grid, vae):
    """What encode_grid computed before: every row alone, and its blanked copy alone."""
    s = vae_scale_factor(vae)
    rows = []
    for row, m in zip(grid.rows, masked_rows(grid)):
        px = torch.from_numpy(row).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)
        lat = vae.encode(px).latent_dist.mode()
        enc = lambda lat: (lat - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor  # noqa: E731
        clean = enc(lat)
        blank = clean if m is None else enc(vae.encode(px * (1 - torch.from_numpy(m))[None, None]).latent_dist.mode())
        rows.append((clean, blank))
    return grid_latents(grid, rows, s)


def test_encode_grid_one_vae_call_per_row_size_equals_per_row(tiny_fill_dir):
    vae = load_vae(str(tiny_fill_dir), torch.float32).eval()
    grid = _photo_grid(3, 2, mask_row=2, mask_col=0)
    counting = _CountingVae(vae)
    ours = encode_grid(grid, counting)
    # 3 rows of one size + the masked row's blanked copy: one call of 4.
    assert [c[0] for c in counting.calls] == [4]
    ref = _per_row_reference(grid, vae)
    torch.testing.assert_close(ours.latents, ref.latents, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.masked_latents, ref.masked_latents, rtol=1e-4, atol=1e-5)
    assert torch.equal(ours.mask, ref.mask) and torch.equal(ours.img_ids, ref.img_ids)
    assert not torch.equal(ours.masked_latents, ours.latents)  # the masked cell was blanked


def test_encode_grid_rows_of_two_sizes_take_two_calls(tiny_fill_dir):
    from graph200k.grid import INFER

    vae = load_vae(str(tiny_fill_dir), torch.float32).eval()
    a, b = np.full((32, 32, 3), 90, np.uint8), np.full((32, 64, 3), 200, np.uint8)
    grid = compose_images([[a, a], [b, b]], mask_row=1, mask_col=1, prompt="p", res=32, mode=INFER, multiple=4)
    counting = _CountingVae(vae)
    ours = encode_grid(grid, counting)
    assert sorted(c[0] for c in counting.calls) == [1, 2]  # row 0 alone; row 1 with its blanked copy
    ref = _per_row_reference(grid, vae)
    torch.testing.assert_close(ours.latents, ref.latents, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.masked_latents, ref.masked_latents, rtol=1e-4, atol=1e-5)


def test_collate_shared_layout_stacks_without_padding():
    from train.visualcloze.inputs import GridLatents, grid_position_ids

    ids = grid_position_ids([(4, 4)])
    items = [GridLatents(torch.randn(4, 8), torch.randn(4, 8), torch.zeros(4, 16), ids, torch.tensor([[4, 4]]))
             for _ in range(2)]
    batch = collate(items, torch.zeros(2, 3, 4), torch.zeros(2, 4), ["a", "b"])
    assert batch.shared_positions and batch.valid.all()
    assert torch.equal(batch.latents[1], items[1].latents)
    assert torch.equal(batch.hidden_masked[0], torch.cat([items[0].masked_latents, items[0].mask], -1))


# ----------------------------------------------------------------------------- text
class _CountingT5(torch.nn.Module):
    def __init__(self, t5):
        super().__init__()
        self.t5, self.batches = t5, []
        self.device = t5.device

    def forward(self, ids, **kw):
        self.batches.append(ids.shape[0])
        return self.t5(ids, **kw)


def test_text_misses_encoded_in_one_call_equal_per_prompt(tiny_fill_dir, tmp_path):
    cfg = load_config(fill.FillConfig, "configs/train/fill-tiny.yaml", [f"model.pretrained={tiny_fill_dir}"])
    enc = fill.Encoders(cfg, torch.device("cpu"))
    tok, clip, tok2, t5 = load_text_encoders(str(tiny_fill_dir), torch.float32)
    counting = _CountingT5(t5)
    enc._text = (tok, clip, tok2, counting)
    prompts = ["a canny edge map of a cat", "a depth map", "a canny edge map of a cat"]
    text, pooled = enc.text(prompts)
    assert counting.batches == [2]  # one call; the repeated prompt encoded once
    for i, p in enumerate(prompts):
        t, pl = encode_prompts([p], tok, clip, tok2, t5, max_sequence_length=cfg.model.max_sequence_length)
        torch.testing.assert_close(text[i], t[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(pooled[i], pl[0], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- cache
def _entries(root: Path, namespace: str) -> list[Path]:
    return sorted((root / namespace).rglob("*.safetensors"))


def test_cache_skips_degraded_rows_and_stores_clean_rows_in_bf16(tiny_fill_dir, annotated_shards, tmp_path):
    from safetensors import safe_open

    from graph200k.nodes import DEGRADATIONS

    cache = tmp_path / "cache"
    cfg = _cfg(tiny_fill_dir, annotated_shards, tmp_path / "run", f"data.cache_dir={cache}",
               "data.families=[restoration,conditional_generation]")
    enc = fill.Encoders(cfg, torch.device("cpu"))
    grids = list(itertools.islice(fill.grid_source(cfg.data), 12))
    is_degraded = [any(c in DEGRADATIONS for row in g.cells for c in row) for g in grids]
    degraded = [g for g, d in zip(grids, is_degraded) if d]
    clean = [g for g, d in zip(grids, is_degraded) if not d]
    assert degraded and clean
    for g in degraded:
        enc.latents(g)
    assert _entries(cache, "latents") == []  # restoration rows all show a random degradation
    plain = [encode_grid(g, enc.vae()) for g in clean]
    first = [enc.latents(g) for g in clean]
    files = _entries(cache, "latents")
    assert len(files) == len({(g.rows[r].tobytes(), None if m is None else m.tobytes())
                              for g in clean for r, m in enumerate(masked_rows(g))})
    for f in files:
        with safe_open(str(f), "pt") as st:
            assert set(st.keys()) <= {"latents", "masked_latents"}  # no mask channels
            assert all(st.get_tensor(k).dtype == torch.bfloat16 for k in st.keys())
    hits = enc.latent_cache.hits
    again = [enc.latents(g) for g in clean]  # the repeated tasks: every row from the cache
    assert enc.latent_cache.hits - hits == sum(g.num_rows for g in clean)
    for a, b, p in zip(first, again, plain):
        assert torch.equal(a.latents, b.latents) and torch.equal(a.mask, b.mask)
        torch.testing.assert_close(a.latents, p.latents, rtol=1e-2, atol=1e-2)  # bf16 rounding only
        torch.testing.assert_close(a.masked_latents, p.masked_latents, rtol=1e-2, atol=1e-2)
    # One grid's bytes against the old entry (fp32 latents + masked latents + mask channels + ids).
    from safetensors.torch import save_file

    one = fill.Encoders(_cfg(tiny_fill_dir, annotated_shards, tmp_path / "run", f"data.cache_dir={tmp_path / 'one'}"),
                        torch.device("cpu"))
    one.latents(clean[0])
    new = sum(f.stat().st_size for f in _entries(tmp_path / "one", "latents"))
    save_file({k: v.contiguous() for k, v in dataclasses.asdict(plain[0]).items()}, str(tmp_path / "old.safetensors"))
    assert new < (tmp_path / "old.safetensors").stat().st_size / 3


def test_warm_text_cache_never_loads_text_encoders(tiny_fill_dir, tmp_path, monkeypatch):
    cfg = load_config(fill.FillConfig, "configs/train/fill-tiny.yaml",
                      [f"model.pretrained={tiny_fill_dir}", f"data.cache_dir={tmp_path}"])
    prompts = ["a canny edge map", "a depth map"]
    cold = fill.Encoders(cfg, torch.device("cpu")).text(prompts)

    def must_not_load(*a, **k):
        raise AssertionError("text encoders loaded although every prompt is cached")

    monkeypatch.setattr(fill, "load_text_encoders", must_not_load)
    warm_enc = fill.Encoders(cfg, torch.device("cpu"))
    warm = warm_enc.text(prompts[::-1])
    assert warm_enc._text is None and warm_enc.text_cache.hits == 2
    assert torch.equal(warm[0], cold[0].flip(0)) and torch.equal(warm[1], cold[1].flip(0))


# ----------------------------------------------------------------------------- compile
def _compiled_vs_plain(tiny_fill_dir, annotated_shards, tmp_path):
    # One micro-batch of one layout: one graph per block class, no recompiles.
    steps = ["train.max_steps=1", "train.checkpoint_every=0", "data.max_tokens=128", "data.micro_batch_size=1",
             "train.global_batch_size=1", "data.families=[conditional_generation]"]
    plain = fill.train(_cfg(tiny_fill_dir, annotated_shards, tmp_path / "plain", *steps))["losses"]
    compiled = fill.train(_cfg(tiny_fill_dir, annotated_shards, tmp_path / "compiled", "model.compile=blocks", *steps))
    assert compiled["losses"] == pytest.approx(plain, rel=1e-4)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "plain" / "lora" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "compiled" / "lora" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()  # same names: compiling in place adds no _orig_mod prefix
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-5)  # the update went through the compiled blocks


def test_compile_blocks_captures_lora_and_checkpointed_blocks(tiny_fill_dir, annotated_shards, tmp_path, monkeypatch):
    # Dynamo captures the blocks through LoRA and gradient checkpointing (the eager backend runs the
    # captured graphs: inductor's C++ build takes minutes here; the inductor test below does it).
    calls = []
    real = torch.nn.Module.compile

    def eager_backend(self, *a, **k):
        calls.append(type(self).__name__)
        return real(self, *a, **{**k, "backend": "eager"})

    monkeypatch.setattr(torch.nn.Module, "compile", eager_backend)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    _compiled_vs_plain(tiny_fill_dir, annotated_shards, tmp_path)
    assert sorted(set(calls)) == ["FluxSingleTransformerBlock", "FluxTransformerBlock"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # a graph per block class, at least


@pytest.mark.skipif(not os.environ.get("FILL_COMPILE_INDUCTOR"),
                    reason="inductor builds the tiny blocks' C++ kernels in ~5 min on 2 shared cores (measured); "
                           "FILL_COMPILE_INDUCTOR=1 runs it")
def test_compile_blocks_with_inductor_trains_to_the_same_loss(tiny_fill_dir, annotated_shards, tmp_path):
    import shutil

    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("torch.compile's inductor backend needs a C compiler (gcc) to build CPU kernels; none on PATH")
    _compiled_vs_plain(tiny_fill_dir, annotated_shards, tmp_path)


def test_compile_option_is_checked():
    from train.common.config import ConfigError

    cfg = load_config(fill.FillConfig, "configs/train/fill-tiny.yaml", ["model.compile=everything"])
    with pytest.raises(ConfigError, match="model.compile"):
        fill.check_config(cfg)


# ----------------------------------------------------------------------------- host syncs
def test_micro_step_reads_no_tensor_value_back(tiny_fill_dir, annotated_shards, tmp_path, monkeypatch):
    # On a GPU, reading a value (item, float, bool, an `if mask.any()`) or copying to the host waits
    # for every queued kernel. On the CPU the same calls show up as aten._local_scalar_dense (the
    # op behind item/float/bool) and as Tensor.cpu/tolist/numpy: none may run in a micro-step.
    from torch.utils._python_dispatch import TorchDispatchMode

    from train.common.loader import Loaded, image_tensor
    from train.visualcloze.model import PerSampleRopeAttnProcessor, load_transformer

    class ScalarReads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default):
                self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    cfg = _cfg(tiny_fill_dir, annotated_shards, tmp_path, "data.max_tokens=0")
    grids = [g for g in itertools.islice(fill.grid_source(cfg.data), 12)]
    pair = next([a, b] for a, b in itertools.combinations(grids, 2) if layout_key(a) == layout_key(b))
    loaded = [Loaded(g, {"rows": [image_tensor(r) for r in g.rows]}) for g in pair]
    encoders = fill.Encoders(cfg, torch.device("cpu"))
    encoders.vae(), encoders.text_models()  # loading reads values; the step does not
    transformer = load_transformer(str(tiny_fill_dir), torch.float32)
    transformer.set_attn_processor(PerSampleRopeAttnProcessor())
    host = []
    for name in ("cpu", "tolist", "numpy", "item"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _n=name, _r=real, **k: host.append(_n) or _r(self, *a, **k))
    with ScalarReads() as reads:
        for obj in (cfg.objective, fill.ObjectiveConfig(loss_on="masked_cell", time_shift=True)):
            loss = fill.flow_loss(transformer, fill.micro_batch(encoders, loaded), obj, torch.device("cpu"))
            loss.backward()
    assert reads.ops == [] and host == []
    assert loss.ndim == 0 and loss.grad_fn is not None  # a device scalar, still in the graph
