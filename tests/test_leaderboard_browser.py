"""The leaderboard page in a real headless Chromium (tier 2): it loads from file:// with no console
error and no network request, the table sorts and filters, the per-token viewer renders a path, and
model text with markup in it stays text. Screenshots go to tests/artifacts/."""

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.config import RunConfig
from harness.leaderboard import build
from harness.leaderboard.screenshot import launch, missing
from harness.pipeline import run

WHY = missing()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"no headless browser: {WHY}")

ARTIFACTS = Path(__file__).parent / "artifacts"
# What a model might write: each must show as these exact characters and do nothing else.
EVIL_TOKENS = [
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 1">',
    "</script><script>window.__pwned = 1</script>",
    "<!--",
    "\"'><svg onload=window.__pwned=1>",
    "&lt;b&gt;",
]
EVIL_TEACHER = "<img src=x onerror=window.__pwned=1>"
EVIL_STUDENT = "<script>window.__pwned=1</script> $x$"


def _rewrite(path: Path, change) -> None:
    rows = pq.read_table(path).to_pylist()
    pq.write_table(pa.Table.from_pylist([change(r) for r in rows]), path)


def _evil_copy(run_dir: Path, dest: Path) -> Path:
    """The run with markup in a path's tokens, in a teacher's name and in the student's name."""
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("shards"))
    rename = lambda t: EVIL_TEACHER if t == "synthetic-misleading" else t  # noqa: E731

    def evil_path(r):
        if (r["question_id"], r["path_id"]) == ("q000", 0):
            r["text"] = [EVIL_TOKENS[i % len(EVIL_TOKENS)] for i in range(len(r["text"]))]
        return r

    _rewrite(dest / "paths.parquet", evil_path)
    _rewrite(dest / "nodes.parquet", lambda r: r | {"teacher": rename(r["teacher"])})
    _rewrite(dest / "children.parquet", lambda r: r | {"teacher": rename(r["teacher"])})
    results = json.loads((dest / "results.json").read_text())
    results["student"] = EVIL_STUDENT
    for row in results["teachers"]:
        row["teacher"] = rename(row["teacher"])
        row["tied_with"] = [rename(t.split("/")[0]) + "/" + t.split("/")[1] for t in row.get("tied_with", [])]
    results["teacher_info"] = {rename(k): v for k, v in results["teacher_info"].items()}
    # the rewritten tables are this results.json's, as an odiag that wrote such a run would record them
    results["tables"] = {name: hashlib.sha256((dest / name).read_bytes()).hexdigest() for name in results["tables"]}
    (dest / "results.json").write_text(json.dumps(results))
    return dest


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    run(RunConfig(), root / "synth")
    build([root / "synth"], root / "site")
    build([_evil_copy(root / "synth", root / "evil")], root / "evil-site")
    build([root / "synth"], root / "no-paths-site", viewer_mb=0)
    return root / "site" / "index.html", root / "evil-site" / "index.html", root / "no-paths-site" / "index.html"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="odiag-chromium-")
    with sync_playwright() as p:
        context = launch(p, profile)
        context.set_default_timeout(5000)  # a local page: anything slower is a failure
        yield context
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


class Opened:
    """A page opened from disk, with every console message, page error and request it produced."""

    def __init__(self, context, html: Path):
        self.errors, self.requests = [], []
        self.page = context.new_page()
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(html.resolve().as_uri())
        self.page.wait_for_load_state("load")


@pytest.fixture
def opened(browser, sites):
    page = Opened(browser, sites[0])
    yield page
    page.page.close()


def _column(page, index: int) -> list[str]:
    return page.locator(f"#board tbody tr td:nth-child({index})").all_inner_texts()


def test_page_loads_without_console_errors_or_network(opened):
    page = opened.page
    assert opened.errors == []
    assert all(u.startswith(("file:", "data:")) for u in opened.requests), opened.requests
    images = page.locator("figure.fig:not([hidden]) img")
    assert images.count() == 5
    assert page.evaluate("[...document.querySelectorAll('figure.fig img')].every(i => i.complete && i.naturalWidth > 0)")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "leaderboard.png"))
    page.screenshot(path=str(ARTIFACTS / "leaderboard-full.png"), full_page=True)


def test_table_has_one_row_per_teacher_and_algorithm_and_filters(opened):
    page = opened.page
    assert page.locator("#algorithm").input_value() == "gkd"  # opens on the headline algorithm
    assert page.locator("#board tbody tr").count() == 2
    page.select_option("#algorithm", "")
    assert page.locator("#board tbody tr").count() == 2 * 6
    keys = set(page.locator("#board tbody tr").evaluate_all("rows => rows.map(r => r.dataset.key)"))
    assert len(keys) == 12
    page.select_option("#algorithm", "gkd")
    assert page.locator("#board tbody tr").count() == 2
    page.select_option("#algorithm", "")
    page.fill("#teacher-filter", "helpful")
    assert page.locator("#board tbody tr").count() == 6
    assert set(_column(page, 2)) == {"synthetic-helpful"}


