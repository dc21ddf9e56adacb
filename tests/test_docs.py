"""The documentation holds together: every relative link of the README, the docs pages and the benchmarks page
reaches a file that exists (and a heading that exists, for a link with an anchor); the README stays short, opens
with a table of contents of its own sections, and links every docs page."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS, REPO / "benchmarks" / "README.md"]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`]*`")
LINK = re.compile(r"\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")  # [text](target) and ![alt](target)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def _prose(path: Path) -> str:
    """The page without its code blocks and code spans, where brackets and parentheses are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", path.read_text()))


def links(path: Path):
    """The link targets of a page, in order."""
    return LINK.findall(_prose(path))


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped (but - and _), spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set:
    """Every anchor of a Markdown page's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    seen, found = {}, set()
    for _, text in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(text)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)  # http:, https:, mailto:, ...


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_relative_link_reaches_a_file_and_heading_that_exist(page):
    broken = []
    for target in filter(relative, links(page)):
        path_part, _, anchor = target.partition("#")
        file = (page.parent / path_part).resolve() if path_part else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO)}")
    assert broken == [], broken


def test_the_pages_have_links_to_check():
    """The link parser finds the links (a parser that found none would pass the test above vacuously)."""
    assert len(links(README)) >= 20
    assert all(links(page) for page in PAGES if page.name != "support_matrix.md")


def test_the_readme_is_short():
    assert len(README.read_text().splitlines()) < 260


def test_the_readme_opens_with_a_table_of_contents_of_its_own_sections():
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"^#{2,3}\s+(Contents|Table of contents)\s*$", line))
    assert start < 40, "the table of contents is near the top"
    entries = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        entries += re.findall(r"\]\((#[^)]+)\)", line)
    own = anchors(README)
    assert len(entries) >= 4 and all(entry[1:] in own for entry in entries), entries
    sections = [slug(text) for hashes, text in HEADING.findall(FENCE.sub("", README.read_text()))
                if len(hashes) == 2 and slug(text) not in ("contents", "table-of-contents")]
    assert sorted(sections) == sorted(entry[1:] for entry in entries), "every section is in the table of contents"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in filter(relative, links(README))}
    assert DOCS and [page.name for page in DOCS if page.resolve() not in linked] == []
    assert (REPO / "benchmarks" / "README.md").resolve() in linked


def test_the_slugs_are_githubs():
    assert slug("Resume and kill -9") == "resume-and-kill--9"
    assert slug("BatchNorm over processes: --sync-bn") == "batchnorm-over-processes---sync-bn"
    assert slug("IMP: iterative magnitude pruning with rewinding") == "imp-iterative-magnitude-pruning-with-rewinding"
    assert slug("The papers' networks") == "the-papers-networks"
    assert slug("`lottery_pool`") == "lottery_pool"
