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
the rewrite prompt). Every architecture is made from one `Shapes`: `TINY` for these
folders, `FULL` (the real models' sizes, random weights) for the GPU benchmark, so that
widths that must agree across models (the IP-Adapter and the UNet, Redux's output and
FLUX's text width, the ControlNet's downscale and the VAE's) agree by construction. The
tiny VAEs have two blocks, a downscale of 2 (the real 8): the FLUX packing and the
ControlNet conditioning path then run the same code at s = 2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from annotators.tiny_models import tiny_model

CLIP_MAX = 77


@dataclass(frozen=True)
class Shapes:
    """Sizes of the generative stages' models. Text/vision encoders are
    (hidden, intermediate, layers, heads); vision ones add (image side, patch)."""

    unet: dict = field(default_factory=dict)  # UNet2DConditionModel kwargs but the text widths
    sdxl_time: int = 256  # addition_time_embed_dim
    sdxl_clip_l: tuple = (768, 3072, 12, 12)
    sdxl_clip_g: tuple = (1280, 5120, 32, 20)  # its projection has the same width
    vae_channels: tuple = (128, 256, 512, 512)  # SDXL's and FLUX's VAE alike
    vae_layers: int = 2
    vae_groups: int = 32
    controlnet: tuple = (16, 32, 96, 256)  # conditioning embedding: a downscale of 8
    ip_vision: tuple = (1664, 8192, 48, 16, 224, 14)  # OpenCLIP ViT-bigG/14
    ip_embed: int = 1280  # its projection: what the IP-Adapter's image_proj reads
    flux: dict = field(default_factory=dict)  # FluxTransformer2DModel kwargs but channels
    flux_latent: int = 16
    flux_clip: tuple = (768, 3072, 12, 12)  # CLIP-L: the pooled projection
    t5: tuple = (4096, 10240, 24, 64, 64)  # d_model, d_ff, layers, heads, d_kv
    siglip: tuple = (1152, 4304, 27, 16, 384, 14)  # SigLIP so400m/14 at 384


FULL = Shapes(
    unet=dict(sample_size=128, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                 "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
              block_out_channels=(320, 640, 1280), layers_per_block=2, norm_num_groups=32,
              attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10)),
    flux=dict(num_layers=19, num_single_layers=38, attention_head_dim=128,
              num_attention_heads=24, axes_dims_rope=(16, 56, 56)))

# SDXL's block structure in miniature: the deepest up block (up.block_0, where InstantStyle
# injects the style) holds layers_per_block + 1 = 3 cross-attentions, as in SDXL.
TINY = Shapes(
    unet=dict(sample_size=16, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(8, 16),
              layers_per_block=2, norm_num_groups=4, attention_head_dim=(2, 2),
              transformer_layers_per_block=(1, 1)),
    sdxl_time=8, sdxl_clip_l=(16, 32, 2, 2), sdxl_clip_g=(16, 32, 2, 2), vae_channels=(4, 8),
    vae_layers=1, vae_groups=4, controlnet=(8, 16), ip_vision=(16, 32, 1, 2, 32, 8),
    ip_embed=16, flux=dict(num_layers=1, num_single_layers=1, attention_head_dim=16,
                           num_attention_heads=2, axes_dims_rope=(4, 4, 8)),
    flux_latent=4, flux_clip=(32, 64, 2, 2), t5=(32, 64, 1, 4, 8), siglip=(16, 32, 1, 2, 32, 8))


def _words() -> list[str]:
    from annotators.rewrite import prompt_words
    from graph200k.fixtures import SUBJECTS
    from graph200k.nodes import NODE_TYPES

    text = [p for n in NODE_TYPES.values() for s in n.slots for p in s.phrases]
    text += [f"{item} {cat} {d0} {d1}" for _, item, cat, d0, d1 in SUBJECTS]
    text += [prompt_words()]
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


def clip_tokenizer():
    return word_tokenizer(["<|startoftext|>", "<|endoftext|>", "<unk>"], CLIP_MAX,
                          "<|startoftext|>", "<|endoftext|>", "<|endoftext|>", "<unk>")


def t5_tokenizer():
    return word_tokenizer(["<pad>", "</s>", "<unk>"], 512, None, "</s>", "<pad>", "<unk>")


def clip_text(tokenizer, dims: tuple, with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    hidden, ff, layers, heads = dims
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=ff,
                            num_hidden_layers=layers, num_attention_heads=heads,
                            max_position_embeddings=CLIP_MAX, projection_dim=hidden,
                            bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def vae(shapes: Shapes, latent: int, **kw):
    from diffusers import AutoencoderKL

    n = len(shapes.vae_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * n,
                         up_block_types=["UpDecoderBlock2D"] * n,
                         block_out_channels=list(shapes.vae_channels), layers_per_block=shapes.vae_layers,
                         latent_channels=latent, norm_num_groups=shapes.vae_groups, **kw)


# -- SDXL + ControlNet + IP-Adapter (instantstyle) -------------------------------------
def sdxl_unet(shapes: Shapes):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        in_channels=4, out_channels=4, cross_attention_dim=shapes.sdxl_clip_l[0] + shapes.sdxl_clip_g[0],
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=shapes.sdxl_time,
        projection_class_embeddings_input_dim=6 * shapes.sdxl_time + shapes.sdxl_clip_g[0],
        **shapes.unet)


def sdxl_base(shapes: Shapes, unet=None) -> dict:
    """The components of stabilityai/stable-diffusion-xl-base-1.0."""
    from diffusers import EulerDiscreteScheduler

    tok, tok2 = clip_tokenizer(), clip_tokenizer()
    return dict(vae=vae(shapes, 4, scaling_factor=0.13025, force_upcast=True),
                text_encoder=clip_text(tok, shapes.sdxl_clip_l, False),
                text_encoder_2=clip_text(tok2, shapes.sdxl_clip_g, True), tokenizer=tok,
                tokenizer_2=tok2, unet=unet if unet is not None else sdxl_unet(shapes),
                scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                                 beta_schedule="scaled_linear", steps_offset=1,
                                                 timestep_spacing="leading"))


