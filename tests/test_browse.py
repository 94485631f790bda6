"""graph200k.browse without a browser: what the pages count, what the server refuses, what
it serves and caches (the real-browser test is tests/test_browse_browser.py)."""

from __future__ import annotations

import http.client
import io
import os
import re
import socket
from urllib.parse import urlsplit
from urllib.request import urlopen

import numpy as np
import pytest
from PIL import Image

from browse_shards import ISSUES, NO_CANNY
from graph200k.browse.app import make, unsafe
from graph200k.browse.catalog import Filters
from graph200k.browse.media import member_image
from graph200k.nodes import mask_of
from graph200k.reader import SampleReader


def raw_get(base: str, target: str, method: str = "GET") -> tuple[int, bytes]:
    """Sends `target` exactly as written (no client-side normalisation of dots)."""
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.putrequest(method, target, skip_host=False, skip_accept_encoding=True)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def get(base: str, path: str) -> str:
    with urlopen(base + path, timeout=60) as r:
        assert r.status == 200
        return r.read().decode()


def count(page: str, ident: str) -> int:
    m = re.search(rf"id={ident} data-count=(\d+)", page)
    assert m, f"no #{ident} on the page"
    return int(m.group(1))


TRAVERSALS = ["/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
              "/img/..%2f..%2f..%2fetc%2fpasswd/target", "/img/0000000/..%2f..%2fetc%2fpasswd",
              "/thumb/%2e%2e/target", "/sample/..%5c..%5cetc%5cpasswd",
              "/%252e%252e/%252e%252e/etc/passwd", "/sample/0000000/../../../etc/passwd",
              "/img/0000000%00/target", "/./samples"]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_path_traversal_is_refused(browse_server, target):
    base, _ = browse_server
    status, body = raw_get(base, target)
    assert status == 400, (target, status, body[:200])
    assert b"root:" not in body


def test_only_members_of_the_shard_set(browse_server, browse_shards):
    base, _ = browse_server
    assert raw_get(base, "/img/9999999/target")[0] == 404  # not in the manifest
    assert raw_get(base, "/img/0000000/passwd")[0] == 404  # not a slot
    assert raw_get(base, "/img/0000000/meta.json")[0] == 404
    assert raw_get(base, "/img/0000001/filledit")[0] == 404  # a node this sample lacks
    assert raw_get(base, "/img/0000000/instantstyle?v=2")[0] == 404  # it holds variants 0, 1
    assert raw_get(base, "/samples", "POST")[0] == 405
    assert raw_get(base, "/etc/passwd")[0] == 404
    folder, manifest = browse_shards
    reader = SampleReader(folder, manifest)
    status, body = raw_get(base, "/img/0000000/instantstyle?v=1")
    assert status == 200 and body == reader.member_bytes("0000000", "instantstyle.1.jpg")


def test_unsafe_paths():
    assert unsafe("/a/../b") and unsafe("/%2e%2e/x") and unsafe("/a\\b") and unsafe("/%00")
    assert unsafe("/%252e%252e/x") is False  # twice encoded: decoded once here, once by
    # the server (wsgiref) first; the route check sees the '..' (test above)
    assert not unsafe("/sample/0000042") and not unsafe("/samples")


def test_overview_counts_match_the_manifest(browse_server):
    base, app = browse_server
    m = app.catalog.manifest
    page = get(base, "/")
    assert count(page, "total") == len(m)
    for split in ("train", "test"):
        assert count(page, f"split-{split}") == int((m.splits == split).sum())
    counts = m.node_counts()
    for node, k in re.findall(r"data-node='(\w+)' data-count=(\d+)", page):
        assert int(k) == counts[node], node
    assert counts["canny"] == len(m) - 1  # the fixture's sample without canny
    assert "fresh" in page
    # stages with their reasons, from the stats files
    for stage, status, key, reason in ISSUES:
        assert reason in page
    assert "not applicable: no usable box</a> ×2" in page
    table = app.catalog.variant_table()
    assert len(table) == 129
    assert count(page, "sampleable") == sum(1 for r in table if r["train"] and not r["unseen"])


def test_filters_select_what_the_manifest_says(browse_server):
    base, app = browse_server
    c = app.catalog
    m = c.manifest
    want = m.having(mask_of(["instantstyle", "depth"]))
    assert count(get(base, "/samples?has=instantstyle&has=depth"), "count") == len(want)
    assert count(get(base, "/samples?missing=canny"), "count") == 1
    assert NO_CANNY in get(base, "/samples?missing=canny")
    test_keys = [m.key(i) for i in range(len(m)) if m.splits[i] == "test"]
    page = get(base, "/samples?split=test")
    assert count(page, "count") == len(test_keys) > 0
    assert all(f"/sample/{k}" in page for k in test_keys)
    assert count(get(base, "/samples?item=tabby+cat"), "count") == sum(
        m.item(i) == "tabby cat" for i in range(len(m)))
    assert count(get(base, "/samples?q=tabby"), "count") == 2
    assert count(get(base, "/samples?q=0000004"), "count") == 1
    assert count(get(base, "/samples?issue=skipped:filledit"), "count") == 3
    page = get(base, "/samples?issue=skipped:filledit:subject+too+small")
    assert count(page, "count") == 1 and "/sample/0000007" in page
    page = get(base, "/samples?issue=failed:mask")
    assert count(page, "count") == 1 and "<div class=warn>mask failed</div>" in page
    page = get(base, "/samples?per_page=3&page=2")
    assert count(page, "count") == len(m) and "/sample/0000003" in page
    assert "/sample/0000002" not in page
    assert Filters.from_query({"has": ["canny,depth"]}).has == ("canny", "depth")
    with pytest.raises(ValueError, match="unknown node type"):
        Filters.from_query({"has": ["cany"]})
    assert raw_get(base, "/samples?has=cany")[0] == 400


