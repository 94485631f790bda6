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

Nothing corrupt or incomplete is published: all of `graph200k.verify` runs first (every
part against the sha256 and index digest its writer recorded, every stage complete for
every source shard, no orphan sidecars, no key in two shards); a problem stops the publish,
naming the shard and the command that repairs it (`--allow-partial` accepts stages that
have not annotated every shard). Copies read what is at the destination: a shard whose
files are identical is skipped (rerun to resume), one that differs (a repaired shard, or
a damaged copy there: a flipped byte, a cut tar) is copied again and named. Each file is written atomically (a temporary name and
a rename, or a single PUT on object stores); per shard the stats file goes last, and the
card, last of all, so a reader that sees the card sees every shard it counts.
- Hub: `HfApi.upload_folder` (resumable and multi-commit in huggingface_hub 2.x).

Exit codes: 0 published (or assembled); 1 the data is not publishable or a copy failed;
2 bad arguments (`--to` with an unknown URL scheme, an existing file, a bad hub id; `--src`).
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


def check_shards(folder, allow_partial: bool = False) -> list[str]:
    """Every part of every shard against its writer's record, every stage complete (unless
    `allow_partial`), no orphans or duplicate keys (graph200k.verify), as lines."""
    from graph200k.verify import verify

    return [f"shard {p.shard:06d} {p.part}{' ' + p.key if p.key else ''}"
            f"{'.' + p.member if p.member else ''}: {p.what}; repair: {p.repair}"
            if p.shard >= 0 else f"{p.part}: {p.what}; repair: {p.repair}"
            for p in verify(folder, allow_partial=allow_partial)]


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


def _differs(src: str, dest: str, sha256: str | None) -> str | None:
    """Why the file at `dest` is not `src` (None when it is): absent, another size, other
    bytes. A tar is compared by streaming the destination through sha256 against the one
    its writer recorded; small files byte for byte."""
    from graph200k.verify import file_sha256

    if not storage.exists(dest):
        return "absent"
    size, want = storage.size(dest), storage.size(src)
    if size != want:
        return f"holds {size} bytes, not {want} (cut short or replaced)"
    if sha256 is not None:
        return None if file_sha256(dest) == sha256 else "other bytes (sha256 differs)"
    return None if storage.read_bytes(dest) == storage.read_bytes(src) else "other bytes"


def copy_to_fsspec(folder, url: str, force: bool = False, log=print) -> tuple[list[str], int]:
    """Copy shards (tar, index, stats), then the card, to a folder or fsspec URL; returns the
    names copied and how many shards already there were repaired. What is at the
    destination is read and compared with the release (sha256 for tars): a shard whose
    files are all identical is skipped; a damaged one (flipped bytes, cut short) is
    copied again and said so."""
    dest_root = storage.normalize(url)
    storage.makedirs(dest_root)
    copied, repaired = [], 0
    for shard, files in files_to_publish(folder):
        local = part_in(str(folder), shard)
        dest = part_in(dest_root, shard)
        recorded = ((read_json(local.stats_url) or {}).get("file") or {}).get("sha256")
        why = {path: "forced" if force else _differs(
            path, storage.join(dest_root, storage.name(path)),
            recorded if path == local.url else None) for path in files}
        if not any(why.values()):
            continue
        damaged = {storage.name(p): w for p, w in why.items() if w and w != "absent"}
        if damaged and not force:
            repaired += 1
            log("publish: shard {:06d} at the destination differs from the release ({}): "
                "copied again".format(shard, "; ".join(f"{n}: {w}" for n, w in damaged.items())))
        if storage.exists(dest.stats_url):
            storage.remove(dest.stats_url)  # the old shard stops counting before it is replaced
        for path in files:  # the stats file last: it marks the shard complete
            target = storage.join(dest_root, storage.name(path))
            if why[path] or path == local.stats_url:
                storage.copy_file(path, target)
                copied.append(storage.name(path))
                log(f"publish: {storage.name(path)} -> {dest_root}")
    if storage.exists(storage.join(folder, LICENSE)):
        storage.copy_file(storage.join(folder, LICENSE), storage.join(dest_root, LICENSE))
        copied.append(LICENSE)
    storage.copy_file(storage.join(folder, CARD), storage.join(dest_root, CARD))
    copied.append(CARD)
    return copied, repaired


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


def check_destination(to: str) -> str | None:
    """Why `--to` cannot receive a release (None when it can): checked before any work."""
    if to.startswith(HUB_PREFIX):
        return None if to[len(HUB_PREFIX):].strip("/").count("/") == 1 else \
            f"--to {to}: a hub dataset is hf://datasets/ORG/NAME"
    if storage.is_url(to):
        try:
            storage.filesystem(to)
        except (ValueError, ImportError) as e:
            return f"--to {to}: no storage backend for this URL ({e})"
        return None
    path = storage.normalize(to)
    if storage.exists(path) and not storage.isdir(path):
        return f"--to {to} is a file, not a folder: name a folder (it is created) or a URL"
    return None


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 published (or assembled), 1 the data is not publishable (damaged or
    incomplete shards) or a copy failed, 2 bad arguments (`--to`, `--src`, `--config`)."""
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
    p.add_argument("--allow-partial", action="store_true",
                   help="publish although a stage has not annotated every shard (the card "
                        "counts what is there)")
    args = p.parse_args(argv)

    if args.to is not None and (why := check_destination(args.to)):
        print(f"error: {why}", file=sys.stderr)
        return 2
    try:
        shard_set = ShardSet(args.src)
    except ShardError as e:
        print(f"error: --src: {e}", file=sys.stderr)
        return 2
    if not shard_set.shards():
        print(f"error: no shards (NNNNNN.tar) in {shard_set.source}; run `make annotate` first",
              file=sys.stderr)
        return 1
    config = load_config(args.config)
    problems = check_shards(shard_set.root, args.allow_partial) \
        if shard_set.layout != "plain" else []
    if problems:
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        if not args.allow_partial and any("incomplete:" in line for line in problems):
            print("publish: stages are incomplete; annotate the shards named above, or pass "
                  "--allow-partial to publish what is there", file=sys.stderr)
        print("publish: nothing was published", file=sys.stderr)
        return 1
    try:
        folder = release_folder(shard_set.root, args.release)
    except (ShardError, OSError) as e:
        print(f"error: cannot assemble the release: {e}\npublish: nothing was published",
              file=sys.stderr)
        return 1
    problems = check_shards(folder, args.allow_partial)
    if problems:
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        print("publish: nothing was published", file=sys.stderr)
        return 1
    card = write_card(folder, config, Path(args.tasks) if args.tasks else None)
    print(f"publish: wrote {card}")
    if args.to is None:
        return 0
    try:
        if args.to.startswith(HUB_PREFIX):
            repo_id = args.to[len(HUB_PREFIX):].strip("/")
            hub_upload(folder, repo_id, args.private, revision=args.revision)
            print(f"publish: uploaded {folder} to https://huggingface.co/datasets/{repo_id}")
        else:
            copied, repaired = copy_to_fsspec(folder, args.to, args.force)
            print(f"publish: {len(copied)} file(s) copied to {args.to}"
                  + (f"; {repaired} damaged shard(s) there repaired" if repaired else ""))
    except OSError as e:
        print(f"error: copying to {args.to} failed ({type(e).__name__}: {e}); rerun to resume",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
