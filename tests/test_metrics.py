"""Metrics against scikit-learn, SciPy and hand-computed values; bad input; the bootstrap."""
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from medmm_lite.data.findings import FINDINGS
from medmm_lite.eval import (accuracy, auroc, bleu, bootstrap_ci, dice, f1, precision_at_k, psnr,
                             retrieval_recall_at_k, rouge_l, ssim)


# ------------------------------------------------------------------ classification

def test_auroc_matches_sklearn_per_column_and_skips_single_class():
    rng = np.random.default_rng(0)
    y = (rng.random((200, len(FINDINGS))) < 0.3).astype(np.float32)
    y[:, 4] = 0                                  # Lung Lesion: no positives
    scores = y * 0.8 + rng.normal(size=y.shape)
    out = auroc(y, scores)
    assert out["skipped"] == [FINDINGS[4]]
    assert list(out["per_finding"]) == [n for n in FINDINGS if n != FINDINGS[4]]
    for j, name in enumerate(FINDINGS):
        if j != 4:
            assert out["per_finding"][name] == pytest.approx(roc_auc_score(y[:, j], scores[:, j]))
    assert out["macro"] == pytest.approx(np.mean(list(out["per_finding"].values())))
    torch_out = auroc(torch.from_numpy(y), torch.from_numpy(scores))
    assert torch_out["macro"] == pytest.approx(out["macro"])


def test_auroc_single_column_and_names():
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert auroc(y, s)["macro"] == pytest.approx(0.75)
    out = auroc(np.array([[0, 1], [1, 0], [1, 1]]), np.array([[0.2, 0.9], [0.7, 0.1], [0.9, 0.8]]), names=["a", "b"])
    assert out["per_finding"] == {"a": 1.0, "b": 1.0}


@pytest.mark.parametrize("y,s,match", [
    (np.zeros((4, 2)), np.zeros((4, 3)), "same shape"),
    (np.array([0, 1, -1]), np.array([0.1, 0.2, 0.3]), "only 0 and 1"),
    (np.array([0, 1, 1]), np.array([0.1, np.nan, 0.3]), "NaN"),
    (np.ones((5, 2)), np.zeros((5, 2)), "single class"),
])
def test_auroc_bad_input(y, s, match):
    with pytest.raises(ValueError, match=match):
        auroc(y, s)


def test_auroc_names_length_checked():
    with pytest.raises(ValueError, match="names has 1"):
        auroc(np.array([[0, 1], [1, 0]]), np.zeros((2, 2)), names=["only one"])


def test_f1_and_accuracy_wrap_sklearn():
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 2, (50, 4)), rng.integers(0, 2, (50, 4))
    assert f1(y, p) == pytest.approx(f1_score(y, p, average="macro"))
    micro = f1(torch.from_numpy(y), torch.from_numpy(p), average="micro")
    assert micro == pytest.approx(f1_score(y, p, average="micro"))
    assert accuracy(y[:, 0], p[:, 0]) == pytest.approx(accuracy_score(y[:, 0], p[:, 0]))
    assert accuracy(["yes", "no", "no"], ["yes", "yes", "no"]) == pytest.approx(2 / 3)


# ------------------------------------------------------------------ masks and images

def test_dice_hand_values():
    pred = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [0.5, 0.5, 0, 0]])
    true = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]])
    d = dice(pred, true)
    assert d.shape == (3,)
    assert d[0].item() == pytest.approx(0.5, abs=1e-6)      # 2*1 / (2 + 2)
    assert d[1].item() == pytest.approx(1.0)                # both empty: agree
    assert d[2].item() == pytest.approx(2 / 3, abs=1e-6)    # soft: 2*1 / (1 + 2)


def test_dice_equals_f1_of_pixels():
    rng = np.random.default_rng(2)
    pred, true = rng.random((4, 1, 16, 16)) < 0.4, rng.random((4, 1, 16, 16)) < 0.4
    d = dice(torch.from_numpy(pred), torch.from_numpy(true), eps=0.0)
    for i in range(4):
        assert d[i].item() == pytest.approx(f1_score(true[i].ravel(), pred[i].ravel()), abs=1e-6)


