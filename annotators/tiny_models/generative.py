"""Tiny random pipelines of the generative stages (instantstyle, reduxstyle, filledit,
depthedit), in the layout of the repos the production config names.

    sdxl               stabilityai/stable-diffusion-xl-base-1.0   (UNet, VAE, 2 CLIP text encoders)
    sdxl-controlnet    diffusers/controlnet-depth-sdxl-1.0        (ControlNetModel)
    ip-adapter-sdxl    h94/IP-Adapter                             (sdxl_models/ip-adapter_sdxl.safetensors
                                                                   + sdxl_models/image_encoder/)
    flux-depth         black-forest-labs/FLUX.1-Depth-dev         (FluxControlPipeline)
    flux-fill          black-forest-labs/FLUX.1-Fill-dev          (FluxFillPipeline)
    flux-redux         black-forest-labs/FLUX.1-Redux-dev         (SigLIP + ReduxImageEncoder)
    qwen2-vl-rewrite   Qwen/Qwen2-VL-7B-Instruct                  (caption rewriter)

Nothing comes from the hub: configs are written here and every tokenizer is built with
`tokenizers` from a small word list (the Graph200K phrases, the fixtures' descriptions,
the rewrite prompt). Shapes that must agree across folders (the IP-Adapter and the UNet,
Redux's output and FLUX's text width, the ControlNet's downscale and the VAE's) come from
the constants below. The VAEs have two blocks, a downscale of 2 (the real 8): the FLUX
packing and the ControlNet conditioning path then run with the same code at s = 2.
"""

from __future__ import annotations

import re
from pathlib import Path

from annotators.tiny_models import tiny_model

SDXL_TEXT = 16  # each CLIP text encoder's width; the UNet's cross-attention is twice that
SDXL_CROSS = 2 * SDXL_TEXT
SDXL_TIME = 8  # addition_time_embed_dim: 6 time ids of 8 + the pooled text embedding
IP_IMAGE_EMBED = 16  # the CLIP vision projection the IP-Adapter's image_proj reads
FLUX_TEXT = 32  # T5 width = FLUX joint_attention_dim = Redux's txt_in_features
SIGLIP = 16  # SigLIP width = Redux's redux_dim
CLIP_MAX = 77
IMAGE_SIZE = 32  # CLIP / SigLIP vision input side


def _unet_config() -> dict:
    # SDXL's block structure in miniature: the deepest up block (up.block_0, where
    # InstantStyle injects the style) holds layers_per_block + 1 = 3 cross-attentions.
    return dict(sample_size=16, in_channels=4, out_channels=4,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                block_out_channels=(8, 16), layers_per_block=2, norm_num_groups=4,
                cross_attention_dim=SDXL_CROSS, attention_head_dim=(2, 2),
                transformer_layers_per_block=(1, 1), use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME,
                projection_class_embeddings_input_dim=6 * SDXL_TIME + SDXL_TEXT)


def _words() -> list[str]:
    from graph200k.fixtures import SUBJECTS
    from graph200k.nodes import NODE_TYPES

    text = [p for n in NODE_TYPES.values() for s in n.slots for p in s.phrases]
    text += [f"{item} {cat} {d0} {d1}" for _, item, cat, d0, d1 in SUBJECTS]
    from annotators.rewrite import DEFAULT_SCENES, prompt_words

    text += list(DEFAULT_SCENES) + [prompt_words()]
    words = set()
    for t in text:
        words.update(re.findall(r"\w+|[^\w\s]", t.lower()))
    words.update("abcdefghijklmnopqrstuvwxyz0123456789")
    return sorted(words)


