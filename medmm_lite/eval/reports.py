"""Scoring generated reports: lexical overlap, clinical correctness, hallucinated findings.

* :func:`report_metrics`: BLEU-4, ROUGE-L and clinical F1 (micro and macro) of generated
  reports against the true ones, in one dict, so every lesson that writes reports (05, 07, 08)
  fills the same table.
* :func:`hallucinations`: per finding, how many generated reports call it present although the
  image's labels say it is absent.

Lexical metrics count shared words; they cannot tell "no pleural effusion" from "pleural
effusion" (one word apart) or "left" from "right". Clinical F1 reads the findings out of both
reports with the labeler (:func:`~medmm_lite.eval.label_report`) and compares those. Lesson 05
measures where the two disagree.
"""
from __future__ import annotations

import numpy as np

from ..data.findings import PATHOLOGIES
from .labeler import check_reports, clinical_f1, labels_matrix
from .metrics import bleu, rouge_l


def report_metrics(references, hypotheses) -> dict:
    """``{"bleu4", "rouge_l", "clinical_f1_micro", "clinical_f1_macro"}`` of ``hypotheses`` against
    ``references`` (two lists of report strings that pair up one to one).

    BLEU-4 is corpus BLEU (:func:`~medmm_lite.eval.bleu`), ROUGE-L the mean per-pair F
    (:func:`~medmm_lite.eval.rouge_l`); clinical F1 is :func:`~medmm_lite.eval.clinical_f1` over the
    nine pathologies and No Finding (positive and uncertain count as present). All in [0, 1].
    """
    references = check_reports(references, "references")
    hypotheses = check_reports(hypotheses, "hypotheses")
    clinical = clinical_f1(references, hypotheses)
    return {"bleu4": bleu(references, hypotheses, max_n=4), "rouge_l": rouge_l(references, hypotheses),
            "clinical_f1_micro": clinical["micro_f1"], "clinical_f1_macro": clinical["macro_f1"]}


def hallucinations(generated_reports, labels, uncertain_as: int = 1) -> dict:
    """Findings a generated report states that its image does not have.

    Args:
        generated_reports: N report strings, one per image.
        labels: (N, K) 0/1 labels of the images (a tensor or array), columns in ``FINDINGS`` order;
            the first nine (the pathologies) are used, so ``cohort.labels[idx]`` works as it is.
        uncertain_as: a finding the report hedges ("possible edema") counts as stated when 1 (the
            default, as for clinical F1), not when 0.

    Returns:
        a dict with
        ``per_finding``: ``{finding: count}``, reports that state the finding where the image lacks it;
        ``absent``: ``{finding: count}``, images that lack it (the chances to hallucinate it);
        ``matrix``: (N, 9) bool, report i hallucinates finding j;
        ``per_report``: (N,) int, hallucinated findings per report;
        ``total`` and ``per_report_mean``: their sum and mean.

    "No Finding" is not counted: writing "no acute process" for a sick patient is a *missed*
    finding, which clinical F1's recall measures.
    """
    reports = check_reports(generated_reports, "generated_reports")
    y = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels, dtype=np.float64)
    k = len(PATHOLOGIES)
    if y.ndim != 2 or y.shape[0] != len(reports) or y.shape[1] < k:
        raise ValueError(f"labels must be (N={len(reports)}, >= {k}) with one row per generated report and the "
                         f"pathology columns first (FINDINGS order), got shape {y.shape}")
    y = y[:, :k]
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (absent) or 1 (present)")
    stated = labels_matrix(reports, uncertain_as=uncertain_as)[:, :k].astype(bool)
    matrix = stated & (y == 0)
    per_report = matrix.sum(1).astype(np.int64)
    return {"per_finding": {name: int(matrix[:, j].sum()) for j, name in enumerate(PATHOLOGIES)},
            "absent": {name: int((y[:, j] == 0).sum()) for j, name in enumerate(PATHOLOGIES)},
            "matrix": matrix, "per_report": per_report, "total": int(per_report.sum()),
            "per_report_mean": float(per_report.mean()) if len(reports) else float("nan")}


__all__ = ["report_metrics", "hallucinations"]
