"""Decision curves: is acting on the model's output better than the simple policies?

AUROC says whether a model ranks patients well; a clinician needs to know whether *acting* on
it helps. Decision curve analysis (Vickers & Elkin 2006, Med Decis Making 26:565) fixes an
action ("flag the film for an urgent read") and a threshold probability ``t``: the risk at which
a clinician is indifferent between acting and not. Choosing ``t`` states how many false alarms
one true case is worth: at ``t`` the odds ``t / (1 - t)`` are the harm of a false positive
relative to the benefit of a true positive. Acting on everyone with ``p >= t`` gives

    net benefit(t) = TP / n - FP / n * t / (1 - t)

in units of true positives per patient. Two reference policies: **treat none** (net benefit 0)
and **treat all** (``prevalence - (1 - prevalence) * t / (1 - t)``). A model is worth using at
``t`` only where it beats both.
"""
from __future__ import annotations

import numpy as np
import torch


def _vector(x, what: str) -> np.ndarray:
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    x = x.astype(np.float64)
    if x.ndim != 1:
        raise ValueError(f"{what} must be 1-D (one value per patient), got shape {x.shape}")
    return x


def _thresholds(thresholds) -> np.ndarray:
    t = np.atleast_1d(np.asarray(thresholds, np.float64))
    if t.ndim != 1 or not ((t > 0) & (t < 1)).all():
        raise ValueError(f"thresholds must lie strictly between 0 and 1, got {thresholds!r}")
    return t


def net_benefit(y_true, y_prob, thresholds) -> np.ndarray:
    """Net benefit of acting when ``y_prob >= t``, for each threshold ``t``:
    ``TP/n - FP/n * t/(1-t)``. ``y_true`` 0/1, ``y_prob`` probabilities (same length)."""
    y, p, t = _vector(y_true, "y_true"), _vector(y_prob, "y_prob"), _thresholds(thresholds)
    if len(y) != len(p) or not len(y):
        raise ValueError(f"y_true ({len(y)}) and y_prob ({len(p)}) must have the same, non-zero length")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y_true must hold 0 and 1")
    act = p[None, :] >= t[:, None]                      # (T, n)
    tp = (act & (y[None, :] == 1)).sum(1)
    fp = (act & (y[None, :] == 0)).sum(1)
    n = len(y)
    return tp / n - fp / n * t / (1 - t)


def treat_all(y_true, thresholds) -> np.ndarray:
    """Net benefit of acting on everyone: ``prevalence - (1 - prevalence) * t / (1 - t)``."""
    y, t = _vector(y_true, "y_true"), _thresholds(thresholds)
    prevalence = y.mean()
    return prevalence - (1 - prevalence) * t / (1 - t)


def treat_none(thresholds) -> np.ndarray:
    """Net benefit of acting on no one: 0 at every threshold."""
    return np.zeros(len(_thresholds(thresholds)))


def decision_curve(y_true, y_prob, thresholds=None) -> dict:
    """``{"thresholds", "model", "treat_all", "treat_none", "beats_both"}`` (arrays over thresholds;
    default thresholds 0.01, 0.02, ..., 0.99). ``beats_both``: the model's net benefit is above
    both reference policies' there."""
    t = np.round(np.arange(1, 100) / 100, 2) if thresholds is None else _thresholds(thresholds)
    model = net_benefit(y_true, y_prob, t)
    everyone = treat_all(y_true, t)
    return {"thresholds": t, "model": model, "treat_all": everyone, "treat_none": treat_none(t),
            "beats_both": (model > everyone) & (model > 0)}


def useful_range(curve: dict) -> tuple[float, float] | None:
    """The widest run of consecutive thresholds where the model beats both policies, as
    ``(first, last)``; None if there is none."""
    beats = np.asarray(curve["beats_both"], bool)
    t = np.asarray(curve["thresholds"])
    best, start = None, None
    for i, b in enumerate(np.r_[beats, False]):
        if b and start is None:
            start = i
        elif not b and start is not None:
            if best is None or i - start > best[1] - best[0] + 1:
                best = (start, i - 1)
            start = None
    return None if best is None else (float(t[best[0]]), float(t[best[1]]))


__all__ = ["net_benefit", "treat_all", "treat_none", "decision_curve", "useful_range"]
