"""A tiny Subjects200K-format parquet made from the real photos inside scikit-image.

Same schema as Yuanshi/Subjects200K: composite `image` (two panels of one subject with
margins), `collection`, `quality_assessment`, `description`. The two panels of a row are
two views of the same subject: the stereo motorcycle pair, or two different crops (one
mirrored) of one photo. Used by `make demo` and the tests; nothing is downloaded.

    python -m graph200k.fixtures --out build/subjects200k-mini.parquet [--rows 40] [--bad]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

# (loader, item, category, description of view 0, description of view 1)
SUBJECTS = [
    ("astronaut", "astronaut", "People",
     "An astronaut in a white spacesuit smiles in front of a US flag and a model shuttle.",
     "A close view of the astronaut in a white suit, the flag behind the shoulder."),
    ("chelsea", "tabby cat", "Animals",
     "A ginger tabby cat with green eyes looks to the side against a dark backdrop.",
     "The ginger tabby cat seen closer, its striped face and whiskers in focus."),
    ("coffee", "coffee cup", "Food & Drink",
     "A cup of coffee with latte art on a white saucer, set on a wooden table.",
     "The latte with a leaf pattern in a white cup, seen from a nearer angle."),
    ("rocket", "rocket", "Vehicles",
     "A rocket stands upright on its launch pad under a bright blue sky.",
     "The launch pad and the rocket's white body, framed more tightly."),
    ("motorcycle", "motorcycle", "Vehicles",
     "A motorcycle parked in a cluttered workshop, seen from the left camera.",
     "The same parked motorcycle in the workshop, seen from the right camera."),
    ("hubble_deep_field", "galaxy field", "Space",
     "Hundreds of distant galaxies scattered over the black sky of the Hubble deep field.",
     "A patch of the deep field with bright spiral and elliptical galaxies."),
    ("immunohistochemistry", "tissue slide", "Science",
     "A stained tissue section under the microscope, brown and blue cells.",
     "A magnified region of the stained slide showing clustered nuclei."),
    ("colorwheel", "colour wheel", "Objects",
     "A smooth colour wheel with every hue around a white centre.",
     "The colour wheel seen mirrored and closer, reds and blues at the edge."),
    ("retina", "retina", "Science",
     "A fundus photograph of a human retina with branching blood vessels.",
     "The optic disc of the retina with vessels radiating outward."),
    ("camera", "photographer", "People",
     "A photographer in a dark coat adjusts a camera on a tripod in a park.",
     "The cameraman and his tripod, closer, buildings far behind."),
]


def _photo(name: str, view: int) -> np.ndarray:
    from skimage import data

    if name == "motorcycle":
        left, right, _ = data.stereo_motorcycle()
        img = left if view == 0 else right
    else:
        img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def _square_view(img: np.ndarray, size: int, zoom: float, shift: float, mirror: bool) -> Image.Image:
    h, w = img.shape[:2]
    side = int(min(h, w) * zoom)
    y = int((h - side) * 0.5)
    x = int((w - side) * (0.5 + shift))
    x = max(0, min(w - side, x))
    crop = Image.fromarray(img[y:y + side, x:x + side]).resize((size, size), Image.BICUBIC)
    return crop.transpose(Image.FLIP_LEFT_RIGHT) if mirror else crop


def composite(panel0: Image.Image, panel1: Image.Image, margin: int,
              right_margin: int | None = None) -> Image.Image:
    """Two square panels side by side: margin around and between, as Subjects200K."""
    s = panel0.size[0]
    right_margin = 2 * margin if right_margin is None else right_margin
    canvas = Image.new("RGB", (2 * s + 2 * margin + right_margin, s + 2 * margin), "white")
    canvas.paste(panel0, (margin, margin))
    canvas.paste(panel1, (s + 2 * margin, margin))
    return canvas


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# With `bad`: rows appended after the good ones, each ingest drops with its reason...
BAD_ROWS = ("undecodable image", "size no panel layout fits", "no description_0",
            "description_valid false")
# ...and good rows whose text ingest cleans (row index -> what is wrong): they stay good
# rows, so the count of ingested samples is the same with or without `bad`.
DIRTY_ROWS = {2: "control characters and escape sequences in item and description_0",
              3: "a 200,000-character description_0"}
_DIRTY_COFFEE = ("A cup of coffee\x00 with latte art\x1b[1;31m on a white saucer\x1b[0m, set "
                 "on a wooden\x07 table.\u202e\x7f")


def _dirty(row: dict, i: int) -> dict:
    desc = dict(row["description"])
    if i == 2:
        desc["item"] = desc["item"] + "\x00"
        desc["description_0"] = _DIRTY_COFFEE
    elif i == 3:
        desc["description_0"] = ((desc["description_0"] + " ") * 4000)[:200_000]
    return {**row, "description": desc}


def make_rows(num_rows: int | None = None, bad: bool = False, seed: int = 0) -> list[dict]:
    """Rows in Subjects200K's schema. Every 5th row is a 1024^2-panel collection_3 row;
    quality scores vary so that the presets filter some rows. With `bad`, the rows of
    BAD_ROWS are appended (in that order) and the rows of DIRTY_ROWS get dirty text."""
    rng = np.random.default_rng(seed)
    num_rows = len(SUBJECTS) if num_rows is None else num_rows
    rows = []
    for i in range(num_rows):
        name, item, category, d0, d1 = SUBJECTS[i % len(SUBJECTS)]
        big = i % 5 == 4
        size, margin = (1024, 16) if big else (512, 8)
        zoom0, zoom1 = rng.uniform(0.85, 1.0), rng.uniform(0.6, 0.8)
        shift = rng.uniform(-0.2, 0.2)
        p0 = _square_view(_photo(name, 0), size, zoom0, 0.0, mirror=False)
        two_views = name == "motorcycle"
        p1 = _square_view(_photo(name, 1), size, zoom1 if not two_views else zoom0, shift,
                          mirror=not two_views)
        consistency = 2 if i % 7 == 6 else int(rng.integers(3, 6))
        rows.append({
            "image": {"bytes": _jpeg(composite(p0, p1, margin)), "path": None},
            "collection": "collection_3" if big else f"collection_{1 + i % 2}",
            "quality_assessment": {"compositeStructure": int(rng.integers(3, 6)),
                                   "objectConsistency": consistency,
                                   "imageQuality": int(rng.integers(3, 6))},
            "description": {"item": item, "description_0": d0, "description_1": d1,
                            "category": category, "description_valid": True},
        })
    if bad:
        ok = rows[0]
        rows.append({**ok, "image": {"bytes": b"\xff\xd8 not really a jpeg", "path": None}})
        odd = Image.new("RGB", (600, 600), "gray")
        rows.append({**ok, "image": {"bytes": _jpeg(odd), "path": None}})
        rows.append({**ok, "description": {**ok["description"], "description_0": None}})
        rows.append({**ok, "description": {**ok["description"], "description_valid": False}})
        for i in DIRTY_ROWS:
            if i < num_rows:
                rows[i] = _dirty(rows[i], i)
    return rows


def features():
    import datasets

    return datasets.Features({
        "image": datasets.Image(),
        "collection": datasets.Value("string"),
        "quality_assessment": {k: datasets.Value("int64") for k in
                               ("compositeStructure", "objectConsistency", "imageQuality")},
        "description": {"item": datasets.Value("string"),
                        "description_0": datasets.Value("string"),
                        "description_1": datasets.Value("string"),
                        "category": datasets.Value("string"),
                        "description_valid": datasets.Value("bool")},
    })


def write_parquet(path, num_rows: int | None = None, bad: bool = False, seed: int = 0) -> Path:
    import datasets

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = make_rows(num_rows, bad, seed)
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    ds = datasets.Dataset.from_dict(columns, features=features())
    tmp = path.with_name(f".{path.name}.tmp")
    ds.to_parquet(str(tmp))
    tmp.replace(path)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graph200k.fixtures",
                                 description="Write a tiny Subjects200K-format parquet from "
                                             "scikit-image's bundled photos.")
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", type=int, default=None, help=f"default {len(SUBJECTS)}")
    ap.add_argument("--bad", action="store_true",
                    help=f"append {len(BAD_ROWS)} bad rows ({', '.join(BAD_ROWS)}) and give "
                         f"{len(DIRTY_ROWS)} rows dirty text (control characters, 200,000 "
                         "characters) that ingest cleans")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    p = write_parquet(args.out, args.rows, args.bad, args.seed)
    extra = f" + {len(BAD_ROWS)} bad ({', '.join(BAD_ROWS)})" if args.bad else ""
    print(f"fixtures: wrote {args.rows or len(SUBJECTS)} rows{extra} -> {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
