"""graph200k.browse in a real browser: Debian's headless Chromium driven by Playwright.

Opens the overview, applies a filter, opens a sample page and a task page; on every page
each image has loaded (naturalWidth > 0), the counts are the manifest's, and the console
logged no error. Screenshots go to build/browse-screenshots/. `make test` installs
chromium (apt) and playwright (pyproject's dev extra); without them the test is skipped
and says why.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from graph200k.nodes import mask_of

CHROMIUM = os.environ.get("GRAPH200K_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parent.parent / "build" / "browse-screenshots"

if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (make test does it)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed: pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def page():
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        pg.errors = []
        pg.on("console", lambda m: m.type == "error" and pg.errors.append(m.text))
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        pg.on("response", lambda r: r.status >= 400 and pg.errors.append(f"{r.status} {r.url}"))
        yield pg
        browser.close()


def loaded(pg) -> int:
    """Waits for every image of the page; asserts each one decoded. Returns how many."""
    pg.wait_for_load_state("load")
    broken = pg.eval_on_selector_all(
        "img", "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
    assert broken == [], f"images that did not load: {broken}"
    return pg.eval_on_selector_all("img", "imgs => imgs.length")


def data_count(pg, selector: str) -> int:
    return int(pg.get_attribute(selector, "data-count"))


def test_browse_in_chromium(page, browse_server):
    base, app = browse_server
    m = app.catalog.manifest
    pg = page

    pg.goto(base + "/")
    loaded(pg)
    assert data_count(pg, "#total") == len(m)
    counts = m.node_counts()
    for cell in pg.query_selector_all("#nodes td[data-node]"):
        assert int(cell.get_attribute("data-count")) == counts[cell.get_attribute("data-node")]
    assert pg.inner_text("#freshness") == "fresh"
    pg.screenshot(path=str(SHOTS / "overview.png"), full_page=True)

    # a filter through the form: samples with instantstyle and depth, in the train split
    pg.goto(base + "/samples")
    assert data_count(pg, "#count") == len(m)
    pg.check("input[name=has][value=instantstyle]")
    pg.check("input[name=has][value=depth]")
    pg.select_option("select[name=split]", "train")
    pg.click("#apply")
    pg.wait_for_url("**/samples?**")
    want = m.having(mask_of(["instantstyle", "depth"]), "train")
    assert data_count(pg, "#count") == len(want) > 0
    assert loaded(pg) == len(want)
    shown = [a.get_attribute("href").rsplit("/", 1)[-1] for a in pg.query_selector_all("a.tile")]
    assert shown == [m.key(int(i)) for i in want]
    pg.screenshot(path=str(SHOTS / "samples.png"), full_page=True)

    # a sample page: every node, the boxes over the target, the type graph
    pg.click("a.tile >> nth=0")
    pg.wait_for_url("**/sample/**")
    key = shown[0]
    n_images = loaded(pg)
    assert n_images >= 1 + len(app.catalog.stored_nodes_of(m.index_of(key)))
    objects = app.catalog.meta(key)["annotations"]["mask"]["objects"]
    assert len(pg.query_selector_all("#boxes svg rect")) == len(objects) == 2
    labels = pg.eval_on_selector_all("#boxes svg text", "ts => ts.map(t => t.textContent)")
    assert labels == [objects[0]["name"] + " (subject)", objects[1]["name"]]
    assert pg.query_selector("#graph") is not None
    pg.screenshot(path=str(SHOTS / "sample.png"), full_page=True)
    pg.click("#show-degradations")
    pg.wait_for_url("**degradations=1**")
    assert loaded(pg) >= n_images + 32

    # a task page: draw a task, its grid image, rows and prompts
    pg.goto(base + "/task")
    pg.select_option("select[name=pick]", "conditional_generation_with_reference/reference+depth->target")
    pg.fill("input[name=seed]", "7")
    pg.click("#draw")
    pg.wait_for_url("**/task?**")
    assert loaded(pg) == 1
    assert pg.eval_on_selector("#grid", "i => i.naturalWidth") > 0
    task = app.catalog.draw_task("conditional_generation_with_reference",
                                 "reference+depth->target", 7)
    assert len(pg.query_selector_all("#rows tr")) == 1 + len(task.rows)
    assert pg.query_selector("#rows td.masked") is not None
    assert task.prompt["layout"] in pg.inner_text("#prompt")
    pg.screenshot(path=str(SHOTS / "task.png"), full_page=True)

    assert pg.errors == [], pg.errors
