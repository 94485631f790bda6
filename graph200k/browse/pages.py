"""The HTML of each page: plain server-rendered HTML and one stylesheet, no script needed.

Numbers the browser test compares with the manifest carry `data-count` attributes; every
value from the data is escaped.
"""

from __future__ import annotations

import base64
import functools
import json
import math
from html import escape
from typing import Callable
from urllib.parse import quote, urlencode

from graph200k.browse.catalog import FAILED, SKIPPED, Catalog, Filters
from graph200k.browse.media import THUMB_SIDES, Thumbnails
from graph200k.nodes import (CONDITIONS, DEGRADATION, DEGRADATIONS, EDITS, NODE_TYPES, STYLES,
                             variant_member)
from graph200k.prompts import image_tag
from graph200k.splits import SPLITS

MAX_ITEMS = 300  # item choices in the filter form (Subjects200K has thousands of items)
# (key, slot, variant, seed, side) -> an <img> src: a URL, or the thumbnail inline
Src = Callable[..., str]
HUB = "target"  # graph200k.graph.HUB, without importing networkx for a constant
KIND_COLOURS = {"image": "#f2b134", "condition": "#4f9dde", "style": "#b76fd1",
                "edit": "#5dbb63", "degradation": "#bbbbbb"}
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#23303f;color:#fff;padding:8px 16px;display:flex;gap:18px;align-items:center}
header a{color:#dce8f5;text-decoration:none;font-weight:600}header b{margin-right:12px}
main{padding:12px 18px;max-width:1400px}
table{border-collapse:collapse;margin:6px 0 16px}td,th{border-bottom:1px solid #ddd;
padding:3px 8px;text-align:left;vertical-align:top}th{background:#eef1f4}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:inline-block;height:10px;background:#4f9dde;vertical-align:middle}
.tiles{display:flex;flex-wrap:wrap;gap:10px}.tile{width:164px;font-size:12px;
text-decoration:none;color:#222}.tile img{width:160px;height:160px;object-fit:contain;
background:#e8e8e8;border:2px solid #fff}
.node{display:inline-block;margin:0 8px 10px 0;vertical-align:top;font-size:12px;
text-align:center}.node img{display:block;width:160px;height:160px;object-fit:contain;
background:#e8e8e8}.pair{display:inline-block;border:1px solid #ccc;padding:4px;
margin:0 8px 8px 0;background:#fff}
.warn{color:#a33}.ok{color:#286b2c}.muted{color:#777}
form.filters{background:#fff;border:1px solid #ddd;padding:8px 10px;margin-bottom:10px}
form.filters label{margin-right:8px;white-space:nowrap}
.boxed{position:relative;display:inline-block}.boxed svg{position:absolute;left:0;top:0}
pre{background:#fff;border:1px solid #ddd;padding:8px;overflow:auto;max-height:360px}
.top{display:flex;flex-wrap:wrap;gap:32px;align-items:flex-start}.top>div{max-width:460px}
#meta{max-width:900px}#meta td{word-break:break-word}#meta code{font-size:12px}.boxed img{display:block}
.masked{outline:3px solid #e61e1e}.prompt td:first-child{font-weight:600;white-space:nowrap}
"""


def h(value) -> str:
    """Escaped, and ASCII: a character outside it becomes a character reference."""
    text = escape(str(value), quote=True)
    return text if text.isascii() else text.encode("ascii", "xmlcharrefreplace").decode()


def url(path: str, **params) -> str:
    query = urlencode({k: v for k, v in params.items() if v not in (None, "", (), [])},
                      doseq=True)
    return path + ("?" + query if query else "")


def layout(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{h(title)} &middot; "
            f"Graph200K browser</title><link rel=icon href='data:,'><style>{STYLE}</style>"
            f"</head><body><header><b>Graph200K</b><a href='/'>Overview</a>"
            f"<a href='/samples'>Samples</a><a href='/task'>Tasks</a></header>"
            f"<main><h1>{h(title)}</h1>{body}</main></body></html>")


def img_url(key: str, slot: str, variant: int = 0, seed: int = 0, side: int | None = None):
    # built by hand, not with url(): a sample page makes one per image (urlencode's share
    # of the warm page was measurable); slots are registry names, the rest whole numbers
    query = "&".join(f"{k}={int(v)}" for k, v in (("v", variant), ("seed", seed), (
        "side", side if side and side != THUMB_SIDES[0] else 0)) if v)
    path = f"/{'thumb' if side else 'img'}/{quote(key)}/{slot}"
    return f"{path}?{query}" if query else path


def thumb_url(key: str, slot: str, variant: int = 0, seed: int = 0,
              side: int = THUMB_SIDES[0]) -> str:
    return img_url(key, slot, variant, seed, side)


def thumb_src(thumbs: Thumbnails, key: str, slot: str, variant: int = 0, seed: int = 0,
              side: int = THUMB_SIDES[0]) -> str:
    """A thumbnail already on disk inline, so a warm page arrives in one response instead of
    one request per image (~0.3 ms each over HTTP against ~0.05 ms to read it); one not made
    yet by URL, so a cold page shows at once and its images follow."""
    data = thumbs.cached(key, slot, variant, seed, side)
    if data is None:
        return thumb_url(key, slot, variant, seed, side)
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


def attr_src(src: str) -> str:
    """An <img> src attribute value; base64 needs no escaping (and is most of a page's bytes)."""
    return src if src.startswith("data:image/jpeg;base64,") else h(src)


def node_img(src: Src, key: str, slot: str, label: str, variant: int = 0, seed: int = 0) -> str:
    return (f"<a class=node href='{h(img_url(key, slot, variant, seed))}'>"
            f"<img alt='{h(label)}' src='{attr_src(src(key, slot, variant, seed))}'"
            f" width=160 height=160>{h(label)}</a>")


# ---- overview ---------------------------------------------------------------------------
def overview(c: Catalog) -> str:
    m = c.manifest
    n = len(m)
    counts = c.node_counts()
    splits = c.split_counts()
    stats = c.stats()
    fresh = c.freshness()
    age = c.manifest_age()
    parts = [f"<p><span id=total data-count={n}>{n}</span> samples in "
             f"{len(c.shard_set.shards())} shards at <code>{h(c.shard_set.root)}</code> "
             f"({h(c.shard_set.layout)} layout). Split: " + ", ".join(
                 f"<a href='{h(url('/samples', split=s))}'>{s} "
                 f"<span id=split-{s} data-count={splits[s]}>{splits[s]}</span></a>"
                 for s in SPLITS) + ".</p>"]
    where = h(c.manifest_source) if c.manifest_source else "scanned from the shards at start"
    when = f", written {_ago(age)} ago" if age is not None else ""
    if fresh:
        state = ("<span class=warn id=freshness>stale</span>: " + "; ".join(
            h(p) for p in fresh[:8]) + (f"; and {len(fresh) - 8} more" if len(fresh) > 8
                                        else "") + ". Rebuild it: <code>python -m "
                 f"graph200k.manifest --shards {h(c.shard_set.root)}</code>")
    else:
        state = "<span class=ok id=freshness>fresh</span> (every part matches its fingerprint)"
    parts.append(f"<p>Manifest: {where}{when}; {state}.</p>")

    parts.append("<h2>Node types</h2><table id=nodes><tr><th>node type<th>kind<th>samples"
                 "<th></th><th>browse</tr>")
    for name, node in NODE_TYPES.items():
        if node.kind == DEGRADATION:
            continue
        k = counts[name]
        width = int(200 * k / n) if n else 0
        parts.append(
            f"<tr><td>{h(name)}<td>{h(node.kind)}{' (online)' if node.online else ''}"
            f"<td class=n data-node='{h(name)}' data-count={k}>{k}"
            f"<td><span class=bar style='width:{width}px'></span>"
            f"<td><a href='{h(url('/samples', has=name))}'>with</a> · "
            f"<a href='{h(url('/samples', missing=name))}'>without</a></tr>")
    online = counts.get(DEGRADATIONS[0], 0)
    parts.append(f"</table><p class=muted>+ {len(DEGRADATIONS)} degradations computed online "
                 f"from <code>target</code>: available for {online} samples.</p>")

    parts.append("<h2>Annotation stages</h2>")
    if stats.stages:
        parts.append("<table id=stages><tr><th>stage<th>shards<th>ok<th>not applicable<th>"
                     "failed<th>worker s<th>reasons</tr>")
        for stage, t in stats.stages.items():
            reasons = _reasons(stage, FAILED, t.failed_reasons) + _reasons(
                stage, SKIPPED, t.skipped_reasons)
            parts.append(f"<tr><td>{h(stage)}<td class=n>{t.shards}<td class=n>{t.ok}"
                         f"<td class=n>{t.skipped}<td class=n>{t.failed}"
                         f"<td class=n>{t.seconds:.1f}<td>{reasons}</tr>")
        parts.append("</table>")
    else:
        parts.append("<p class=muted>No stage statistics found (no <code>.stats.json</code> "
                     "with stages beside the shards).</p>")
    ing = stats.ingest
    if ing["filtered"] or ing["failed"]:
        parts.append("<p>Ingest: rows that never became samples — " + "; ".join(
            f"{kind} {sum(cnt.values())} (" + ", ".join(f"{h(r)} ×{k}" for r, k in
                                                         cnt.most_common(5)) + ")"
            for kind, cnt in (("filtered", ing["filtered"]), ("failed", ing["failed"])) if cnt)
                     + ".</p>")

    parts.append(quality_html(c))

    table = c.variant_table()
    ok = [r for r in table if r["train"] and not r["unseen"]]
    parts.append(f"<h2>Task variants</h2><p><span id=sampleable data-count={len(ok)}>{len(ok)}"
                 f"</span> of {len(table)} variants can be sampled from the train split "
                 f"({sum(1 for r in table if r['test'])} from test).</p>"
                 "<table id=families><tr><th>family<th>variants<th>sampleable (train)"
                 "<th>sampleable (test)</tr>")
    families: dict[str, list[dict]] = {}
    for r in table:
        families.setdefault(r["family"], []).append(r)
    for fam, rows in families.items():
        parts.append(f"<tr><td>{h(fam)}<td class=n>{len(rows)}"
                     f"<td class=n>{sum(1 for r in rows if r['train'])}"
                     f"<td class=n>{sum(1 for r in rows if r['test'])}</tr>")
    parts.append(f"</table><details><summary>all {len(table)} variants, with how many samples "
                 "could fill each</summary><table id=variants><tr><th>family<th>variant"
                 "<th>train samples<th>test samples<th></tr>")
    for r in table:
        draw = (f"<a href='{h(url('/task', family=r['family'], variant=r['variant']))}'>draw</a>"
                if r["train"] or r["test"] else "<span class=muted>no sample</span>")
        unseen = " <span class=muted>(unseen)</span>" if r["unseen"] else ""
        parts.append(f"<tr><td>{h(r['family'])}<td>{h(r['variant'])}{unseen}"
                     f"<td class=n>{r['train']}<td class=n>{r['test']}<td>{draw}</tr>")
    parts.append("</table></details>")
    return layout("Overview", "".join(parts))


def quality_html(c: Catalog) -> str:
    """The quality stage's score histograms and what the task config's gates remove."""
    q = c.quality_summary()
    out = ["<h2>Quality scores</h2>"]
    if not q["scored"]:
        return out[0] + "<p class=muted id=quality>No quality scores in the manifest.</p>"
    out.append("<table id=quality><tr><th>node<th>variants scored<th>flagged</tr>")
    for node, n in sorted(q["scored"].items()):
        flags = ", ".join(f"{h(k)} ×{v}" for k, v in sorted(q["flags"].get(node, {}).items()))
        out.append(f"<tr><td>{h(node)}<td class=n>{n}<td>{flags or '-'}</tr>")
    out.append("</table><table id=quality-histograms><tr><th>node<th>score"
               "<th>histogram (0 → 1)</tr>")
    for (node, name), row in sorted(q["histograms"].items()):
        top = max(row) or 1
        bars = "".join(f"<span class=bar title='{v}' style='width:6px;display:inline-block;"
                       f"height:{max(1, round(24 * v / top))}px'></span>" for v in row)
        out.append(f"<tr><td>{h(node)}<td>{h(name)}<td data-counts='{' '.join(map(str, row))}'>"
                   f"{bars}</tr>")
    out.append("</table>")
    if q["active"]:
        out.append("<table id=quality-gates><tr><th>gate<th>variants removed</tr>" + "".join(
            f"<tr><td>{h(k)}<td class=n data-count={v}>{v}</tr>"
            for k, v in sorted(q["removed"].items())) + "</table>")
    else:
        out.append("<p class=muted id=quality-gates>Quality gates: off in the task config.</p>")
    return "".join(out)


def _reasons(stage: str, status: str, counter) -> str:
    label = "failed" if status == FAILED else "not applicable"
    return "".join(
        f"<div><a href='{h(url('/samples', issue=f'{status}:{stage}:{r}'))}'>{label}: "
        f"{h(r or '(no reason given)')}</a> ×{k}</div>" for r, k in counter.most_common(6))


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


# ---- sample grid ------------------------------------------------------------------------
def samples(c: Catalog, f: Filters, error: str = "", src: Src = thumb_url) -> str:
    picked = c.select(f) if not error else []
    total = len(picked)
    pages = max(1, math.ceil(total / f.per_page))
    page = min(f.page, pages)
    shown = picked[(page - 1) * f.per_page: page * f.per_page]
    stored = [n for n, t in NODE_TYPES.items() if t.kind != DEGRADATION]
    form = ["<form class=filters method=get action='/samples'><div>has: "]
    form += [f"<label><input type=checkbox name=has value='{h(n)}'"
             f"{' checked' if n in f.has else ''}>{h(n)}</label>" for n in stored]
    form.append("</div><div>missing: ")
    form += [f"<label><input type=checkbox name=missing value='{h(n)}'"
             f"{' checked' if n in f.missing else ''}>{h(n)}</label>" for n in stored]
    form.append("</div><div><label>item <select name=item><option value=''>any</option>")
    items = c.items()[:MAX_ITEMS]  # the most common; a rarer one is still kept when chosen
    if f.item and f.item not in {i for i, _ in items}:
        items = [(f.item, "chosen"), *items]
    form += [f"<option value='{h(i)}'{' selected' if i == f.item else ''}>{h(i)} ({k})</option>"
             for i, k in items]
    form.append("</select></label><label>split <select name=split><option value=''>any</option>")
    form += [f"<option{' selected' if s == f.split else ''}>{s}</option>" for s in SPLITS]
    form.append("</select></label><label>failed / not applicable <select name=issue>"
                "<option value=''>any</option>")
    for stage, t in c.stats().stages.items():
        for status, counter, count in ((FAILED, t.failed_reasons, t.failed),
                                       (SKIPPED, t.skipped_reasons, t.skipped)):
            if not count:
                continue
            value = f"{status}:{stage}"
            form.append(f"<option value='{h(value)}'{' selected' if value == f.issue else ''}>"
                        f"{h(stage)} {'failed' if status == FAILED else 'n/a'} ({count})</option>")
            for r, k in counter.most_common(10):
                v = f"{value}:{r}"
                form.append(f"<option value='{h(v)}'{' selected' if v == f.issue else ''}>"
                            f"&nbsp;&nbsp;{h(r)[:80]} ({k})</option>")
    form.append(f"</select></label><label>key or item <input name=q value='{h(f.q)}' size=14>"
                "</label><button id=apply type=submit>Apply</button> "
                "<a href='/samples'>reset</a></div></form>")
    body = ["".join(form)]
    if error:
        body.append(f"<p class=warn>{h(error)}</p>")
    body.append(f"<p><span id=count data-count={total}>{total}</span> samples match"
                f"{f'; page {page} of {pages}' if total else ''}.</p><div class=tiles>")
    m = c.manifest
    for i in shown:
        key = m.key(int(i))
        flags = "".join(f"<div class=warn>{h(st)} {'failed' if s == FAILED else 'n/a'}</div>"
                        for s, st, _ in c.issues_of(key))
        body.append(f"<a class=tile href='/sample/{h(quote(key))}'><img alt='{h(key)}' "
                    f"src='{attr_src(src(key, 'target'))}' width=160 "
                    f"height=160><div>{h(key)} &middot; {h(m.item(int(i)))}</div>{flags}</a>")
    body.append("</div><p>")
    query = {"has": list(f.has), "missing": list(f.missing), "item": f.item, "split": f.split,
             "issue": f.issue, "q": f.q}
    if page > 1:
        body.append(f"<a id=prev href='{h(url('/samples', **query, page=page - 1))}'>"
                    "&larr; previous</a> ")
    if page < pages:
        body.append(f"<a id=next href='{h(url('/samples', **query, page=page + 1))}'>next &rarr;</a>")
    body.append("</p>")
    return layout("Samples", "".join(body))


# ---- one sample -------------------------------------------------------------------------
def sample(c: Catalog, key: str, degradations: bool = False, seed: int = 0,
           src: Src = thumb_url) -> str:
    i = c.index_of(key)
    r = c.record(i)
    meta = c.meta(key)
    nodes = r["nodes"]
    body = [f"<p><b>{h(r['item'])}</b> &middot; shard {r['shard']:06d} &middot; split "
            f"{h(r['split'])} &middot; "
            "quality " + ", ".join(f"{h(k)} {v}" for k, v in r["quality"].items())
            + f"</p><p>{h(r['description'])}</p>"]
    issues = c.issues_of(key)
    if issues:
        body.append("<p class=warn>" + "; ".join(
            f"{h(st)} {'failed' if s == FAILED else 'not applicable'}: {h(why)}"
            for s, st, why in issues) + "</p>")
    graph = type_graph_svg(tuple([n for n in nodes if NODE_TYPES[n].kind != DEGRADATION]
                                 + (["\u2026degradations"] if any(
                                     NODE_TYPES[n].kind == DEGRADATION for n in nodes) else [])))
    body.append("<div class=top><div><h2>Target and grounding boxes</h2>"
                + _boxed_target(key, meta, c.target_size(key), src) + "</div><div><h2>Type graph"
                f"</h2>{graph}</div></div>")
    body.append("<h2>Images and conditions</h2><div>")
    for n in ["reference", *CONDITIONS]:
        if n in nodes:
            body.append(node_img(src, key, n, n))
    body.append("</div>")
    for group in (STYLES, EDITS):
        for n in group:
            count = r["variants"].get(n, 0)
            if not count:
                continue
            body.append(f"<h2>{h(n)} <span class=muted>({count} variant"
                        f"{'s' if count > 1 else ''})</span></h2><div>")
            if n in STYLES:  # each stylized image beside the style reference it came from
                body += [f"<span class=pair>{node_img(src, key, f'{n}_ref', f'{n}_ref.{v}', v)}"
                         f"{node_img(src, key, n, f'{n}.{v}', v)}</span>" for v in range(count)]
            else:  # every edit of the target beside the target
                body.append(f"<span class=pair>{node_img(src, key, 'target', 'target')}" + "".join(
                    node_img(src, key, n, f"{n}.{v}", v) for v in range(count)) + "</span>")
            body.append("</div>")
    online = [n for n in nodes if NODE_TYPES[n].kind == DEGRADATION]
    body.append(f"<h2>Degradations <span class=muted>({len(online)}, computed online from "
                "target)</span></h2>")
    if degradations:
        body.append(f"<form method=get><input type=hidden name=degradations value=1>seed "
                    f"<input name=seed value={seed} size=6><button>redraw</button></form><div>")
        body += [node_img(src, key, n, n, seed=seed) for n in online]
        body.append("</div>")
    elif online:
        body.append(f"<p><a id=show-degradations href='{h(url('/sample/' + quote(key), degradations=1))}'>"
                    f"show the {len(online)} degradations</a></p>")
    body.append(f"<h2>meta.json</h2>{_meta_table(meta)}")
    body.append(f"<p><a href='{h(url('/samples', q=key))}'>in the sample grid</a></p>")
    return layout(f"Sample {key}", "".join(body))


def _meta_table(meta: dict) -> str:
    """meta.json as rows of compact JSON: annotations one row per stage."""
    rows = []
    for k, v in sorted(meta.items()):
        if k == "annotations" and isinstance(v, dict):
            rows += [(f"annotations.{stage}", entry) for stage, entry in sorted(v.items())]
        else:
            rows.append((k, v))
    return "<table id=meta>" + "".join(
        f"<tr><th>{h(k)}<td><code>{h(v if isinstance(v, str) else json.dumps(v))}</code></tr>"
        for k, v in rows) + "</table>"


def _boxed_target(key: str, meta: dict, size: tuple[int, int], src: Src) -> str:
    """The target with the grounded objects' boxes (meta `annotations.mask`, pixels of the
    stored target) drawn over it in an SVG of the target's own coordinates."""
    mask = (meta.get("annotations") or {}).get("mask") or {}
    objects, subject = mask.get("objects") or [], mask.get("subject")
    w, ht = size
    img = (f"<img id=target alt=target src='{attr_src(src(key, 'target', 0, 0, THUMB_SIDES[1]))}'"
           f" width=320 height={round(320 * ht / w)}>")
    if not objects:
        return f"<div class=boxed>{img}</div><p class=muted>no grounded boxes in meta.json</p>"
    per_px = w / 320  # target pixels per displayed pixel: 2.5 px lines, 13 px labels
    stroke, font = 2.5 * per_px, 13 * per_px
    rects = []
    for j, o in enumerate(objects):
        x1, y1, x2, y2 = o["box"]
        colour = "rgb({},{},{})".format(*(o.get("colour") or (255, 0, 0)))
        # quoted values: an unquoted one ending in "/>" swallows the self-closing slash
        rects.append(f"<rect x='{x1}' y='{y1}' width='{x2 - x1}' height='{y2 - y1}' "
                     f"fill='none' stroke='{colour}' stroke-width='{stroke:.1f}'/>"
                     f"<text x='{x1 + stroke:.1f}' y='{y1 + font:.1f}' fill='{colour}' "
                     f"font-size='{font:.1f}' font-weight='bold' stroke='#fff' "
                     f"stroke-width='{3 * per_px:.1f}' paint-order='stroke'>{h(o.get('name', ''))}"
                     f"{' (subject)' if j == subject else ''}</text>")
    return (f"<div class=boxed id=boxes>{img}<svg width=100% height=100% viewBox='0 0 {w} {ht}'"
            f" preserveAspectRatio=none>{''.join(rects)}</svg></div>"
            f"<p>{len(objects)} grounded object(s): "
            + ", ".join(h(o.get("name", "")) for o in objects) + "</p>")


@functools.lru_cache(maxsize=512)
def type_graph_svg(nodes: tuple[str, ...], width: int = 440, height: int = 300) -> str:
    """The sample's type graph: `target` in the middle, an edge each way to every node.
    Kept per node set: many samples share one, and the drawing is a tenth of a page."""
    ring = [n for n in nodes if n != HUB]
    cx, c = width / 2, height / 2
    rx, ry = width / 2 - 110, height / 2 - 24  # labels sit left and right of the ring
    parts = [f"<svg id=graph width={width} height={height} viewBox='0 0 {width} {height}' "
             f"role=img aria-label='type graph'>"]
    pos = {}
    for j, n in enumerate(ring):
        a = 2 * math.pi * j / max(1, len(ring))
        pos[n] = (cx + rx * math.cos(a), c + ry * math.sin(a), a)
    for n, (x, y, _) in pos.items():
        parts.append(f"<line x1={cx:.0f} y1={c:.0f} x2={x:.0f} y2={y:.0f} stroke='#999'/>")
    for n, (x, y, a) in pos.items():
        kind = NODE_TYPES[n].kind if n in NODE_TYPES else DEGRADATION
        anchor = "start" if math.cos(a) >= 0 else "end"
        dx = 12 if anchor == "start" else -12
        parts.append(f"<circle cx={x:.0f} cy={y:.0f} r=9 fill='{KIND_COLOURS[kind]}' "
                     f"stroke='#333'/><text x={x + dx:.0f} y={y + 4:.0f} font-size=12 "
                     f"text-anchor={anchor}>{h(n)}</text>")
    parts.append(f"<circle cx={cx:.0f} cy={c:.0f} r=14 fill='{KIND_COLOURS['image']}' "
                 f"stroke='#333'/><text x={cx:.0f} y={c + 30:.0f} font-size=13 "
                 f"text-anchor=middle>{HUB}</text></svg>")
    parts.append("<p class=muted>Every edge is target &harr; node in both directions: a task is a "
                 "path through target. Colours: " + ", ".join(
                     f"<span style='color:{col}'>&#9679;</span> {k}" for k, col in KIND_COLOURS.items())
                 + "</p>")
    return "".join(parts)


# ---- one task ---------------------------------------------------------------------------
def task_page(c: Catalog, family: str, variant: str, seed: int, split: str, res: int,
              task=None, grid=None, error: str = "") -> str:
    options = []
    for fam, variants in c.tasks.families.items():
        options.append(f"<optgroup label='{h(fam)}'>")
        for v in variants:
            value = f"{fam}/{v.name}"
            sel = " selected" if (fam, v.name) == (family, variant) else ""
            options.append(f"<option value='{h(value)}'{sel}>{h(v.name)}</option>")
        options.append("</optgroup>")
    body = [f"<form class=filters method=get action='/task'><label>family / variant "
            f"<select name=pick>{''.join(options)}</select></label><label>seed <input "
            f"name=seed value={seed} size=8></label><label>split <select name=split>"
            + "".join(f"<option{' selected' if s == split else ''}>{s}</option>"
                      for s in ("train", "test", "unseen"))
            + "</select></label><label>cell side <select name=res>"
            + "".join(f"<option{' selected' if r == res else ''}>{r}</option>"
                      for r in (128, 256, 384))
            + "</select></label><button id=draw type=submit>Draw</button></form>"]
    if error:
        body.append(f"<p class=warn id=task-error>{h(error)}</p>")
    if task is not None:
        params = {"family": family, "variant": variant, "seed": seed, "split": split, "res": res}
        body.append(f"<p>Task <code>{h(task.task_id)}</code> · family <b>{h(task.family)}</b> · "
                    f"variant <b>{h(task.variant)}</b> · {len(task.rows)} row(s) × "
                    f"{len(task.columns)} column(s) · masked cell: row {task.mask_row + 1}, "
                    f"column {task.mask_col + 1} ({h(task.columns[task.mask_col])}) · "
                    f"degradation seed {task.seed}</p>"
                    f"<img id=grid alt='task grid' src='{h(url('/taskgrid.png', **params))}' "
                    f"style='max-width:100%'>")
        body.append("<h2>Rows</h2><table id=rows><tr><th>row<th>RoPE row id<th>sample")
        body += [f"<th>{h(image_tag(j + 1))} {h(col)}" for j, col in enumerate(task.columns)]
        body.append("</tr>")
        row_ids = grid.row_ids if grid is not None else list(range(len(task.rows)))
        for r, row in enumerate(task.rows):
            key = row[0]["key"]
            role = "query" if r == len(task.rows) - 1 else "in-context"
            body.append(f"<tr><td>{r + 1} ({role})<td class=n>{row_ids[r] + 1}"
                        f"<td><a href='/sample/{h(quote(key))}'>{h(key)}</a>")
            for j, cell in enumerate(row):
                masked = " class=masked" if (r, j) == (task.mask_row, task.mask_col) else ""
                v = cell.get("variant", 0)
                member = variant_member(cell["slot"], v) if cell["slot"] in _STORED else "online"
                body.append(f"<td{masked}>{h(member)}</td>")
            body.append("</tr>")
        body.append("</table>")
        p = task.prompt
        body.append("<h2>Prompt</h2><table class=prompt id=prompt>"
                    f"<tr><td>layout<td>{h(p.get('layout') or '')}</tr>"
                    f"<tr><td>task{'' if p.get('keep_task') else ' (dropped)'}"
                    f"<td>{h(p.get('task') or '')}</tr>"
                    f"<tr><td>content{'' if p.get('keep_content') else ' (dropped)'}"
                    f"<td>{h(p.get('content') or '— (the target is not the photo)')}</tr>"
                    f"<tr><td>caption{' (whole caption dropped)' if p.get('dropped') else ''}"
                    f"<td>{h(p.get('text') or '')}</tr></table>")
        body.append(f"<details><summary>task JSON</summary><pre>"
                    f"{h(json.dumps(task.to_json(), indent=1))}</pre></details>")
    return layout("Task", "".join(body))


_STORED = {s.name for n in NODE_TYPES.values() if not n.online and n.kind != DEGRADATION
           for s in n.slots}
