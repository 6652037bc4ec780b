"""Planted errors: which report metric notices which mistake?

A generated report can be wrong in ways that matter (the wrong side, a missed finding, an
invented one) and different in ways that do not (other words for the same findings). To see
what a metric measures, take real reports, change each in one known way, and score the
changed report against the original:

* :func:`flip_side`: every sentence about one lateralised finding says left for right (and back);
* :func:`drop_finding`: every sentence stating one present finding is removed (a missed finding);
* :func:`invent_finding`: a finding the report does not state is added to FINDINGS and IMPRESSION;
* :func:`paraphrase`: the control, the same findings in other words (no fact changes).

Scores per pair (:func:`pair_scores`): sentence BLEU-4 and ROUGE-L (lexical), ``finding_f1``
(the labeler's findings, as clinical F1 reads them) and ``laterality_f1`` (finding *and side*:
CheXpert's labels have no laterality, so clinical F1 cannot see a wrong side).
The edits work on the course's report grammar (:mod:`medmm_lite.data.reports`): one finding per
sentence, sides written ``left`` / ``right`` / ``bilateral``.
"""
from __future__ import annotations

import random
import re

import numpy as np

from ..data.findings import FINDINGS, PATHOLOGIES
from .labeler import extract_mentions, labels_matrix
from .metrics import bleu, rouge_l

ERROR_KINDS = ("paraphrase", "wrong side", "missed finding", "invented finding")
SUPPORT_DEVICES = "Support Devices"
# One sentence per finding that an invented-finding edit may add (the grammar's own phrasing).
INVENTED = {
    "Pneumothorax": "Small right apical pneumothorax.",
    "Pleural Effusion": "Small left pleural effusion.",
    "Consolidation": "Patchy consolidation in the left lower lobe.",
    "Lung Lesion": "Small nodule in the right upper lobe.",
    "Cardiomegaly": "Mild cardiomegaly.",
    "Edema": "Mild pulmonary edema.",
    "Fracture": "Acute right sixth rib fracture.",
    "Atelectasis": "Linear atelectasis at the left base.",
}
# Rewordings that keep every finding, its negation and its side (checked on whole cohorts in the tests).
PARAPHRASES = (
    (r"\bThere is no ", "No "),
    (r"\bThere is an? ([a-z])", lambda m: m.group(1).upper()),
    (r"\bThere is ([a-z])", lambda m: m.group(1).upper()),
    (r"\bThere are ([a-z])", lambda m: m.group(1).upper()),
    (r"\bHeart size is normal\.", "Normal heart size."),
    (r"\bNo cardiomegaly\.", "Heart size is normal."),
    (r"\bThe lungs are clear\.", "Lungs are well expanded and clear."),
    (r"\bNo acute cardiopulmonary process\.", "No acute cardiopulmonary abnormality."),
    (r"\bterminates\b", "ends"),
    (r"\bPortable AP view of the chest\.", "AP portable chest radiograph."),
    (r"\bPA and lateral views of the chest\.", "PA and lateral chest radiographs."),
    (r"\bairspace consolidation\b", "consolidation"),
    (r"\bpulmonary nodule\b", "nodule"),
    (r"\bpleural effusion\b", "effusion"),
    (r"\bpleural effusions\b", "effusions"),
)
_SIDE = re.compile(r"\b(left|right|Left|Right|LEFT|RIGHT)\b")
_SWAP = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT", "RIGHT": "LEFT"}
_NUMBER = re.compile(r"^\d+\.$")


def split_report(report: str) -> tuple[list[str], list[str]]:
    """``(findings_sentences, impression_sentences)`` of a ``FINDINGS: ... IMPRESSION: ...``
    report; a numbered item ("1. Small effusion.") stays one sentence."""
    if not isinstance(report, str):
        raise TypeError(f"report must be a str, got {type(report).__name__}")
    head, sep, tail = report.partition("IMPRESSION:")
    findings = head.replace("FINDINGS:", "", 1).strip()

    def sentences(text):
        pieces, out = re.split(r"(?<=\.)\s+", text.strip()) if text.strip() else [], []
        for piece in pieces:
            if out and _NUMBER.match(out[-1]):
                out[-1] = f"{out[-1]} {piece}"
            else:
                out.append(piece)
        return out

    return sentences(findings), sentences(tail) if sep else []


