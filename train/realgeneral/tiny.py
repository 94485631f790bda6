"""Tiny random CogVideoX components, saved in the diffusers layout of THUDM/CogVideoX1.5-5B.

`python -m train.realgeneral.tiny OUT_DIR` writes transformer/, vae/, text_encoder/, tokenizer/,
scheduler/ so `train.cogvideox` and `train.infer_cogvideox` load them through the same
`from_pretrained(id_or_path, subfolder=...)` calls as the real model. Nothing is downloaded:
the T5 config is built here and the tokenizer is a word-level `tokenizers` model over a small
vocabulary made in code.

Shapes: heads x head dim divisible by 16 for CogVideoX's
3D RoPE; the VAE needs inputs of at least 16^2 (four levels, spatial factor 8).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

# Words the tiny tokenizer knows: what tests and the smoke config prompt with.
VOCAB_WORDS = (
    "a an the of in on with and to from is are photo photograph image picture edge edges map "
    "canny depth sketch generate make turn into keep same subject style white black red blue "
    "green background scene object astronaut cat chelsea woman man dog toy bear teddy car cup "
    "person portrait close up small large standing sitting table room outdoor studio light "
    "extract show only high quality clean detailed"
).split()

# CogVideoX1.5-5B's scheduler (scheduler/scheduler_config.json on the hub): v-prediction,
# zero-terminal-SNR betas, trailing spacing.
SCHEDULER_CONFIG = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
    set_alpha_to_one=True, snr_shift_scale=1.0, steps_offset=0, timestep_spacing="trailing",
)


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + list(dict.fromkeys(VOCAB_WORDS)) + list(".,!?'\"-:;"))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    # T5 appends </s> to every sequence; so does this one.
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


VERSIONS = ("1.5", "1.0")


def tiny_components(seed: int = 0, text_len: int = 16, version: str = "1.5"):
    """`version` "1.5": CogVideoX1.5's layout (temporal patches of 2 latent frames, no patch bias);
    "1.0": CogVideoX-5B's (no temporal patching: each image is one latent frame, patch bias)."""
    if version not in VERSIONS:
        raise ValueError(f"unknown tiny CogVideoX version {version!r}; known: {', '.join(VERSIONS)}")
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = T5EncoderModel(
        T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    )
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=2,
        down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), temporal_compression_ratio=4,
    )
    # A trained VAE's posterior is nearly deterministic; a random one has log-variance ~0, i.e.
    # latent noise as large as the latent itself, and the tiny recipe could then never fit a
    # fixed batch (measured: eval loss stuck at 0.89x its start). Start the log-variance half
    # of the encoder output at -20 (std ~5e-5).
    with torch.no_grad():
        vae.encoder.conv_out.conv.bias[vae.config.latent_channels :] = -20.0
    # CogVideoX1.5 layout (patch_size_t=2, RoPE, no patch bias) or CogVideoX-5B 1.0's
    # (patch_size_t=None, RoPE, patch bias), at toy width: 2 heads x 16 = 32.
    layout = dict(patch_size_t=2, patch_bias=False) if version == "1.5" else dict(patch_size_t=None, patch_bias=True)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=32,
        text_embed_dim=32, num_layers=2, sample_width=16, sample_height=16, sample_frames=5,
        patch_size=2, temporal_compression_ratio=4, max_text_seq_length=text_len,
        use_rotary_positional_embeddings=True, **layout,
    )
    scheduler = CogVideoXDPMScheduler(**SCHEDULER_CONFIG)
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler)


def save_tiny(out_dir: str | Path, seed: int = 0, version: str = "1.5") -> Path:
    """Write the tiny model in diffusers layout (safetensors) and return its dir."""
    import json

    out_dir = Path(out_dir)
    parts = tiny_components(seed, version=version)
    for name, component in parts.items():
        component.save_pretrained(out_dir / name)
    # model_index.json as on the hub, so the dir also opens with diffusers' CogVideoXPipeline.
    index = {"_class_name": "CogVideoXPipeline", "_diffusers_version": "0.42.1"}
    libraries = {"tokenizer": "transformers", "text_encoder": "transformers"}
    for name, component in parts.items():
        index[name] = [libraries.get(name, "diffusers"), type(component).__name__]
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", choices=VERSIONS, default="1.5")
    args = parser.parse_args(argv)
    print(save_tiny(args.out_dir, args.seed, args.version))


if __name__ == "__main__":
    main()
