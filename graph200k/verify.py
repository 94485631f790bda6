"""`python -m graph200k.verify --shards …` (`make verify`): is every byte what its writer wrote?

Checks, for every shard of a dataset (plain or stages layout) and every part of it (the
source tar, each stage sidecar):
- the tar against the size and sha256 recorded in its stats file, and its index against the
  index digest recorded there: an index is never trusted alone. An absent index, one that is
  not JSON, or whose digest differs (edited offsets or digests, swapped records) is a named
  problem; each record is then checked against the member it points at (its tar header must
  name the key and field, its data match the digest), which names the key and member;
- a tar with no record (written elsewhere): a full header walk, which fails on a truncated
  archive or a corrupt header instead of stopping quietly;
- a sidecar computed from other source bytes than the source shard now holds (stale), a
  sidecar without its stats (a run that died), keys a sidecar has and its source lacks;
- completeness: every stage has a sidecar for every source shard (`--allow-partial` to
  accept a stage that is still running); orphans: sidecars, stats or indexes whose source
  shard does not exist; duplicate keys across shards (a shard copied under another number);
- each manifest given (`--manifest`, default `<shards>/manifest.parquet` if present) against
  the shards: added, removed or rewritten parts since it was built.

`--rebuild-indexes` rebuilds a bad index from its tar when the tar is the one its stats
record (what `pipelines.annotate --verify` does for sidecars), then checks again.

Prints one row per problem — shard, part, key, member, what is wrong, the command that
repairs it — and exits 1 if there is any (2: the folder is not a dataset). Each file is read once, streamed through sha256;
shards are checked in parallel threads (hashlib releases the GIL), so checking costs about
one read of the data (benchmarks/bench_verify.py).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from graph200k import storage
from graph200k.dataset import Part, ShardSet, index_bytes, part_name, stats_bytes
from graph200k.shards import (DATA, DIGEST, FIELD, HEADER, KEY, SIZE, ShardError, ShardRecord,
                              iter_members, member_digest, read_json)
from graph200k.tarindex import BadIndexError, header_name, index_sha256, writer_members

_CHUNK = 8 << 20


def file_sha256(url, block: int = _CHUNK) -> str:
    h = hashlib.sha256()
    with storage.open_read(url) as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


INCOMPLETE = "incomplete"  # a stage that has not annotated a shard yet (not damage)
INDEX = "index"  # an index that is not its writer's (absent, not JSON, edited records)


@dataclass
class Problem:
    shard: int
    part: str
    key: str
    member: str
    what: str
    repair: str
    kind: str = "damage"

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


def _index_repair(shard_set: ShardSet, part: Part, shard: int) -> str:
    if part.stage is not None:
        return (f"python -m pipelines.annotate --src {shard_set.source} --out {shard_set.root} "
                f"--shards {shard} --stages {part.stage} --verify  (rebuilds the index from "
                "the tar when the tar is intact, else recomputes the sidecar)")
    return (f"python -m graph200k.verify --shards {shard_set.root} --rebuild-indexes  (from the "
            "tar, when the tar is intact)")


def writer_index_of(data: bytes, url: str) -> ShardRecord:
    """The index a writer would have recorded for the tar `data` (read from `url`): every
    member's header offset, data offset, size and digest, in file order."""
    members = []
    try:
        for key, field, info, _ in iter_members(url):
            chunk = data[info.offset_data:info.offset_data + info.size]
            members.append([key, field, info.offset, info.offset_data, info.size,
                            member_digest(chunk)])
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ShardError(f"{url} is not a complete tar ({e})") from e
    return ShardRecord(len(data), hashlib.sha256(data).hexdigest(), members)


