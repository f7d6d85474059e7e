"""The docs stay honest: every reference to a docs page and heading resolves,
and nothing points to notes outside the project."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# `docs/<page>.md` or `docs/<page>.md#<anchor>` in code, README and report text
DOC_REF = re.compile(r"docs/([\w\-/]+\.md)(?:#([\w\-]+))?")
# [text](page.md#anchor), [text](#anchor) inside the docs
MD_LINK = re.compile(r"\]\(([^)\s#]*)(?:#([^)\s]+))?\)")


def slug(heading: str) -> str:
    """The anchor a Markdown renderer (GitHub's rules) gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: pathlib.Path) -> set:
    found, seen, fenced = set(), {}, False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            base = slug(line.lstrip("#"))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def sources():
    """The package's Python files, the README, the benchmarks and the tests."""
    files = [ROOT / "README.md", *sorted((ROOT / "spectral_edge_fast").rglob("*.py"))]
    files += sorted((ROOT / "benchmarks").rglob("*.py")) + sorted((ROOT / "tests").rglob("*.py"))
    return [f for f in files if f.resolve() != pathlib.Path(__file__).resolve()]


def test_docs_pages_exist_and_the_index_lists_them():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    pages = sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md")
    assert {"engine.md", "math.md", "numerics.md"} <= set(pages)
    for name in pages:
        assert f"]({name})" in index, f"docs/README.md does not list {name}"


def test_every_docs_reference_in_code_readme_and_report_resolves():
    refs = 0
    for path in sources():
        for page, anchor in DOC_REF.findall(path.read_text(encoding="utf-8")):
            refs += 1
            target = DOCS / page
            where = f"{path.relative_to(ROOT)}: docs/{page}#{anchor}"
            assert target.is_file(), f"{where}: no such page"
            if anchor:
                assert anchor in anchors(target), f"{where}: no such heading in docs/{page}"
    assert refs >= 10  # the analysis modules, the window and the report point to the docs


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_links_between_docs_pages_resolve(page):
    for target, anchor in MD_LINK.findall((DOCS / page).read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://")):
            continue
        path = DOCS / (target or page)
        assert path.is_file(), f"docs/{page} links to missing {target}"
        if anchor:
            assert anchor in anchors(path), f"docs/{page} links to missing heading {target}#{anchor}"


@pytest.mark.parametrize("name", ["MATH.md", "DESIGN.md", "shared notes", "seeds/"])
def test_nothing_refers_to_notes_outside_the_project(name):
    for path in sources() + sorted(DOCS.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        assert name not in text, f"{path.relative_to(ROOT)} refers to {name}; point to docs/ instead"


def test_the_slug_follows_the_renderers_rules():
    assert slug(" Gap position `k*`") == "gap-position-k"
    assert slug("Davis-Kahan coefficient alpha") == "davis-kahan-coefficient-alpha"
    assert slug("Three phases, lead-lag, collapse order") == "three-phases-lead-lag-collapse-order"
