"""The metric networks, each loaded once per run from a hub id (local cache only) or a local folder.

| net | architecture (library) | production weights |
|---|---|---|
| `clip` | `transformers.CLIPModel` + `CLIPProcessor` | `openai/clip-vit-large-patch14` |
| `dino` | `transformers` DINOv2 (`AutoModel`) + its image processor | `facebook/dinov2-base` |
| `depth` | `transformers` Depth Anything V2 (`AutoModelForDepthEstimation`), the annotators' depth model | `depth-anything/Depth-Anything-V2-Large-hf` |
| `inception` | torch-fidelity's FID InceptionV3 (the network torchmetrics' FID uses) | `weights-inception-2015-12-05-6726825d.pth` (torch-fidelity release) |
| `maniqa`, `musiq` | pyiqa's `MANIQA` / `MUSIQ` archs | pyiqa's KonIQ checkpoints in `chaofengc/IQA-PyTorch-Weights` |

Nothing here reaches the network. The metric libraries fetch their default weights on first
use (torch-fidelity's Inception, pyiqa's IQA checkpoints, timm's ViT backbone inside MANIQA);
here every network is built from its architecture and given weights we load ourselves:
`from_pretrained(..., local_files_only=True)` for transformers models, tensors-only reads
(`.safetensors`, or `torch.load(weights_only=True)` for `.pth`/`.pt`) for the rest. A weight
that is not on disk is a `MissingWeights` error naming the net, what is missing and the
command that fetches it once.

A local folder may hold `<checkpoint stem>.arch.json` next to an IQA checkpoint: keyword
arguments of the arch (and, for MANIQA, its ViT `backbone`) -- how the tiny random models of
`python -m train.evaluate.tiny_models` keep the real classes at a smaller width.
"""

from __future__ import annotations

import contextlib
import json
import os
import types
from dataclasses import dataclass
from pathlib import Path

import torch

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
IQA_REPO = "chaofengc/IQA-PyTorch-Weights"
NETS = ("clip", "dino", "depth", "inception", "maniqa", "musiq")

# pyiqa's own settings for its `maniqa` / `musiq` metrics (KonIQ-10k checkpoints).
MANIQA_ARCH = {"scale": 0.8, "train_dataset": "koniq", "test_sample": 20}
MANIQA_BACKBONE = {"name": "vit_base_patch8_224"}
MUSIQ_ARCH: dict = {}  # the class defaults; the KonIQ head has one output (num_class=1)
MANIQA_CROP = 224  # pyiqa's MANIQA always crops 224 x 224 patches


class MissingWeights(FileNotFoundError):
    """A metric network's weights are not on disk; the message says how to get them."""


@dataclass
class MetricModelsConfig:
    """`models:` of an evaluation config: where each metric network's weights are."""

    clip: str = "openai/clip-vit-large-patch14"
    dino: str = "facebook/dinov2-base"
    depth: str = "depth-anything/Depth-Anything-V2-Large-hf"
    inception: str = f"~/.cache/graph200k/{INCEPTION_FILE}"  # the file, or a folder holding it
    iqa: str = IQA_REPO  # hub id or folder holding both IQA checkpoints
    maniqa_file: str = "ckpt_koniq10k.pt"
    musiq_file: str = "musiq_koniq_ckpt-e95806b9.pth"
    revision: str | None = None  # of the hub ids


def _is_local(spec: str) -> bool:
    """A path rather than a hub id (`org/name`): it exists, is explicit, or is deeper."""
    return (os.path.exists(spec) or spec.startswith(("/", "./", "../", "~")) or spec.count("/") > 1
            or spec.endswith((".pth", ".pt", ".safetensors")))


def _hub_folder(net: str, spec: str, revision: str | None) -> str:
    """What from_pretrained takes: the local folder, or the cached snapshot of a hub id."""
    if _is_local(spec):
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise MissingWeights(f"metric net {net!r}: folder {path} does not exist; build the tiny models "
                                 "(python -m train.evaluate.tiny_models) or point models."
                                 f"{net} at a downloaded copy")
        return str(path)
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(spec, revision=revision, local_files_only=True)
    except Exception as e:  # not cached: the hub is never asked from here
        raise MissingWeights(f"metric net {net!r}: {spec} is not in the local Hugging Face cache "
                             f"({type(e).__name__}); fetch it once with `huggingface-cli download {spec}` "
                             f"or set models.{net} to a local folder") from None


def _weights_file(net: str, spec: str, filename: str, revision: str | None) -> Path:
    path = Path(spec).expanduser()
    if _is_local(spec):
        path = path / filename if path.is_dir() else path
        if not path.is_file():
            raise MissingWeights(f"metric net {net!r}: {path} does not exist")
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(spec, filename, revision=revision, local_files_only=True))
    except Exception as e:
        raise MissingWeights(f"metric net {net!r}: {spec}/{filename} is not in the local Hugging Face cache "
                             f"({type(e).__name__}); fetch it once with `huggingface-cli download {spec} "
                             f"{filename}`") from None