def test_sorting_by_a_column(opened):
    page = opened.page
    board = json.loads(page.locator("#odiag-data").text_content())["board"]
    mean = {e["key"]: e["alignment"]["mean"] for e in board["entries"]}
    order = lambda: page.locator("#board tbody tr").evaluate_all("rows => rows.map(r => r.dataset.key)")  # noqa: E731
    means = [mean[k] for k in order()]
    assert means == sorted(means, reverse=True)  # opens on alignment, best first
    header = page.locator("#board thead button[data-key=alignment]")
    header.click()
    means = [mean[k] for k in order()]
    assert means == sorted(means)
    th = page.locator("#board thead th", has=page.locator("button[data-key=alignment]"))
    assert th.get_attribute("aria-sort") == "ascending"
    page.locator("#board thead button[data-key=teacher]").click()
    teachers = _column(page, 2)
    assert teachers == sorted(teachers)
    page.locator("#board thead button[data-key=rank]").click()
    ranks = [int(t.strip(" ≈#")) for t in _column(page, 1)]
    assert ranks == sorted(ranks)


def test_viewer_renders_a_path_and_its_node_details(opened):
    page = opened.page
    data = json.loads(page.locator("#odiag-data").text_content())["viewer"][0]
    path = data["paths"][int(page.locator("#v-path").input_value())]
    tokens = page.locator("#tokens span.token")
    assert tokens.count() == len(path["text"])
    assert tokens.all_text_contents() == path["text"]
    teacher = int(page.locator("#v-teacher").input_value())
    scored = sorted(int(k) for k, pts in path["points"].items() if any(p["t"] == teacher for p in pts))
    assert page.locator("#tokens span.token.dp").count() == len(scored) > 0
    k = scored[0]
    token = page.locator(f"#tokens span.token[data-pos='{k}']")
    assert token.evaluate("e => getComputedStyle(e).backgroundColor") not in ("rgba(0, 0, 0, 0)", "transparent")
    token.hover()
    point = next(p for p in path["points"][str(k)] if p["t"] == teacher)
    assert page.locator("#detail table.children tbody tr").count() == len(point["children"]) == point["n_actions"]
    assert f"position {k}" in page.locator("#detail").inner_text()
    token.click()
    assert page.locator("#tokens span.token.selected").count() == 1
    page.mouse.move(0, 0)
    assert f"position {k}" in page.locator("#detail").inner_text()  # the selection stays shown
    page.select_option("#v-algorithm", label="drgrpo")
    assert page.locator("#detail .chip.active").inner_text().startswith("drgrpo")
    page.locator("#viewer").screenshot(path=str(ARTIFACTS / "leaderboard-viewer.png"))


def test_model_text_with_markup_stays_inert(browser, sites):
    opened = Opened(browser, sites[1])
    page = opened.page
    try:
        page.select_option("#v-question", "q000")
        page.select_option("#v-path", label=page.locator("#v-path option", has_text="path 0 ").first.inner_text())
        evil = page.locator("#tokens span.token")
        assert evil.count() > 0
        assert set(evil.all_text_contents()) <= set(EVIL_TOKENS) and EVIL_TOKENS[0] in evil.all_text_contents()
        for i in range(evil.count()):
            evil.nth(i).hover()
        assert page.evaluate("window.__pwned") is None
        assert page.locator("img:not(figure img)").count() == 0 and page.locator("svg, iframe").count() == 0
        assert page.locator("script").count() == 2  # the data block and the page's own script
        assert EVIL_TEACHER in page.locator("#board tbody").inner_text()
        assert EVIL_STUDENT in page.locator("#group").inner_text()
        assert opened.errors == []
        page.locator("#viewer").screenshot(path=str(ARTIFACTS / "leaderboard-inert.png"))
    finally:
        page.close()


def test_a_page_whose_budget_holds_no_path_says_so(browser, sites):
    opened = Opened(browser, sites[2])
    try:
        assert opened.errors == []
        assert "path(s) are not in this page" in opened.page.locator("#viewer-omitted").inner_text()
        assert opened.page.locator("#tokens").inner_text() == "No paths to show."
        assert opened.page.locator("#board tbody tr").count() == 2  # the gkd rows: the table does not depend on the viewer
    finally:
        opened.page.close()


def test_cell_tooltips_count_questions_and_paths_by_their_names(opened):
    """A correlation's tooltip gave its question count the word "paths" (it holds both counts)."""
    page = opened.page
    board = json.loads(page.locator("#odiag-data").text_content())["board"]
    entries = {e["key"]: e for e in board["entries"]}
    row = page.locator("#board tbody tr").first
    entry = entries[row.get_attribute("data-key")]
    assert row.locator("td:nth-child(4)").get_attribute("title").endswith(f"; {entry['alignment']['n_questions']} questions")
    divergence = page.locator("#divergence").input_value()
    rho = entry["divergence_correlations"][divergence]["spearman"]
    assert rho["n_paths"] != rho["n_questions"]  # else the test could not tell the two apart
    title = row.locator("td:nth-child(8)").get_attribute("title")
    assert title.endswith(f"; {rho['n_questions']} questions, {rho['n_paths']} paths"), title