def word_tokenizer(specials: list[str], max_length: int, bos: str | None, eos: str, pad: str,
                   unk: str, template: bool = True):
    """A word-level `PreTrainedTokenizerFast` (lowercased, split on whitespace and
    punctuation); `template` wraps a text in bos ... eos as CLIP and T5 do."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(specials + [w for w in _words() if w not in specials])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    if template:
        single = f"{bos} $A {eos}" if bos else f"$A {eos}"
        ids = [(eos, vocab[eos])] + ([(bos, vocab[bos])] if bos else [])
        tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=ids)
    kwargs = dict(eos_token=eos, pad_token=pad, unk_token=unk, model_max_length=max_length)
    if bos:
        kwargs["bos_token"] = bos
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def _clip_tokenizer():
    return word_tokenizer(["<|startoftext|>", "<|endoftext|>", "<unk>"], CLIP_MAX,
                          "<|startoftext|>", "<|endoftext|>", "<|endoftext|>", "<unk>")


def _t5_tokenizer():
    return word_tokenizer(["<pad>", "</s>", "<unk>"], 512, None, "</s>", "<pad>", "<unk>")


def _clip_text(tokenizer, width: int, with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width,
                            intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=2,
                            max_position_embeddings=CLIP_MAX, projection_dim=width,
                            bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _vae(**flux):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * 2,
                         up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[4, 8],
                         layers_per_block=1, latent_channels=4, norm_num_groups=4, **flux)


@tiny_model("sdxl")
def build_sdxl(folder: Path, seed: int) -> Path:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tok, tok2 = _clip_tokenizer(), _clip_tokenizer()
    pipe = StableDiffusionXLPipeline(
        vae=_vae(scaling_factor=0.13025, force_upcast=True),
        text_encoder=_clip_text(tok, SDXL_TEXT, False),
        text_encoder_2=_clip_text(tok2, SDXL_TEXT, True), tokenizer=tok, tokenizer_2=tok2,
        unet=UNet2DConditionModel(**_unet_config()),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                         beta_schedule="scaled_linear", steps_offset=1,
                                         timestep_spacing="leading"))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@tiny_model("sdxl-controlnet")
def build_sdxl_controlnet(folder: Path, seed: int) -> Path:
    from diffusers import ControlNetModel, UNet2DConditionModel

    # Two conditioning blocks: the control image is downscaled 2x, like the tiny VAE.
    controlnet = ControlNetModel.from_unet(UNet2DConditionModel(**_unet_config()),
                                           conditioning_embedding_out_channels=(8, 16))
    controlnet.save_pretrained(folder, safe_serialization=True)
    return folder


@tiny_model("ip-adapter-sdxl")
def build_ip_adapter(folder: Path, seed: int) -> Path:
    """h94/IP-Adapter's layout: the adapter's image projection and one key/value projection
    pair per cross-attention of the UNet (numbered 1, 3, 5, ... as the original checkpoints
    are), and the CLIP vision encoder it reads in `image_encoder/`."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    root = folder / "sdxl_models"
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=8, projection_dim=IP_IMAGE_EMBED))
    encoder.save_pretrained(root / "image_encoder", safe_serialization=True)
    CLIPImageProcessor(size=IMAGE_SIZE, crop_size=IMAGE_SIZE).save_pretrained(root / "image_encoder")

    unet = UNet2DConditionModel(**_unet_config())
    channels = list(unet.config.block_out_channels)
    tokens = 4  # the plain IP-Adapter's image tokens
    state = {"image_proj.proj.weight": torch.randn(tokens * SDXL_CROSS, IP_IMAGE_EMBED) * 0.02,
             "image_proj.proj.bias": torch.zeros(tokens * SDXL_CROSS),
             "image_proj.norm.weight": torch.ones(SDXL_CROSS),
             "image_proj.norm.bias": torch.zeros(SDXL_CROSS)}
    index = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = channels[::-1][int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        for proj in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{index}.{proj}.weight"] = torch.randn(hidden, SDXL_CROSS) * 0.02
        index += 2
    save_file({k: v.contiguous() for k, v in state.items()},
              str(root / "ip-adapter_sdxl.safetensors"))
    return folder


def _flux_text_encoders():
    from transformers import T5Config, T5EncoderModel

    clip_tok, t5_tok = _clip_tokenizer(), _t5_tokenizer()
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tok), d_model=FLUX_TEXT, d_kv=8, d_ff=2 * FLUX_TEXT, num_layers=1,
        num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
        use_cache=False))
    return dict(text_encoder=_clip_text(clip_tok, FLUX_TEXT, False), tokenizer=clip_tok,
                text_encoder_2=t5, tokenizer_2=t5_tok)


def _flux_transformer(in_channels: int):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1, in_channels=in_channels, out_channels=16, num_layers=1,
        num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=FLUX_TEXT, pooled_projection_dim=FLUX_TEXT, guidance_embeds=True,
        axes_dims_rope=[4, 4, 8])


def _flux_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                           max_shift=1.15, base_image_seq_len=256,
                                           max_image_seq_len=4096)


def _flux_vae():
    # FLUX's VAE: no quant convs, latents normalised with a shift and a scale.
    return _vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
                scaling_factor=1.5035)


@tiny_model("flux-depth")
def build_flux_depth(folder: Path, seed: int) -> Path:
    from diffusers import FluxControlPipeline

    # 16 packed latent channels (4 latent x 2x2) + 16 of the packed depth latents.
    pipe = FluxControlPipeline(scheduler=_flux_scheduler(), vae=_flux_vae(),
                               transformer=_flux_transformer(32), **_flux_text_encoders())
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@tiny_model("flux-fill")
def build_flux_fill(folder: Path, seed: int) -> Path:
    from diffusers import FluxFillPipeline

    # latents 16 + masked-image latents 16 + the mask folded to 4 * s^2 = 16 (s = 2).
    pipe = FluxFillPipeline(scheduler=_flux_scheduler(), vae=_flux_vae(),
                            transformer=_flux_transformer(48), **_flux_text_encoders())
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@tiny_model("flux-redux")
def build_flux_redux(folder: Path, seed: int) -> Path:
    from diffusers import FluxPriorReduxPipeline
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    encoder = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=SIGLIP, intermediate_size=2 * SIGLIP, num_hidden_layers=1,
        num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=8))
    pipe = FluxPriorReduxPipeline(
        image_encoder=encoder,
        feature_extractor=SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        image_embedder=ReduxImageEncoder(redux_dim=SIGLIP, txt_in_features=FLUX_TEXT))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


QWEN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")


@tiny_model("qwen2-vl-rewrite")
def build_qwen2_vl(folder: Path, seed: int) -> Path:
    from transformers import GenerationConfig, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<unk>"]
    tok = word_tokenizer(specials, 2048, None, "<|im_end|>", "<|endoftext|>", "<unk>",
                         template=False)
    tok.chat_template = QWEN_TEMPLATE
    tok.padding_side = "left"
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=2048,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                          "mrope_section": [4, 2, 2]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(eos_token_id=ids["<|im_end|>"],
                                               pad_token_id=ids["<|endoftext|>"], do_sample=False)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder
