"""Which image encoder lets lesson 05's captioner read the image?

Trains the captioner (the same decoder, steps, batch, learning rate and augmentation as
``pretrain_caption``) on the cpu profile with each image encoder below, and reports on the test
split: the loss with the right image over the loss with another study's image (1.0: the image is
not used), the share of distinct greedy reports, clinical F1 (micro) of beam reports, and the
findings beam reports state that the image lacks.

    OMP_NUM_THREADS=2 python benchmarks/caption_encoders.py                 # every arm
    OMP_NUM_THREADS=2 python benchmarks/caption_encoders.py --arms clip_frozen --lr-factor 1.5

docs/performance.md keeps the table of the committed run, with the machine's load.
"""
from __future__ import annotations

import argparse
import json
import time
from functools import partial

import numpy as np
import torch

import medmm_lite
from medmm_lite import data as D
from medmm_lite.data.augment import light_augment
from medmm_lite.data.samplers import SameGroupBatches
from medmm_lite.eval import hallucinations, report_metrics
from medmm_lite.pretrain import caption as C
from medmm_lite.pretrain.clip import pretrain_clip, recalibrate_batchnorm
from medmm_lite.pretrain.m3ae import derangement
from medmm_lite.train import fit

ARMS = ("clip_frozen", "clip_finetuned", "cnn_scratch", "vit_scratch")


def build(arm, P, data):
    vocab = len(data.tokenizer)
    max_len = int(data.input_ids.shape[1])
    if arm.startswith("clip"):
        clip_model, _ = pretrain_clip(P, data, seed=0, progress=False)
        model = C.build_caption(P, vocab, encoder="clip", pretrained=clip_model.image_encoder, max_len=max_len)
        if arm == "clip_finetuned":      # the same start, every weight trained
            model.image_encoder = model.image_encoder.module.requires_grad_(True)
        return model
    return C.build_caption(P, vocab, encoder=arm.split("_")[0], max_len=max_len)


def run(arm, P, data, steps, lr_factor):
    ids, mask = C.encode_captions(data, "findings")
    train, test = (torch.as_tensor(np.asarray(data.splits[k])) for k in ("train", "test"))
    tensors = dict(image=data.cohort.images[train], input_ids=ids[train], attention_mask=mask[train])
    dataset = SameGroupBatches(C.length_buckets(mask[train].sum(1).numpy(), P.batch_size, 8), **tensors)
    model = build(arm, P, data)
    generator = torch.Generator().manual_seed(1)
    started = time.perf_counter()
    fit(model, partial(C.caption_step, augment=light_augment, generator=generator), dataset, steps=steps,
        batch_size=P.batch_size, lr=lr_factor * P.lr, seed=0, device="cpu", progress=False, rng=generator)
    seconds = time.perf_counter() - started
    if arm != "clip_frozen":
        recalibrate_batchnorm(model.image_encoder, tensors["image"])
    model.eval()
    images = data.cohort.images[test]
    other = derangement(len(test), 0).numpy()
    ratio = C.caption_loss(model, images, ids[test], mask[test]) / C.caption_loss(model, images[other], ids[test],
                                                                                   mask[test])
    references = [C.caption_texts(data, "findings")[i] for i in test.tolist()]
    greedy = C.generate_reports(model, images, data.tokenizer, strategy="greedy")
    beam = C.generate_reports(model, images, data.tokenizer, strategy="beam", num_beams=4)
    return {"arm": arm, "steps": steps, "lr_factor": lr_factor, "image_loss_ratio": round(ratio, 3),
            "distinct_greedy_frac": round(len(set(greedy)) / len(test), 3),
            "clinical_f1_micro_beam": round(report_metrics(references, beam)["clinical_f1_micro"], 3),
            "hallucinations_per_report_beam": round(hallucinations(beam, data.cohort.labels[test])["per_report_mean"], 3),
            "train_seconds": round(seconds)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--steps", type=int, default=None, help="default: the cpu profile's")
    parser.add_argument("--lr-factor", type=float, default=C.CAPTION_LR_FACTOR)
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    P = medmm_lite.profile("cpu")
    data = D.prepare_data(P, seed=0, dataset="synthcxr")
    rows = []
    for arm in args.arms:
        rows.append(run(arm, P, data, args.steps or P.steps, args.lr_factor))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
