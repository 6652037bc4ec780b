"""The numbers the lessons report, and how sure we can be of them.

Standard classification metrics are thin wrappers over scikit-learn (well
tested, and what papers use). What the course teaches is written out here:
Dice, PSNR and SSIM for images, recall@K and precision@K for retrieval, BLEU
and ROUGE-L for generated text, and the bootstrap for confidence intervals.

AUROC is computed in one place: :func:`weighted_auroc` (per finding; scikit-learn's
``roc_auc_score`` underneath, or every bootstrap resample at once when given row weights), with
:func:`auroc` (a dict per finding) and :func:`macro_auroc` (the mean) on top; a finding with one
class has no AUROC and is skipped. Intervals: :func:`bootstrap_ci` (any metric, resampling rows)
and :func:`patient_bootstrap_weights` (resampling patients, as weights) with :func:`interval`.

Conventions: inputs may be NumPy arrays, torch tensors or lists; image metrics
take torch tensors (``(B, C, H, W)`` batches, or one ``(H, W)``/``(C, H, W)``
image) and compute on the tensors' device; text metrics take lists of strings,
one reference per hypothesis (or a list of references per hypothesis).
"""
from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from typing import Callable, Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from ..data.findings import FINDINGS, PATHOLOGIES


def _to_numpy(x, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as err:  # ragged lists and the like
        raise TypeError(f"{what} must be an array, tensor or list of numbers, got {type(x).__name__}") from err


# --------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------

def _auroc_inputs(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores as checked (N, C) float64 arrays (a 1-D pair is one column)."""
    y = _to_numpy(y_true, "y_true").astype(np.float64)
    s = _to_numpy(y_score, "y_score").astype(np.float64)
    if y.ndim == 1 and s.ndim == 1:
        y, s = y[:, None], s[:, None]
    if y.shape != s.shape or y.ndim != 2:
        raise ValueError(f"y_true has shape {tuple(y.shape)} and y_score {tuple(s.shape)}; they must be the same "
                         f"shape, (N,) or (N, C) with one column per finding")
    if y.shape[0] == 0:
        raise ValueError("auroc got no rows; pass at least one example per class")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y_true must hold only 0 and 1; map uncertain (-1) or missing (NaN) labels first")
    if not np.isfinite(s).all():
        raise ValueError("y_score holds NaN or infinite values; check the model's outputs")
    return y, s


def _auroc_weights(weights, n: int) -> np.ndarray:
    w = _to_numpy(weights, "weights").astype(np.float64, copy=False)
    w = w[None, :] if w.ndim == 1 else w
    if w.ndim != 2 or w.shape[1] != n:
        raise ValueError(f"weights must be (N,) or (B, N) with N = {n} rows, got shape {tuple(w.shape)}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and non-negative (how often each row was drawn)")
    return w


def _column_auroc(y: np.ndarray, s: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """AUROC of each column of checked (N, C) arrays: (C,) with ``w`` None, else (B, C) for (B, N) weights.
    NaN where a column has no positive or no negative (of positive weight)."""
    if w is None:   # one AUROC per column: scikit-learn
        return np.array([roc_auc_score(y[:, j], s[:, j]) if 0 < y[:, j].sum() < len(y) else np.nan
                         for j in range(y.shape[1])], dtype=np.float64)
    # Every weighting at once: the weighted Mann-Whitney statistic (pairs weighted by the product
    # of their weights, ties counted half), which is roc_auc_score(..., sample_weight=w) row by row.
    out = np.empty((w.shape[0], y.shape[1]))
    for j in range(y.shape[1]):
        order = np.argsort(s[:, j], kind="stable")
        sj, positive = s[order, j], y[order, j] > 0.5
        group = np.cumsum(np.r_[True, sj[1:] != sj[:-1]])           # tie group of each sorted row
        pos_group, neg_group = group[positive], group[~positive]
        neg_cum = np.concatenate([np.zeros((len(w), 1)), np.cumsum(w[:, order[~positive]], axis=1)], axis=1)
        below = neg_cum[:, np.searchsorted(neg_group, pos_group, side="left")]    # negative weight below
        upto = neg_cum[:, np.searchsorted(neg_group, pos_group, side="right")]    # ... below or tied
        pos_w = w[:, order[positive]]
        num = 0.5 * (pos_w * (below + upto)).sum(1)                  # below + tied / 2
        den = pos_w.sum(1) * neg_cum[:, -1]
        out[:, j] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def weighted_auroc(labels, scores, weights=None) -> np.ndarray:
    """AUROC of each column (finding), optionally under row weights: the one AUROC of the library.

    Args:
        labels, scores: (N,) or (N, C); 0/1 labels and any scores (logits or probabilities).
        weights: None, (N,) or (B, N) non-negative row weights. A bootstrap resample is a row of
            weights (how many times each row was drawn; :func:`patient_bootstrap_weights`), so
            ``(B, N)`` weights give the AUROC of B resamples in one call.

    Returns (C,) for None or (N,) weights, (B, C) for (B, N) weights. Without weights every
    value is ``sklearn.metrics.roc_auc_score`` of its column; with weights it is the weighted
    Mann-Whitney statistic (the probability that a positive outscores a negative, each pair
    counted with the product of their weights, ties half), which equals ``roc_auc_score`` with
    ``sample_weight`` and, for integer weights, the AUROC of the rows repeated that many times.

    **One class.** A column with no positive or no negative (of positive weight, under weights)
    has no AUROC: its value is NaN. :func:`auroc` lists such findings as ``"skipped"`` and
    :func:`macro_auroc` leaves them out of the mean; that is the convention everywhere in the
    library (lesson tables, fairness subgroups, the capstone).
    """
    y, s = _auroc_inputs(labels, scores)
    if weights is None:
        return _column_auroc(y, s, None)
    w = _auroc_weights(weights, len(y))
    out = _column_auroc(y, s, w)
    return out[0] if np.ndim(weights) == 1 else out


def macro_auroc(labels, scores, weights=None, min_positives: int = 1):
    """Mean AUROC over the findings that have both classes: a float, or one per row of weights.

    A finding counts when the (unweighted) labels hold at least ``min_positives`` positives and
    at least one negative; the others are left out (see :func:`weighted_auroc` on one class). With
    (B, N) ``weights`` (bootstrap resamples) it returns a (B,) array: in each resample the mean
    over the counted findings still defined there, NaN where none is (an undefined resample,
    which :func:`interval` drops). Raises ValueError when no finding counts at all.

    ``macro_auroc(y, s)`` equals ``auroc(y, s)["macro"]`` (with the default ``min_positives``).
    """
    y, s = _auroc_inputs(labels, scores)
    if isinstance(min_positives, bool) or not isinstance(min_positives, (int, np.integer)) or min_positives < 1:
        raise ValueError(f"min_positives must be a positive int, got {min_positives!r}")
    positives = y.sum(0)
    keep = (positives >= min_positives) & (positives < len(y))
    if not keep.any():
        raise ValueError(f"AUROC is undefined here: no column of y_true holds both classes (with at least "
                         f"{min_positives} positive(s)) in its {len(y)} rows; evaluate on more examples")
    w = None if weights is None else _auroc_weights(weights, len(y))
    per = _column_auroc(y[:, keep], s[:, keep], w)
    if per.ndim == 1:
        return float(per.mean())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # a resample where no finding is defined: NaN
        values = np.nanmean(per, axis=1)
    return float(values[0]) if np.ndim(weights) == 1 else values


def auroc(y_true, y_score, names: Sequence[str] | None = None) -> dict:
    """Area under the ROC curve per column (finding), and their mean.

    ``y_true`` holds 0/1 labels and ``y_score`` any scores (logits or
    probabilities), both ``(N,)`` or ``(N, C)``. A column whose labels are all
    one class has no AUROC; it is left out of the mean and listed under
    ``"skipped"`` (the library's convention, see :func:`weighted_auroc`). Column
    names default to ``FINDINGS`` (C = 10), ``PATHOLOGIES`` (C = 9) or ``"0", "1", ...``.
    Each value is ``sklearn.metrics.roc_auc_score`` of its column.

    Returns ``{"macro": float, "per_finding": {name: float}, "skipped": [name]}``.
    """
    y, s = _auroc_inputs(y_true, y_score)
    n_cols = y.shape[1]
    if names is None:
        names = FINDINGS if n_cols == len(FINDINGS) else PATHOLOGIES if n_cols == len(PATHOLOGIES) else \
            [str(j) for j in range(n_cols)]
    names = list(names)
    if len(names) != n_cols:
        raise ValueError(f"names has {len(names)} entries but the labels have {n_cols} columns")
    per = _column_auroc(y, s, None)
    per_finding = {name: float(v) for name, v in zip(names, per) if not np.isnan(v)}
    skipped = [name for name, v in zip(names, per) if np.isnan(v)]
    if not per_finding:
        raise ValueError(f"AUROC is undefined here: every column of y_true holds a single class "
                         f"({len(y)} rows); evaluate on more examples")
    return {"macro": float(np.mean(list(per_finding.values()))), "per_finding": per_finding, "skipped": skipped}


def f1(y_true, y_pred, average: str | None = "macro", zero_division: float = 0.0):
    """F1 of hard predictions (``sklearn.metrics.f1_score``); multi-label works column-wise."""
    return f1_score(_to_numpy(y_true, "y_true"), _to_numpy(y_pred, "y_pred"), average=average,
                    zero_division=zero_division)


def accuracy(y_true, y_pred) -> float:
    """Fraction of exact matches (``sklearn.metrics.accuracy_score``); labels may be strings (VQA answers)."""
    return float(accuracy_score(_to_numpy(y_true, "y_true"), _to_numpy(y_pred, "y_pred")))


# --------------------------------------------------------------------------------------
# Segmentation and image quality
# --------------------------------------------------------------------------------------

def _pair(pred, target, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    if pred.shape != target.shape:
        raise ValueError(f"{what}: the two inputs must have the same shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    dtype = torch.float64 if torch.float64 in (pred.dtype, target.dtype) else torch.float32
    return pred.to(dtype), target.to(device=pred.device, dtype=dtype)


def dice(pred_mask, true_mask, eps: float = 1e-6) -> torch.Tensor:
    """Dice overlap ``2|A and B| / (|A| + |B|)`` of each mask in a batch, shape ``(B,)``.

    The first dimension is the batch (pass ``mask[None]`` for one mask). Masks
    are 0/1, or probabilities in [0, 1] for a "soft" Dice. ``eps`` in numerator
    and denominator makes two empty masks agree perfectly (Dice 1).
    """
    pred, true = _pair(pred_mask, true_mask, "dice")
    if pred.ndim < 2:
        raise ValueError(f"dice expects a batch (B, ...) of masks, got shape {tuple(pred.shape)}; "
                         f"use mask[None] for a single mask")
    for name, m in (("pred_mask", pred), ("true_mask", true)):
        if m.numel() and (m.min() < 0 or m.max() > 1):
            raise ValueError(f"{name} must hold values in [0, 1] (binary masks or probabilities), "
                             f"got range [{m.min().item():.3g}, {m.max().item():.3g}]")
    pred, true = pred.flatten(1), true.flatten(1)
    return (2 * (pred * true).sum(1) + eps) / (pred.sum(1) + true.sum(1) + eps)


def _per_image(x: torch.Tensor, what: str) -> torch.Tensor:
    """(H, W) -> (1, 1, H, W); (C, H, W) -> (1, C, H, W); (B, C, H, W) unchanged."""
    if x.ndim == 2:
        return x[None, None]
    if x.ndim == 3:
        return x[None]
    if x.ndim == 4:
        return x
    raise ValueError(f"{what} expects images (H, W), (C, H, W) or a batch (B, C, H, W), got shape {tuple(x.shape)}")


def _reduce(values: torch.Tensor, reduction: str):
    if reduction == "mean":
        return float(values.mean())
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def psnr(pred, target, data_range: float = 1.0, reduction: str = "mean"):
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range**2 / MSE)``, per image.

    ``reduction="mean"`` returns the mean over the batch as a float (identical
    images give ``inf``); ``"none"`` returns one value per image, shape ``(B,)``.
    """
    pred, target = _pair(pred, target, "psnr")
    pred, target = _per_image(pred, "psnr"), _per_image(target, "psnr")
    if data_range <= 0:
        raise ValueError(f"data_range must be positive (1.0 for images in [0, 1]), got {data_range}")
    mse = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    return _reduce(10 * torch.log10(data_range ** 2 / mse), reduction)


def _gaussian_window(size: int, sigma: float, dtype, device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(pred, target, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03, reduction: str = "mean"):
    """Structural similarity (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5).

    Around every pixel, a Gaussian window gives local means, variances and the
    covariance of the two images, and

        SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))

    with ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``, ``L = data_range``. The map is
    averaged over the positions where the window fits inside the image, and over
    channels. This is ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=L)``.
    """
    x, y = _pair(pred, target, "ssim")
    x, y = _per_image(x, "ssim"), _per_image(y, "ssim")
    if data_range <= 0:
        raise ValueError(f"data_range must be positive (1.0 for images in [0, 1]), got {data_range}")
    if win_size % 2 == 0 or win_size < 3:
        raise ValueError(f"win_size must be an odd number >= 3, got {win_size}")
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"images of size {tuple(x.shape[-2:])} are smaller than the {win_size}x{win_size} "
                         f"window; pass a smaller odd win_size")
    channels = x.shape[1]
    window = _gaussian_window(win_size, sigma, x.dtype, x.device).expand(channels, 1, win_size, win_size)

    def local_mean(img):  # depthwise "valid" convolution: only windows that fit
        return torch.nn.functional.conv2d(img, window, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x ** 2
    var_y = local_mean(y * y) - mu_y ** 2
    cov_xy = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return _reduce(ssim_map.mean(dim=(1, 2, 3)), reduction)


# --------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------

def _similarity(similarity) -> torch.Tensor:
    sim = torch.as_tensor(similarity)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be a (queries, candidates) matrix, got shape {tuple(sim.shape)}")
    sim = sim.float() if not sim.is_floating_point() else sim
    if not torch.isfinite(sim).all():
        raise ValueError("similarity holds NaN or infinite values")
    return sim


def retrieval_recall_at_k(similarity, k, targets=None):
    """Recall@K: the fraction of queries whose match is among the K most similar candidates.

    ``similarity`` is ``(Nq, Nc)``, e.g. image embeddings @ report embeddings.T.
    ``targets`` says which candidates match: ``None`` (query i matches candidate
    i, the diagonal of a paired batch), a ``(Nq,)`` vector of candidate indices,
    or a ``(Nq, Nc)`` boolean matrix (several matches allowed; any one counts).
    Ties are counted in the query's favour. ``k`` an int gives a float; a list
    of ints gives ``{k: recall}``.
    """
    sim = _similarity(similarity)
    n_queries, n_candidates = sim.shape
    ks = [k] if isinstance(k, int) else list(k)
    for kk in ks:
        if not isinstance(kk, int) or not 1 <= kk <= n_candidates:
            raise ValueError(f"k must be an int between 1 and the number of candidates ({n_candidates}), got {kk!r}")
    if targets is None:
        if n_queries > n_candidates:
            raise ValueError(f"the default targets pair query i with candidate i, but there are {n_queries} "
                             f"queries and only {n_candidates} candidates; pass targets")
        targets = torch.arange(n_queries, device=sim.device)
    targets = torch.as_tensor(targets, device=sim.device)
    if targets.ndim == 1:
        if targets.shape[0] != n_queries or targets.dtype in (torch.bool, torch.float32, torch.float64):
            raise ValueError(f"targets as a vector must hold {n_queries} integer candidate indices, "
                             f"got shape {tuple(targets.shape)} and dtype {targets.dtype}")
        if targets.min() < 0 or targets.max() >= n_candidates:
            raise ValueError(f"targets hold indices outside [0, {n_candidates})")
        relevant = torch.zeros_like(sim, dtype=torch.bool)
        relevant[torch.arange(n_queries, device=sim.device), targets.long()] = True
    elif targets.shape == sim.shape:
        relevant = targets.bool()
        if not relevant.any(1).all():
            raise ValueError("every query needs at least one matching candidate in targets")
    else:
        raise ValueError(f"targets must be (Nq,) indices or a (Nq, Nc) = {tuple(sim.shape)} boolean matrix, "
                         f"got shape {tuple(targets.shape)}")
    best_match = sim.masked_fill(~relevant, float("-inf")).max(1).values
    rank = (sim > best_match[:, None]).sum(1)  # candidates strictly above the best match: all non-matches
    recalls = {kk: float((rank < kk).float().mean()) for kk in ks}
    return recalls[k] if isinstance(k, int) else recalls


def precision_at_k(similarity, query_labels, candidate_labels, k: int) -> float:
    """Precision@K for retrieval by findings, averaged over queries.

    A retrieved candidate is relevant when it shares at least one positive label
    with the query (any column of the multi-hot labels, "No Finding" included
    when present, so a normal study retrieving a normal study counts). Ties in
    similarity keep the candidates' order.
    """
    sim = _similarity(similarity)
    q = torch.as_tensor(query_labels, device=sim.device).float()
    c = torch.as_tensor(candidate_labels, device=sim.device).float()
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
        raise ValueError(f"query_labels and candidate_labels must be (N, L) multi-hot matrices with the same L, "
                         f"got {tuple(q.shape)} and {tuple(c.shape)}")
    if (q.shape[0], c.shape[0]) != tuple(sim.shape):
        raise ValueError(f"similarity is {tuple(sim.shape)} but there are {q.shape[0]} query and {c.shape[0]} "
                         f"candidate label rows")
    if not isinstance(k, int) or not 1 <= k <= sim.shape[1]:
        raise ValueError(f"k must be an int between 1 and the number of candidates ({sim.shape[1]}), got {k!r}")
    relevant = (q @ c.T) > 0
    top_k = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :k]
    return float(relevant.gather(1, top_k).float().mean())


# --------------------------------------------------------------------------------------
# Generated text
# --------------------------------------------------------------------------------------

_BLEU_TOKEN = re.compile(r"\w+|[^\w\s]")   # words and single punctuation marks
_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")    # words only, as the rouge-score package


def _text_pairs(references, hypotheses) -> list[tuple[list[str], str]]:
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise TypeError("references and hypotheses must be lists of strings, got a single str; wrap it in a list")
    references, hypotheses = list(references), list(hypotheses)
    if len(references) != len(hypotheses):
        raise ValueError(f"references and hypotheses must pair up one to one, got {len(references)} references "
                         f"and {len(hypotheses)} hypotheses")
    pairs = []
    for i, (ref, hyp) in enumerate(zip(references, hypotheses)):
        refs = [ref] if isinstance(ref, str) else list(ref) if isinstance(ref, (list, tuple)) else None
        if refs is None or not refs or not all(isinstance(r, str) for r in refs):
            raise TypeError(f"references[{i}] must be a string or a non-empty list of strings, got {ref!r:.80}")
        if not isinstance(hyp, str):
            raise TypeError(f"hypotheses[{i}] must be a string, got {type(hyp).__name__}")
        pairs.append((refs, hyp))
    return pairs


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(references, hypotheses, max_n: int = 4) -> float:
    """Corpus BLEU (Papineni et al. 2002) with uniform weights over 1..max_n-grams.

    n-gram precisions are pooled over the corpus, each hypothesis n-gram
    counting at most as often as it appears in a reference ("clipping"); the
    geometric mean is multiplied by the brevity penalty ``exp(1 - r/c)`` when the
    hypotheses (c tokens) are shorter than the references (r tokens, the closest
    reference length per hypothesis). Text is lowercased and split into words
    and punctuation marks. No smoothing: a corpus with no matching n-gram of
    some order scores 0. ``max_n=1`` gives BLEU-1, ``max_n=4`` BLEU-4. In [0, 1].
    """
    if not isinstance(max_n, int) or max_n < 1:
        raise ValueError(f"max_n must be a positive int, got {max_n!r}")
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for refs, hyp in _text_pairs(references, hypotheses):
        h = _BLEU_TOKEN.findall(hyp.lower())
        rs = [_BLEU_TOKEN.findall(r.lower()) for r in refs]
        hyp_len += len(h)
        ref_len += min((len(r) for r in rs), key=lambda n: (abs(n - len(h)), n))
        for n in range(1, max_n + 1):
            max_ref_counts = Counter()
            for r in rs:
                max_ref_counts |= _ngrams(r, n)
            matches[n - 1] += sum(min(c, max_ref_counts[g]) for g, c in _ngrams(h, n).items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    if min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence, by dynamic programming over one row at a time."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)          # row[j]: LCS of the words of a seen so far and b[:j]
    for x in a:
        up_left = 0                   # the previous row's value one column to the left
        for j, y in enumerate(b, 1):
            up = row[j]
            row[j] = up_left + 1 if x == y else max(up, row[j - 1])
            up_left = up
    return row[-1]


def rouge_l(references, hypotheses, beta: float = 1.0) -> float:
    """ROUGE-L (Lin 2004): LCS-based F-measure per pair, averaged over pairs.

    With L the longest common subsequence of words, P = L / len(hypothesis),
    R = L / len(reference) and F = (1 + beta^2) P R / (R + beta^2 P); beta = 1
    (the rouge-score package's F1; the COCO caption toolkit uses 1.2). Words are
    lowercase alphanumeric runs. With several references, the best F counts.
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    scores = []
    for refs, hyp in _text_pairs(references, hypotheses):
        h = _ROUGE_TOKEN.findall(hyp.lower())
        best = 0.0
        for ref in refs:
            r = _ROUGE_TOKEN.findall(ref.lower())
            lcs = _lcs_length(h, r) if h and r else 0
            if lcs:
                p, rec = lcs / len(h), lcs / len(r)
                best = max(best, (1 + beta ** 2) * p * rec / (rec + beta ** 2 * p))
        scores.append(best)
    if not scores:
        raise ValueError("rouge_l needs at least one reference/hypothesis pair, got none")
    return float(np.mean(scores))


# --------------------------------------------------------------------------------------
# Confidence intervals
# --------------------------------------------------------------------------------------

def _take(array, rows: np.ndarray):
    if isinstance(array, torch.Tensor):
        return array[torch.as_tensor(rows, device=array.device)]
    if isinstance(array, np.ndarray):
        return array[rows]
    if isinstance(array, (list, tuple)):
        return [array[i] for i in rows]
    raise TypeError(f"bootstrap_ci resamples NumPy arrays, torch tensors and lists, got {type(array).__name__}")


def _as_number(value) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    if isinstance(value, (int, float, np.integer, np.floating)) or (isinstance(value, np.ndarray) and value.size == 1):
        return float(value)
    raise TypeError(f"metric_fn must return a single number, got {type(value).__name__}; for a metric that "
                    f"returns a dict wrap it, e.g. lambda y, s: auroc(y, s)['macro']")


def bootstrap_ci(metric_fn: Callable, *arrays, n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float, float]:
    """A metric and its percentile bootstrap confidence interval.

    Draws ``n_boot`` resamples of the rows (the same rows from every array, so
    labels stay with their predictions), evaluates ``metric_fn(*resampled)``
    on each, and returns ``(point, low, high)``: the metric on the data as given
    and the ``alpha/2`` and ``1 - alpha/2`` percentiles. All row indices are
    drawn at once from ``np.random.default_rng(seed)``, so a seed repeats
    exactly. Resamples on which the metric is undefined (it raises ValueError,
    e.g. AUROC with one class, or returns NaN) are skipped, with a warning when
    more than 10% are.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array to resample, e.g. bootstrap_ci(fn, y_true, y_score)")
    lengths = [len(a) for a in arrays]
    if len(set(lengths)) != 1:
        raise ValueError(f"every array must have the same number of rows, got {lengths}")
    n = lengths[0]
    if n < 2:
        raise ValueError(f"bootstrap_ci needs at least 2 rows to resample, got {n}")
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), e.g. 0.05 for a 95% interval, got {alpha}")
    point = _as_number(metric_fn(*arrays))
    rows = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    stats = []
    for sample_rows in rows:
        try:
            value = _as_number(metric_fn(*(_take(a, sample_rows) for a in arrays)))
        except ValueError:
            continue
        if not math.isnan(value):
            stats.append(value)
    skipped = n_boot - len(stats)
    if not stats:
        raise ValueError(f"the metric was undefined on all {n_boot} resamples; is there enough data "
                         f"(e.g. both classes) for it?")
    if skipped > 0.1 * n_boot:
        warnings.warn(f"bootstrap_ci skipped {skipped} of {n_boot} resamples where the metric was undefined; "
                      f"the interval rests on the other {len(stats)}", RuntimeWarning, stacklevel=2)
    low, high = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return point, float(low), float(high)


def patient_bootstrap_weights(patient_ids, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_boot, N) row weights of a patient-level bootstrap: the one resampler of the library.

    Each resample draws as many patients as there are, with replacement, and every row (study)
    of a patient drawn k times gets weight k, so a patient's studies always come together. The
    draw is one ``(n_boot, n_patients)`` matrix of patient indices from
    ``np.random.default_rng(seed)``: the same ``patient_ids`` and ``seed`` give the same resamples
    (score several models or groups on them to pair a comparison). Pass ``np.arange(N)`` (every
    row its own patient) for a plain row bootstrap: its resamples are the ones
    :func:`bootstrap_ci` draws with the same ``seed``. Feed the weights to
    :func:`weighted_auroc` / :func:`macro_auroc` and summarise with :func:`interval`.
    """
    pid = _to_numpy(patient_ids, "patient_ids")
    if pid.ndim != 1 or len(pid) < 1:
        raise ValueError(f"patient_ids must be a 1-D array with one id per row, got shape {pid.shape}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
    _, patient_of_row = np.unique(pid, return_inverse=True)
    patient_of_row = patient_of_row.reshape(-1)
    n_patients = int(patient_of_row.max()) + 1
    drawn = np.random.default_rng(seed).integers(0, n_patients, size=(int(n_boot), n_patients))
    flat = (drawn + n_patients * np.arange(int(n_boot))[:, None]).ravel()
    counts = np.bincount(flat, minlength=int(n_boot) * n_patients).reshape(int(n_boot), n_patients)
    return counts[:, patient_of_row].astype(np.float64)


def interval(boot, alpha: float = 0.05) -> tuple[float, float]:
    """The percentile interval ``(low, high)`` of bootstrap values; NaNs (undefined resamples) are
    dropped, and an all-NaN input gives ``(nan, nan)``."""
    boot = np.asarray(boot, np.float64)
    boot = boot[np.isfinite(boot)]
    if not len(boot):
        return float("nan"), float("nan")
    return float(np.quantile(boot, alpha / 2)), float(np.quantile(boot, 1 - alpha / 2))
