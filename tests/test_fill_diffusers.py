"""train.fill / train.infer_fill against diffusers' own VisualCloze pipelines (tiny FLUX-Fill, CPU, float32).

- a LoRA saved by train.fill loads into VisualClozeGenerationPipeline: every tensor, its rank and alpha;
- train.infer_fill gives the same latents and image as VisualClozeGenerationPipeline (with our LoRA,
  without one) and as VisualClozePipeline with its upsampling pass;
- the released layouts load into train.infer_fill: diffusers' visualcloze-lora-*.safetensors
  (written by diffusers' own save_lora_weights), the reference trainer's .pth (its key names),
  a full VisualClozePipeline folder — the same outputs as the natively trained LoRA.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import train.visualcloze.infer as infer
import train.visualcloze.recipe as fill
from graph200k.grid import INFER, compose_images
from train.common.config import load_config
from train.visualcloze.weights import reference_module_map, reference_to_diffusers

RANK, ALPHA = 4, 8.0  # alpha != rank: a lost alpha shows as a different scale
TASK, CONTENT = "[IMAGE1] edge map, [IMAGE2] photo: make the photo.", "a cat on a rocket"
STEPS, SEED, RES, MSL = 2, 3, 32, 32


@pytest.fixture(scope="module")
def lora_dir(tiny_fill_dir, annotated_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("fill-run")
    folder, manifest = annotated_shards
    cfg = load_config(fill.FillConfig, "configs/train/fill-tiny.yaml", [
        f"model.pretrained={tiny_fill_dir}", f"data.shards={folder}", f"data.manifest={manifest}",
        f"train.out_dir={out}", "train.tensorboard=false", "validation.every=0",
        "train.max_steps=2", "train.checkpoint_every=0", "optim.lr=1e-2",
        f"lora.rank={RANK}", f"lora.alpha={ALPHA}"])
    fill.train(cfg)
    return out / "lora"


def _images():
    """Three rows of real photos at different aspects; the query's last cell unknown."""
    from skimage import data

    return [[data.camera(), data.chelsea()], [data.coffee(), data.astronaut()], [data.rocket(), None]]


def _pil(images):
    return [[None if im is None else Image.fromarray(im).convert("RGB") for im in row] for row in images]


def _grid(multiple=4):
    grid = compose_images(_images(), 2, 1, res=RES, mode=INFER, multiple=multiple)
    return infer.with_prompt(grid, None, TASK, CONTENT)


def _generator():
    return torch.Generator("cpu").manual_seed(SEED)


def _ours(tiny_fill_dir, lora=None):
    pipe = infer.load_pipeline(str(tiny_fill_dir), torch.float32)
    if lora is not None:
        infer.load_lora(pipe, lora)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _theirs(cls, tiny_fill_dir, lora=None):
    pipe = cls.from_pretrained(str(tiny_fill_dir), resolution=RES, dtype=torch.float32)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_saved_lora_loads_into_visualcloze_pipeline_every_tensor_with_rank_and_alpha(tiny_fill_dir, lora_dir):
    from diffusers import VisualClozeGenerationPipeline
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(str(lora_dir / "pytorch_lora_weights.safetensors"))
    pipe = VisualClozeGenerationPipeline.from_pretrained(str(tiny_fill_dir), dtype=torch.float32)
    linears = {n for n, m in pipe.transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    pipe.load_lora_weights(str(lora_dir), adapter_name="ours")

    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="ours")
    loaded = {f"transformer.{k}": v for k, v in loaded.items()}
    assert set(loaded) == set(saved)  # none left over, none missing
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert {k.rsplit(".lora_", 1)[0].removeprefix("transformer.") for k in saved} == linears  # all-linear
    config = pipe.transformer.peft_config["ours"]
    assert (config.r, config.lora_alpha) == (RANK, ALPHA)
    assert pipe.transformer.get_submodule("proj_out").scaling["ours"] == ALPHA / RANK


def test_prompt_join_encodes_as_diffusers_encode_prompt(tiny_fill_dir):
    from diffusers import FluxFillPipeline, VisualClozeGenerationPipeline

    theirs = VisualClozeGenerationPipeline.from_pretrained(str(tiny_fill_dir), dtype=torch.float32)
    ours = FluxFillPipeline(**theirs.components)
    layout = infer.diffusers_layout_prompt(3, 2)
    assert "3 rows and 2 columns" in layout
    for parts in ((layout, TASK, CONTENT), (layout, TASK, None), ("my layout", "", ""), ("", TASK, "x")):
        embeds, pooled, _ = theirs.encode_prompt(*parts, max_sequence_length=MSL)
        ours_embeds, ours_pooled, _ = ours.encode_prompt(prompt=infer.diffusers_prompt(*parts), prompt_2=None,
                                                         max_sequence_length=MSL)
        assert torch.equal(embeds, ours_embeds) and torch.equal(pooled, ours_pooled), parts


