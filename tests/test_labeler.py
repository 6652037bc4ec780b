"""The report labeler: hand-labelled sentences in IU X-ray / MIMIC style, and clinical F1.

Each case is a report and the labels a reader following CheXpert's conventions
would give it (1 positive, 0 negative, -1 uncertain, absent = not mentioned;
"No Finding" 1 when nothing but support devices is abnormal, else absent).
Issue 22's real report language (``REAL_LANGUAGE_CASES``), English only, linear
time, and the development sets' agreement and F1 (``labeler_devset.py``) follow.
"""
import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from medmm_lite.data.findings import FINDINGS
from medmm_lite.eval import clinical_f1, label_report, labels_matrix
from medmm_lite.eval.labeler import extract_mentions

CM, PE, PTX, CONS, LL, ATEL, ED, SD, FX, NF = FINDINGS

CASES = [
    # --- plain negation, cue before the finding
    ("No pneumothorax.", {PTX: 0, NF: 1}),
    ("There is no pleural effusion.", {PE: 0, NF: 1}),
    ("No evidence of pneumothorax.", {PTX: 0, NF: 1}),
    ("Negative for pneumothorax.", {PTX: 0, NF: 1}),
    ("The lungs are free of focal airspace consolidation.", {CONS: 0, NF: 1}),
    ("No acute displaced rib fracture.", {FX: 0, NF: 1}),
    ("No pulmonary edema.", {ED: 0, NF: 1}),
    # --- lists after "no" / "without", and where a list ends
    ("No pleural effusion, pneumothorax or consolidation.", {PE: 0, PTX: 0, CONS: 0, NF: 1}),
    ("The lungs are clear without focal consolidation, pleural effusion, or pneumothorax.",
     {CONS: 0, PE: 0, PTX: 0, NF: 1}),
    ("No focal consolidation, pleural effusion, or pneumothorax is seen.", {CONS: 0, PE: 0, PTX: 0, NF: 1}),
    ("No effusion. Small pneumothorax.", {PE: 0, PTX: 1}),
    ("No pneumothorax, small left pleural effusion.", {PTX: 0, PE: 1}),
    ("No pleural effusion and small right apical pneumothorax.", {PE: 0, PTX: 1}),
    ("No suspicious pulmonary nodules or masses.", {LL: 0, NF: 1}),
    ("No vascular congestion or edema.", {ED: 0, NF: 1}),
    ("Heart size within normal limits. No focal airspace disease. No pneumothorax or effusions.",
     {CM: 0, PTX: 0, PE: 0, NF: 1}),
    # --- negation cue after the finding
    ("Pleural effusion and pneumothorax are not seen.", {PE: 0, PTX: 0, NF: 1}),
    ("The previously seen left pneumothorax is no longer seen.", {PTX: 0, NF: 1}),
    ("Right pleural effusion has resolved.", {PE: 0, NF: 1}),
    ("Pneumothorax is not identified.", {PTX: 0, NF: 1}),
    ("Pulmonary edema has cleared.", {ED: 0, NF: 1}),
    ("Rib fractures are not identified.", {FX: 0, NF: 1}),
    ("Effusions are absent.", {PE: 0, NF: 1}),
    ("Pneumothorax has been ruled out.", {PTX: 0, NF: 1}),
    ("Resolved left pleural effusion.", {PE: 0, NF: 1}),
    ("Patchy opacity could represent early consolidation.", {CONS: -1}),
    # --- resolution and removal
    ("Interval resolution of the left lower lobe consolidation.", {CONS: 0, NF: 1}),
    ("Nasogastric tube has been removed.", {SD: 0, NF: 1}),
    ("As compared to the previous radiograph, the patient has been extubated. "
     "The nasogastric tube has been removed.", {SD: 0, NF: 1}),
    ("Interval removal of the right internal jugular central venous catheter.", {SD: 0, NF: 1}),
    # --- uncertainty, before and after
    ("Possible small left pleural effusion.", {PE: -1}),
    ("Cannot exclude a small left apical pneumothorax.", {PTX: -1}),
    ("A small pneumothorax cannot be excluded.", {PTX: -1}),
    ("Consolidation is not excluded.", {CONS: -1}),
    ("Left basilar opacity may represent atelectasis or pneumonia.", {ATEL: -1}),
    ("Questionable nodule in the right upper lobe.", {LL: -1}),
    ("Findings suspicious for pulmonary edema.", {ED: -1}),
    ("Atelectasis versus consolidation in the left lower lobe.", {ATEL: -1, CONS: -1}),
    ("Atelectasis vs. consolidation at the left base.", {ATEL: -1, CONS: -1}),
    ("Atelectasis and/or consolidation at the left base.", {ATEL: -1, CONS: -1}),
    ("Retrocardiac opacity, likely atelectasis.", {ATEL: -1}),
    ("Findings are concerning for right lower lobe consolidation.", {CONS: -1}),
    ("Increased interstitial markings suggestive of interstitial edema.", {ED: -1}),
    ("Possible nondisplaced fracture of the right 6th rib.", {FX: -1}),
    ("Nodular opacity in the left mid lung may represent a nipple shadow.", {LL: -1}),
    ("Large right pleural effusion with associated compressive atelectasis, "
     "cannot exclude underlying consolidation.", {PE: 1, ATEL: 1, CONS: -1}),
    ("Right hilar mass concerning for malignancy.", {LL: 1}),
    # --- "no change", "unchanged", "stable", "no new"
    ("No change in the small left pleural effusion.", {PE: 1}),
    ("Unchanged small bilateral pleural effusions.", {PE: 1}),
    ("Stable cardiomegaly.", {CM: 1}),
    ("No significant interval change in moderate cardiomegaly.", {CM: 1}),
    ("Mild cardiomegaly, unchanged.", {CM: 1}),
    ("No new consolidation.", {CONS: -1}),  # CheXpert's rule files: "no new X" is uncertain
    ("Tubes and lines are unchanged in position.", {SD: 1, NF: 1}),
    # --- the heart: neutral words, normal, enlarged, stable
    ("Heart size is normal.", {CM: 0, NF: 1}),
    ("Normal heart size.", {CM: 0, NF: 1}),
    ("Normal cardiac silhouette.", {CM: 0, NF: 1}),
    ("The cardiomediastinal silhouette is within normal limits.", {CM: 0, NF: 1}),
    ("The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.", {CM: 0, NF: 1}),
    ("Heart size is at the upper limits of normal.", {CM: 0, NF: 1}),
    ("The heart is not enlarged.", {CM: 0, NF: 1}),
    ("Heart size and mediastinal contours are within normal limits.", {CM: 0, NF: 1}),
    ("Heart and mediastinum are normal. No effusion.", {CM: 0, PE: 0, NF: 1}),
    ("The heart is mildly enlarged.", {CM: 1}),
    ("Moderate enlargement of the cardiac silhouette.", {CM: 1}),
    ("Mildly enlarged heart. Low lung volumes with bibasilar atelectasis.", {CM: 1, ATEL: 1}),
    ("Borderline cardiomegaly.", {CM: -1}),
    ("Heart size is borderline.", {CM: -1}),
    ("Heart size is stable.", {CM: -1}),  # CheXpert hedges a stable heart size
    ("Pacemaker leads overlie the heart.", {SD: 1, NF: 1}),
    ("Findings consistent with congestive heart failure.", {ED: 1, CM: -1}),
    # --- several sentences, conflicting mentions
    ("Possible right lower lobe consolidation. Left lower lobe consolidation is present.", {CONS: 1}),
    ("No left effusion. Small right effusion.", {PE: 1}),
    ("Possible effusion. No effusion on the left.", {PE: -1}),
    ("Left pleural effusion. No pneumothorax. Heart size is normal.", {PE: 1, PTX: 0, CM: 0}),
    # --- clause boundaries
    ("No focal consolidation but there is a small left pleural effusion.", {CONS: 0, PE: 1}),
    ("There is no pneumothorax; however, a small right effusion persists.", {PTX: 0, PE: 1}),
    ("No pneumothorax, although a small effusion is present.", {PTX: 0, PE: 1}),
    ("No focal consolidation, with small bilateral effusions.", {CONS: 0, PE: 1}),
    ("Moderate cardiomegaly and no pulmonary edema.", {CM: 1, ED: 0}),
    ("Heart size is normal and there is a small left effusion.", {CM: 0, PE: 1}),
    ("There is no pleural effusion or pneumothorax, but there is mild cardiomegaly.", {PE: 0, PTX: 0, CM: 1}),
    # --- positive findings in real phrasing
    ("Left-sided pleural effusion.", {PE: 1}),
    ("Moderate right and small left pleural effusions with adjacent atelectasis.", {PE: 1, ATEL: 1}),
    ("Mild pulmonary edema with small bilateral pleural effusions.", {ED: 1, PE: 1}),
    ("Mild pulmonary vascular congestion.", {ED: -1}),  # CheXpert hedges congestion
    ("Blunting of the left costophrenic angle.", {PE: -1}),
    ("Small left hydropneumothorax.", {PE: 1, PTX: 1}),
    ("4 mm nodule in the right upper lobe.", {LL: 1}),
    ("Bibasilar atelectasis.", {ATEL: 1}),
    ("Mild left basilar atelectatic changes.", {ATEL: 1}),
    ("Left lower lobe collapse.", {ATEL: 1}),
    ("Minimal subsegmental atelectasis at the right base, otherwise clear.", {ATEL: 1}),
    ("Old healed left rib fractures.", {FX: 1}),
    ("Interval placement of a left chest tube with decrease in size of the left pneumothorax.",
     {SD: 1, PTX: 1}),
    # --- support devices and the No Finding rule
    ("Endotracheal tube terminates 4 cm above the carina. Lungs are clear.", {SD: 1, NF: 1}),
    ("Right internal jugular central venous catheter tip in the mid SVC. No pneumothorax.",
     {SD: 1, PTX: 0, NF: 1}),
    ("Tip of the right PICC line projects over the cavoatrial junction.", {SD: 1, NF: 1}),
    ("PICC line in place. No acute cardiopulmonary process.", {SD: 1, NF: 1}),
    ("Stable postsurgical changes status post median sternotomy.", {SD: 1, NF: 1}),
    ("Left chest wall pacemaker with leads in the right atrium and right ventricle. Moderate cardiomegaly.",
     {SD: 1, CM: 1}),
    ("No acute cardiopulmonary abnormality.", {NF: 1}),
    ("No radiographic evidence of acute cardiopulmonary disease.", {NF: 1}),
    ("Calcified granuloma in the right upper lobe. Otherwise no acute cardiopulmonary abnormality.", {}),
    ("Degenerative changes of the thoracic spine. No acute cardiopulmonary process.", {}),
    ("Cardiomediastinal silhouette and pulmonary vasculature are within normal limits. Lungs are clear. "
     "No pneumothorax or pleural effusion. No acute osseous findings.", {CM: 0, PTX: 0, PE: 0, NF: 1}),
    # --- report sections
    ("INDICATION: Shortness of breath, evaluate for pneumonia and effusion. FINDINGS: The lungs are clear. "
     "No pleural effusion. IMPRESSION: No acute cardiopulmonary process.", {PE: 0, NF: 1}),
    ("COMPARISON: None. IMPRESSION: Small left pneumothorax.", {PTX: 1}),
    ("1. Small left pleural effusion. 2. No pneumothorax.", {PE: 1, PTX: 0}),
    # --- the synthetic cohort's grammar
    ("FINDINGS: The heart is enlarged. Moderate right pleural effusion. "
     "IMPRESSION: Cardiomegaly with moderate right pleural effusion.", {CM: 1, PE: 1}),
    ("Enlarged cardiac silhouette. Large bilateral airspace consolidation.", {CM: 1, CONS: 1}),
    ("Normal heart size. No pleural effusion. No pneumothorax. No acute cardiopulmonary process.",
     {CM: 0, PE: 0, PTX: 0, NF: 1}),
    ("Small left pneumothorax. Mild atelectatic change. Pulmonary nodule in the right upper lobe.",
     {PTX: 1, ATEL: 1, LL: 1}),
    ("Rib fracture on the left. Nasogastric tube in place. Mild interstitial edema.", {FX: 1, SD: 1, ED: 1}),
    ("Possible right consolidation. Nodular opacity may represent a mass. Cannot exclude fracture.",
     {CONS: -1, LL: -1, FX: -1}),
    ("Opacity at the left base, likely atelectasis. Endotracheal tube and pacemaker in place.",
     {ATEL: -1, SD: 1}),
    # --- empty
    ("", {}),
    ("   \n ", {}),
]


