"""Dtypes the memory fixes of the training recipes rely on (CPU; a GPU run only measures them).

- LoRA inputs stay in the autocast dtype (peft's float32 cast turned off), with the same loss
  and gradients as with the cast, and a bf16 base still trains without autocast.
- FSDP2 leaves forward inputs alone (`cast_forward_inputs=False`): the RoPE tables reach the
  first block in float32 as they do without FSDP.
- The Accelerator gets DDP's `gradient_as_bucket_view=True` and the collective timeout.
"""

from __future__ import annotations

import types

import pytest
import torch

from train.common.config import ConfigError, TrainConfig, check_train
from train.common.distributed import Parallel, accelerator_kwargs
from train.visualcloze.model import add_lora, load_transformer


def _inputs(model, tokens=12, text=5):
    """One sample of random Fill-transformer inputs, sized by the model's own config."""
    c, dtype, g = model.config, model.dtype, torch.Generator().manual_seed(1)
    ids = torch.stack(torch.meshgrid(torch.ones(1), torch.arange(3.0), torch.arange(tokens / 3), indexing="ij"), -1)
    return dict(hidden_states=torch.randn(1, tokens, c.in_channels, generator=g).to(dtype),
                timestep=torch.tensor([0.5], dtype=dtype), guidance=torch.tensor([1.0], dtype=dtype),
                pooled_projections=torch.randn(1, c.pooled_projection_dim, generator=g).to(dtype),
                encoder_hidden_states=torch.randn(1, text, c.joint_attention_dim, generator=g).to(dtype),
                txt_ids=torch.zeros(text, 3), img_ids=ids.reshape(-1, 3), return_dict=False)


def _lora_model(tiny_fill_dir, dtype=torch.bfloat16):
    model = load_transformer(str(tiny_fill_dir), dtype)  # the recipe's own from_pretrained path
    params = add_lora(model, rank=4, alpha=4.0)
    torch.manual_seed(2)
    with torch.no_grad():  # B = 0 at init would hide any difference the LoRA makes
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    return model, params


def _step(model, params, autocast=True):
    for p in params:
        p.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(**_inputs(model))[0].float().pow(2).mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in params]


def _lora_input_dtypes(model, step):
    seen = {}

    def record(name):  # a forward hook: it sees the input after every pre-hook (the cast) ran
        return lambda mod, args, out: seen.setdefault(name, args[0].dtype) and None

    hooks = [m.lora_A["default"].register_forward_hook(record(name))
             for name, m in model.named_modules() if hasattr(m, "lora_A")]
    try:
        step()
    finally:
        for h in hooks:
            h.remove()
    return seen


def _peft_cast(model, enabled: bool):
    for m in model.modules():
        if hasattr(m, "cast_input_dtype_enabled"):
            m.cast_input_dtype_enabled = enabled


def test_lora_reads_bf16_inputs_under_autocast_with_the_same_loss_and_gradients(tiny_fill_dir):
    model, params = _lora_model(tiny_fill_dir)
    assert all(p.dtype == torch.float32 for p in params)  # the optimizer's master weights
    seen = _lora_input_dtypes(model, lambda: _step(model, params))
    # The attention output projection reads the bf16 attention result: peft made it float32.
    assert seen["transformer_blocks.0.attn.to_out.0"] == torch.bfloat16
    assert torch.float32 not in {seen[n] for n in seen if ".attn.to_out" in n or ".ff.net.2" in n}
    loss, grads = _step(model, params)

    _peft_cast(model, True)  # peft's default: every LoRA input cast to float32 first
    assert _lora_input_dtypes(model, lambda: _step(model, params))["transformer_blocks.0.attn.to_out.0"] == torch.float32
    loss_cast, grads_cast = _step(model, params)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(loss, loss_cast, rtol=2e-2, atol=1e-4)
    for g, h in zip(grads, grads_cast):
        assert torch.linalg.vector_norm(g - h) <= 5e-2 * torch.linalg.vector_norm(h) + 1e-6


def test_a_bf16_base_without_autocast_still_casts_for_the_float32_lora(tiny_fill_dir):
    model, params = _lora_model(tiny_fill_dir)
    seen = _lora_input_dtypes(model, lambda: _step(model, params, autocast=False))
    assert set(seen.values()) == {torch.float32}
    loss, grads = _step(model, params, autocast=False)
    assert torch.isfinite(loss) and any(g.abs().sum() > 0 for g in grads)


@pytest.fixture
def gloo_world_of_one():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_fsdp_passes_the_rope_tables_to_the_blocks_in_float32(tiny_fill_dir, gloo_world_of_one):
    model, _ = _lora_model(tiny_fill_dir)
    acc = types.SimpleNamespace(mixed_precision="bf16", device=torch.device("cpu"), num_processes=1,
                                process_index=0, distributed_type=types.SimpleNamespace(name="FSDP"),
                                state=types.SimpleNamespace(fsdp_plugin=None))
    par = Parallel(acc, environ={})
    assert par.sharded
    rope = {}
    model.transformer_blocks[0].register_forward_hook(
        lambda mod, args, kwargs, out: rope.setdefault("double", kwargs["image_rotary_emb"][0].dtype) and None,
        with_kwargs=True)
    model.single_transformer_blocks[0].register_forward_hook(
        lambda mod, args, kwargs, out: rope.setdefault("single", kwargs["image_rotary_emb"][0].dtype) and None,
        with_kwargs=True)
    model = par.prepare_model(model, [*model.transformer_blocks, *model.single_transformer_blocks, model])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**_inputs(model))[0]
    assert rope == {"double": torch.float32, "single": torch.float32}
    assert torch.isfinite(out.float()).all()


def test_accelerator_gets_bucket_view_gradients_and_the_collective_timeout():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    kwargs = accelerator_kwargs(TrainConfig(mixed_precision="no", collective_timeout_s=5400))
    try:
        acc = Accelerator(**kwargs)
        assert acc.ddp_handler.to_kwargs() == {"gradient_as_bucket_view": True}  # what DDP(...) receives
        assert acc.init_handler.timeout.total_seconds() == 5400
    finally:
        AcceleratorState._reset_state(True)
    assert TrainConfig().collective_timeout_s == 3600  # an hour: an 11 GB optimizer state on slow storage
    with pytest.raises(ConfigError, match="train.collective_timeout_s"):
        check_train(TrainConfig(collective_timeout_s=5))
