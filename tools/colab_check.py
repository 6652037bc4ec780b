"""A Colab-shaped install, tested: ``make colab-check``.

    python -m tools.colab_check                 # lessons 00 and 07 (a live view) in the smoke profile
    python -m tools.colab_check --lessons 00 06 # other lessons
    python -m tools.colab_check --keep DIR      # build in DIR and keep it (default: a temporary folder)

1. A fresh venv with Colab's preinstalled versions of what the install could touch
   (``tools/colab-constraints.txt``: ipywidgets 7.7.1, Colab's numpy, matplotlib, transformers,
   kernel stack; torch as served here).
2. The second code cell of lesson 00 (the setup cell) runs in that venv's Python, exactly as in
   Colab, with its install line pointed at a copy of this checkout instead of the release tag.
3. Every package that was there before must still be there at the same version (new ones may
   appear): pip must not upgrade Colab's ipywidgets, numpy, torch, ...
4. The lessons run in that venv's kernel (ipykernel 6.17.1, ipywidgets 7.7.1) in the smoke
   profile, with live widgets and progress bars as in Colab (``MEDMM_WIDGETS`` unset), from an
   empty cache, and their headline numbers must pass their ``[smoke]`` thresholds.
5. ``tests/test_widgets.py`` runs in that venv, against ipywidgets 7.7.1.

Slow (a torch install and two lessons: 5-15 minutes), so it is not part of ``make test``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from tools import lessons as L

ROOT = L.ROOT
CONSTRAINTS = ROOT / "tools" / "colab-constraints.txt"
DEFAULT_LESSONS = ("00", "07")
KERNEL = "medmm-colab-check"
# What a copy of the checkout needs to build the package (the sdist's inputs).
PACKAGE_FILES = ("pyproject.toml", "README.md", "LICENSE", "medmm_lite")


def pins(path: Path = CONSTRAINTS) -> dict[str, str]:
    """``{normalised name: version}`` of the constraints file's ``name==version`` lines."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)", line)
        if not match:
            raise ValueError(f"{path.name}: not a name==version pin: {line!r}")
        found[normalise(match.group(1))] = match.group(2)
    return found


