"""What every model stage shares: where its weights come from, which device and precision
it runs in, and the rules for checkpoints and remote code.

- `model:` is a hub id (`lllyasviel/Annotators`) or a local folder in the production
  layout (what `python -m annotators.tiny_models` writes, or a `huggingface-cli download`).
  A hub id resolves through the local Hugging Face cache; with `HF_HUB_OFFLINE=1` (or no
  network) a missing file is an error that says how to fetch it once.
- `device: auto` runs on CUDA when a GPU is visible, else on the CPU; `dtype: auto` is
  float16 on a GPU and float32 on the CPU. Asking for `cuda` or a half precision on a
  machine without a GPU fails when the stage is built, with a message saying so.
  An actor given GPUs (`num_gpus`) that sees no CUDA refuses to load (`require_gpu`)
  unless its block says `device: cpu`; no model runs in float64.
- `.pth` checkpoints are read with `torch.load(weights_only=True)`: tensors only, never
  a full unpickle. `.safetensors` are preferred where a checkpoint exists in both forms.
- Remote code (`trust_remote_code`) runs only from a local folder the user has vetted or
  from a hub id pinned to a full 40-hex commit: an unpinned hub id is refused.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from annotators.base import ConfigError

AUTO = "auto"
_DTYPES = ("float32", "float16", "bfloat16")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class ModelOptions:
    """Options every model stage takes; a stage's own Options dataclass subclasses this."""

    model: str = ""  # hub id or local folder
    revision: str | None = None  # hub branch, tag or commit (a commit pins remote code)
    device: str = AUTO  # auto | cpu | cuda | cuda:N
    dtype: str = AUTO  # auto | float32 | float16 | bfloat16


def is_local(model: str) -> bool:
    # a hub id is `owner/name`: a deeper path (build/tiny-models/rmbg) is a folder, even
    # before it is built (configs are checked on the driver before any model exists)
    return bool(model) and (os.path.isdir(model) or model.startswith(("/", "./", "../", "~"))
                            or model.strip("/").count("/") >= 2)


def resolve_device(stage: str, device: str = AUTO):
    import torch

    if device == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"stage {stage!r}: device {device!r} is not a torch device "
                          "(auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"stage {stage!r}: device {device!r} asks for a GPU but none is "
                          "visible (torch.cuda.is_available() is False); use device: auto or cpu")
    return dev


def require_gpu(stage: str, num_gpus: float, device: str = AUTO) -> None:
    """An actor given GPUs (`num_gpus` > 0) that sees no CUDA stops here, before loading
    weights: on the CPU a GPU-sized model would crawl (or fill the RAM) without a word.
    `device: cpu` in the stage's block runs it on the CPU on purpose."""
    if not num_gpus or str(device) == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"stage {stage!r}: num_gpus: {num_gpus:g} but this actor sees no CUDA "
                          "GPU (torch.cuda.is_available() is False: a CPU-only torch, or no "
                          "driver on the node); fix the node, or set device: cpu in the stage's "
                          "block to run it on the CPU on purpose")


def resolve_dtype(stage: str, dtype: str, device):
    import torch

    if dtype == AUTO:
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ConfigError(f"stage {stage!r}: dtype {dtype!r} is not one of auto, "
                          f"{', '.join(_DTYPES)}")
    if dtype != "float32" and device.type == "cpu":
        raise ConfigError(f"stage {stage!r}: dtype {dtype} is for GPUs; on the CPU the stage "
                          "runs in float32 (dtype: auto or float32)")
    return getattr(torch, dtype)


def model_file(stage: str, model: str, filename: str, revision: str | None = None) -> Path:
    """A weights file of `model` (a local folder or a hub id in the local HF cache)."""
    if not model:
        raise ConfigError(f"stage {stage!r}: no `model:` configured (a hub id or a local folder)")
    if is_local(model):
        path = Path(model).expanduser() / filename
        if not path.is_file():
            raise FileNotFoundError(f"stage {stage!r}: {path} does not exist; the folder "
                                    f"{model} must hold {filename}")
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=model, filename=filename, revision=revision))
    except Exception as e:  # offline, gated, missing: all say how to fetch it
        raise FileNotFoundError(
            f"stage {stage!r}: cannot get {filename} of {model} ({type(e).__name__}: {e}). "
            f"Fetch it once with `huggingface-cli download {model} {filename}` on a machine "
            "with network, or point `model:` at a local folder") from None


def model_dir(stage: str, model: str, revision: str | None = None) -> str:
    """What `from_pretrained` takes: the local folder, or the hub id (its own cache)."""
    if not model:
        raise ConfigError(f"stage {stage!r}: no `model:` configured (a hub id or a local folder)")
    if is_local(model):
        path = Path(model).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"stage {stage!r}: model folder {path} does not exist")
        return str(path)
    return model


def load_weights(path: str | os.PathLike) -> dict:
    """A state dict from .safetensors, or from .pth/.pt with tensors only (weights_only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def check_remote_code(stage: str, model: str, revision: str | None, trust: bool) -> None:
    """Remote code only from a vetted local folder or a hub id pinned to a commit."""
    if not trust:
        raise ConfigError(f"stage {stage!r}: {model} needs remote code; set "
                          "trust_remote_code: true after vetting it, with `model:` a local "
                          "folder or `revision:` a full commit hash")
    if is_local(model):
        return
    if not (revision and _COMMIT.match(revision)):
        raise ConfigError(
            f"stage {stage!r}: refusing to run remote code from {model} at "
            f"{revision or 'its latest revision'}: pin `revision:` to a full 40-hex commit you "
            "have read, or download the repo, vet it, and point `model:` at that folder")
