"""VisualCloze LoRA files in the layouts they were released in, loaded into a FLUX-Fill pipeline.

- a folder written by ``train.fill`` (``pytorch_lora_weights.safetensors``) or diffusers'
  ``visualcloze-lora-384.safetensors`` / ``-512`` (diffusers key names): diffusers'
  ``load_lora_weights`` reads them as they are;
- the reference trainer's ``visualcloze-384-lora.pth`` / ``-512`` (lzyhha/VisualCloze): a
  torch state dict in the key names of its own FLUX implementation (Black Forest Labs' layout:
  ``double_blocks.{i}.img_attn.qkv.lora_A.weight`` ...) and with a bias on every ``lora_B``.
  It is read with ``torch.load(weights_only=True)`` and its keys converted here.

The reference's LoRA (`models/modules/lora.py` there) is ``y = W x + b + lora_B(lora_A(x))``
with scale 1 on every ``nn.Linear`` of its Flux, rank capped at min(in, out) per layer. Its
fused layers become several of diffusers' Linears: a fused qkv (and the single blocks'
q|k|v|mlp ``linear1``) shares one ``lora_A`` and splits ``lora_B`` by output rows, which is
exact. diffusers' ``_convert_bfl_flux_control_lora_to_diffusers`` does the same for
FLUX.1-dev's sizes only (19/38 blocks, width 3072) and needs norm scales the reference's file
lacks, hence this table sized from the transformer it is loaded into.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Reference (BFL Flux) module -> diffusers FluxTransformer2DModel module, for whole Linears.
_EMBEDDERS = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
_DOUBLE = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}
_SINGLE = {"modulation.lin": "norm.linear", "linear2": "proj_out"}
# Fused Linears of the reference: output rows in this order.
_DOUBLE_FUSED = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                 "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
_SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
# The final adaLN: the reference emits (shift, scale), diffusers' AdaLayerNormContinuous (scale, shift).
_SWAPPED = {"final_layer.adaLN_modulation.1": "norm_out.linear"}
# Wrappers whose names an FSDP / activation-checkpointing state dict may still carry.
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "module.")


def reference_module_map(transformer) -> dict[str, tuple[str, ...] | str]:
    """Every LoRA-carrying Linear of the reference's Flux -> its diffusers module(s), for this
    transformer's depth. A tuple marks a fused Linear split by output rows."""
    table: dict = dict(_EMBEDDERS)
    table.update({k: (v,) for k, v in _SWAPPED.items()})  # tuple of one: handled by the swap below
    for i in range(len(transformer.transformer_blocks)):
        table.update({f"double_blocks.{i}.{k}": f"transformer_blocks.{i}.{v}" for k, v in _DOUBLE.items()})
        table.update({f"double_blocks.{i}.{k}": tuple(f"transformer_blocks.{i}.{m}" for m in v)
                      for k, v in _DOUBLE_FUSED.items()})
    for i in range(len(transformer.single_transformer_blocks)):
        table.update({f"single_blocks.{i}.{k}": f"single_transformer_blocks.{i}.{v}" for k, v in _SINGLE.items()})
        table.update({f"single_blocks.{i}.{k}": tuple(f"single_transformer_blocks.{i}.{m}" for m in v)
                      for k, v in _SINGLE_FUSED.items()})
    return table


