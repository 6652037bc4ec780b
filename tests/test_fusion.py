"""Image + labs late fusion with missing-modality embeddings (medmm_lite.fusion)."""
import numpy as np
import pytest
import torch

from medmm_lite import fusion as FU
from medmm_lite.data import LAB_NAMES
from medmm_lite.eval import auroc


def test_standardise_labs():
    rng = np.random.default_rng(0)
    labs = np.stack([np.exp(rng.normal(4, 1, 500)), rng.normal(7, 2, 500), rng.normal(37, 0.4, 500),
                     rng.normal(97, 1.5, 500)], 1)
    z, stats = FU.standardise_labs(labs)
    assert z.shape == (500, 4) and z.dtype == torch.float32
    np.testing.assert_allclose(z.mean(0).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(0, unbiased=False).numpy(), 1, atol=1e-4)
    # BNP is standardised on the log scale
    np.testing.assert_allclose(z[:, 0].numpy(), (np.log(labs[:, 0]) - np.log(labs[:, 0]).mean())
                               / np.log(labs[:, 0]).std(), atol=1e-4)
    z2, _ = FU.standardise_labs(labs[:10], stats=stats)   # the training statistics reused
    np.testing.assert_allclose(z2.numpy(), z[:10].numpy(), atol=1e-6)
    with pytest.raises(ValueError):
        FU.standardise_labs(labs[:, :3])


def test_missing_embedding_replaces_the_modality():
    torch.manual_seed(0)
    model = FU.FusionClassifier(8, 4, 3, hidden=16).eval()
    x, z = torch.randn(5, 8), torch.randn(5, 4)
    with torch.no_grad():
        model.missing_labs.fill_(0.7)
        e = model.embed(x, z, True, False)
        assert torch.allclose(e[:, 16:], torch.full((5, 16), 0.7))
        assert torch.allclose(e[:, :16], model.embed(x, z)[:, :16])
        # without labs the output ignores the labs
        assert torch.allclose(model(x, z, True, False), model(x, torch.randn(5, 4), True, False))
        mask = torch.tensor([True, False, True, False, True])
        mixed = model(x, z, True, mask)
        assert torch.allclose(mixed[mask], model(x, z)[mask]) and torch.allclose(mixed[~mask], model(x, z, True, False)[~mask])
    with pytest.raises(ValueError):
        model(x, torch.randn(4, 4))


def test_modality_dropout_masks():
    g = torch.Generator().manual_seed(0)
    image, labs = FU.modality_dropout_masks(20000, 0.3, g)
    assert (image | labs).all()                                  # never both missing
    assert 0.6 < image.float().mean() < 0.8 and 0.6 < labs.float().mean() < 0.8
    image, labs = FU.modality_dropout_masks(100, 0.0, g)
    assert image.all() and labs.all()
    with pytest.raises(ValueError):
        FU.modality_dropout_masks(10, 1.0)


def _toy(n=1200, seed=0):
    """Finding 0 visible only in the image features, finding 1 only in the labs."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 2)) < 0.3).astype(np.float32)
    x = rng.normal(0, 1, (n, 6)).astype(np.float32)
    x[:, 0] += 2.5 * y[:, 0]
    labs = np.stack([np.exp(4 + 1.5 * y[:, 1] + rng.normal(0, 0.5, n)), rng.normal(7, 2, n), rng.normal(37, 0.4, n),
                     rng.normal(97, 1.5, n)], 1)
    z, _ = FU.standardise_labs(labs, LAB_NAMES)
    return torch.from_numpy(x), z, torch.from_numpy(y)


def test_fusion_learns_and_dropout_makes_it_robust():
    x, z, y = _toy()
    tr, te = slice(0, 900), slice(900, None)
    both, _ = FU.train_fusion(x[tr], z[tr], y[tr], steps=150, batch_size=256, lr=1e-2, seed=0, progress=False)
    drop, _ = FU.train_fusion(x[tr], z[tr], y[tr], modality_dropout=0.4, steps=150, batch_size=256, lr=1e-2, seed=0,
                              progress=False)
    full = FU.predict_fusion(both, x[te], z[te])
    assert auroc(y[te], full)["per_finding"]["0"] > 0.9 and auroc(y[te], full)["per_finding"]["1"] > 0.85
    assert both.missing_labs.abs().sum() == 0                 # never trained without labs
    assert drop.missing_labs.abs().sum() > 0
    # without labs the dropout model still reads the image
    no_labs = FU.predict_fusion(drop, x[te], z[te], labs_present=False)
    assert auroc(y[te, 0], no_labs[:, 0])["macro"] > 0.9
    table = FU.sensitivity_table({"both": (both, ("image", "labs")), "image": (both, ("image",))}, x[te], z[te], y[te],
                                 lambda yy, ss: auroc(yy, ss)["macro"])
    assert table["image"]["image + labs"] == table["image"]["image only"] and np.isnan(table["image"]["labs only"])
    # deterministic for a seed
    again, _ = FU.train_fusion(x[tr], z[tr], y[tr], steps=150, batch_size=256, lr=1e-2, seed=0, progress=False)
    assert torch.allclose(FU.predict_fusion(again, x[te], z[te]), full)


def test_bad_arguments():
    x, z, y = _toy(50)
    with pytest.raises(ValueError):
        FU.train_fusion(x, z, y, use=("text",), steps=1, progress=False)
    with pytest.raises(ValueError):
        FU.train_fusion(x[:10], z, y, steps=1, progress=False)
    with pytest.raises(ValueError):
        FU.FusionClassifier(0, 4, 2)
    model, _ = FU.train_fusion(x, z, y, steps=2, progress=False)
    with pytest.raises(ValueError):
        FU.predict_fusion(model, x, z, image=False, labs_present=False)
