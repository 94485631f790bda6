"""graph200k.browse on a shard set in S3 (moto's real HTTP endpoint on this machine): the
same pages and bytes as from the local copy, and nothing written to the bucket."""

from __future__ import annotations

import os


from graph200k import storage
from graph200k.browse.app import BrowseApp
from graph200k.browse.catalog import Catalog, Filters


def call(app, path: str, query: str = "") -> tuple[str, bytes]:
    out = []
    body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query},
                        lambda status, headers: out.append(status)))
    return out[0], body


def test_browse_a_shard_set_in_s3(bucket, browse_shards, tmp_path):
    folder, manifest = browse_shards
    for name in sorted(os.listdir(folder)):
        if not name.startswith("."):
            storage.put_file(str(folder / name), f"{bucket}/shards/{name}")
    listing = storage.listdir(f"{bucket}/shards")
    remote = Catalog(f"{bucket}/shards", f"{bucket}/shards/manifest.parquet")
    local = Catalog(folder, manifest)
    assert remote.freshness() == []  # the parts' recorded sha256 match
    assert remote.node_counts() == local.node_counts()
    assert remote.stats().stages["filledit"].skipped_reasons == \
        local.stats().stages["filledit"].skipped_reasons
    f = Filters(has=("filledit",), split="train")
    assert remote.select(f).tolist() == local.select(f).tolist()
    app = BrowseApp(remote, tmp_path / "cache")
    status, page = call(app, "/sample/0000000")
    assert status == "200 OK" and b"/thumb/0000000/filledit?v=1" in page
    status, body = call(app, "/img/0000000/instantstyle", "v=1")
    assert status == "200 OK"
    assert body == local.reader.member_bytes("0000000", "instantstyle.1.jpg")
    status, thumb = call(app, "/thumb/0000004/depth")
    assert status == "200 OK" and thumb[:2] == b"\xff\xd8"
    assert call(app, "/")[0] == "200 OK"
    assert storage.listdir(f"{bucket}/shards") == listing  # read-only