@pytest.mark.parametrize("text,expected", CASES, ids=[t[:60] or "<empty>" for t, _ in CASES])
def test_label_report(text, expected):
    got = label_report(text)
    explain = [(m.finding, m.label, m.phrase, m.reason) for m in extract_mentions(text)]
    assert got == expected, f"{text!r}\n got {got}\n want {expected}\n mentions {explain}"


def test_enough_cases():
    assert len(CASES) >= 60


def test_labels_are_ordered_like_findings():
    labels = label_report("Small pneumothorax. Moderate cardiomegaly. Nasogastric tube in place.")
    assert list(labels) == [n for n in FINDINGS if n in labels]


def test_mentions_explain_decisions():
    mentions = extract_mentions("No effusion. Possible small pneumothorax.")
    assert [(m.finding, m.label) for m in mentions] == [(PE, 0), (PTX, -1)]
    assert "no" in mentions[0].reason and "possible" in mentions[1].reason


@pytest.mark.parametrize("bad", [None, 3, b"No effusion.", ["No effusion."]])
def test_label_report_rejects_non_strings(bad):
    with pytest.raises(TypeError, match=type(bad).__name__):
        label_report(bad)


def test_labels_matrix_shape_values_and_uncertainty_policy():
    reports = ["Possible small effusion.", "No acute cardiopulmonary process.", "", "Stable cardiomegaly."]
    m = labels_matrix(reports)
    assert m.shape == (4, len(FINDINGS)) and m.dtype == np.float32
    assert m[0, FINDINGS.index(PE)] == 1 and m[0].sum() == 1          # uncertain -> 1 by default
    assert m[1, FINDINGS.index(NF)] == 1 and m[1].sum() == 1
    assert m[2].sum() == 0                                             # empty report: nothing
    assert m[3, FINDINGS.index(CM)] == 1 and m[3].sum() == 1
    assert labels_matrix(reports, uncertain_as=0)[0].sum() == 0       # "U-Zeros"