@pytest.mark.parametrize("with_lora", [True, False])
def test_infer_fill_equals_visualcloze_generation_pipeline(tiny_fill_dir, lora_dir, with_lora):
    from diffusers import VisualClozeGenerationPipeline

    lora = lora_dir if with_lora else None
    theirs = _theirs(VisualClozeGenerationPipeline, tiny_fill_dir, lora)
    kwargs = dict(task_prompt=TASK, content_prompt=CONTENT, image=_pil(_images()), num_inference_steps=STEPS,
                  max_sequence_length=MSL)
    their_latents = theirs(**kwargs, generator=_generator(), output_type="latent").images
    their_target = np.asarray(theirs(**kwargs, generator=_generator()).images[0][0])

    ours = _ours(tiny_fill_dir, lora)
    grid = _grid()
    our_latents, _ = infer.denoise(ours, grid, STEPS, 30.0, _generator(), MSL)
    _, our_target = infer.solve(ours, grid, STEPS, 30.0, SEED, MSL)
    assert our_latents.shape == their_latents.shape
    torch.testing.assert_close(our_latents, their_latents, rtol=0, atol=0)  # identical, bit for bit
    np.testing.assert_array_equal(our_target, their_target)


def test_infer_fill_upsampling_equals_visualcloze_pipeline(tiny_fill_dir, lora_dir):
    from diffusers import VisualClozePipeline

    theirs = _theirs(VisualClozePipeline, tiny_fill_dir, lora_dir)
    out = theirs(task_prompt=TASK, content_prompt=CONTENT, image=_pil(_images()), num_inference_steps=STEPS,
                 max_sequence_length=MSL, generator=_generator(), upsampling_strength=0.6, upsampling_height=48,
                 upsampling_width=64).images[0][0]
    _, ours = infer.solve(_ours(tiny_fill_dir, lora_dir), _grid(), STEPS, 30.0, SEED, MSL,
                          infer.Upsampling(0.6, 48, 64))
    assert ours.shape == (48, 64, 3)
    np.testing.assert_array_equal(ours, np.asarray(out))


# ------------------------------------------------------------------ released layouts
def _native_state(lora_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k.removeprefix("transformer."): v for k, v in
            load_file(str(lora_dir / "pytorch_lora_weights.safetensors")).items()}


def _cli(tiny_fill_dir, tmp_path, name, *extra, prompt_flags=True):
    task = {"rows": [["a.png", "b.png"], ["c.png", "d.png"], ["e.png", None]]}
    if not prompt_flags:  # diffusers' parts as the task's own keys
        task.update(task_prompt=TASK, content_prompt=CONTENT)
    for n, im in zip("abcde", [im for row in _images() for im in row if im is not None]):
        Image.fromarray(im).save(tmp_path / f"{n}.png")
    (tmp_path / "task.json").write_text(json.dumps(task))
    out = tmp_path / name
    infer.main(["--model", str(tiny_fill_dir), "--task", str(tmp_path / "task.json"), "--out", str(out),
                "--steps", str(STEPS), "--seed", str(SEED), "--dtype", "float32", "--max-sequence-length", str(MSL),
                *(["--task-prompt", TASK, "--content-prompt", CONTENT] if prompt_flags else []), *extra])
    return np.asarray(Image.open(out / "target.png")), np.asarray(Image.open(out / "grid.png"))


def to_reference_layout(state: dict, transformer, scale: float) -> dict[str, torch.Tensor]:
    """A diffusers-named LoRA written in the reference trainer's key names and LoRA form (scale 1,
    a bias on every lora_B). Fused Linears get the split layers' A stacked and their B's block-
    diagonal (rank x parts): exactly the same update, in the reference's shapes."""
    out = {}
    for ref, target in reference_module_map(transformer).items():
        modules = [target] if isinstance(target, str) else list(target)
        a = [state[f"{m}.lora_A.weight"] for m in modules]
        b = [state[f"{m}.lora_B.weight"] * scale for m in modules]
        if len(modules) == 1:
            a, b = a[0], b[0]
            if ref.startswith("final_layer.adaLN"):  # the reference's (shift, scale) order
                b = torch.cat(b.chunk(2)[::-1])
        else:
            a, b = torch.cat(a), torch.block_diag(*b)
        out[f"{ref}.lora_A.weight"], out[f"{ref}.lora_B.weight"] = a, b
        out[f"{ref}.lora_B.bias"] = torch.zeros(b.shape[0])
    return out


