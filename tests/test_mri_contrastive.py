"""T1 <-> T2 contrastive pretraining, the T1 SimCLR baseline and the patch segmentation head
(medmm_lite.pretrain.mri_contrastive)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import medmm_lite
from medmm_lite.eval import dice
from medmm_lite.models import ViT
from medmm_lite.objectives import clip_loss
from medmm_lite.pretrain import mri_contrastive as MC


def vit(seed=0):
    torch.manual_seed(seed)
    return ViT(image_size=16, patch_size=8, in_chans=1, dim=16, depth=1, heads=2)


def test_pair_model_and_step():
    model = MC.ContrastPairModel(vit(0), vit(1), embed_dim=8).train()
    g = torch.Generator().manual_seed(0)
    batch = {"a": torch.rand(6, 1, 16, 16, generator=g), "b": torch.rand(6, 1, 16, 16, generator=g)}
    loss, _ = MC.contrast_pair_step(model, batch, augment=None)
    u, v = model(batch["a"], batch["b"])
    assert u.shape == v.shape == (6, 8)
    assert torch.allclose(loss, clip_loss(u, v, model.logit_scale()), atol=1e-6)
    loss.backward()
    for tower in (model.encoder_a, model.encoder_b):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.parameters())
    with pytest.raises(ValueError, match="registered"):
        model(batch["a"], batch["b"][:, :, :8])


def test_unpatchify_is_the_inverse_of_patchify():
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    patches = x.reshape(2, 1, 2, 8, 2, 8).permute(0, 2, 4, 1, 3, 5).reshape(2, 4, 64)   # row-major patches
    assert torch.equal(MC.unpatchify_masks(patches, (2, 2), 8), x)
    with pytest.raises(ValueError):
        MC.unpatchify_masks(patches, (2, 3), 8)


def test_soft_dice_loss():
    target = torch.zeros(2, 1, 4, 4)
    target[:, :, :2, :2] = 1
    perfect = (target * 2 - 1) * 50
    assert MC.soft_dice_loss(perfect, target).item() < 1e-3
    assert MC.soft_dice_loss(-perfect, target).item() > 0.7


def test_seg_head_learns_a_mask_from_tokens_that_carry_it():
    """Tokens that are the patch's pixels: the head must recover the mask (Dice well above 0)."""
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(96, 1, 16, 16, generator=g) > 0.8).float()
    images = masks + 0.1 * torch.randn(96, 1, 16, 16, generator=g)
    tokens = images.reshape(96, 1, 2, 8, 2, 8).permute(0, 2, 4, 1, 3, 5).reshape(96, 4, 64)
    head = MC.train_seg_head(tokens[:64], masks[:64], (2, 2), 8, steps=150, progress=False, device="cpu")
    pred = MC.predict_masks(head, tokens[64:])
    assert pred.shape == masks[64:].shape and set(pred.unique().tolist()) <= {0.0, 1.0}
    assert dice(pred, masks[64:]).mean() > 0.8
    # an untrained head does not
    with torch.random.fork_rng():
        torch.manual_seed(0)
        untrained = MC.PatchSegHead(64, (2, 2), 8)
    assert dice(MC.predict_masks(untrained, tokens[64:]), masks[64:]).mean() < 0.5


def test_contrastive_pairs_are_learned_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDMM_DATA", str(tmp_path))
    P = medmm_lite.profile("smoke").with_(image_size=16, patch_size=8, dim=16, depth=1, heads=2, batch_size=16,
                                          steps=40, lr=3e-3)
    g = torch.Generator().manual_seed(0)
    t1 = torch.rand(64, 1, 16, 16, generator=g)
    t2 = 1 - t1 + 0.05 * torch.randn(64, 1, 16, 16, generator=g)      # a registered "other contrast"
    model, info = MC.pretrain_t1t2(P, t1, t2, augment=False, progress=False, device="cpu")
    losses = info["history"].loss
    assert not info["cached"] and len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3
    _, again = MC.pretrain_t1t2(P, t1, t2, augment=False, progress=False, device="cpu")
    assert again["cached"]
    g_feat, l_feat = MC.extract_patch_features(model.encoder_a, t1[:5])
    assert g_feat.shape == (5, 16) and l_feat.shape == (5, 4, 16)
    simclr, info_s = MC.pretrain_t1_simclr(P, t1, steps=5, progress=False, device="cpu")
    assert not info_s["cached"] and len(info_s["history"]) == 5 and hasattr(simclr, "encoder")
    with pytest.raises(ValueError, match="registered"):
        MC.pretrain_t1t2(P, t1, t2[:10], progress=False)
    with pytest.raises(ValueError, match="images must be"):
        MC.pretrain_t1_simclr(P, torch.rand(8, 1, 32, 32), progress=False)


def test_dense_pair_loss_matches_a_hand_computation_and_prefers_registered_patches():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, 8, generator=g)
    b = a + 0.05 * torch.randn(3, 4, 8, generator=g)              # registered: patch p of brain i ~ same
    fa, fb = F.normalize(a.flatten(0, 1), dim=1), F.normalize(b.flatten(0, 1), dim=1)
    logits = fa @ fb.T / 0.1
    target = torch.arange(12)
    by_hand = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    assert torch.allclose(MC.dense_pair_loss(a, b, n_positions=None), by_hand, atol=1e-6)
    shuffled = b[:, torch.randperm(4, generator=g)]
    assert MC.dense_pair_loss(a, b, n_positions=None) < MC.dense_pair_loss(a, shuffled, n_positions=None) - 1
    sub = MC.dense_pair_loss(a, b, n_positions=2, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(sub) and sub < np.log(6)
    with pytest.raises(ValueError):
        MC.dense_pair_loss(a, b[:, :3])


def test_step_with_dense_loss_adds_it_and_keeps_the_pair_registered():
    model = MC.ContrastPairModel(vit(0), vit(1), embed_dim=8).train()
    g = torch.Generator().manual_seed(0)
    batch = {"a": torch.rand(4, 1, 16, 16, generator=g), "b": torch.rand(4, 1, 16, 16, generator=g)}
    plain, _ = MC.contrast_pair_step(model, batch, augment=None)
    both, logs = MC.contrast_pair_step(model, batch, augment=None, dense_weight=0.5)
    assert torch.allclose(both, logs["global_loss"] + 0.5 * logs["dense_loss"], atol=1e-6)
    assert torch.allclose(plain, logs["global_loss"], atol=1e-6)
    seen = {}

    def augment(x, generator=None):
        seen["channels"] = x.shape[1]
        return x.flip(-1)

    MC.contrast_pair_step(model, batch, augment=augment)
    assert seen["channels"] == 2, "the two contrasts must be augmented together (stacked as channels)"
