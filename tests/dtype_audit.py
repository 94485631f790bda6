"""Which dtypes a training forward computes in: every op, with the module it runs in.

    with FakeCuda(model) as gpu, cuda_autocast(torch.bfloat16), DtypeAudit(model) as audit:
        loss = step(...)
    audit.matmuls           # [(op, module class, dtypes)] mm / addmm / bmm / baddbmm / convolution
    audit.attention         # [(module class, (q, k, v dtypes))] scaled_dot_product_attention
    audit.ops_in(dtype)     # {(op, module class)} of every compute op touching a tensor of dtype
    audit.lora_inputs       # [(lora layer name, dtype of x, dtype lora_A sees)]

Ops are recorded after autocast has cast their inputs (a dispatch mode runs below the
autocast key), so a matmul's dtypes are the ones its kernel gets. Attention is the
exception: with no GPU there is no fused kernel, and fake tensors run its math form,
which upcasts to fp32 internally; it is recorded where it is called, and the ops of its
math form are left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
MATMULS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.convolution}
# shape and memory bookkeeping: no arithmetic, so no dtype of their own to audit
NOT_COMPUTE = {aten.view, aten._unsafe_view, aten.reshape, aten.expand, aten.permute, aten.transpose, aten.t,
               aten.unsqueeze, aten.squeeze, aten.slice, aten.select, aten.split, aten.split_with_sizes,
               aten.unbind, aten.chunk, aten.detach, aten.clone, aten.alias, aten.as_strided, aten.empty_like,
               aten.zeros_like, aten.ones_like, aten.new_empty, aten.new_zeros, aten.lift_fresh, aten.copy_,
               aten._to_copy, aten.cat, aten.stack, aten.index, aten.index_select, aten.embedding, aten.fill_,
               aten.zero_, aten.full, aten.zeros, aten.ones, aten.empty, aten.arange, aten.new_ones,
               aten.masked_fill_, aten.masked_fill, aten.where, aten.repeat, aten.flip, aten.roll, aten.constant_pad_nd}


class _Attention(TorchFunctionMode):
    def __init__(self, audit):
        super().__init__()
        self.audit = audit

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        q, k, v = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")])[:3]
        target = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        # autocast lowers fp32 q/k/v to its dtype before the kernel; it never raises precision
        seen = tuple(target if target is not None and t.dtype == torch.float32 else t.dtype for t in (q, k, v))
        self.audit.attention.append((self.audit.where(), seen))
        self.audit.inside_attention += 1
        try:
            return func(*args, **kwargs)
        finally:
            self.audit.inside_attention -= 1


class _Ops(TorchDispatchMode):
    def __init__(self, audit):
        super().__init__()
        self.audit = audit

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        audit = self.audit
        if audit.inside_attention or func.overloadpacket in NOT_COMPUTE or func.namespace != "aten":
            return out
        tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        dtypes = tuple(t.dtype for t in tensors if t.is_floating_point())
        where = audit.where()
        if func.overloadpacket in MATMULS:
            audit.matmuls.append((func.overloadpacket.__name__, where, dtypes))
        for dtype in set(dtypes):
            audit.ops.setdefault(dtype, set()).add((func.overloadpacket.__name__, where))
        return out


class DtypeAudit:
    def __init__(self, *modules: torch.nn.Module):
        self.modules = modules
        self.matmuls: list[tuple[str, str, tuple]] = []
        self.attention: list[tuple[str, tuple]] = []
        self.ops: dict[torch.dtype, set[tuple[str, str]]] = {}
        self.lora_inputs: list[tuple[str, torch.dtype, torch.dtype]] = []
        self.inside_attention = 0
        self._stack: list[str] = []
        self._handles: list = []

    def where(self) -> str:
        return self._stack[-1] if self._stack else "-"

    def ops_in(self, dtype: torch.dtype) -> set[tuple[str, str]]:
        return self.ops.get(dtype, set())

    def __enter__(self) -> "DtypeAudit":
        def push(module, args):
            self._stack.append(type(module).__name__)

        def pop(module, args, out):
            self._stack.pop()

        for root in self.modules:
            for name, module in root.named_modules():
                self._handles += [module.register_forward_pre_hook(push), module.register_forward_hook(pop)]
                lora_a = getattr(module, "lora_A", None)
                if isinstance(lora_a, torch.nn.ModuleDict):  # a peft LoRA layer: x, and what lora_A gets
                    self._hook_lora(name, module, lora_a)
        self._modes = [_Attention(self), _Ops(self)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def _hook_lora(self, name, layer, lora_a):
        entry = {}

        def outer(module, args):
            entry["x"] = args[0].dtype

        def inner(module, args):
            self.lora_inputs.append((name, entry.get("x"), args[0].dtype))

        self._handles.append(layer.register_forward_pre_hook(outer))
        self._handles += [a.register_forward_pre_hook(inner) for a in lora_a.values()]

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