def test_labels_matrix_bad_input():
    with pytest.raises(TypeError, match="single str"):
        labels_matrix("No effusion.")
    with pytest.raises(TypeError, match=r"reports\[1\]"):
        labels_matrix(["No effusion.", None])
    with pytest.raises(ValueError, match="uncertain_as"):
        labels_matrix(["No effusion."], uncertain_as=-1)


def test_clinical_f1_hand_computed():
    refs = ["Small left effusion.", "No acute cardiopulmonary process."]
    hyps = ["Small left effusion. Mild cardiomegaly.", "Small pneumothorax."]
    # truth {PE}, {NF}; predicted {PE, CM}, {PTX}: TP 1 (PE), FP 2 (CM, PTX), FN 1 (NF)
    out = clinical_f1(refs, hyps)
    assert out["micro_f1"] == pytest.approx(2 / 5)
    assert out["precision"] == pytest.approx(1 / 3)
    assert out["recall"] == pytest.approx(1 / 2)
    assert out["per_finding"][PE] == 1.0 and out["per_finding"][CM] == 0.0 and out["per_finding"][NF] == 0.0
    assert np.isnan(out["per_finding"][FX])                # in neither list: undefined
    assert out["macro_f1"] == pytest.approx(np.mean([1.0, 0.0, 0.0, 0.0]))
    assert clinical_f1(refs, refs)["micro_f1"] == 1.0


