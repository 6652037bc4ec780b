"""The course's notebook machinery: find lessons, execute them, keep .py and .ipynb paired.

    python -m tools.lessons build [NN ...]   # run lessons in the cpu profile, write notebooks/NN_*.ipynb
    python -m tools.lessons course           # run every lesson (PROFILE=auto) into build/lessons/, print headlines
    python -m tools.lessons course --profile cpu   # the same in one profile (e.g. to pre-build a workshop's caches)
    python -m tools.lessons sync-urls [URL]  # rewrite Colab badges and install cells (in the .py AND the
                                             # committed .ipynb, in place, nothing re-run) from pyproject's
                                             # Repository URL (set to URL first when given) and the version

The source of truth is ``notebooks/NN_name.py`` (jupytext percent format). The
committed ``.ipynb`` carries outputs from a real run; volatile metadata is stripped
and the profile that made it, with its recorded numbers, is kept in
``metadata["medmm"]``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BUILD = ROOT / "build"
LESSON_PATTERN = re.compile(r"^(\d\d)_([a-z0-9_]+)\.py$")
# Cell metadata that changes from run to run and only adds noise to diffs.
VOLATILE_CELL_KEYS = ("execution", "papermill", "collapsed", "scrolled", "ExecuteTime")
VOLATILE_NB_KEYS = ("papermill", "widgets", "language_info")


def lessons() -> list[Path]:
    """Every lesson source, in course order."""
    return sorted(p for p in NOTEBOOKS.glob("*.py") if LESSON_PATTERN.match(p.name))


def find_lesson(key: str) -> Path:
    matches = [p for p in lessons() if p.stem == key or p.stem.startswith(f"{key}_") or p.name == key]
    if len(matches) != 1:
        known = ", ".join(p.stem for p in lessons())
        raise SystemExit(f"no single lesson matches {key!r}; lessons: {known}")
    return matches[0]


def repository_url() -> str:
    """The one setting a fork changes: ``[project.urls] Repository`` in pyproject.toml."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data["project"]["urls"]["Repository"].rstrip("/")


def colab_url(lesson: Path) -> str:
    slug = repository_url().removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{slug}/blob/main/notebooks/{lesson.stem}.ipynb"


def colab_badge(lesson: Path) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(lesson)})"


def package_version() -> str:
    """``medmm_lite.__version__``, read from the source (no torch import)."""
    text = (ROOT / "medmm_lite" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if not match:
        raise SystemExit("medmm_lite/__init__.py sets no __version__")
    return match.group(1)


def release_tag() -> str:
    """The git tag of the release the committed notebooks were made with."""
    return f"v{package_version()}"


def install_spec() -> str:
    """What the setup cell installs: the tagged release, so a learner gets the library of the outputs."""
    return f"medmm-lite @ git+{repository_url()}@{release_tag()}"


def read_source(lesson: Path):
    import jupytext

    nb = jupytext.read(lesson)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    return nb


def strip_volatile(nb) -> None:
    for key in VOLATILE_NB_KEYS:
        nb.metadata.pop(key, None)
    nb.metadata.get("jupytext", {}).pop("text_representation", None)
    for index, cell in enumerate(nb.cells):
        for key in VOLATILE_CELL_KEYS:
            cell.metadata.pop(key, None)
        cell["id"] = f"cell-{index:03d}"  # stable ids: diffs show content changes only
        if cell.cell_type == "code":
            for out in cell.get("outputs", []):
                out.get("metadata", {}).pop("papermill", None)
                # tqdm widgets need a live kernel; their saved model ids only churn diffs
                out.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)
    nb.nbformat_minor = max(nb.nbformat_minor, 5)


def execute(lesson: Path, output: Path, *, profile: str | None, parameters: dict | None = None,
            results: Path | None = None, timeout: int = 1800, log_output: bool = False):
    """Execute a lesson source with papermill; return the executed notebook.

    ``profile`` goes in through ``MEDMM_PROFILE`` so the notebook's own ``PROFILE = "auto"``
    picks it up and no injected-parameters cell lands in committed notebooks; tests pass
    ``parameters`` instead, which papermill injects.
    """
    import nbformat
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    source_nb = output.with_suffix(".source.ipynb")
    nbformat.write(read_source(lesson), source_nb)
    env_before = {k: os.environ.get(k) for k in ("MEDMM_PROFILE", "MEDMM_RESULTS", "MEDMM_PROGRESS",
                                                "MEDMM_WIDGETS")}
    os.environ["MEDMM_PROGRESS"] = "text"  # a saved progress widget would read "0%"; print a summary line
    os.environ["MEDMM_WIDGETS"] = "static"  # no one can click a saved widget: views draw static figures
    if results is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        results.unlink(missing_ok=True)
        os.environ["MEDMM_RESULTS"] = str(results)
    if profile is not None:
        os.environ["MEDMM_PROFILE"] = profile
    try:
        papermill.execute_notebook(
            str(source_nb), str(output), parameters=parameters or {}, kernel_name="python3",
            cwd=str(NOTEBOOKS), execution_timeout=timeout, progress_bar=False,
            log_output=log_output, stderr_file=None,
        )
    finally:
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        source_nb.unlink(missing_ok=True)
    return nbformat.read(output, as_version=4)


