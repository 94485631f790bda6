"""RealGeneral model pieces on the tiny CogVideoX: identity at init, FCD masks, LoRA scope, UCE."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
cv2 = pytest.importorskip("cv2")
skdata = pytest.importorskip("skimage.data")

from train.realgeneral.encoders import encode_images, encode_text, load_components, tokenize  # noqa: E402
from train.realgeneral.fcd import MASK_VARIANTS, fcd_mask  # noqa: E402
from train.realgeneral.model import RealGeneralModel  # noqa: E402

TASKS = ["canny", "reference"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def batch(tiny_cogvideox_dir):
    """Real photos: the astronaut and its Canny edges as (target, condition); chelsea likewise."""
    parts = load_components(str(tiny_cogvideox_dir))
    targets = [cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA) for img in (skdata.astronaut(), skdata.chelsea())]
    conditions = [np.repeat(cv2.Canny(t, 100, 200)[..., None], 3, axis=2) for t in targets]
    prompts = ["a photo of the astronaut in a white suit", "a photo of a red cat on a table"]
    ids = tokenize(parts["tokenizer"], prompts, parts["transformer"].config.max_text_seq_length)
    torch.manual_seed(0)
    return dict(
        parts=parts,
        ids=ids,
        text=encode_text(parts["text_encoder"], ids),
        condition=encode_images(parts["vae"], conditions),
        target=encode_images(parts["vae"], targets),
        timestep=torch.tensor([700, 100]),
    )


def _fresh(tiny_cogvideox_dir, variant):
    parts = load_components(str(tiny_cogvideox_dir))
    base = parts["transformer"]
    return copy.deepcopy(base), RealGeneralModel(base, TASKS, variant), parts["tokenizer"]


def _base_prediction(base, model, b, condition):
    r = model.frames_per_image
    shape = b["target"].shape
    video = torch.cat([condition.expand(shape[0], r, *shape[2:]), b["target"].expand(shape[0], r, *shape[2:])], 1)
    out = base(
        hidden_states=video, encoder_hidden_states=b["text"], timestep=b["timestep"],
        image_rotary_emb=model.rotary_emb(shape[3], shape[4], "cpu"), return_dict=False,
    )[0]
    return out[:, r:].mean(dim=1, keepdim=True)


def _predict(model, tokenizer, b, subjects=("astronaut", "cat"), tasks=TASKS, condition=None):
    keyword = model.uce.keyword_mask(tokenizer, b["ids"], list(subjects))
    cond = b["condition"] if condition is None else condition
    return model(cond, b["target"], b["text"], b["timestep"], keyword, model.uce.task_ids(list(tasks)))


@torch.no_grad()
def test_identity_at_init_equals_base_transformer_exactly(tiny_cogvideox_dir, batch):
    base, model, tokenizer = _fresh(tiny_cogvideox_dir, "none")
    model.add_lora(rank=8, alpha=8)  # LoRA B starts at zero, UCE at zero
    ours = _predict(model, tokenizer, batch)
    theirs = _base_prediction(base, model, batch, batch["condition"])
    assert torch.equal(ours, theirs)
    # ... and the check has teeth: perturbing one SC-AdaLN branch breaks it.
    model.transformer.transformer_blocks[0].norm1.linear_condition.base_layer.bias.data += 0.1
    assert not torch.equal(_predict(model, tokenizer, batch), theirs)


def test_mask_patterns_on_a_small_sequence():
    # 2 text, 3 condition, 3 target tokens; T = text, C = condition, G = target (query rows)
    t, c, g = 2, 3, 3
    T, C, G = slice(0, 2), slice(2, 5), slice(5, 8)
    assert fcd_mask("none", t, c, g) is None
    a = fcd_mask("A", t, c, g)
    assert a.shape == (8, 8) and a.dtype == torch.bool
    assert not a[T, C].any() and not a[C, T].any()
    assert a[T, T].all() and a[T, G].all() and a[C, C].all() and a[C, G].all() and a[G].all()
    b = fcd_mask("B", t, c, g)
    assert not b[G, C].any() and b[G, T].all() and b[G, G].all()
    assert torch.equal(b[:5], a[:5])
    cm = fcd_mask("C", t, c, g)
    assert torch.equal(cm[C, C], torch.eye(3, dtype=torch.bool))  # only each token's own key
    assert not cm[C, T].any() and cm[C, G].all() and torch.equal(cm[G], a[G]) and torch.equal(cm[T], a[T])
    for variant in "ABC":
        assert fcd_mask(variant, t, c, g).any(dim=1).all(), f"{variant}: a query row with no key"
    # C without the diagonal would leave a condition row empty once the target is also cut off:
    assert fcd_mask("C", 0, 3, 0).any(dim=1).all()
    with pytest.raises(ValueError, match="known variants: A, B, C, none"):
        fcd_mask("D", t, c, g)


@torch.no_grad()
def test_masks_reach_attention(tiny_cogvideox_dir, batch):
    """B cuts the target's only path to the condition: the prediction ignores it; A does not."""
    other = batch["condition"] + torch.randn_like(batch["condition"])
    for variant, ignores in (("A", False), ("B", True), ("C", False)):
        _, model, tokenizer = _fresh(tiny_cogvideox_dir, variant)
        same = torch.allclose(
            _predict(model, tokenizer, batch), _predict(model, tokenizer, batch, condition=other), atol=1e-6
        )
        assert same == ignores, variant


