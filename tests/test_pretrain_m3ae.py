"""MAE, MLM and M3AE models: shapes, the contracts the lesson relies on, and tiny runs that learn."""
import numpy as np
import pytest
import torch

import medmm_lite
from medmm_lite.models import ViT, patchify
from medmm_lite.objectives import mae_loss
from medmm_lite.pretrain.m3ae import (M3AE, FILL_IN_WORDS, M3AEImageEncoder, MaskedLanguageModel, box_patch_mask,
                                      derangement, fill_in_queries, trim_padding)
from medmm_lite.pretrain.mae import MAE, build_mae, reconstruct
from medmm_lite.train import fit

CLS, SEP, PAD, MASK = 2, 3, 0, 4
LEFT, RIGHT = 20, 21


def tiny_m3ae(**kw):
    args = dict(image_size=16, patch_size=4, vocab_size=30, max_text_len=8, dim=32, depth=2, heads=4,
                decoder_dim=32, decoder_depth=1, decoder_heads=4)
    return M3AE(**{**args, **kw})


def side_pairs(n, seed=0):
    """Images with a bright blob on the left or the right half, and the report '[CLS] 10 12 <side> 11 [SEP]'."""
    g = torch.Generator().manual_seed(seed)
    side = torch.randint(0, 2, (n,), generator=g)
    images = 0.1 * torch.rand(n, 1, 16, 16, generator=g)
    rows = torch.randint(2, 10, (n,), generator=g)
    for i in range(n):
        c = 2 if side[i] == 0 else 10
        images[i, 0, rows[i]:rows[i] + 4, c:c + 4] += 0.8
    ids = torch.tensor([CLS, 10, 12, LEFT, 11, SEP]).repeat(n, 1)
    ids[:, 3] = torch.where(side == 0, LEFT, RIGHT)
    return images, ids, torch.ones_like(ids), side


