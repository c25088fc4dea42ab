"""`inspect.html` in a real headless Chromium (Playwright driving the system's Chromium): the firing tokens render
highlighted and visible, a click on a column header sorts the table, the filter box hides rows, and nothing is
loaded from the network.

Playwright's own browser download needs the internet, so the test always launches the Chromium the system provides
(`apt-get install chromium`; `.ci/run` installs it where apt is available). Without Playwright or a Chromium it is
skipped, saying which is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_inspect import (  # noqa: F401  (fixtures)
    PLANTED_SAE,
    sae_bottleneck,
    sae_run,
    vq_bottleneck,
    vq_run,
    workspace,
)

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/snap/bin/chromium")


def find_chromium() -> str | None:
    """A Chromium executable: $CHROMIUM, one on PATH, or one at Debian's / Ubuntu's paths."""
    candidates = [os.environ.get("CHROMIUM", ""), *(shutil.which(n) or "" for n in CHROMIUM_NAMES), *CHROMIUM_PATHS]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    playwright_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install 'playwright>=1.40')"
    )
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set CHROMIUM=/path/to/chromium)")
    with playwright_api.sync_playwright() as playwright:
        # --no-sandbox: Chromium refuses to run as root with its sandbox (CI containers run as root).
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def open_page(browser, path: Path):
    """The page loaded from disk, every request outside the file itself recorded (there must be none)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    page.requests, page.script_errors = requests, errors
    return page


def column(page, name: str) -> list[str]:
    """The visible cells of the units table's column `name`, top to bottom."""
    headers = page.locator("#units thead th").all_inner_texts()
    index = next(i for i, h in enumerate(headers) if h.strip().rstrip("▲▼ ").strip() == name)
    return page.eval_on_selector_all(
        "#units tbody tr:not([hidden])", f"rows => rows.map(r => r.cells[{index}].innerText.trim())"
    )


def test_the_firing_tokens_render_highlighted(browser, sae_run):  # noqa: F811
    page = open_page(browser, sae_run["output"] / "inspect.html")
    marks = page.locator("#edit-layer0-unit0 mark.fire")
    assert marks.count() == 5
    for i in range(marks.count()):
        mark = marks.nth(i)
        assert mark.is_visible()
        assert mark.inner_text().strip() == PLANTED_SAE  # rendered as text, never run as markup
        box = mark.bounding_box()
        assert box is not None and box["width"] > 0 and box["height"] > 0
    background = marks.first.evaluate("m => getComputedStyle(m).backgroundColor")
    assert background not in ("rgba(0, 0, 0, 0)", "transparent")  # highlighted
    assert page.locator("svg.hist rect").count() > 0 and page.locator("svg.hist").first.is_visible()
    assert page.script_errors == []
    assert page.requests == [(sae_run["output"] / "inspect.html").resolve().as_uri()]
    page.close()


def test_a_header_click_sorts_the_table(browser, vq_run):  # noqa: F811
    page = open_page(browser, vq_run["output"] / "inspect.html")
    before = column(page, "forget freq")
    assert before != sorted(before, key=lambda v: float(v.rstrip("%")))  # edit order (by score) is not that order
    page.locator("#units thead th", has_text="forget freq").click()
    ascending = column(page, "forget freq")
    assert ascending == sorted(before, key=lambda v: float(v.rstrip("%")))
    page.locator("#units thead th", has_text="forget freq").click()
    assert column(page, "forget freq") == ascending[::-1]
    page.locator("#units thead th", has_text="set").first.click()
    assert column(page, "set") == sorted(column(page, "set"))
    assert page.script_errors == []
    page.close()


def test_the_filter_hides_rows(browser, vq_run):  # noqa: F811
    page = open_page(browser, vq_run["output"] / "inspect.html")
    assert column(page, "set") == ["edit", "edit", "control", "control"]
    page.fill("#filter", "control")
    assert column(page, "set") == ["control", "control"]
    assert page.locator("#units tbody tr.edit").first.is_hidden()
    assert page.inner_text("#shown") == "2 of 4 rows"
    page.fill("#filter", "")
    assert len(column(page, "set")) == 4
    page.close()


def test_the_screenshot_script_writes_a_png(browser, vq_run, tmp_path):  # noqa: F811
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "inspect_screenshot.py"), "--page",
         str(vq_run["output"] / "inspect.html"), "--output", str(shot), "--width", "800", "--height", "600"],
        capture_output=True, text=True, env={**os.environ, "CHROMIUM": find_chromium()}, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
