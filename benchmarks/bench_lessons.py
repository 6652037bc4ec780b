"""How long does each lesson take, where does the time go, and does it keep its budget?

    OMP_NUM_THREADS=2 python benchmarks/bench_lessons.py                # every lesson, smoke, cold cache
    python benchmarks/bench_lessons.py 00 01 --json out.json           # some lessons
    python benchmarks/bench_lessons.py --warm                          # with the existing cache ($MEDMM_DATA)
    python benchmarks/bench_lessons.py --profile gpu                   # on a CUDA machine

Each lesson (every notebooks/NN_*.py with a committed .ipynb, or those named) is executed
with ``tools.lessons.execute`` in a fresh subprocess, so its peak memory can be read:
the kernel is that subprocess's child, and ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is its
peak RSS. By default the cache is cold, as CI sees it: ``MEDMM_DATA`` points at a new empty
directory for every lesson, so each one generates its cohort and trains every model it
needs (the worst case: in a real course a later lesson loads what an earlier one trained).

Where the time goes:
* training: the ``fit`` summary lines in the executed notebook (``MAE: 600 steps in 64.1 s,
  loss ...``); a ``[hub] trained ...`` line with no ``fit`` line before it (a model trained
  some other way) is counted from the hub line instead, never both;
* data: the cohort and report preparation print nothing to parse, so ``prepare_data``
  (``load_dataset`` for a lesson that does not call it) is timed on its own in another
  subprocess, in an empty cache of its own (with ``--warm``: after the lesson, in the same
  cache, i.e. loading it). It is an estimate, marked ``~`` in the table;
* rest: wall time minus the two (evaluation, probes, figures, kernel start).

The budgets (docs/performance.md): smoke under 90 s per lesson (CI, 2 cores), cpu and gpu
under 600 s. The committed .ipynb's ``metadata.medmm.seconds`` (its cpu-profile build) is
shown beside, checked against the cpu budget.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

BUDGETS = {"smoke": 90, "cpu": 600, "gpu": 600}
FIT_LINE = re.compile(r"^(?P<desc>.*?): (?P<steps>\d+) steps in (?P<seconds>[\d.]+) s, loss ")
HUB_TRAINED = re.compile(r"^\[hub\] trained (?P<name>\S+) in (?P<seconds>[\d.]+) s")
HUB_LOADED = re.compile(r"^\[hub\] loaded (?P<name>\S+) from ")


# --------------------------------------------------------------------------- the subprocess sides
def worker_lesson(lesson: str, profile: str, output: str) -> None:
    """Execute one lesson here (the kernel is this process's child); write timings and peak RSS."""
    from tools.lessons import execute, find_lesson

    path = find_lesson(lesson)
    out = Path(output)
    results = out.with_suffix(".results.json")
    report = {"lesson": path.stem, "error": None}
    started = time.perf_counter()
    try:
        execute(path, out, profile=profile, results=results)
    except Exception as err:  # keep the timings; the parent reports the failure
        report["error"] = (str(err).strip().splitlines() or [repr(err)])[0][:300]
    report["wall_s"] = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    # ru_maxrss is in KiB on Linux: the largest child that has been waited for (the kernel)
    report["kernel_peak_rss_mib"] = children.ru_maxrss / 1024
    # CPU seconds the kernel used (all its threads): on a shared machine, steadier than wall time
    report["kernel_cpu_s"] = children.ru_utime + children.ru_stime
    report["runner_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["results"] = json.loads(results.read_text()) if results.exists() else {}
    out.with_suffix(".timing.json").write_text(json.dumps(report))


def worker_data(profile: str, lesson: str, output: str) -> None:
    """Time what a lesson spends preparing its data, as the lesson calls it."""
    import medmm_lite
    from medmm_lite import data as D
    from tools.lessons import find_lesson

    P = medmm_lite.profile(profile)
    source = find_lesson(lesson).read_text()
    started = time.perf_counter()
    if "prepare_data(" in source:
        what = "prepare_data"
        D.prepare_data(P, seed=0)
    else:
        what = "load_dataset"
        D.load_dataset("synthcxr", n_studies=P.n_studies, image_size=P.image_size, seed=0)
    Path(output).write_text(json.dumps({"what": what, "seconds": time.perf_counter() - started}))


# --------------------------------------------------------------------------- reading a notebook
def training_seconds(nb) -> dict:
    """Training time from an executed notebook's printed summaries (see the module docstring)."""
    fit_s, hub_only_s, fits, trained, loaded = 0.0, 0.0, 0, 0, 0
    fit_since_hub = False
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") != "stream":
                continue
            for row in out.get("text", "").splitlines():
                row = row.strip()
                if m := FIT_LINE.match(row):
                    fit_s += float(m["seconds"])
                    fits += 1
                    fit_since_hub = True
                elif m := HUB_TRAINED.match(row):
                    trained += 1
                    if not fit_since_hub:        # trained without a fit summary: take the hub's time
                        hub_only_s += float(m["seconds"])
                    fit_since_hub = False
                elif HUB_LOADED.match(row):
                    loaded += 1
    return {"training_s": fit_s + hub_only_s, "fit_lines": fits, "models_trained": trained, "models_loaded": loaded}


def slowest_cells(nb, n: int = 3) -> list[dict]:
    """The ``n`` code cells that took longest (papermill's per-cell duration) and where they are."""
    cells, heading = [], ""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            heading = next((row.lstrip("# ").strip() for row in cell.source.splitlines() if row.startswith("#")),
                           heading)
            continue
        duration = (cell.get("metadata", {}).get("papermill") or {}).get("duration")
        if duration is None:
            continue
        first = next((row.strip() for row in cell.source.splitlines() if row.strip()), "")
        cells.append({"cell": index, "seconds": round(float(duration), 1), "section": heading[:60],
                      "first_line": first[:60]})
    return sorted(cells, key=lambda c: -c["seconds"])[:n]


def committed_run(stem: str) -> dict:
    """The committed notebook's own record: profile and seconds of the build that made it."""
    import nbformat

    path = ROOT / "notebooks" / f"{stem}.ipynb"
    meta = nbformat.read(path, as_version=4).metadata.get("medmm", {}) if path.exists() else {}
    seconds = meta.get("seconds")
    return {"profile": meta.get("profile"), "seconds": seconds,
            "verdict": None if seconds is None else ("PASS" if seconds < BUDGETS["cpu"] else "OVER")}


# --------------------------------------------------------------------------- the parent
def lessons_to_run(keys: list[str]) -> list[Path]:
    from tools.lessons import find_lesson, lessons

    if keys:
        return [find_lesson(k) for k in keys]
    return [p for p in lessons() if p.with_suffix(".ipynb").exists()]


def ensure_kernel() -> None:
    """papermill runs lessons in the ``python3`` kernel: make it this interpreter (as the tests do)."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec_dir = Path(KernelSpecManager().find_kernel_specs().get("python3", ""))
    if not spec_dir.exists() or not str(spec_dir).startswith(sys.prefix):
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"],
                       check=True, capture_output=True)


def run_lesson(lesson: Path, profile: str, cold: bool, out_dir: Path, timeout: int) -> dict:
    import nbformat

    out = out_dir / f"{lesson.stem}.{profile}.ipynb"
    timing = out.with_suffix(".timing.json")
    timing.unlink(missing_ok=True)
    me = [sys.executable, str(Path(__file__).resolve())]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="medmm-bench-") as tmp:
        env = dict(os.environ)
        if cold:
            env["MEDMM_DATA"] = str(Path(tmp) / "lesson-cache")
        started = time.perf_counter()
        try:
            code = subprocess.run(me + ["--worker-lesson", lesson.stem, profile, str(out)], env=env,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        process_s = time.perf_counter() - started
        load_after = os.getloadavg()[0]
        row = json.loads(timing.read_text()) if timing.exists() else {"lesson": lesson.stem, "wall_s": process_s}
        if code != 0 and not row.get("error"):
            row["error"] = f"runner exited with {code}"
        # the data estimate: its own empty cache when cold (the lesson's cache stays untouched),
        # the lesson's cache after the lesson when warm
        data_env = dict(env)
        if cold:
            data_env["MEDMM_DATA"] = str(Path(tmp) / "data-estimate")
        estimate = out.with_suffix(".data.json")
        subprocess.run(me + ["--worker-data", profile, lesson.stem, str(estimate)], env=data_env, timeout=timeout)
        data = json.loads(estimate.read_text()) if estimate.exists() else {"what": "?", "seconds": float("nan")}
        estimate.unlink(missing_ok=True)
    row["process_s"] = process_s
    row["load_1min_before"], row["load_1min_after"] = round(load_before, 2), round(load_after, 2)
    row["data_s"], row["data_what"] = data["seconds"], data["what"]
    row.update(training_seconds(nbformat.read(out, as_version=4)) if out.exists() else
               {"training_s": 0.0, "fit_lines": 0, "models_trained": 0, "models_loaded": 0})
    row["slowest_cells"] = slowest_cells(nbformat.read(out, as_version=4)) if out.exists() else []
    row["rest_s"] = max(0.0, row["wall_s"] - row["data_s"] - row["training_s"])
    row["budget_s"] = BUDGETS[profile]
    row["verdict"] = "FAILED" if row.get("error") else ("PASS" if row["wall_s"] < BUDGETS[profile] else "OVER")
    row["committed_cpu_run"] = committed_run(lesson.stem)
    return row


def share(seconds: float, wall: float, estimate: bool = False) -> str:
    mark = "~" if estimate else " "
    return f"{mark}{seconds:6.1f} {100 * seconds / wall:3.0f}%" if wall > 0 else f"{mark}{seconds:6.1f}     "


def print_table(rows: list[dict], profile: str) -> None:
    budget = BUDGETS[profile]
    print(f"\n{'lesson':<28} {'wall s':>7} {'data s':>12} {'training s':>12} {'rest s':>12} {'peak RSS':>9} "
          f"{'CPU s':>6} {'load':>9} {f'{profile} <{budget}s':>11}   {'cpu (committed run)':>19}")
    print("-" * 138)
    for r in rows:
        committed = r["committed_cpu_run"]
        cpu = (f"{committed['seconds']:6.0f} s {committed['verdict']:>4}" if committed["seconds"] is not None
               else "-")
        print(f"{r['lesson']:<28} {r['wall_s']:7.1f} {share(r['data_s'], r['wall_s'], True):>12} "
              f"{share(r['training_s'], r['wall_s']):>12} {share(r['rest_s'], r['wall_s']):>12} "
              f"{r.get('kernel_peak_rss_mib', float('nan')):5.0f} MiB {r.get('kernel_cpu_s', float('nan')):6.0f} "
              f"{r['load_1min_before']:4.1f}>{r['load_1min_after']:<4.1f} {r['verdict']:>11}   {cpu:>19}")
    print(f"~ data: {', '.join(sorted({r['data_what'] for r in rows}))} timed in a separate process (an estimate). "
          f"training: fit summaries. peak RSS and CPU s: the kernel's (CPU s: all its threads). load: 1-minute "
          f"load average before > after the lesson. cpu (committed run): metadata.medmm.seconds of the "
          f"committed .ipynb, budget {BUDGETS['cpu']} s.")
    print("slowest cells (papermill's duration; section = the last heading above the cell):")
    for r in rows:
        cells = "; ".join(f"{c['seconds']:.0f} s in '{c['section']}' ({c['first_line']})"
                          for c in r.get("slowest_cells", []))
        print(f"  {r['lesson']}: {cells or '-'}")
    for r in rows:
        if r.get("error"):
            print(f"{r['lesson']} FAILED: {r['error']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lessons", nargs="*", help="lesson numbers or names (default: every lesson with a committed .ipynb)")
    parser.add_argument("--profile", default="smoke", choices=sorted(BUDGETS))
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--cold", dest="cold", action="store_true", default=True,
                       help="an empty MEDMM_DATA per lesson: nothing cached, as CI sees it (the default)")
    cache.add_argument("--warm", dest="cold", action="store_false",
                       help="use the existing cache ($MEDMM_DATA or ~/.cache/medmm)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per lesson")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--worker-lesson", nargs=3, metavar=("LESSON", "PROFILE", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-data", nargs=3, metavar=("PROFILE", "LESSON", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker_lesson:
        worker_lesson(*args.worker_lesson)
        return 0
    if args.worker_data:
        worker_data(*args.worker_data)
        return 0

    import machine

    if args.profile == "gpu":
        import torch

        if not torch.cuda.is_available():
            parser.error("--profile gpu needs CUDA, and torch sees no CUDA device here")
    targets = lessons_to_run(args.lessons)
    ensure_kernel()
    before = machine.describe()
    print(f"bench_lessons: profile {args.profile}, cache {'cold (an empty MEDMM_DATA per lesson)' if args.cold else 'warm'}"
          + (f", device {before['cuda_device']}" if args.profile == "gpu" else ""))
    print(machine.line(before))
    if warning := machine.busy_warning(before):
        print(warning)
    out_dir = ROOT / "build" / "benchmarks" / "lessons"
    rows = []
    for lesson in targets:
        print(f"[bench] {lesson.stem} ...", flush=True)
        row = run_lesson(lesson, args.profile, args.cold, out_dir, args.timeout)
        print(f"[bench] {lesson.stem}: {row['wall_s']:.1f} s, {row['verdict']}", flush=True)
        rows.append(row)
    after = machine.describe()
    print_table(rows, args.profile)
    print(f"load average after: {after['load_1_5_15'][0]:.2f} (1 min), {after['load_1_5_15'][1]:.2f} (5 min)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"profile": args.profile, "cache": "cold" if args.cold else "warm", "budgets_s": BUDGETS,
                       "machine_before": before, "machine_after": after,
                       "device": before.get("cuda_device", "cpu") if args.profile == "gpu" else "cpu",
                       "lessons": rows}, f, indent=2)
    return 1 if any(r["verdict"] == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
