"""medmm_lite.adapt.finetune: each method trains what it claims, and nothing else."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from medmm_lite.adapt import LoRALinear, extract_features, linear_probe, predict
from medmm_lite.adapt.finetune import (LORA_TARGETS, METHODS, AdaptedClassifier, finetune, finetune_steps,
                                       head_from_probe, prepare)
from medmm_lite.models import ViT, count_parameters

C = 3  # classes


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    return ViT(image_size=16, patch_size=4, in_chans=1, dim=32, depth=3, heads=2)


def toy_data(n=48, seed=0):
    """Images whose class k is 'a bright square in quadrant k': learnable in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    images = 0.1 * torch.rand(n, 1, 16, 16, generator=g)
    labels = (torch.rand(n, C, generator=g) < 0.5).float()
    for k, (r, c) in enumerate([(0, 0), (0, 8), (8, 0)]):
        images[labels[:, k] == 1, :, r:r + 8, c:c + 8] += 0.8
    return images, labels


def trainable_names(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def bce(model, images, labels):
    model.eval()
    with torch.no_grad():
        return nn.functional.binary_cross_entropy_with_logits(model(images), labels).item()


# --------------------------------------------------------------------------- what trains
def test_probe_trains_only_the_head():
    model = prepare(tiny_vit(), "probe", num_classes=C)
    assert trainable_names(model) == {"head.weight", "head.bias"}
    assert count_parameters(model, trainable_only=True) == 32 * C + C


def test_partial_trains_last_blocks_and_norm_only():
    encoder = tiny_vit()
    for blocks in (1, 2):
        model = prepare(encoder, "partial", num_classes=C, blocks=blocks)
        names = trainable_names(model)
        trained_blocks = {int(n.split(".")[2]) for n in names if n.startswith("encoder.blocks.")}
        assert trained_blocks == set(range(3 - blocks, 3))
        assert {"encoder.norm.weight", "encoder.norm.bias", "head.weight", "head.bias"} <= names
        for frozen in ("encoder.patch_embed.proj.weight", "encoder.cls_token", "encoder.pos_embed",
                       "encoder.blocks.0.attn.qkv.weight"):
            assert frozen not in names
        expected = (sum(p.numel() for b in encoder.blocks[3 - blocks:] for p in b.parameters())
                    + sum(p.numel() for p in encoder.norm.parameters()) + 32 * C + C)
        assert count_parameters(model, trainable_only=True) == expected


def test_lora_trains_only_low_rank_factors_and_head():
    model = prepare(tiny_vit(), "lora", num_classes=C, rank=2, alpha=4)
    names = trainable_names(model)
    assert names - {"head.weight", "head.bias"} == {n for n in names if n.endswith(("lora_A", "lora_B"))}
    wrapped = [m for m in model.encoder.modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 3 * 4  # qkv, proj, fc1, fc2 in each of 3 blocks
    # rank 2: A (2 x in) + B (out x 2) per layer; qkv 32->96, proj 32->32, fc1 32->128, fc2 128->32
    per_block = 2 * (32 + 96) + 2 * (32 + 32) + 2 * (32 + 128) + 2 * (128 + 32)
    assert count_parameters(model, trainable_only=True) == 3 * per_block + 32 * C + C
    assert set(LORA_TARGETS) == {"qkv", "proj", "fc1", "fc2"}


def test_full_trains_everything():
    encoder = tiny_vit()
    encoder.requires_grad_(False)  # even a frozen encoder comes back fully trainable
    model = prepare(encoder, "full", num_classes=C)
    assert all(p.requires_grad for p in model.parameters())
    assert count_parameters(model, trainable_only=True) == count_parameters(encoder) + 32 * C + C


def test_full_keeps_fixed_sincos_positions_fixed():
    torch.manual_seed(0)
    encoder = ViT(image_size=16, patch_size=4, dim=32, depth=1, heads=2, pos_embed="sincos")
    assert "encoder.pos_embed" not in trainable_names(prepare(encoder, "full", num_classes=C))


def test_pretrained_encoder_is_never_changed():
    encoder = tiny_vit()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    images, labels = toy_data(16)
    for method in METHODS:
        finetune(encoder, images, labels, method=method, steps=3, batch_size=8, lr=1e-2, progress=False)
    assert not any(isinstance(m, LoRALinear) for m in encoder.modules())
    assert all(p.requires_grad for p in encoder.parameters())
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, before[k]), k


# --------------------------------------------------------------------------- behaviour
def test_lora_output_unchanged_at_init():
    encoder = tiny_vit()
    images, _ = toy_data(8)
    model = prepare(encoder, "lora", num_classes=C, rank=4, alpha=8)
    encoder.eval(), model.eval()
    with torch.no_grad():
        assert torch.allclose(model.encoder(images).global_features, encoder(images).global_features, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_frozen_parts_bit_identical_after_training(method):
    encoder = tiny_vit()
    images, labels = toy_data(32)
    model = prepare(encoder, method, num_classes=C, rank=2, alpha=4)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    from medmm_lite.adapt import train_classifier

    train_classifier(model, images, labels, steps=5, batch_size=16, lr=1e-2, progress=False)
    after = dict(model.named_parameters())
    for n, p in frozen.items():
        assert torch.equal(after[n].detach(), p), f"{method}: frozen {n} changed"
    assert any(not torch.equal(after[n].detach(), p) for n, p in trained.items()), f"{method}: nothing trained"
    if method != "full":
        assert frozen, f"{method} should freeze something"


@pytest.mark.parametrize("method", METHODS)
def test_tiny_run_lowers_the_loss(method):
    encoder = tiny_vit()
    images, labels = toy_data(48)
    start = bce(prepare(encoder, method, num_classes=C, rank=4, alpha=8), images, labels)
    result = finetune(encoder, images, labels, method=method, steps=60, batch_size=16, lr=3e-3, rank=4, alpha=8,
                      augment=None, progress=False)
    end = bce(result.model, images, labels)
    assert end < start - 0.05, f"{method}: loss {start:.3f} -> {end:.3f}"
    assert result.method == method and len(result.history) > 0
    assert result.trainable == count_parameters(result.model, trainable_only=True) < result.total or method == "full"
    assert 0 < result.trainable_fraction <= 1


def test_frozen_submodules_stay_in_eval_mode():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5))
    encoder.dim = 8

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.dim = encoder, 8

        def forward(self, x):
            from medmm_lite.models import ImageFeatures

            h = self.net(x.flatten(1))
            return ImageFeatures(h, h[:, None])

    model = prepare(Wrapped(), "probe", num_classes=2)
    model.train()
    assert model.head.training and not model.encoder.training


