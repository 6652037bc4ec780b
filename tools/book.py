"""The course as a static site: every committed lesson notebook, with its outputs, as HTML.

    python -m tools.book [--out build/book]     # or: make book

Nothing is executed: each page is ``notebooks/NN_name.ipynb`` as committed (cpu-profile
outputs, figures embedded), rendered by nbconvert, with a navigation bar (index, previous,
next, Colab). ``index.html`` lists every lesson of the README's table (planned ones
unlinked) with the committed run's time and headline numbers; ``instructors.html`` is
``docs/instructors.md``. Links between lessons point at their pages; links to other files of
the repository point at the repository's web address (``[project.urls] Repository``).
"""
from __future__ import annotations

import argparse
import html
import re
import shutil
import sys
from pathlib import Path

from tools import lessons as L

ROOT = L.ROOT
DEFAULT_OUT = L.BUILD / "book"
ATTRIBUTE = re.compile(r'\b(href|src)="([^"]*)"')
EXTERNAL = ("http://", "https://", "mailto:", "data:", "javascript:", "//", "#")
README_ROW = re.compile(r"^\|\s*(\d\d)\s*\|\s*(.*?)\s*\|\s*(.*?)\s*\|\s*(.*?)\s*\|\s*$")

PAGE_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 70rem; margin: 0 auto;
       padding: 1rem 2rem 4rem; line-height: 1.5; color: #1f2328; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #d0d7de; padding: 0.35rem 0.6rem; vertical-align: top; text-align: left; }