def test_clinical_f1_matches_sklearn():
    texts = [t for t, _ in CASES]
    rng = np.random.default_rng(0)
    refs = [texts[i] for i in rng.integers(0, len(texts), 60)]
    hyps = [texts[i] for i in rng.integers(0, len(texts), 60)]
    for include_nf in (True, False):
        n = len(FINDINGS) if include_nf else len(FINDINGS) - 1
        y, p = labels_matrix(refs)[:, :n], labels_matrix(hyps)[:, :n]
        out = clinical_f1(refs, hyps, include_no_finding=include_nf)
        assert out["micro_f1"] == pytest.approx(f1_score(y, p, average="micro"))
        assert out["precision"] == pytest.approx(precision_score(y, p, average="micro"))
        assert out["recall"] == pytest.approx(recall_score(y, p, average="micro"))
        assert out["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", zero_division=np.nan))
        per = f1_score(y, p, average=None, zero_division=np.nan)
        np.testing.assert_allclose(list(out["per_finding"].values()), per)
        assert list(out["per_finding"]) == list(FINDINGS[:n])


def test_clinical_f1_bad_input():
    with pytest.raises(ValueError, match="2 references and 1 hypotheses"):
        clinical_f1(["a", "b"], ["a"])
    with pytest.raises(TypeError, match=r"hypotheses\[0\]"):
        clinical_f1(["No effusion."], [None])
    with pytest.raises(ValueError, match="at least one"):
        clinical_f1([], [])


