"""Are the course's hand-written encoders as fast as the well-kept libraries?

Times one training step (forward + backward, gradients zeroed between steps) of
* our ViT against timm's VisionTransformer of the same configuration,
* our TextEncoder against transformers' BertModel of the same configuration
  (vocabulary, width, depth, heads, intermediate size, max positions), and
* our CLIP loss (``objectives.distributed_clip_loss``, what ``clip_step`` calls; on one
  process it is ``clip_loss``) against open_clip's ``ClipLoss`` on the same features
  (normalised first, as open_clip's model does before its loss),
at the sizes of ``medmm_lite.profile("cpu")`` by default (read from the library, so
they follow the profile: 64 px images, patch 8, dim 96, depth 3, heads 4, batch 64,
96-token reports, vocabulary 600). The two sides of a pair are timed alternately, step
by step, so drift in machine load hits both alike; the median over the repeats is
reported, with the ratio ours / reference. Budget: ratio <= 1.0, read with a noise
band (``--tolerance``, 0.05): PASS at most 1 + tolerance, else OVER.

    OMP_NUM_THREADS=2 python benchmarks/bench_models.py                 # the cpu-profile sizes
    python benchmarks/bench_models.py --device cuda --batch 256 --json out.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


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


def summarise(name, ours_model, ref_model, ours_times, ref_times, count, tolerance, per_call=1):
    """One row; ``per_call`` > 1 when each timed step ran the function that many times."""
    ours_ms = 1e3 * statistics.median(ours_times) / per_call
    ref_ms = 1e3 * statistics.median(ref_times) / per_call
    ratio = ours_ms / ref_ms
    row = {
        "name": name,
        "ours_ms": round(ours_ms, 4), "reference_ms": round(ref_ms, 4),
        "ratio": round(ratio, 3), "budget_ratio": 1.0, "tolerance": tolerance,
        "verdict": "PASS" if ratio <= 1.0 + tolerance else "OVER",
        "ours_params": count(ours_model), "reference_params": count(ref_model),
        "ours_ms_all": [round(1e3 * t / per_call, 4) for t in ours_times],
        "reference_ms_all": [round(1e3 * t / per_call, 4) for t in ref_times],
    }
    params = f"   params {row['ours_params']:,} vs {row['reference_params']:,}" if row["ours_params"] else ""
    print(f"{name:<38} ours {ours_ms:9.3f} ms   reference {ref_ms:9.3f} ms   ratio {row['ratio']:.3f} "
          f"{row['verdict']:>4}{params}")
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", default="cpu", choices=("smoke", "cpu", "gpu"),
                        help="the sizes to default to (default: cpu)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--patch-size", type=int, default=None)
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--vocab", type=int, default=None)
    parser.add_argument("--text-len", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--loss-calls", type=int, default=50,
                        help="CLIP loss calls per timed step (one call is too short to time alone)")
    parser.add_argument("--tolerance", type=float, default=0.05, help="noise band above the ratio budget 1.0")
    parser.add_argument("--only", choices=("vit", "text", "clip_loss"), default=None, help="run one pair only")
    parser.add_argument("--json", default=None, help="write the results here, to compare commits")
    args = parser.parse_args(argv)

    import machine
    import medmm_lite
    import open_clip
    import timm
    import transformers
    from open_clip.loss import ClipLoss

    from medmm_lite.models import TextEncoder, ViT, count_parameters
    from medmm_lite.objectives.contrastive import distributed_clip_loss

    P = medmm_lite.profile(args.profile)
    for name, value in (("batch", P.batch_size), ("image_size", P.image_size), ("patch_size", P.patch_size),
                        ("dim", P.dim), ("depth", P.depth), ("heads", P.heads), ("vocab", P.vocab_size),
                        ("text_len", P.max_text_len)):
        if getattr(args, name) is None:
            setattr(args, name, value)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    info = machine.describe()
    print(f"torch {torch.__version__}, timm {timm.__version__}, transformers {transformers.__version__}, "
          f"open_clip {open_clip.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}, sizes of the {args.profile} profile (dim {args.dim}, depth {args.depth}, "
          f"heads {args.heads}, {args.image_size} px / patch {args.patch_size}, {args.text_len} tokens)")
    print(machine.line(info))
    if device.type == "cpu" and (warning := machine.busy_warning(info)):
        print(warning)
    results = {"config": vars(args), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "machine": info, "pairs": []}

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
        results["pairs"].append(summarise("ViT vs timm VisionTransformer", ours, ref, ours_t, ref_t, count_parameters,
                                          args.tolerance))

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
                                          count_parameters, args.tolerance))

    if args.only in (None, "clip_loss"):
        # the projected embeddings of a CLIP batch, the learned scale at CLIP's start (1 / 0.07)
        generator = torch.Generator().manual_seed(0)
        image_emb = torch.randn(args.batch, args.dim, generator=generator).to(device).requires_grad_()
        text_emb = torch.randn(args.batch, args.dim, generator=generator).to(device).requires_grad_()
        scale = torch.tensor(1 / 0.07, device=device)
        reference = ClipLoss()
        normalize = torch.nn.functional.normalize

        def loss_steps(loss):
            for _ in range(args.loss_calls):
                image_emb.grad = text_emb.grad = None
                loss().backward()

        ours_t, ref_t = time_pair(
            lambda: loss_steps(lambda: distributed_clip_loss(image_emb, text_emb, scale)),
            lambda: loss_steps(lambda: reference(normalize(image_emb, dim=-1), normalize(text_emb, dim=-1), scale)),
            args.warmup, max(args.repeats, 60), sync)   # a few ms a step: more repeats, cheaply
        results["pairs"].append(summarise("CLIP loss vs open_clip ClipLoss", reference, reference, ours_t, ref_t,
                                          lambda m: 0, args.tolerance, per_call=args.loss_calls))

    print(machine.line() + "  (after)")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
