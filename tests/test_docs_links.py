"""The README's first screen is short and every link between README.md and docs/*.md leads somewhere: the file
exists and the #anchor is a heading (GitHub's slug) or an explicit <a id>."""

import re

import pytest
from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens.

    >>> slug("Configuration (Hydra, `conf/`)"), slug("Packed training (bias-only methods)")
    ('configuration-hydra-conf', 'packed-training-bias-only-methods')
    """
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page) -> set[str]:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # a '# comment' in a code block is no heading
    return ({slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
            | set(re.findall(r'<a\s+id="([^"]+)"', text)))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not ours to check offline
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: {target}"


def test_the_readme_first_screen_is_short_and_links_the_reference():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 80
    first = text.split("## Documentation")[0]
    assert "make demo" in first and "75.19±1.98 over 3 seeds" in first and "majority class 50.92" in first
    for page in ("runs-and-records", "configuration", "sweeps-and-tables", "tasks", "serving", "packed-training",
                 "protocol", "development", "custom-tasks", "architecture", "benchmarks"):
        assert f"(docs/{page}.md" in text, page
