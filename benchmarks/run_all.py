"""Run every benchmark script in this folder and collect their JSON into build/benchmarks.json.

    python benchmarks/run_all.py
"""
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "build" / "benchmarks"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    combined, failed = {}, []
    for script in sorted(HERE.glob("bench_*.py")):
        target = OUT / f"{script.stem}.json"
        print(f"== {script.name}", flush=True)
        code = subprocess.call([sys.executable, str(script), "--json", str(target)])
        if code == 0 and target.exists():
            combined[script.stem] = json.loads(target.read_text())
        else:
            failed.append(script.name)
    (OUT.parent / "benchmarks.json").write_text(json.dumps(combined, indent=2))
    print(f"\nwrote {OUT.parent / 'benchmarks.json'}" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
