"""Tiny random FLUX.1-Fill model folder, built offline, in the diffusers layout.

``build_tiny_fill(out_dir, cfg: TinyFillConfig) -> Path`` writes ``transformer/ vae/
text_encoder/ text_encoder_2/ tokenizer/ tokenizer_2/ scheduler/ model_index.json`` so that
``train.fill`` and ``train.infer_fill`` load it through the very same
``from_pretrained(id_or_path)`` calls they use for ``black-forest-labs/FLUX.1-Fill-dev``.

Nothing is fetched from the hub: T5 / CLIP configs are built here and both tokenizers are
built with the ``tokenizers`` library from a small vocabulary made in code (the words of
the Graph200K prompt phrases + letters and digits), wrapped in ``PreTrainedTokenizerFast``.

CLI: ``python -m train.visualcloze.tiny --out out/tiny-flux-fill``
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class TinyFillConfig:
    seed: int = 0
    latent_channels: int = 4
    # Two blocks -> VAE downscale s = 2: the mask then packs into 4*s^2 = 16 channels, which
    # exercises the same (s x s) -> channel folding as the real s = 8 (256 channels).
    vae_block_out_channels: list[int] = field(default_factory=lambda: [8, 16])
    num_layers: int = 1
    num_single_layers: int = 1
    attention_head_dim: int = 16
    num_attention_heads: int = 2
    axes_dims_rope: list[int] = field(default_factory=lambda: [4, 4, 8])
    text_dim: int = 32  # T5 d_model = joint_attention_dim; CLIP hidden = pooled_projection_dim
    t5_layers: int = 2
    clip_layers: int = 2
    clip_max_length: int = 77


def _vocabulary() -> list[str]:
    from graph200k.nodes import NODE_TYPES  # the phrases prompts are made of

    words: set[str] = set()
    for node in NODE_TYPES.values():
        for slot in node.slots:
            for phrase in slot.phrases:
                words.update(re.findall(r"\w+|[^\w\s]", phrase.lower()))
    words.update("abcdefghijklmnopqrstuvwxyz0123456789")
    words.update(["image", "[", "]", ",", ".", ":", "row", "column", "grid", "the", "of", "and", "a", "in"])
    words.update(f"image{k}" for k in range(1, 17))
    return sorted(words)


def _fast_tokenizer(vocab: list[str], specials: list[str], bos: str | None, eos: str, pad: str, unk: str,
                    max_length: int):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    table = {tok: i for i, tok in enumerate(specials + [w for w in vocab if w not in specials])}
    tok = Tokenizer(models.WordLevel(table, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # T5 appends </s>; CLIP wraps in <|startoftext|> ... <|endoftext|> (pooled = first eos).
    single = (f"{bos} $A {eos}" if bos else f"$A {eos}")
    pairs = [(eos, table[eos])] + ([(bos, table[bos])] if bos else [])
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=pairs)
    kwargs = dict(eos_token=eos, pad_token=pad, unk_token=unk, model_max_length=max_length)
    if bos:
        kwargs["bos_token"] = bos
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs), table


def build_tiny_fill(out_dir: str | Path, cfg: TinyFillConfig | None = None) -> Path:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    cfg = cfg or TinyFillConfig()
    out = Path(out_dir)
    vocab = _vocabulary()
    t5_tok, t5_table = _fast_tokenizer(vocab, ["<pad>", "</s>", "<unk>"], None, "</s>", "<pad>", "<unk>", 512)
    clip_specials = ["<|startoftext|>", "<|endoftext|>", "<unk>"]
    clip_tok, clip_table = _fast_tokenizer(vocab, clip_specials, "<|startoftext|>", "<|endoftext|>",
                                           "<|endoftext|>", "<unk>", cfg.clip_max_length)

    torch.manual_seed(cfg.seed)
    d = cfg.text_dim
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_table), d_model=d, d_kv=8, d_ff=2 * d, num_layers=cfg.t5_layers, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
    ))
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_table), hidden_size=d, intermediate_size=2 * d, num_hidden_layers=cfg.clip_layers,
        num_attention_heads=4, max_position_embeddings=cfg.clip_max_length, projection_dim=d,
        bos_token_id=clip_table["<|startoftext|>"], eos_token_id=clip_table["<|endoftext|>"],
        pad_token_id=clip_table["<|endoftext|>"],
    ))
    n = len(cfg.vae_block_out_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n, block_out_channels=list(cfg.vae_block_out_channels),
        layers_per_block=1, latent_channels=cfg.latent_channels, norm_num_groups=4,
        # FLUX's VAE has no quant convs and normalises latents with shift + scale.
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )
    s = 2 ** (n - 1)
    c = cfg.latent_channels
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * c + 4 * c + 4 * s * s, out_channels=4 * c,
        num_layers=cfg.num_layers, num_single_layers=cfg.num_single_layers,
        attention_head_dim=cfg.attention_head_dim, num_attention_heads=cfg.num_attention_heads,
        joint_attention_dim=d, pooled_projection_dim=d, guidance_embeds=True,
        axes_dims_rope=list(cfg.axes_dims_rope),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    pipe = FluxFillPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok,
                            text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(build_tiny_fill(args.out, TinyFillConfig(seed=args.seed)))


if __name__ == "__main__":
    main()
