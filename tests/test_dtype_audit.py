"""Autocast dtype audit of the two training forwards under bf16 mixed precision
(tests/dtype_audit.py): no float64 anywhere but where diffusers builds RoPE frequencies,
every matmul, convolution and attention in bf16, float32 only in the ops listed below.

What this proves and what not: the forwards run on fake CUDA tensors under CUDA autocast
itself (`cuda_autocast`: the GPU's own cast policy, applied by the AutocastCUDA dispatch
key of the fake tensors; CPU autocast would be another policy with other op lists), so the
dtype every op receives is the one it would receive on a GPU. It does not cover backward
passes (fake CUDA autograd needs a driver), FSDP's mixed-precision casts (FSDP2 is not run
here), or which attention kernel a GPU picks (fake tensors have no kernels: attention is
recorded where it is called, with autocast's cast applied).
"""

from __future__ import annotations

import pytest
import torch

import fake_steps
from dtype_audit import DtypeAudit
from fake_cuda import FakeCuda, cuda_autocast

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BF16 = torch.bfloat16

# float32 on purpose, op by op (module class, ops):
FILL_FP32 = {
    # norms: autocast runs layer_norm in fp32 and diffusers' RMSNorm upcasts; AdaLN modulates
    # the fp32 norm output, so the residual stream and its gates are fp32 too (elementwise)
    "LayerNorm": {"native_layer_norm"},
    "RMSNorm": {"_fused_rms_norm"},
    "AdaLayerNormZero": {"add", "mul"},
    "AdaLayerNormZeroSingle": {"add", "mul"},
    "AdaLayerNormContinuous": {"add", "mul"},
    "FluxTransformerBlock": {"add", "mul"},
    # sinusoidal timestep embedding
    "Timesteps": {"cos", "sin", "exp", "div", "mul"},
    # RoPE: tables (FluxPosEmbed) and their rotation of q and k (FluxAttention), fp32 by design
    "FluxPosEmbed": {"mul"},
    "FluxAttention": {"mul", "neg", "add"},
    # outside the model: timestep sampling (flux_shift), noise, the interpolation, the loss
    "-": {"randn", "randn_like", "sigmoid", "exp", "reciprocal", "rsub", "sub", "add", "mul", "div", "pow", "mean",
          "sum", "clamp"},
}
# float64: diffusers' get_1d_rotary_pos_embed computes RoPE frequencies in float64 on CUDA
# (then casts the tables to fp32): tiny (positions x dim/2), kept
FILL_FP64 = {"FluxPosEmbed": {"cos", "sin", "mul", "div", "pow", "reciprocal"}}

REALGENERAL_FP32 = {
    "LayerNorm": {"native_layer_norm"},
    "GroupNorm": {"native_group_norm"},  # the VAE's (autocast: fp32)
    "AdaLayerNorm": {"add", "mul"},
    "SeparatedConditionAdaLN": {"add", "mul"},
    "Timesteps": {"cos", "sin", "exp", "div", "mul"},
    "Attention": {"mul", "neg", "add"},  # RoPE rotation of q and k
    # RoPE tables (get_3d_rotary_pos_embed) and the FCD mask, built in the model's forward
    "RealGeneralModel": {"cos", "sin", "pow", "reciprocal", "div", "mul", "add"},
    # UCE: trainable fp32 weights; the keyword-mean of the text embedding
    "UnifiedConditionalEmbedding": {"add", "mul", "div", "sum", "clamp", "gt"},
    # T5's RMS norm (in its own module class, named T5LayerNorm), the VAE's SiLU after
    # GroupNorm's fp32 output, sampling the latent, noising, the loss
    "T5LayerNorm": {"pow", "mean", "add", "rsqrt", "mul"},
    "T5Attention": {"div", "log", "mul"},  # relative-position buckets: float math on positions
    "SiLU": {"silu"},  # on fp32 inputs: the time embedding, GroupNorm's output in the VAE
    "-": {"randn", "exp", "log", "mul", "add", "sub", "rsub", "div", "pow", "mean", "mse_loss", "rsqrt", "silu"},
}


def _unexpected(audit: DtypeAudit, dtype, allowed: dict) -> list:
    return sorted((module, op) for op, module in audit.ops_in(dtype) if op not in allowed.get(module, set()))


