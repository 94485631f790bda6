"""Several processes, one run: launch checks, DDP or FSDP2, global gradient clipping, gathers. Model-agnostic.

Three modes, chosen by how the run was launched (``Parallel(accelerator).mode``):

- ``single``  one process.
- ``ddp``     accelerate's DistributedDataParallel (``MULTI_GPU``, or ``MULTI_CPU`` with gloo):
              every rank holds the whole model; gradients are all-reduced after the last
              micro-batch of a step.
- ``fsdp``    PyTorch FSDP2 (``fully_shard``), applied *here* to the blocks the recipe names,
              then to the model's top modules. Chosen when accelerate runs FSDP
              (``configs/accelerate/8gpu-fsdp.yaml``) and, on CPU, when
              ``ACCELERATE_USE_FSDP=true`` is set next to ``ACCELERATE_USE_CPU=true``:
              accelerate 1.15 only turns FSDP on for GPU-like devices, while torch 2.14's
              ``fully_shard`` runs on CPU with gloo, so the CPU tests run the very code the
              GPU runs. Frozen base weights keep their dtype (bf16 in the paper's setting),
              trainable weights stay float32 (the optimizer's master copy); the
              ``MixedPrecisionPolicy`` all-gathers both in the compute dtype and
              reduce-scatters gradients in float32. Forward inputs are *not* cast
              (``cast_forward_inputs=False``): autocast already casts what the matmuls read,
              and the RoPE tables stay float32 as they do under DDP and on one GPU.

API
---
``accelerator_kwargs(train) -> dict``  what the recipes pass to ``Accelerator(...)``: the mixed
    precision, DDP's ``gradient_as_bucket_view=True`` (gradients live in DDP's buckets instead
    of beside them: one copy of the LoRA gradients, not two) and the process-group timeout
    ``train.collective_timeout_s`` (rank 0 writes and hashes the checkpoint while the others
    wait in a barrier; NCCL's 10-minute default is short for slow storage).
``Parallel(accelerator, environ=os.environ)``
    ``.mode``, ``.sharded``, ``.world_size``, ``.rank``;
    ``.prepare_model(model, units)``  DDP: ``accelerator.prepare``; FSDP: ``fully_shard`` on
        every module of ``units`` (bottom-up: blocks first, then the modules holding the rest);
    ``.prepare_optimizer(optimizer)``;
    ``.no_sync(model, sync)``  no gradient all-reduce / reduce-scatter unless ``sync``;
    ``.clip_grad_norm(params, max_norm) -> float``  the global norm, clipped on every rank alike;
    ``.full(state) -> dict``  DTensor shards gathered to full CPU tensors (a collective);
    ``.sum(values) -> list[float]``  one all-reduce of a few numbers; ``.max(value) -> int``;
    ``.any(flag) -> bool``;
    ``.gather(obj) -> list``  one object per rank.
``check_launch(accelerator, environ)``  raises :class:`LaunchError` when ``WORLD_SIZE > 1`` but
    accelerate is not distributed (each rank would train alone and write the same folder).
``fsdp_settings(plugin, environ) -> reshard_after_forward``  checks accelerate's FSDP plugin
    (FSDP1, parameter offloading and CPU-RAM-efficient loading are refused, naming the key).
``tensor_digest(tensors) -> str``  sha256 over names, dtypes, shapes and bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from datetime import timedelta
from typing import Iterable, Mapping

import torch

SINGLE, DDP, FSDP = "single", "ddp", "fsdp"


class LaunchError(RuntimeError):
    pass


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return str(environ.get(name, "")).strip().lower() in ("1", "true", "yes")


def check_launch(acc, environ: Mapping[str, str] = os.environ) -> None:
    world = int(environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and acc.num_processes == 1:
        raise LaunchError(
            f"WORLD_SIZE={world} but accelerate runs this process on its own (distributed type "
            f"{acc.distributed_type.name}): the {world} processes would train {world} independent copies into "
            "one output folder. On CPU, set ACCELERATE_USE_CPU=true "
            f"(ACCELERATE_USE_CPU=true torchrun --nproc_per_node {world} -m train.fill ...); on GPUs, check that "
            "CUDA is visible to every process, or launch with accelerate launch --config_file "
            "configs/accelerate/8gpu-ddp.yaml.")
    if (world == 1 and acc.num_processes == 1 and "RANK" not in environ and environ.get("MASTER_ADDR")
            and _flag(environ, "ACCELERATE_USE_CPU")):
        # accelerate 1.15's CPU launcher starts one process unless it is given an mpirun hostfile.
        warnings.warn("accelerate launch --cpu --num_processes N started ONE process (accelerate 1.15 needs mpirun "
                      "for several CPU processes); for N processes on CPU run ACCELERATE_USE_CPU=true "
                      "torchrun --nproc_per_node N -m train.fill ... (or accelerate launch --multi_gpu "
                      "--num_processes N with ACCELERATE_USE_CPU=true)", stacklevel=2)


def accelerator_kwargs(train) -> dict:
    """Keyword arguments of `Accelerator(...)` from the recipe's `train:` section."""
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    return {"mixed_precision": train.mixed_precision,
            "kwargs_handlers": [DistributedDataParallelKwargs(gradient_as_bucket_view=True),
                                InitProcessGroupKwargs(timeout=timedelta(seconds=train.collective_timeout_s))]}


