"""Source shards made from real photos, and small annotators that misbehave on purpose,
for the annotate pipeline tests and benchmark.

Lives beside the tests (not in a package) so Ray workers import it by module name: the
Ray fixture puts this folder on the workers' PYTHONPATH.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from annotators.base import Annotator, Prepared, Result, Sample
from annotators.canny import Canny, CannyOptions
from graph200k.dataset import part_in, write_part
from graph200k.shards import ShardWriter, encode_image, json_bytes, shard_path

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
SAMPLES = 6  # per test shard
# The pipeline tests' canny: their 64-px samples at their own size (cv2.Canny exactly, and
# no 512-px enlargement per sample); Graph200K's 512 is tested in test_conformance.py
CANNY = {"class": "annotators.canny.Canny", "low_threshold": 100, "high_threshold": 200,
         "detect_resolution": None, "batch_size": 4}
TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent


def photo(name: str) -> np.ndarray:
    from skimage import data

    img = getattr(data, name)()
    return img if img.ndim == 3 else np.stack([img] * 3, axis=-1)


def crop(img: np.ndarray, size: int, variant: int) -> np.ndarray:
    """A square crop whose position and scale depend on `variant`, resized to size²."""
    h, w = img.shape[:2]
    side = int(min(h, w) * (0.6 + 0.4 * ((variant * 37) % 11) / 10))
    y = ((variant * 53) % max(1, h - side + 1))
    x = ((variant * 29) % max(1, w - side + 1))
    view = img[y:y + side, x:x + side]
    if variant % 2:
        view = view[:, ::-1]
    return cv2.resize(np.ascontiguousarray(view), (size, size), interpolation=cv2.INTER_AREA)


def make_samples(shard: int, count: int, size: int = 64, first_row: int | None = None):
    photos = [photo(p) for p in PHOTOS]
    first_row = shard * 1000 if first_row is None else first_row
    for i in range(count):
        row = first_row + i
        k = row % len(PHOTOS)
        target, reference = crop(photos[k], size, row), crop(photos[k], size, row + 7)
        meta = {
            "key": f"{row:07d}", "row": row, "panel": 0, "collection": "fixture",
            "item": PHOTOS[k], "category": "photo",
            "description": f"a photo of the {PHOTOS[k]}",
            "reference_description": f"another photo of the {PHOTOS[k]}",
            "quality": {"compositeStructure": 5, "objectConsistency": 5, "imageQuality": 5},
            "size": [size, size], "nodes": ["target", "reference"],
        }
        yield {
            "__key__": f"{row:07d}",
            "target.jpg": encode_image(target, "jpg", 90),
            "reference.jpg": encode_image(reference, "jpg", 90),
            "meta.json": json_bytes(meta),
        }


def make_source_shard(folder: Path, shard: int, count: int, size: int = 64, corrupt: set = ()):
    samples = list(make_samples(shard, count, size))
    for s in samples:
        if s["__key__"] in corrupt:
            s["target.jpg"] = b"\xff\xd8 this is not a jpeg"
    path = shard_path(folder, shard)
    with ShardWriter(path) as writer:  # as ingest writes it: tar, index, then stats
        for s in samples:
            writer.write(s)
    write_part(part_in(folder, shard), writer.record, {"shard": shard, "written": count})
    return path


def write_config(folder: Path, stages: dict, rows_per_block: int = 4, name="annotate.yaml",
                 **top) -> str:
    """An annotate config with small blocks, so even 6 samples spread over both workers."""
    path = folder / name
    path.write_text(yaml.safe_dump({"ray": {"rows_per_block": rows_per_block}, "stages": stages,
                                    **top}))
    return str(path)


def tiny_stages_config(folder: Path, stages, models_root: str, src: Path) -> str:
    """The demo's blocks of `stages` (configs/annotate-tiny.yaml) pointed at the tiny models under
    `models_root`, two rows per batch and per block, the side inputs read from `src`."""
    tiny = yaml.safe_load((REPO / "configs" / "annotate-tiny.yaml").read_text())
    blocks = {name: {**{k: (v.replace("build/tiny-models", models_root) if isinstance(v, str) else v)
                        for k, v in tiny["stages"][name].items()}, "batch_size": 2} for name in stages}
    return write_config(folder, blocks, rows_per_block=2, side_inputs={
        "style_pool": {"kind": "shards", "path": str(src), "member": "reference.jpg"},
        # depthedit's new subjects: the other items (one category here)
        "subject_pool": {"kind": "records", "path": str(src)}})


def sidecar(out, stage: str, shard: int) -> Path:
    return Path(out) / stage / f"{shard:06d}.tar"


def stage_stats(out, stage: str, shard: int) -> dict:
    return json.loads((Path(out) / stage / f"{shard:06d}.stats.json").read_text())


def joined(out, shard: int) -> list[dict]:
    from graph200k.assemble import joined_samples
    from graph200k.dataset import ShardSet

    return list(joined_samples(ShardSet(out), shard))


def annotate_args(src, out, config, shards="0-1", *extra) -> list[str]:
    return ["--shards", shards, "--config", config, "--src", str(src), "--out", str(out), *extra]


def stage_samples(count: int, size: int = 64, shard: int = 0, seed: int = 0,
                  reads=("description", "item", "category")) -> list[Sample]:
    """Samples as a stage sees them: target/reference bytes, the source meta fields of
    `reads`, the run seed. The photos of `make_samples`."""
    out = []
    for s in make_samples(shard, count, size):
        meta = json.loads(s["meta.json"])
        out.append(Sample(s["__key__"], {"target.jpg": s["target.jpg"],
                                         "reference.jpg": s["reference.jpg"]},
                          meta={k: meta[k] for k in reads if k in meta}, seed=seed))
    return out


# -- annotators that misbehave on purpose ------------------------------------------------

class FakeHED(Annotator):
    """A second cheap CPU stage, standing in for `hed`: a blurred grayscale target."""

    name = "hed"
    produces = ("hed",)
    needs = ("target",)

    def annotate(self, sample):
        gray = cv2.cvtColor(sample.image(), cv2.COLOR_RGB2GRAY)
        return {"hed.png": encode_image(cv2.GaussianBlur(gray, (5, 5), 0), "png")}


@dataclass
class RaisingOptions(CannyOptions):
    raise_on: list = field(default_factory=list)


class RaisingCanny(Canny):
    """Canny that raises on the keys listed in its config."""

    Options = RaisingOptions

    def annotate(self, sample):
        if sample.key in self.options.raise_on:
            raise RuntimeError(f"boom on {sample.key}")
        return super().annotate(sample)


@dataclass
class DyingOptions(CannyOptions):
    marker: str = ""


class DyingCanny(Canny):
    """Canny whose worker process dies the first time it runs (marker file in tmp)."""

    Options = DyingOptions

    def annotate(self, sample):
        marker = Path(self.options.marker)
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(17)  # no cleanup, no exception: what an OOM kill or segfault looks like
        return super().annotate(sample)


class WordCount(Annotator):
    """A toy *model* stage: reads the description and item, writes only a meta entry (the
    word count, its per-sample seed and a seeded draw), through prepare -> predict -> encode."""

    name = "wordcount"
    produces = ()
    needs = ("target",)
    reads = ("description", "item")

    def prepare(self, sample):
        return Prepared(len(sample.text("description").split()), sample.seed_for(0))

    def predict(self, inputs):
        return [n * 1 for n in inputs]  # the "model": identity, one call per batch

    def encode(self, sample, context, output):
        return Result({}, meta={"words": output, "item": sample.text("item"), "seed": context,
                                "draw": int(sample.rng(1).integers(1 << 30))})


@dataclass
class PoolPickOptions:
    marker_dir: str = ""


class PoolPick(Annotator):
    """A model stage whose actors read a side input: which image each sample drew, its
    size as the actor read it, and the actor's pid."""

    name = "poolpick"
    produces = ()
    side_inputs = ("pool",)
    Options = PoolPickOptions

    def load(self):
        # every actor reads the whole pool once and says so: a file named by its pid
        pool = self.side["pool"]
        sizes = {i: len(pool.read(i)) for i in pool.ids}
        Path(self.options.marker_dir, f"{os.getpid()}.json").write_text(json.dumps(sizes))

    def prepare(self, sample):
        return Prepared(sample.side["pool"].choose(sample.seed_for(0)))

    def predict(self, inputs):
        pool = self.side["pool"]
        return [(pick, len(pool.read(pick)), os.getpid()) for pick in inputs]

    def encode(self, sample, context, output):
        pick, size, pid = output
        return Result({}, meta={"pick": pick, "bytes": size, "pid": pid})


