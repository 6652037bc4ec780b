"""The gpu profile, proven on a CPU: every lesson at the gpu profile's shapes, a few steps each.

    python -m tools.gpu_dry_run              # all 13 lessons
    python -m tools.gpu_dry_run 02 07        # some
    make gpu-dry-run

Each lesson runs with ``PROFILE="gpu"`` (image 128 px, width 256, depth 6, batch 256, the
gpu-only code paths) and two test-only settings: ``MEDMM_MAX_STEPS`` caps every ``fit`` at a
few steps, and ``MEDMM_PROFILE_OVERRIDES`` turns mixed precision on (CPU autocast, bfloat16)
and shrinks the cohort, so that what runs is every shape, dtype and code path of a gpu run,
not its compute. The models go to a temporary cache (and a capped model's key says so), so a
real cache never serves one. A few steps learn nothing, so a lesson's bounds are not checked and
its ``assert``s that training learned may fail: every cell runs regardless (nbclient with
``allow_errors``), an ``AssertionError`` is listed as "learning checks a dry run cannot pass",
and any other error (a shape, a dtype, out of memory) fails the lesson. What is measured per
lesson: wall time and the peak resident memory of the kernel (the host's, which at these shapes
bounds what a GPU would hold for the same batches).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from tools import lessons as L

STEPS = 3
OVERRIDES = "n_studies=3000,amp=true"


def run_all_cells(lesson) -> list[tuple[int, str, str, str]]:
    """Execute every cell of ``lesson`` in the gpu profile, errors kept as outputs; return
    ``(cell, error name, message, cell source)`` for each error."""
    from nbclient import NotebookClient

    nb = L.read_source(lesson)
    NotebookClient(nb, kernel_name="python3", allow_errors=True, timeout=1800,
                   resources={"metadata": {"path": str(L.NOTEBOOKS)}}).execute()
    return [(i, o["ename"], o["evalue"], cell.source[:600]) for i, cell in enumerate(nb.cells)
            if cell.cell_type == "code" for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def worker(lesson: str, output: str) -> None:
    """One lesson in this process, its kernel a child: as benchmarks/bench_lessons.py measures a
    lesson, the kernel's peak RSS is ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` once it has exited."""
    errors = run_all_cells(L.find_lesson(lesson))
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024   # KiB on Linux
    with open(output, "w") as f:
        json.dump({"peak_bytes": peak, "errors": errors}, f)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lessons", nargs="*", help="lesson numbers (default: all)")
    parser.add_argument("--steps", type=int, default=STEPS, help="the cap on every fit (default %(default)s)")
    parser.add_argument("--overrides", default=OVERRIDES, help="profile overrides (default %(default)r)")
    parser.add_argument("--worker", nargs=2, metavar=("LESSON", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    chosen = [L.find_lesson(k) for k in args.lessons] if args.lessons else L.lessons()
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="medmm-gpu-dry-run-") as tmp:
        os.environ.update(MEDMM_MAX_STEPS=str(args.steps), MEDMM_PROFILE_OVERRIDES=args.overrides,
                          MEDMM_DATA=tmp, MEDMM_PROFILE="gpu", MEDMM_PROGRESS="text", MEDMM_WIDGETS="static")
        for lesson in chosen:
            print(f"[gpu dry run] {lesson.stem} ...", flush=True)
            report = os.path.join(tmp, f"{lesson.stem}.json")
            # a fresh process per lesson: its children's peak RSS is this lesson's kernel alone
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "tools.gpu_dry_run", "--worker", lesson.stem, report],
                                  cwd=L.ROOT)
            seconds = time.perf_counter() - started
            if done.returncode == 0:
                with open(report) as f:
                    measured = json.load(f)
                peak, errors = measured["peak_bytes"], measured["errors"]
            else:   # the kernel or the runner died (out of memory, killed): a failed lesson, not a lost table
                peak = 0
                errors = [(-1, "RunnerFailed", f"the lesson's process exited with {done.returncode}", "")]
            learning = [e for e in errors if e[1] == "AssertionError"]
            broken = [e for e in errors if e[1] != "AssertionError"]
            rows.append((lesson.stem, seconds, peak, len(learning), broken))
            print(f"[gpu dry run] {lesson.stem}: {seconds:.0f} s, peak {peak / 2**30:.2f} GiB, "
                  f"{len(learning)} learning check(s) not passed, {len(broken)} error(s)", flush=True)
            if broken:
                failed.append(lesson.stem)
            for i, name, value, source in broken:
                print(f"    cell {i}: {name}: {value[:300]}\n{source}", flush=True)
    print("\n| lesson | seconds | peak memory (GiB) | learning checks not passed | errors |\n|---|---|---|---|---|")
    for stem, seconds, peak, n_learning, broken in rows:
        print(f"| {stem} | {seconds:.0f} | {peak / 2**30:.2f} | {n_learning} | "
              f"{'; '.join(f'{n}: {v[:80]}' for _, n, v, _ in broken) or 'none'} |")
    print(f"\ngpu profile shapes, every fit capped at {args.steps} steps, overrides {args.overrides!r}")
    if failed:
        print("FAILED:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