def rebuild_index(part: Part) -> bool:
    """Rebuild a part's index from its tar when the tar is the one its stats record (size,
    sha256, member count, and the index digest where recorded). True if the index file was
    rewritten, False if it already held those bytes (stats written before indexes had a
    digest get it recorded); ShardError if the tar itself is not what its writer wrote
    (then the part must be recomputed, not re-indexed)."""
    stats = read_json(part.stats_url) or {}
    recorded = stats.get("file") or {}
    data = storage.read_bytes(part.url)
    if len(data) != recorded.get("size") or hashlib.sha256(data).hexdigest() != recorded.get("sha256"):
        raise ShardError(f"{part.url} is not the tar its stats record (size or sha256): "
                         "recompute it, an index cannot be rebuilt from it")
    record = writer_index_of(data, part.url)
    if recorded.get("member_count") not in (None, len(record.members)):
        raise ShardError(f"{part.url} holds {len(record.members)} members, its stats "
                         f"{recorded['member_count']}: recompute it")
    index = index_bytes(record)
    want = recorded.get("index_sha256")
    if want and index_sha256(index) != want:
        raise ShardError(f"{part.url}: the index rebuilt from the tar is not the one its stats "
                         "record: recompute the part")
    try:
        same = storage.read_bytes(part.index_url) == index
    except FileNotFoundError:
        same = False
    if not same:
        storage.atomic_write(part.index_url, index)
    if not want:  # stats written before indexes had a digest: record it now
        storage.atomic_write(part.stats_url, stats_bytes(
            {k: v for k, v in stats.items() if k != "file"}, record, index))
    return not same


def _record_problems(data: bytes, members: list, problem) -> list[Problem]:
    """Each index record against the bytes it points at: its tar header must name the key
    and field with this size, its data must match the digest."""
    out = []
    for r in members:
        head = memoryview(data)[r[HEADER]:r[DATA]]
        chunk = memoryview(data)[r[DATA]:r[DATA] + r[SIZE]]
        named = header_name(bytes(head))
        if len(chunk) != r[SIZE]:
            out.append(problem("cut off", r[KEY], r[FIELD]))
        elif named is None or named != (f"{r[KEY]}.{r[FIELD]}", r[SIZE]):
            found = "no tar header" if named is None else f"member {named[0]}"
            out.append(problem(f"its index record points at {found} (swapped or edited "
                               "index records)", r[KEY], r[FIELD]))
        elif member_digest(chunk) != r[DIGEST]:
            out.append(problem("bytes differ from what was written (corrupt)", r[KEY], r[FIELD]))
    return out