def _strip(key: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        key = key.replace(prefix, "")
    return key


def reference_to_diffusers(state: dict[str, torch.Tensor], transformer) -> dict[str, torch.Tensor]:
    """The reference trainer's LoRA state dict in diffusers' names (``transformer.<module>.lora_A.weight``,
    ``lora_B.weight``, ``lora_B.bias``), ready for ``pipe.load_lora_weights(dict)``."""
    state = {_strip(k): v for k, v in state.items()}
    table = reference_module_map(transformer)
    out: dict[str, torch.Tensor] = {}
    unknown = sorted({k.rsplit(".lora_", 1)[0] for k in state} - set(table))
    if unknown or any(".lora_" not in k for k in state):
        odd = unknown or [k for k in state if ".lora_" not in k]
        raise ValueError(f"{len(odd)} key(s) of the reference LoRA match no layer of this FLUX transformer "
                         f"(a different depth, or not a VisualCloze .pth?): {odd[:3]}")
    for ref, target in table.items():
        a, b, bias = (state.get(f"{ref}.lora_A.weight"), state.get(f"{ref}.lora_B.weight"),
                      state.get(f"{ref}.lora_B.bias"))
        if a is None and b is None:
            continue
        if a is None or b is None:
            raise ValueError(f"reference LoRA layer {ref!r} has only one of lora_A / lora_B")
        if ref in _SWAPPED:
            b, bias = _swap_halves(b), None if bias is None else _swap_halves(bias)
            target = target[0]
        if isinstance(target, str):
            parts = [(target, b, bias)]
        else:
            sizes = [transformer.get_submodule(m).out_features for m in target]
            if sum(sizes) != b.shape[0]:
                raise ValueError(f"reference LoRA layer {ref!r}: lora_B has {b.shape[0]} rows, this transformer's "
                                 f"{'/'.join(target)} have {sum(sizes)} outputs")
            bias_parts = [None] * len(sizes) if bias is None else bias.split(sizes)
            parts = list(zip(target, b.split(sizes), bias_parts))
        for module, b_part, bias_part in parts:
            out[f"transformer.{module}.lora_A.weight"] = a.clone()  # one A shared by the split outputs
            out[f"transformer.{module}.lora_B.weight"] = b_part.contiguous()
            if bias_part is not None:
                out[f"transformer.{module}.lora_B.bias"] = bias_part.contiguous()
    return out


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def is_reference_file(path: Path) -> bool:
    return path.suffix in (".pth", ".pt")


def load_lora(pipe, lora: str | Path, weight_name: str | None = None, adapter_name: str | None = None) -> None:
    """Load a VisualCloze LoRA into `pipe` (any diffusers Flux pipeline with load_lora_weights):
    a train.fill folder, a diffusers-layout .safetensors file, the reference's .pth, or a hub
    repo id with `weight_name` (``VisualCloze/VisualClozePipeline-LoRA-384``,
    ``visualcloze-lora-384.safetensors``)."""
    path = Path(lora)
    kwargs = {"adapter_name": adapter_name} if adapter_name else {}
    if weight_name:
        kwargs["weight_name"] = weight_name
    if path.is_file() and is_reference_file(path):
        state = torch.load(path, map_location="cpu", weights_only=True)
        pipe.load_lora_weights(reference_to_diffusers(state, pipe.transformer), **kwargs)
    elif path.is_file():
        pipe.load_lora_weights(str(path.parent), **{**kwargs, "weight_name": path.name})
    elif path.is_dir():
        pipe.load_lora_weights(str(path), **kwargs)
    else:  # a hub repo id: diffusers resolves it (weight_name as its default)
        pipe.load_lora_weights(str(lora), **kwargs)


def load_lora_adapter(transformer, lora: str | Path, weight_name: str | None = None,
                      adapter_name: str = "default") -> None:
    """The same files as `load_lora`, as an adapter of a bare FluxTransformer2DModel (train.fill's
    ``lora.init_from``): its ranks (per layer), alpha and lora_B biases come from the file."""
    path = Path(lora)
    kwargs = {"weight_name": weight_name} if weight_name else {}
    if path.is_file() and is_reference_file(path):
        source = reference_to_diffusers(torch.load(path, map_location="cpu", weights_only=True), transformer)
    elif path.is_file():
        source, kwargs = str(path.parent), {"weight_name": path.name}
    else:
        source = str(lora)
    transformer.load_lora_adapter(source, prefix="transformer", adapter_name=adapter_name, **kwargs)
