"""``make book``: the committed lessons as a static site, built without executing anything.

Checked: every lesson with a committed notebook has a page, the index links to it, every
relative link resolves to a page of the book (and its #fragment to an element on that page),
every image is there (figures embedded, none pointing at a missing file).
"""
from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import nbformat
import pytest

from tools import book as B


class Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.links, self.images = set(), [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key):
                self.ids.add(attrs[key])
        if tag == "a" and attrs.get("href") is not None:
            self.links.append(attrs["href"])
        if tag == "img":
            self.images.append(attrs.get("src") or "")


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    B.build(out)
    return out


def test_every_committed_lesson_has_a_page_linked_from_the_index(book):
    lessons = B.book_lessons()
    assert lessons, "no lesson has a committed notebook"
    index = parse(book / "index.html")
    for lesson in lessons:
        assert (book / B.page_name(lesson)).exists()
        assert B.page_name(lesson) in index.links, f"index.html does not link {lesson.stem}"


def test_no_broken_internal_links(book):
    pages = {p.name: parse(p) for p in book.glob("*.html")}
    broken = []
    for name, page in pages.items():
        for href in page.links:
            if href.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, fragment = href.partition("#")
            target = pages.get(path or name) if not path or path.endswith(".html") else None
            if path and not (book / path).exists():
                broken.append(f"{name}: {href} (no such file)")
            # as a browser does (HTML's "indicated part"): the fragment as written, then percent-decoded
            elif fragment and target is not None and not {fragment, unquote(fragment)} & target.ids:
                broken.append(f"{name}: {href} (no element with that id)")
            if path.endswith((".ipynb", ".py", ".md")):
                broken.append(f"{name}: {href} (a source file, not a page of the book)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_no_missing_images(book):
    missing = []
    for lesson in B.book_lessons():
        page = parse(book / B.page_name(lesson))
        nb = nbformat.read(lesson.with_suffix(".ipynb"), as_version=4)
        figures = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                      if any(m.startswith("image/") for m in o.get("data", {})))
        embedded = sum(1 for src in page.images if src.startswith("data:image/"))
        if embedded < figures:
            missing.append(f"{lesson.stem}: {figures} figures in the notebook, {embedded} embedded in the page")
        for src in page.images:
            if not src:
                missing.append(f"{lesson.stem}: an <img> without src")
            elif not src.startswith(("data:", "http://", "https://")) and not (book / src).exists():
                missing.append(f"{lesson.stem}: {src}")
    assert not missing, "missing images:\n" + "\n".join(missing)


def test_links_to_other_repository_files_point_at_the_repository(tmp_path):
    lesson_pages = {"01_building_blocks": "01_building_blocks.html"}
    page = ('<a href="01_building_blocks.ipynb#Summary">x</a> <a href="../README.md">y</a> '
            '<a href="#here">z</a> <img src="missing.png"> <a href="../exercises/01_building_blocks.ipynb">e</a>')
    out = B.rewrite_links(page, B.ROOT / "notebooks", lesson_pages)
    assert 'href="01_building_blocks.html#Summary"' in out
    assert f'href="{B.L.repository_url()}/blob/main/README.md"' in out
    assert 'href="#here"' in out and 'src="missing.png"' in out
    assert f'href="{B.L.repository_url()}/blob/main/exercises/01_building_blocks.ipynb"' in out, \
        "an exercise notebook is not the lesson's page"