def check_part(shard_set: ShardSet, shard: int, part: Part, source_keys=None
               ) -> tuple[list[Problem], list[str] | None]:
    """Problems of one part, and the keys it holds (None when it cannot be read)."""
    name = part_name(part)
    repair = _repair(shard_set, part, shard)

    def problem(what, key="", member="", fix=repair, kind="damage"):
        return Problem(shard, name, key, member, what, fix, kind)

    stats = read_json(part.stats_url)
    if not storage.exists(part.url):
        return [problem(f"{part.url} is missing")], None
    if part.stage is not None and stats is None:
        return [problem("a sidecar without its stats file (a run died before finishing it)")], None
    recorded = (stats or {}).get("file") or {}
    if not recorded.get("sha256"):
        try:  # nothing recorded to compare with: the header walk at least must hold
            keys = list(dict.fromkeys(key for key, _, _, _ in iter_members(part.url)))
        except (tarfile.TarError, OSError, EOFError, ShardError) as e:
            return [problem(f"not a complete tar ({e})")], None
        expected = (stats or {}).get("written")
        if part.stage is None and expected is not None and len(keys) != int(expected):
            return [problem(f"holds {len(keys)} samples, its stats say {expected} "
                            "(truncated?)")], keys
        return [], keys
    problems = []
    data = storage.read_bytes(part.url)
    tar_ok = (len(data) == recorded.get("size")
              and hashlib.sha256(data).hexdigest() == recorded["sha256"])
    if len(data) != recorded.get("size"):
        problems.append(problem(f"holds {len(data)} bytes, its writer wrote "
                                f"{recorded.get('size')} (truncated or appended to)"))
    fix_index = _index_repair(shard_set, part, shard) if tar_ok else repair
    index_file = storage.name(part.index_url)
    members, index_ok = None, False
    try:
        raw = storage.read_bytes(part.index_url)
    except FileNotFoundError:
        problems.append(problem(f"its index {index_file} is missing", fix=fix_index, kind=INDEX))
    else:
        want = recorded.get("index_sha256")
        index_ok = bool(want) and index_sha256(raw) == want
        if want and not index_ok:
            problems.append(problem(f"its index {index_file} does not match the digest its "
                                    "stats record (edited or replaced)", fix=fix_index,
                                    kind=INDEX))
        try:
            members = writer_members(raw, {**recorded, "index_sha256": None}, index_file)
        except BadIndexError as e:
            problems.append(problem(f"BadIndexError: {e}", fix=fix_index, kind=INDEX))
    if members is not None and not (tar_ok and index_ok):
        found = _record_problems(data, members, problem)
        for p in found:
            if "index record" in p.what:
                p.repair, p.kind = fix_index, INDEX
        problems += found
        if not tar_ok and not found:
            problems.append(problem("sha256 differs in tar headers or padding (corrupt header)"))
    if members is None:  # no index to go by: the header walk names what it can
        try:
            members = writer_index_of(data, part.url).members
            if not tar_ok:
                problems.append(problem("bytes differ from the sha256 its writer recorded "
                                        "(corrupt; no valid index to name the member)"))
        except ShardError as e:
            problems.append(problem(f"not a complete tar ({e})"))
    keys = None if members is None else list(dict.fromkeys(r[KEY] for r in members))
    if part.stage is not None:
        source_now = (read_json(shard_set.source_part(shard).stats_url) or {}).get("file") or {}
        was = (stats or {}).get("source") or {}
        if was.get("sha256") and source_now.get("sha256") and was["sha256"] != source_now["sha256"]:
            problems.append(problem("stale: computed from other source bytes than the source "
                                    "shard holds now"))
        if source_keys is not None and keys is not None:
            extra = sorted(set(keys) - set(source_keys))
            if extra:
                problems.append(problem(f"holds {len(extra)} key(s) its source lacks (stale)",
                                        extra[0]))
    return problems, keys


def check_shard(shard_set: ShardSet, shard: int) -> tuple[list[Problem], list[str]]:
    """Problems of a shard's parts, and the keys of its source (for the duplicate check)."""
    source = shard_set.source_part(shard)
    problems, keys = check_part(shard_set, shard, source)
    for stage in shard_set.stages:
        part = shard_set.stage_part(stage, shard)
        if storage.exists(part.url) or storage.exists(part.stats_url):
            problems += check_part(shard_set, shard, part, keys)[0]
        else:
            problems.append(Problem(
                shard, part_name(part), "", "", f"incomplete: stage {stage} has not annotated "
                "this shard (no sidecar)", _repair(shard_set, part, shard), INCOMPLETE))
    return problems, keys or []


_PART_FILE = re.compile(r"(\d{6})(\.tar|\.stats\.json|\.index\.json)")


def check_orphans(shard_set: ShardSet, numbers) -> list[Problem]:
    """Sidecar, stats or index files whose source shard does not exist (a removed or
    renumbered source shard): nothing joins them, and they must not be published."""
    have = set(numbers)
    folders = [(None, shard_set.source)] + [(st, storage.join(shard_set.root, st))
                                            for st in shard_set.stages]
    out = []
    for stage, folder in folders:
        for n in storage.listdir(folder):
            m = _PART_FILE.fullmatch(n)
            if m and int(m.group(1)) not in have:
                out.append(Problem(int(m.group(1)), f"{stage or 'source'}/{n}", "", "",
                                   f"an orphan: there is no source shard {m.group(1)}.tar",
                                   f"restore the source shard, or remove "
                                   f"{storage.join(folder, m.group(1))}.*"))
    return out


