"""Tiny random-initialised metric networks of the real architectures, in production layout.

    python -m train.evaluate.tiny_models --out build/eval-models [--only clip,iqa] [--seed 0]

Writes `{out}/clip`, `{out}/dino`, `{out}/depth` (transformers folders: config, safetensors
weights, tokenizer / image-processor files), `{out}/inception/weights-inception-2015-12-05-6726825d.pth`
(torch-fidelity's FID InceptionV3 at full size: the network FID is defined with has no
smaller variant; ~95 MB) and `{out}/iqa` (pyiqa's MANIQA and MUSIQ checkpoints under their
real file names, with `<stem>.arch.json` giving the narrow widths). `configs/eval/*-tiny.yaml`
point `models:` there; `train.evaluate.models` loads them exactly as it loads real weights.
Random weights give meaningless scores: tests check identities, agreement with a second
implementation, ordering under noise and determinism, never a value. The same seed writes
the same weights; a folder already built with that seed is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from annotators.tiny_models import metrics as metric_models
from train.evaluate.models import INCEPTION_FILE, MetricModelsConfig

COMPLETE = ".tiny-complete"
BUILDERS: dict[str, Callable[[Path], Path]] = {}
MANIQA_FILE, MUSIQ_FILE = MetricModelsConfig.maniqa_file, MetricModelsConfig.musiq_file


def tiny_model(name: str):
    def register(fn):
        BUILDERS[name] = fn
        return fn

    return register


# CLIP and DINOv2: the annotators' tiny builders (the quality stage scores with the same nets).
clip_tokenizer = metric_models.byte_clip_tokenizer
tiny_model("clip")(metric_models.build_clip)
tiny_model("dino")(metric_models.build_dino)


@tiny_model("depth")
def build_depth(folder: Path) -> Path:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
                            patch_size=14, image_size=56, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32,
                                 neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    # Depth Anything's preprocessing (aspect kept, sides a multiple of 14) at 56 instead of 518.
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      resample=3, do_pad=False, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


@tiny_model("inception")
def build_inception(folder: Path) -> Path:
    """Random weights of torch-fidelity's InceptionV3, saved as its release checkpoint is
    (a plain state dict). Its constructor always loads a checkpoint, downloading by default:
    the random module is made with that load turned into a no-op, here and nowhere else."""
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as fidelity

    class Unloaded(fidelity.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None

    with mock.patch.object(fidelity, "load_state_dict_from_url", lambda *a, **k: {}):
        net = Unloaded("inception-v3-compat", ["2048"])
    for module in net.modules():
        # He init keeps activations alive through 17 ReLU blocks; torch's default init shrinks
        # them to ~1e-8 by the pool layer, which would leave FID without a signal to test.
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in net.state_dict().items()}, folder / INCEPTION_FILE)
    return folder


TINY_MANIQA = {"embed_dim": 32, "dim_mlp": 32, "num_heads": [2, 2], "depths": [1, 1], "window_size": 4,
               "num_tab": 1, "scale": 0.8, "test_sample": 2,
               # MANIQA reads ViT blocks 6-9: ten blocks, narrow.
               "backbone": {"name": "vit_base_patch8_224", "embed_dim": 32, "depth": 10, "num_heads": 2,
                            "mlp_ratio": 2.0}}
# MUSIQ's multi-scale input: the native image plus resized copies at these longer sides
# (224 and 384 in the real model); tiny images get tiny scales.
TINY_MUSIQ = {"hidden_size": 32, "mlp_dim": 64, "num_heads": 2, "num_layers": 2, "longer_side_lengths": [64, 96]}


@tiny_model("iqa")
def build_iqa(folder: Path) -> Path:
    from pyiqa.archs.musiq_arch import MUSIQ

    from train.evaluate.models import _maniqa_backbone

    folder.mkdir(parents=True, exist_ok=True)
    options = {k: v for k, v in TINY_MANIQA.items() if k != "backbone"}
    from pyiqa.archs.maniqa_arch import MANIQA

    with _maniqa_backbone(TINY_MANIQA["backbone"]):
        maniqa = MANIQA(pretrained=False, **options)
    musiq = MUSIQ(pretrained=False, **TINY_MUSIQ)
    for net, name, arch in ((maniqa, MANIQA_FILE, TINY_MANIQA), (musiq, MUSIQ_FILE, TINY_MUSIQ)):
        torch.save({k: v.contiguous() for k, v in net.state_dict().items()}, folder / name)
        (folder / (name.split(".")[0] + ".arch.json")).write_text(json.dumps(arch, indent=2) + "\n")
    return folder


def build(out, only=None, seed: int = 0, log=print) -> dict[str, Path]:
    names = list(only) if only else sorted(BUILDERS)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise SystemExit(f"error: no tiny metric model named {unknown}; known: {sorted(BUILDERS)}")
    done = {}
    for name in names:
        folder, start = Path(out) / name, time.perf_counter()
        marker = folder / COMPLETE
        if marker.exists() and marker.read_text().strip() == str(seed):
            done[name] = folder
            continue
        torch.manual_seed(seed)
        done[name] = BUILDERS[name](folder)
        marker.write_text(f"{seed}\n")
        log(f"tiny_models: {name} -> {folder} ({time.perf_counter() - start:.1f} s)")
    return done


def tiny_models_config(out) -> MetricModelsConfig:
    """`models:` pointing every metric net at the tiny folders under `out`."""
    out = Path(out)
    return MetricModelsConfig(clip=str(out / "clip"), dino=str(out / "dino"), depth=str(out / "depth"),
                              inception=str(out / "inception"), iqa=str(out / "iqa"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.evaluate.tiny_models", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="build/eval-models")
    p.add_argument("--only", default="", help=f"comma-separated names (default all: {', '.join(sorted(BUILDERS))})")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    build(args.out, [s.strip() for s in args.only.split(",") if s.strip()] or None, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
