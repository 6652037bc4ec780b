"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (gloo, CPU).

Each process computes its share of the same global batch; rank 0 saves what the processes
computed together to ``RESULT`` (``torch.save``), and the test compares it with one process
on the whole batch. Last, the command line runs inside the same process group. The
builders below are imported by the test too, so both sides build the same data and models.

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py RESULT WORKDIR
"""
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

GLOBAL_BATCH = 8


def global_features(seed=0):
    """One global batch of un-normalised features: images, texts, a second view, a logit scale."""
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(GLOBAL_BATCH, 5, generator=g), "text": torch.randn(GLOBAL_BATCH, 5, generator=g),
            "view": torch.randn(GLOBAL_BATCH, 5, generator=g), "scale": torch.tensor(7.0)}


def clip_setup(seed=0):
    """A tiny CLIP (linear heads: no BatchNorm, whose statistics would differ per process) and its
    dataset, whose batches come from one group each (the whole-batch path of fit)."""
    from medmm_lite.models import TextEncoder, ViT
    from medmm_lite.pretrain.clip import CLIPModel, SameGroupBatches

    torch.manual_seed(seed)
    model = CLIPModel(ViT(image_size=16, patch_size=8, in_chans=1, dim=16, depth=1, heads=2),
                      TextEncoder(vocab_size=30, dim=16, depth=1, heads=2, max_len=10), embed_dim=8,
                      projection="linear")
    g = torch.Generator().manual_seed(seed + 1)
    n = 24
    ids = torch.randint(5, 30, (n, 10), generator=g)
    mask = (torch.arange(10) < torch.randint(3, 10, (n, 1), generator=g)).long()
    dataset = SameGroupBatches(torch.arange(n) % 2, image=torch.rand(n, 1, 16, 16, generator=g),
                               input_ids=ids * mask, attention_mask=mask)
    return model, dataset


def mlp_setup(seed=0):
    """An MLP on a regression (a TensorDataset: fetched sample by sample, the sliced-indices path)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    return model, TensorDataset(x, x[:, :1] * x[:, 1:2])


def mse_step(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


FIT = dict(batch_size=GLOBAL_BATCH, lr=1e-2, device="cpu", progress=False, seed=3)


def main(result_path: str, workdir: str) -> None:
    from medmm_lite import distributed as D
    from medmm_lite.objectives import distributed_clip_loss, distributed_nt_xent_loss
    from medmm_lite.pretrain.clip import clip_step
    from medmm_lite.train import TrainingStopped, fit

    assert D.init_from_env("gloo") and D.is_distributed() and D.world_size() == 2
    rank, world = D.rank(), D.world_size()
    rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    result = {"world_size": world}

    # 1. the losses: mean over processes, and gradients as DDP would average them
    feats = global_features()
    for name in ("clip_0.5", "clip_0.75", "nt_xent"):
        a = feats["image"][rows].clone().requires_grad_()
        b = (feats["view"] if name == "nt_xent" else feats["text"])[rows].clone().requires_grad_()
        scale = feats["scale"].clone().requires_grad_()
        if name == "nt_xent":
            loss = distributed_nt_xent_loss(a, b, temperature=0.2)
        else:
            loss = distributed_clip_loss(a, b, scale, image_to_text_weight=float(name.split("_")[1]))
        loss.backward()
        grads = D.all_gather_objects((a.grad / world, b.grad / world))
        result[name] = {"loss": D.all_reduce_mean(loss.detach()).item(),
                        "grad_a": torch.cat([g[0] for g in grads]), "grad_b": torch.cat([g[1] for g in grads]),
                        "grad_scale": D.all_reduce_mean(scale.grad).item() if scale.grad is not None else None}

    # 2. one CLIP step under DDP: its gradients
    model, dataset = clip_setup()
    history = fit(model, clip_step, dataset, steps=1, grad_clip=None, **FIT)
    result["clip_step"] = {"loss": history.loss, "grads": {k: p.grad.clone() for k, p in model.named_parameters()}}

    # 3. three CLIP steps, stopped after 2 and resumed: losses and weights
    model, dataset = clip_setup()
    checkpoint = Path(workdir) / "clip.pt"
    try:
        fit(model, clip_step, dataset, steps=3, checkpoint_path=checkpoint, stop_after=2, **FIT)
        raise AssertionError("stop_after=2 did not stop the run")
    except TrainingStopped:
        pass
    model, dataset = clip_setup()
    history = fit(model, clip_step, dataset, steps=3, checkpoint_path=checkpoint, **FIT)
    saved = torch.load(checkpoint, weights_only=True)
    result["clip_resumed"] = {"loss": history.loss, "weights": model.state_dict(),
                              "rng_states_saved": len(saved["rng_per_rank"])}

    # 4. gradient accumulation under DDP, on a dataset fetched sample by sample
    model, dataset = mlp_setup()
    history = fit(model, mse_step, dataset, steps=4, grad_accum=2, **FIT)
    result["mlp_accumulated"] = {"loss": history.loss, "weights": model.state_dict()}

    # 5. the command line, inside this process group (config written by the test)
    from medmm_lite.pretrain.cli import main as cli_main

    result["cli_exit"] = cli_main(["--objective", "clip", "--profile", "smoke", "--config", f"{workdir}/tiny.toml",
                                   "--out", f"{workdir}/cli", "--grad-accum", "2", "--no-progress"])

    if D.is_main_process():
        torch.save(result, result_path)
    D.barrier()
    D.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:3])
