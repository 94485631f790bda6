"""Tiny models of the mask stages: SAM 2.1, the RMBG (BiRefNet) stand-in, Qwen2-VL.

- `sam2`: SAM 2.1 hiera-tiny (the smallest config) with random weights, built for 128 px
  inputs instead of 1024: `sam2.1_hiera_t.yaml` + `sam2.1_hiera_tiny.pt`, Meta's layout.
- `rmbg`: a few-layer segmentation net saved as a remote-code model folder (config.json
  with an `auto_map`, the model code beside it), the way briaai/RMBG-2.0 ships BiRefNet:
  the stage loads it through AutoModelForImageSegmentation(trust_remote_code) like the
  real one. Its code is `_birefnet_standin.py` of this package, copied into the folder.
- `qwen2_vl`: a two-layer Qwen2-VL with its processor and a byte-level BPE tokenizer
  trained here with the `tokenizers` library (no hub) on a few chat and box strings, so
  that every special token of the grounding format is a single token. Random weights:
  it answers garbage, and the stage must end in "no usable box".
- `qwen2_vl_grounding`: the same architecture, processor and tokenizer, with weights set
  (not trained) so that greedy generation answers every grounding question with one box,
  `GROUNDING_ANSWER`: the attention and MLP outputs are zero, so each position's logits
  depend on its own token only, and the embeddings and LM head chain the answer's tokens
  from the chat template's last prompt token to `<|im_end|>`. The image and the question
  pass through the real vision tower and decoder, but cannot change the answer. It is what
  lets `make annotate` with the tiny config produce `mask` and `bbox` (SAM2, random, then
  segments that box).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from annotators.tiny_models import tiny_model

SAM2_IMAGE_SIZE = 128
SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
RMBG_IMAGE_SIZE = 64
QWEN_MAX_PIXELS = 28 * 28 * 16  # 112^2: 16 merged image tokens
QWEN_MIN_PIXELS = 28 * 28 * 4

# Qwen2-VL's special tokens (names as in its tokenizer), the grounding ones included.
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                "<|image_pad|>", "<|video_pad|>")

# The chat layout of Qwen2-VL-Instruct (system turn, image placeholder inside the user
# turn, generation prompt), written as a short Jinja template.
QWEN_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
    "<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

_CORPUS = (
    "system user assistant You are a helpful assistant.",
    "Detect the main objects in the image, the subject first.",
    "<|object_ref_start|>red mug<|object_ref_end|><|box_start|>(102,250),(498,900)<|box_end|>",
    "<|object_ref_start|>wooden table<|object_ref_end|><|box_start|>(0,600),(999,999)<|box_end|>",
    "0123456789 (0,0),(999,999) cup cat astronaut rocket coffee plate person",
)


@tiny_model("sam2")
def build_sam2(folder: Path, seed: int) -> Path:
    import sam2
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    folder.mkdir(parents=True, exist_ok=True)
    cfg = OmegaConf.load(Path(sam2.__path__[0]) / SAM2_CONFIG)
    cfg.model.image_size = SAM2_IMAGE_SIZE
    net = instantiate(cfg.model, _recursive_=True)
    OmegaConf.save(cfg, folder / "sam2.1_hiera_t.yaml")
    torch.save({"model": net.state_dict()}, folder / "sam2.1_hiera_tiny.pt")
    return folder


@tiny_model("rmbg")
def build_rmbg(folder: Path, seed: int) -> Path:
    import torch  # noqa: F401  (the stand-in's module imports it)

    from annotators.tiny_models import _birefnet_standin as standin

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(standin.__file__, folder / "birefnet_standin.py")
    config = standin.BiRefNetStandInConfig(image_size=RMBG_IMAGE_SIZE, width=8)
    config.auto_map = {"AutoConfig": "birefnet_standin.BiRefNetStandInConfig",
                       "AutoModelForImageSegmentation": "birefnet_standin.BiRefNetStandIn"}
    standin.BiRefNetStandIn(config).save_pretrained(folder)
    return folder


def qwen_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(QWEN_SPECIAL),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(_CORPUS) * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", padding_side="left")


# The one answer of `qwen2_vl_grounding`, in Qwen2-VL's 0-1000 format. Its name and box
# are tokens of their own (added to that model's tokenizer), so that no token repeats
# along the answer: each token has one successor.
GROUNDING_NAME = "subject"
GROUNDING_BOX = "(150,120),(850,930)"
GROUNDING_ANSWER = (f"<|object_ref_start|>{GROUNDING_NAME}<|object_ref_end|>"
                    f"<|box_start|>{GROUNDING_BOX}<|box_end|>")


def qwen2_vl_model(tokenizer):
    """A Qwen2-VL of two small layers, its vocabulary `tokenizer`'s, and its processor."""
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                              Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor)

    ids = tokenizer.convert_tokens_to_ids
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=QWEN_MIN_PIXELS,
                                              max_pixels=QWEN_MAX_PIXELS),
        tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_CHAT_TEMPLATE)
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                             "rope_theta": 10000.0},
            bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>")),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False)
    return Qwen2VLForConditionalGeneration(config), processor


@tiny_model("qwen2_vl")
def build_qwen2_vl(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model, processor = qwen2_vl_model(qwen_tokenizer())
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "TINY.json").write_text(json.dumps({"seed": seed, "random": True}) + "\n")
    return folder


def answer_chain(tokenizer) -> list[int]:
    """The token ids from the generation prompt's last token to `<|im_end|>`: the prompt
    ends with the chat template's `<|im_start|>assistant\\n`, whatever the question."""
    prompt = tokenizer("<|im_start|>assistant\n")["input_ids"]
    answer = tokenizer(GROUNDING_ANSWER + "<|im_end|>")["input_ids"]
    chain = prompt[-1:] + answer
    if len(set(chain)) != len(chain):
        raise AssertionError(f"the grounding answer repeats a token: {chain}")
    return chain


@tiny_model("qwen2_vl_grounding")
def build_qwen2_vl_grounding(folder: Path, seed: int) -> Path:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = qwen_tokenizer()
    tokenizer.add_tokens([GROUNDING_NAME, GROUNDING_BOX])
    model, processor = qwen2_vl_model(tokenizer)
    chain = answer_chain(tokenizer)
    lm = model.model.language_model
    hidden = lm.config.hidden_size
    with torch.no_grad():
        for layer in lm.layers:  # no attention or MLP output: a token's logits are its own
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed, head = lm.embed_tokens.weight, model.lm_head.weight
        for k, (token, successor) in enumerate(zip(chain, chain[1:])):
            embed[token] = 0.0
            embed[token, k % hidden] = 1.0  # one axis per chain token
            head[successor] = 0.0
            head[successor, k % hidden] = 10.0  # ~57 after the RMS norm: above any other
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "TINY.json").write_text(json.dumps(
        {"seed": seed, "random": False, "answer": GROUNDING_ANSWER}) + "\n")
    return folder