def test_reads_the_synthetic_grammar():
    """Every phrase and cue SynthCXR's report grammar uses is read the way the grammar means it."""
    grammar = pytest.importorskip("medmm_lite.data.reports")
    for finding, phrases in grammar.MENTION_PHRASES.items():
        column = FINDINGS.index(finding)
        for phrase in phrases:
            stated = phrase + (" is enlarged." if phrase == "heart size" else ".")
            assert labels_matrix([stated[0].upper() + stated[1:]])[0, column] == 1, stated
            if not phrase.startswith(("the ", "heart size")):
                assert label_report(f"No {phrase}.").get(finding) == 0, f"No {phrase}."
            for cue in grammar.UNCERTAINTY_CUES:
                hedged = f"{cue.capitalize()} {phrase}."
                assert label_report(hedged).get(finding) == -1, hedged
    for impression in grammar.NO_FINDING_IMPRESSIONS:
        assert label_report(impression) == {NF: 1}


# --------------------------------------------------------------------------------------------
# Issue 22: real report language. Each pattern the issue lists, and its neighbours.
# --------------------------------------------------------------------------------------------

REAL_LANGUAGE_CASES = [
    # "no visualized X" (a participle before the finding is an adjective, not the clause's verb)
    ("No visualized pneumothorax.", {PTX: 0, NF: 1}),
    ("No visualized consolidation.", {CONS: 0, NF: 1}),
    ("No demonstrated pleural effusion.", {PE: 0, NF: 1}),
    ("No pneumothorax is visualized.", {PTX: 0, NF: 1}),
    # a size or quality word inside a negated list that still ends with "or"
    ("No focal consolidation, suspicious pulmonary opacity, large pleural effusion, or pneumothorax is identified.",
     {CONS: 0, PE: 0, PTX: 0, NF: 1}),
    ("No focal consolidation, large effusion, or pneumothorax.", {CONS: 0, PE: 0, PTX: 0, NF: 1}),
    ("No pneumothorax or large pleural effusion.", {PTX: 0, PE: 0, NF: 1}),
    ("No effusion, small pneumothorax.", {PE: 0, PTX: 1}),                # no closing "or": a new item
    # "without" and its list
    ("The lungs are clear without focal pneumonic consolidation, large effusion or pneumothorax.",
     {CONS: 0, PE: 0, PTX: 0, NF: 1}),
    ("Mild vascular congestion without overt pulmonary edema.", {ED: -1}),  # congestion itself is hedged
    # conjunctions after a negation: "or" is not a hedge there
    ("The chest x-ray does not demonstrate any evidence of pulmonary infiltrate or edema.", {ED: 0, NF: 1}),
    ("The radiograph does not show pneumothorax or pleural effusion.", {PTX: 0, PE: 0, NF: 1}),
    ("Neither pleural effusion nor pneumothorax.", {PE: 0, PTX: 0, NF: 1}),
    ("No pleural effusion and no pneumothorax.", {PE: 0, PTX: 0, NF: 1}),
    # "differential includes / including"
    ("Differential diagnosis including pneumonia, aspiration and pulmonary edema.", {ED: -1}),
    ("Findings could reflect infection, with differential diagnosis including pulmonary edema.", {ED: -1}),
    ("The differential diagnosis includes pulmonary edema.", {ED: -1}),
    ("Differential considerations include atelectasis.", {ATEL: -1}),
    # "difficult to (entirely) exclude"
    ("Pulmonary edema difficult to entirely exclude.", {ED: -1}),
    ("Pulmonary edema is difficult to exclude.", {ED: -1}),
    ("It is difficult to completely exclude a small pneumothorax.", {PTX: -1}),
    ("Pneumothorax is not entirely excluded.", {PTX: -1}),
    # comparison phrases, as CheXpert reads them: a stable or similar heart size is uncertain,
    # unless the sentence also says normal or enlarged; a stable finding is still present
    ("Heart size is similar to comparison exam and within normal limits.", {CM: 0, NF: 1}),
    ("Heart size similar to the comparison exam and within normal limits.", {CM: 0, NF: 1}),
    ("Heart size is unchanged and normal.", {CM: 0, NF: 1}),
    ("The cardiac silhouette is similar to prior.", {CM: -1}),
    ("Heart size is stable.", {CM: -1}),
    ("Heart size remains mildly enlarged.", {CM: 1}),
    ("Cardiomegaly is similar to prior.", {CM: 1}),
    ("Stable mild cardiomegaly.", {CM: 1}),
    ("Small bilateral pleural effusions are unchanged.", {PE: 1}),
    ("Similar appearance of the small left pleural effusion.", {PE: 1}),
    # structured fields
    ("Lines/tubes: None.", {SD: 0, NF: 1}),
    ("Heart: Normal size. Pleura: No effusion or pneumothorax.", {CM: 0, PE: 0, PTX: 0, NF: 1}),
    # sections: history-like ones are skipped as before
    ("CLINICAL HISTORY: Pneumonia, effusion? FINDINGS: No visualized pneumothorax.", {PTX: 0, NF: 1}),
    ("INDICATION: Evaluate for pneumothorax. IMPRESSION: No pneumothorax or large pleural effusion.",
     {PTX: 0, PE: 0, NF: 1}),
]


