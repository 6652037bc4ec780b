"""The gpu profile, proven on a CPU: every lesson at the gpu profile's shapes, a few steps each.

    python -m tools.gpu_dry_run              # all 13 lessons
    python -m tools.gpu_dry_run 02 07        # some
    make gpu-dry-run

Each lesson runs with ``PROFILE="gpu"`` (image 128 px, width 256, depth 6, batch 256, the
gpu-only code paths) and two test-only settings: ``MEDMM_MAX_STEPS`` caps every ``fit`` at a
few steps, and ``MEDMM_PROFILE_OVERRIDES`` turns mixed precision on (CPU autocast, bfloat16)
and shrinks the cohort, so that what runs is every shape, dtype and code path of a gpu run,
not its compute. The models go to a temporary cache (and a capped model's key says so), so a
real cache never serves one. The bounds of a lesson are not checked: a few steps learn
nothing. What is measured per lesson: wall time and the peak resident memory of the kernel
(the host's, which at these shapes bounds what a GPU would hold for the same batches).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

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
                          MEDMM_DATA=tmp)
        for lesson in chosen:
            out = Path(tmp) / "notebooks" / f"{lesson.stem}.ipynb"
            print(f"[gpu dry run] {lesson.stem} ...", flush=True)
            try:
                seconds, peak = peak_rss_while(lambda: L.execute(lesson, out, profile=None,
                                                                 parameters={"PROFILE": "gpu"}))
            except Exception as err:  # report every lesson, then fail
                failed.append(lesson.stem)
                cell = getattr(err, "source", "")  # papermill names the failing cell
                what = f"{err.ename}: {err.evalue}" if hasattr(err, "ename") else str(err)[-2000:]
                print(f"[gpu dry run] {lesson.stem} FAILED in the cell\n{cell}\n{what}", flush=True)
                continue
            rows.append((lesson.stem, seconds, peak))
            print(f"[gpu dry run] {lesson.stem}: {seconds:.0f} s, peak {peak / 2**30:.2f} GiB", flush=True)
    print("\n| lesson | seconds | peak memory (GiB) |\n|---|---|---|")
    for stem, seconds, peak in rows:
        print(f"| {stem} | {seconds:.0f} | {peak / 2**30:.2f} |")
    print(f"\ngpu profile shapes, every fit capped at {args.steps} steps, overrides {args.overrides!r}")
    if failed:
        print("FAILED:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
