import numpy as np
import pytest
import torch

import medmm_lite
from medmm_lite import backbones
from medmm_lite.adapt import LABEL_FRACTIONS, label_subset, pathology_auroc, probe_curve, supervised_curve
from medmm_lite.data import FINDINGS, PATHOLOGIES, TensorDictDataset, generate_cohort, patient_split
from medmm_lite.data.augment import gaussian_blur, light_augment, random_resized_crop, simclr_augment


@pytest.fixture(scope="module")
def small():
    cohort = generate_cohort(160, image_size=32, seed=3)
    return cohort, patient_split(cohort, seed=0)


def test_label_subset_size_positives_and_determinism(small):
    cohort, splits = small
    train = splits["train"]
    subset = label_subset(train, cohort.labels, 0.05, seed=1)
    assert set(subset) <= set(train)
    assert len(subset) >= int(np.ceil(0.05 * len(train)))
    for name in PATHOLOGIES:
        k = FINDINGS.index(name)
        if cohort.labels[train, k].sum() > 0:
            assert cohort.labels[subset, k].sum() >= 1, f"{name} lost all positives"
    assert np.array_equal(subset, label_subset(train, cohort.labels, 0.05, seed=1))
    assert len(label_subset(train, cohort.labels, 1.0)) == len(train)
    with pytest.raises(ValueError, match="fraction"):
        label_subset(train, cohort.labels, 0.0)


def test_pathology_auroc_uses_the_nine_pathologies():
    y = torch.tensor(np.eye(10)[np.arange(40) % 10], dtype=torch.float32)
    y[:, -1] = 1 - y[:, :-1].max(1).values
    result = pathology_auroc(y, y)
    assert result["macro"] == pytest.approx(1.0)
    assert list(result["per_finding"]) == list(PATHOLOGIES)


def test_probe_curve_on_an_informative_encoder(small):
    """An 'encoder' whose features are the labels plus noise must probe far above chance."""
    cohort, splits = small

    g = torch.Generator().manual_seed(0)
    features = cohort.labels + 0.3 * torch.randn(cohort.labels.shape, generator=g)
    curve = probe_curve(None, cohort, splits, fractions=(0.5, 1.0), steps=150,
                        features=(features[splits["train"]], features[splits["test"]]))
    assert curve[1.0]["macro"] > 0.9
    assert set(curve) == {0.5, 1.0}


def test_supervised_curve_learns_something_and_records_models(small):
    cohort, splits = small
    P = medmm_lite.profile("smoke")
    curve = supervised_curve(lambda: backbones.image_encoder(P), cohort, splits, fractions=(1.0,), steps=40,
                             batch_size=32, lr=1e-3, progress=False)
    assert set(curve[1.0]) >= {"macro", "per_finding", "model", "test_scores", "n_labels"}
    assert curve[1.0]["test_scores"].shape == (len(splits["test"]), len(PATHOLOGIES))
    assert LABEL_FRACTIONS == (0.01, 0.1, 1.0)


def test_supervised_curve_does_not_depend_on_what_ran_before(small):
    """Lesson 01 and lesson 03 must get the same baseline: the model's initialisation is drawn from
    ``seed``, not from whatever the global random state holds when the curve is called."""
    cohort, splits = small
    P = medmm_lite.profile("smoke")

    def curve():
        return supervised_curve(lambda: backbones.image_encoder(P), cohort, splits, fractions=(1.0,), steps=3,
                                batch_size=32, lr=1e-3, seed=5, progress=False)[1.0]["test_scores"]

    torch.manual_seed(0)
    first = curve()
    torch.rand(1000)                     # a lesson that drew random numbers in between
    assert torch.equal(first, curve())


@pytest.mark.parametrize("augment", [light_augment, simclr_augment, random_resized_crop, gaussian_blur])
def test_augmentations_keep_shape_range_and_are_seeded(augment):
    x = torch.rand(6, 1, 32, 32)
    a = augment(x, generator=torch.Generator().manual_seed(0))
    b = augment(x, generator=torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, x)


def test_crop_at_full_scale_without_rotation_or_shift_is_identity():
    x = torch.rand(3, 1, 16, 16)
    y = random_resized_crop(x, scale=(1.0, 1.0), max_rotation_deg=0, max_shift=0.0)
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_tensor_dict_dataset_batches_and_validates():
    ds = TensorDictDataset(image=torch.rand(5, 1, 4, 4), labels=torch.arange(5))
    batch = ds.__getitems__([4, 0])
    assert batch["labels"].tolist() == [4, 0] and batch["image"].shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match="same first dimension"):
        TensorDictDataset(a=torch.zeros(3), b=torch.zeros(4))
