"""How fast does each pretraining objective train? Samples per second of one optimiser step.

    OMP_NUM_THREADS=2 python benchmarks/bench_objectives.py                 # the cpu-profile sizes
    python benchmarks/bench_objectives.py --steps 5 --only clip mae         # a quick look
    python benchmarks/bench_objectives.py --profile gpu --json out.json     # on a CUDA machine

One step = forward + loss + backward + AdamW step (the library's parameter groups, weight
decay 0.05, as ``fit`` does), with each objective's own step function and augmentation:

* supervised: ``adapt.Classifier`` (the standard ViT + a linear head), multi-label BCE; the
  same with lesson 01's small ResNet (``image_encoder(P, kind="cnn")``);
* SimCLR ``simclr_step`` (two light-augmented views, NT-Xent), CLIP ``clip_step``,
  GLoRIA ``gloria_step`` (one sentence per report, local + global loss), MAE, MLM and M3AE
  (``trim_padding`` then the model's loss, as ``pretrain_*`` run them) and captioning
  ``caption_step`` when ``medmm_lite.pretrain.caption`` imports.

Models come from the library's ``build_*`` functions at the profile's sizes, inputs are
random: images (B, 1, H, W) and token ids whose lengths follow the cpu-profile cohort's
texts (deciles of the measured lengths below, per kind of text), so the padding trimmed
away and the attention cost are those of training. No cohort is generated. Two warm-up
steps, then ``--steps`` timed steps; the median is reported, with the fastest step and
the CPU time of a step (all threads; with one thread, a measure that other work on the
machine barely changes).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Token lengths ([CLS]/[BOS] and [SEP]/[EOS] included) at the 5th, 15th, ... 95th percentiles,
# measured on the cpu-profile cohort (3,000 studies, seed 0, its 500-token WordPiece vocabulary).
TEXT_LENGTH_DECILES = {
    "report": [21, 25, 30, 35, 41, 46, 54, 63, 77, 96],      # the whole report: MLM, M3AE
    "impression": [6, 7, 7, 7, 8, 11, 14, 18, 23, 34],       # CLIP's text
    "sentence": [5, 6, 7, 7, 7, 8, 9, 10, 11, 14],           # GLoRIA: one sentence per report
    "findings": [12, 16, 20, 24, 28, 33, 38, 45, 53, 67],    # captioning's target
}
SENTENCE_BANK_WIDTH = 18   # GLoRIA's sentence bank is padded to its longest sentence, not trimmed per batch


def random_texts(kind: str, batch: int, width: int, vocab: int, generator, decoder: bool = False):
    """Token ids (B, width) with lengths drawn from ``kind``'s deciles, right-padded with 0."""
    from medmm_lite.data.tokenizer import BOS_ID, CLS_ID, EOS_ID, SEP_ID, SPECIAL_TOKENS

    deciles = torch.tensor(TEXT_LENGTH_DECILES[kind])
    lengths = deciles[torch.randint(len(deciles), (batch,), generator=generator)].clamp(max=width)
    positions = torch.arange(width)[None]
    mask = (positions < lengths[:, None]).long()
    ids = torch.randint(len(SPECIAL_TOKENS), vocab, (batch, width), generator=generator) * mask
    rows = torch.arange(batch)
    ids[:, 0] = BOS_ID if decoder else CLS_ID
    ids[rows, lengths - 1] = EOS_ID if decoder else SEP_ID
    return ids, mask