def check_duplicates(shard_set: ShardSet, keys_of: dict[int, list[str]]) -> list[Problem]:
    """Keys held by more than one shard (a shard copied under another number)."""
    where: dict[str, list[int]] = {}
    for shard, keys in keys_of.items():
        for key in keys:
            where.setdefault(key, []).append(shard)
    out, reported = [], set()
    for key, shards in where.items():
        if len(shards) < 2:
            continue
        pair = tuple(shards)
        count = sum(1 for k in keys_of[shards[0]] if len(where[k]) > 1)
        if pair in reported:
            continue
        reported.add(pair)
        others = ", ".join(f"{s:06d}" for s in shards[1:])
        out.append(Problem(shards[0], f"source/{shards[0]:06d}.tar", key, "", f"duplicate keys: {count} key(s) of this "
            f"shard are also in shard(s) {others} (a shard copied under another number?)",
            "remove the copy (its tar, index and stats, and its sidecars), then rebuild the "
            "manifest"))
    return out


def check_manifest(shard_set: ShardSet, path) -> list[Problem]:
    from graph200k.manifest import Manifest

    repair = f"python -m graph200k.manifest --shards {shard_set.root} --out {path}"
    try:
        m = Manifest.load(path)
    except (OSError, ShardError) as e:
        return [Problem(-1, storage.name(path), "", "", str(e), repair)]
    return [Problem(-1, storage.name(path), "", "", line, repair)
            for line in m.check(shard_set)]


def verify(shards, manifests=(), workers: int = 4, allow_partial: bool = False
           ) -> list[Problem]:
    """Every problem of a dataset; with `allow_partial`, shards a stage has not annotated
    yet are not problems (kind INCOMPLETE)."""
    shard_set = ShardSet(shards)
    numbers = shard_set.shards()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        per_shard = list(pool.map(lambda n: check_shard(shard_set, n), numbers))
    problems = [p for ps, _ in per_shard for p in ps]
    problems += check_duplicates(shard_set, {n: keys for n, (_, keys) in zip(numbers, per_shard)})
    problems += check_orphans(shard_set, numbers)
    if allow_partial:
        problems = [p for p in problems if p.kind != INCOMPLETE]
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


def rebuild_indexes(shard_set: ShardSet, problems: list[Problem], log=print) -> None:
    """Rebuild the index of every part with an index problem, where its tar is intact."""
    for shard, name in dict.fromkeys((p.shard, p.part) for p in problems if p.kind == INDEX):
        stage = None if name.startswith("source/") else name.split("/")[0]
        part = shard_set.source_part(shard) if stage is None else shard_set.stage_part(stage, shard)
        try:
            rebuild_index(part)
            log(f"verify: rebuilt {part.index_url} from its tar (sha256 as its stats record)")
        except (ShardError, OSError) as e:
            log(f"verify: {part.index_url} not rebuilt: {e}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m graph200k.verify", description=__doc__.split("\n")[0])
    p.add_argument("--shards", required=True, help="dataset folder or URL")
    p.add_argument("--manifest", action="append", default=None,
                   help="manifest(s) to check against the shards (default: <shards>/manifest.parquet)")
    p.add_argument("--workers", type=int, default=4, help="shards checked at once")
    p.add_argument("--allow-partial", action="store_true",
                   help="shards a stage has not annotated yet are not problems")
    p.add_argument("--rebuild-indexes", action="store_true",
                   help="rebuild a missing or wrong index from its tar when the tar matches "
                        "the sha256 its stats record, then report what is left")
    args = p.parse_args(argv)
    try:
        shard_set = ShardSet(args.shards)
    except ShardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not shard_set.shards():
        print(f"error: no shards (NNNNNN.tar) in {shard_set.source}", file=sys.stderr)
        return 1
    manifests = args.manifest
    if manifests is None:
        default = storage.join(shard_set.root, "manifest.parquet")
        manifests = [default] if storage.exists(default) else []
    problems = verify(shard_set.root, manifests, args.workers, args.allow_partial)
    if args.rebuild_indexes and any(p.kind == INDEX for p in problems):
        rebuild_indexes(shard_set, problems)
        problems = verify(shard_set.root, manifests, args.workers, args.allow_partial)
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
