"""A sample's greedy answer does not depend on the batch it lands in (the caption rewriter
and the grounding VLM): no generate call ever pads a prompt, and a prompt alone answers as
it does beside longer and shorter ones (annotators.generation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from annotate_helpers import stage_samples  # noqa: E402
from annotators import tiny_models  # noqa: E402
from annotators.base import ConfigError  # noqa: E402
from annotators.generation import ONE, SAME_LENGTH, prompt_groups  # noqa: E402
from annotators.rewrite import FILL, VLMOptions, VLMRewriter, rewrite_prompt  # noqa: E402

MODES = (ONE, SAME_LENGTH)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-vlms")
    names = ["qwen2-vl-rewrite", "qwen2_vl", "sam2"]
    built = tiny_models.build(out, names, seed=0, log=lambda *_: None)
    return {n: Path(p) for n, p in built.items()}


def spy(model):
    """Record the attention mask of every generate call of `model`."""
    calls, real = [], model.generate

    def generate(*args, **kwargs):
        calls.append(kwargs["attention_mask"].clone())
        return real(*args, **kwargs)

    model.generate = generate
    return calls


def test_prompt_groups():
    assert prompt_groups([5, 7, 5, 9], ONE) == [[0], [1], [2], [3]]
    assert prompt_groups([5, 7, 5, 9, 5], SAME_LENGTH) == [[0, 2, 4], [1], [3]]
    assert prompt_groups([5, 5, 5], SAME_LENGTH, max_batch=2) == [[0, 1], [2]]
    with pytest.raises(ValueError, match="one, same_length"):
        prompt_groups([1], "padded")
    with pytest.raises(ConfigError, match="rewrite_batching"):
        VLMOptions(rewrite_batching="padded")


@pytest.mark.parametrize("batching", MODES)
def test_a_rewrite_is_the_same_alone_and_beside_longer_and_shorter_prompts(tiny, batching):
    rewriter = VLMRewriter("filledit", str(tiny["qwen2-vl-rewrite"]), None, torch.device("cpu"),
                           torch.bfloat16, 24, batching=batching)
    prompts = [rewrite_prompt(FILL, "dog", "a dog", 1),
               rewrite_prompt(FILL, "cup", "a red cup on a table", 2),
               rewrite_prompt(FILL, "mug", "a red mug on a table", 2),  # as long as the cup's
               rewrite_prompt(FILL, "rocket", "a tall white rocket on a launch pad under a "
                              "clear blue sky beside its tower", 3)]
    tok = rewriter.tokenizer
    lengths = [len(tok(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"]) for p in prompts]
    assert lengths[1] == lengths[2] and len(set(lengths)) == 3
    alone = [rewriter.generate([p])[0] for p in prompts]
    calls = spy(rewriter.model)
    assert rewriter.generate(prompts) == alone
    assert all(bool(mask.all()) for mask in calls)  # never a padded prompt
    rows = sorted(mask.shape[0] for mask in calls)
    assert rows == ([1, 1, 1, 1] if batching == ONE else [1, 1, 2])  # same length: one call


@pytest.mark.parametrize("batching", MODES)
def test_grounding_answers_are_the_same_alone_and_in_a_mixed_batch(tiny, batching):
    pytest.importorskip("sam2", reason="the sam2 extra (docs/annotators-masks.md)")
    from annotators.grounded_mask import GroundedMask

    stage = GroundedMask({"model": str(tiny["sam2"]), "grounding_model": str(tiny["qwen2_vl"]),
                          "max_new_tokens": 12, "device": "cpu",
                          "generation_batching": batching})
    stage.ensure_loaded()
    samples = stage_samples(3, 64)
    images = [s.image() for s in samples]
    images[1] = np.ascontiguousarray(np.tile(images[1], (2, 1, 1)))  # more image tokens
    questions = ["Find the cup.", "Find every object in this photo, each with its box.",
                 stage.question(samples[2])]
    alone = [stage.generate([im], [q]) for im, q in zip(images, questions)]
    calls = spy(stage.vlm)
    answers, sizes = stage.generate(images, questions)
    assert answers == [a[0][0] for a in alone] and sizes == [a[1][0] for a in alone]
    assert all(bool(mask.all()) for mask in calls) and len(calls) == 3
