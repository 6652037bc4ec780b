"""Subgroup AUROC with patient-bootstrap intervals (medmm_lite.eval.fairness)."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medmm_lite.eval import fairness as FA


def test_age_bands():
    bands = FA.age_bands(np.array([18, 39.9, 40, 64.9, 65, 90]))
    assert list(bands) == ["<40", "<40", "40-64", "40-64", "65+", "65+"]
    with pytest.raises(ValueError):
        FA.age_bands([50], edges=(40, 65), names=("a", "b"))


def test_weighted_auroc_matches_sklearn_with_ties_and_repeats():
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.3).astype(float)
    s = np.round(rng.random(200) + y * 0.5, 1)             # rounded: many ties
    assert FA.weighted_auroc(y, s)[0] == pytest.approx(roc_auc_score(y, s))
    w = rng.integers(0, 4, 200).astype(float)
    rows = np.repeat(np.arange(200), w.astype(int))
    assert FA.weighted_auroc(y, s, w)[0] == pytest.approx(roc_auc_score(y[rows], s[rows]))
    # (B, N) weights give one row per resample; a resample without positives is NaN
    W = np.stack([w, np.ones(200), 1.0 - y])
    out = FA.weighted_auroc(y, s, W)
    assert out.shape == (3, 1) and np.isnan(out[2, 0])
    assert out[1, 0] == pytest.approx(roc_auc_score(y, s))


def test_patient_bootstrap_keeps_patients_whole():
    pid = np.array([0, 0, 0, 1, 2, 2, 3, 4, 4, 4])
    w = FA.patient_bootstrap_weights(pid, n_boot=50, seed=1)
    assert w.shape == (50, 10)
    for row in w:
        for p in np.unique(pid):           # every study of a patient has the same weight
            assert len(set(row[pid == p])) == 1
        per_patient = [row[pid == p][0] for p in np.unique(pid)]
        assert sum(per_patient) == 5        # five patients drawn each time
    np.testing.assert_array_equal(w, FA.patient_bootstrap_weights(pid, 50, seed=1))
    assert not np.array_equal(w, FA.patient_bootstrap_weights(pid, 50, seed=2))


def _cohort(n_patients=150, studies=3, seed=0, noise=(1.0, 1.0)):
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(n_patients), studies)
    group = np.where(pid % 2 == 0, "A", "B")
    y = np.repeat(rng.random((n_patients, 2)) < 0.4, studies, axis=0).astype(float)  # patient-level labels
    scale = np.where(group == "A", noise[0], noise[1])[:, None]
    s = y + rng.normal(0, 1, y.shape) * scale
    return y, s, group, pid


def test_subgroup_auroc_finds_a_real_gap():
    y, s, group, pid = _cohort(noise=(0.5, 2.0))           # group B's scores are much noisier
    r = FA.subgroup_auroc(y, s, group, pid, n_boot=300, seed=0)
    assert set(r) == {"all", "A", "B"}
    assert r["A"]["n"] == r["B"]["n"] == 225 and r["A"]["n_patients"] == 75
    for name in r:
        assert r[name]["low"] <= r[name]["auroc"] <= r[name]["high"]
        assert r[name]["auroc"] == pytest.approx(np.mean([roc_auc_score(y[group == name, k] if name != "all" else y[:, k],
                                                                        s[group == name, k] if name != "all" else s[:, k])
                                                          for k in range(2)]))
    low, high = FA.interval(r["A"]["boot"] - r["B"]["boot"])
    assert low > 0, "a large gap must have an interval above zero"


def test_no_gap_interval_covers_zero():
    y, s, group, pid = _cohort(noise=(1.0, 1.0), seed=3)
    r = FA.subgroup_auroc(y, s, group, pid, n_boot=300, seed=0)
    low, high = FA.interval(r["A"]["boot"] - r["B"]["boot"])
    assert low < 0 < high


def test_patient_interval_wider_than_study_interval():
    # identical studies within a patient: the study bootstrap is overconfident
    y, s, group, pid = _cohort(studies=4, seed=5)
    s = np.repeat(s[::4], 4, axis=0)
    r = FA.subgroup_auroc(y, s, group, pid, n_boot=400, seed=0)["all"]
    fake_pid = np.arange(len(pid))                          # every study its own patient
    r_study = FA.subgroup_auroc(y, s, group, fake_pid, n_boot=400, seed=0)["all"]
    assert (r["high"] - r["low"]) > 1.4 * (r_study["high"] - r_study["low"])


def test_keep_fraction_of_group():
    pid = np.repeat(np.arange(100), 2)
    group = np.where(pid < 50, "F", "M")
    idx = np.arange(200)
    kept = FA.keep_fraction_of_group(idx, group, "F", 0.1, pid, seed=0)
    assert (group[kept] == "M").sum() == 100
    assert len(np.unique(pid[kept][group[kept] == "F"])) == 5
    assert (group[kept] == "F").sum() == 10                 # whole patients
    with pytest.raises(ValueError):
        FA.keep_fraction_of_group(idx, group, "X", 0.1, pid)


def test_bad_input():
    with pytest.raises(ValueError):
        FA.weighted_auroc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError):
        FA.subgroup_auroc(np.zeros((4, 1)), np.zeros((4, 1)), ["a"] * 3, [0, 1, 2, 3])
    with pytest.raises(ValueError):
        FA.patient_bootstrap_weights([0, 1], n_boot=0)


def test_hold_out_site_sees_nothing_of_the_site():
    import medmm_lite
    from medmm_lite import data as D
    from medmm_lite.eval.shift import hold_out_site

    P = medmm_lite.profile("smoke")
    data = D.prepare_data(P, seed=0)
    held, external = hold_out_site(data, "Northgate ICU", P)
    site = data.cohort.site
    index = list(data.cohort.site_names).index("Northgate ICU")
    np.testing.assert_array_equal(external, np.flatnonzero(site == index))
    for name, idx in held.splits.items():
        assert not (site[idx] == index).any()
        np.testing.assert_array_equal(idx, np.asarray(data.splits[name])[site[data.splits[name]] != index])
    # the tokenizer was refitted on the remaining training reports only: re-fitting it gives the same vocabulary
    refit = D.train_tokenizer([data.cohort.reports[i] for i in held.splits["train"]], P.vocab_size)
    assert refit.get_vocab() == held.tokenizer.get_vocab()
    assert held.input_ids.shape[0] == len(data.cohort)
    with pytest.raises(ValueError):
        hold_out_site(data, 7, P)
