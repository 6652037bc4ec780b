"""A lesson's headline numbers: recorded in the notebook, checked by its smoke test.

``record(name, value)`` keeps the number and, when ``MEDMM_RESULTS`` names a JSON
file (the test runner and ``make course`` set it), merges it into that file. It prints
nothing: a lesson prints its numbers where it explains them, and ends with
``show_recorded()``, one table of everything it recorded.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from .utils import atomic_write_bytes

_RECORDED: dict[str, float] = {}
log = logging.getLogger(__name__)


def _as_number(name: str, value) -> float:
    try:
        number = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"record({name!r}, ...) needs a number, got {type(value).__name__}") from err
    if math.isnan(number):
        raise ValueError(f"record({name!r}, nan): a headline number is NaN, training has diverged or an input is empty")
    return number


def record(name: str, value) -> None:
    """Record one headline number of this lesson (saved when ``MEDMM_RESULTS`` is set)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"record name must be an identifier like 'zero_shot_auroc', got {name!r}")
    number = _as_number(name, value)
    _RECORDED[name] = number
    log.debug("record %s = %.4g", name, number)
    target = os.environ.get("MEDMM_RESULTS")
    if target:
        path = Path(target)
        existing = json.loads(path.read_text()) if path.exists() else {}
        existing[name] = number
        atomic_write_bytes(path, json.dumps(existing, indent=2, sort_keys=True).encode())


def recorded() -> dict[str, float]:
    """Everything recorded in this process so far."""
    return dict(_RECORDED)


def show_recorded(names=None) -> None:
    """Print the recorded numbers (all, or ``names`` in that order) as one aligned table."""
    rows = list(_RECORDED.items()) if names is None else [(n, _RECORDED[n]) for n in names]
    if not rows:
        print("nothing recorded yet")
        return
    width = max(len(n) for n, _ in rows)
    for name, number in rows:
        print(f"{name:<{width}}  {number:8.4g}")