@pytest.mark.parametrize("text,expected", REAL_LANGUAGE_CASES, ids=[t[:60] for t, _ in REAL_LANGUAGE_CASES])
def test_real_report_language(text, expected):
    got = label_report(text)
    explain = [(m.finding, m.label, m.phrase, m.reason) for m in extract_mentions(text)]
    assert got == expected, f"{text!r}\n got {got}\n want {expected}\n mentions {explain}"


@pytest.mark.parametrize("text", [
    "Pas de pneumothorax.",
    "Kein Pleuraerguss. Herz vergrößert.",
    "No hay derrame pleural ni neumotórax.",
    "Nessun versamento pleurico. Cuore di dimensioni normali.",
    "Geen pleuravocht, geen pneumothorax.",
    "Épanchement pleural gauche de faible abondance.",
])
def test_non_english_text_gives_no_labels(text):
    """Text without English clinical vocabulary gets no labels at all, not "No Finding"."""
    assert label_report(text) == {}
    assert extract_mentions(text) == []
    assert labels_matrix([text]).sum() == 0


def test_english_sentences_of_a_mixed_report_are_read():
    assert label_report("Pas de pneumothorax. Small left pleural effusion.") == {PE: 1}
    assert label_report("Kein Pleuraerguss. No pneumothorax.") == {PTX: 0, NF: 1}


