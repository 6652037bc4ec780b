"""Subgroup performance with patient-level confidence intervals (the review's guideline for
dataset curators: report performance by sex, age band and site, with intervals).

Two things make a subgroup AUROC honest:

* **Resample patients, not studies.** A patient's studies are alike (the same heart, the same
  nodule), so resampling studies as if they were independent makes an interval too narrow.
  :func:`~medmm_lite.eval.metrics.patient_bootstrap_weights` draws patients with replacement
  and gives each study its patient's draw count as a weight.
* **One draw for every comparison.** All groups and all models are scored on the *same*
  resamples (same ``patient_ids``, same ``seed``), so a gap between two groups, or the change of
  a gap between two models, has its own interval: take the difference resample by resample.

:func:`~medmm_lite.eval.metrics.weighted_auroc` computes the AUROC of every column for every
resample at once (a weighted Mann-Whitney statistic with ties counted half), so a thousand
resamples of a few thousand studies take a fraction of a second instead of a thousand
``roc_auc_score`` calls. The resampler, the AUROC and :func:`interval` live in
:mod:`medmm_lite.eval.metrics` (one of each for the library and the lessons); they are
importable from here too.
"""
from __future__ import annotations

import numpy as np
import torch

from .metrics import interval, macro_auroc, patient_bootstrap_weights, weighted_auroc

AGE_EDGES = (40.0, 65.0)
AGE_BANDS = ("<40", "40-64", "65+")


def _numpy(x, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def age_bands(age, edges=AGE_EDGES, names=AGE_BANDS) -> np.ndarray:
    """Age in years -> band names; a band includes its lower edge: with the defaults ``<40``,
    ``40-64`` (40 <= age < 65) and ``65+``."""
    age = _numpy(age, "age").astype(np.float64)
    if len(names) != len(edges) + 1:
        raise ValueError(f"{len(edges)} edges make {len(edges) + 1} bands, got {len(names)} names")
    if list(edges) != sorted(edges):
        raise ValueError(f"edges must be increasing, got {edges}")
    index = np.searchsorted(np.asarray(edges, np.float64), age, side="right")
    return np.asarray(names, dtype=object)[index]


def subgroup_auroc(labels, scores, groups, patient_ids, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                   min_positives: int = 2, order=None) -> dict:
    """Macro AUROC per subgroup with patient-bootstrap intervals.

    Args:
        labels, scores: (N, K) for the evaluated studies.
        groups: (N,) group of each study (e.g. ``cohort.sex[test]``, ``age_bands(...)``, site names).
        patient_ids: (N,) for the patient bootstrap.
        min_positives: a finding counts in a group's macro AUROC when the group has at least this many positives.
        order: the groups to report, in this order (default: sorted).

    In a resample where a counted finding has no positive (or no negative) study, the mean
    is over the findings still defined there.

    Returns ``{group: {"auroc", "low", "high", "n", "n_patients", "boot"}}`` plus ``"all"`` (every
    study); ``boot`` holds the per-resample values (the same resamples for every group), so
    ``interval(r["F"]["boot"] - r["M"]["boot"])`` is the interval of the gap.
    """
    y = _numpy(labels, "labels")
    s = _numpy(scores, "scores")
    g = _numpy(groups, "groups")
    pid = _numpy(patient_ids, "patient_ids")
    if not (len(y) == len(s) == len(g) == len(pid)):
        raise ValueError(f"labels, scores, groups and patient_ids must have the same length, got "
                         f"{len(y)}, {len(s)}, {len(g)}, {len(pid)}")
    weights = patient_bootstrap_weights(pid, n_boot, seed)
    names = list(order) if order is not None else sorted(set(g.tolist()))
    result = {}
    for name in ["all", *names]:
        mask = np.ones(len(g), bool) if name == "all" else g == name
        if mask.sum() < 2:
            raise ValueError(f"group {name!r} has {int(mask.sum())} studies: too few for an AUROC")
        point = macro_auroc(y[mask], s[mask], min_positives=min_positives)
        boot = macro_auroc(y[mask], s[mask], weights[:, mask], min_positives)
        low, high = interval(boot, alpha)
        result[name] = {"auroc": point, "low": low, "high": high, "n": int(mask.sum()),
                        "n_patients": int(len(np.unique(pid[mask]))), "boot": boot}
    return result


def subgroup_table(result: dict, title: str = "") -> str:
    """A text table of :func:`subgroup_auroc`'s result."""
    lines = [title] if title else []
    lines.append(f"{'group':<22}{'studies':>8}{'patients':>9}   AUROC [95% CI]")
    for name, r in result.items():
        lines.append(f"{str(name):<22}{r['n']:>8}{r['n_patients']:>9}   {r['auroc']:.3f} [{r['low']:.3f}, {r['high']:.3f}]")
    return "\n".join(lines)


def keep_fraction_of_group(indices, groups, group, fraction: float, patient_ids, seed: int = 0) -> np.ndarray:
    """The training ``indices`` with only ``fraction`` of the *patients* of ``group`` kept
    (all their studies), every other study kept: a cohort skewed against one subgroup."""
    idx = np.asarray(indices, np.int64)
    g = _numpy(groups, "groups")[idx]
    pid = _numpy(patient_ids, "patient_ids")[idx]
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    patients = np.unique(pid[g == group])
    if not len(patients):
        raise ValueError(f"no training study belongs to group {group!r}")
    rng = np.random.default_rng(seed)
    kept = rng.choice(patients, size=int(round(fraction * len(patients))), replace=False)
    keep = (g != group) | np.isin(pid, kept)
    return idx[keep]


__all__ = ["AGE_EDGES", "AGE_BANDS", "age_bands", "patient_bootstrap_weights", "weighted_auroc", "macro_auroc",
           "interval", "subgroup_auroc", "subgroup_table", "keep_fraction_of_group"]
