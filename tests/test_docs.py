"""The README and docs/ hold together: every relative link and image resolves, every docs page the README names
exists (and every page is linked from it), anchors point at real headings, and the README stays a short guide.
Reads Markdown only; no model is loaded."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 300  # a newcomer's guide; the reference lives in docs/

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)  # fenced code blocks
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target), ![alt](target); text may wrap
IMG_SRC = re.compile(r"<img\b[^>]*\bsrc=[\"']([^\"']+)[\"']", re.I)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto: ...


def _prose(text: str) -> str:
    """The text a reader sees as Markdown: code blocks and code spans removed (their brackets are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _targets(page: Path) -> list[str]:
    text = _prose(page.read_text(encoding="utf-8"))
    return [t for t in LINK.findall(text) + IMG_SRC.findall(text) if not SCHEME.match(t)]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = _slug(match.group(1))
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_and_images_exist(page):
    missing = []
    for target in _targets(page):
        path = target.split("#", 1)[0]
        if path and not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{_name(page)} links to files that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_anchors_point_at_headings(page):
    broken = []
    for target in _targets(page):
        if "#" not in target:
            continue
        path, anchor = target.split("#", 1)
        linked = (page.parent / path) if path else page
        if linked.suffix == ".md" and linked.exists() and anchor not in _anchors(linked):
            broken.append(target)
    assert not broken, f"{_name(page)} links to headings that do not exist: {broken}"


def test_docs_pages_named_in_the_readme_exist():
    named = set(re.findall(r"docs/[\w./-]*?\.md", README.read_text(encoding="utf-8")))
    assert named, "the README names no docs page"
    missing = sorted(name for name in named if not (ROOT / name).is_file())
    assert not missing, f"README.md names docs pages that do not exist: {missing}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.split("#", 1)[0]).resolve() for t in _targets(README)}
    unlinked = [_name(page) for page in DOCS if page.resolve() not in linked]
    assert not unlinked, f"README.md's 'Read more' should link every docs page; not linked: {unlinked}"


def test_readme_is_a_short_guide():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (f"README.md has {lines} lines (at most {README_MAX_LINES}): move reference "
                                       "material to a page in docs/ and link it from 'Read more'.")
