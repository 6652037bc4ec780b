"""Run every benchmark script in this folder and collect their JSON into build/benchmarks.json.

    python benchmarks/run_all.py            # everything (bench_lessons runs every lesson: slow)
    python benchmarks/run_all.py --quick    # everything but bench_lessons

Each script runs with its defaults (bench_lessons: smoke profile, cold cache; the others:
the cpu-profile sizes). The budgets each one checks are listed at the end, OVER first.
See docs/performance.md.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "build" / "benchmarks"
SLOW = {"bench_lessons"}


def verdicts(name: str, result: dict) -> list[tuple[str, str]]:
    """(verdict, what) for every budget a script's JSON records."""
    found = []
    for pair in result.get("pairs", []):
        found.append((pair["verdict"], f"{name}: {pair['name']} ratio {pair['ratio']}"))
    for key, budget in result.get("budgets", {}).items():
        numbers = ", ".join(f"{k} {v}" for k, v in budget.items() if k != "verdict")
        found.append((budget["verdict"], f"{name}: {key}: {numbers}"))
    for row in result.get("lessons", []):
        found.append((row["verdict"], f"{name}: {row['lesson']} {result['profile']} {row['wall_s']:.1f} s "
                                      f"(budget {row['budget_s']} s)"))
        committed = row.get("committed_cpu_run", {})
        if committed.get("verdict"):
            found.append((committed["verdict"], f"{name}: {row['lesson']} cpu (committed run) "
                                                f"{committed['seconds']} s (budget 600 s)"))
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="skip bench_lessons (it executes every lesson)")
    args = parser.parse_args(argv)

    OUT.mkdir(parents=True, exist_ok=True)
    combined, failed, skipped = {}, [], []
    for script in sorted(HERE.glob("bench_*.py")):
        if args.quick and script.stem in SLOW:
            skipped.append(script.name)
            continue
        target = OUT / f"{script.stem}.json"
        target.unlink(missing_ok=True)
        print(f"== {script.name}", flush=True)
        code = subprocess.call([sys.executable, str(script), "--json", str(target)])
        if code == 0 and target.exists():
            combined[script.stem] = json.loads(target.read_text())
        else:
            failed.append(script.name)
    (OUT.parent / "benchmarks.json").write_text(json.dumps(combined, indent=2))
    found = sorted((v for name, result in combined.items() for v in verdicts(name, result)),
                   key=lambda v: v[0] == "PASS")
    if found:
        print("\nbudgets:")
        for verdict, what in found:
            print(f"  {verdict:<6} {what}")
    print(f"\nwrote {OUT.parent / 'benchmarks.json'}" + (f"; skipped (--quick): {skipped}" if skipped else "")
          + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