th { background: #f6f8fa; }
code { background: #f6f8fa; padding: 0 0.2rem; border-radius: 3px; }
pre { background: #f6f8fa; padding: 0.8rem; overflow-x: auto; }
.planned { color: #57606a; }
.headlines { font-size: 0.85rem; }
"""
NAV_CSS = """
<style>
nav.medmm-book { position: sticky; top: 0; z-index: 100; background: #f6f8fa; border-bottom: 1px solid #d0d7de;
                 padding: 0.5rem 1rem; font: 14px system-ui, sans-serif; display: flex; gap: 1.2rem; flex-wrap: wrap; }
nav.medmm-book a { color: #0969da; text-decoration: none; }
nav.medmm-book .run { color: #57606a; margin-left: auto; }
</style>
"""


# --------------------------------------------------------------------------------------------
# What the book contains
# --------------------------------------------------------------------------------------------

def readme_rows() -> list[dict]:
    """The README's lesson table: number, name, what you build, status."""
    rows = []
    for line in (ROOT / "README.md").read_text().splitlines():
        m = README_ROW.match(line)
        if m:
            number, name, what, _ = m.groups()
            name = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", name)
            rows.append({"number": number, "name": name, "what": what})
    return rows


def book_lessons() -> list[Path]:
    """Lessons with a committed notebook (outputs included): the pages of the book."""
    return [p for p in L.lessons() if p.with_suffix(".ipynb").exists()]


def page_name(lesson: Path) -> str:
    return f"{lesson.stem}.html"


def inline_markdown(text: str) -> str:
    """The README's table cells: `code`, *emphasis*, **strong**, links; everything else escaped."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"\*([^*]+)\*", r"<em>\1</em>", out)
    return out


# --------------------------------------------------------------------------------------------
# Links
# --------------------------------------------------------------------------------------------

def rewrite_links(page: str, base: Path, lesson_pages: dict[str, str]) -> str:
    """Point relative links of a page rendered from a file in ``base`` at the book or the repository.

    * ``notebooks/NN_name.ipynb`` / ``.py`` of a lesson in the book -> its page (fragment kept);
    * another existing file or folder of the repository -> its address on the repository's site;
    * anything else is left alone (the book's test reports it as broken).
    """
    repo = L.repository_url()

    def fix(match):
        attr, value = match.groups()
        if not value or value.startswith(EXTERNAL):
            return match.group(0)
        path, _, fragment = value.partition("#")
        target = (base / path).resolve()
        stem = Path(path).stem
        if target.suffix in (".ipynb", ".py") and target.parent == L.NOTEBOOKS and stem in lesson_pages:
            new = lesson_pages[stem] + (f"#{fragment}" if fragment else "")
        elif target.exists() and target.is_relative_to(ROOT):
            kind = "tree" if target.is_dir() else "blob"
            new = f"{repo}/{kind}/main/{target.relative_to(ROOT).as_posix()}" + (f"#{fragment}" if fragment else "")
        else:
            return match.group(0)
        return f'{attr}="{html.escape(new)}"'

    return ATTRIBUTE.sub(fix, page)


# --------------------------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------------------------

def run_summary(meta: dict) -> str:
    if not meta:
        return "outputs from an unrecorded run"
    seconds = meta.get("seconds")
    took = f" in {seconds / 60:.0f} min" if seconds and seconds >= 120 else (f" in {seconds} s" if seconds else "")
    return f"outputs from a {meta.get('profile', '?')}-profile run{took} (torch {meta.get('torch', '?')})"


def nav_bar(lesson: Path, previous: Path | None, following: Path | None, meta: dict) -> str:
    links = ['<a href="index.html">Course index</a>']
    if previous is not None:
        links.append(f'<a href="{page_name(previous)}">&larr; {html.escape(previous.stem)}</a>')
    if following is not None:
        links.append(f'<a href="{page_name(following)}">{html.escape(following.stem)} &rarr;</a>')
    links.append(f'<a href="{html.escape(L.colab_url(lesson))}">Open in Colab</a>')
    exercise = ROOT / "exercises" / f"{lesson.stem}.ipynb"
    if exercise.exists():
        url = L.colab_url(lesson).replace(f"/notebooks/{lesson.stem}.ipynb", f"/exercises/{lesson.stem}.ipynb")
        links.append(f'<a href="{html.escape(url)}">Exercises in Colab</a>')
    links.append(f'<span class="run">{html.escape(run_summary(meta))}</span>')
    return NAV_CSS + '<nav class="medmm-book">' + " ".join(links) + "</nav>"


def lesson_page(lesson: Path, previous: Path | None, following: Path | None, lesson_pages: dict[str, str]) -> str:
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(lesson.with_suffix(".ipynb"), as_version=4)
    exporter = HTMLExporter(template_name="lab", embed_images=True, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"path": str(lesson.parent),
                                                                      "name": lesson.stem}})
    title = nb.cells[0].source.splitlines()[0].lstrip("# ").strip() if nb.cells else lesson.stem
    body = re.sub(r"<title>.*?</title>", f"<title>{html.escape(title)}</title>", body, count=1, flags=re.S)
    nav = nav_bar(lesson, previous, following, nb.metadata.get("medmm", {}))
    body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + nav, body, count=1)
    return rewrite_links(body, lesson.parent, lesson_pages)


def headline_cell(results: dict) -> str:
    if not results:
        return ""
    parts = [f"{html.escape(k)} {int(v) if float(v).is_integer() else f'{v:.3g}'}" for k, v in results.items()]
    return '<span class="headlines">' + "; ".join(parts) + "</span>"


def index_page(pages: list[Path]) -> str:
    import nbformat

    by_number = {p.stem[:2]: p for p in pages}
    sources = {p.stem[:2]: p for p in L.lessons()}
    rows = []
    for row in readme_rows() or [{"number": p.stem[:2], "name": p.stem[3:], "what": ""} for p in L.lessons()]:
        number, name = row["number"], html.escape(row["name"])
        if number in by_number:
            lesson = by_number[number]
            meta = nbformat.read(lesson.with_suffix(".ipynb"), as_version=4).metadata.get("medmm", {})
            link = f'<a href="{page_name(lesson)}">{name}</a>'
            seconds = meta.get("seconds")
            run = f"{meta.get('profile', '?')}: {seconds / 60:.1f} min" if seconds else ""
            colab = f'<a href="{html.escape(L.colab_url(lesson))}">lesson</a>'
            if (ROOT / "exercises" / f"{lesson.stem}.ipynb").exists():
                url = L.colab_url(lesson).replace("/notebooks/", "/exercises/")
                colab += f' &middot; <a href="{html.escape(url)}">exercises</a>'
            cells = [number, link, inline_markdown(row["what"]), run, headline_cell(meta.get("results", {})), colab]
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        else:
            status = "in progress" if number in sources else "planned"
            cells = [number, name, inline_markdown(row["what"]), status, "", ""]
            rows.append('<tr class="planned">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    guide = '<p>Teaching a workshop? Read the <a href="instructors.html">instructor\'s guide</a>.</p>' \
        if (ROOT / "docs" / "instructors.md").exists() else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>medmm-course</title><style>{PAGE_CSS}</style></head>
<body>
<h1>medmm-course</h1>
<p>Multimodal foundation models for medical imaging, built from scratch in Jupyter, on one small helper
library (<code>medmm_lite</code>) and SynthCXR, a procedural chest X-ray cohort with reports. Each page below is a
lesson as committed, with the outputs of its last full run; nothing here was re-executed.
Source: <a href="{html.escape(L.repository_url())}">{html.escape(L.repository_url())}</a>.</p>
{guide}
<table>
<thead><tr><th>#</th><th>lesson</th><th>what you build</th><th>committed run</th><th>headline numbers</th><th>Colab</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
</body></html>
"""


def slug(text: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = html.unescape(re.sub(r"<[^>]+>", "", text)).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def add_heading_ids(body: str) -> str:
    """Give each heading GitHub's anchor, so a link written for GitHub (``#pre-building-the-caches``)
    works in the book too; nbconvert's own (Jupyter-style) id stays for its anchor links."""
    seen: dict[str, int] = {}

    def add(match):
        level, attrs, text = match.groups()
        base = slug(text)
        n = seen.get(base, 0)
        seen[base] = n + 1
        anchor = base if n == 0 else f"{base}-{n}"
        if "id=" in attrs:
            return f'<span id="{anchor}"></span>' + match.group(0)
        return f'<h{level}{attrs} id="{anchor}">{text}</h{level}>'

    return re.sub(r"<h([1-6])([^>]*)>(.*?)</h\1>", add, body, flags=re.S)


def markdown_page(path: Path, title: str, lesson_pages: dict[str, str]) -> str:
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    body = add_heading_ids(markdown2html_mistune(path.read_text()))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{PAGE_CSS}</style></head>
<body>
<p><a href="index.html">Course index</a></p>
{body}
</body></html>
"""
    return rewrite_links(page, path.parent, lesson_pages)


def build(out: Path = DEFAULT_OUT) -> list[Path]:
    """Write the book into ``out`` (emptied first); return the pages written."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    pages = book_lessons()
    lesson_pages = {p.stem: page_name(p) for p in pages}
    written = []
    for k, lesson in enumerate(pages):
        previous = pages[k - 1] if k > 0 else None
        following = pages[k + 1] if k + 1 < len(pages) else None
        target = out / page_name(lesson)
        target.write_text(lesson_page(lesson, previous, following, lesson_pages))
        written.append(target)
        print(f"[book] {target.relative_to(out)}", flush=True)
    guide = ROOT / "docs" / "instructors.md"
    if guide.exists():
        target = out / "instructors.html"
        target.write_text(markdown_page(guide, "medmm-course: the instructor's guide", lesson_pages))
        written.append(target)
    (out / "index.html").write_text(index_page(pages))
    (out / ".nojekyll").write_text("")          # GitHub Pages: serve the files as they are
    written.append(out / "index.html")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.book", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default build/book)")
    args = parser.parse_args(argv)
    written = build(args.out)
    print(f"[book] {len(written)} pages in {args.out}; open {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