# --------------------------------------------------------------------------- MAE
def test_mae_forward_shapes_and_loss_contract():
    vit = ViT(32, 8, 1, dim=32, depth=1, heads=4, pos_embed="sincos")
    mae = MAE(vit, decoder_dim=16, decoder_depth=1, decoder_heads=2, norm_pix_loss=True)
    images = torch.rand(3, 1, 32, 32)
    loss, pred, mask = mae(images, mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert pred.shape == (3, 16, 64) and mask.shape == (3, 16)
    assert torch.equal(mask.sum(1), torch.full((3,), 12.0))
    assert loss.item() == pytest.approx(mae_loss(pred, patchify(images, 8), mask, True).item(), rel=1e-6)
    latent, _, _ = mae.forward_encoder(images, 0.75, generator=torch.Generator().manual_seed(0))
    assert latent.shape == (3, 1 + 4, 32), "the encoder sees the [CLS] and the 25% kept patches only"


def test_mae_with_a_conv_stem_hides_the_masked_pixels_from_the_kept_tokens():
    """A full-image conv stem sees 15 px around each 8 px patch: without blacking out the hidden
    patches first, a kept token would carry the borders of its hidden neighbours."""
    torch.manual_seed(0)
    mae = MAE(ViT(32, 8, 1, dim=32, depth=1, heads=4, pos_embed="sincos", stem="conv"), decoder_dim=16,
              decoder_depth=1, decoder_heads=2).eval()
    images = torch.rand(2, 1, 32, 32)
    latent, mask, _ = mae.forward_encoder(images, 0.75, generator=torch.Generator().manual_seed(0))
    hidden = mask[..., None].expand(-1, -1, 64).bool()
    changed = patchify(images, 8).masked_fill(hidden, 0.0) + patchify(torch.rand(2, 1, 32, 32), 8) * hidden
    from medmm_lite.models import unpatchify
    again, mask_again, _ = mae.forward_encoder(unpatchify(changed, 8, 1), 0.75,
                                               generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, mask_again)
    assert torch.allclose(latent, again, atol=1e-6), "the kept tokens must not depend on hidden pixels"
    # the linear stem takes the plain path; both paths keep the same patches for one generator
    linear = MAE(ViT(32, 8, 1, dim=32, depth=1, heads=4, pos_embed="sincos"), decoder_dim=16, decoder_depth=1,
                 decoder_heads=2)
    _, mask_linear, restore_linear = linear.forward_encoder(images, 0.75, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask_linear, mask)


def test_m3ae_refuses_a_stem_that_crosses_patches_and_loads_a_conv_mae_patchwise():
    with pytest.raises(ValueError, match="conv_patchwise"):
        M3AE(16, 4, 30, 8, dim=32, depth=1, heads=4, decoder_dim=32, decoder_depth=1, stem="conv")
    mae = MAE(ViT(16, 4, 1, dim=32, depth=1, heads=4, pos_embed="sincos", stem="conv"), decoder_dim=32,
              decoder_depth=1, decoder_heads=4)
    m3ae = M3AE(16, 4, 30, 8, dim=32, depth=1, heads=4, decoder_dim=32, decoder_depth=1, stem="conv_patchwise")
    m3ae.init_from(mae=mae)
    for mine, theirs in zip(m3ae.patch_embed.state_dict().values(), mae.encoder.patch_embed.state_dict().values()):
        assert torch.equal(mine, theirs)


def test_mae_decoder_needs_positions_to_tell_mask_tokens_apart():
    """Every removed patch enters the decoder as the same mask token: only the positions differ."""
    mae = MAE(ViT(32, 8, 1, dim=32, depth=1, heads=4, pos_embed="sincos"), decoder_dim=16, decoder_depth=1,
              decoder_heads=2)
    assert not mae.decoder.pos_embed.requires_grad
    _, pred, mask = mae(torch.rand(1, 1, 32, 32), 0.75, generator=torch.Generator().manual_seed(0))
    removed = pred[0][mask[0].bool()]
    assert not torch.allclose(removed[0], removed[1])


def test_reconstruct_pastes_visible_patches_back():
    mae = build_mae(medmm_lite.profile("smoke").with_(dim=32, depth=1, heads=4))
    images = torch.rand(2, 1, 32, 32)
    rec = reconstruct(mae, images, 0.75, generator=torch.Generator().manual_seed(0))
    visible = rec.mask == 0
    assert torch.equal(rec.pasted[visible], images[visible])
    assert torch.allclose(rec.pasted[~visible], rec.prediction[~visible])
    assert rec.mask.mean().item() == pytest.approx(0.75)
    assert mae.training, "reconstruct restores the training mode"


def test_tiny_mae_run_lowers_the_loss():
    torch.manual_seed(0)
    images, _, _, _ = side_pairs(128)
    mae = MAE(ViT(16, 4, 1, dim=32, depth=1, heads=4, pos_embed="sincos"), decoder_dim=32, decoder_depth=1,
              decoder_heads=4, norm_pix_loss=False)
    g = torch.Generator().manual_seed(0)
    data = [{"image": x} for x in images]
    history = fit(mae, lambda m, b: m(b["image"], 0.5, generator=g)[0], data, steps=60, batch_size=32, lr=3e-3,
                  device="cpu", progress=False)
    assert history.final_loss < 0.5 * np.mean(history.loss[:3])


# --------------------------------------------------------------------------- M3AE
def test_m3ae_forward_shapes_and_losses():
    model = tiny_m3ae()
    images, ids, att, _ = side_pairs(8)
    att[0, 4:] = 0
    out = model(images, ids, att, generator=torch.Generator().manual_seed(0))
    for name in ("loss", "mim_loss", "mlm_loss", "itm_loss", "mlm_accuracy", "itm_accuracy"):
        value = getattr(out, name)
        assert value.ndim == 0 and torch.isfinite(value), name
    assert out.loss.item() == pytest.approx((out.mim_loss + out.mlm_loss + out.itm_loss).item(), rel=1e-5)

    fused = model.fuse(model.embed_image(images), model.embed_text(ids), att)
    assert fused.cls.shape == (8, 32) and fused.image.shape == (8, 16, 32) and fused.text.shape == (8, 6, 32)
    assert model.fuse(text_tokens=model.embed_text(ids)).image.shape == (8, 0, 32)
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[:, 3] = True
    assert model.predict_masked(ids, att, positions, images=images).shape == (8, 30)
    assert model.predict_masked(ids, att, positions).shape == (8, 30)
    pred, mask = model.reconstruct_patches(images, ids, att, mask_ratio=0.75)
    assert pred.shape == (8, 16, 16) and mask.sum().item() == 8 * 12
    features = M3AEImageEncoder(model)(images)
    assert features.global_features.shape == (8, 32) and features.local_features.shape == (8, 16, 32)


def test_m3ae_padding_does_not_change_real_tokens():
    model = tiny_m3ae().eval()
    images, ids, att, _ = side_pairs(2)
    padded = torch.cat([ids, torch.full((2, 2), PAD)], 1)
    padded_att = torch.cat([att, torch.zeros(2, 2, dtype=torch.long)], 1)
    a = model.fuse(model.embed_image(images), model.embed_text(ids), att)
    b = model.fuse(model.embed_image(images), model.embed_text(padded), padded_att)
    assert torch.allclose(a.text, b.text[:, :6], atol=1e-5) and torch.allclose(a.cls, b.cls, atol=1e-5)


def test_m3ae_no_reconstruction_loss_on_swapped_pairs():
    """With ITM, half the pairs get another study's image in the patch pass; the patch loss counts
    matched pairs only: rewriting the reports of swapped pairs changes the ITM loss, not the MIM loss."""
    model = tiny_m3ae().eval()
    images, ids, att, _ = side_pairs(16)
    with torch.no_grad():
        a = model(images, ids, att, generator=torch.Generator().manual_seed(3))
    swapped = a.swapped
    assert swapped.dtype == torch.bool and 0 < int(swapped.sum()) < 16
    other = ids.clone()
    other[swapped, 1:5] = torch.randint(7, 30, (int(swapped.sum()), 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        b = model(images, other, att, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.swapped, b.swapped)
    assert a.mim_loss.item() == pytest.approx(b.mim_loss.item(), rel=1e-5)
    assert a.itm_loss.item() != pytest.approx(b.itm_loss.item(), rel=1e-5)
    # without ITM nothing is swapped and the ITM loss is 0
    c = model(images, ids, att, itm=False, generator=torch.Generator().manual_seed(3))
    assert c.itm_loss.item() == 0.0 and not c.swapped.any()


def test_m3ae_word_pass_sees_the_whole_image():
    """The masked-word pass reads every patch (Chen et al.'s MLM: mask_text=True, mask_image=False):
    changing any single patch of the image changes the word loss."""
    model = tiny_m3ae().eval()
    images, ids, att, _ = side_pairs(1)
    changed = images.clone()
    changed[:, :, 12:, 12:] += 1.0          # only the bottom-right patch
    for seed in range(8):                   # had the pass hidden 75% of the patches, most seeds would miss it
        with torch.no_grad():
            a = model(images, ids, att, text_mask_prob=0.5, itm=False, generator=torch.Generator().manual_seed(seed))
            b = model(changed, ids, att, text_mask_prob=0.5, itm=False, generator=torch.Generator().manual_seed(seed))
        if a.mlm_loss.item() > 0:              # some word was hidden
            assert a.mlm_loss.item() != pytest.approx(b.mlm_loss.item(), rel=1e-6), seed


def test_m3ae_learns_to_read_the_side_from_the_image():
    """A tiny M3AE fills in 'left'/'right' from the image, and cannot without it."""
    torch.manual_seed(0)
    model = tiny_m3ae()
    images, ids, att, side = side_pairs(256)
    g = torch.Generator().manual_seed(0)
    data = [{"image": x, "input_ids": i, "attention_mask": a} for x, i, a in zip(images, ids, att)]

    def loss_fn(m, b):
        return m(b["image"], b["input_ids"], b["attention_mask"], image_mask_ratio=0.5, text_mask_prob=0.5,
                 generator=g).loss

    history = fit(model, loss_fn, data, steps=300, batch_size=64, lr=3e-3, device="cpu", progress=False)
    assert history.final_loss < 0.6 * np.mean(history.loss[:3])
    test_images, test_ids, test_att, test_side = side_pairs(200, seed=1)
    masked = test_ids.clone()
    masked[:, 3] = MASK
    positions = masked == MASK
    model.eval()
    with torch.no_grad():
        with_image = model.predict_masked(masked, test_att, positions, images=test_images).argmax(-1)
        without = model.predict_masked(masked, test_att, positions).argmax(-1)
    truth = test_ids[:, 3]
    acc_with, acc_without = (with_image == truth).float().mean().item(), (without == truth).float().mean().item()
    assert acc_with > 0.9, acc_with
    assert acc_without < 0.7, acc_without


def test_mlm_model_learns_a_fixed_pattern():
    from medmm_lite.models import TextEncoder

    torch.manual_seed(0)
    model = MaskedLanguageModel(TextEncoder(30, 32, 1, 4, max_len=8))
    ids = torch.tensor([[CLS, 10, 11, 12, 13, 14, SEP]]).repeat(64, 1)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": i} for i in ids]
    history = fit(model, lambda m, b: m(b["input_ids"], torch.ones_like(b["input_ids"]), mask_prob=0.3,
                                        generator=g).loss, data, steps=80, batch_size=32, lr=3e-3, device="cpu",
                  progress=False)
    assert history.final_loss < 0.5
    assert model.head.decoder.weight is model.text.token_embed.weight, "the MLM head is tied to the embedding"


def test_m3ae_bad_input():
    model = tiny_m3ae()
    images, ids, att, _ = side_pairs(2)
    with pytest.raises(ValueError, match="same batch"):
        model(images, ids[:1], att[:1])
    with pytest.raises(ValueError, match="max_text_len"):
        model.embed_text(torch.full((1, 9), 7))
    with pytest.raises(ValueError, match=r"\(B, 1, 16, 16\)"):
        model.embed_image(torch.rand(2, 16, 16))
    with pytest.raises(ValueError, match="at least 2"):
        model(images[:1], ids[:1], att[:1])


# --------------------------------------------------------------------------- evaluation helpers
def test_derangement_has_no_fixed_point():
    for n in (2, 3, 17, 100):
        perm = derangement(n, seed=n)
        assert sorted(perm.tolist()) == list(range(n))
        assert (perm != torch.arange(n)).all()


def test_trim_padding_cuts_to_longest_report():
    batch = {"input_ids": torch.ones(2, 10, dtype=torch.long),
             "attention_mask": torch.tensor([[1] * 4 + [0] * 6, [1] * 6 + [0] * 4])}
    out = trim_padding(batch)
    assert out["input_ids"].shape == (2, 6)


def test_box_patch_mask():
    boxes = [[{"finding": "X", "box": (0.0, 0.0, 0.5, 0.25)}], []]
    m = box_patch_mask(boxes, (4, 4)).view(2, 4, 4)
    assert m[0, 0, :2].all() and m[0].sum() == 2 and m[1].sum() == 0


class _Data:
    """The fields of PreparedData that fill_in_queries reads."""

    def __init__(self, tokenizer, reports):
        from medmm_lite.data.tokenizer import encode_reports
        self.tokenizer = tokenizer
        self.input_ids, self.attention_mask = encode_reports(tokenizer, reports, 24)


def test_fill_in_queries_hide_every_occurrence():
    from medmm_lite.data.tokenizer import train_tokenizer

    reports = ["Large right pleural effusion. IMPRESSION: Right pleural effusion, large.",
               "No pneumothorax. IMPRESSION: Normal."]
    tok = train_tokenizer(reports * 5, vocab_size=120, cache=False)
    data = _Data(tok, reports)
    with pytest.warns(UserWarning, match="splits into pieces"):    # this tiny vocabulary cuts some words up
        q = fill_in_queries(data, [0, 1])
    assert set(q.word) == {"effusion", "large", "right", "pneumothorax"}
    assert set(q.group) <= set(FILL_IN_WORDS)
    for row in range(len(q.word)):
        word_id = tok.convert_tokens_to_ids(q.word[row])
        original = data.input_ids[q.study[row]]
        assert torch.equal(q.positions[row], original == word_id), "every occurrence, and only it, is hidden"
        assert (q.input_ids[row][q.positions[row]] == tok.mask_token_id).all()
        assert not (q.input_ids[row] == word_id).any()


# --------------------------------------------------------------------------- cached pretraining
@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDMM_DATA", str(tmp_path))
    from medmm_lite.data import prepare_data

    P = medmm_lite.profile("smoke").with_(n_studies=48, steps=8, batch_size=8, dim=32, depth=1, heads=4,
                                          vocab_size=200, max_text_len=64, device="cpu", amp=False)
    return P, prepare_data(P, seed=0)


def test_pretrain_functions_train_once_then_load(tiny_data):
    from medmm_lite.pretrain.m3ae import pretrain_m3ae, pretrain_mlm
    from medmm_lite.pretrain.mae import pretrain_mae

    P, data = tiny_data
    # the M3AE's steps cost several MAE steps and it starts from the MLM: it gets a quarter of them
    for pretrain, steps in ((pretrain_mae, P.steps), (pretrain_mlm, P.steps), (pretrain_m3ae, P.steps // 4)):
        first, info = pretrain(P, data, seed=0, progress=False)
        assert not info["cached"] and len(info["history"]) == steps, pretrain.__name__
        again, info2 = pretrain(P, data, seed=0, progress=False)
        assert info2["cached"], f"{pretrain.__name__} should load its cached model the second time"
        for (name, a), b in zip(first.state_dict().items(), again.state_dict().values()):
            assert torch.equal(a, b), f"{pretrain.__name__}: {name} differs after loading"
    _, info3 = pretrain_m3ae(P, data, seed=0, itm=False, progress=False)
    assert not info3["cached"], "a different setting is a different model"


def test_init_from_mlm_and_mae_starts_as_the_mlm_on_text():
    from medmm_lite.models import TextEncoder

    torch.manual_seed(0)
    mlm = MaskedLanguageModel(TextEncoder(30, 32, 2, 4, max_len=8))
    for p in mlm.parameters():                 # make the weights non-trivial
        torch.nn.init.normal_(p, std=0.1)
    mae = MAE(ViT(16, 4, 1, dim=32, depth=1, heads=4, pos_embed="sincos"), decoder_dim=32, decoder_depth=1,
              decoder_heads=4)
    model = tiny_m3ae().init_from(mlm, mae).eval()
    _, ids, att, _ = side_pairs(4)
    masked = ids.clone()
    masked[:, 3] = MASK
    positions = masked == MASK
    with torch.no_grad():
        assert torch.allclose(model.predict_masked(masked, att, positions),
                              mlm.eval().predict_masked(masked, att, positions), atol=1e-5)
    assert torch.equal(model.patch_embed.proj.weight, mae.encoder.patch_embed.proj.weight)
    with pytest.raises(ValueError, match="differ"):
        tiny_m3ae(dim=64, heads=4, decoder_dim=32).init_from(mlm)


def test_pixel_targets_are_standardised_and_predictions_come_back_in_pixels():
    model = tiny_m3ae()
    images, ids, att, _ = side_pairs(8)
    model.set_pixel_statistics(images)
    target = model.pixel_target(images)
    assert torch.allclose(target.mean(0), torch.zeros_like(target[0]), atol=1e-5), "the mean image is subtracted"
    assert abs(target.std().item() - 1) < 0.05
    assert torch.allclose(model.to_pixels(target), patchify(images, 4), atol=1e-6)
    state = model.state_dict()
    assert "pixel_mean" in state and "pixel_std" in state, "the statistics are saved with the model"
