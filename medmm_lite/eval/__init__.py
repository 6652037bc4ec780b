"""Evaluation: the CheXpert-style report labeler and the metrics the lessons report.

- ``label_report``, ``labels_matrix``, ``clinical_f1`` (and ``extract_mentions``
  to see why): reading findings out of report text.
- ``auroc``, ``f1``, ``accuracy``: classification; ``dice``, ``psnr``, ``ssim``:
  masks and images; ``retrieval_recall_at_k``, ``precision_at_k``: retrieval;
  ``bleu``, ``rouge_l``: generated text; ``bootstrap_ci``: confidence intervals.
- ``report_metrics`` (BLEU-4, ROUGE-L, clinical F1 in one dict) and ``hallucinations``
  (findings a generated report states that its image lacks): scoring generated reports.
"""
from .labeler import clinical_f1, extract_mentions, label_report, labels_matrix
from .metrics import (accuracy, auroc, bleu, bootstrap_ci, dice, f1, precision_at_k, psnr,
                      retrieval_recall_at_k, rouge_l, ssim)
from .reports import hallucinations, report_metrics
from . import decision, fairness, planted, shift
from .decision import decision_curve, net_benefit
from .fairness import age_bands, subgroup_auroc

__all__ = ["label_report", "labels_matrix", "clinical_f1", "extract_mentions", "auroc", "f1", "accuracy",
           "dice", "psnr", "ssim", "retrieval_recall_at_k", "precision_at_k", "bleu", "rouge_l",
           "bootstrap_ci", "report_metrics", "hallucinations", "decision", "fairness", "planted", "shift",
           "decision_curve", "net_benefit", "age_bands", "subgroup_auroc"]