def sdxl_controlnet(unet, shapes: Shapes):
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=shapes.controlnet)


def ip_image_encoder(shapes: Shapes):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    hidden, ff, layers, heads, side, patch = shapes.ip_vision
    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=ff, num_hidden_layers=layers,
        num_attention_heads=heads, image_size=side, patch_size=patch, projection_dim=shapes.ip_embed))


def ip_adapter_state(unet, image_embed_dim: int, tokens: int = 4) -> dict:
    """A random IP-Adapter (plain, `tokens` image tokens) state dict matching `unet`, in the
    original checkpoints' naming: `image_proj.*` and `ip_adapter.{1, 3, 5, ...}.to_{k,v}_ip`
    for each cross-attention, in the UNet's processor order."""
    import torch

    cross = unet.config.cross_attention_dim
    channels = list(unet.config.block_out_channels)
    device, dtype = unet.device, unet.dtype
    state = {"image_proj.proj.weight": torch.randn(tokens * cross, image_embed_dim) * 0.02,
             "image_proj.proj.bias": torch.zeros(tokens * cross),
             "image_proj.norm.weight": torch.ones(cross),
             "image_proj.norm.bias": torch.zeros(cross)}
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
            state[f"ip_adapter.{index}.{proj}.weight"] = torch.randn(hidden, cross) * 0.02
        index += 2
    return {k: v.to(device, dtype) for k, v in state.items()}


@tiny_model("sdxl")
def build_sdxl(folder: Path, seed: int) -> Path:
    from diffusers import StableDiffusionXLPipeline

    StableDiffusionXLPipeline(**sdxl_base(TINY)).save_pretrained(folder, safe_serialization=True)
    return folder


