"""Tiny CLIP and DINOv2 (the quality stage's metric nets; `train.evaluate` builds its own
tiny `clip` / `dino` folders with these same builders)."""

from __future__ import annotations

from pathlib import Path

from annotators.tiny_models import tiny_model


def byte_clip_tokenizer():
    """CLIP's byte-level BPE with the 256 byte symbols and no merges: the real tokenizer class,
    a vocabulary small enough to build offline."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {tok: i for i, tok in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[])


@tiny_model("clip")
def build_clip(folder: Path, seed: int = 0) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = byte_clip_tokenizer()
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id},
        vision_config={"image_size": 64, "patch_size": 16, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2},
        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def dino_processor(resize: int, crop: int):
    from transformers import BitImageProcessor

    # DINOv2's own preprocessing (BitImageProcessor: resize, centre crop, ImageNet norm) at a tiny size.
    return BitImageProcessor(size={"shortest_edge": resize}, crop_size={"height": crop, "width": crop},
                             image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                             do_convert_rgb=True, resample=3)


@tiny_model("dino")
def build_dino(folder: Path, seed: int = 0) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                          patch_size=14, image_size=56)
    Dinov2Model(config).save_pretrained(folder)
    dino_processor(64, 56).save_pretrained(folder)
    return folder