def taken_on(path: Path = CONSTRAINTS) -> str:
    match = re.search(r"^# Taken (\d{4}-\d\d-\d\d)", path.read_text(), re.M)
    if not match:
        raise ValueError(f"{path.name} must say when its pins were taken ('# Taken YYYY-MM-DD ...')")
    return match.group(1)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def changed_packages(before: dict[str, str], after: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """Packages present before whose version differs after (``None``: removed)."""
    return {name: (version, after.get(name)) for name, version in before.items() if after.get(name) != version}


def setup_cell(lesson: Path) -> str:
    """The lesson's setup cell: its second code cell (tests/test_notebooks.py checks its shape)."""
    cells = [c for c in L.read_source(lesson).cells if c.cell_type == "code"]
    source = cells[1].source
    if L.install_spec() not in source or "except ImportError" not in source:
        raise ValueError(f"{lesson.name}: the second code cell is not the setup cell that installs {L.install_spec()}")
    return source


def local_setup_cell(lesson: Path, package_dir: Path) -> str:
    """The setup cell with its install line pointed at a local copy instead of the release tag."""
    return setup_cell(lesson).replace(L.install_spec(), f"medmm-lite @ {package_dir.as_uri()}")


def copy_package(dest: Path) -> Path:
    """What the package is built from, copied out of the checkout (pip builds in the source tree)."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in PACKAGE_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def installed(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                         check=True, capture_output=True, text=True).stdout
    return {normalise(p["name"]): p["version"] for p in json.loads(out)}


def smoke_thresholds(lesson: Path) -> dict:
    return tomllib.loads(lesson.with_suffix(".checks.toml").read_text()).get("smoke", {})


def failed_thresholds(results: dict[str, float], table: dict) -> list[str]:
    problems = []
    for name, bound in table.items():
        value = results.get(name)
        if value is None:
            problems.append(f"{name}: not recorded")
        elif "min" in bound and value < bound["min"]:
            problems.append(f"{name} = {value:.4g} < min {bound['min']}")
        elif "max" in bound and value > bound["max"]:
            problems.append(f"{name} = {value:.4g} > max {bound['max']}")
    return problems


def run_lesson(lesson: Path, work: Path, jupyter_path: Path) -> dict:
    """Execute a lesson in the Colab-shaped kernel (live widgets), from an empty cache."""
    import nbformat
    import papermill

    out_dir = work / "lessons"
    out_dir.mkdir(parents=True, exist_ok=True)
    source_nb, output = out_dir / f"{lesson.stem}.source.ipynb", out_dir / f"{lesson.stem}.ipynb"
    results = out_dir / f"{lesson.stem}.results.json"
    nbformat.write(L.read_source(lesson), source_nb)
    content = work / "content"                         # Colab's working directory: not the checkout
    content.mkdir(exist_ok=True)
    env_keys = ("JUPYTER_PATH", "MEDMM_DATA", "MEDMM_RESULTS", "MEDMM_WIDGETS", "MEDMM_PROGRESS", "MEDMM_PROFILE",
                "PYTHONPATH")
    saved = {k: os.environ.get(k) for k in env_keys}
    os.environ.update({"JUPYTER_PATH": str(jupyter_path), "MEDMM_DATA": str(work / "cache"),
                       "MEDMM_RESULTS": str(results)})
    for key in ("MEDMM_WIDGETS", "MEDMM_PROGRESS", "MEDMM_PROFILE", "PYTHONPATH"):
        os.environ.pop(key, None)                      # as in Colab: live views, progress widgets
    started = time.time()
    try:
        papermill.execute_notebook(str(source_nb), str(output), parameters={"PROFILE": "smoke"},
                                   kernel_name=KERNEL, cwd=str(content), progress_bar=False,
                                   execution_timeout=1800)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    seconds = time.time() - started
    nb = nbformat.read(output, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    widgets = sum("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    recorded = L.read_results(results)
    return {"lesson": lesson.stem, "seconds": round(seconds, 1), "widget_views": widgets,
            "results": recorded, "problems": failed_thresholds(recorded, smoke_thresholds(lesson))}


def uses_a_view(lesson: Path) -> bool:
    return "from medmm_lite.widgets import" in lesson.read_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.colab_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lessons", nargs="+", default=list(DEFAULT_LESSONS))
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it")
    parser.add_argument("--python", default=shutil.which("python3.11") or "python3",
                        help="the interpreter the venv is made from")
    args = parser.parse_args(argv)
    lessons = [L.find_lesson(k) for k in args.lessons]
    timings = {}
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="medmm-colab-") as tmp:
        work = args.keep.resolve() if args.keep else Path(tmp)
        if args.keep:  # the temporary folder exists already; a kept one starts empty
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
        venv = work / "venv"
        python = venv / "bin" / "python"
        print(f"[colab-check] pins taken {taken_on()} from Colab's package list; venv in {venv}", flush=True)

        started = time.time()
        run([args.python, "-m", "venv", venv])
        wanted = pins()
        run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", CONSTRAINTS])
        before = installed(python)
        wrong = {n: (v, before.get(n)) for n, v in wanted.items() if before.get(n) != v}
        if wrong:
            print(f"[colab-check] FAILED: the preinstall did not give Colab's versions: {wrong}")
            return 1
        timings["preinstall"] = time.time() - started

        # The setup cell, as Colab runs it: `import medmm_lite` fails, so it pip-installs the package.
        started = time.time()
        package = copy_package(work / "checkout")
        cell = local_setup_cell(lessons[0] if lessons[0].stem.startswith("00") else L.find_lesson("00"), package)
        (work / "setup_cell.py").write_text(cell + "\nprint('medmm_lite', medmm_lite.__version__, 'from', "
                                            "medmm_lite.__file__)\n")
        (work / "content").mkdir(exist_ok=True)
        run([python, work / "setup_cell.py"], cwd=work / "content")
        after = installed(python)
        timings["setup cell"] = time.time() - started
        changed = changed_packages(before, after)
        added = sorted(set(after) - set(before))
        print(f"[colab-check] the setup cell added {len(added)} packages: {', '.join(added)}")
        if changed:
            print("[colab-check] FAILED: the install changed preinstalled packages: "
                  + ", ".join(f"{n} {a} -> {b or 'removed'}" for n, (a, b) in sorted(changed.items())))
            return 1
        print(f"[colab-check] no preinstalled package changed ({len(before)} checked, "
              f"ipywidgets still {after.get('ipywidgets')}, numpy {after.get('numpy')}, torch {after.get('torch')})")

        # The lessons, in that venv's kernel.
        run([python, "-m", "ipykernel", "install", "--prefix", work / "jupyter", "--name", KERNEL,
             "--display-name", "Colab-shaped"], capture_output=True)
        reports, failed = [], False
        for lesson in lessons:
            print(f"[colab-check] running {lesson.stem} (smoke, live widgets) ...", flush=True)
            try:
                report = run_lesson(lesson, work, work / "jupyter" / "share" / "jupyter")
            except Exception as err:
                print(f"[colab-check] {lesson.stem} FAILED: {str(err)[-3000:]}")
                failed = True
                continue
            reports.append(report)
            if report["problems"]:
                failed = True
            if uses_a_view(lesson) and not report["widget_views"]:
                report["problems"].append("a lesson with a view displayed no live widget")
                failed = True
            print(f"[colab-check] {lesson.stem}: {report['seconds']} s, {report['widget_views']} live widget "
                  f"outputs, smoke thresholds: {'; '.join(report['problems']) or 'pass'}", flush=True)
        timings["lessons"] = sum(r["seconds"] for r in reports)

        # The views' tests against ipywidgets 7.7.1 (pytest installed only now, after the comparison).
        started = time.time()
        run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "pytest"])
        widget_test = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                      str(ROOT / "tests" / "test_widgets.py")], cwd=ROOT)
        timings["widget tests"] = time.time() - started
        if widget_test.returncode != 0:
            print("[colab-check] FAILED: tests/test_widgets.py against ipywidgets "
                  f"{installed(python).get('ipywidgets')}")
            failed = True
        print("[colab-check] " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
              + f"; total {time.time() - t0:.0f} s")
        print(f"[colab-check] {'FAILED' if failed else 'passed'}")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