def images(page: str) -> dict[str, str]:
    """alt -> src of every <img> of a page."""
    return dict(re.findall(r"<img[^>]* alt='([^']*)' src='([^']*)'", page))


def test_sample_page_shows_every_node(browse_server, tmp_path):
    from graph200k.browse import pages

    base, app = browse_server
    c = app.catalog
    page = pages.sample(c, "0000000")  # every image by URL (nothing cached)
    shown = images(page)
    for slot in ("reference", "canny", "depth", "foreground", "background", "bbox"):
        assert shown[slot] == f"/thumb/0000000/{slot}", slot
    assert shown["instantstyle_ref.1"] == "/thumb/0000000/instantstyle_ref?v=1"
    assert shown["instantstyle.1"] == "/thumb/0000000/instantstyle?v=1"
    assert shown["filledit.1"] == "/thumb/0000000/filledit?v=1"
    assert re.search(r"<img id=target alt=target src='([^']*)'", page).group(1) == \
        "/thumb/0000000/target?side=320"
    assert page.count("<rect") == 2 and "background object</text>" in page  # grounded boxes
    assert "id=graph" in page and page.count("<line") == len(
        [n for n in c.stored_nodes_of(0) if n != "target"]) + 1  # + degradations
    assert "blur" not in shown  # degradations on demand
    shown = images(pages.sample(c, "0000000", degradations=True, seed=3))
    assert shown["blur"] == "/thumb/0000000/blur?seed=3" and len(shown) >= 32 + 13
    assert "SAM2 gave an empty mask" in get(base, "/sample/0000005")


def test_a_warm_page_inlines_its_thumbnails(browse_server):
    """A thumbnail on disk travels inside the page (one response); the others by URL."""
    import base64

    base, app = browse_server
    cached = urlopen(base + "/thumb/0000006/canny").read()
    shown = images(get(base, "/sample/0000006"))
    assert shown["canny"] == "data:image/jpeg;base64," + base64.b64encode(cached).decode()
    uncached = app.thumbs.cached("0000006", "bbox") is None
    assert shown["bbox"] == "/thumb/0000006/bbox" if uncached else shown["bbox"].startswith("data:")


def test_image_pages_are_ascii(browse_server):
    """The pages that carry inline thumbnails are pure ASCII (a character outside it is a
    character reference), so encoding a ~200 kB page is a copy, not a transcoding."""
    from html import unescape

    from graph200k.browse import pages

    assert pages.h("caf\u00e9 <b> \u2192") == "caf&#233; &lt;b&gt; &#8594;"
    base, app = browse_server
    for path in ("/samples", "/sample/0000000", "/sample/0000000?degradations=1"):
        with urlopen(base + path, timeout=60) as r:
            body = r.read()
        assert body.isascii(), path
    page = unescape(body.decode())
    assert "target \u2194 node" in page and "\u2026degradations" in page  # as the browser shows it


def test_thumbnail_names_follow_the_shard_fingerprint(browse_server):
    _, app = browse_server
    thumbs = app.thumbs
    path = thumbs.path("0000004", "depth", 0, 0, 160)
    assert path == thumbs.path("0000004", "depth", 0, 0, 160)  # stable
    assert len({path, thumbs.path("0000004", "depth", 1, 0, 160),
                thumbs.path("0000004", "depth", 0, 0, 320), thumbs.path("0000005", "depth", 0, 0, 160),
                thumbs.path("0000004", "canny", 0, 0, 160)}) == 5
    m = app.catalog.manifest
    shard = int(m.shards[m.index_of("0000004")])
    saved = m.parts.get(shard)
    try:  # a re-annotated shard (new part fingerprints): new names
        m.parts[shard] = {"changed": True}
        thumbs._shard_hash.clear()
        assert thumbs.path("0000004", "depth", 0, 0, 160) != path
    finally:
        m.parts[shard] = saved
        thumbs._shard_hash.clear()
    assert thumbs.path("0000004", "depth", 0, 0, 160) == path