def test_trainable_parameters_are_exactly_lora_on_sc_adaln_and_attention_plus_uce(tiny_cogvideox_dir):
    _, model, _ = _fresh(tiny_cogvideox_dir, "A")
    model.add_lora(rank=4, alpha=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {"uce.keyword_proj.weight", "uce.keyword_proj.bias", "uce.task_bias"}
    for i in range(len(model.transformer.transformer_blocks)):
        modules = [f"norm{k}.linear_{b}" for k in (1, 2) for b in ("text", "condition", "target")]
        modules += ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0"]
        for m in modules:
            for ab in ("A", "B"):
                expected.add(f"transformer.transformer_blocks.{i}.{m}.lora_{ab}.default.weight")
    assert trainable == expected
    lora_a = model.transformer.transformer_blocks[0].attn1.to_q.lora_A["default"]
    assert lora_a.out_features == 4


@torch.no_grad()
def test_keyword_missing_counts_and_contributes_nothing(tiny_cogvideox_dir, batch):
    _, model, tokenizer = _fresh(tiny_cogvideox_dir, "none")
    torch.nn.init.normal_(model.uce.keyword_proj.weight)
    torch.nn.init.normal_(model.uce.task_bias)
    keyword = model.uce.keyword_mask(tokenizer, batch["ids"], ["Astronaut", "dog"])  # case-insensitive; no dog
    assert model.uce.counts == {"samples": 2, "keyword_missing": 1}
    assert keyword[0].sum() == 1 and not keyword[1].any()
    conditioned = model.condition(batch["condition"], batch["text"], keyword, model.uce.task_ids(TASKS))
    assert torch.equal(conditioned[1], batch["condition"][1])
    assert not torch.allclose(conditioned[0], batch["condition"][0])


def test_keyword_spanning_several_tokens(tiny_cogvideox_dir):
    from train.realgeneral.uce import find_keyword

    tokenizer = load_components(str(tiny_cogvideox_dir))["tokenizer"]
    ids = tokenizer("a teddy bear and a bear, a Teddy Bear.").input_ids
    assert find_keyword(tokenizer, ids, "teddy bear") == [1, 2, 8, 9]


def test_unknown_task_names_the_known_ones(tiny_cogvideox_dir):
    _, model, _ = _fresh(tiny_cogvideox_dir, "A")
    with pytest.raises(KeyError, match="unknown task 'cany'.*known tasks: canny, reference"):
        model.uce.task_ids(["canny", "cany"])


# ---------------------------------------------------------------------------- CogVideoX 1.0 layout
@pytest.fixture(scope="module")
def tiny_cogvideox_10_dir(tmp_path_factory):
    """CogVideoX-5B (1.0) layout: no temporal patching, so each image is one latent frame."""
    from train.realgeneral.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny_cogvideox_10"), version="1.0")


@torch.no_grad()
def test_cogvideox_10_layout_is_one_latent_frame_per_image_and_identity_at_init(tiny_cogvideox_10_dir, batch):
    parts = load_components(str(tiny_cogvideox_10_dir))
    base = parts["transformer"]
    assert base.config.patch_size_t is None
    reference = copy.deepcopy(base)
    model = RealGeneralModel(base, TASKS, "none")
    assert model.frames_per_image == 1  # condition, target = two latent frames = two token frames
    model.add_lora(rank=4, alpha=4)
    b = {**batch, "text": encode_text(parts["text_encoder"], batch["ids"])}
    theirs = _base_prediction(reference, model, b, b["condition"])
    ours = _predict(model, parts["tokenizer"], b)
    assert ours.shape == b["target"].shape and torch.equal(ours, theirs)
    # Frame 2's output depends on frame 1 through attention (the two frames are not fused).
    other = b["condition"] + torch.randn_like(b["condition"])
    assert not torch.allclose(_predict(model, parts["tokenizer"], b, condition=other), ours)


def test_cogvideox_10_trains_validates_and_generates(tiny_cogvideox_10_dir, annotated_shards, tmp_path):
    from pathlib import Path

    from train.common.config import load_config
    from train.realgeneral.infer import generate
    from train.realgeneral.recipe import CogVideoXConfig, train

    folder, manifest = annotated_shards
    yaml = Path(__file__).resolve().parents[1] / "configs/train/cogvideox-tiny.yaml"
    cfg = load_config(CogVideoXConfig, yaml, [
        f"model.pretrained={tiny_cogvideox_10_dir}", "model.build_tiny=false", f"data.shards={folder}",
        f"data.manifest={manifest}", f"train.out_dir={tmp_path / 'run'}", "train.tensorboard=false",
        "train.max_steps=3", "train.checkpoint_every=0", "validation.every=3", "validation.steps=2"])
    result = train(cfg)
    assert len(result["losses"]) == 3 and all(np.isfinite(result["losses"]))
    lora_b = result["model"].transformer.transformer_blocks[0].attn1.to_q.lora_B["default"].weight
    assert lora_b.abs().sum() > 0
    pngs = list((tmp_path / "run" / "validation" / "step_00000003").glob("*.cell.png"))
    assert pngs  # the 1.0 layout through train.infer_cogvideox's sampler too
    image = generate(result["parts"], result["model"], np.zeros((32, 32, 3), np.uint8), "a photo of the cat", "cat",
                     "canny", steps=2, seed=1)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