class AlwaysFails(Annotator):
    """A model stage whose model fails on every input (bad weights, an OOM on every batch)."""

    name = "mlsd"
    produces = ("mlsd",)

    def prepare(self, sample):
        return Prepared(sample.key)

    def predict(self, inputs):
        raise RuntimeError("CUDA out of memory (simulated)")


class _GpuLike(Annotator):
    needs = ("target",)

    def prepare(self, sample):
        return Prepared(sample.image().mean(axis=2).astype(np.uint8))

    def predict(self, inputs):
        return [255 - x for x in inputs]

    def encode(self, sample, context, output):
        return Result({f"{self.name}.png": encode_image(output, "png")})


class GpuLikeHED(_GpuLike):
    name = "hed"
    produces = ("hed",)


class GpuLikeDepth(_GpuLike):
    name = "depth"
    produces = ("depth",)


@dataclass
class SlowOptions(CannyOptions):
    seconds: float = 0.1


class SlowCanny(Canny):
    """Canny that takes its time, so that a node can be lost while it runs."""

    Options = SlowOptions

    def annotate(self, sample):
        import time

        time.sleep(self.options.seconds)
        return super().annotate(sample)


def slow_canny_setup(folder: Path, shards: int, samples: int) -> tuple[Path, str]:
    """(source folder, config) of `shards` source shards annotated by a SlowCanny in
    2-row blocks: a run long enough to be interrupted mid-way."""
    src = folder / "source"
    for shard in range(shards):
        make_source_shard(src, shard, samples)
    slow = {**CANNY, "class": "annotate_helpers.SlowCanny", "seconds": 0.15, "batch_size": 2}
    return src, write_config(folder, {"canny": slow}, rows_per_block=2)