def test_dice_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        dice(torch.zeros(2, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dice(torch.full((1, 4), 2.0), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="batch"):
        dice(torch.zeros(4), torch.zeros(4))


def test_psnr_hand_values():
    target = torch.zeros(2, 1, 8, 8)
    pred = target + torch.tensor([0.1, 0.01]).view(2, 1, 1, 1)    # MSE 1e-2 and 1e-4
    per_image = psnr(pred, target, reduction="none")
    assert per_image.shape == (2,)
    assert per_image.tolist() == pytest.approx([20.0, 40.0], abs=1e-4)
    assert psnr(pred, target) == pytest.approx(30.0, abs=1e-4)
    assert psnr(torch.full((8, 8), 105.0), torch.full((8, 8), 100.0), data_range=255.0) == \
        pytest.approx(10 * math.log10(255 ** 2 / 25), abs=1e-4)
    assert psnr(target, target) == math.inf


def test_psnr_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(8, 8), torch.zeros(8, 9))
    with pytest.raises(ValueError, match="data_range"):
        psnr(torch.zeros(8, 8), torch.zeros(8, 8), data_range=0)
    with pytest.raises(ValueError, match="reduction"):
        psnr(torch.zeros(8, 8), torch.ones(8, 8), reduction="sum")


def _ssim_reference(x, y, data_range=1.0, sigma=1.5, truncate=3.5):
    """SSIM as scikit-image computes it (gaussian_weights=True, use_sample_covariance=False),
    with SciPy's separable Gaussian filter instead of our convolution."""
    blur = lambda img: gaussian_filter(img, sigma=sigma, truncate=truncate, mode="reflect")  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    pad = int(truncate * sigma + 0.5)          # skimage crops the border the window does not fit
    return s[pad:-pad, pad:-pad].mean()


def test_ssim_matches_scipy_reference():
    rng = np.random.default_rng(3)
    x = rng.random((40, 48))
    y = np.clip(x + rng.normal(scale=0.2, size=x.shape), 0, 1)
    smooth = gaussian_filter(x, 3)
    for a, b in ((x, y), (x, smooth), (y, 1 - y)):
        assert ssim(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(_ssim_reference(a, b), abs=1e-10)
    assert ssim(torch.from_numpy(x * 255), torch.from_numpy(y * 255), data_range=255.0) == \
        pytest.approx(_ssim_reference(x * 255, y * 255, data_range=255.0), abs=1e-10)


def test_ssim_hand_values_and_batching():
    x = torch.rand(3, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-5)
    a, b = 0.2, 0.6                                       # constant images: only the luminance term remains
    c1 = 0.01 ** 2
    expected = (2 * a * b + c1) / (a ** 2 + b ** 2 + c1)
    assert ssim(torch.full((16, 16), a, dtype=torch.float64), torch.full((16, 16), b, dtype=torch.float64)) == \
        pytest.approx(expected, abs=1e-12)
    per_image = ssim(x, x.flip(-1), reduction="none")
    assert per_image.shape == (3,)
    assert ssim(x, x.flip(-1)) == pytest.approx(per_image.mean().item(), abs=1e-6)
    assert ssim(x[0], x[0].flip(-1)) == pytest.approx(per_image[0].item(), abs=1e-6)   # (C, H, W) = one image
    assert ssim(x, x.flip(-1)) == pytest.approx(ssim(x.flip(-1), x), abs=1e-6)        # symmetric


def test_ssim_against_skimage_if_installed():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(4)
    x = rng.random((32, 32))
    y = np.clip(x + rng.normal(scale=0.1, size=x.shape), 0, 1)
    expected = metrics.structural_similarity(x, y, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                             use_sample_covariance=False)
    assert ssim(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(expected, abs=1e-8)


def test_ssim_bad_input():
    with pytest.raises(ValueError, match="smaller than"):
        ssim(torch.zeros(8, 8), torch.zeros(8, 8))
    with pytest.raises(ValueError, match="odd"):
        ssim(torch.zeros(16, 16), torch.zeros(16, 16), win_size=4)
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.zeros(16, 16), torch.zeros(1, 16, 16))


# ------------------------------------------------------------------ retrieval

def test_recall_at_k_hand_values():
    sim = torch.tensor([[0.9, 0.1, 0.0],      # query 0: match (0) ranked 1st
                        [0.8, 0.5, 0.9],      # query 1: match (1) ranked 3rd
                        [0.1, 0.7, 0.6]])     # query 2: match (2) ranked 2nd
    assert retrieval_recall_at_k(sim, 1) == pytest.approx(1 / 3)
    assert retrieval_recall_at_k(sim, [1, 2, 3]) == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 1.0})
    assert retrieval_recall_at_k(sim, 1, targets=[0, 2, 1]) == pytest.approx(1.0)
    several = torch.tensor([[False, True, True], [True, False, False], [False, False, True]])
    assert retrieval_recall_at_k(sim, 1, targets=several) == pytest.approx(0.0)   # 2nd, 2nd, 2nd
    assert retrieval_recall_at_k(sim, 2, targets=several) == pytest.approx(1.0)
    assert retrieval_recall_at_k(torch.ones(2, 2), 1) == 1.0                       # ties favour the query


