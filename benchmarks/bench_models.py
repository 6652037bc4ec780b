"""Are the course's hand-written encoders as fast as the well-kept libraries?

Times one training step (forward + backward, gradients zeroed between steps) of
* our ViT against timm's VisionTransformer of the same configuration, and
* our TextEncoder against transformers' BertModel of the same configuration
  (vocabulary, width, depth, heads, intermediate size, max positions),
at the course's ``cpu`` profile sizes by default (dim 128, depth 4, heads 4,
64 px images, patch 8, batch 96, 64-token reports). The two models of a pair are
timed alternately, step by step, so drift in machine load hits both alike; the
median over the repeats is reported, with the ratio ours / reference (goal <= 1.0).

    OMP_NUM_THREADS=1 python benchmarks/bench_models.py                 # the cpu-profile sizes
    python benchmarks/bench_models.py --device cuda --batch 256 --json out.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def training_step(model, inputs, features):
    """forward + backward of a scalar that depends on every output; gradients cleared first."""
    model.zero_grad(set_to_none=True)
    features(model, inputs).float().pow(2).mean().backward()


def time_pair(ours, reference, warmup, repeats, sync):
    """Alternate the two steps; return the per-step seconds of each (lists)."""
    for _ in range(warmup):
        ours()
        reference()
    sync()
    times = {"ours": [], "reference": []}
    for _ in range(repeats):
        for name, step in (("ours", ours), ("reference", reference)):
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return times["ours"], times["reference"]


def summarise(name, ours_model, ref_model, ours_times, ref_times, count):
    ours_ms, ref_ms = 1e3 * statistics.median(ours_times), 1e3 * statistics.median(ref_times)
    row = {
        "name": name,
        "ours_ms": round(ours_ms, 2), "reference_ms": round(ref_ms, 2),
        "ratio": round(ours_ms / ref_ms, 3),
        "ours_params": count(ours_model), "reference_params": count(ref_model),
        "ours_ms_all": [round(1e3 * t, 2) for t in ours_times],
        "reference_ms_all": [round(1e3 * t, 2) for t in ref_times],
    }
    print(f"{name:<34} ours {ours_ms:8.1f} ms   reference {ref_ms:8.1f} ms   ratio {row['ratio']:.3f}   "
          f"params {row['ours_params']:,} vs {row['reference_params']:,}")
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=600)
    parser.add_argument("--text-len", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--only", choices=("vit", "text"), default=None, help="run one pair only")
    parser.add_argument("--json", default=None, help="write the results here, to compare commits")
    args = parser.parse_args(argv)

    import timm
    import transformers

    from medmm_lite.models import TextEncoder, ViT, count_parameters

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"torch {torch.__version__}, timm {timm.__version__}, transformers {transformers.__version__}, "
          f"device {device}, threads {torch.get_num_threads()}, batch {args.batch}")
    results = {"config": vars(args), "torch": torch.__version__, "threads": torch.get_num_threads(), "pairs": []}

    if args.only in (None, "vit"):
        torch.manual_seed(0)
        ours = ViT(args.image_size, args.patch_size, 1, args.dim, args.depth, args.heads).to(device).train()
        ref = timm.models.vision_transformer.VisionTransformer(
            img_size=args.image_size, patch_size=args.patch_size, in_chans=1, num_classes=0,
            embed_dim=args.dim, depth=args.depth, num_heads=args.heads, mlp_ratio=4.0,
            class_token=True, global_pool="token").to(device).train()
        images = torch.randn(args.batch, 1, args.image_size, args.image_size, device=device)
        ours_t, ref_t = time_pair(
            lambda: training_step(ours, images, lambda m, x: m(x).global_features),
            lambda: training_step(ref, images, lambda m, x: m(x)),
            args.warmup, args.repeats, sync)
        results["pairs"].append(summarise("ViT vs timm VisionTransformer", ours, ref, ours_t, ref_t, count_parameters))

    if args.only in (None, "text"):
        torch.manual_seed(0)
        ours = TextEncoder(args.vocab, args.dim, args.depth, args.heads, args.text_len).to(device).train()
        config = transformers.BertConfig(
            vocab_size=args.vocab, hidden_size=args.dim, num_hidden_layers=args.depth,
            num_attention_heads=args.heads, intermediate_size=4 * args.dim,
            max_position_embeddings=args.text_len, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        ref = transformers.BertModel(config, add_pooling_layer=False).to(device).train()
        # reports of different lengths, right-padded with id 0 as a tokenizer would
        lengths = torch.randint(args.text_len // 3, args.text_len + 1, (args.batch,), generator=torch.Generator().manual_seed(0))
        mask = (torch.arange(args.text_len)[None] < lengths[:, None]).long()
        ids = (torch.randint(1, args.vocab, (args.batch, args.text_len)) * mask).to(device)
        mask = mask.to(device)
        ours_t, ref_t = time_pair(
            lambda: training_step(ours, (ids, mask), lambda m, x: m(*x).global_features),
            lambda: training_step(ref, (ids, mask), lambda m, x: m(input_ids=x[0], attention_mask=x[1]).last_hidden_state[:, 0]),
            args.warmup, args.repeats, sync)
        results["pairs"].append(summarise("TextEncoder vs transformers BertModel", ours, ref, ours_t, ref_t,
                                          count_parameters))

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