def fsdp_settings(plugin, environ: Mapping[str, str] = os.environ) -> bool:
    """Check accelerate's FSDP settings (`fsdp_config:` of the launch config, or none on CPU)
    against what the recipes do; returns reshard_after_forward."""
    if _flag(environ, "FSDP_CPU_RAM_EFFICIENT_LOADING"):
        raise LaunchError("fsdp_cpu_ram_efficient_loading must be false: with it transformers loads the frozen "
                          "text encoders empty on every rank but 0, and the recipes do not shard those "
                          "(configs/accelerate/8gpu-fsdp.yaml)")
    if plugin is None:
        return True
    if getattr(plugin, "fsdp_version", 2) != 2:
        raise LaunchError("fsdp_version 1 is not supported by these recipes: FSDP1 flattens each wrapped block into "
                          "one tensor of one dtype, and the frozen bf16 base and the float32 LoRA differ. Set "
                          "fsdp_version: 2 (configs/accelerate/8gpu-fsdp.yaml).")
    from torch.distributed.fsdp import CPUOffloadPolicy

    if isinstance(getattr(plugin, "cpu_offload", None), CPUOffloadPolicy):
        raise LaunchError("fsdp_offload_params is not supported by these recipes (sharding over 8 GPUs leaves "
                          "~6 GB of weights and optimizer state per GPU); set fsdp_offload_params: false")
    reshard = getattr(plugin, "reshard_after_forward", True)
    return reshard if isinstance(reshard, bool) else True


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


