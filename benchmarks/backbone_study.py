"""Which ViT sees? Lesson 01's supervised baseline, one change at a time.

Trains ``Classifier(ViT(...))`` from scratch on 100% of the training labels at the
cpu profile's sizes and budget (600 steps, batch 64) for each variant below, and
reports macro AUROC on the validation split (the choice is made there) and on test,
with the seconds each took. The small ResNet of lesson 01 is the reference.

    OMP_NUM_THREADS=2 python benchmarks/backbone_study.py --json build/backbone_study.json
    python benchmarks/backbone_study.py --variants linear conv --fractions 0.01 0.1 1.0

docs/performance.md keeps the table of the committed run, with the machine's load.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import medmm_lite
from medmm_lite import backbones
from medmm_lite import data as D
from medmm_lite.adapt import Classifier, label_subset, pathology_auroc, predict, train_classifier
from medmm_lite.adapt.protocol import PATHOLOGY_COLUMNS

VARIANTS = {
    "linear": dict(stem="linear", pool="cls"),            # the original ViT: one p x p projection, [CLS] output
    "conv": dict(stem="conv", pool="cls"),                # a convolutional stem (Xiao et al. 2021)
    "conv_patchwise": dict(stem="conv_patchwise", pool="cls"),  # the same stem inside each patch
    "conv_mean_pool": dict(stem="conv", pool="mean"),     # global feature = mean of patch tokens (the default)
    "conv_depth4": dict(stem="conv", pool="mean", depth=4),
    "cnn": None,                                          # lesson 01's small ResNet
}


def run(name, P, data, fraction, seed):
    medmm_lite.seed_everything(seed)
    overrides = VARIANTS[name]
    encoder = backbones.image_encoder(P, kind="cnn") if overrides is None else backbones.image_encoder(P, **overrides)
    model = Classifier(encoder)
    cohort, splits = data.cohort, data.splits
    labels = cohort.labels[:, PATHOLOGY_COLUMNS]
    subset = label_subset(splits["train"], cohort.labels, fraction, seed=seed)
    started = time.perf_counter()
    train_classifier(model, cohort.images[subset], labels[subset], steps=P.steps, batch_size=P.batch_size,
                     lr=P.lr, seed=seed, progress=False)
    seconds = time.perf_counter() - started
    result = {"variant": name, "fraction": fraction, "seconds": round(seconds, 1)}
    for split in ("val", "test"):
        idx = splits[split]
        result[f"{split}_auroc"] = round(pathology_auroc(labels[idx], predict(model, cohort.images[idx]))["macro"], 4)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--fractions", nargs="+", type=float, default=[1.0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, help="override the profile's learning rate")
    parser.add_argument("--steps", type=int, help="override the profile's steps")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    P = medmm_lite.profile(args.profile)
    if args.lr:
        P = P.with_(lr=args.lr)
    if args.steps:
        P = P.with_(steps=args.steps)
    data = D.prepare_data(P, seed=args.seed)
    print(f"threads={torch.get_num_threads()} profile={P.name} steps={P.steps} batch={P.batch_size}")
    rows = []
    for name in args.variants:
        for fraction in args.fractions:
            rows.append(run(name, P, data, fraction, args.seed))
            r = rows[-1]
            print(f"{r['variant']:<16} {r['fraction']:>5.0%}  val {r['val_auroc']:.3f}  test {r['test_auroc']:.3f}"
                  f"  {r['seconds']:6.1f} s", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
