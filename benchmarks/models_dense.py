"""The dense stages (hed, mlsd, openpose, depth, normal, uniformer) for bench_models.py.

For each stage, random weights of the real architecture at the production input size
(512² photos, ControlNet's detect resolution 512, Depth Anything's 518, UperNet's 512):
  (a) our stage end to end through the pipeline's operators (`run_inline`: JPEG decode,
      resize, one batched forward, the decoding / resize back, PNG encode), a batch of
      --batch-size;
  (b) the per-image way: PIL opens the JPEG, controlnet_aux's detector (or transformers'
      `pipeline`) runs on it, the returned PIL image is saved as PNG; one image at a time.
Same images, same weights (one module object), warm-up excluded, best of --rounds; on the
CPU depth, normal and uniformer use the first 4 images (their nets take seconds each).
CPU: float32, `torch.get_num_threads()` threads for both. --gpu: our stage in float16
(bench_models' --dtype) on CUDA at batch 16-64, the per-image way as users run it (float32, CUDA), target >= 3x.

Lines: `<stage>.stage_images_per_s`, `<stage>.per_image_images_per_s`, statuses of our
stage's outcomes, and `ratio_stage_vs_per_image_<stage>` (CPU target >= 1.0).
"""

from __future__ import annotations

import gc
import io
import tempfile
import timeit
from pathlib import Path

import numpy as np

STAGES = ("hed", "mlsd", "openpose", "depth", "normal", "uniformer")
# On the CPU the three big nets take 5-30 s an image (2 cores): they run on at most this
# many of the images, so that the whole CPU run stays within minutes
CPU_HEAVY, CPU_HEAVY_IMAGES = ("depth", "normal", "uniformer"), 4
SIZE = 512
IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


# -- the real architectures, random weights ------------------------------------------------
def _controlnet_net(name: str):
    from annotators import controlnet_nets as nets

    if name == "hed":
        return nets.quiet_import("controlnet_aux.hed").ControlNetHED_Apache2()
    if name == "mlsd":
        return nets.quiet_import("controlnet_aux.mlsd.models.mbv2_mlsd_large").MobileV2_MLSD_Large()
    if name == "openpose":
        return nets.quiet_import("controlnet_aux.open_pose.model").bodypose_model()
    if name == "normal":
        net = nets.dpt_hybrid_net()  # DPT-Hybrid at its real widths
        # A random head ends in a ReLU that zeroes everything: a constant depth, which our
        # stage fails and the detector turns into NaN. A positive last bias gives both a
        # varying depth, so both do the whole normal computation.
        import torch

        last = [m for m in net.scratch.output_conv if isinstance(m, torch.nn.Conv2d)][-1]
        with torch.no_grad():
            last.bias.fill_(1.0)
        return net
    raise KeyError(name)


def _depth_anything_large(folder: Path):
    """Depth-Anything-V2-Large-hf's sizes (DINOv2-L/14 backbone, DPT head) and processor."""
    from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation,
                              Dinov2Config, DPTImageProcessor)

    backbone = Dinov2Config(image_size=518, patch_size=14, hidden_size=1024,
                            num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4,
                            out_indices=[5, 12, 18, 24], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=1024,
                                 neck_hidden_sizes=[256, 512, 1024, 1024],
                                 fusion_hidden_size=256, head_hidden_size=32)
    config.save_pretrained(folder)
    processor = DPTImageProcessor(size={"height": 518, "width": 518}, keep_aspect_ratio=True,
                                  ensure_multiple_of=14, resample=3, do_pad=False, **IMAGENET)
    processor.save_pretrained(folder)
    return DepthAnythingForDepthEstimation(config).eval(), processor


def _upernet_convnext_small(folder: Path):
    """openmmlab/upernet-convnext-small's sizes (ConvNeXt-S backbone, 150 ADE20K classes)."""
    from transformers import (ConvNextConfig, SegformerImageProcessor, UperNetConfig,
                              UperNetForSemanticSegmentation)

    backbone = ConvNextConfig(depths=[3, 3, 27, 3], hidden_sizes=[96, 192, 384, 768],
                              out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=backbone, hidden_size=512,
                           auxiliary_in_channels=384, num_labels=150)
    config.save_pretrained(folder)
    processor = SegformerImageProcessor(size={"height": 512, "width": 512}, **IMAGENET)
    processor.save_pretrained(folder)
    return UperNetForSemanticSegmentation(config).eval(), processor


# -- (a) our stage, (b) the per-image way ------------------------------------------------------
def _stage_class(name: str):
    from annotators.depth import Depth
    from annotators.hed import HED
    from annotators.mlsd import MLSD
    from annotators.normal import MidasNormal
    from annotators.openpose import OpenPose
    from annotators.uniformer import Uniformer

    return {"hed": HED, "mlsd": MLSD, "openpose": OpenPose, "depth": Depth,
            "normal": MidasNormal, "uniformer": Uniformer}[name]


def _stage(name: str, net, folder: Path, device: str, dtype: str):
    stage = _stage_class(name)({"model": str(folder), "device": device, "dtype": dtype})
    stage.build_model = lambda: net  # the random real-size net instead of a checkpoint
    return stage