def test_recall_at_k_matches_topk():
    sim = torch.randn(30, 40, generator=torch.Generator().manual_seed(5))
    for k in (1, 5, 10):
        top = sim.topk(k, dim=1).indices
        expected = (top == torch.arange(30)[:, None]).any(1).float().mean().item()
        assert retrieval_recall_at_k(sim, k) == pytest.approx(expected)
        assert retrieval_recall_at_k(sim.numpy(), k) == pytest.approx(expected)


def test_recall_at_k_bad_input():
    with pytest.raises(ValueError, match="between 1 and"):
        retrieval_recall_at_k(torch.zeros(3, 3), 4)
    with pytest.raises(ValueError, match="pass targets"):
        retrieval_recall_at_k(torch.zeros(4, 3), 1)
    with pytest.raises(ValueError, match="NaN"):
        retrieval_recall_at_k(torch.tensor([[float("nan")]]), 1)
    with pytest.raises(ValueError, match="at least one matching"):
        retrieval_recall_at_k(torch.zeros(2, 2), 1, targets=torch.tensor([[True, False], [False, False]]))


def test_precision_at_k():
    sim = torch.tensor([[0.9, 0.8, 0.1, 0.5],
                        [0.1, 0.2, 0.9, 0.8]])
    q = torch.tensor([[1, 0, 0], [0, 0, 1]])
    c = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]])
    # query 0 retrieves 0 (shares col 0), 1 (no): 1/2; query 1 retrieves 2 (col 2), 3 (col 2): 2/2
    assert precision_at_k(sim, q, c, 2) == pytest.approx(0.75)
    assert precision_at_k(sim, q, c, 1) == pytest.approx(1.0)
    rng = np.random.default_rng(6)
    sim, q, c = rng.normal(size=(10, 25)), rng.random((10, 5)) < 0.3, rng.random((25, 5)) < 0.3
    brute = np.mean([np.mean([(q[i] & c[j]).any() for j in np.argsort(-sim[i], kind="stable")[:5]])
                     for i in range(10)])
    assert precision_at_k(sim, q, c, 5) == pytest.approx(brute)


def test_precision_at_k_bad_input():
    with pytest.raises(ValueError, match="same L"):
        precision_at_k(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(3, 5), 1)
    with pytest.raises(ValueError, match="candidate label rows"):
        precision_at_k(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(4, 4), 1)
    with pytest.raises(ValueError, match="between 1 and"):
        precision_at_k(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(3, 4), 0)


# ------------------------------------------------------------------ generated text

REF, HYP = "the cat is on the mat", "the cat sat on the mat"
# unigrams 5/6 (sat unmatched), bigrams 3/5, trigrams 1/4 (on the mat), 4-grams 0/3