def join_report(findings: list[str], impression: list[str]) -> str:
    """The inverse of :func:`split_report` (numbered impression items are renumbered)."""
    if any(re.match(r"^\d+\.\s", s) for s in impression):
        bare = [re.sub(r"^\d+\.\s+", "", s) for s in impression]
        impression = [f"{i}. {s}" for i, s in enumerate(bare, 1)] if len(bare) > 1 else bare
    return "FINDINGS: " + " ".join(findings) + " IMPRESSION: " + " ".join(impression)


def _stated(sentence: str) -> set:
    """Pathologies a sentence states as present or possible (the labeler's mentions, label 1 or -1)."""
    return {m.finding for m in extract_mentions(sentence) if m.label != 0 and m.finding in PATHOLOGIES}


def _mentioned(sentence: str) -> set:
    return {m.finding for m in extract_mentions(sentence) if m.finding in PATHOLOGIES}


def stated_findings(report: str) -> list[str]:
    """Pathologies the report states as present or possible, in ``PATHOLOGIES`` order."""
    findings, impression = split_report(report)
    found = set().union(*(_stated(s) for s in findings + impression)) if findings or impression else set()
    return [f for f in PATHOLOGIES if f in found]


def _rng(seed) -> random.Random:
    return seed if isinstance(seed, random.Random) else random.Random(seed)


def flip_side(report: str, seed=0) -> str | None:
    """Swap left and right in every sentence about one lateralised finding (chosen at random
    among those stated; Support Devices excluded). None when no stated finding has a side."""
    findings, impression = split_report(report)
    candidates = [f for f in stated_findings(report) if f != SUPPORT_DEVICES
                  and any(f in _stated(s) and _SIDE.search(s) for s in findings + impression)]
    if not candidates:
        return None
    target = _rng(seed).choice(candidates)

    def edit(s):
        return _SIDE.sub(lambda m: _SWAP[m.group(1)], s) if target in _stated(s) else s

    return join_report([edit(s) for s in findings], [edit(s) for s in impression])


def drop_finding(report: str, seed=0) -> str | None:
    """Remove every sentence that states one present finding (a missed finding). When nothing
    is left to say, the impression becomes "No acute cardiopulmonary process.", as a reader who
    missed the only finding would write. None when the report states no pathology."""
    candidates = [f for f in stated_findings(report) if f != SUPPORT_DEVICES]
    if not candidates:
        return None
    target = _rng(seed).choice(candidates)
    findings, impression = split_report(report)
    findings = [s for s in findings if target not in _stated(s)]
    impression = [s for s in impression if target not in _stated(s)]
    if not any(_stated(s) - {SUPPORT_DEVICES} for s in impression):
        impression = [s for s in impression if not _stated(s)] or []
        impression.append("No acute cardiopulmonary process.")
    if not findings:
        findings = ["The lungs are clear."]
    return join_report(findings, impression)


def invent_finding(report: str, seed=0) -> str | None:
    """Add a finding the report does not state, to FINDINGS and IMPRESSION (a hallucination).
    A finding the report never mentions is preferred; failing that one it negates, whose
    negation is then removed (the invented report must not contradict itself). A normal
    impression ("No acute ...") is replaced. None when every pathology is already stated."""
    rng = _rng(seed)
    findings, impression = split_report(report)
    everything = findings + impression
    stated = set(stated_findings(report))
    mentioned = set().union(*(_mentioned(s) for s in everything)) if everything else set()
    fresh = [f for f in INVENTED if f not in mentioned]
    negated = [f for f in INVENTED if f in mentioned and f not in stated]
    if not fresh and not negated:
        return None
    target = rng.choice(fresh or negated)
    sentence = INVENTED[target]
    findings = [s for s in findings if target not in _mentioned(s)] + [sentence]
    impression = [s for s in impression if "no acute" not in s.lower()]
    impression = [sentence] + impression
    return join_report(findings, impression)


def paraphrase(report: str, seed=0) -> str:
    """The same findings in other words (the control: a metric should barely move)."""
    del seed  # deterministic; the argument keeps the edits' signatures alike
    out = report
    for pattern, replacement in PARAPHRASES:
        out = re.sub(pattern, replacement, out)
    return out


EDITS = {"paraphrase": paraphrase, "wrong side": flip_side, "missed finding": drop_finding,
         "invented finding": invent_finding}


