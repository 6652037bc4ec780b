"""The conditions a benchmark ran under, printed beside every table and kept in its JSON.

A number from a machine that was busy with something else is not a measurement of the
course's code; the load average says whether it was.
"""
from __future__ import annotations

import os
import platform


def describe() -> dict:
    """Cores, load average, threads, versions: a dict for the JSON."""
    import torch

    info = {
        "cores": os.cpu_count(),
        "load_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_model(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def line(info: dict | None = None) -> str:
    """One line for the top of a table."""
    info = info or describe()
    text = (f"machine: {info['cores']} cores ({info['cpu']}), load {info['load_1_5_15'][0]:.2f} "
            f"(1 min) {info['load_1_5_15'][1]:.2f} (5 min), torch {info['torch']}, "
            f"{info['torch_threads']} torch threads (OMP_NUM_THREADS={info['omp_num_threads']})")
    if "cuda_device" in info:
        text += f", GPU {info['cuda_device']}"
    return text


def busy_warning(info: dict | None = None) -> str | None:
    """A warning when the 1-minute load is above the core count: the numbers are not clean."""
    info = info or describe()
    if info["load_1_5_15"][0] > info["cores"] * 0.75:
        return (f"WARNING: load {info['load_1_5_15'][0]:.2f} on {info['cores']} cores: the machine was busy "
                "with other work; these times are not clean measurements")
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for row in f:
                if row.startswith("model name"):
                    return row.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
