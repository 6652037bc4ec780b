"""How fast is SynthCXR generated? Studies per second at 64 and 128 px (no cache).

    OMP_NUM_THREADS=1 python benchmarks/bench_cohort.py [--json out.json] [--studies 2000]

Also times the same renderer called one study at a time (a plain per-image loop), to
show what drawing a whole chunk of studies per NumPy expression buys; the loop is timed
on fewer studies, it is slow.

Budgets (docs/performance.md), each printed PASS or OVER:
* 2,000 studies at 64 px generated in under 5 s (scaled when ``--studies`` differs: 400 studies/s);
* the whole-chunk renderer at least as fast per study as the one-study-at-a-time loop
  (ratio batched / loop <= 1.0).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from medmm_lite.data import generate_cohort, generate_mri_phantoms
from medmm_lite.data.cohort import render_state, sample_state

sys.path.insert(0, str(Path(__file__).resolve().parent))

COHORT_BUDGET_S = 5.0          # for 2,000 studies at 64 px
COHORT_BUDGET_STUDIES = 2000


def _one_study(state: dict, i: int) -> dict:
    """The state of study i alone (every per-study array sliced to length 1)."""
    def cut(x):
        if isinstance(x, dict):
            return {k: cut(v) for k, v in x.items()}
        if isinstance(x, np.ndarray) and x.ndim >= 1 and len(x) == n:
            return x[i:i + 1]
        return x

    n = len(state["present"])
    return {k: (cut(v) if k != "seed" else v) for k, v in state.items()}


def _best_of(fn, repeats: int) -> float:
    """Best wall-clock seconds of `repeats` runs."""
    return min(_timed(fn)[0] for _ in range(repeats))


def _timed(fn):
    """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is the
    steadier measure of what one core needs."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--loop-studies", type=int, default=100, help="studies for the per-image loop")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    import machine

    info = machine.describe()
    print(machine.line(info))
    if warning := machine.busy_warning(info):
        print(warning)
    generate_cohort(64, 64, cache=False)                       # warm up imports and caches
    results = {"threads": os.environ.get("OMP_NUM_THREADS", "unset"), "python": platform.python_version(),
               "numpy": np.__version__, "studies": args.studies, "machine": info, "sizes": {}}
    for size in (64, 128):
        runs = [_timed(lambda: generate_cohort(args.studies, size, seed=0, cache=False)) for _ in range(args.repeats)]
        seconds, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
        state = sample_state(args.loop_studies, 0)
        batched = _best_of(lambda: render_state(state, size), args.repeats)
        loop = _best_of(lambda: [render_state(_one_study(state, i), size) for i in range(args.loop_studies)], 1)
        row = {"generate_seconds": round(seconds, 3), "generate_cpu_seconds": round(cpu, 3),
               "studies_per_second": round(args.studies / seconds, 1),
               "render_batched_studies_per_second": round(args.loop_studies / batched, 1),
               "render_per_image_loop_studies_per_second": round(args.loop_studies / loop, 1),
               "batching_speedup": round(loop / batched, 1)}
        results["sizes"][size] = row
        print(f"{size:4d} px: generate_cohort({args.studies}) {seconds:6.2f} s (CPU {cpu:5.2f} s) = "
              f"{row['studies_per_second']:7.1f} studies/s | renderer, batched {row['render_batched_studies_per_second']:8.1f} /s vs one study per "
              f"call {row['render_per_image_loop_studies_per_second']:7.1f} /s ({row['batching_speedup']}x)")
    budget = COHORT_BUDGET_S * args.studies / COHORT_BUDGET_STUDIES
    at64 = results["sizes"][64]
    ratio = 1 / at64["batching_speedup"]
    results["budgets"] = {
        "cohort_64px": {"seconds": at64["generate_seconds"], "budget_s": round(budget, 2),
                        "verdict": "PASS" if at64["generate_seconds"] < budget else "OVER"},
        "batched_vs_loop_64px": {"ratio": round(ratio, 3), "budget_ratio": 1.0,
                                 "verdict": "PASS" if ratio <= 1.0 else "OVER"},
    }
    print(f"budget: generate_cohort({args.studies}, 64 px) {at64['generate_seconds']:.2f} s < {budget:.1f} s "
          f"{results['budgets']['cohort_64px']['verdict']}; renderer batched / per-study loop time ratio "
          f"{ratio:.3f} <= 1.0 {results['budgets']['batched_vs_loop_64px']['verdict']}")
    seconds = _best_of(lambda: generate_mri_phantoms(args.studies, 64, cache=False), args.repeats)
    results["mri_64px_phantoms_per_second"] = round(args.studies / seconds, 1)
    print(f"  64 px: generate_mri_phantoms({args.studies}) {seconds:6.2f} s = "
          f"{results['mri_64px_phantoms_per_second']:8.1f} phantoms/s")
    print(machine.line() + "  (after)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