def plant_errors(reports, seed: int = 0) -> dict:
    """``{kind: [edited report or None]}`` for every kind in :data:`ERROR_KINDS` (None where the
    edit does not apply, e.g. no lateralised finding to flip). Deterministic for ``seed``."""
    reports = list(reports)
    return {kind: [EDITS[kind](r, random.Random(seed * 1_000_003 + 7919 * i + k)) for i, r in enumerate(reports)]
            for k, kind in enumerate(ERROR_KINDS)}


def finding_sides(report: str) -> set:
    """``{(finding, side)}`` for every stated pathology, side ``left``/``right``/``bilateral``
    (both words, or "bilateral") or ``none`` (no side written). Support Devices are left out."""
    findings, impression = split_report(report)
    pairs = set()
    for s in findings + impression:
        words = set(w.lower() for w in _SIDE.findall(s))
        side = ("bilateral" if "bilateral" in s.lower() or len(words) == 2 else next(iter(words)) if words else "none")
        pairs |= {(f, side) for f in _stated(s) if f != SUPPORT_DEVICES}
    return pairs


def _set_f1(reference: set, hypothesis: set) -> float:
    if not reference and not hypothesis:
        return 1.0
    tp = len(reference & hypothesis)
    return 2 * tp / (len(reference) + len(hypothesis))


def pair_scores(references, hypotheses) -> dict:
    """Per pair: ``bleu4`` (sentence BLEU-4), ``rouge_l``, ``finding_f1`` (F1 of the labeler's
    positive-or-uncertain findings, No Finding included, as clinical F1 counts them) and
    ``laterality_f1`` (F1 of (finding, side) pairs). Arrays of length N, 1.0 = identical."""
    references, hypotheses = list(references), list(hypotheses)
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    ref_labels = labels_matrix(references).astype(bool)
    hyp_labels = labels_matrix(hypotheses).astype(bool)
    columns = list(range(len(FINDINGS)))
    finding = [_set_f1({j for j in columns if r[j]}, {j for j in columns if h[j]}) for r, h in zip(ref_labels, hyp_labels)]
    return {"bleu4": np.array([bleu([r], [h]) for r, h in zip(references, hypotheses)]),
            "rouge_l": np.array([rouge_l([r], [h]) for r, h in zip(references, hypotheses)]),
            "finding_f1": np.array(finding),
            "laterality_f1": np.array([_set_f1(finding_sides(r), finding_sides(h))
                                       for r, h in zip(references, hypotheses)])}


def which_metric_notices(reports, seed: int = 0, metrics=("bleu4", "rouge_l", "finding_f1", "laterality_f1")) -> dict:
    """Plant every error in every report and score it against the original.

    Returns ``{"mean": {kind: {metric: mean score}}, "notices": {kind: {metric: rate}}, "n": {kind: count},
    "edited": plant_errors(...)}``. ``notices`` is the fraction of reports (where the edit applies)
    whose erroneous version the metric scores *below the paraphrase of the same report*: a metric
    that notices an error must rank it under a harmless rewording. (For the paraphrase row itself,
    the fraction scored below 1, i.e. any change at all.)
    """
    reports = list(reports)
    edited = plant_errors(reports, seed)
    base = pair_scores(reports, edited["paraphrase"])
    mean, notices, counts = {}, {}, {}
    for kind in ERROR_KINDS:
        rows = [i for i, e in enumerate(edited[kind]) if e is not None]
        counts[kind] = len(rows)
        if not rows:
            continue
        scores = pair_scores([reports[i] for i in rows], [edited[kind][i] for i in rows])
        mean[kind] = {m: float(scores[m].mean()) for m in metrics}
        if kind == "paraphrase":
            notices[kind] = {m: float((scores[m] < 1 - 1e-9).mean()) for m in metrics}
        else:
            notices[kind] = {m: float((scores[m] < base[m][rows] - 1e-9).mean()) for m in metrics}
    return {"mean": mean, "notices": notices, "n": counts, "edited": edited}


__all__ = ["ERROR_KINDS", "INVENTED", "PARAPHRASES", "split_report", "join_report", "stated_findings", "flip_side",
           "drop_finding", "invent_finding", "paraphrase", "plant_errors", "finding_sides", "pair_scores",
           "which_metric_notices"]