def test_bleu_hand_values():
    assert bleu([REF], [HYP], max_n=1) == pytest.approx(5 / 6)
    assert bleu([REF], [HYP], max_n=2) == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert bleu([REF], [HYP], max_n=3) == pytest.approx(0.5)            # (5/6 * 3/5 * 1/4) ** (1/3)
    assert bleu([REF], [HYP], max_n=4) == 0.0                           # no matching 4-gram, no smoothing
    assert bleu([REF], [REF]) == pytest.approx(1.0)
    assert bleu(["The cat sat on the mat."], ["the cat sat on the mat ."]) == pytest.approx(1.0)  # tokenisation
    # brevity penalty: 2 of 6 tokens, all matching -> exp(1 - 6/2)
    assert bleu(["the cat sat on the mat"], ["the cat"], max_n=2) == pytest.approx(math.exp(-2))


def test_bleu_pools_over_the_corpus_and_clips_with_several_references():
    refs, hyps = [REF, "no effusion"], [HYP, "no effusion"]
    # pooled unigrams (5 + 2) / (6 + 2), bigrams (3 + 1) / (5 + 1)
    assert bleu(refs, hyps, max_n=2) == pytest.approx(math.sqrt(7 / 8 * 4 / 6))
    # Papineni et al.'s example: "the" counts at most twice (its count in the first reference)
    refs = [["the cat is on the mat", "there is a cat on the mat"]]
    assert bleu(refs, ["the the the the the the the"], max_n=1) == pytest.approx(2 / 7)


def test_bleu_against_nltk_if_installed():
    bleu_score = pytest.importorskip("nltk.translate.bleu_score")
    refs = ["the heart is normal in size .", "small left pleural effusion .", "no pneumothorax ."]
    hyps = ["the heart size is normal .", "small left effusion .", "no pneumothorax is seen ."]
    expected = bleu_score.corpus_bleu([[r.split()] for r in refs], [h.split() for h in hyps],
                                      weights=(0.5, 0.5))
    assert bleu(refs, hyps, max_n=2) == pytest.approx(expected)


def test_bleu_against_sacrebleu_if_installed():
    sacrebleu = pytest.importorskip("sacrebleu")
    refs = ["the heart is normal in size .", "small left pleural effusion .", "no pneumothorax is seen ."]
    hyps = ["the heart size is normal .", "small left pleural effusion .", "no pneumothorax is seen here ."]
    expected = sacrebleu.corpus_bleu(hyps, [refs], smooth_method="none", tokenize="none", force=True).score / 100
    assert bleu(refs, hyps) == pytest.approx(expected)


def test_rouge_l_hand_values():
    assert rouge_l([REF], [HYP]) == pytest.approx(5 / 6)           # LCS "the cat on the mat"
    # LCS 2, P = 1, R = 1/3: F1 = 0.5; beta = 2: 5 P R / (R + 4 P) = 5/13
    assert rouge_l(["the cat sat on the mat"], ["the cat"]) == pytest.approx(0.5)
    assert rouge_l(["the cat sat on the mat"], ["the cat"], beta=2.0) == pytest.approx(5 / 13)
    assert rouge_l(["no effusion"], ["cardiomegaly"]) == 0.0
    assert rouge_l(["no effusion"], [""]) == 0.0
    assert rouge_l([REF, "no effusion"], [HYP, "No effusion."]) == pytest.approx((5 / 6 + 1) / 2)
    assert rouge_l([["cardiomegaly", "no effusion"]], ["no effusion"]) == 1.0   # best reference counts


@pytest.mark.parametrize("fn", [bleu, rouge_l])
def test_text_metrics_bad_input(fn):
    with pytest.raises(ValueError, match="2 references and 1 hypotheses"):
        fn(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="single str"):
        fn("a", "a")
    with pytest.raises(TypeError, match=r"hypotheses\[0\]"):
        fn(["a"], [None])



# ------------------------------------------------------------------ the one AUROC (issue 19)