class Parallel:
    def __init__(self, acc, environ: Mapping[str, str] = os.environ):
        check_launch(acc, environ)
        self.acc = acc
        kind = acc.distributed_type.name
        if kind == "FSDP" or (kind == "MULTI_CPU" and _flag(environ, "ACCELERATE_USE_FSDP")):
            self.mode = FSDP
        elif acc.num_processes > 1:
            self.mode = DDP
        else:
            self.mode = SINGLE
        self.world_size, self.rank = acc.num_processes, acc.process_index
        self.reshard_after_forward = (fsdp_settings(getattr(acc.state, "fsdp_plugin", None), environ)
                                      if self.mode == FSDP else True)

    @property
    def sharded(self) -> bool:
        return self.mode == FSDP

    # ---- model and optimizer -------------------------------------------------------
    def prepare_model(self, model: torch.nn.Module, units: Iterable[torch.nn.Module] = ()) -> torch.nn.Module:
        if self.mode != FSDP:
            return self.acc.prepare(model)
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = self.acc.mixed_precision
        if mp == "fp16":
            raise LaunchError("mixed_precision fp16 under FSDP needs a sharded gradient scaler these recipes do not "
                              "have; use bf16 (train.mixed_precision=bf16 and mixed_precision: bf16 in the "
                              "accelerate config)")
        dtypes = {p.dtype for p in model.parameters()}
        # FSDP2 all-gathers a unit's parameters as one buffer: one dtype per unit. Under bf16
        # autocast that is bf16; without autocast a bf16 base with float32 LoRA is gathered in bf16.
        param_dtype = torch.bfloat16 if mp == "bf16" else (min(dtypes, key=lambda d: torch.finfo(d).bits)
                                                            if len(dtypes) > 1 else None)
        # cast_forward_inputs=False: FSDP would cast every float input of every unit to param_dtype,
        # RoPE tables included, and FSDP would train another function than DDP.
        policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
        model.to(self.acc.device)
        for unit in units:
            fully_shard(unit, mp_policy=policy, reshard_after_forward=self.reshard_after_forward)
        return model

    def prepare_optimizer(self, optimizer):
        # Under FSDP the optimizer already holds the sharded parameters: nothing to wrap.
        return optimizer if self.mode == FSDP else self.acc.prepare(optimizer)

    def unwrap(self, model):
        return self.acc.unwrap_model(model)

    @contextlib.contextmanager
    def no_sync(self, model, sync: bool):
        """Accumulate gradients locally unless `sync` (the last micro-batch of a step)."""
        if sync or self.mode == SINGLE:
            yield
            return
        if self.mode == DDP:
            with self.acc.no_sync(model):
                yield
            return
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in model.modules() if isinstance(m, FSDPModule)]
        for m in units:
            m.set_requires_gradient_sync(False, recurse=False)
        try:
            yield
        finally:
            for m in units:
                m.set_requires_gradient_sync(True, recurse=False)

    # ---- gradients -------------------------------------------------------------------
    def clip_grad_norm(self, params: Iterable[torch.nn.Parameter], max_norm: float) -> float:
        """Clip by the norm of the *whole* gradient. Under FSDP each rank holds a shard of each
        gradient: the squared norms of the shards are summed over ranks, so every rank clips by
        the same factor and logs the same norm. Under DDP the gradients are already identical."""
        grads = [p.grad for p in params if p.grad is not None]
        if self.acc.mixed_precision == "fp16" and self.mode != FSDP:
            self.acc.unscale_gradients()
        device = grads[0].device if grads else self.acc.device
        sharded = torch.zeros((), dtype=torch.float32, device=device)
        local = torch.zeros((), dtype=torch.float32, device=device)
        for g in grads:
            if _is_dtensor(g):
                sharded += torch.linalg.vector_norm(g.to_local(), dtype=torch.float32) ** 2
            else:
                local += torch.linalg.vector_norm(g, dtype=torch.float32) ** 2
        if self.world_size > 1 and self.mode == FSDP:
            import torch.distributed as dist

            dist.all_reduce(sharded)
        total = torch.sqrt(sharded + local)
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in grads:
            (g.to_local() if _is_dtensor(g) else g).mul_(coef.to(g.dtype))
        return float(total)

    # ---- collectives ---------------------------------------------------------------------
    def full(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full CPU tensors; DTensor shards are all-gathered, so every rank must call this."""
        out = {}
        for name, t in state.items():
            t = t.full_tensor() if _is_dtensor(t) else t
            out[name] = t.detach().to("cpu").contiguous()
        return out

    def sum(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.acc.device)
        return [float(v) for v in self.acc.reduce(t, reduction="sum").tolist()]

    def max(self, value: int) -> int:
        """The largest of one integer over ranks (e.g. a count every rank must then match)."""
        if self.world_size == 1:
            return int(value)
        import torch.distributed as dist

        t = torch.tensor([int(value)], dtype=torch.int64, device=self.acc.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def any(self, flag: bool) -> bool:
        """SIGTERM, bad data: reach ranks at different moments; all must act at the same step."""
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def gather(self, obj) -> list:
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out
