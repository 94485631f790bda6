"""The papers' metrics: per-image scores in one batched pass, and the set-level FID.

Which metrics a generated image gets follows its task kind (`KIND_METRICS`, the columns of
the papers' tables) and what its evaluation item provides (a ground truth, a prompt, a
subject reference, a style reference, a condition map):

| metric | definition | implementation |
|---|---|---|
| F1 (canny conditions) | F1 of Canny(generated) against the canny condition, per pixel | cv2.Canny with the canny annotator's thresholds; `torchmetrics` binary F1 |
| RMSE (depth conditions) | RMSE (0-255) between the depth condition and the depth model on the generated image, both min-max normalised | the annotators' depth model (transformers) |
| RMSE (restoration) | RMSE (0-255, over the RGB pixels) between the original (ground truth) and the restored image: VisualCloze Table 1's Deblur rows, Appendix C.1 | numpy |
| FID | Fréchet distance of 2048-d Inception pool features, generated vs ground truth | `torchmetrics` FrechetInceptionDistance over torch-fidelity's InceptionV3 |
| SSIM | against the ground truth, Gaussian 11 x 11, sigma 1.5, on 0-255 RGB, mean over the interior (Wang et al.) | `torchmetrics` SSIM map |
| MAN-IQA, MUSIQ | no-reference quality (KonIQ checkpoints) | `pyiqa` archs |
| CLIP-Score | max(100 cos(image, prompt), 0) (Hessel et al.) | CLIP embeddings (transformers), computed once for every CLIP metric; torchmetrics' `clip_score` (1.9) breaks on transformers 5's output objects |
| CLIP-T / CLIP-I / DINOv2 | cos(image, prompt) / cos(CLIP image, reference) / cos(DINOv2 CLS, reference) | DreamBooth's definitions |
| CLIP style | cos(CLIP image, style reference) | InstantStyle / StyleShot's style score |

The generated image is resized to the ground truth's (or condition's) size for the paired
metrics (SSIM, F1, RMSE). Every network runs on batches of `batch_size` images of one shape
(the processors of CLIP and DINOv2 resize, so they batch across shapes); FID's features are
kept per image so that any grouping (task x in-context rows) gets its own FID.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from annotators import features
from annotators.features import rgb
from train.evaluate.models import MANIQA_CROP, MetricModelsConfig, load_net


@dataclass(frozen=True)
class Metric:
    name: str
    label: str  # the papers' column header
    higher_is_better: bool
    net: str | None  # metric network it needs (train.evaluate.models)


METRICS = {m.name: m for m in (
    Metric("f1", "F1", True, None),
    Metric("rmse", "RMSE", False, "depth"),
    Metric("fid", "FID", False, "inception"),
    Metric("ssim", "SSIM", True, None),
    Metric("maniqa", "MAN-IQA", True, "maniqa"),
    Metric("musiq", "MUSIQ", True, "musiq"),
    Metric("clip_score", "CLIP-Score", True, "clip"),
    Metric("dino", "DINOv2", True, "dino"),
    Metric("clip_i", "CLIP-I", True, "clip"),
    Metric("clip_t", "CLIP-T", True, "clip"),
    Metric("clip_style", "CLIP style", True, "clip"),
)}

# Task kinds -> (table title, metric columns in the papers' order).
KINDS = {
    "conditional": ("Conditional generation", ("f1", "rmse", "fid", "ssim", "maniqa", "musiq", "clip_score")),
    "restoration": ("Image restoration", ("rmse", "fid", "ssim", "maniqa", "musiq", "clip_score")),
    "editing": ("Image editing", ("fid", "ssim", "maniqa", "musiq", "clip_score")),
    "subject": ("Subject-driven generation", ("dino", "clip_i", "clip_t")),
    "extraction": ("Subject extraction", ("dino", "clip_i", "ssim")),
    "dense": ("Dense prediction", ("fid", "ssim")),
    "style": ("Style transfer", ("clip_t", "clip_style")),
}
CONTROL = {"f1": "canny", "rmse": "depth"}  # controllability metric -> the condition it reads
PIXEL_RMSE_KINDS = ("restoration",)  # where RMSE compares the image with its ground truth
SSIM_WINDOW = 11  # Gaussian window, sigma 1.5


@dataclass
class ScoreInput:
    generated: np.ndarray  # uint8 H x W x 3
    kind: str
    truth: np.ndarray | None = None
    prompt: str | None = None
    reference: np.ndarray | None = None
    style: np.ndarray | None = None
    condition: np.ndarray | None = None
    condition_node: str | None = None


def applicable(inp: ScoreInput, enabled) -> list[str]:
    """The metrics `inp` gets: its kind's columns that are enabled and have their inputs."""
    if inp.kind not in KINDS:
        raise ValueError(f"unknown task kind {inp.kind!r}; known: {', '.join(KINDS)}")
    needs = {"fid": inp.truth, "ssim": inp.truth, "clip_score": inp.prompt, "clip_t": inp.prompt,
             "dino": inp.reference, "clip_i": inp.reference, "clip_style": inp.style}
    out = []
    for m in KINDS[inp.kind][1]:
        if m not in enabled:
            continue
        if m == "rmse" and inp.kind in PIXEL_RMSE_KINDS:
            if inp.truth is None:
                continue
        elif m in CONTROL and (inp.condition_node != CONTROL[m] or inp.condition is None):
            continue
        if m in needs and (needs[m] is None or (isinstance(needs[m], str) and not needs[m].strip())):
            continue
        out.append(m)
    return out