def word_ids_for(mask):
    """(B, L) word index per token, -1 on [CLS], [SEP] and padding: about two words per three
    tokens, the ratio of the cohort's sentences under its tokenizer (0.62 of all tokens)."""
    lengths = mask.sum(1, keepdim=True)
    position = torch.arange(mask.shape[1])[None].expand_as(mask)
    inner = (position >= 1) & (position < lengths - 1)
    return torch.where(inner, (position - 1) * 2 // 3, torch.full_like(position, -1))


def objectives(P, batch: int, device, generator):
    """name -> (build(), loss(model) -> scalar, note), each closing over one random batch."""
    from medmm_lite.adapt.protocol import PATHOLOGY_COLUMNS, Classifier
    from medmm_lite.backbones import image_encoder, text_encoder
    from medmm_lite.data.augment import light_augment
    from medmm_lite.pretrain import clip, gloria, mae, m3ae, simclr

    vocab, width = P.vocab_size, P.max_text_len
    images = torch.rand(batch, 1, P.image_size, P.image_size, generator=generator).to(device)
    aug = torch.Generator().manual_seed(1)       # augmentation and masking draws (CPU, as fit's rng)

    def texts(kind, w=width, decoder=False):
        ids, mask = random_texts(kind, batch, w, vocab, generator, decoder)
        return ids.to(device), mask.to(device)

    labels = torch.randint(0, 2, (batch, len(PATHOLOGY_COLUMNS)), generator=generator).float().to(device)
    report_ids, report_mask = texts("report")
    impression_ids, impression_mask = texts("impression")
    sentence_ids, sentence_mask = texts("sentence", SENTENCE_BANK_WIDTH)
    g = aug if device.type == "cpu" else None

    def supervised_loss(m):
        return torch.nn.functional.binary_cross_entropy_with_logits(m(light_augment(images, generator=g)), labels)

    def gloria_loss(m):
        batch_ = {"image": light_augment(images, generator=g), "input_ids": sentence_ids,
                  "attention_mask": sentence_mask, "word_ids": word_ids_for(sentence_mask.cpu()).to(device)}
        return gloria.gloria_step(m, batch_)[0]

    def text_loss(m, with_image):
        b = m3ae.trim_padding({"input_ids": report_ids, "attention_mask": report_mask})
        if with_image:   # word_ids=None: token masking (the lesson hides whole word types; the same cost)
            return m(images, b["input_ids"], b["attention_mask"], generator=aug if device.type == "cpu" else None).loss
        return m(b["input_ids"], b["attention_mask"], generator=aug if device.type == "cpu" else None).loss

    def build_gloria():   # no tokenizer here: word ids are passed in the batch
        return gloria.GLoRIAModel(image_encoder(P, pool="mean"), text_encoder(P, vocab), P.dim)

    table = {
        "supervised ViT": (lambda: Classifier(image_encoder(P)), supervised_loss, "BCE, 9 findings, light aug."),
        "supervised CNN": (lambda: Classifier(image_encoder(P, kind="cnn")), supervised_loss,
                           "lesson 01's ResNet, the same loss"),
        "SimCLR": (lambda: simclr.build_simclr(P),
                   lambda m: simclr.simclr_step(m, {"image": images}, generator=g), "2 views of each image"),
        "CLIP": (lambda: clip.build_clip(P, vocab),
                 lambda m: clip.clip_step(m, {"image": images, "input_ids": impression_ids,
                                              "attention_mask": impression_mask},
                                          augment=light_augment, generator=g)[0], "impression text"),
        "GLoRIA": (build_gloria, gloria_loss, "one sentence per report"),
        "MAE": (lambda: mae.build_mae(P),
                lambda m: m(images, mask_ratio=0.75, generator=aug if device.type == "cpu" else None)[0],
                "75% of patches masked"),
        "MLM": (lambda: m3ae.build_mlm(P, vocab), partial(text_loss, with_image=False), "whole report"),
        "M3AE": (lambda: m3ae.build_m3ae(P, vocab), partial(text_loss, with_image=True),
                 "whole report, MIM + MLM + ITM"),
    }
    try:
        from medmm_lite.pretrain import caption
    except Exception as err:   # being written: skip it until it imports
        print(f"captioning skipped: medmm_lite.pretrain.caption does not import ({type(err).__name__}: {err})")
    else:
        caption_ids, caption_mask = texts("findings", decoder=True)
        table["captioning"] = (lambda: caption.build_caption(P, vocab),
                               lambda m: caption.caption_step(m, {"image": images, "input_ids": caption_ids,
                                                                  "attention_mask": caption_mask},
                                                              augment=light_augment, generator=g)[0],
                               "build_caption defaults, findings, teacher forcing")
    return table


def time_steps(model, loss_fn, warmup: int, steps: int, sync, amp_dtype) -> list[float]:
    from medmm_lite.train import param_groups

    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    model.train()
    times, cpu = [], []
    for i in range(warmup + steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=amp_dtype) if amp_dtype is not None else torch.autocast("cpu", enabled=False):
            loss = loss_fn(model)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
    return times, cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=("smoke", "cpu", "gpu"), help="the sizes (default cpu)")
    parser.add_argument("--device", default=None, help="default: the profile's")
    parser.add_argument("--batch", type=int, default=None, help="default: the profile's batch size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per objective")
    parser.add_argument("--only", nargs="*", default=None, help="objective names (case-insensitive)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    import machine
    import medmm_lite
    from medmm_lite.models import count_parameters

    P = medmm_lite.profile(args.profile)
    device = torch.device(args.device or P.device)
    batch = args.batch or P.batch_size
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    amp_dtype = None
    if device.type == "cuda" and P.amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    info = machine.describe()
    print(f"bench_objectives: profile {P.name} (image {P.image_size} px, patch {P.patch_size}, dim {P.dim}, "
          f"depth {P.depth}, heads {P.heads}, text {P.max_text_len} tokens), batch {batch}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)}, autocast {amp_dtype})" if device.type == "cuda" else "")
          + f", {args.warmup} warm-up + {args.steps} timed steps")
    print(machine.line(info))
    if device.type == "cpu" and (warning := machine.busy_warning(info)):
        print(warning)
    generator = torch.Generator().manual_seed(0)
    table = objectives(P, batch, device, generator)
    wanted = {n.lower() for n in args.only} if args.only else None
    rows = []
    print(f"\n{'objective':<16} {'samples/s':>10} {'ms/step':>9} {'min ms':>8} {'CPU ms':>8} {'params':>11}   note")
    print("-" * 89)
    for name, (build, loss_fn, note) in table.items():
        if wanted and name.lower() not in wanted and not wanted & set(name.lower().split()):
            continue
        torch.manual_seed(0)
        model = build().to(device)
        times, cpu = time_steps(model, loss_fn, args.warmup, args.steps, sync, amp_dtype)
        ms = 1e3 * statistics.median(times)
        row = {"objective": name, "batch": batch, "ms_per_step": round(ms, 2), "min_ms": round(1e3 * min(times), 2),
               "cpu_ms_per_step": round(1e3 * statistics.median(cpu), 2),
               "samples_per_s": round(batch / (ms / 1e3), 1), "params": count_parameters(model), "note": note,
               "ms_all": [round(1e3 * t, 2) for t in times]}
        rows.append(row)
        print(f"{name:<16} {row['samples_per_s']:10.1f} {ms:9.1f} {row['min_ms']:8.1f} {row['cpu_ms_per_step']:8.1f} "
              f"{row['params']:11,}   {note}", flush=True)
        del model
    after = machine.describe()
    print(f"load average after: {after['load_1_5_15'][0]:.2f} (1 min)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"profile": P.name, "device": str(device), "batch": batch, "warmup": args.warmup,
                       "steps": args.steps, "machine_before": info, "machine_after": after, "objectives": rows},
                      f, indent=2)
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