def test_head_from_probe_reproduces_the_probe():
    encoder = tiny_vit()
    images, labels = toy_data(40)
    features = extract_features(encoder, images)
    probe = linear_probe(features, labels, steps=30, seed=0)
    model = prepare(encoder, "full", num_classes=C, head=probe)
    logits = torch.logit(predict(model, images).clamp(1e-6, 1 - 1e-6))
    assert torch.allclose(logits, probe.predict_logits(features), atol=1e-3)
    assert isinstance(model, AdaptedClassifier)
    with torch.no_grad():                             # the classifier's head is the library's probe head
        torch.testing.assert_close(model.head(features), head_from_probe(probe)(features), rtol=0, atol=0)
    with pytest.raises(ValueError, match="probe maps"):
        head_from_probe(probe, nn.Linear(32, C + 1))
    with pytest.raises(TypeError, match="LinearProbe"):
        prepare(encoder, "full", num_classes=C, head=nn.Linear(32, C))



@pytest.mark.parametrize("scale,shift", [(1.0, 0.0), (1e-3, 5.0)])   # (1e-3, 5): barely varying, as a fresh ViT's
def test_head_from_probe_gives_the_probes_logits(scale, shift):
    import copy

    from medmm_lite import capstone as K

    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 12, generator=g) * scale + shift
    y = (torch.randn(80, C, generator=g) + (x[:, :C] - shift) / scale > 0).float()
    probe = linear_probe(x, y, steps=40, seed=0, device="cpu")
    state = {k: v.clone() for k, v in probe.model.state_dict().items()}
    rng_before = torch.random.get_rng_state()
    head = head_from_probe(probe)
    assert torch.equal(torch.random.get_rng_state(), rng_before), "no random number is drawn"
    standardize, linear = head
    assert isinstance(linear, nn.Linear) and all(p.requires_grad for p in linear.parameters())
    assert not list(standardize.parameters()), "the standardisation is fixed (buffers)"
    assert torch.equal(linear.weight, probe.model[1].weight) and linear.weight is not probe.model[1].weight
    with torch.no_grad():
        exact = copy.deepcopy(probe.model).double().eval()(x.double())      # the probe's logits, in float64
        logits = head(x)
        torch.testing.assert_close(logits.double(), exact, rtol=1e-6, atol=1e-5)
        if scale == 1.0:                              # well-scaled features: the probe's own float32 logits
            torch.testing.assert_close(logits, probe.predict_logits(x))
        torch.testing.assert_close(K.probe_head(probe)(x), logits, rtol=0, atol=0)
    assert all(torch.equal(v, probe.model.state_dict()[k]) for k, v in state.items()), "the probe is unchanged"


