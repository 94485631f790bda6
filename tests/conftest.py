"""Shared fixtures: a tiny Subjects200K parquet (with broken rows) and its source shards.

Fixtures made once per test session live under pytest's session temp dir. Other test
modules may add their own fixtures here; keep them session-scoped when they are costly.
"""

from __future__ import annotations

import os

# The CPU suite runs on the CPU on every machine: stages default to `device: auto` (CUDA and
# fp16 where a GPU is visible), and the suite's tolerances and byte-equality checks are
# float32 CPU ones. Set before anything initialises CUDA (torch reads it once, at its first
# CUDA call); subprocesses, Ray's raylet and its workers inherit it from this process.
# `GRAPH200K_TEST_GPU=1` keeps the GPUs visible: the tests that pick a device themselves
# (`-m weights`, the `cuda` parameters) then run there too.
if os.environ.get("GRAPH200K_TEST_GPU") != "1":
    import sys

    if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
        raise RuntimeError("CUDA was initialised before tests/conftest.py could hide the GPUs "
                           "(a pytest plugin?): run with CUDA_VISIBLE_DEVICES= set")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402

# One moto S3 server for the whole session: a session fixture imported into several test
# modules is registered once per module, and a second server on the same port never starts
# (ThreadedMotoServer.start waits forever), so it is defined for every module here only.
from annotate_helpers import s3_server  # noqa: E402,F401
from graph200k import fixtures  # noqa: E402
from graph200k.manifest import Manifest  # noqa: E402
from pipelines import ingest  # noqa: E402

MINI_ROWS = 12  # + 3 broken rows appended by the fixture writer
SHARD_SIZE = 4


@pytest.fixture(scope="session")
def mini_parquet(tmp_path_factory):
    path = tmp_path_factory.mktemp("subjects200k") / "mini.parquet"
    return fixtures.write_parquet(path, num_rows=MINI_ROWS, bad=True, seed=0)


@pytest.fixture(scope="session")
def source_shards(tmp_path_factory, mini_parquet):
    out = tmp_path_factory.mktemp("shards") / "source"
    rc = ingest.main(["--source", str(mini_parquet), "--out", str(out),
                      "--shard-size", str(SHARD_SIZE), "--quality", "visualcloze"])
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def source_manifest(source_shards) -> Manifest:
    return Manifest.from_shards(source_shards)


@pytest.fixture(scope="session")
def annotated_shards(tmp_path_factory):
    """(shard folder, manifest parquet) of annotated Graph200K shards made from scikit-image
    photos: target, reference, canny, depth, rmbg matte, instantstyle. The trainers' data."""
    from annotated_shards import write_annotated_shards

    folder = tmp_path_factory.mktemp("graph200k")
    write_annotated_shards(folder, num_samples=8, per_shard=4, size=64)
    # 5 %: one sample (0000003) held out, so that the trainers' validation on unseen tasks,
    # which queries held-out samples only, has one to query (the default 1 % holds none of 8)
    return folder, Manifest.from_shards(folder, test_fraction=0.05).save(folder / "manifest.parquet")


@pytest.fixture(scope="session")
def tiny_fill_dir(tmp_path_factory):
    """A tiny random FLUX.1-Fill model folder (diffusers layout), built offline once."""
    from train.visualcloze.tiny import build_tiny_fill

    return build_tiny_fill(tmp_path_factory.mktemp("tiny-flux-fill") / "model")


@pytest.fixture(scope="session")
def tiny_cogvideox_dir(tmp_path_factory):
    """A tiny random CogVideoX1.5-layout model folder (diffusers layout), built offline once."""
    from train.realgeneral.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny_cogvideox"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one intra-op thread. On 2 shared cores under load, OpenMP barriers made
    the 50-step overfit test take 44 s instead of 1 s (measured); restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def eval_models(tmp_path_factory):
    """Tiny random metric networks (train.evaluate.tiny_models), built once: their config."""
    from train.evaluate.tiny_models import build, tiny_models_config

    out = tmp_path_factory.mktemp("eval-models")
    build(out, log=lambda *_: None)
    return tiny_models_config(out)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """`tiny_models("hed")` -> the folder of that tiny annotator model (production layout,
    `python -m annotators.tiny_models`), built on first use, once per session."""
    from annotators.tiny_models import build

    out = tmp_path_factory.mktemp("tiny-models")

    def folder(name: str):
        return build(out, only=[name], log=lambda *_: None)[name]

    return folder


@pytest.fixture(scope="session")
def browse_shards(tmp_path_factory):
    """(folder, manifest path) of a published shard set with grounded boxes, style / edit
    variants and stats that name failed and not-applicable samples (tests/browse_shards.py)."""
    from browse_shards import write_browse_shards

    return write_browse_shards(tmp_path_factory.mktemp("browse-shards"))


@pytest.fixture(scope="session")
def browse_server(browse_shards, tmp_path_factory):
    """`python -m graph200k.browse` on `browse_shards`, served from a thread on a free
    port: (base url, BrowseApp)."""
    import threading

    from graph200k.browse.app import BrowseApp, make
    from graph200k.browse.catalog import Catalog

    folder, manifest = browse_shards
    app = BrowseApp(Catalog(folder, manifest), tmp_path_factory.mktemp("browse-cache"))
    server = make(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}", app
    server.shutdown()
    server.server_close()


@pytest.fixture
def bucket(s3_server):
    """A fresh bucket on the session's moto server, as an s3:// URL."""
    import uuid

    import fsspec

    name = f"g200k-{uuid.uuid4().hex[:8]}"
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(name)
    fsspec.filesystem("s3").invalidate_cache()
    return f"s3://{name}"