class NeedsMissing(Annotator):
    name = "mlsd"
    produces = ("mlsd",)
    needs = ("depth",)
    requires = ("a_module_that_is_not_installed_xyz",)
    extra = "annotate"

    def annotate(self, sample):  # pragma: no cover - never built
        return {}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


S3_TEST_ENV = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}",
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on this machine (loopback only), the endpoint of S3_TEST_ENV."""
    from moto.server import ThreadedMotoServer

    os.environ.update(S3_TEST_ENV)
    port = int(S3_TEST_ENV["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield S3_TEST_ENV["AWS_ENDPOINT_URL"]
    server.stop()


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session: Ray's startup costs seconds."""
    import ray

    if not ray.is_initialized():
        path = os.pathsep.join([str(TESTS_DIR), str(REPO), os.environ.get("PYTHONPATH", "")])
        # Where the S3 tests' endpoint will listen (moto, started only by the `s3` fixture):
        # set before Ray starts, so every worker's s3fs finds it the usual way (env).
        os.environ.update(S3_TEST_ENV)
        # gpu_like: a stand-in accelerator, one per cluster, for the wave-planning test
        ray.init(num_cpus=2, resources={"gpu_like": 1}, include_dashboard=False,
                 log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path, **S3_TEST_ENV}})
    yield ray