def test_docstrings_say_the_labeler_reads_english():
    import medmm_lite.data.labeler as engine
    import medmm_lite.eval.labeler as labeler
    assert "English" in labeler.__doc__ and "English" in engine.__doc__ and "English" in label_report.__doc__


def _long_report(n_chars: int, seed: int = 0) -> str:
    """A report of real-style clauses joined by commas and "and", with no full stop anywhere."""
    clauses = ["no pleural effusion or pneumothorax", "small left pleural effusion", "heart size is normal",
               "possible consolidation at the left base", "mild pulmonary edema", "no acute osseous abnormality",
               "the lungs are clear without focal consolidation, large effusion or pneumothorax",
               "endotracheal tube terminates 4 cm above the carina", "cannot exclude a small pneumothorax",
               "bibasilar atelectasis", "stable cardiomegaly", "right upper lobe nodule"]
    rng = np.random.default_rng(seed)
    parts, size = [], 0
    while size < n_chars:
        parts.append(f"{clauses[rng.integers(len(clauses))]} {rng.integers(1, 100)}")
        parts.append(", " if rng.random() < 0.7 else " and ")
        size += len(parts[-2]) + len(parts[-1])
    return "".join(parts)[:n_chars]


def test_labelling_time_is_linear_in_report_length():
    """Issue 22: 100,000 characters without a full stop took 79 s; now well under a second."""
    import time
    from medmm_lite.data.labeler import _sentence_mentions
    timings = {}
    for n in (25_000, 100_000):
        report = _long_report(n, seed=n)
        assert len(report) == n and "." not in report
        _sentence_mentions.cache_clear()  # no help from sentences labelled before
        start = time.perf_counter()
        labels = label_report(report)
        timings[n] = time.perf_counter() - start
        assert labels[PE] == 1 and labels[SD] == 1
    assert timings[100_000] < 1.0, timings
    assert timings[100_000] < 8 * timings[25_000] + 0.05, timings  # 4x the text, about 4x the time


# --------------------------------------------------------------------------------------------
# The development sets (tests/labeler_devset.py): agreement and F1 per finding, printed.
# --------------------------------------------------------------------------------------------

def test_development_sets_agreement_and_f1(capsys):
    from labeler_devset import REAL_SET_PATH, compare, course_set, format_table, real_set
    header = REAL_SET_PATH.read_text(encoding="utf-8").split("\n\n")[0]
    assert "Source:" in header and "Licence:" in header
    for title, cases in (("Real sentences, labels by someone else", real_set()),
                         ("Course set (hand-labelled, real report style)", course_set())):
        scores = compare(cases, library_python=None)
        with capsys.disabled():
            print("\n" + format_table(title, scores))
        course = scores["course"]
        assert course["macro_f1"] >= 0.90, course
        assert all(v["f1"] >= 0.80 for v in course["per_finding"].values()), course["per_finding"]


@pytest.mark.parametrize("text,expected", [
    ("ET tube.", {SD: 1, NF: 1}),
    ("ET tube in good position.", {SD: 1, NF: 1}),
    ("De novo small left pleural effusion.", {PE: 1}),
    ("Pectus excavatum deformity.", {}),   # English, an abnormality outside the nine labels
])
def test_english_with_foreign_looking_words_is_read(text, expected):
    assert label_report(text) == expected
