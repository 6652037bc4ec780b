"""Image <-> labs contrastive pretraining (medmm_lite.pretrain.labs_clip): shapes, the loss,
learning on a tiny cohort, caching, the registry entry and clear errors."""
import numpy as np
import pytest
import torch

import medmm_lite
from medmm_lite.data.tensors import TensorDictDataset
from medmm_lite.models import ViT
from medmm_lite.objectives import clip_loss
from medmm_lite.pretrain import labs_clip as LC
from medmm_lite.train import fit


def tiny_model(seed=0, dim=16):
    torch.manual_seed(seed)
    return LC.LabsCLIPModel(ViT(image_size=16, patch_size=8, in_chans=1, dim=dim, depth=1, heads=2),
                            LC.LabsEncoder(4, dim), embed_dim=12)


def test_labs_encoder_shapes_and_errors():
    enc = LC.LabsEncoder(4, 8)
    out = enc(torch.randn(5, 4))
    assert out.global_features.shape == (5, 8) and enc.dim == 8
    with pytest.raises(ValueError, match="labs must be"):
        enc(torch.randn(5, 3))
    with pytest.raises(ValueError):
        LC.LabsEncoder(0, 8)
    with pytest.raises(ValueError):
        LC.LabsCLIPModel(ViT(image_size=16, patch_size=8, in_chans=1, dim=8, depth=1, heads=2), enc, embed_dim=0)


def test_step_is_clip_loss_of_the_two_projections_and_trains_both_towers():
    model = tiny_model().train()
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(6, 1, 16, 16, generator=g), "labs": torch.randn(6, 4, generator=g)}
    loss, logs = LC.labs_clip_step(model, batch, augment=None)
    u, v = model(batch["image"], batch["labs"])
    assert torch.allclose(loss, clip_loss(u, v, model.logit_scale()), atol=1e-6)
    assert float(logs["temperature"]) == pytest.approx(0.07, rel=1e-4)
    loss.backward()
    for tower in (model.image_encoder, model.labs_encoder, model.logit_scale):
        grads = [p.grad for p in tower.parameters() if p.requires_grad]
        assert grads and all(gr is not None and torch.isfinite(gr).all() for gr in grads)
        assert any(gr.abs().sum() > 0 for gr in grads)


def test_pairs_that_match_get_a_lower_loss_after_training():
    """Images whose brightness encodes the labs: a short run must learn to pair them."""
    g = torch.Generator().manual_seed(1)
    labs = torch.randn(128, 4, generator=g)
    images = torch.rand(128, 1, 16, 16, generator=g) * 0.2
    images[:, :, :8, :8] += 0.2 * labs[:, 0, None, None, None]
    images[:, :, 8:, 8:] += 0.2 * labs[:, 1, None, None, None]
    model = tiny_model()
    fixed = {"image": images[:32], "labs": labs[:32]}
    shuffled = {"image": images[:32], "labs": labs[:32][torch.randperm(32, generator=g)]}
    model.eval()
    with torch.no_grad():
        before = LC.labs_clip_step(model, fixed, augment=None)[0].item()
    fit(model, lambda m, b: LC.labs_clip_step(m, b, augment=None), TensorDictDataset(image=images, labs=labs),
        steps=60, batch_size=32, lr=3e-3, progress=False, device="cpu")
    model.eval()
    with torch.no_grad():
        after = LC.labs_clip_step(model, fixed, augment=None)[0].item()
        # the true pairing must now score better than a shuffled one
        u, v = model(fixed["image"], fixed["labs"])
        u, v = torch.nn.functional.normalize(u, dim=1), torch.nn.functional.normalize(v, dim=1)
        true_sim = (u * v).sum(1).mean().item()
        u2, v2 = model(shuffled["image"], shuffled["labs"])
        wrong_sim = (torch.nn.functional.normalize(u2, dim=1) * torch.nn.functional.normalize(v2, dim=1)).sum(1).mean().item()
    assert after < before - 0.3, f"loss {before:.3f} -> {after:.3f}"
    assert true_sim > wrong_sim + 0.1, (true_sim, wrong_sim)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    import os

    from medmm_lite.data.prepare import prepare_data

    root = tmp_path_factory.mktemp("medmm")
    old = os.environ.get("MEDMM_DATA")
    os.environ["MEDMM_DATA"] = str(root)
    try:
        P = medmm_lite.profile("smoke").with_(n_studies=120, image_size=32, patch_size=8, dim=16, depth=1, heads=2,
                                              vocab_size=120, max_text_len=48, batch_size=16, steps=4,
                                              probe_steps=5, lr=1e-3)
        yield P, prepare_data(P, seed=0)
    finally:
        if old is None:
            os.environ.pop("MEDMM_DATA")
        else:
            os.environ["MEDMM_DATA"] = old


def test_pretrain_labs_clip_caches_and_registers(tiny_data):
    from medmm_lite.pretrain.registry import OBJECTIVES, get_objective

    P, data = tiny_data
    model, info = LC.pretrain_labs_clip(P, data, seed=0, progress=False)
    assert not info["cached"] and len(info["history"]) == P.steps and not model.training
    assert len(info["lab_stats"]["mean"]) == 4
    again, info2 = LC.pretrain_labs_clip(P, data, seed=0, progress=False)
    assert info2["cached"]
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    other, info3 = LC.pretrain_labs_clip(P, data, seed=1, progress=False)
    assert not info3["cached"]
    assert "labs_clip" in OBJECTIVES and get_objective("labs_clip").load() is LC.pretrain_labs_clip
    # embeddings of the training images have the shared width
    with torch.no_grad():
        emb = model.encode_image(data.cohort.images[:4])
    assert emb.shape == (4, P.dim) and np.isfinite(emb.numpy()).all()
