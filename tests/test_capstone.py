"""The capstone's pieces (medmm_lite.capstone): AUROC under weights, the patient bootstrap,
best-on-validation selection, the arms table and the Figure-5a improvements."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import medmm_lite
from medmm_lite import capstone as K
from medmm_lite.adapt import pathology_auroc
from medmm_lite.adapt.protocol import PATHOLOGY_COLUMNS


def _toy(n_patients=60, studies=3, C=3, signal=1.0, seed=0):
    """Patients with a few studies each; per-patient labels and scores (studies of a patient alike)."""
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(n_patients), studies)
    y = (rng.random((n_patients, C)) < 0.4).astype(float)[pid]
    y[0, :], y[1, :] = 1, 0  # both classes in every column
    # most of the noise is the patient's own, so a patient's studies score alike
    score = signal * y + rng.normal(size=(n_patients, C))[pid] + 0.3 * rng.normal(size=y.shape)
    return pid, y, score


# --------------------------------------------------------------------------- AUROC
def test_weighted_auroc_is_sklearn_auroc_of_the_repeated_rows():
    rng = np.random.default_rng(1)
    n, C = 40, 4
    y = (rng.random((n, C)) < 0.5).astype(float)
    s = np.round(rng.normal(size=(2, n, C)) + y, 1)   # rounding makes ties
    w = rng.integers(0, 3, size=(5, n)).astype(float)
    got = K.weighted_macro_auroc(y, s, w)
    for k in range(2):
        for b in range(5):
            rows = np.repeat(np.arange(n), w[b].astype(int))
            per = [roc_auc_score(y[rows, c], s[k, rows, c]) for c in range(C) if len(set(y[rows, c])) == 2]
            assert got[k, b] == pytest.approx(np.mean(per), abs=1e-12)


def test_unweighted_macro_auroc_matches_the_course_metric():
    rng = np.random.default_rng(2)
    y = (rng.random((50, 9)) < 0.3).astype(np.float32)
    y[:, 8] = 0  # a column with one class is left out, as eval.auroc does
    s = rng.normal(size=(50, 9)) + y
    assert K.macro_auroc(y, s) == pytest.approx(pathology_auroc(y, s)["macro"], abs=1e-12)


def test_weighted_auroc_rejects_bad_shapes():
    with pytest.raises(ValueError):
        K.weighted_macro_auroc(np.zeros((5, 2)), np.zeros((5, 2)), np.ones((1, 5)))
    with pytest.raises(ValueError):
        K.weighted_macro_auroc(np.zeros((5, 2)), np.zeros((1, 5, 2)), -np.ones((1, 5)))


# --------------------------------------------------------------------------- the patient bootstrap
def test_patient_weights_keep_each_patients_studies_together():
    pid = np.array([7, 7, 7, 3, 3, 9, 1, 1, 1, 1])
    w = K.patient_weights(pid, n_boot=200, seed=0)
    assert w.shape == (200, 10)
    for p in np.unique(pid):
        cols = w[:, pid == p]
        assert (cols == cols[:, :1]).all(), "all studies of a patient share its draw count"
    # each replicate draws as many patients as there are
    per_patient = np.stack([w[:, pid == p][:, 0] for p in np.unique(pid)], axis=1)
    assert (per_patient.sum(axis=1) == 4).all()
    # and differs from a study-level bootstrap: weights are not independent across a patient's studies
    assert not np.array_equal(w[:, 0], w[:, 5])


def test_interval_contains_the_estimate_and_shrinks_with_more_patients():
    widths = []
    for n_patients in (40, 400):
        pid, y, s = _toy(n_patients=n_patients, signal=1.0)
        scores = {"a": np.stack([s + 0.1 * np.random.default_rng(k).normal(size=s.shape) for k in range(3)])}
        boot = K.patient_bootstrap(y, scores, pid, n_boot=300, seed=0)
        point, low, high = boot.interval("a")
        assert low <= point <= high
        assert point == pytest.approx(np.mean([K.macro_auroc(y, scores["a"][k]) for k in range(3)]))
        widths.append(high - low)
    assert widths[1] < 0.6 * widths[0], widths


def test_patient_bootstrap_is_wider_than_a_study_bootstrap_when_studies_of_a_patient_agree():
    pid, y, s = _toy(n_patients=80, studies=4, signal=0.8, seed=3)
    scores = {"a": s[None]}
    by_patient = K.patient_bootstrap(y, scores, pid, n_boot=400, seed=0).interval("a")
    by_study = K.patient_bootstrap(y, scores, np.arange(len(pid)), n_boot=400, seed=0).interval("a")
    assert by_patient[2] - by_patient[1] > 1.3 * (by_study[2] - by_study[1])


def test_resampling_seeds_widens_the_interval_when_seeds_disagree():
    pid, y, s = _toy(n_patients=100)
    scores = {"a": np.stack([s, s + 2.0 * y, s - 0.8 * y])}  # three seeds of very different quality
    fixed = K.patient_bootstrap(y, scores, pid, n_boot=300, resample_seeds=False).interval("a")
    mixed = K.patient_bootstrap(y, scores, pid, n_boot=300, resample_seeds=True).interval("a")
    assert mixed[0] == fixed[0]
    assert mixed[2] - mixed[1] > 1.5 * (fixed[2] - fixed[1])


def test_paired_difference_of_identical_arms_is_exactly_zero():
    pid, y, s = _toy()
    boot = K.patient_bootstrap(y, {"a": s[None], "b": s[None].copy()}, pid, n_boot=100)
    assert boot.difference("a", "b") == (0.0, 0.0, 0.0)


def test_mean_difference_is_the_mean_of_the_paired_differences():
    """Lesson 10's 'the review's number': mean over image-text arms minus mean over image-only arms.
    With one arm on each side it is their paired difference; with two on one side, the average."""
    pid, y, s = _toy(n_patients=60)
    g = np.random.default_rng(1)
    scores = {"t1": (s + 0.5 * y)[None], "t2": (s + 0.1 * g.normal(size=s.shape))[None], "i1": s[None]}
    boot = K.patient_bootstrap(y, scores, pid, n_boot=200, seed=0)
    assert boot.mean_difference(["t1"], ["i1"]) == boot.difference("t1", "i1")
    point, low, high = boot.mean_difference(["t1", "t2"], ["i1"])
    assert point == pytest.approx((boot.point[0] + boot.point[1]) / 2 - boot.point[2])
    assert low <= point <= high
    halves = (boot.replicates[0] + boot.replicates[1]) / 2 - boot.replicates[2]
    assert (low, high) == pytest.approx(tuple(np.percentile(halves, [2.5, 97.5])))


# --------------------------------------------------------------------------- selection and Figure 5a
def test_best_is_chosen_on_validation_not_test():
    val = {"simclr": 0.70, "mae": 0.65}
    assert K.best_by_validation(val, ["simclr", "mae"]) == "simclr"
    assert K.best_by_validation({"simclr": 0.6, "mae": 0.6}, ["mae", "simclr"]) == "mae"  # ties: first listed
    with pytest.raises(KeyError):
        K.best_by_validation(val, ["clip"])
    # an arm that is better on test but worse on validation is not chosen
    pid, y, s = _toy(n_patients=50)
    good, bad = s, s * 0.1 + np.random.default_rng(0).normal(size=s.shape)
    boot = K.patient_bootstrap(y, {"simclr": bad[None], "mae": good[None], "clip": good[None]}, pid, n_boot=50)
    assert boot.point[1] > boot.point[0]                  # mae is better on test...
    table = K.improvement_table(boot, {"simclr": 0.9, "mae": 0.5, "clip": 0.7}, ["simclr", "mae"], ["clip"])
    assert table["clip"]["reference"] == "simclr"         # ...but simclr is better on validation


def test_figure_5a_bars_are_arm_minus_best_image_only():
    rng = np.random.default_rng(5)
    pid, y, s = _toy(n_patients=70)
    scores = {a: np.stack([s * rng.uniform(0.2, 1.5) + rng.normal(size=s.shape) for _ in range(2)])
              for a in ("simclr", "mae", "clip", "gloria")}
    boot = K.patient_bootstrap(y, scores, pid, n_boot=200)
    val = {"simclr": 0.6, "mae": 0.7, "clip": 0.8, "gloria": 0.75}
    table = K.improvement_table(boot, val, ["simclr", "mae"], ["clip", "gloria"])
    point = dict(zip(boot.arms, boot.point))
    for arm in ("clip", "gloria"):
        assert table[arm]["reference"] == "mae"
        assert table[arm]["point"] == pytest.approx(point[arm] - point["mae"])
        assert table[arm]["low"] <= table[arm]["point"] <= table[arm]["high"]
        i, r = boot.arms.index(arm), boot.arms.index("mae")
        assert table[arm]["high"] == pytest.approx(np.percentile(boot.replicates[i] - boot.replicates[r], 97.5))
    assert table["best"]["arm"] == "clip"


def test_arms_table_has_every_arm_fraction_and_seed():
    rng = np.random.default_rng(0)
    n = 30
    labels = torch.from_numpy((rng.random((n, 10)) < 0.4).astype(np.float32))
    splits = {"train": np.arange(10), "val": np.arange(10, 20), "test": np.arange(20, 30)}
    fractions = (0.01, 0.1, 1.0)
    scores = {p: {a: {s: {f: {"val": rng.random((10, 9)), "test": rng.random((10, 9))} for f in fractions}
                      for s in (0, 1, 2)} for a in ("random", "simclr", "clip")} for p in ("probe", "finetune")}
    rows = K.results_table(scores, labels, splits)
    keys = {(r["protocol"], r["arm"], r["fraction"], r["seed"]) for r in rows}
    assert len(rows) == len(keys) == 2 * 3 * 3 * 3
    r = next(r for r in rows if (r["protocol"], r["arm"], r["fraction"], r["seed"]) == ("probe", "clip", 0.1, 2))
    y_test = labels[20:30][:, PATHOLOGY_COLUMNS].numpy()
    assert r["test_auroc"] == pytest.approx(pathology_auroc(y_test, scores["probe"]["clip"][2][0.1]["test"])["macro"])
    val = K.mean_val_auroc(rows, "probe", 1.0)
    assert set(val) == {"random", "simclr", "clip"}
    assert val["clip"] == pytest.approx(np.mean([x["val_auroc"] for x in rows
                                                 if x["arm"] == "clip" and x["protocol"] == "probe" and x["fraction"] == 1.0]))


# --------------------------------------------------------------------------- arms and budget
def test_arms_are_data_driven_from_the_registry():
    arms = K.available_arms(objectives={"simclr": 1, "clip": 1})
    assert [a.name for a in arms] == ["random", "simclr", "clip"]
    assert K.arms_of(K.ARMS, "image") == ["simclr", "mae"]
    assert "coca" in K.arms_of(K.ARMS, "image-text")
    with pytest.raises(ValueError):
        K.arms_of(K.ARMS, "audio")


def test_budget_is_one_for_every_arm_and_m3ae_gets_the_same_steps_in_all():
    P = medmm_lite.profile("cpu")
    budget = K.capstone_budget(P)
    assert budget.P.steps < P.steps and len(budget.seeds) == 5
    assert K.capstone_budget(P, full_size=True).P == P
    assert K.capstone_budget(P, steps=50).P.steps == 50
    m3ae = next(a for a in K.ARMS if a.name == "m3ae")
    Pm, options = K.arm_profile(m3ae, budget.P)
    assert Pm.steps + options["steps"] == budget.P.steps     # language model + multimodal model
    clip = next(a for a in K.ARMS if a.name == "clip")
    assert K.arm_profile(clip, budget.P) == (budget.P, {"steps": budget.P.steps})
    with pytest.raises(ValueError):
        K.capstone_budget(P, seeds=(0, 0))


def test_image_encoder_of_finds_each_models_image_tower():
    vit = torch.nn.Linear(2, 2)

    class WithModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.image_encoder = vit

    class WithMethod(torch.nn.Module):
        def image_encoder(self):
            return vit

    class WithEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = vit

    for model in (WithModule(), WithMethod(), WithEncoder()):
        assert K.image_encoder_of(model) is vit


def test_loss_ratio_reads_a_history():
    from medmm_lite.train import History

    h = History(steps=list(range(1, 21)), loss=[2.0] * 2 + [1.5] * 16 + [1.0] * 2)
    assert K.loss_ratio(h) == pytest.approx(0.5)
    assert np.isnan(K.loss_ratio(None))


def test_finetuning_uses_a_fraction_of_the_pretraining_rate():
    P = medmm_lite.profile("smoke")
    budget = K.capstone_budget(P)
    assert budget.finetune_lr == pytest.approx(K.FINETUNE_LR_SCALE * budget.P.lr) and budget.finetune_lr < budget.P.lr
    assert "seeds [0, 1, 2]" in budget.describe()


def test_probe_head_is_the_probe_and_a_classifier_starts_as_the_probe():
    from medmm_lite.adapt import linear_probe, predict
    from medmm_lite.models import ImageFeatures

    class Features(torch.nn.Module):
        def __init__(self, scale=1.0, shift=0.0):
            super().__init__()
            self.dim = 5
            self.proj = torch.nn.Linear(16, 5)
            self.scale, self.shift = scale, shift

        def forward(self, images):
            g = self.proj(images.flatten(1)) * self.scale + self.shift
            return ImageFeatures(g, g[:, None])

    torch.manual_seed(0)
    # features that barely vary around a large mean, as a fresh ViT's do
    encoder = Features(scale=1e-3, shift=5.0)
    images = torch.randn(60, 1, 4, 4)
    with torch.no_grad():
        x = encoder(images).global_features
    y = (x[:, :2] > x[:, :2].median(0).values).float()
    probe = linear_probe(x, y, x, steps=30, seed=0, device="cpu")
    head = K.probe_head(probe)
    with torch.no_grad():
        assert torch.allclose(torch.sigmoid(head(x)), probe.test_scores, atol=1e-5)
    assert not any(p.requires_grad for p in head[0].parameters()), "the standardisation is fixed"
    model = K.classifier_from_probe(encoder, head)
    assert model.encoder is not encoder and model.head is not head
    assert torch.allclose(predict(model, images), probe.test_scores, atol=1e-4)
    assert K.classifier_from_probe(encoder).head.out_features == 9
