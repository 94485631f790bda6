"""What a model stage's actor does when its GPU fails: tell an out-of-memory error (retry
smaller) from a sticky CUDA error (the process is done for), free what an OOM left behind,
and leave the process so that Ray restarts the actor.

Why not keep the exception: its traceback holds the frames of the failed call, and their
locals the batch's GPU tensors; a retry at the same time would OOM again on memory that
is only "in use" by a dead batch. Only its text travels on.

A CUDA error other than OOM (an illegal memory access, a device-side assert) poisons the
CUDA context for good: every later call of the process fails the same way. Catching it as
a per-sample failure would fail every later sample of the actor; the process exits instead
(`os._exit`: no half-written state, nothing of the batch is written by predict), Ray
restarts the actor (`max_restarts`) and reruns its batch (`max_task_retries`).
"""

from __future__ import annotations

import gc
import os
import sys

OOM, FATAL, OTHER = "oom", "fatal", "other"
EXIT_CODE = 75  # EX_TEMPFAIL: a fresh process may succeed where this one cannot

# Texts of CUDA errors that poison the context (torch raises most as AcceleratorError,
# older builds and cuBLAS / cuDNN as RuntimeError with this text).
_FATAL_TEXTS = ("cuda error", "illegal memory access", "device-side assert",
                "cublas_status", "cudnn_status", "unspecified launch failure",
                "misaligned address", "an illegal instruction", "ecc error")
_OOM_TEXTS = ("cuda out of memory", "out of memory")


def kind(exc: BaseException) -> str:
    """OOM, FATAL (exit the process) or OTHER (a failure of the input)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return OOM
    text = str(exc).lower()
    if isinstance(exc, RuntimeError) and any(t in text for t in _OOM_TEXTS):
        return OOM
    accelerator_error = getattr(torch, "AcceleratorError", None) if torch else None
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return FATAL
    if isinstance(exc, RuntimeError) and any(t in text for t in _FATAL_TEXTS):
        return FATAL
    return OTHER


def first_line(exc: BaseException, limit: int = 240) -> str:
    """The exception as one short line (torch's OOM text runs to several sentences)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:limit]


def free_device_memory() -> None:
    """After an OOM: collect the dead batch (its frames may sit in reference cycles) and
    hand the cached blocks back, so the retry starts from the weights alone."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def exit_for_restart(stage: str, reason: str) -> None:
    """Leave the actor's process now; Ray restarts the actor and retries its batch."""
    sys.stderr.write(f"stage {stage!r}: {reason}; the CUDA context is unusable after this "
                     "error, exiting so that Ray restarts the actor and retries its batch\n")
    sys.stderr.flush()
    os._exit(EXIT_CODE)
