"""The README and docs/ link only to files that exist, so moving a page or a result cannot leave a dead link."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [
    ROOT / "README.md",
    ROOT / "benchmarks" / "README.md",
    ROOT / "benchmarks" / "RESULTS.md",
    *sorted((ROOT / "docs").rglob("*.md")),
]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(page.read_text(encoding="utf-8")) if "://" not in target]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    missing = [t for t in relative_links(page) if not (page.parent / t).exists()]
    assert missing == [], f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_the_link_pattern_finds_links_and_skips_urls(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("see [a](docs/a.md#part), [b](https://x.org/b.md) and [c](../c/)\\n")
    assert relative_links(page) == ["docs/a.md", "../c/"]


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors, in_code = set(), False
    for line in text.splitlines():
        in_code ^= line.startswith("```")
        match = None if in_code else re.match(r"^#{1,6} (.+)$", line)
        if match:
            anchors.add(re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-"))
    return anchors


def test_the_results_headline_links_to_sections_that_exist():
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    targets = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert targets and targets <= heading_anchors(text), sorted(targets - heading_anchors(text))