def read_state(path: Path) -> dict:
    """Tensors only: safetensors, or torch.load(weights_only=True). pyiqa checkpoints may
    nest the weights under `params`, and DataParallel ones prefix `module.`."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("params", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _arch_options(weights: Path, defaults: dict) -> dict:
    side = weights.with_name(weights.name.split(".")[0] + ".arch.json")
    return {**defaults, **(json.loads(side.read_text()) if side.is_file() else {})}


def _load(net: str, module: torch.nn.Module, state: dict, path: Path) -> torch.nn.Module:
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(f"metric net {net!r}: {path} does not fit the architecture (missing "
                         f"{missing[:4]}, unexpected {result.unexpected_keys[:4]}); is it the right checkpoint?")
    return module.eval().requires_grad_(False)


# ---------------------------------------------------------------------------- loaders
def load_clip(spec: str, revision: str | None = None):
    from annotators.features import load_clip as load

    return load(_hub_folder("clip", spec, revision))


def load_dino(spec: str, revision: str | None = None):
    from annotators.features import load_dino as load

    return load(_hub_folder("dino", spec, revision))


def load_depth(spec: str, revision: str | None = None):
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    folder = _hub_folder("depth", spec, revision)
    return (AutoModelForDepthEstimation.from_pretrained(folder, local_files_only=True).eval(),
            AutoImageProcessor.from_pretrained(folder, local_files_only=True))


@contextlib.contextmanager
def _torch_load_weights_only():
    """torch-fidelity reads its checkpoint with weights_only switched off; this makes that
    read tensors-only (torch's own switch), so no checkpoint is ever fully unpickled."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


FID_FEATURES = (64, 192, 768, 2048)  # torchmetrics' FID feature layers; 2048 is the standard FID


def load_inception(spec: str, features: int = 2048):
    """torchmetrics' FID Inception (torch-fidelity's FeatureExtractorInceptionV3; `features`:
    which pool layer) from a local checkpoint; torch-fidelity would otherwise download it."""
    if features not in FID_FEATURES:
        raise ValueError(f"fid_features must be one of {FID_FEATURES}, got {features}")
    from torchmetrics.image.fid import NoTrainInceptionV3

    path = Path(spec).expanduser()
    path = path / INCEPTION_FILE if path.is_dir() else path
    if not path.is_file():
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        raise MissingWeights(f"metric net 'inception': {path} does not exist; download the FID Inception "
                             f"weights once from {URL_INCEPTION_V3} and set models.inception to that file")
    with _torch_load_weights_only():
        return NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(features)],
                                  feature_extractor_weights_path=str(path))


@contextlib.contextmanager
def _maniqa_backbone(backbone: dict):
    """pyiqa's MANIQA builds `timm.create_model('vit_base_patch8_224', pretrained=True)`,
    a download whose weights the MANIQA checkpoint overwrites anyway. While it is built,
    its module sees a `timm` whose create_model builds `backbone` without pretrained weights."""
    import timm
    from pyiqa.archs import maniqa_arch

    spec = dict(backbone)
    name = spec.pop("name", MANIQA_BACKBONE["name"])

    def create_model(_name, pretrained=False, **kwargs):
        return timm.create_model(name, pretrained=False, **{**kwargs, **spec})

    real = maniqa_arch.timm
    maniqa_arch.timm = types.SimpleNamespace(create_model=create_model)
    try:
        yield
    finally:
        maniqa_arch.timm = real


def load_maniqa(spec: str, filename: str, revision: str | None = None):
    from pyiqa.archs.maniqa_arch import MANIQA

    path = _weights_file("maniqa", spec, filename, revision)
    options = _arch_options(path, {**MANIQA_ARCH, "backbone": MANIQA_BACKBONE})
    backbone = options.pop("backbone")
    with _maniqa_backbone(backbone):
        net = MANIQA(pretrained=False, pretrained_model_path=None, **options)
    return _load("maniqa", net, read_state(path), path)


def load_musiq(spec: str, filename: str, revision: str | None = None):
    from pyiqa.archs.musiq_arch import MUSIQ

    path = _weights_file("musiq", spec, filename, revision)
    net = MUSIQ(pretrained=False, pretrained_model_path=None, **_arch_options(path, MUSIQ_ARCH))
    return _load("musiq", net, read_state(path), path)


def load_net(name: str, cfg: MetricModelsConfig, fid_features: int = 2048):
    """One metric network (or (model, processor) pair) by name."""
    if name == "clip":
        return load_clip(cfg.clip, cfg.revision)
    if name == "dino":
        return load_dino(cfg.dino, cfg.revision)
    if name == "depth":
        return load_depth(cfg.depth, cfg.revision)
    if name == "inception":
        return load_inception(cfg.inception, fid_features)
    if name == "maniqa":
        return load_maniqa(cfg.iqa, cfg.maniqa_file, cfg.revision)
    if name == "musiq":
        return load_musiq(cfg.iqa, cfg.musiq_file, cfg.revision)
    raise ValueError(f"unknown metric net {name!r}; known: {', '.join(NETS)}")
