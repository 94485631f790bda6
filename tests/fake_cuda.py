"""Run a model's forward as if it were on a GPU, on a machine without one.

    with FakeCuda(model, dtype=torch.float16) as gpu:
        out = model(gpu.tensor(x))          # every parameter / buffer: a FakeTensor on cuda

`FakeCuda(*modules, dtype=None)` swaps every parameter and buffer of `modules` for a
FakeTensor on device ``cuda`` (cast to `dtype` where floating, as ``Module.to(device,
dtype)`` would), runs the block under a FakeTensorMode plus a checking dispatch mode, and
puts the real tensors back on exit. Fake tensors carry only shape, dtype and device: a
forward of a tiny model costs what its Python does. It fails (`CudaMixError`) where a GPU
would raise:

- an op mixing CPU and CUDA tensors (0-dim CPU tensors excepted, as on a GPU): a weight
  or table left behind on the CPU, a tensor made without ``device=``;
- a matmul / convolution / attention whose floating inputs differ in dtype (fp32 pixels
  into an fp16 net): fake ``addmm`` does not check that by itself, a GPU's does;
- a random draw with a generator on another device than its output (a CPU generator
  passed to ``torch.randn(..., device="cuda")``).

What it does not prove: numerics, kernel choice or memory; backward passes (autograd on
fake CUDA tensors asks the driver for a context: forwards only); host reads (``.item()``,
``.numpy()``) stop a fake forward (`HOST_READ`), so a caller runs what comes before them,
and host-side preparation that reads values (a tokenizer's ids) runs real via `on_host`.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import (DataDependentOutputException, FakeTensorDeviceMismatchError,
                                           FakeTensorMode, unset_fake_temporarily)
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten

# ops whose floating operands a GPU requires in one dtype (the fake kernels of some do not check)
SAME_DTYPE = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.addmv, aten.mv, aten.dot, aten.convolution,
              aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_flash_attention,
              aten._scaled_dot_product_cudnn_attention}

# what a fake forward raises where the real one would copy to the host
HOST_READ = (DataDependentOutputException,)


class CudaMixError(AssertionError):
    """A forward that would raise on a GPU: devices or dtypes mixed."""


# torch's own checks of mixed operands (convolution checks dtypes before it dispatches)
_MIX_MESSAGES = ("same device", "should be the same", "same dtype", "expected scalar type")


def _run(func, args, kwargs):
    try:
        return func(*args, **kwargs)
    except FakeTensorDeviceMismatchError as e:
        raise CudaMixError(f"{func}: {e}") from None
    except RuntimeError as e:
        if any(m in str(e) for m in _MIX_MESSAGES):
            raise CudaMixError(f"{getattr(func, '__name__', func)}: {e}") from None
        raise


def _tensors(args, kwargs) -> list[torch.Tensor]:
    return [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]


class _Check(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = _tensors(args, kwargs)
        if func.overloadpacket in SAME_DTYPE:
            dtypes = {t.dtype for t in tensors if t.is_floating_point()}
            if len(dtypes) > 1:
                raise CudaMixError(f"{func}: floating inputs in {sorted(map(str, dtypes))} (a GPU raises)")
        generator = kwargs.get("generator")
        if generator is not None:
            device = torch.device(kwargs["device"]) if kwargs.get("device") else (
                tensors[0].device if tensors else torch.device("cpu"))
            if generator.device.type != device.type:
                raise CudaMixError(f"{func}: a {generator.device.type} generator draws on {device}")
        return _run(func, args, kwargs)


class _CheckFunctions(TorchFunctionMode):
    """Mixes torch checks before dispatch (convolution's dtypes) come out as CudaMixError.
    Attention is decomposed to its math form under fake tensors (no GPU kernel is chosen),
    which upcasts: q, k, v must agree before that, as the GPU kernels require."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and not torch.is_autocast_enabled("cuda"):
            q, k, v = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")])[:3]
            if len({q.dtype, k.dtype, v.dtype}) > 1:
                raise CudaMixError(f"scaled_dot_product_attention: q, k, v in {q.dtype}, {k.dtype}, {v.dtype}")
        return _run(func, args, kwargs)


class FakeCuda:
    """See the module docstring. `gpu.tensor(x)`: a fake CUDA copy of a real tensor."""

    def __init__(self, *modules: torch.nn.Module, dtype: torch.dtype | None = None):
        self.modules, self.dtype = modules, dtype
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        self._saved: list[tuple[dict, str, torch.Tensor]] = []
        self._stack = contextlib.ExitStack()

    def tensor(self, t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        fake = self.mode.from_tensor(t)
        with self.mode:
            return fake.to("cuda", dtype=dtype if dtype is not None and t.is_floating_point() else None)

    @staticmethod
    def on_host(fn):
        """`fn` on real tensors inside the block: host-side work whose values matter (token
        ids searched for a keyword), as it runs on the CPU in production."""
        def real(*args, **kwargs):
            with unset_fake_temporarily():
                return fn(*args, **kwargs)
        return real

    def __enter__(self) -> "FakeCuda":
        seen = set()
        for root in self.modules:
            for module in root.modules():
                if id(module) in seen:
                    continue
                seen.add(id(module))
                for table in (module._parameters, module._buffers):
                    for name, t in table.items():
                        if t is None:
                            continue
                        self._saved.append((table, name, t))
                        fake = self.tensor(t.detach(), self.dtype)
                        table[name] = (torch.nn.Parameter(fake, requires_grad=t.requires_grad)
                                       if isinstance(t, torch.nn.Parameter) else fake)
        self._stack.enter_context(self.mode)
        self._stack.enter_context(_CheckFunctions())
        self._stack.enter_context(_Check())
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
        for table, name, t in reversed(self._saved):
            table[name] = t
        self._saved.clear()


def cuda_autocast(dtype: torch.dtype = torch.bfloat16) -> torch.autocast:
    """CUDA autocast, enabled on a machine without CUDA: fake CUDA tensors carry the
    AutocastCUDA dispatch key, so this applies the GPU's own cast policy to them
    (torch.autocast switches itself off when it finds no driver; only that check is skipped)."""
    with mock.patch("torch.cuda.amp.common.amp_definitely_not_available", return_value=False), \
            mock.patch("torch.cuda.is_bf16_supported", return_value=True):
        return torch.autocast("cuda", dtype=dtype)