def real_net(name: str, folder: Path):
    """(net, processor or None): the real architecture at full size, random weights; the
    transformers ones write their config and processor into `folder`."""
    if name == "depth":
        return _depth_anything_large(folder)
    if name == "uniformer":
        return _upernet_convnext_small(folder)
    return _controlnet_net(name).eval(), None


def tiny_net(name: str, folder: Path):
    """(net, processor or None) of a tiny model folder (`annotators.tiny_models`), loaded by
    the stage's own loader: the same code path on a CPU in seconds (bench_gpu's dry run)."""
    net = _stage_class(name)({"model": str(folder), "device": "cpu"}).build_model()
    processor = None
    if name in ("depth", "uniformer"):
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(folder)
    return net.eval(), processor


def _per_image(name: str, net, processor, device: str):
    """fn(jpeg bytes) -> PNG bytes, the way a user calls the library today."""
    from PIL import Image

    from annotators.controlnet_nets import cn_util, quiet_import

    if name == "hed":
        det = quiet_import("controlnet_aux.hed").HEDdetector(net)
        run = det
    elif name == "mlsd":
        run = quiet_import("controlnet_aux.mlsd").MLSDdetector(net)
    elif name == "openpose":
        body = quiet_import("controlnet_aux.open_pose.body")
        estimation = body.Body.__new__(body.Body)
        estimation.model = net
        run = quiet_import("controlnet_aux.open_pose").OpenposeDetector(estimation)
    elif name == "normal":
        det = quiet_import("controlnet_aux.midas").MidasDetector(net)

        def run(img):
            return det(img, depth_and_normal=True)[1]
    elif name == "depth":
        from transformers import pipeline

        pipe = pipeline("depth-estimation", model=net, image_processor=processor, device=device)

        def run(img):
            return pipe(img)["depth"]
    elif name == "uniformer":
        from transformers import pipeline

        pipe = pipeline("image-segmentation", model=net, image_processor=processor,
                        device=device)
        palette = np.asarray(cn_util().ade_palette(), np.uint8)
        ids = {v: int(k) for k, v in net.config.id2label.items()}

        def run(img):
            colours = np.zeros((img.height, img.width, 3), np.uint8)
            for segment in pipe(img, subtask="semantic"):
                colours[np.asarray(segment["mask"]) > 0] = palette[ids[segment["label"]]]
            return Image.fromarray(colours)
    else:
        raise KeyError(name)

    def one(jpeg: bytes) -> bytes:
        out = run(Image.open(io.BytesIO(jpeg)).convert("RGB"))
        buf = io.BytesIO()
        out.save(buf, format="PNG")
        return buf.getvalue()

    return one


def _best(fn, rounds: int) -> float:
    return min(timeit.repeat(fn, setup="gc.enable()", number=1, repeat=max(1, rounds)))  # gc on, as in use


def bench_stage(name: str, samples, batch_size: int, rounds: int, gpu: bool,
                dtype: str | None = None, tiny_folder: Path | None = None) -> list:
    """Our stage (in `dtype`: float16 on a GPU, float32 on the CPU by default) against the
    per-image way on the same images; the real-size net, or the tiny one in `tiny_folder`."""
    import torch

    from pipelines.stage_ops import run_inline

    device = "cuda" if gpu else "cpu"
    dtype = dtype or ("float16" if gpu else "float32")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tiny_folder or tmp)
        net, processor = tiny_net(name, folder) if tiny_folder else real_net(name, folder)
        net = net.requires_grad_(False).to(device)
        jpegs = [s.members["target.jpg"] for s in samples]
        one = _per_image(name, net, processor, device)
        with torch.inference_mode():
            one(jpegs[0])  # warm-up: allocator, kernels
            per_image = _best(lambda: [one(j) for j in jpegs], rounds)
        # our stage last: on a GPU its load() turns the shared module to float16
        stage = _stage(name, net, folder, device, dtype)
        run_inline(stage, samples[:1], batch_size=1)  # warm-up, and the model loads
        outcomes = []
        ours = _best(lambda: outcomes.append(run_inline(stage, samples, batch_size)), rounds)
        statuses = sorted({o.status.split(":")[0] for o in outcomes[-1]})
    del net, stage, one
    gc.collect()
    n = len(samples)
    return [(f"{name}.stage_images_per_s", n / ours),
            (f"{name}.per_image_images_per_s", n / per_image),
            (f"{name}.stage_statuses", ",".join(statuses)),
            (f"ratio_stage_vs_per_image_{name}", per_image / ours)]


def run(args) -> list:
    import torch

    from annotate_helpers import stage_samples

    if args.gpu and not torch.cuda.is_available():
        return [("dense.gpu", "skipped (no CUDA device)")]
    names = [s for s in STAGES if not args.stages or s in args.stages]
    count = max(args.images, 2 * args.batch_size) if args.gpu else args.images
    samples = stage_samples(count, size=SIZE)
    lines = [("dense.images", count), ("dense.batch_size", args.batch_size),
             ("dense.device", torch.cuda.get_device_name() if args.gpu else
              f"cpu, {torch.get_num_threads()} threads")]
    for name in names:
        subset = samples
        if not args.gpu and name in CPU_HEAVY:
            subset = samples[:CPU_HEAVY_IMAGES]
        lines.append((f"{name}.images", len(subset)))
        lines += bench_stage(name, subset, min(args.batch_size, len(subset)), args.rounds,
                             args.gpu, getattr(args, "dtype", None))
    return lines