def resize_to(image: np.ndarray, like: np.ndarray) -> np.ndarray:
    h, w = like.shape[:2]
    if image.shape[:2] == (h, w):
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if image.shape[0] > h else cv2.INTER_CUBIC)




def chunks(indices: list[int], size: int):
    for i in range(0, len(indices), size):
        yield indices[i:i + size]


def by_shape(images: list[np.ndarray], indices) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i in indices:
        groups[images[i].shape].append(i)
    return groups


def to_tensor(images: list[np.ndarray], device, dtype=torch.float32, scale: float = 1 / 255) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(device)
    return x.to(dtype) * scale if dtype != torch.uint8 else x


def edge_f1(generated: np.ndarray, condition: np.ndarray, edges) -> float:
    """F1 of the generated image's Canny edges against the condition's edge map (> 127)."""
    from torchmetrics.functional.classification import binary_f1_score

    # both sides > 127: the canny annotator's maps are binary at the detect size and
    # bilinear-soft where it resized them back (Graph200K's canny_100_200_512)
    target = rgb(condition)[..., 0] > 127
    pred = edges(resize_to(rgb(generated), condition)) > 127
    return float(binary_f1_score(torch.from_numpy(pred).flatten(), torch.from_numpy(target).flatten()))


def pixel_rmse(generated: np.ndarray, truth: np.ndarray) -> float:
    """RMSE (0-255) over the RGB pixels of the restored image against the original."""
    g = resize_to(rgb(generated), truth).astype(np.float64)
    return float(np.sqrt(np.mean((g - rgb(truth).astype(np.float64)) ** 2)))


def normalised_depth(depth: np.ndarray) -> np.ndarray:
    """Relative depth min-max scaled to 0-255, as depth condition maps are stored."""
    d = depth.astype(np.float64)
    span = d.max() - d.min()
    return np.zeros_like(d) if span <= 0 else (d - d.min()) / span * 255.0