def read_results(path: Path) -> dict[str, float]:
    return json.loads(path.read_text()) if path.exists() else {}


def build(keys: list[str], profile: str = "cpu") -> None:
    """Run lessons in ``profile`` and commit-ready notebooks next to their sources."""
    import nbformat
    import torch

    targets = [find_lesson(k) for k in keys] if keys else lessons()
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("[build] note: the committed notebooks are one-thread runs (OMP_NUM_THREADS=1, as `make "
              "notebooks` sets); with another thread count the numbers differ (docs/performance.md)", flush=True)
    for lesson in targets:
        started = time.time()
        out = BUILD / "notebooks" / f"{lesson.stem}.ipynb"
        results_file = BUILD / "notebooks" / f"{lesson.stem}.results.json"
        print(f"[build] {lesson.name} (profile {profile}) ...", flush=True)
        nb = execute(lesson, out, profile=profile, results=results_file)
        strip_volatile(nb)
        nb.metadata["medmm"] = {
            "profile": profile,
            "results": read_results(results_file),
            "seconds": round(time.time() - started),
            "threads": torch.get_num_threads() if "OMP_NUM_THREADS" not in os.environ
            else int(os.environ["OMP_NUM_THREADS"]),
            "torch": torch.__version__.split("+")[0],
        }
        nbformat.write(nb, lesson.with_suffix(".ipynb"))
        print(f"[build] wrote {lesson.with_suffix('.ipynb').name} in {time.time() - started:.0f} s", flush=True)


def sync_prose(keys: list[str]) -> int:
    """Copy edited markdown from the sources into the committed notebooks, without re-running.

    Only when every code cell is unchanged (same cells, same order, same code): then the committed
    outputs are still the outputs of that code, and a prose fix need not cost a full cpu run.
    """
    import nbformat

    failed = 0
    for lesson in [find_lesson(k) for k in keys] if keys else lessons():
        path = lesson.with_suffix(".ipynb")
        source, nb = read_source(lesson), nbformat.read(path, as_version=4)
        shape = [(c.cell_type, c.source.strip() if c.cell_type == "code" else "") for c in source.cells]
        if shape != [(c.cell_type, c.source.strip() if c.cell_type == "code" else "") for c in nb.cells]:
            print(f"{lesson.name}: code cells changed; rebuild it: python -m tools.lessons build {lesson.stem[:2]}")
            failed += 1
            continue
        changed = 0
        for src, cell in zip(source.cells, nb.cells):
            if cell.cell_type == "markdown" and cell.source != src.source:
                cell.source, changed = src.source, changed + 1
        if changed:
            nbformat.write(nb, path)
        print(f"{lesson.name}: {changed} markdown cells updated")
    return 1 if failed else 0


def course(profile: str = "auto") -> int:
    """``make course [PROFILE=...]``: every lesson into build/lessons/, then one table.

    ``profile="auto"`` leaves the choice to each notebook (``$MEDMM_PROFILE``, else gpu with
    CUDA, else cpu); a named profile is passed in through ``MEDMM_PROFILE``. Trained models and
    cohorts land in the cache (``$MEDMM_DATA``), so running this once before a workshop and
    copying that directory spares every laptop the training.
    """
    out_dir = BUILD / "lessons"
    rows, failed = [], []
    for lesson in lessons():
        started = time.time()
        results_file = out_dir / f"{lesson.stem}.results.json"
        print(f"[course] running {lesson.stem} (profile {profile}) ...", flush=True)
        try:
            execute(lesson, out_dir / f"{lesson.stem}.ipynb", profile=None if profile == "auto" else profile,
                    results=results_file)
        except Exception as err:  # keep going: one broken lesson should not hide the others
            failed.append(lesson.stem)
            print(f"[course] {lesson.stem} FAILED: {str(err).splitlines()[0] if str(err) else err!r}", flush=True)
        seconds = time.time() - started
        for name, value in read_results(results_file).items():
            rows.append((lesson.stem, name, value, seconds))
    print()
    print(f"{'lesson':34s} {'headline':34s} {'value':>10s}")
    print("-" * 80)
    for stem, name, value, _ in rows:
        print(f"{stem:34s} {name:34s} {value:10.4g}")
    print(f"\nexecuted notebooks are in {out_dir.relative_to(ROOT)}/")
    if failed:
        print(f"failed lessons: {', '.join(failed)} (open build/lessons/<name>.ipynb to see where)")
        return 1
    return 0


