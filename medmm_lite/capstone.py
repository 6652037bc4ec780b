"""The capstone's comparison: image-only vs image-text pretraining, on one backbone and one budget.

The review (Huang, Jensen et al.) found that multimodal pretraining improved downstream AUROC
over single-modality pretraining by 0.050 on average. Lesson 10 measures the same contrast
here, and this module holds the pieces it needs, each small and tested:

* **the arms** (:data:`ARMS`): random init, the image-only objectives (SimCLR, MAE) and the
  image-text ones (CLIP, GLoRIA, M3AE, CoCa), each a recipe of the pretraining registry;
  :func:`available_arms` keeps those that are registered, so the list is data-driven;
* **the budget** (:func:`capstone_budget`): one image size, one width and depth, one number of
  optimiser steps x batch size for every arm, derived from the profile;
* **pretraining and encoders** (:func:`pretrain_arm`, :func:`image_encoder_of`): each recipe
  through ``load_or_train`` (cached), and the image encoder that the lessons probed;
* **evaluation** (:func:`probe_scores`, :func:`finetune_scores`): a linear probe on frozen
  features, and full fine-tuning, at the same label subsets for every arm, scoring the
  validation and the test split;
* **intervals** (:func:`weighted_macro_auroc`, :func:`patient_bootstrap`): a bootstrap that
  resamples test *patients* (all studies of a drawn patient come together) and, in the same
  replicate, the pretraining seeds; the AUROC and the resampler are the library's own
  (:mod:`medmm_lite.eval.metrics`), as is the probe-to-head conversion
  (:func:`medmm_lite.adapt.finetune.head_from_probe`);
* **the verdict** (:func:`best_by_validation`, :func:`improvement_table`): the best image-only
  arm is chosen on the validation split, and each image-text arm's improvement over it is an
  interval from the paired replicates (the review's Figure 5a).
"""
from __future__ import annotations

import copy
import inspect
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .adapt.finetune import Standardize
from .adapt.finetune import head_from_probe as probe_head
from .adapt.probe import extract_features, linear_probe
from .adapt.protocol import LABEL_FRACTIONS, PATHOLOGY_COLUMNS, Classifier, label_subset, predict, train_classifier
from .eval.metrics import interval, macro_auroc, patient_bootstrap_weights
from .profiles import Profile

REVIEW_IMPROVEMENT = 0.050  # the review: multimodal minus single-modality AUROC, on average (10 contrastive studies)
MODALITIES = ("none", "image", "image-text")


# --------------------------------------------------------------------------- the arms
@dataclass(frozen=True)
class Arm:
    """One pretraining arm of the comparison.

    ``objective``: its name in ``medmm_lite.pretrain.registry.OBJECTIVES`` (None: random init).
    ``modality``: ``"none"`` (random init), ``"image"`` (image-only SSL) or ``"image-text"``.
    ``strategy``: the review's family, for the tables and the bar chart.
    """

    name: str
    objective: str | None
    modality: str
    strategy: str
    label: str


ARMS = (
    Arm("random", None, "none", "none", "random init"),
    Arm("simclr", "simclr", "image", "contrastive", "SimCLR"),
    Arm("mae", "mae", "image", "self-prediction", "MAE"),
    Arm("clip", "clip", "image-text", "contrastive (global)", "CLIP"),
    Arm("gloria", "gloria", "image-text", "contrastive (local + global)", "GLoRIA"),
    Arm("m3ae", "m3ae", "image-text", "self-prediction (multimodal masking)", "M3AE"),
    Arm("coca", "coca", "image-text", "combined (contrastive + captioning)", "CoCa"),
)


def available_arms(arms=ARMS, objectives=None) -> list[Arm]:
    """The arms whose objective is registered (random init always is). ``objectives`` defaults
    to the pretraining registry's ``OBJECTIVES``: an arm whose recipe has not landed is left out."""
    if objectives is None:
        from .pretrain.registry import OBJECTIVES as objectives
    return [a for a in arms if a.objective is None or a.objective in objectives]