def test_thumbnails_are_cached_on_disk(browse_server, browse_shards):
    base, app = browse_server
    folder, _ = browse_shards
    before = sorted(os.listdir(folder))
    thumbs = app.thumbs
    path = thumbs.path("0000004", "depth", 0, 0, 160)
    assert not os.path.exists(path)
    first = urlopen(base + "/thumb/0000004/depth").read()
    assert os.path.exists(path)
    hits = thumbs.hits
    assert urlopen(base + "/thumb/0000004/depth").read() == first
    assert thumbs.hits == hits + 1
    im = Image.open(io.BytesIO(first))
    assert max(im.size) <= 160
    big = Image.open(io.BytesIO(urlopen(base + "/thumb/0000004/depth?side=320").read()))
    assert max(big.size) == 64  # never enlarged past the stored 64 px
    assert sorted(os.listdir(folder)) == before  # nothing written into the shard set
    # degradations: one cache file per seed
    assert thumbs.path("0000004", "blur", 0, 1, 160) != thumbs.path("0000004", "blur", 0, 2, 160)
    assert thumbs.path("0000004", "canny", 0, 1, 160) == thumbs.path("0000004", "canny", 0, 2, 160)


def test_full_images_are_the_members(browse_server, browse_shards):
    _, app = browse_server
    folder, manifest = browse_shards
    reader = SampleReader(folder, manifest)
    data, ctype = member_image(app.catalog, "0000001", "canny")
    assert ctype == "image/png" and data == reader.member_bytes("0000001", "canny.png")
    data, ctype = member_image(app.catalog, "0000001", "foreground")
    assert ctype == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))),
                          reader.fetch("0000001", "foreground"))


def test_task_page_draws_the_chosen_variant(browse_server):
    base, app = browse_server
    c = app.catalog
    a = c.draw_task("conditional_generation", "canny->target", seed=5)
    b = c.draw_task("conditional_generation", "canny->target", seed=5)
    assert a.to_json() == b.to_json() and a.variant == "canny->target"
    page = get(base, "/task?pick=conditional_generation/canny-%3Etarget&seed=5&res=128")
    assert a.prompt["layout"] in page.replace("&#x27;", "'")
    assert "id=rows" in page and "class=masked" in page
    grid_url = re.search(r"id=grid alt='task grid' src='([^']+)'", page).group(1)
    png = urlopen(base + grid_url.replace("&amp;", "&")).read()
    im = Image.open(io.BytesIO(png))
    assert im.width == 2 * 128 and im.height > len(a.rows) * 128  # cells + the prompt band
    page = get(base, "/task?pick=conditional_generation/hed-%3Etarget")
    assert "id=task-error" in page and "hed" in page


def test_binds_localhost_by_default(browse_server):
    _, app = browse_server
    server = make(app, port=0)
    try:
        assert server.server_address[0] == "127.0.0.1"
        assert server.socket.family == socket.AF_INET
    finally:
        server.server_close()


def test_a_stages_layout_dataset(tmp_path):
    """What `pipelines.annotate` writes (source shards + stage sidecars with their own
    stats): the stage's reasons, the issue filter and the sidecar's members."""
    from graph200k.browse.app import BrowseApp
    from graph200k.browse.catalog import Catalog
    from browse_shards import stages_dataset

    shard_set, keys = stages_dataset(tmp_path)
    catalog = Catalog(shard_set.root)  # no manifest: read from the shards' indexes
    t = catalog.stats().stages["filledit"]
    assert (t.ok, t.skipped, t.failed) == (2, 3, 1)
    assert t.skipped_reasons == {"no usable box": 2, "subject | too small": 1}
    assert catalog.select(Filters(issue="skipped:filledit:no usable box")).tolist() == [2, 3]
    assert catalog.select(Filters(issue="failed:filledit")).tolist() == [5]
    assert catalog.select(Filters(has=("filledit",))).tolist() == [0, 1]
    app = BrowseApp(catalog, tmp_path / "cache")
    out = []
    body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": f"/img/{keys[0]}/filledit"},
                        lambda status, headers: out.append(status)))
    assert out == ["200 OK"] and body == catalog.reader.member_bytes(keys[0], "filledit.0.jpg")
    assert sorted(os.listdir(shard_set.root)) == ["filledit", "graph200k.json"]  # read-only


def test_a_stale_manifest_is_shown_not_refused(tmp_path):
    """The browser still starts on a manifest older than its shards, and says so."""
    from browse_shards import write_browse_shards
    from graph200k.browse.catalog import Catalog
    from graph200k.browse.pages import overview

    folder, manifest = write_browse_shards(tmp_path / "shards", num_samples=4, per_shard=2)
    (folder / "000001.stats.json").unlink()  # a shard re-annotated since: its part changed
    (folder / "000001.tar").write_bytes((folder / "000001.tar").read_bytes() + b"\0" * 1024)
    catalog = Catalog(folder, manifest)
    assert catalog.freshness() and "000001" in catalog.freshness()[0]
    page = overview(catalog)
    assert "id=freshness>stale</span>" in page
    assert f"python -m graph200k.manifest --shards {folder}" in page


def test_command_line_errors_are_one_line(tmp_path, browse_shards, capsys):
    from graph200k.browse.__main__ import main

    assert main(["--shards", str(tmp_path)]) == 2
    assert "no shards (NNNNNN.tar) in" in capsys.readouterr().err
    folder, _ = browse_shards
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["--shards", str(folder), "--port", str(port),
                     "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err