def _check(audit: DtypeAudit, fp32: dict, fp64: dict) -> None:
    assert audit.matmuls and audit.attention
    wrong = [(op, module, dtypes) for op, module, dtypes in audit.matmuls if set(dtypes) != {BF16}]
    assert not wrong, f"matmuls / convolutions not in bf16: {wrong[:5]}"
    assert {dtypes for _, dtypes in audit.attention} == {(BF16, BF16, BF16)}
    assert not _unexpected(audit, torch.float64, fp64), "float64 ops"
    assert not _unexpected(audit, torch.float32, fp32), "float32 ops not on the list"
    assert not audit.ops_in(torch.float16)


@pytest.fixture(scope="module")
def fill_transformer(tiny_fill_dir):
    return fake_steps.fill_transformer(tiny_fill_dir)


def _fill_audit(transformer, layouts) -> DtypeAudit:
    batch = fake_steps.fill_batch(transformer, layouts)
    with FakeCuda(transformer) as gpu, cuda_autocast(BF16), DtypeAudit(transformer) as audit:
        fake_steps.fill_step(transformer, batch, gpu)
    return audit


@pytest.mark.parametrize("layouts", [fake_steps.SHARED, fake_steps.MIXED], ids=["shared", "per_sample"])
def test_fill_forward_computes_in_bf16_but_the_listed_ops(fill_transformer, layouts):
    audit = _fill_audit(fill_transformer, layouts)
    try:
        _check(audit, FILL_FP32, FILL_FP64)
    except AssertionError:
        print("float32:", _unexpected(audit, torch.float32, FILL_FP32))
        print("float64:", _unexpected(audit, torch.float64, FILL_FP64))
        raise


def test_the_audit_sees_a_float32_matmul(fill_transformer):
    """An fp32 matmul is found: autocast switched off around the output projection, its input
    and weight in fp32 (what a hand-written `torch.autocast(enabled=False)` would do)."""
    import torch.nn.functional as F

    linear = getattr(fill_transformer.proj_out, "base_layer", fill_transformer.proj_out)

    def fp32_linear(x):
        with torch.autocast("cuda", enabled=False):
            return F.linear(x.float(), linear.weight.float(), linear.bias.float())

    linear.forward = fp32_linear
    try:
        with pytest.raises(AssertionError, match="not in bf16"):
            _check(_fill_audit(fill_transformer, fake_steps.SHARED), FILL_FP32, FILL_FP64)
    finally:
        del linear.forward


def _lora_casts(audit: DtypeAudit) -> list:
    """LoRA layers whose lora_A gets another dtype than the layer's input: peft's cast of
    every LoRA input to the (fp32) LoRA weights' dtype: a copy of each activation in fp32,
    which autocast casts back to bf16 for the matmul anyway."""
    assert audit.lora_inputs
    return [(name, x, a) for name, x, a in audit.lora_inputs if x != a]


def test_the_lora_check_passes_without_peft_s_input_cast(fill_transformer):
    from peft.helpers import disable_input_dtype_casting

    with disable_input_dtype_casting(fill_transformer):
        audit = _fill_audit(fill_transformer, fake_steps.SHARED)
    assert not _lora_casts(audit)
    _check(audit, FILL_FP32, FILL_FP64)


def test_fill_lora_layers_see_their_inputs_dtype(fill_transformer):
    assert not _lora_casts(_fill_audit(fill_transformer, fake_steps.SHARED))


# -- RealGeneral / CogVideoX ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def realgeneral(tiny_cogvideox_dir):
    return fake_steps.realgeneral(tiny_cogvideox_dir)


def _realgeneral_audit(parts, model, monkeypatch) -> DtypeAudit:
    from train.realgeneral.recipe import diffusion_loss

    with fake_steps.realgeneral_on_fake_cuda(parts, model, monkeypatch), \
            DtypeAudit(parts["text_encoder"], parts["vae"], model) as audit:
        diffusion_loss(parts, model, fake_steps.pairs(), torch.Generator().manual_seed(0))
    return audit


def test_realgeneral_forward_computes_in_bf16_but_the_listed_ops(realgeneral, monkeypatch):
    audit = _realgeneral_audit(*realgeneral, monkeypatch)
    try:
        _check(audit, REALGENERAL_FP32, {})
    except AssertionError:
        print("float32:", _unexpected(audit, torch.float32, REALGENERAL_FP32))
        print("float64:", _unexpected(audit, torch.float64, {}))
        raise


def test_realgeneral_lora_layers_see_their_inputs_dtype(realgeneral, monkeypatch):
    assert not _lora_casts(_realgeneral_audit(*realgeneral, monkeypatch))