@tiny_model("sdxl-controlnet")
def build_sdxl_controlnet(folder: Path, seed: int) -> Path:
    sdxl_controlnet(sdxl_unet(TINY), TINY).save_pretrained(folder, safe_serialization=True)
    return folder


@tiny_model("ip-adapter-sdxl")
def build_ip_adapter(folder: Path, seed: int) -> Path:
    """h94/IP-Adapter's layout: `sdxl_models/ip-adapter_sdxl.safetensors` (see
    `ip_adapter_state`) and the CLIP vision encoder it reads in `sdxl_models/image_encoder/`."""
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor

    root = folder / "sdxl_models"
    ip_image_encoder(TINY).save_pretrained(root / "image_encoder", safe_serialization=True)
    side = TINY.ip_vision[4]
    CLIPImageProcessor(size=side, crop_size=side).save_pretrained(root / "image_encoder")
    state = ip_adapter_state(sdxl_unet(TINY), TINY.ip_embed)
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "ip-adapter_sdxl.safetensors"))
    return folder


# -- FLUX.1 Depth / Fill, Redux (reduxstyle, filledit, depthedit) ------------------------
FILL, CONTROL = "fill", "control"


def flux_components(shapes: Shapes, kind: str) -> dict:
    """FluxControlPipeline (`control`, FLUX.1-Depth-dev) or FluxFillPipeline (`fill`)
    components: the transformer reads the packed latents (4 x latent channels) plus the
    packed depth latents (control) or the masked-image latents and the mask folded to
    4 * s^2 channels, s the VAE's downscale (fill)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    packed = 4 * shapes.flux_latent
    s = 2 ** (len(shapes.vae_channels) - 1)
    in_channels = 2 * packed if kind == CONTROL else 2 * packed + 4 * s * s
    clip_tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    d_model, d_ff, layers, heads, d_kv = shapes.t5
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tok), d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=layers,
        num_heads=heads, relative_attention_num_buckets=32 if layers > 1 else 8, pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0, feed_forward_proj="gated-gelu",
        is_encoder_decoder=False, use_cache=False))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=in_channels, out_channels=packed, guidance_embeds=True,
        joint_attention_dim=d_model, pooled_projection_dim=shapes.flux_clip[0], **shapes.flux)
    # FLUX's VAE: no quant convs, latents normalised with a shift and a scale.
    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True,
                                                  base_shift=0.5, max_shift=1.15,
                                                  base_image_seq_len=256, max_image_seq_len=4096),
        vae=vae(shapes, shapes.flux_latent, use_quant_conv=False, use_post_quant_conv=False,
                shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=clip_text(clip_tok, shapes.flux_clip, False), tokenizer=clip_tok,
        text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer)


def redux_components(shapes: Shapes) -> dict:
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    hidden, ff, layers, heads, side, patch = shapes.siglip
    return dict(
        image_encoder=SiglipVisionModel(SiglipVisionConfig(
            hidden_size=hidden, intermediate_size=ff, num_hidden_layers=layers,
            num_attention_heads=heads, image_size=side, patch_size=patch)),
        feature_extractor=SiglipImageProcessor(size={"height": side, "width": side}),
        image_embedder=ReduxImageEncoder(redux_dim=hidden, txt_in_features=shapes.t5[0]))


@tiny_model("flux-depth")
def build_flux_depth(folder: Path, seed: int) -> Path:
    from diffusers import FluxControlPipeline

    FluxControlPipeline(**flux_components(TINY, CONTROL)).save_pretrained(folder, safe_serialization=True)
    return folder


@tiny_model("flux-fill")
def build_flux_fill(folder: Path, seed: int) -> Path:
    from diffusers import FluxFillPipeline

    FluxFillPipeline(**flux_components(TINY, FILL)).save_pretrained(folder, safe_serialization=True)
    return folder


@tiny_model("flux-redux")
def build_flux_redux(folder: Path, seed: int) -> Path:
    from diffusers import FluxPriorReduxPipeline

    FluxPriorReduxPipeline(**redux_components(TINY)).save_pretrained(folder, safe_serialization=True)
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