def test_reference_names_cover_every_linear_once_and_match_the_reference_by_hand(tiny_fill_dir):
    pipe = infer.load_pipeline(str(tiny_fill_dir), torch.float32)
    table = reference_module_map(pipe.transformer)
    targets = [m for t in table.values() for m in ([t] if isinstance(t, str) else t)]
    linears = [n for n, m in pipe.transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(targets) == sorted(linears)
    # From the reference's models/modules/layers.py + model.py (Black Forest Labs' Flux names).
    assert table["double_blocks.0.img_attn.qkv"] == tuple(f"transformer_blocks.0.attn.to_{x}" for x in "qkv")
    assert table["double_blocks.0.txt_mlp.2"] == "transformer_blocks.0.ff_context.net.2"
    assert table["single_blocks.0.linear1"] == tuple(f"single_transformer_blocks.0.{x}" for x in
                                                     ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"))
    assert table["guidance_in.out_layer"] == "time_text_embed.guidance_embedder.linear_2"
    with pytest.raises(ValueError, match="match no layer"):
        reference_to_diffusers({"double_blocks.9.img_attn.qkv.lora_A.weight": torch.zeros(1)}, pipe.transformer)


def test_reference_bias_and_final_adaln_swap_act_as_in_the_reference(tiny_fill_dir):
    pipe = infer.load_pipeline(str(tiny_fill_dir), torch.float32)
    linear = pipe.transformer.norm_out.linear
    torch.manual_seed(0)
    a, b = torch.randn(3, linear.in_features), torch.randn(linear.out_features, 3)
    bias = torch.randn(linear.out_features)
    x = torch.randn(2, linear.in_features)
    before = linear(x)
    converted = reference_to_diffusers({"final_layer.adaLN_modulation.1.lora_A.weight": a,
                                        "final_layer.adaLN_modulation.1.lora_B.weight": b,
                                        "final_layer.adaLN_modulation.1.lora_B.bias": bias}, pipe.transformer)
    pipe.load_lora_weights(converted)
    delta = x @ a.T @ b.T + bias  # the reference: lora_B(lora_A(x)) * 1.0, in (shift, scale) order
    shift, scale = delta.chunk(2, dim=-1)
    after = pipe.transformer.norm_out.linear(x)  # peft wrapped the Linear
    torch.testing.assert_close(after - before, torch.cat([scale, shift], dim=-1), rtol=1e-5, atol=1e-5)


def test_released_layouts_load_with_the_native_lora_outputs(tiny_fill_dir, lora_dir, tmp_path):
    from diffusers import FluxFillPipeline, VisualClozePipeline

    native_target, native_grid = _cli(tiny_fill_dir, tmp_path, "native", "--lora", str(lora_dir), "--res", str(RES))
    state = _native_state(lora_dir)

    # diffusers' layout, written by diffusers itself under the released name; like the released
    # file it carries no adapter config, so alpha/rank (2, a power of two: exact) is folded into B.
    released = tmp_path / "released"
    folded = {k: v * (ALPHA / RANK) if ".lora_B." in k else v for k, v in state.items()}
    VisualClozePipeline.save_lora_weights(released, transformer_lora_layers=folded,
                                          weight_name=f"visualcloze-lora-{RES}.safetensors")
    target, grid = _cli(tiny_fill_dir, tmp_path, "diffusers", "--lora",
                        str(released / f"visualcloze-lora-{RES}.safetensors"), "--res", str(RES))
    np.testing.assert_array_equal(target, native_target)
    np.testing.assert_array_equal(grid, native_grid)

    # The reference trainer's .pth: its key names, fused qkv / linear1, lora_B biases, scale 1.
    transformer = FluxFillPipeline.from_pretrained(str(tiny_fill_dir), dtype=torch.float32).transformer
    pth = tmp_path / f"visualcloze-{RES}-lora.pth"
    torch.save(to_reference_layout(state, transformer, ALPHA / RANK), pth)
    target, grid = _cli(tiny_fill_dir, tmp_path, "reference", "--lora", str(pth), "--res", str(RES))
    assert target.shape == native_target.shape
    # Same update with the stacked rank: identical here (CPU, float32); 1 level allowed for a BLAS
    # that sums the 3r-wide products in another order.
    assert np.abs(target.astype(int) - native_target).max() <= 1
    assert np.abs(grid.astype(int) - native_grid).max() <= 1

    # A full VisualClozePipeline folder as --model: its resolution is the default --res.
    folder = tmp_path / "VisualClozePipeline"
    base = FluxFillPipeline.from_pretrained(str(tiny_fill_dir), dtype=torch.float32)
    VisualClozePipeline(**base.components, resolution=RES).save_pretrained(folder)
    target, grid = _cli(folder, tmp_path, "folder", "--lora", str(lora_dir))
    np.testing.assert_array_equal(target, native_target)
    np.testing.assert_array_equal(grid, native_grid)
    # The prompt parts as keys of the task instead of flags: the same caption, the same image.
    target, _ = _cli(tiny_fill_dir, tmp_path, "keys", "--lora", str(lora_dir), "--res", str(RES), prompt_flags=False)
    np.testing.assert_array_equal(target, native_target)


def test_training_continues_from_the_reference_lora(tiny_fill_dir, lora_dir, annotated_shards, tmp_path):
    from diffusers import VisualClozeGenerationPipeline
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    from train.visualcloze.model import init_lora_from, load_transformer

    transformer = load_transformer(str(tiny_fill_dir), torch.float32)
    pth = tmp_path / "visualcloze-32-lora.pth"
    reference = to_reference_layout(_native_state(lora_dir), transformer, ALPHA / RANK)
    torch.save(reference, pth)
    # Step 0 is the file: every tensor, trainable, the fused layers at their stacked rank.
    params = init_lora_from(transformer, str(pth))
    start = get_peft_model_state_dict(transformer)
    expected = {k.removeprefix("transformer."): v for k, v in reference_to_diffusers(reference, transformer).items()}
    assert set(start) == set(expected) and all(torch.equal(start[k], expected[k]) for k in expected)
    assert all(p.requires_grad and p.dtype == torch.float32 for p in params) and len(params) == len(expected)
    assert transformer.transformer_blocks[0].attn.to_q.lora_A["default"].weight.shape[0] == 3 * RANK

    out = tmp_path / "run"
    folder, manifest = annotated_shards
    cfg = load_config(fill.FillConfig, "configs/train/fill-tiny.yaml", [
        f"model.pretrained={tiny_fill_dir}", f"data.shards={folder}", f"data.manifest={manifest}",
        f"train.out_dir={out}", "train.tensorboard=false", "validation.every=0", "train.max_steps=1",
        "train.checkpoint_every=0", "optim.lr=1e-2", f"lora.init_from={pth}"])
    fill.train(cfg)
    saved = load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))
    assert set(saved) == {f"transformer.{k}" for k in expected}  # lora_B biases included
    assert any(not torch.equal(saved[f"transformer.{k}"], v) for k, v in expected.items())  # it trained
    pipe = VisualClozeGenerationPipeline.from_pretrained(str(tiny_fill_dir), dtype=torch.float32)
    pipe.load_lora_weights(str(out / "lora"), adapter_name="continued")
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="continued")
    assert set(loaded) == set(expected) and all(torch.equal(loaded[k], saved[f"transformer.{k}"]) for k in loaded)


def test_docs_snippet_loads_a_train_fill_lora_into_diffusers(tiny_fill_dir, lora_dir, tmp_path, monkeypatch):
    """docs/training.md's diffusers snippet (the README's), run on the tiny model: it must work as written."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    code = re.search(r"loads into them as it is:\n\n```python\n(.*?)```", doc, re.S).group(1)
    for old, new in (('"black-forest-labs/FLUX.1-Fill-dev"', repr(str(tiny_fill_dir))),
                     ('"runs/fill/lora"', repr(str(lora_dir))),
                     ("resolution=384", f"resolution={RES}"), ("torch.bfloat16", "torch.float32"), ('"cuda"', '"cpu"'),
                     ("=1024", "=64"), ("num_inference_steps=28", "num_inference_steps=1")):
        assert old in code, old
        code = code.replace(old, new)
    for i, (name, im) in enumerate(zip(("ex_canny.png", "ex_photo.png", "canny.png"), _images()[1] + _images()[0][:1])):
        Image.fromarray(im).save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "docs/training.md", "exec"), scope)
    assert scope["out"].size == (64, 64) and scope["pipe"].transformer.peft_config  # the LoRA is in