def test_cached_finetune_loads_the_same_model(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDMM_DATA", str(tmp_path))
    encoder = tiny_vit()
    images, labels = toy_data(16)
    kwargs = dict(method="lora", steps=4, batch_size=8, lr=1e-2, rank=2, alpha=4, progress=False,
                  cache_key={"test": 1})
    first = finetune(encoder, images, labels, **kwargs)
    second = finetune(encoder, images, labels, **kwargs)
    assert torch.equal(predict(first.model, images), predict(second.model, images))
    assert second.trainable == first.trainable and len(second.history) == len(first.history)
    other = finetune(tiny_vit(seed=1), images, labels, **kwargs)  # another encoder: another cache entry
    assert not torch.equal(predict(other.model, images), predict(first.model, images))


# --------------------------------------------------------------------------- errors and sizing
def test_bad_method_and_settings_raise():
    encoder = tiny_vit()
    images, labels = toy_data(8)
    with pytest.raises(ValueError, match="method must be one of"):
        prepare(encoder, "adapter")
    with pytest.raises(ValueError, match="method must be one of"):
        finetune(encoder, images, labels, method="linear", steps=1, batch_size=4, lr=1e-3)
    for rank in (0, -1, 1.5):
        with pytest.raises(ValueError, match="rank must be a positive int"):
            prepare(encoder, "lora", rank=rank)
    for blocks in (0, 4, True):
        with pytest.raises(ValueError, match="blocks must be an int from 1 to 3"):
            prepare(encoder, "partial", blocks=blocks)
    with pytest.raises(ValueError, match="needs an encoder with .blocks"):
        bare = nn.Linear(4, 4)
        bare.dim = 4
        prepare(bare, "partial")
    with pytest.raises(ValueError, match="labels must be"):
        finetune(encoder, images, labels[:4], method="full", steps=1, batch_size=4, lr=1e-3)


def test_finetune_steps():
    assert finetune_steps(2000, 64, max_steps=300) == 300             # the whole set: the profile's budget
    assert finetune_steps(200, 64, max_steps=300, epochs=30) == 90    # 3 batches an epoch, 30 epochs
    assert finetune_steps(20, 64, max_steps=300) == 30                # one batch of 20 an epoch
    assert finetune_steps(20, 64, max_steps=300, epochs=5, min_steps=20) == 20