def test_the_one_auroc_is_sklearns_with_a_one_class_finding():
    from medmm_lite.eval.metrics import macro_auroc, weighted_auroc

    rng = np.random.default_rng(3)
    y = (rng.random((150, 6)) < rng.uniform(0.1, 0.5, 6)).astype(float)
    y[:, 2] = 1.0                                        # a finding with one class: no AUROC
    s = np.round(rng.normal(size=y.shape) + y, 1)        # rounded: ties
    expected = [roc_auc_score(y[:, j], s[:, j]) if j != 2 else np.nan for j in range(6)]
    np.testing.assert_allclose(weighted_auroc(y, s), expected, rtol=0, atol=1e-12)
    names = list("abcdef")
    out = auroc(y, s, names=names)
    assert out["skipped"] == ["c"] and out["per_finding"] == {n: expected[j] for j, n in enumerate(names) if j != 2}
    mean = np.mean([e for e in expected if not np.isnan(e)])
    assert isinstance(macro_auroc(y, s), float)
    assert macro_auroc(y, s) == pytest.approx(mean, abs=1e-12) and out["macro"] == pytest.approx(mean, abs=1e-12)
    assert macro_auroc(y[:, 0], s[:, 0]) == pytest.approx(roc_auc_score(y[:, 0], s[:, 0]), abs=1e-12)
    # row weights (bootstrap resamples): roc_auc_score with sample_weight, and the repeated rows
    w = rng.integers(0, 4, size=(5, 150)).astype(float)
    per = weighted_auroc(y, s, w)
    assert per.shape == (5, 6) and np.isnan(per[:, 2]).all()
    for b in range(5):
        rows = np.repeat(np.arange(150), w[b].astype(int))
        for j in (0, 1, 3, 4, 5):
            assert per[b, j] == pytest.approx(roc_auc_score(y[:, j], s[:, j], sample_weight=w[b]), abs=1e-12)
            assert per[b, j] == pytest.approx(roc_auc_score(y[rows, j], s[rows, j]), abs=1e-12)
    np.testing.assert_allclose(macro_auroc(y, s, w), np.nanmean(per, axis=1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(weighted_auroc(y, s, np.ones(150)), weighted_auroc(y, s), rtol=0, atol=1e-12)
    # a resample without a positive in some finding leaves it out; none defined at all: NaN
    only_negatives = np.where(y[:, 0] == 0, 1.0, 0.0)
    assert np.isnan(weighted_auroc(y[:, :1], s[:, :1], only_negatives[None])).all()
    assert np.isnan(macro_auroc(y[:, :1], s[:, :1], only_negatives[None])).all()
    with pytest.raises(ValueError, match="undefined"):
        macro_auroc(y[:, 2], s[:, 2])                    # every finding has one class
    with pytest.raises(ValueError, match="non-negative"):
        weighted_auroc(y, s, -np.ones(150))
    with pytest.raises(ValueError, match="weights must be"):
        weighted_auroc(y, s, np.ones(149))


def test_the_library_has_one_auroc_one_resampler_and_one_probe_head():
    from medmm_lite import capstone as K
    from medmm_lite.adapt.finetune import head_from_probe
    from medmm_lite.eval import fairness as FA
    from medmm_lite.eval import metrics as M

    assert K.macro_auroc is FA.macro_auroc is M.macro_auroc
    assert FA.weighted_auroc is M.weighted_auroc and FA.interval is M.interval
    assert FA.patient_bootstrap_weights is M.patient_bootstrap_weights
    assert K.probe_head is head_from_probe


def test_patient_bootstrap_is_seeded_whole_patients_and_brackets_the_point():
    from medmm_lite.eval.metrics import interval, macro_auroc, patient_bootstrap_weights

    rng = np.random.default_rng(0)
    pid = np.repeat(np.arange(60), rng.integers(1, 4, 60))
    n = len(pid)
    y = (rng.random((n, 4)) < 0.3).astype(float)
    s = y + rng.normal(size=y.shape)
    w = patient_bootstrap_weights(pid, n_boot=300, seed=1)
    assert w.shape == (300, n)
    np.testing.assert_array_equal(w, patient_bootstrap_weights(pid, n_boot=300, seed=1))   # seeded
    assert not np.array_equal(w, patient_bootstrap_weights(pid, n_boot=300, seed=2))
    for p in range(60):                                  # a patient's studies share one draw count
        assert (w[:, pid == p] == w[:, pid == p][:, :1]).all()
    first = np.r_[True, pid[1:] != pid[:-1]]             # one study per patient: each row draws 60 patients
    np.testing.assert_array_equal(w[:, first].sum(1), 60)
    point = macro_auroc(y, s)
    boot = macro_auroc(y, s, w)
    low, high = interval(boot)
    assert low <= point <= high and high - low < 0.3
    assert interval(boot) == interval(macro_auroc(y, s, patient_bootstrap_weights(pid, n_boot=300, seed=1)))
    # every row its own patient: the resamples bootstrap_ci draws with the same seed
    rows = np.arange(n)
    p2, lo2, hi2 = bootstrap_ci(lambda a, b: macro_auroc(a, b), y, s, n_boot=100, seed=5)
    lo3, hi3 = interval(macro_auroc(y, s, patient_bootstrap_weights(rows, n_boot=100, seed=5)))
    assert p2 == pytest.approx(point, abs=1e-12)
    assert (lo3, hi3) == pytest.approx((lo2, hi2), abs=1e-12)
    assert all(np.isnan(interval([np.nan, np.nan])))      # every resample undefined: (nan, nan)
    with pytest.raises(ValueError, match="n_boot"):
        patient_bootstrap_weights(pid, n_boot=0)
    with pytest.raises(ValueError, match="1-D"):
        patient_bootstrap_weights(np.zeros((3, 2)))


# ------------------------------------------------------------------ bootstrap

def test_bootstrap_is_deterministic_and_brackets_the_point():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 300)
    s = y + rng.normal(scale=1.5, size=300)
    metric = lambda a, b: auroc(a, b)["macro"]  # noqa: E731
    point, low, high = bootstrap_ci(metric, y, s, n_boot=200, seed=0)
    assert point == pytest.approx(roc_auc_score(y, s))
    assert low < point < high
    assert bootstrap_ci(metric, y, s, n_boot=200, seed=0) == (point, low, high)
    assert bootstrap_ci(metric, y, s, n_boot=200, seed=1) != (point, low, high)
    torch_result = bootstrap_ci(metric, torch.from_numpy(y), torch.from_numpy(s), n_boot=200, seed=0)
    assert torch_result == pytest.approx((point, low, high))


def test_bootstrap_narrows_with_more_data_and_covers_the_truth():
    rng = np.random.default_rng(8)
    _, lo_small, hi_small = bootstrap_ci(np.mean, rng.normal(size=50), n_boot=300)
    _, lo_big, hi_big = bootstrap_ci(np.mean, rng.normal(size=2000), n_boot=300)
    assert hi_big - lo_big < (hi_small - lo_small) / 3            # ~ sqrt(2000 / 50) = 6.3 times narrower
    # a 95% interval for the mean of N(0, 1) samples should contain 0 about 95% of the time
    covered = 0
    for seed in range(100):
        _, low, high = bootstrap_ci(np.mean, rng.normal(size=100), n_boot=300, seed=seed)
        covered += low <= 0 <= high
    assert 85 <= covered <= 100


def test_bootstrap_resamples_lists_of_reports():
    refs = ["small left effusion", "no pneumothorax", "moderate cardiomegaly", "the lungs are clear"]
    hyps = ["small right effusion", "no pneumothorax", "mild cardiomegaly", "lungs are clear"]
    point, low, high = bootstrap_ci(rouge_l, refs, hyps, n_boot=100)
    assert point == pytest.approx(rouge_l(refs, hyps))
    assert 0 <= low <= point <= high <= 1


def test_bootstrap_skips_undefined_resamples_and_warns():
    y = np.zeros(20)
    y[0] = 1                                       # one positive: many resamples lack it
    s = np.linspace(0, 1, 20)
    metric = lambda a, b: auroc(a, b)["macro"]  # noqa: E731
    with pytest.warns(RuntimeWarning, match="skipped"):
        bootstrap_ci(metric, y, s, n_boot=200)
    with pytest.raises(ValueError, match="undefined on all"):
        bootstrap_ci(lambda a: float("nan"), np.arange(5), n_boot=10)


def test_bootstrap_bad_input():
    with pytest.raises(ValueError, match="same number of rows"):
        bootstrap_ci(np.mean, np.zeros(5), np.zeros(6))
    with pytest.raises(TypeError, match="single number"):
        bootstrap_ci(lambda a, b: auroc(a, b), np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.8]), n_boot=5)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(np.mean, np.zeros(5), alpha=1.5)
    with pytest.raises(ValueError, match="at least one array"):
        bootstrap_ci(np.mean)
