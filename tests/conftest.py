import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Keep the course's caches inside the checkout during tests unless the caller chose a place.
os.environ.setdefault("MEDMM_DATA", str(ROOT / "build" / "cache"))


@pytest.fixture(scope="session")
def python3_kernel():
    """Register this interpreter as the ``python3`` Jupyter kernel that papermill runs lessons in."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    spec_dir = Path(specs.get("python3", ""))
    if not spec_dir.exists() or not str(spec_dir).startswith(sys.prefix):
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"],
                       check=True, capture_output=True)
    return "python3"
