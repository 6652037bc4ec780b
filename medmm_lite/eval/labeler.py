"""The course's report labeler, as evaluation uses it: reading findings out of generated reports.

The labeler itself, a rule-based reader of English chest X-ray reports in the manner of the
CheXpert labeler (mention extraction, negation and uncertainty, aggregation; its rules and their
reasons are in its module docstring), lives in :mod:`medmm_lite.data.labeler`: loading a real
dataset uses it too (IU X-ray's labels are its reading of the reports), and the data layer
imports nothing from evaluation. Its public names are here as well, so
``from medmm_lite.eval.labeler import extract_mentions`` still works. This module adds what
evaluation does with the labels: :func:`clinical_f1`, the F1 of the findings generated reports imply.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ..data.findings import FINDINGS, PATHOLOGIES
from ..data.labeler import (ENLARGEMENT, HEDGED_MENTIONS, MAX_SENTENCE_CHARS, MENTIONS, NEGATION, NEUTRAL_MENTIONS,
                            NO_FINDING, OTHER_OBSERVATIONS, POST_NEGATION_UNCERTAINTY, PRE_NEGATION_UNCERTAINTY,
                            STABILITY, SUPPORT_DEVICES, UNMENTIONS, Mention, aggregate, check_reports,
                            extract_mentions, label_report, labels_matrix, split_sentences)


def clinical_f1(references: Iterable[str], hypotheses: Iterable[str],
                include_no_finding: bool = True) -> dict:
    """Clinical efficacy of generated reports: F1 of the labels they imply.

    Both lists are labelled with :func:`label_report`; positive and uncertain
    count as present (U-Ones). Each finding is then a binary prediction of the
    reference's label. Following CheXbert's "F1-14" (all 14 CheXpert labels,
    No Finding included), we use our 9 pathologies plus No Finding; pass
    ``include_no_finding=False`` for the 9 pathologies only.

    Returns ``micro_f1``, ``precision`` and ``recall`` (pooled over findings and
    reports), ``macro_f1`` (mean of per-finding F1) and ``per_finding``. A finding
    absent from both references and hypotheses has no F1 (NaN) and is left out
    of the macro mean, as ``sklearn.metrics.f1_score(..., zero_division=np.nan)`` does.
    """
    references = check_reports(references, "references")
    hypotheses = check_reports(hypotheses, "hypotheses")
    if len(references) != len(hypotheses):
        raise ValueError(f"references and hypotheses must pair up one to one, got "
                         f"{len(references)} references and {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("clinical_f1 needs at least one reference/hypothesis pair, got none")
    names = list(FINDINGS if include_no_finding else PATHOLOGIES)
    truth = labels_matrix(references)[:, :len(names)].astype(bool)
    pred = labels_matrix(hypotheses)[:, :len(names)].astype(bool)
    tp = (truth & pred).sum(0)
    fp = (~truth & pred).sum(0)
    fn = (truth & ~pred).sum(0)

    def ratio(a, b):
        return float(a) / float(b) if b else float("nan")

    per_finding = {name: ratio(2 * tp[j], 2 * tp[j] + fp[j] + fn[j]) for j, name in enumerate(names)}
    defined = [v for v in per_finding.values() if not np.isnan(v)]
    return {
        "micro_f1": ratio(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum()),
        "macro_f1": float(np.mean(defined)) if defined else float("nan"),
        "precision": ratio(tp.sum(), tp.sum() + fp.sum()),
        "recall": ratio(tp.sum(), tp.sum() + fn.sum()),
        "per_finding": per_finding,
    }


__all__ = ["clinical_f1", "NO_FINDING", "SUPPORT_DEVICES", "MENTIONS", "HEDGED_MENTIONS", "NEUTRAL_MENTIONS",
           "OTHER_OBSERVATIONS", "UNMENTIONS", "PRE_NEGATION_UNCERTAINTY", "NEGATION", "POST_NEGATION_UNCERTAINTY",
           "ENLARGEMENT", "STABILITY", "MAX_SENTENCE_CHARS", "Mention", "split_sentences", "extract_mentions",
           "aggregate", "label_report", "check_reports", "labels_matrix"]