@dataclass
class Scorer:
    """Loads the networks the enabled metrics need (once), then scores batches of inputs."""

    models: MetricModelsConfig = field(default_factory=MetricModelsConfig)
    metrics: tuple[str, ...] = tuple(METRICS)
    batch_size: int = 16
    device: str = "cpu"
    dtype: torch.dtype = torch.float32  # transformers nets; Inception and the IQA nets stay float32
    # FID's Inception layer: 2048 (the standard FID, the papers'); 64 makes the 2048^2 matrix
    # square root of each group's FID (seconds on a CPU) cheap for tiny smoke runs.
    fid_features: int = 2048
    nets: dict | None = None  # prebuilt networks by name (benchmarks); None: load them

    def __post_init__(self):
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(METRICS)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        given, self.nets = self.nets or {}, {}
        for name in sorted({METRICS[m].net for m in self.metrics if METRICS[m].net}):
            net = given[name] if name in given else load_net(name, self.models, self.fid_features)
            if isinstance(net, tuple):
                net = (net[0].to(self.device, self.dtype), net[1])
            else:
                net = net.to(self.device)
            self.nets[name] = net
        from annotators.canny import Canny

        self._edges = Canny().edges  # the canny annotator's own thresholds

    # ------------------------------------------------------------------ embeddings
    # CLIP and DINOv2 go through annotators.features, the implementation the quality stage
    # uses too: one definition of CLIP-I / CLIP-T / DINO for the dataset and the evaluation.
    def clip_images(self, images: list[np.ndarray]) -> np.ndarray:
        return features.clip_images(self.nets["clip"], images, self.batch_size, self.device, self.dtype)

    def clip_texts(self, texts: list[str]) -> np.ndarray:
        return features.clip_texts(self.nets["clip"], texts, self.batch_size, self.device)

    def dino_images(self, images: list[np.ndarray]) -> np.ndarray:
        return features.dino_images(self.nets["dino"], images, self.batch_size, self.device, self.dtype)

    @torch.no_grad()
    def inception_features(self, images: list[np.ndarray]) -> np.ndarray:
        net = self.nets["inception"]
        out = np.zeros((len(images), self.fid_features), np.float64)
        for idx in by_shape(images, range(len(images))).values():
            for part in chunks(idx, self.batch_size):
                out[part] = net(to_tensor([rgb(images[i]) for i in part], self.device, torch.uint8)).double().cpu().numpy()
        return out

    @torch.no_grad()
    def iqa(self, name: str, images: list[np.ndarray]) -> np.ndarray:
        net = self.nets[name]
        if name == "maniqa":  # it cuts 224 x 224 crops: smaller images are enlarged first
            images = [_at_least(rgb(im), MANIQA_CROP) for im in images]
        out = np.zeros(len(images))
        for idx in by_shape(images, range(len(images))).values():
            for part in chunks(idx, self.batch_size):
                out[part] = net(to_tensor([rgb(images[i]) for i in part], self.device)).flatten().cpu().numpy()
        return out

    @torch.no_grad()
    def depth_maps(self, images: list[np.ndarray]) -> list[np.ndarray]:
        model, processor = self.nets["depth"]
        out: list = [None] * len(images)
        for idx in by_shape(images, range(len(images))).values():
            for part in chunks(idx, self.batch_size):
                pixels = processor(images=[rgb(images[i]) for i in part], return_tensors="pt")["pixel_values"]
                pred = model(pixel_values=pixels.to(self.device, self.dtype)).predicted_depth
                h, w = images[part[0]].shape[:2]
                pred = torch.nn.functional.interpolate(pred[:, None].float(), size=(h, w), mode="bicubic",
                                                       align_corners=False)[:, 0]
                for j, i in enumerate(part):
                    out[i] = pred[j].cpu().numpy()
        return out

    # ---------------------------------------------------------------------- scores
    def score(self, inputs: list[ScoreInput]) -> list[dict]:
        """Per input: {metric: value} for its applicable metrics, plus `fid_fake` / `fid_real`
        (Inception features) when FID applies."""
        wanted = [set(applicable(x, self.metrics)) for x in inputs]
        results: list[dict] = [{} for _ in inputs]

        def having(metric):
            return [i for i, w in enumerate(wanted) if metric in w]

        clip_sets = {m: having(m) for m in ("clip_score", "clip_t", "clip_i", "clip_style")}
        if any(clip_sets.values()):
            # One CLIP pass over every image and text any CLIP metric needs.
            gen_idx = sorted(set().union(*clip_sets.values()))
            gen = dict(zip(gen_idx, self.clip_images([inputs[i].generated for i in gen_idx])))
            text_idx = sorted(set(clip_sets["clip_score"]) | set(clip_sets["clip_t"]))
            text = dict(zip(text_idx, self.clip_texts([inputs[i].prompt for i in text_idx])))
            ref = dict(zip(clip_sets["clip_i"], self.clip_images([inputs[i].reference for i in clip_sets["clip_i"]])))
            sty = dict(zip(clip_sets["clip_style"], self.clip_images([inputs[i].style for i in clip_sets["clip_style"]])))
            for i in clip_sets["clip_score"]:
                results[i]["clip_score"] = max(100.0 * float(gen[i] @ text[i]), 0.0)
            for i in clip_sets["clip_t"]:
                results[i]["clip_t"] = float(gen[i] @ text[i])
            for i in clip_sets["clip_i"]:
                results[i]["clip_i"] = float(gen[i] @ ref[i])
            for i in clip_sets["clip_style"]:
                results[i]["clip_style"] = float(gen[i] @ sty[i])
        if idx := having("dino"):
            gen = self.dino_images([inputs[i].generated for i in idx])
            ref = self.dino_images([inputs[i].reference for i in idx])
            for j, i in enumerate(idx):
                results[i]["dino"] = float(gen[j] @ ref[j])
        if idx := having("fid"):
            fake = self.inception_features([inputs[i].generated for i in idx])
            real = self.inception_features([inputs[i].truth for i in idx])
            for j, i in enumerate(idx):
                results[i]["fid_fake"], results[i]["fid_real"] = fake[j], real[j]
        for name in ("maniqa", "musiq"):
            if idx := having(name):
                for i, v in zip(idx, self.iqa(name, [inputs[i].generated for i in idx])):
                    results[i][name] = float(v)
        if idx := having("ssim"):
            for i, v in zip(idx, self.ssim([inputs[i].generated for i in idx], [inputs[i].truth for i in idx])):
                results[i]["ssim"] = float(v)
        for i in having("f1"):
            results[i]["f1"] = edge_f1(inputs[i].generated, inputs[i].condition, self._edges)
        rmse = having("rmse")
        for i in (i for i in rmse if inputs[i].kind in PIXEL_RMSE_KINDS):
            results[i]["rmse"] = pixel_rmse(inputs[i].generated, inputs[i].truth)
        if idx := [i for i in rmse if inputs[i].kind not in PIXEL_RMSE_KINDS]:
            gens = [resize_to(rgb(inputs[i].generated), inputs[i].condition) for i in idx]
            for i, depth in zip(idx, self.depth_maps(gens)):
                cond = normalised_depth(rgb(inputs[i].condition)[..., 0])
                results[i]["rmse"] = float(np.sqrt(np.mean((normalised_depth(depth) - cond) ** 2)))
        return results

    def ssim(self, generated: list[np.ndarray], truths: list[np.ndarray]) -> np.ndarray:
        from torchmetrics.functional.image import structural_similarity_index_measure

        pairs = [(resize_to(rgb(g), t), rgb(t)) for g, t in zip(generated, truths)]
        out = np.zeros(len(pairs))
        for idx in by_shape([t for _, t in pairs], range(len(pairs))).values():
            for part in chunks(idx, self.batch_size):
                # float32: float64 convolutions are 10x slower on the CPU, for no digit SSIM reports
                g = to_tensor([pairs[i][0] for i in part], "cpu", torch.float32, 1.0)
                t = to_tensor([pairs[i][1] for i in part], "cpu", torch.float32, 1.0)
                _, full = structural_similarity_index_measure(g, t, data_range=255.0, reduction="none",
                                                               return_full_image=True)
                # Mean over the interior, where the 11 x 11 window lies inside the image: Wang et
                # al.'s 'valid' convention (and skimage's); torchmetrics' own mean also counts the
                # reflect-padded border.
                p = SSIM_WINDOW // 2
                out[part] = full[..., p:-p, p:-p].mean(dim=(1, 2, 3)).double().numpy()
        return out


def _at_least(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    if min(h, w) >= side:
        return image
    s = side / min(h, w)
    return cv2.resize(image, (max(side, round(w * s)), max(side, round(h * s))), interpolation=cv2.INTER_CUBIC)


class Features(torch.nn.Module):
    """Precomputed Inception features handed to torchmetrics' FID as its feature network."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


def fid(fake: list[np.ndarray], real: list[np.ndarray]) -> float | None:
    """FID of two sets of Inception features (torchmetrics); None below 2 images a side."""
    if len(fake) < 2 or len(real) < 2:
        return None
    from torchmetrics.image.fid import FrechetInceptionDistance

    # The features are already gathered to this process: no cross-process sync in compute().
    metric = FrechetInceptionDistance(feature=Features(len(fake[0])), sync_on_compute=False)
    metric.update(torch.from_numpy(np.stack(real)), real=True)
    metric.update(torch.from_numpy(np.stack(fake)), real=False)
    return float(metric.compute())
