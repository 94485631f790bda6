"""Publish a Graph200K dataset, one tar per shard, with a generated dataset card.

    python -m graph200k.publish --src shards/graph200k --to hf://datasets/ORG/graph200k
    python -m graph200k.publish --src shards/graph200k --to s3://bucket/graph200k
    python -m graph200k.publish --src shards/graph200k --to /data/release   (or file://...)
    python -m graph200k.publish --src shards/graph200k                      (assemble + card only)

A stages-layout `--src` (what `pipelines.annotate` writes: source shards + per-stage
sidecars) is first assembled into one tar per shard in a release folder (`--release`,
default `<src>/_release`; graph200k.assemble): the layout WebDataset users expect, with the
stage meta entries merged into `meta.json`. A shard whose parts did not change since it was
assembled is not assembled again. A plain `--src` (one tar per shard) is published as it is.

Nothing corrupt is published: every shard is checked against the sha256 its writer
recorded before anything is copied; a mismatch stops the publish, naming the shard and
the command that repairs it. Copies compare hashes, not sizes: a shard already at the
destination whose recorded sha256 matches is skipped (rerun to resume), one that differs
(a repaired shard) is copied again. Each file is written atomically (a temporary name and
a rename, or a single PUT on object stores); per shard the stats file goes last, and the
card, last of all, so a reader that sees the card sees every shard it counts.
- Hub: `HfApi.upload_folder` (resumable and multi-commit in huggingface_hub 2.x).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from graph200k import storage
from graph200k.assemble import assemble
from graph200k.dataset import ShardSet, part_in
from graph200k.dataset_card import render
from graph200k.shards import ShardError, list_shards, read_json, shard_index

CARD = "README.md"
LICENSE = "LICENSE.md"  # shipped beside the card when configs/publish.yaml gives its text
HUB_PREFIX = "hf://datasets/"
RELEASE_DIR = "_release"


class PublishError(RuntimeError):
    pass


def release_folder(src: str, release: str | None, log=print) -> str:
    """The folder of one-tar-per-shard files to publish: `src` itself when plain, else the
    assembled release folder (made or brought up to date here)."""
    shard_set = ShardSet(src)
    if shard_set.layout == "plain":
        return shard_set.root
    folder = storage.normalize(release or storage.join(shard_set.root, RELEASE_DIR))
    for shard in shard_set.shards():
        if assemble(shard_set, shard, folder):
            log(f"publish: assembled shard {shard:06d} -> {folder}")
    return folder


def files_to_publish(folder) -> list[tuple[int, list[str]]]:
    """Per shard: its tar, index and stats (stats last), those that exist."""
    out = []
    for tar in list_shards(folder):
        shard = shard_index(tar)
        part = part_in(str(folder), shard)
        out.append((shard, [p for p in (part.url, part.index_url, part.stats_url)
                            if storage.exists(p)]))
    return out


def check_shards(folder) -> list[str]:
    """Every part of every shard against its writer's record (graph200k.verify), as lines."""
    from graph200k.verify import verify

    return [f"shard {p.shard:06d} {p.part}{' ' + p.key if p.key else ''}"
            f"{'.' + p.member if p.member else ''}: {p.what}; repair: {p.repair}"
            for p in verify(folder)]


def write_license(folder, config: dict) -> str | None:
    """`LICENSE.md` from the card config's `license_text`, so the card's link resolves;
    without a text no file is written (and the card drops its relative link)."""
    text = (config.get("card") or {}).get("license_text")
    if not text:
        return None
    path = storage.join(folder, LICENSE)
    storage.atomic_write(path, (str(text).strip() + "\n").encode())
    return path


def write_card(folder, config: dict, tasks: Path | None) -> str:
    write_license(folder, config)
    text = render(Path(folder), config.get("card") or {}, tasks)
    path = storage.join(folder, CARD)
    storage.atomic_write(path, text.encode())
    return path


def _sha(tar: str, stats_url: str) -> str | None:
    """The shard's sha256: as its writer recorded it, else read from the file where that is
    cheap (a local file); None when neither is known."""
    from graph200k.verify import file_sha256

    recorded = ((read_json(stats_url) or {}).get("file") or {}).get("sha256")
    if recorded:
        return recorded
    if storage.exists(tar) and not storage.is_url(tar):
        return file_sha256(tar)
    return None


def copy_to_fsspec(folder, url: str, force: bool = False, log=print) -> list[str]:
    """Copy shards (tar, index, stats), then the card, to a folder or fsspec URL; returns
    the names copied. A shard whose sha256 equals the one at the destination is skipped."""
    dest_root = storage.normalize(url)
    storage.makedirs(dest_root)
    copied = []
    for shard, files in files_to_publish(folder):
        local = part_in(str(folder), shard)
        dest = part_in(dest_root, shard)
        if not force and storage.exists(dest.url) and \
                _sha(local.url, local.stats_url) == _sha(dest.url, dest.stats_url) is not None:
            continue
        if storage.exists(dest.stats_url):
            storage.remove(dest.stats_url)  # the old shard stops counting before it is replaced
        for path in files:
            storage.copy_file(path, storage.join(dest_root, storage.name(path)))
            copied.append(storage.name(path))
            log(f"publish: {storage.name(path)} -> {dest_root}")
    if storage.exists(storage.join(folder, LICENSE)):
        storage.copy_file(storage.join(folder, LICENSE), storage.join(dest_root, LICENSE))
        copied.append(LICENSE)
    storage.copy_file(storage.join(folder, CARD), storage.join(dest_root, CARD))
    copied.append(CARD)
    return copied


def hub_upload(folder, repo_id: str, private: bool = False, api=None, revision=None):
    """Create the dataset repo if needed and upload shards, indexes, stats and card."""
    from huggingface_hub import HfApi

    api = api or HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    kwargs = dict(repo_id=repo_id, folder_path=str(folder), repo_type="dataset",
                  allow_patterns=["*.tar", "*.stats.json", "*.index.json", CARD, LICENSE],
                  ignore_patterns=[".*", "*.tmp-*", "_*"])
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
    p.add_argument("--src", default="shards/graph200k", help="dataset folder or URL")
    p.add_argument("--to", default=None,
                   help="hf://datasets/ORG/NAME, an fsspec URL (s3://, file://, ...) or a folder; "
                        "omitted: only assemble and write README.md")
    p.add_argument("--release", default=None,
                   help="where a stages-layout --src is assembled (default: <src>/_release)")
    p.add_argument("--config", default="configs/publish.yaml")
    p.add_argument("--tasks", default="configs/tasks.yaml")
    p.add_argument("--private", action="store_true", help="hub: create the repo private")
    p.add_argument("--revision", default=None, help="hub: branch to upload to")
    p.add_argument("--force", action="store_true", help="copy shards already there too")
    args = p.parse_args(argv)

    shard_set = ShardSet(args.src)
    if not shard_set.shards():
        print(f"error: no shards (NNNNNN.tar) in {shard_set.source}; run `make annotate` first",
              file=sys.stderr)
        return 1
    config = load_config(args.config)
    problems = check_shards(shard_set.root) if shard_set.layout != "plain" else []
    if problems:
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        print("publish: nothing was published", file=sys.stderr)
        return 1
    try:
        folder = release_folder(shard_set.root, args.release)
    except (ShardError, OSError) as e:
        print(f"error: cannot assemble the release: {e}\npublish: nothing was published",
              file=sys.stderr)
        return 1
    problems = check_shards(folder)
    if problems:
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        print("publish: nothing was published", file=sys.stderr)
        return 1
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
