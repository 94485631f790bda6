"""Publish a folder of annotated shards, with a generated dataset card.

    python -m graph200k.publish --src shards/graph200k --to hf://datasets/ORG/graph200k
    python -m graph200k.publish --src shards/graph200k --to s3://bucket/graph200k
    python -m graph200k.publish --src shards/graph200k --to /data/release   (or file://...)
    python -m graph200k.publish --src shards/graph200k                      (card only)

Published: the complete shards (`NNNNNN.tar`), their `.stats.json`, and `README.md`, the
card, last, so a reader that sees the card sees every shard it counts. Temporary files of
a run in progress are never published.

- Hub: `HfApi.upload_folder`, which in huggingface_hub 2.x is the resumable, multi-commit
  upload that `upload_large_folder` used to be (rerun to resume); `upload_large_folder`
  is used where it still exists.
- Any fsspec URL: each file is copied to a temporary name and renamed into place where the
  filesystem can rename; object stores (s3, gs, az, ...) get a single PUT, which already
  makes an object appear whole or not at all. A file already there with the same size is
  skipped (rerun to resume); --force copies everything again.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from graph200k.dataset_card import render
from graph200k.shards import list_shards

CARD = "README.md"
HUB_PREFIX = "hf://datasets/"
OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oci", "r2"}


def files_to_publish(folder: Path) -> list[Path]:
    files = []
    for tar in list_shards(folder):
        files.append(tar)
        stats = tar.with_name(tar.name[:-4] + ".stats.json")
        if stats.exists():
            files.append(stats)
    return files


def write_card(folder: Path, config: dict, tasks: Path | None) -> Path:
    text = render(folder, config.get("card") or {}, tasks)
    path = folder / CARD
    tmp = folder / f".{CARD}.tmp-{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def copy_to_fsspec(folder: Path, url: str, force: bool = False, log=print) -> list[str]:
    """Copy shards, stats and card to an fsspec URL; returns the names copied."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    atomic_put = bool(protocols & OBJECT_STORES)
    fs.makedirs(root, exist_ok=True)
    copied = []
    for path in files_to_publish(folder) + [folder / CARD]:
        dest = f"{root.rstrip('/')}/{path.name}"
        if not force and path.name != CARD and fs.exists(dest) and fs.size(dest) == path.stat().st_size:
            continue
        if atomic_put:
            fs.put_file(str(path), dest)
        else:
            tmp = f"{root.rstrip('/')}/.{path.name}.tmp-{os.getpid()}"
            try:
                fs.put_file(str(path), tmp)
                fs.mv(tmp, dest)
            except BaseException:
                if fs.exists(tmp):
                    fs.rm(tmp)
                raise
        copied.append(path.name)
        log(f"publish: {path.name} -> {dest}")
    return copied


def hub_upload(folder: Path, repo_id: str, private: bool = False, api=None, revision=None):
    """Create the dataset repo if needed and upload shards, stats and card."""
    from huggingface_hub import HfApi

    api = api or HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    kwargs = dict(repo_id=repo_id, folder_path=str(folder), repo_type="dataset",
                  allow_patterns=["*.tar", "*.stats.json", CARD],
                  ignore_patterns=[".*", "*.tmp-*"])
    if hasattr(api, "upload_large_folder"):  # huggingface_hub < 2.0
        kwargs.pop("ignore_patterns")
        return api.upload_large_folder(revision=revision, **kwargs)
    return api.upload_folder(revision=revision,
                             commit_message=f"Graph200K: {len(list_shards(folder))} shards", **kwargs)


def load_config(path: str | None) -> dict:
    if not path:
        return {}
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise SystemExit(f"error: publish config {path} not found") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m graph200k.publish", description=__doc__.split("\n")[0])
    p.add_argument("--src", default="shards/graph200k", help="folder of annotated shards")
    p.add_argument("--to", default=None,
                   help="hf://datasets/ORG/NAME, an fsspec URL (s3://, file://, ...) or a folder; "
                        "omitted: only write README.md into --src")
    p.add_argument("--config", default="configs/publish.yaml")
    p.add_argument("--tasks", default="configs/tasks.yaml")
    p.add_argument("--private", action="store_true", help="hub: create the repo private")
    p.add_argument("--revision", default=None, help="hub: branch to upload to")
    p.add_argument("--force", action="store_true", help="fsspec: copy files already there too")
    args = p.parse_args(argv)

    folder = Path(args.src)
    if not list_shards(folder):
        print(f"error: no shards (NNNNNN.tar) in {folder}; run `make annotate` first", file=sys.stderr)
        return 1
    config = load_config(args.config)
    card = write_card(folder, config, Path(args.tasks) if args.tasks else None)
    print(f"publish: wrote {card}")
    if args.to is None:
        return 0
    if args.to.startswith(HUB_PREFIX):
        repo_id = args.to[len(HUB_PREFIX):].strip("/")
        hub_upload(folder, repo_id, args.private, revision=args.revision)
        print(f"publish: uploaded {folder} to https://huggingface.co/datasets/{repo_id}")
    else:
        copied = copy_to_fsspec(folder, args.to, args.force)
        print(f"publish: {len(copied)} file(s) copied to {args.to}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
