"""Prepare an external evaluation folder (images + prompts.jsonl) for `data.source: folder`.

    python -m train.evaluate.prepare coco --images val2017 --captions annotations/captions_val2017.json \
        --out data/coco512 [--size 512] [--tasks canny,GaussianBlur] [--num 5000] [--seed 0]
    python -m train.evaluate.prepare dreambench --dataset dreambooth/dataset --prompts prompts.txt \
        --out data/dreambench [--size 512]

coco: every image centre-cropped to a square and resized to --size (OminiControl's and
VisualCloze's 512² COCO val2017 protocol), its first caption as the prompt, and per task a
condition computed here: `canny` with the canny annotator, any degradation node
(`GaussianBlur`, `Inpainting`, ...) with graph200k.degradations seeded per image. The image
is the ground truth. dreambench: one line per (subject, prompt); the subject's first image
(sorted by name) is the reference, the class is the folder name without trailing digits
(`dog2` -> `dog`), and each prompt line is a template with `{}` for the class
("a {} in the jungle"); no ground truth (DINOv2 / CLIP-I compare with the reference).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from graph200k.nodes import DEGRADATION, NODE_TYPES


def square(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    return cv2.resize(image[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def prepare_coco(images: Path, captions: Path, out: Path, size: int, tasks: list[str], num: int | None,
                 seed: int) -> int:
    from annotators.canny import Canny
    from graph200k import degradations
    from train.evaluate.sets import item_seed

    for t in tasks:
        if t != "canny" and (t not in NODE_TYPES or NODE_TYPES[t].kind != DEGRADATION):
            raise SystemExit(f"error: task condition {t!r} is neither canny nor a degradation node")
    meta = json.loads(captions.read_text())
    files = {im["id"]: im["file_name"] for im in meta["images"]}
    first: dict[int, str] = {}
    for ann in sorted(meta["annotations"], key=lambda a: a["id"]):
        first.setdefault(ann["image_id"], ann["caption"].strip())
    ids = sorted(first)[:num] if num else sorted(first)
    edges = Canny().edges
    lines = []
    for d in ["images"] + tasks:
        (out / d).mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        name = f"{image_id:012d}"
        image = square(load(images / files[image_id]), size)
        Image.fromarray(image).save(out / "images" / f"{name}.png")
        for t in tasks:
            cond = edges(image) if t == "canny" else degradations.apply(t, image, item_seed(seed, f"{t}/{name}"))
            Image.fromarray(cond).save(out / t / f"{name}.png")
            lines.append({"id": name, "task": f"{t}->target", "prompt": first[image_id],
                          "images": {t: f"{t}/{name}.png", "target": f"images/{name}.png"}})
    (out / "prompts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return len(lines)


def prepare_dreambench(dataset: Path, prompts: Path, out: Path, size: int) -> int:
    templates = [x.strip() for x in prompts.read_text().splitlines() if x.strip()]
    if not templates or any("{}" not in t for t in templates):
        raise SystemExit(f"error: {prompts}: every line must be a prompt template with {{}} for the class")
    (out / "references").mkdir(parents=True, exist_ok=True)
    lines = []
    for subject in sorted(p for p in dataset.iterdir() if p.is_dir()):
        pictures = sorted(p for p in subject.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not pictures:
            continue
        Image.fromarray(square(load(pictures[0]), size)).save(out / "references" / f"{subject.name}.png")
        cls = re.sub(r"\d+$", "", subject.name).replace("_", " ")
        for i, template in enumerate(templates):
            lines.append({"id": f"{subject.name}-{i:02d}", "task": "reference->target", "prompt": template.format(cls),
                          "subject": cls, "images": {"reference": f"references/{subject.name}.png"}})
    (out / "prompts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return len(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.evaluate.prepare", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="set", required=True)
    c = sub.add_parser("coco")
    c.add_argument("--images", required=True, type=Path)
    c.add_argument("--captions", required=True, type=Path)
    c.add_argument("--tasks", default="canny", help="comma list: canny and/or degradation nodes")
    c.add_argument("--num", type=int, default=None)
    c.add_argument("--seed", type=int, default=0)
    d = sub.add_parser("dreambench")
    d.add_argument("--dataset", required=True, type=Path, help="folder of subject folders")
    d.add_argument("--prompts", required=True, type=Path, help="prompt templates, one a line, {} = class")
    for s in (c, d):
        s.add_argument("--out", required=True, type=Path)
        s.add_argument("--size", type=int, default=512)
    args = p.parse_args(argv)
    if args.set == "coco":
        n = prepare_coco(args.images, args.captions, args.out, args.size,
                         [t.strip() for t in args.tasks.split(",") if t.strip()], args.num, args.seed)
    else:
        n = prepare_dreambench(args.dataset, args.prompts, args.out, args.size)
    print(f"prepare: {n} lines -> {args.out / 'prompts.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
