"""CLIP / ConVIRT and SimCLR pretraining (medmm_lite.pretrain.clip, .simclr): shapes, the
logit scale, learning on a tiny cohort, caching, and clear errors."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import medmm_lite
from medmm_lite.data.tensors import TensorDictDataset
from medmm_lite.models import TextEncoder, ViT
from medmm_lite.objectives import clip_loss, nt_xent_loss
from medmm_lite.pretrain import clip as C
from medmm_lite.pretrain import simclr as S
from medmm_lite.train import fit

VOCAB, MAX_LEN, DIM = 40, 12, 16


def towers(seed=0):
    torch.manual_seed(seed)
    return (ViT(image_size=16, patch_size=8, in_chans=1, dim=DIM, depth=1, heads=2),
            TextEncoder(vocab_size=VOCAB, dim=DIM, depth=1, heads=2, max_len=MAX_LEN))


def batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, VOCAB, (n, MAX_LEN), generator=g)
    mask = torch.ones(n, MAX_LEN, dtype=torch.long)
    for i in range(n):  # ragged lengths, every text ends before the last column
        mask[i, 3 + i % 6:] = 0
    ids = ids * mask
    return {"image": torch.rand(n, 1, 16, 16, generator=g), "input_ids": ids, "attention_mask": mask}


def tiny_profile(**changes):
    sizes = dict(n_studies=120, image_size=32, patch_size=8, dim=16, depth=1, heads=2, vocab_size=120,
                 max_text_len=48, batch_size=16, steps=4, probe_steps=5, lr=1e-3)
    return medmm_lite.profile("smoke").with_(**{**sizes, **changes})


# --------------------------------------------------------------------------- the model
@pytest.mark.parametrize("projection", ["mlp", "linear"])
def test_shapes_and_projection_kinds(projection):
    image, text = towers()
    model = C.CLIPModel(image, text, embed_dim=24, projection=projection)
    b = batch()
    img, txt = model(b["image"], b["input_ids"], b["attention_mask"])
    assert img.shape == (6, 24) and txt.shape == (6, 24)
    assert torch.equal(img, model.encode_image(b["image"]))
    head = model.image_projection.net
    if projection == "linear":
        assert isinstance(head, torch.nn.Linear) and head.bias is None
    else:
        assert [type(m).__name__ for m in head] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]


def test_encode_text_trims_padding_without_changing_the_result():
    image, text = towers()
    model = C.CLIPModel(image, text, embed_dim=8).eval()
    b = batch()
    longest = int(b["attention_mask"].sum(1).max())
    assert longest < MAX_LEN
    full = model.text_projection(text(b["input_ids"], b["attention_mask"]).global_features)
    trimmed = model.encode_text(b["input_ids"], b["attention_mask"])
    assert torch.allclose(full, trimmed, atol=1e-5)


def test_logit_scale_starts_at_one_over_0_07_and_fixed_temperature_has_no_grad():
    image, text = towers()
    learned = C.CLIPModel(image, text, embed_dim=8)
    assert learned.logit_scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert learned.temperature == pytest.approx(0.07, rel=1e-6)
    assert learned.logit_scale.log_scale.requires_grad
    fixed = C.CLIPModel(*towers(), embed_dim=8, init_temperature=0.1, learn_temperature=False)
    assert fixed.logit_scale().item() == pytest.approx(10.0, rel=1e-6)
    assert not fixed.logit_scale.log_scale.requires_grad


def test_clip_step_matches_open_clip_and_logs_temperature():
    open_clip = pytest.importorskip("open_clip")
    model = C.CLIPModel(*towers(), embed_dim=8).eval()
    b = batch()
    loss, logs = C.clip_step(model, b)
    img, txt = model(b["image"], b["input_ids"], b["attention_mask"])
    reference = open_clip.loss.ClipLoss()(F.normalize(img, dim=-1), F.normalize(txt, dim=-1), model.logit_scale())
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert float(logs["temperature"]) == pytest.approx(0.07, rel=1e-5)
    convirt, _ = C.clip_step(model, b, image_to_text_weight=0.75)
    assert convirt.item() == pytest.approx(clip_loss(img, txt, model.logit_scale(), 0.75).item(), rel=1e-5)


def test_augmentation_only_while_training():
    model = C.CLIPModel(*towers(), embed_dim=8)
    b = batch()
    calls = []

    def augment(images, generator=None):
        calls.append(images.shape)
        return images.flip(-1)

    model.train()
    C.clip_step(model, b, augment=augment)
    model.eval()
    C.clip_step(model, b, augment=augment)
    assert calls == [b["image"].shape]


def test_logit_scale_is_clamped_at_100_during_training():
    # A scale pushed above the clamp: every step must use exactly 100 (T = 0.01), and the
    # model can never report more, however far the raw parameter goes.
    model = C.CLIPModel(*towers(), embed_dim=8)
    with torch.no_grad():
        model.logit_scale.log_scale.fill_(math.log(100.0) + 0.5)
    data = TensorDictDataset(**batch(n=16))
    history = fit(model, C.clip_step, data, steps=6, batch_size=8, lr=1e-1, progress=False, device="cpu")
    assert all(t == pytest.approx(0.01, rel=1e-6) for t in history.metrics["temperature"])
    assert model.logit_scale().item() == pytest.approx(100.0, rel=1e-6)
    assert model.temperature == pytest.approx(0.01, rel=1e-6)


def test_learned_temperature_moves_and_fixed_temperature_does_not():
    data = TensorDictDataset(**batch(n=16))
    learned = C.CLIPModel(*towers(), embed_dim=8)
    fixed = C.CLIPModel(*towers(), embed_dim=8, init_temperature=0.2, learn_temperature=False)
    for model in (learned, fixed):
        fit(model, C.clip_step, data, steps=8, batch_size=8, lr=5e-2, progress=False, device="cpu")
    assert learned.temperature != pytest.approx(0.07, rel=1e-4)
    assert fixed.temperature == pytest.approx(0.2, rel=1e-7)


# --------------------------------------------------------------------------- learning on a tiny cohort
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    import os

    from medmm_lite.data.prepare import prepare_data

    root = tmp_path_factory.mktemp("medmm")
    old = os.environ.get("MEDMM_DATA")
    os.environ["MEDMM_DATA"] = str(root)
    try:
        P = tiny_profile()
        yield P, prepare_data(P, seed=0)
    finally:
        if old is None:
            os.environ.pop("MEDMM_DATA")
        else:
            os.environ["MEDMM_DATA"] = old


def test_short_clip_run_on_a_tiny_cohort_lowers_the_loss(tiny_data):
    P, data = tiny_data
    train = torch.as_tensor(data.splits["train"])
    tensors = {"image": data.cohort.images[train], "input_ids": data.input_ids[train],
               "attention_mask": data.attention_mask[train]}
    fixed_batch = {k: v[:32] for k, v in tensors.items()}
    model = C.build_clip(P, len(data.tokenizer), seed=0, temperature=0.1)
    model.eval()
    with torch.no_grad():
        before = C.clip_step(model, fixed_batch)[0].item()
    fit(model, C.clip_step, TensorDictDataset(**tensors), steps=40, batch_size=16, lr=2e-3, progress=False,
        device="cpu")
    C.recalibrate_batchnorm(model, *tensors.values())
    model.eval()
    with torch.no_grad():
        after = C.clip_step(model, fixed_batch)[0].item()
    assert after < before - 0.3, f"loss {before:.3f} -> {after:.3f}"


def test_recalibrate_batchnorm_uses_the_final_weights_and_restores_the_model():
    model = C.CLIPModel(*towers(), embed_dim=8)
    b = batch(n=12)
    bn = model.image_projection.net[1]
    bn.running_mean.fill_(5.0)  # stale statistics, as after fast early training
    model.train()
    C.recalibrate_batchnorm(model, b["image"], b["input_ids"], b["attention_mask"], batch_size=64)
    model.eval()
    with torch.no_grad():
        hidden = model.image_projection.net[0](model.image_encoder(b["image"]).global_features)
    assert torch.allclose(bn.running_mean, hidden.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, hidden.var(0, unbiased=True), atol=1e-5)
    assert bn.momentum == 0.1
    model.train()
    C.recalibrate_batchnorm(model, b["image"], b["input_ids"], b["attention_mask"])
    assert model.training and model.image_encoder.training


def test_pretrain_clip_caches_and_keys_by_temperature(tiny_data):
    P, data = tiny_data
    model, info = C.pretrain_clip(P, data, seed=0, progress=False)
    assert not info["cached"] and len(info["history"]) == P.steps
    assert not model.training and model.embed_dim == P.dim
    assert len(info["history"].metrics["temperature"]) == P.steps
    again, info2 = C.pretrain_clip(P, data, seed=0, progress=False)
    assert info2["cached"]
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    fixed, info3 = C.pretrain_clip(P, data, seed=0, temperature=0.1, image_to_text_weight=0.75, progress=False)
    assert not info3["cached"] and fixed.temperature == pytest.approx(0.1, rel=1e-6)


def test_text_embedder_feeds_prompt_embeddings(tiny_data):
    from medmm_lite.adapt import prompt_embeddings

    P, data = tiny_data
    model = C.build_clip(P, len(data.tokenizer), seed=0).eval()
    encode = C.text_embedder(model, data.tokenizer)
    out = encode(["No pleural effusion.", "Cardiomegaly."])
    assert out.shape == (2, P.dim) and out.device.type == "cpu"
    pos, neg = prompt_embeddings(encode)
    assert pos.shape == neg.shape == (9, P.dim)


def test_data_fingerprint_changes_with_the_training_split(tiny_data):
    import copy

    _, data = tiny_data
    other = copy.copy(data)
    other.splits = {**data.splits, "train": data.splits["train"][1:]}
    assert C.data_fingerprint(data) == C.data_fingerprint(data)
    assert C.data_fingerprint(data) != C.data_fingerprint(other)


def test_impression_and_encode_texts(tiny_data):
    P, data = tiny_data
    assert C.impression("FINDINGS: No effusion. IMPRESSION: Cardiomegaly.") == "Cardiomegaly."
    assert C.impression("Cardiomegaly.") == "Cardiomegaly."
    ids, mask = C.encode_texts(data, "impression", P.max_text_len)
    assert ids.shape == data.input_ids.shape and mask.sum() < data.attention_mask.sum()
    i = int(mask.sum(1).argmin())  # a short impression, not truncated
    decoded = data.tokenizer.decode(ids[i][mask[i].bool()], skip_special_tokens=True)
    assert decoded.lower() == C.impression(data.cohort.reports[i]).lower()
    full_ids, full_mask = C.encode_texts(data, "report")
    assert full_ids is data.input_ids and full_mask is data.attention_mask


def test_same_group_batches_draw_every_batch_from_one_group():
    from medmm_lite.train import batch_indices, fetch_batch

    groups = np.array([0] * 30 + [1] * 50 + [2] * 5)
    data = C.SameGroupBatches(groups, index=torch.arange(len(groups)))
    seen_groups = set()
    for step in range(12):
        idx = batch_indices(step, len(groups), 8, seed=3).tolist()
        got = fetch_batch(data, idx)["index"].numpy()
        assert len(set(got.tolist())) == 8, "no study twice in a batch"
        first = groups[idx[0]]
        seen_groups.add(int(first))
        if first != 2:
            assert (groups[got] == first).all()
        else:  # a group smaller than the batch: all of it, topped up from the others
            assert (groups[got] == 2).sum() == 5
        again = fetch_batch(data, idx)["index"].numpy()
        assert np.array_equal(got, again), "the same request must give the same batch (resumable runs)"
    assert seen_groups >= {0, 1}
    with pytest.raises(ValueError, match="one group id per sample"):
        C.SameGroupBatches(groups[:-1], index=torch.arange(len(groups)))


def test_pretrain_clip_plain_variant_runs(tiny_data):
    P, data = tiny_data
    model, info = C.pretrain_clip(P, data, seed=0, text="report", negatives="random", projection="linear",
                                  progress=False)
    assert not info["cached"] and len(info["history"]) == P.steps
    assert model.image_projection.kind == "linear"


# --------------------------------------------------------------------------- SimCLR
def test_simclr_shapes_and_step_is_nt_xent_of_two_views():
    torch.manual_seed(0)
    model = S.SimCLRModel(ViT(image_size=16, patch_size=8, in_chans=1, dim=DIM, depth=1, heads=2), proj_dim=12)
    images = torch.rand(5, 1, 16, 16)
    assert model(images).shape == (5, 12)
    model.eval()

    def shift(x, generator=None):  # a deterministic "augmentation"
        shift.calls += 1
        return x.roll(shift.calls, dims=-1)

    shift.calls = 0
    loss = S.simclr_step(model, {"image": images}, temperature=0.2, augment=shift)
    za, zb = model(images.roll(1, dims=-1)), model(images.roll(2, dims=-1))
    assert loss.item() == pytest.approx(nt_xent_loss(za, zb, 0.2).item(), rel=1e-5)


def test_short_simclr_run_learns_to_find_the_twin_view(tiny_data):
    # Mild views (a little pixel noise) make the twin easy to find, so a few steps must take
    # the loss well below chance, log(2N - 1); the real recipe is exercised by pretrain_simclr.
    from medmm_lite.data.augment import gaussian_noise

    P, data = tiny_data
    images = data.cohort.images[torch.as_tensor(data.splits["train"])]
    model = S.build_simclr(P, seed=0)
    g = torch.Generator().manual_seed(1)
    history = fit(model, lambda m, b: S.simclr_step(m, b, augment=gaussian_noise, generator=g),
                  TensorDictDataset(image=images), steps=40, batch_size=16, lr=2e-3, progress=False,
                  device="cpu", log_every=1)
    chance = math.log(2 * 16 - 1)
    late = sum(history.loss[-10:]) / 10
    assert late < chance - 1.0, f"loss {history.loss[0]:.3f} -> {late:.3f}, chance {chance:.3f}"


def test_pretrain_simclr_caches(tiny_data):
    P, data = tiny_data
    model, info = S.pretrain_simclr(P, data, seed=0, progress=False)
    assert not info["cached"] and len(info["history"]) == P.steps and not model.training
    _, info2 = S.pretrain_simclr(P, data, seed=0, progress=False)
    assert info2["cached"]


# --------------------------------------------------------------------------- bad input
def test_bad_input_is_a_clear_error(tiny_data):
    P, data = tiny_data
    image, text = towers()
    with pytest.raises(ValueError, match="embed_dim"):
        C.CLIPModel(image, text, embed_dim=0)
    with pytest.raises(ValueError, match="projection"):
        C.CLIPModel(image, text, embed_dim=8, projection="deep")
    with pytest.raises(ValueError, match="init_temperature"):
        C.CLIPModel(image, text, embed_dim=8, init_temperature=0.001)
    with pytest.raises(ValueError, match=r"\.dim"):
        C.CLIPModel(torch.nn.Identity(), text, embed_dim=8)
    with pytest.raises(KeyError, match="attention_mask"):
        C.clip_step(C.CLIPModel(image, text, embed_dim=8), {"image": torch.rand(2, 1, 16, 16),
                                                            "input_ids": torch.ones(2, 4, dtype=torch.long)})
    with pytest.raises(ValueError, match="image_to_text_weight"):
        C.pretrain_clip(P, data, image_to_text_weight=1.5)
    with pytest.raises(ValueError, match="temperature"):
        C.pretrain_clip(P, data, temperature=0.0)
    with pytest.raises(ValueError, match="negatives"):
        C.pretrain_clip(P, data, negatives="hard")
    with pytest.raises(ValueError, match="text"):
        C.pretrain_clip(P, data, text="findings")
    with pytest.raises(ValueError, match="temperature"):
        S.pretrain_simclr(P, data, temperature=-1)
    with pytest.raises(ValueError, match="augment"):
        S.pretrain_simclr(P, data, augment="heavy")
    with pytest.raises(ValueError, match="negatives"):
        S.pretrain_simclr(P, data, negatives="hard")
    with pytest.raises(ValueError, match="augmentation"):
        S.simclr_step(S.SimCLRModel(image), {"image": torch.rand(2, 1, 16, 16)}, augment=None)
    with pytest.raises(ValueError, match="proj_dim"):
        S.SimCLRModel(image, proj_dim=0)