HEADER_BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
INSTALL_SPEC = re.compile(r"medmm-lite @ git\+[^\"'\s]+")
URL_LINE = re.compile(r'^(Repository\s*=\s*")[^"]*(")', re.M)


def set_repository_url(url: str) -> bool:
    """Write ``url`` into ``[project.urls] Repository`` (that one line of pyproject.toml)."""
    url = url.rstrip("/")
    if not re.fullmatch(r"https://github\.com/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", url):
        raise SystemExit(f"{url!r}: expected https://github.com/OWNER/REPO")
    path = ROOT / "pyproject.toml"
    text = path.read_text()
    new, count = URL_LINE.subn(lambda m: f"{m.group(1)}{url}{m.group(2)}", text)
    if count != 1:
        raise SystemExit("pyproject.toml: no single 'Repository = \"...\"' line under [project.urls]")
    if new != text:
        path.write_text(new)
        print(f"updated pyproject.toml: Repository = {url}")
    return new != text


def synced_source(text: str, lesson: Path) -> str:
    """A lesson's text (source file or one cell) with its badge and install spec from the settings."""
    text = HEADER_BADGE.sub(lambda _: colab_badge(lesson), text)
    return INSTALL_SPEC.sub(lambda _: install_spec(), text)


def sync_urls(url: str | None = None) -> None:
    """Rewrite every lesson's badge and install cell from pyproject's Repository URL and the version.

    The committed ``.ipynb`` get the same edit to their cells' source, in place: the setup cell's
    output does not depend on the address (it installs nothing where ``medmm_lite`` imports), so
    its recorded output stays true and nothing is re-executed. With ``url``, pyproject's
    Repository URL is set to it first.
    """
    import nbformat

    if url:
        set_repository_url(url)
    for lesson in lessons():
        text = lesson.read_text()
        new = synced_source(text, lesson)
        if new != text:
            lesson.write_text(new)
            print(f"updated {lesson.name}")
        path = lesson.with_suffix(".ipynb")
        if path.exists():
            nb = nbformat.read(path, as_version=4)
            changed = 0
            for cell in nb.cells:
                fixed = synced_source(cell.source, lesson)
                if fixed != cell.source:
                    cell.source, changed = fixed, changed + 1
            if changed:
                nbformat.write(nb, path)
                print(f"updated {path.name} ({changed} cells' source; outputs kept)")
    readme = ROOT / "README.md"
    text = readme.read_text()
    slug = repository_url().removeprefix("https://github.com/")
    new = re.sub(r"https://colab\.research\.google\.com/github/[^/]+/[^/]+/",
                 f"https://colab.research.google.com/github/{slug}/", text)
    new = INSTALL_SPEC.sub(lambda _: install_spec(), new)
    if new != text:
        readme.write_text(new)
        print("updated README.md")
    citation = ROOT / "CITATION.cff"
    if citation.exists():
        text = citation.read_text()
        new = re.sub(r'^(repository-code: )"[^"]*"', lambda m: f'{m.group(1)}"{repository_url()}"', text, flags=re.M)
        if new != text:
            citation.write_text(new)
            print("updated CITATION.cff")
    from tools import exercises  # the exercise notebooks carry the badge and setup cell too: regenerate

    exercises.build()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.lessons", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="execute lessons and write the committed .ipynb files")
    p_build.add_argument("lessons", nargs="*", help="lesson numbers or names (default: all)")
    p_build.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "gpu"])
    p_prose = sub.add_parser("sync-prose", help="copy markdown edits into the .ipynb when no code changed")
    p_prose.add_argument("lessons", nargs="*", help="lesson numbers or names (default: all)")
    p_course = sub.add_parser("course", help="run every lesson (default PROFILE=auto) and print the headline table")
    p_course.add_argument("--profile", default="auto", choices=["auto", "smoke", "cpu", "gpu"])
    p_urls = sub.add_parser("sync-urls", help="rewrite badges and install cells (.py and .ipynb, in place) "
                                              "from pyproject.toml and medmm_lite.__version__")
    p_urls.add_argument("url", nargs="?", help="a new repository URL (https://github.com/OWNER/REPO) to set first")
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.lessons, args.profile)
        return 0
    if args.command == "sync-prose":
        return sync_prose(args.lessons)
    if args.command == "course":
        return course(args.profile)
    sync_urls(args.url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
