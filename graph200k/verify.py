"""`python -m graph200k.verify --shards …` (`make verify`): is every byte what its writer wrote?

Checks, for every shard of a dataset (plain or stages layout) and every part of it (the
source tar, each stage sidecar):
- the tar against the size and sha256 recorded in its stats file, every member against its
  recorded offset, size and digest (which names the key and member that changed), and the
  member and sample counts;
- a tar with no record (written elsewhere): a full header walk, which fails on a truncated
  archive or a corrupt header instead of stopping quietly;
- a sidecar computed from other source bytes than the source shard now holds (stale), a
  sidecar without its stats (a run that died), keys a sidecar has and its source lacks;
- each manifest given (`--manifest`, default `<shards>/manifest.parquet` if present) against
  the shards: added, removed or rewritten parts since it was built.

Prints one row per problem — shard, part, key, member, what is wrong, the command that
repairs it — and exits 1 if there is any. Each file is read once, streamed through sha256;
shards are checked in parallel threads (hashlib releases the GIL), so checking costs about
one read of the data (benchmarks/bench_verify.py).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from graph200k import storage
from graph200k.dataset import Part, ShardSet, part_name
from graph200k.shards import (DATA, DIGEST, FIELD, KEY, SIZE, ShardError, iter_members,
                              member_digest, read_json)

_CHUNK = 8 << 20


def file_sha256(url, block: int = _CHUNK) -> str:
    h = hashlib.sha256()
    with storage.open_read(url) as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Problem:
    shard: int
    part: str
    key: str
    member: str
    what: str
    repair: str

    def row(self) -> list[str]:
        return [f"{self.shard:06d}" if self.shard >= 0 else "-", self.part, self.key or "-",
                self.member or "-", self.what, self.repair]


def _repair(shard_set: ShardSet, part: Part | None, shard: int) -> str:
    if part is None or part.stage is None:
        if shard_set.layout == "plain" and shard_set.root != shard_set.source:
            return f"re-create shard {shard} from its source"
        src = shard_set.source
        return (f"python -m pipelines.ingest --out {src} --shards {shard} --force  "
                "(then annotate again: its sidecars were made from the old bytes)")
    return (f"python -m pipelines.annotate --src {shard_set.source} --out {shard_set.root} "
            f"--shards {shard} --stages {part.stage} --force")


def check_part(shard_set: ShardSet, shard: int, part: Part, source_keys=None) -> list[Problem]:
    name = part_name(part)
    repair = _repair(shard_set, part, shard)

    def problem(what, key="", member=""):
        return Problem(shard, name, key, member, what, repair)

    stats = read_json(part.stats_url)
    if not storage.exists(part.url):
        return [problem(f"{part.url} is missing")]
    if part.stage is not None and stats is None:
        return [problem("a sidecar without its stats file (a run died before finishing it)")]
    recorded = (stats or {}).get("file") or {}
    index = read_json(part.index_url) or {}
    members = index.get("members")
    if not recorded.get("sha256") or members is None:
        try:  # nothing recorded to compare with: the header walk at least must hold
            keys = {key for key, _, _, _ in iter_members(part.url)}
        except (tarfile.TarError, OSError, EOFError, ShardError) as e:
            return [problem(f"not a complete tar ({e})")]
        expected = (stats or {}).get("written")
        if part.stage is None and expected is not None and len(keys) != int(expected):
            return [problem(f"holds {len(keys)} samples, its stats say {expected} (truncated?)")]
        return []
    problems = []
    data = storage.read_bytes(part.url)
    if len(data) != recorded.get("size"):
        problems.append(problem(f"holds {len(data)} bytes, its writer wrote "
                                f"{recorded.get('size')} (truncated or appended to)"))
    if hashlib.sha256(data).hexdigest() != recorded["sha256"]:
        bad = 0
        for r in members:
            chunk = memoryview(data)[r[DATA]:r[DATA] + r[SIZE]]
            if len(chunk) != r[SIZE] or member_digest(chunk) != r[DIGEST]:
                bad += 1
                what = ("cut off" if len(chunk) != r[SIZE] else
                        "bytes differ from what was written (corrupt)")
                problems.append(problem(what, r[KEY], r[FIELD]))
        if not bad:
            problems.append(problem("sha256 differs in tar headers or padding (corrupt header)"))
    if recorded.get("member_count") not in (None, len(members)):
        problems.append(problem(f"its index lists {len(members)} members, its stats "
                                f"{recorded['member_count']}"))
    if part.stage is not None:
        source_now = (read_json(shard_set.source_part(shard).stats_url) or {}).get("file") or {}
        was = (stats or {}).get("source") or {}
        if was.get("sha256") and source_now.get("sha256") and was["sha256"] != source_now["sha256"]:
            problems.append(problem("stale: computed from other source bytes than the source "
                                    "shard holds now"))
        if source_keys is not None:
            extra = sorted({r[KEY] for r in members} - set(source_keys))
            if extra:
                problems.append(problem(f"holds {len(extra)} key(s) its source lacks (stale)",
                                        extra[0]))
    return problems


def check_shard(shard_set: ShardSet, shard: int) -> list[Problem]:
    source = shard_set.source_part(shard)
    problems = check_part(shard_set, shard, source)
    index = read_json(source.index_url) or {}
    keys = [r[KEY] for r in index.get("members", [])] or None
    for stage in shard_set.stages:
        part = shard_set.stage_part(stage, shard)
        if storage.exists(part.url) or storage.exists(part.stats_url):
            problems += check_part(shard_set, shard, part, keys)
    return problems


def check_manifest(shard_set: ShardSet, path) -> list[Problem]:
    from graph200k.manifest import Manifest

    repair = f"python -m graph200k.manifest --shards {shard_set.root} --out {path}"
    try:
        m = Manifest.load(path)
    except (OSError, ShardError) as e:
        return [Problem(-1, storage.name(path), "", "", str(e), repair)]
    return [Problem(-1, storage.name(path), "", "", line, repair)
            for line in m.check(shard_set)]


def verify(shards, manifests=(), workers: int = 4) -> list[Problem]:
    shard_set = ShardSet(shards)
    numbers = shard_set.shards()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        per_shard = list(pool.map(lambda n: check_shard(shard_set, n), numbers))
    problems = [p for ps in per_shard for p in ps]
    for path in manifests:
        problems += check_manifest(shard_set, path)
    return problems


def print_table(problems: list[Problem], out=None) -> None:
    out = out or sys.stdout
    head = ["shard", "part", "key", "member", "problem", "repair"]
    rows = [head] + [p.row() for p in problems]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        cells = [r[i].ljust(widths[i]) for i in range(4)] + r[4:]
        print("  ".join(cells[:5]) + ("" if r is head else "\n      repair: " + r[5]), file=out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m graph200k.verify", description=__doc__.split("\n")[0])
    p.add_argument("--shards", required=True, help="dataset folder or URL")
    p.add_argument("--manifest", action="append", default=None,
                   help="manifest(s) to check against the shards (default: <shards>/manifest.parquet)")
    p.add_argument("--workers", type=int, default=4, help="shards checked at once")
    args = p.parse_args(argv)
    shard_set = ShardSet(args.shards)
    if not shard_set.shards():
        print(f"error: no shards (NNNNNN.tar) in {shard_set.source}", file=sys.stderr)
        return 1
    manifests = args.manifest
    if manifests is None:
        default = storage.join(shard_set.root, "manifest.parquet")
        manifests = [default] if storage.exists(default) else []
    problems = verify(shard_set.root, manifests, args.workers)
    n = len(shard_set.shards())
    if not problems:
        print(f"verify: {n} shard(s) and {len(manifests)} manifest(s) of {shard_set.root}: all good")
        return 0
    print_table(problems)
    print(f"verify: {len(problems)} problem(s) in {len({p.shard for p in problems})} shard(s) "
          f"of {n}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
