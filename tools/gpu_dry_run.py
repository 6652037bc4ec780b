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
import os
import sys
import tempfile
import threading
import time

import psutil

from tools import lessons as L

STEPS = 3
OVERRIDES = "n_studies=3000,amp=true"


def peak_rss_while(run) -> tuple[float, int]:
    """Run ``run()``; return its seconds and the peak RSS (bytes) of this process's children."""
    peak, done = [0], threading.Event()

    def watch():
        me = psutil.Process()
        while not done.is_set():
            try:
                peak[0] = max([peak[0]] + [c.memory_info().rss for c in me.children(recursive=True)])
            except psutil.Error:
                pass
            done.wait(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    try:
        run()
    finally:
        done.set()
        watcher.join()
    return time.perf_counter() - start, peak[0]


def run_all_cells(nb) -> None:
    """Execute every cell of ``nb`` in place in the gpu profile, errors kept as outputs."""
    from nbclient import NotebookClient

    NotebookClient(nb, kernel_name="python3", allow_errors=True, timeout=1800,
                   resources={"metadata": {"path": str(L.NOTEBOOKS)}}).execute()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lessons", nargs="*", help="lesson numbers (default: all)")
    parser.add_argument("--steps", type=int, default=STEPS, help="the cap on every fit (default %(default)s)")
    parser.add_argument("--overrides", default=OVERRIDES, help="profile overrides (default %(default)r)")
    args = parser.parse_args(argv)
    chosen = [L.find_lesson(k) for k in args.lessons] if args.lessons else L.lessons()
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="medmm-gpu-dry-run-") as tmp:
        os.environ.update(MEDMM_MAX_STEPS=str(args.steps), MEDMM_PROFILE_OVERRIDES=args.overrides,
                          MEDMM_DATA=tmp, MEDMM_PROFILE="gpu", MEDMM_PROGRESS="text", MEDMM_WIDGETS="static")
        for lesson in chosen:
            print(f"[gpu dry run] {lesson.stem} ...", flush=True)
            nb = L.read_source(lesson)
            seconds, peak = peak_rss_while(lambda: run_all_cells(nb))
            errors = [(i, o["ename"], o["evalue"]) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
                      for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            learning = [e for e in errors if e[1] == "AssertionError"]
            broken = [e for e in errors if e[1] != "AssertionError"]
            rows.append((lesson.stem, seconds, peak, len(learning), broken))
            print(f"[gpu dry run] {lesson.stem}: {seconds:.0f} s, peak {peak / 2**30:.2f} GiB, "
                  f"{len(learning)} learning check(s) not passed, {len(broken)} error(s)", flush=True)
            if broken:
                failed.append(lesson.stem)
            for i, name, value in broken:
                print(f"    cell {i}: {name}: {value[:300]}\n{nb.cells[i].source[:600]}", flush=True)
    print("\n| lesson | seconds | peak memory (GiB) | learning checks not passed | errors |\n|---|---|---|---|---|")
    for stem, seconds, peak, n_learning, broken in rows:
        print(f"| {stem} | {seconds:.0f} | {peak / 2**30:.2f} | {n_learning} | "
              f"{'; '.join(f'{n}: {v[:80]}' for _, n, v in broken) or 'none'} |")
    print(f"\ngpu profile shapes, every fit capped at {args.steps} steps, overrides {args.overrides!r}")
    if failed:
        print("FAILED:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
