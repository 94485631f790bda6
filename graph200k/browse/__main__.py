"""`python -m graph200k.browse --shards DIR_OR_URL [--manifest M] [--port 8000]`

Serves a read-only web view of a Graph200K shard set on http://127.0.0.1:8000/ (overview,
sample grid with filters, one page per sample, tasks drawn as the trainer sees them).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from pathlib import Path

from graph200k import storage
from graph200k.browse.app import BrowseApp, make
from graph200k.browse.catalog import Catalog
from graph200k.shards import ShardError
from graph200k.tasks import TaskError


def default_cache(shards: str) -> Path:
    """Thumbnails of one shard set, outside it (the shard set is never written to)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    tag = hashlib.sha1(storage.normalize(shards).encode()).hexdigest()[:12]
    return base / "graph200k-browse" / tag


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graph200k.browse", description=__doc__.split("\n")[0])
    ap.add_argument("--shards", required=True, help="annotated shards: folder or fsspec URL")
    ap.add_argument("--manifest", help="manifest parquet (default: <shards>/manifest.parquet "
                    "when it exists, else scanned from the shards)")
    ap.add_argument("--tasks", help="task families YAML (default: configs/tasks.yaml)")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    ap.add_argument("--cache", help="thumbnail cache folder (default: ~/.cache/graph200k-browse/...)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    manifest = args.manifest
    if manifest is None:
        default = storage.join(args.shards, "manifest.parquet")
        manifest = default if storage.exists(default) else None
    try:
        catalog = Catalog(args.shards, manifest, args.tasks)
    except (ShardError, TaskError, FileNotFoundError, ValueError) as e:
        print(f"browse: error: {e}", file=sys.stderr)
        return 2
    cache = Path(args.cache) if args.cache else default_cache(args.shards)
    try:
        server = make(BrowseApp(catalog, cache), args.host, args.port)
    except OSError as e:
        print(f"browse: error: cannot listen on {args.host}:{args.port} ({e.strerror}); pick "
              "another --port (0 takes a free one)", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"browse: {len(catalog)} samples from {catalog.shard_set.root}; open "
          f"http://{host}:{port}/ (Ctrl-C stops; thumbnails cached in {cache})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
