"""Planted report errors (medmm_lite.eval.planted): each edit does what it says, and only that."""
import numpy as np
import pytest

from medmm_lite import data as D
from medmm_lite.eval import label_report, labels_matrix
from medmm_lite.eval import planted as PL

REPORT = ("FINDINGS: Portable AP view of the chest. Right PICC line terminates in the SVC. There is linear "
          "atelectasis at the left base. No airspace consolidation, interstitial edema, or pulmonary nodule. "
          "There is a large right pleural effusion. No cardiomegaly. IMPRESSION: 1. Right pleural effusion, large. "
          "2. Linear atelectatic change at the left base.")


@pytest.fixture(scope="module")
def reports():
    return D.generate_cohort(480, 32, 0).reports[:150]


def test_split_and_join_round_trip(reports):
    for r in reports:
        assert PL.join_report(*PL.split_report(r)) == r
    findings, impression = PL.split_report(REPORT)
    assert impression == ["1. Right pleural effusion, large.", "2. Linear atelectatic change at the left base."]


def test_flip_side_changes_only_laterality():
    for seed in range(6):
        flipped = PL.flip_side(REPORT, seed)
        assert label_report(flipped) == label_report(REPORT)              # the labels cannot see it
        assert PL.finding_sides(flipped) != PL.finding_sides(REPORT)
        assert "Right PICC line" in flipped                               # devices are left alone
    assert PL.flip_side("FINDINGS: Mild cardiomegaly. IMPRESSION: Mild cardiomegaly.") is None


def test_drop_finding_removes_it_everywhere():
    for seed in range(6):
        dropped = PL.drop_finding(REPORT, seed)
        before, after = set(PL.stated_findings(REPORT)), set(PL.stated_findings(dropped))
        assert len(before - after) == 1 and after < before
    only = "FINDINGS: Small left pleural effusion. IMPRESSION: Small left pleural effusion."
    missed = PL.drop_finding(only)
    assert PL.stated_findings(missed) == [] and "No acute cardiopulmonary process." in missed
    assert label_report(missed).get("No Finding") == 1
    assert PL.drop_finding("FINDINGS: The lungs are clear. IMPRESSION: No acute cardiopulmonary process.") is None


def test_invent_finding_adds_exactly_one(reports):
    for i, r in enumerate(reports):
        invented = PL.invent_finding(r, i)
        if invented is None:
            continue
        before, after = set(PL.stated_findings(r)), set(PL.stated_findings(invented))
        assert before < after and len(after - before) == 1, (r, invented)
        new = (after - before).pop()
        assert label_report(invented)[new] == 1                            # no leftover negation wins


def test_paraphrase_keeps_every_label_and_side():
    cohort = D.generate_cohort(480, 32, 0)
    para = [PL.paraphrase(r) for r in cohort.reports]
    np.testing.assert_array_equal(labels_matrix(para), labels_matrix(cohort.reports))
    assert all(PL.finding_sides(a) == PL.finding_sides(b) for a, b in zip(para, cohort.reports))
    assert np.mean([a != b for a, b in zip(para, cohort.reports)]) > 0.9


def test_pair_scores_and_which_metric_notices(reports):
    same = PL.pair_scores(reports[:5], reports[:5])
    for values in same.values():
        np.testing.assert_allclose(values, 1.0)
    result = PL.which_metric_notices(reports, seed=0)
    n = result["notices"]
    assert n["wrong side"]["finding_f1"] == 0.0            # CheXpert labels have no laterality
    assert n["wrong side"]["laterality_f1"] == 1.0
    assert n["missed finding"]["finding_f1"] == 1.0 and n["invented finding"]["finding_f1"] == 1.0
    assert result["mean"]["paraphrase"]["finding_f1"] == 1.0
    assert result["mean"]["paraphrase"]["bleu4"] < 0.9     # rewording costs BLEU
    assert result["n"]["paraphrase"] == len(reports) and 0 < result["n"]["wrong side"] < len(reports)
    # deterministic
    assert PL.plant_errors(reports[:20], seed=1) == PL.plant_errors(reports[:20], seed=1)


def test_bad_input():
    with pytest.raises(TypeError):
        PL.split_report(None)
    with pytest.raises(ValueError):
        PL.pair_scores(["a"], ["a", "b"])
