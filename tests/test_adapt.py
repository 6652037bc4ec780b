"""Adaptation helpers: LoRA (apply, train, merge) and the linear probe on frozen features."""
import math
from typing import NamedTuple

import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from torch import nn

from medmm_lite.adapt import (LinearProbe, LoRALinear, apply_lora, extract_features, linear_probe,
                              merge_lora)
from medmm_lite.adapt.lora import lora_parameters
from medmm_lite.train import fit


# --------------------------------------------------------------------------- LoRA
class Block(nn.Module):
    """A transformer-ish block: attention projections, an MLP and a norm."""

    def __init__(self, dim=12):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        x = x + self.proj(attn @ v)
        return x + self.mlp(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 12)
        self.blocks = nn.Sequential(Block(), Block())
        self.head = nn.Linear(12, 3)

    def forward(self, ids):
        return self.head(self.blocks(self.embed(ids)).mean(1))


def _net(seed=0):
    torch.manual_seed(seed)
    return Net()


IDS = torch.randint(0, 20, (4, 7), generator=torch.Generator().manual_seed(1))


def test_output_unchanged_at_init_and_only_lora_trains():
    model = _net()
    before = model(IDS)
    apply_lora(model, rank=4, alpha=8)
    assert torch.equal(model(IDS), before)  # B = 0: exactly the pretrained function
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    wrapped = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 2 * 4 + 1  # qkv, proj, mlp.0, mlp.2 per block, and the head
    expected = sum(4 * (m.in_features + m.out_features) for m in wrapped)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert not model.embed.weight.requires_grad and not model.blocks[0].norm.weight.requires_grad
    for m in wrapped:
        assert m.lora_A.shape == (4, m.in_features) and m.lora_B.shape == (m.out_features, 4)
        assert torch.count_nonzero(m.lora_B) == 0
        assert m.lora_A.abs().max() <= 1 / math.sqrt(m.in_features)  # kaiming_uniform(a=sqrt(5)) bound
        assert m.lora_A.std() > 0.2 / math.sqrt(m.in_features)
        assert not m.base.weight.requires_grad and not m.base.bias.requires_grad


def test_targets_select_layers_by_name():
    model = apply_lora(_net(), rank=2, alpha=2, targets=["qkv", "proj"])
    names = sorted(n for n, m in model.named_modules() if isinstance(m, LoRALinear))
    assert names == ["blocks.0.proj", "blocks.0.qkv", "blocks.1.proj", "blocks.1.qkv"]
    assert isinstance(model.blocks[0].mlp[0], nn.Linear) and not model.blocks[0].mlp[0].weight.requires_grad
    assert isinstance(apply_lora(_net(), 2, 2, targets="head").head, LoRALinear)


def test_forward_is_base_plus_scaled_low_rank_update():
    torch.manual_seed(0)
    linear = nn.Linear(6, 5)
    layer = LoRALinear(linear, rank=3, alpha=6)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 4, 6)
    by_hand = x @ linear.weight.T + linear.bias + (6 / 3) * (x @ layer.lora_A.T @ layer.lora_B.T)
    assert torch.allclose(layer(x), by_hand, atol=1e-6)
    assert torch.allclose(layer.delta_weight(), 2.0 * layer.lora_B @ layer.lora_A)


def test_forward_matches_peft():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(6, 5))
    reference = peft.get_peft_model(base, peft.LoraConfig(r=3, lora_alpha=6, target_modules=["0"],
                                                           lora_dropout=0.0, init_lora_weights=True))
    layer = next(m for m in reference.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A"))
    ours = LoRALinear(layer.base_layer, rank=3, alpha=6)
    with torch.no_grad():
        ours.lora_A.copy_(layer.lora_A["default"].weight)
        ours.lora_B.normal_()
        layer.lora_B["default"].weight.copy_(ours.lora_B)
    x = torch.randn(3, 6)
    assert torch.allclose(ours(x), reference(x), atol=1e-6)


def test_training_moves_only_lora_and_merge_keeps_the_function():
    model = apply_lora(_net(), rank=4, alpha=4)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randint(0, 20, (64, 7), generator=g),
                                          torch.randint(0, 3, (64,), generator=g))
    history = fit(model, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), data, steps=30,
                  batch_size=16, lr=1e-2, device="cpu", progress=False)
    assert history.final_loss < history.loss[0]
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), f"{name} is frozen but changed"
    assert len(lora_parameters(model)) == 2 * 9
    assert all(torch.count_nonzero(m.lora_B) > 0 for m in model.modules() if isinstance(m, LoRALinear))
    adapted = model(IDS)
    merged = merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert isinstance(merged.head, nn.Linear)
    assert torch.allclose(merged(IDS), adapted, atol=1e-5)
    with pytest.raises(ValueError, match="no LoRALinear"):
        merge_lora(merged)


def test_shared_layer_is_wrapped_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    apply_lora(model, rank=2, alpha=2)
    assert isinstance(model[0], LoRALinear) and model[0] is model[2]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * (4 + 4)


def test_multihead_attention_out_proj_is_skipped_with_a_warning():
    class WithMHA(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 2)

    with pytest.warns(UserWarning, match="MultiheadAttention"):
        model = apply_lora(WithMHA(), rank=2, alpha=2)
    assert isinstance(model.fc, LoRALinear) and not isinstance(model.attn.out_proj, LoRALinear)