def arms_of(arms, modality: str) -> list[str]:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return [a.name for a in arms if a.modality == modality]


# --------------------------------------------------------------------------- the budget
@dataclass(frozen=True)
class Budget:
    """What every arm gets: ``P`` (sizes, ``steps`` x ``batch_size`` of pretraining), the
    fine-tuning steps and learning rate, the probe steps, the pretraining seeds and the
    bootstrap replicates."""

    P: Profile
    finetune_steps: int
    finetune_lr: float
    probe_steps: int
    seeds: tuple
    n_boot: int

    def describe(self) -> str:
        P = self.P
        return (f"profile {P.name}: {P.n_studies} studies at {P.image_size} px (patch {P.patch_size}), ViT width "
                f"{P.dim}, depth {P.depth}, {P.heads} heads\n"
                f"pretraining: {P.steps} steps x batch {P.batch_size} per arm and seed, lr {P.lr:g}\n"
                f"linear probe: {self.probe_steps} steps; fine-tuning: {self.finetune_steps} steps x batch "
                f"{P.batch_size}, lr {self.finetune_lr:g}\n"
                f"seeds {list(self.seeds)}; {self.n_boot} bootstrap replicates")


# Chosen by measurement on the course's 2-core machine (lesson 10 prints the times): the profile's
# own sizes do not fit 6 arms x 5 seeds in a lesson's budget, so smoke and cpu shrink the images,
# the model and the steps. Fine-tuning starts its head from the linear probe and uses a quarter of
# the pretraining learning rate: from a random head at the full rate, a few dozen AdamW steps
# scramble a small pretrained ViT's features (smoke: fine-tuned AUROC at chance, below the probe).
_BUDGETS = {
    "smoke": dict(changes=dict(steps=60, batch_size=32), finetune_steps=20, probe_steps=100, n_boot=200,
                  seeds=(0, 1, 2)),
    # Five seeds (issue 20: a seed-to-seed spread needs more than three draws) at the cost three
    # seeds of 300 steps had: 180 pretraining steps and 60 fine-tuning steps per arm and seed.
    "cpu": dict(changes=dict(image_size=32, patch_size=8, dim=64, depth=2, heads=4, steps=180), finetune_steps=60,
                probe_steps=300, n_boot=500, seeds=(0, 1, 2, 3, 4)),
    # Not measured (no GPU on the course's machine): an estimate meant to fit a T4's 10 minutes.
    "gpu": dict(changes=dict(image_size=64, patch_size=8, dim=128, depth=4, heads=4, steps=500), finetune_steps=200,
                probe_steps=500, n_boot=1000, seeds=(0, 1, 2, 3, 4)),
}
FINETUNE_LR_SCALE = 0.25


def capstone_budget(P: Profile, *, seeds=None, steps: int | None = None, full_size: bool = False,
                    finetune_steps: int | None = None, n_boot: int | None = None) -> Budget:
    """The capstone's budget for profile ``P``.

    By default the sizes and steps of ``_BUDGETS[P.name]`` (smaller than ``P``'s for smoke and
    cpu, so 6 arms x 5 seeds fit); ``full_size=True`` keeps ``P``'s own sizes and steps (what
    lessons 02-04 trained); ``steps`` overrides the pretraining steps of every arm; ``seeds``
    defaults to the profile's (three in smoke, five in cpu and gpu).
    """
    if P.name not in _BUDGETS:
        raise ValueError(f"no capstone budget for profile {P.name!r}; known: {tuple(_BUDGETS)}")
    spec = _BUDGETS[P.name]
    Pc = P if full_size else P.with_(**spec["changes"])
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise ValueError(f"steps must be an int >= 2, got {steps!r}")
        Pc = Pc.with_(steps=steps)
    seeds = tuple(int(s) for s in (spec["seeds"] if seeds is None else seeds))
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct ints, at least one, got {seeds!r}")
    return Budget(Pc, finetune_steps or spec["finetune_steps"], FINETUNE_LR_SCALE * Pc.lr,
                  P.probe_steps if full_size else spec["probe_steps"], seeds, n_boot or spec["n_boot"])


def loss_ratio(history) -> float:
    """A pretraining run's final loss over its first: mean of the last 10% of steps over the mean
    of the first 10% (below 1: the objective was learned, at least in part)."""
    losses = list(getattr(history, "loss", None) or [])
    if not losses:
        return float("nan")
    k = max(1, len(losses) // 10)
    return float(np.mean(losses[-k:]) / np.mean(losses[:k]))


# --------------------------------------------------------------------------- pretraining
def image_encoder_of(model: nn.Module) -> nn.Module:
    """The image encoder the lessons probed: ``model.image_encoder`` (CLIP, GLoRIA; a method on
    M3AE giving its image-only pass), else ``model.encoder`` (SimCLR, MAE), else the model."""
    attr = getattr(model, "image_encoder", None)
    if isinstance(attr, nn.Module):
        return attr
    if callable(attr):
        return attr()
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, nn.Module):
        return encoder
    return model


def arm_profile(arm: Arm, P: Profile) -> tuple[Profile, dict]:
    """The profile and extra recipe options that give ``arm`` the budget's ``P.steps`` in all.

    M3AE's recipe starts from a masked language model and an MAE trained by their own recipes
    for ``P.steps`` each, then trains the multimodal model: here the language model gets half
    the steps and the multimodal model the other half (the MAE, whose patch projection only is
    kept, half as well), so the fusion transformer sees ``P.steps`` optimiser steps in all.
    """
    if arm.objective == "m3ae":
        half = max(1, P.steps // 2)
        return P.with_(steps=half), {"steps": P.steps - half}
    return P, {"steps": P.steps}


def build_random(P: Profile, seed: int) -> nn.Module:
    """The untrained standard ViT for ``seed`` (the random-init arm)."""
    from .backbones import image_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return image_encoder(P)


def pretrain_arm(arm: Arm, P: Profile, data, *, seed: int, dataset: str = "synthcxr", device=None,
                 progress: bool = True):
    """Pretrain (or load from the cache) one arm for one seed; ``(image_encoder, info)``.

    ``info``: ``train_seconds`` (the recipe's wall time when it trained, from the cache's record
    when loaded) and ``cached``.
    """
    if arm.objective is None:
        return build_random(P, seed).to(device or P.device).eval(), {"train_seconds": 0.0, "cached": True}
    from .pretrain.registry import get_objective

    recipe = get_objective(arm.objective).load()
    Pa, options = arm_profile(arm, P)
    if "dataset" in inspect.signature(recipe).parameters:
        options["dataset"] = dataset
    started = time.perf_counter()
    model, info = recipe(Pa, data, seed=seed, device=device or P.device, progress=progress, **options)
    info = dict(info)
    info.setdefault("train_seconds", time.perf_counter() - started)
    return image_encoder_of(model).eval(), info


# --------------------------------------------------------------------------- probing and fine-tuning
def label_subsets(train_idx, labels, fractions=LABEL_FRACTIONS, seed: int = 0) -> dict:
    """The labelled training studies at each fraction: the same for every arm of a seed."""
    return {f: label_subset(train_idx, labels, f, seed=seed) for f in fractions}


def probe_scores(features: dict, labels, splits, subsets: dict, *, steps: int, seed: int = 0, device=None) -> dict:
    """Linear probes on frozen features; ``{fraction: {"val": (n_val, 9), "test": (n_test, 9), "head": module}}``.

    ``features``: ``{"train": (n_train, D), "val": ..., "test": ...}`` rows in the order of
    ``splits``; ``subsets[fraction]``: labelled study indices (a subset of ``splits["train"]``).
    ``head``: the probe as a head on raw features (:func:`probe_head`), where fine-tuning starts.
    """
    labels = _pathology_labels(labels)
    position = {int(j): i for i, j in enumerate(np.asarray(splits["train"]))}
    evaluate = torch.cat([features["val"], features["test"]])
    n_val = len(features["val"])
    out = {}
    for fraction, subset in subsets.items():
        rows = [position[int(j)] for j in subset]
        probe = linear_probe(features["train"][rows], labels[subset], evaluate, steps=steps, seed=seed,
                             device=device)
        out[fraction] = {"val": probe.test_scores[:n_val].numpy(), "test": probe.test_scores[n_val:].numpy(),
                         "head": probe_head(probe)}
    return out


def classifier_from_probe(encoder: nn.Module, head: nn.Module | None = None) -> Classifier:
    """A :class:`Classifier` on a copy of ``encoder`` (the original is never trained), its head a copy
    of ``head`` (from :func:`probe_head`) when given, else a fresh linear layer."""
    model = Classifier(copy.deepcopy(encoder).cpu())
    if head is not None:
        model.head = copy.deepcopy(head).cpu()
    return model


def finetune_scores(encoder: nn.Module, images, labels, splits, subsets: dict, *, steps: int, batch_size: int,
                    lr: float, seed: int = 0, heads: dict | None = None, device=None, amp=None,
                    cache_key: dict | None = None, progress: bool = True) -> dict:
    """Full fine-tuning of a copy of ``encoder`` with a linear head at each label fraction;
    ``{fraction: {"val": ..., "test": ..., "train_seconds": float}}``.

    ``heads[fraction]``: start the head from that fraction's linear probe (:func:`probe_head`) (LP-FT, Kumar et
    al. 2022: a random head's first gradients would distort the pretrained features). The same
    recipe (steps, batch, learning rate, light augmentation, head start) for every arm; for a
    random encoder it is training from scratch (after a probe of its random features). With
    ``cache_key``, each fine-tuned model is cached by ``load_or_train``.
    """
    from .hub import load_or_train

    labels = _pathology_labels(labels)
    val_idx, test_idx = np.asarray(splits["val"]), np.asarray(splits["test"])
    out = {}
    for fraction, subset in subsets.items():
        head = heads[fraction] if heads is not None else None

        def build(head=head):
            return classifier_from_probe(encoder, head)

        def train(model, subset=subset, fraction=fraction):
            return train_classifier(model, images[subset], labels[subset], steps=steps, batch_size=batch_size, lr=lr,
                                    seed=seed, device=device, amp=amp, progress=progress,
                                    desc=f"fine-tune {fraction:.0%}")

        if cache_key is not None:
            key = {**cache_key, "fraction": fraction, "steps": steps, "batch_size": batch_size, "lr": lr,
                   "seed": seed, "n_labels": len(subset), "head_from_probe": head is not None}
            model, info = load_or_train("capstone_finetune", train, build_fn=build, key=key, device=device)
            seconds = info["train_seconds"]
        else:
            model = build()
            started = time.perf_counter()
            train(model)
            seconds = time.perf_counter() - started
        out[fraction] = {"val": predict(model, images[val_idx], device=device).numpy(),
                         "test": predict(model, images[test_idx], device=device).numpy(), "train_seconds": seconds}
    return out


def _pathology_labels(labels):
    labels = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    return labels[:, PATHOLOGY_COLUMNS] if labels.shape[1] != len(PATHOLOGY_COLUMNS) else labels


def split_features(encoder: nn.Module, images, splits, device=None) -> dict:
    """Global features of each split's images, extracted once: ``{"train", "val", "test"}``."""
    return {name: extract_features(encoder, images[np.asarray(splits[name])], device=device)
            for name in ("train", "val", "test")}


# --------------------------------------------------------------------------- the table
def results_table(scores: dict, labels, splits, fractions=None) -> list[dict]:
    """One row per protocol x arm x fraction x seed with its validation and test macro AUROC.

    ``scores[protocol][arm][seed][fraction] = {"val": (n_val, C), "test": (n_test, C)}``.
    """
    labels = _pathology_labels(labels).numpy()
    y_val, y_test = labels[np.asarray(splits["val"])], labels[np.asarray(splits["test"])]
    rows = []
    for protocol, by_arm in scores.items():
        for arm, by_seed in by_arm.items():
            for seed, by_fraction in by_seed.items():
                for fraction in (fractions or sorted(by_fraction)):
                    s = by_fraction[fraction]
                    rows.append({"protocol": protocol, "arm": arm, "seed": seed, "fraction": fraction,
                                 "val_auroc": macro_auroc(y_val, s["val"]), "test_auroc": macro_auroc(y_test, s["test"])})
    return rows


def mean_val_auroc(rows, protocol: str, fraction: float) -> dict:
    """Each arm's validation macro AUROC, averaged over seeds."""
    out = {}
    for r in rows:
        if r["protocol"] == protocol and r["fraction"] == fraction:
            out.setdefault(r["arm"], []).append(r["val_auroc"])
    return {arm: float(np.mean(v)) for arm, v in out.items()}


def best_by_validation(val_auroc: dict, candidates) -> str:
    """The candidate arm with the highest validation AUROC (ties: the first listed).

    Choosing the best arm on the *test* split and then reporting its test AUROC is optimistic:
    the maximum of several noisy estimates is biased upwards (the winner's curse), most at 1%
    labels where the estimates are noisiest. The validation split picks; the test split scores.
    """
    candidates = list(candidates)
    if not candidates:
        raise ValueError("no candidate arms to choose from")
    missing = [c for c in candidates if c not in val_auroc]
    if missing:
        raise KeyError(f"no validation AUROC for {missing}")
    return max(candidates, key=lambda c: (val_auroc[c], -candidates.index(c)))


# --------------------------------------------------------------------------- AUROC and the bootstrap
def weighted_macro_auroc(labels, scores, weights) -> np.ndarray:
    """Macro AUROC of several score sets under several weightings of the rows, vectorised.

    Args:
        labels: (n, C) 0/1.
        scores: (K, n, C) K score sets (arms x seeds) for the same rows.
        weights: (B, n) non-negative row weights; a bootstrap replicate's weight of a study is how
            many times it was drawn, so weighted AUROC = AUROC of the resampled rows.

    Returns (K, B): per score set and weighting, :func:`~medmm_lite.eval.metrics.macro_auroc`
    under that weighting: the mean over columns of the weighted AUROC (Mann-Whitney: the weighted
    share of positive-negative pairs ranked right, ties counting a half), leaving out a column
    where a weighting has no positive or no negative weight.
    """
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if y.ndim != 2 or s.ndim != 3 or s.shape[1:] != y.shape or w.ndim != 2 or w.shape[1] != y.shape[0]:
        raise ValueError(f"expected labels (n, C), scores (K, n, C), weights (B, n); got {y.shape}, {s.shape}, {w.shape}")
    return np.stack([macro_auroc(y, score_set, w) for score_set in s])


def patient_weights(patient_ids, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n) weights of a patient bootstrap: each replicate draws as many patients as there
    are, with replacement, and a study's weight is how many times its patient was drawn (so all
    studies of a drawn patient come together). The library's
    :func:`~medmm_lite.eval.metrics.patient_bootstrap_weights`."""
    return patient_bootstrap_weights(patient_ids, n_boot, seed)


def seed_weights(n_seeds: int, n_boot: int, seed: int = 0, resample: bool = True) -> np.ndarray:
    """(n_boot, n_seeds) how many times each pretraining seed is drawn in each replicate (with
    replacement: the same resampler, each seed its own "patient"), or all ones with ``resample=False``."""
    if not resample:
        return np.ones((n_boot, n_seeds))
    return patient_bootstrap_weights(np.arange(n_seeds), n_boot, seed)


@dataclass
class BootstrapResult:
    """Per arm: the point estimate (mean over seeds of the test macro AUROC) and the replicates."""

    arms: list
    point: np.ndarray        # (A,)
    replicates: np.ndarray   # (A, B)
    per_seed: np.ndarray     # (A, S) test macro AUROC of each seed

    def interval(self, arm: str, alpha: float = 0.05) -> tuple[float, float, float]:
        a = self.arms.index(arm)
        return _interval(self.point[a], self.replicates[a], alpha)

    def difference(self, arm: str, reference: str, alpha: float = 0.05) -> tuple[float, float, float]:
        """``arm`` minus ``reference``: paired (the same patients and seeds in every replicate)."""
        a, r = self.arms.index(arm), self.arms.index(reference)
        return _interval(self.point[a] - self.point[r], self.replicates[a] - self.replicates[r], alpha)

    def mean_difference(self, arms, references, alpha: float = 0.05) -> tuple[float, float, float]:
        """The mean over ``arms`` minus the mean over ``references``, paired: what the review's
        average over studies of multimodal minus unimodal pretraining measures."""
        a = [self.arms.index(x) for x in arms]
        r = [self.arms.index(x) for x in references]
        return _interval(self.point[a].mean() - self.point[r].mean(),
                         self.replicates[a].mean(0) - self.replicates[r].mean(0), alpha)


def _interval(point, replicates, alpha):
    return (float(point), *interval(replicates, alpha))


def patient_bootstrap(labels, scores: dict, patient_ids, *, n_boot: int = 1000, seed: int = 0,
                      resample_seeds: bool = True) -> BootstrapResult:
    """Intervals over test patients and pretraining seeds, for several arms at once.

    ``scores[arm]``: (S, n, C) test scores of each seed (the same S seeds, in the same order, for
    every arm). Each replicate draws the test patients with replacement (one draw shared by every
    arm and seed: paired) and, with ``resample_seeds``, the seeds with replacement (one draw
    shared by every arm: seed ``s`` of two arms saw the same label subsets); its value for an arm
    is the mean over the drawn seeds of the macro AUROC on the drawn patients. The interval so
    holds both the test set's sampling and the training's randomness.
    """
    arms = list(scores)
    stacked = np.stack([np.asarray(scores[a], dtype=np.float64) for a in arms])   # (A, S, n, C)
    A, S, n, C = stacked.shape
    w = patient_weights(patient_ids, n_boot, seed)
    if w.shape[1] != n:
        raise ValueError(f"{len(patient_ids)} patient ids for {n} scored studies")
    flat = stacked.reshape(A * S, n, C)
    per_seed = weighted_macro_auroc(labels, flat, np.ones((1, n)))[:, 0].reshape(A, S)
    boot = weighted_macro_auroc(labels, flat, w).reshape(A, S, n_boot)            # (A, S, B)
    k = seed_weights(S, n_boot, seed + 1, resample_seeds)                          # (B, S)
    replicates = np.einsum("asb,bs->ab", boot, k) / S
    return BootstrapResult(arms, per_seed.mean(axis=1), replicates, per_seed)


def improvement_table(boot: BootstrapResult, val_auroc: dict, image_arms, text_arms, alpha: float = 0.05) -> dict:
    """The review's Figure 5a: each image-text arm minus the best image-only arm (chosen on
    validation), with paired intervals; plus ``"best"``: the best image-text arm (also chosen on
    validation) minus the same reference. ``{name: {"reference", "arm", "point", "low", "high"}}``."""
    reference = best_by_validation(val_auroc, image_arms)
    out = {}
    for arm in text_arms:
        point, low, high = boot.difference(arm, reference, alpha)
        out[arm] = {"reference": reference, "arm": arm, "point": point, "low": low, "high": high}
    best = best_by_validation(val_auroc, text_arms)
    out["best"] = {**out[best]}
    return out


__all__ = ["Arm", "ARMS", "available_arms", "arms_of", "Budget", "capstone_budget", "image_encoder_of", "arm_profile",
           "build_random", "pretrain_arm", "label_subsets", "Standardize", "probe_head", "probe_scores", "classifier_from_probe", "finetune_scores", "split_features",
           "results_table", "mean_val_auroc", "best_by_validation", "macro_auroc", "weighted_macro_auroc",
           "patient_weights", "seed_weights", "loss_ratio", "FINETUNE_LR_SCALE", "BootstrapResult", "patient_bootstrap", "improvement_table",
           "REVIEW_IMPROVEMENT"]