def test_lora_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="rank must be a positive int"):
        apply_lora(_net(), rank=0, alpha=1)
    with pytest.raises(ValueError, match="alpha"):
        apply_lora(_net(), rank=2, alpha=0)
    with pytest.raises(ValueError, match=r"no nn.Linear matching targets=\['q_proj'\].*blocks.0.qkv"):
        apply_lora(_net(), rank=2, alpha=2, targets=["q_proj"])
    with pytest.raises(ValueError, match="no \\(unwrapped\\) nn.Linear"):
        apply_lora(nn.Sequential(nn.Conv2d(1, 1, 3)), rank=2, alpha=2)


# --------------------------------------------------------------------------- linear probe
def _separable(n=600, d=24, c=3, seed=0):
    """Labels are signs of fixed linear functions of the features: linearly separable."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.linspace(0.1, 10, d)  # very different feature scales
    w = torch.randn(d, c, generator=g) / torch.linspace(0.1, 10, d)[:, None]
    y = (x @ w + 0.3 > 0).float()
    return x, y


def test_probe_separates_separable_data_like_sklearn():
    x, y = _separable()
    train, test = slice(0, 400), slice(400, 600)
    probe = linear_probe(x[train], y[train], x[test], steps=200, lr=0.05, device="cpu")
    assert isinstance(probe, LinearProbe) and probe.test_scores.shape == (200, 3)
    ours = [roc_auc_score(y[test, j], probe.test_scores[:, j]) for j in range(3)]
    assert min(ours) > 0.95
    assert torch.equal(probe.test_scores, probe.predict_proba(x[test]))
    assert len(probe.history) == 200 and probe.history.final_loss < probe.history.loss[0]
    # sklearn's logistic regression on standardised features: the probe must be as good
    mean, std = x[train].mean(0), x[train].std(0)
    for j in range(3):
        reference = LogisticRegression(max_iter=2000).fit(((x[train] - mean) / std).numpy(), y[train, j].numpy())
        theirs = roc_auc_score(y[test, j], reference.predict_proba(((x[test] - mean) / std).numpy())[:, 1])
        assert ours[j] > theirs - 0.02


def test_probe_batchnorm_is_non_affine():
    x, y = _separable(200)
    probe = linear_probe(x, y, steps=50, device="cpu")
    norm, head = probe.model
    assert isinstance(norm, nn.BatchNorm1d) and norm.affine is False and list(norm.parameters()) == []
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (24, 3)
    # full-batch training: the statistics used at test time are exactly the training set's
    assert torch.allclose(norm.running_mean, x.mean(0), rtol=1e-4, atol=1e-5)
    assert torch.allclose(norm.running_var, x.var(0), rtol=1e-4)
    # it standardises: rescaled and shifted features give the same probe
    moved = linear_probe(x * 100 + 5, y, steps=50, device="cpu")
    assert torch.allclose(moved.predict_proba(x[:50] * 100 + 5), probe.predict_proba(x[:50]), atol=1e-3)


def test_probe_is_deterministic_for_a_seed():
    x, y = _separable(300)
    a = linear_probe(x, y, steps=40, batch_size=64, seed=3, device="cpu")
    b = linear_probe(x, y, steps=40, batch_size=64, seed=3, device="cpu")
    c = linear_probe(x, y, steps=40, batch_size=64, seed=4, device="cpu")
    assert torch.equal(a.predict_proba(x), b.predict_proba(x))
    assert not torch.equal(a.predict_proba(x), c.predict_proba(x))
    state = torch.get_rng_state()
    linear_probe(x, y, steps=5, device="cpu")
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone


def test_probe_bad_input_is_a_clear_error():
    x, y = _separable(50)
    with pytest.raises(ValueError, match="0 or 1"):
        linear_probe(x, y - 1, steps=5, device="cpu")
    with pytest.raises(ValueError, match=r"shape \(N, C\)"):
        linear_probe(x, y[:10], steps=5, device="cpu")
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        linear_probe(x[:, :, None], y, steps=5, device="cpu")
    with pytest.raises(ValueError, match="NaN"):
        linear_probe(x * float("nan"), y, steps=5, device="cpu")
    probe = linear_probe(x, y[:, 0], steps=5, device="cpu")  # a single label as a vector
    assert probe.num_classes == 1
    with pytest.raises(ValueError, match="same encoder"):
        probe.predict_proba(x[:, :5])


# --------------------------------------------------------------------------- features
class Features(NamedTuple):
    global_features: torch.Tensor
    local_features: torch.Tensor


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.proj = nn.Linear(4, 5)

    def forward(self, images):
        local = self.drop(torch.relu(self.bn(self.conv(images)))).flatten(2).transpose(1, 2)
        return Features(self.proj(local.mean(1)), local)


def test_extract_features_runs_frozen_in_eval_mode():
    torch.manual_seed(0)
    encoder = Encoder().train()
    images = torch.rand(10, 1, 8, 8)
    features = extract_features(encoder, images, batch_size=3)
    assert features.shape == (10, 5) and features.dtype == torch.float32 and not features.requires_grad
    assert encoder.training  # mode restored
    with torch.no_grad():
        expected = encoder.eval()(images).global_features
    assert torch.allclose(features, expected, atol=1e-6)
    assert torch.equal(extract_features(encoder, images, batch_size=256), extract_features(encoder, images))
    # plain tensors and dicts are understood too
    assert extract_features(nn.Flatten(), images).shape == (10, 64)
    with pytest.raises(ValueError, match="empty"):
        extract_features(encoder, images[:0])
