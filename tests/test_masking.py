"""Masking objectives: MAE's random_masking and mae_loss, BERT's mask_tokens (checked against
the paper's formula computed by hand and against transformers' MLM collator)."""
import pytest
import torch

from medmm_lite.objectives import mae_loss, mask_tokens, random_masking, unshuffle, wordpiece_word_ids
from medmm_lite.objectives.masking import normalize_patches
from medmm_lite.objectives.mlm import DEFAULT_SPECIAL_IDS, IGNORE_INDEX, mlm_loss

MASK_ID, VOCAB = 4, 50


# --------------------------------------------------------------------------- random_masking
@pytest.mark.parametrize("L,ratio,kept", [(16, 0.75, 4), (64, 0.75, 16), (10, 0.5, 5), (10, 0.0, 10), (7, 0.9, 0)])
def test_random_masking_keeps_int_of_one_minus_ratio(L, ratio, kept):
    x = torch.randn(3, L, 8)
    if kept == 0:
        with pytest.raises(ValueError, match="keeps no token"):
            random_masking(x, ratio)
        return
    x_kept, mask, ids_restore = random_masking(x, ratio, generator=torch.Generator().manual_seed(0))
    assert x_kept.shape == (3, kept, 8)
    assert mask.shape == (3, L) and mask.dtype == x.dtype
    assert torch.equal(mask.sum(1), torch.full((3,), float(L - kept)))
    assert ids_restore.shape == (3, L) and ids_restore.dtype == torch.long


def test_random_masking_contract_round_trip():
    g = torch.Generator().manual_seed(1)
    B, L, D = 4, 16, 5
    x = torch.randn(B, L, D, generator=g)
    x_kept, mask, ids_restore = random_masking(x, 0.75, generator=g)
    # each row of ids_restore is a permutation of 0..L-1
    assert torch.equal(ids_restore.sort(1).values, torch.arange(L).expand(B, L))
    # [kept, removed-filler] gathered with ids_restore: kept tokens land back at their own positions,
    # the filler exactly where mask == 1
    filler = torch.full((1, 1, D), 1e9)
    full = unshuffle(x_kept, filler, ids_restore)
    removed = full[..., 0] == 1e9
    assert torch.equal(removed, mask.bool())
    assert torch.equal(full[~removed], x[~mask.bool()])
    # the same by hand, with MAE's own gather
    cat = torch.cat([x_kept, filler.expand(B, L - x_kept.shape[1], D)], 1)
    assert torch.equal(torch.gather(cat, 1, ids_restore[..., None].expand(-1, -1, D)), full)


def test_random_masking_reproducible_with_generator_and_varies_per_sample():
    x = torch.randn(8, 16, 3)
    a = random_masking(x, 0.75, generator=torch.Generator().manual_seed(5))
    b = random_masking(x, 0.75, generator=torch.Generator().manual_seed(5))
    c = random_masking(x, 0.75, generator=torch.Generator().manual_seed(6))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert not torch.equal(a[1], c[1])
    assert len({tuple(row.tolist()) for row in a[1]}) > 1, "every sample must get its own mask"


def test_random_masking_is_mae_argsort_of_noise():
    """Same generator state -> the same noise MAE draws; the kept tokens are the smallest-noise ones."""
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x = torch.randn(2, 12, 4)
    x_kept, mask, ids_restore = random_masking(x, 0.75, generator=g1)
    noise = torch.rand(2, 12, generator=g2)
    ids_shuffle = torch.argsort(noise, dim=1)
    assert torch.equal(ids_restore, torch.argsort(ids_shuffle, dim=1))
    assert torch.equal(x_kept, torch.gather(x, 1, ids_shuffle[:, :3, None].expand(-1, -1, 4)))


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, "0.75"])
def test_random_masking_bad_ratio(bad):
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(torch.randn(1, 8, 2), bad)


def test_random_masking_needs_tokens_not_images():
    with pytest.raises(ValueError, match=r"\(B, L, D\)"):
        random_masking(torch.randn(2, 1, 8, 8), 0.75)


# --------------------------------------------------------------------------- mae_loss
def _mae_loss_by_hand(pred, target, mask, norm_pix):
    """MAE's forward_loss written as loops over images, patches and pixels."""
    num, den = 0.0, 0.0
    B, L, P = target.shape
    for b in range(B):
        for l in range(L):
            t = [float(v) for v in target[b, l]]
            if norm_pix:
                mean = sum(t) / P
                var = sum((v - mean) ** 2 for v in t) / (P - 1)     # unbiased, torch.var's default
                t = [(v - mean) / (var + 1e-6) ** 0.5 for v in t]
            err = sum((float(pred[b, l, k]) - t[k]) ** 2 for k in range(P)) / P
            num += float(mask[b, l]) * err
            den += float(mask[b, l])
    return num / den


@pytest.mark.parametrize("norm_pix", [False, True])
def test_mae_loss_matches_formula_by_hand(norm_pix):
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 4, generator=g), torch.rand(2, 3, 4, generator=g)
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    got = mae_loss(pred, target, mask, norm_pix_loss=norm_pix)
    assert got.item() == pytest.approx(_mae_loss_by_hand(pred, target, mask, norm_pix), rel=1e-5)


def test_mae_loss_ignores_visible_patches_and_a_tiny_example():
    # one image, two patches of two pixels; only patch 0 is removed
    pred = torch.tensor([[[1.0, 1.0], [100.0, -100.0]]])
    target = torch.tensor([[[0.0, 2.0], [0.0, 0.0]]])
    mask = torch.tensor([[1.0, 0.0]])
    assert mae_loss(pred, target, mask, norm_pix_loss=False).item() == pytest.approx(1.0)  # ((1-0)^2+(1-2)^2)/2
    # normalised target of patch 0: mean 1, unbiased var 2 -> (-1, 1)/sqrt(2 + 1e-6)
    s = (2 + 1e-6) ** 0.5
    expected = ((1 + 1 / s) ** 2 + (1 - 1 / s) ** 2) / 2
    assert mae_loss(pred, target, mask, norm_pix_loss=True).item() == pytest.approx(expected, rel=1e-6)


def test_normalised_patches_have_zero_mean_unit_variance():
    t = normalize_patches(torch.rand(3, 5, 16) * 4 + 2)
    assert torch.allclose(t.mean(-1), torch.zeros(3, 5), atol=1e-5)
    assert torch.allclose(t.var(-1), torch.ones(3, 5), atol=1e-3)


def test_mae_loss_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        mae_loss(torch.randn(1, 4, 3), torch.randn(1, 4, 2), torch.ones(1, 4))
    with pytest.raises(ValueError, match="mask"):
        mae_loss(torch.randn(1, 4, 3), torch.randn(1, 4, 3), torch.ones(4))


def test_mae_loss_none_reduction_is_per_patch():
    pred, target = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    per_patch = mae_loss(pred, target, torch.ones(2, 5), False, reduction="none")
    assert torch.allclose(per_patch, ((pred - target) ** 2).mean(-1))


# --------------------------------------------------------------------------- mask_tokens
def _batch(B=400, L=60, seed=0):
    """[CLS] words... [SEP] [PAD]... with random lengths, words drawn from ids >= 7."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10, L + 1, (B,), generator=g)
    ids = torch.randint(7, VOCAB, (B, L), generator=g)
    att = (torch.arange(L)[None] < lengths[:, None]).long()
    ids[:, 0] = 2
    ids[torch.arange(B), lengths - 1] = 3
    ids[att == 0] = 0
    return ids, att


def test_mask_tokens_bert_proportions():
    ids, att = _batch()
    masked, labels = mask_tokens(ids, att, MASK_ID, VOCAB, generator=torch.Generator().manual_seed(0))
    candidates = (att == 1) & (ids >= 7)
    chosen = labels != IGNORE_INDEX
    n = int(candidates.sum())
    # 15% of the candidates, within 5 binomial standard deviations
    sd = (0.15 * 0.85 / n) ** 0.5
    assert abs(chosen.sum().item() / n - 0.15) < 5 * sd
    assert torch.equal(labels[chosen], ids[chosen])
    k = int(chosen.sum())
    as_mask = (masked[chosen] == MASK_ID).float().mean().item()
    unchanged = (masked[chosen] == ids[chosen]).float().mean().item()
    assert abs(as_mask - 0.8) < 5 * (0.8 * 0.2 / k) ** 0.5
    # 10% kept + the random draws that happen to hit the original (1/VOCAB of the 10%)
    assert abs(unchanged - (0.1 + 0.1 / VOCAB)) < 5 * (0.1 * 0.9 / k) ** 0.5
    # everything not chosen is untouched
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_mask_tokens_never_touches_specials_or_padding():
    ids, att = _batch(seed=1)
    masked, labels = mask_tokens(ids, att, MASK_ID, VOCAB, mask_prob=1.0, generator=torch.Generator().manual_seed(1))
    special_or_pad = torch.isin(ids, torch.tensor(DEFAULT_SPECIAL_IDS)) | (att == 0)
    assert (labels[special_or_pad] == IGNORE_INDEX).all()
    assert torch.equal(masked[special_or_pad], ids[special_or_pad])
    assert (labels[~special_or_pad] != IGNORE_INDEX).all(), "with mask_prob=1 every real word is chosen"


def test_mask_tokens_reproducible_and_input_unchanged():
    ids, att = _batch(B=20)
    before = ids.clone()
    a = mask_tokens(ids, att, MASK_ID, VOCAB, generator=torch.Generator().manual_seed(7))
    b = mask_tokens(ids, att, MASK_ID, VOCAB, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(ids, before)


def _course_tokenizer():
    from medmm_lite.data.tokenizer import SPECIAL_TOKENS, train_tokenizer

    texts = ["No pleural effusion or pneumothorax.", "Large right pleural effusion.",
             "Small left apical pneumothorax.", "Heart size is normal. Cardiomegaly is absent.",
             "Moderate bilateral pleural effusions with atelectasis at the left base."] * 3
    return train_tokenizer(texts, vocab_size=80, cache=False), SPECIAL_TOKENS


def test_default_special_ids_are_the_tokenizers():
    tok, specials = _course_tokenizer()
    assert tuple(tok.convert_tokens_to_ids(list(specials))) == DEFAULT_SPECIAL_IDS
    assert tok.mask_token_id == MASK_ID


def test_mask_tokens_equals_transformers_collator():
    """Same generator state -> exactly the masks of transformers' DataCollatorForLanguageModeling."""
    from transformers import DataCollatorForLanguageModeling

    tok, _ = _course_tokenizer()
    texts = ["Large right pleural effusion. No pneumothorax.", "Small left apical pneumothorax."] * 40
    enc = tok(texts, padding=True, return_tensors="pt")
    ids, att = enc["input_ids"], enc["attention_mask"]
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
    special = torch.isin(ids, torch.tensor(DEFAULT_SPECIAL_IDS)).long()
    for seed in range(3):
        collator.generator = torch.Generator().manual_seed(seed)
        ref_ids, ref_labels = collator.torch_mask_tokens(ids.clone(), special_tokens_mask=special)
        got_ids, got_labels = mask_tokens(ids, att, tok.mask_token_id, len(tok),
                                          generator=torch.Generator().manual_seed(seed))
        assert torch.equal(got_labels, ref_labels)
        assert torch.equal(got_ids, ref_ids)


def test_whole_word_masking_equals_transformers_collator():
    """Whole-word masks match transformers' collator given the same word ids and generator.
    (transformers turns the random replacement off with whole words, so every chosen piece is [MASK].)"""
    from transformers import DataCollatorForLanguageModeling

    tok, _ = _course_tokenizer()
    texts = ["Cardiomegaly and atelectasis. Pneumothorax absent.", "Bilateral effusions, cardiomegaly."] * 40
    enc = tok(texts, padding=True, return_tensors="pt", return_offsets_mapping=True)
    ids, att = enc["input_ids"], enc["attention_mask"]
    special = torch.isin(ids, torch.tensor(DEFAULT_SPECIAL_IDS)).long()
    with pytest.warns(UserWarning, match="whole word"):
        collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.3, whole_word_mask=True)
    word_ids, _ = collator._calc_word_ids_and_prob_mask(enc["offset_mapping"].numpy(), special.numpy())
    for seed in range(3):
        collator.generator = torch.Generator().manual_seed(seed)
        ref_ids, ref_labels = collator.torch_mask_tokens(ids.clone(), special_tokens_mask=special,
                                                         offset_mapping=enc["offset_mapping"])
        got_ids, got_labels = mask_tokens(ids, att, tok.mask_token_id, len(tok), mask_prob=0.3, whole_word=True,
                                          word_ids=torch.as_tensor(word_ids), mask_replace_prob=1.0, random_replace_prob=0.0,
                                          generator=torch.Generator().manual_seed(seed))
        assert torch.equal(got_labels, ref_labels)
        assert torch.equal(got_ids, ref_ids)


def test_whole_word_masking_masks_every_piece_of_a_word():
    tok, _ = _course_tokenizer()
    texts = ["Cardiomegaly with bilateral pneumothorax and atelectasis."] * 300
    enc = tok(texts, return_tensors="pt")
    ids, att = enc["input_ids"], enc["attention_mask"]
    word_ids = wordpiece_word_ids(ids, tok, att)
    pieces = tok.convert_ids_to_tokens(ids[0])
    assert any(p.startswith("##") for p in pieces), f"the test needs a word split into pieces: {pieces}"
    _, labels = mask_tokens(ids, att, tok.mask_token_id, len(tok), whole_word=True, word_ids=word_ids,
                            generator=torch.Generator().manual_seed(0))
    chosen = labels != IGNORE_INDEX
    for w in range(int(word_ids.max()) + 1):
        in_word = word_ids == w
        per_row = chosen[in_word].view(len(texts), -1)
        assert (per_row.all(1) | ~per_row.any(1)).all(), f"word {w} was partly masked"
    # about mask_prob of the words are chosen
    n_words = int(word_ids.max()) + 1
    first = torch.stack([chosen[word_ids == w].view(len(texts), -1)[:, 0] for w in range(n_words)], 1)
    assert abs(first.float().mean().item() - 0.15) < 0.03


def test_wordpiece_word_ids_groups_pieces():
    tok, _ = _course_tokenizer()
    enc = tok(["Cardiomegaly, no pneumothorax."], return_tensors="pt")
    word_ids = wordpiece_word_ids(enc["input_ids"], tok)[0]
    pieces = tok.convert_ids_to_tokens(enc["input_ids"][0])
    assert word_ids[0] == -1 and word_ids[-1] == -1               # [CLS], [SEP]
    for i in range(1, len(pieces) - 1):
        same = bool(word_ids[i] == word_ids[i - 1])
        assert same == pieces[i].startswith("##"), (pieces, word_ids)


def test_mask_tokens_bad_input():
    ids, att = _batch(B=2)
    with pytest.raises(ValueError, match="word_ids"):
        mask_tokens(ids, att, MASK_ID, VOCAB, whole_word=True)
    with pytest.raises(ValueError, match="attention_mask"):
        mask_tokens(ids, att[:, :5], MASK_ID, VOCAB)
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        mask_tokens(ids[0], None, MASK_ID, VOCAB)
    with pytest.raises(ValueError, match="mask_prob"):
        mask_tokens(ids, att, MASK_ID, VOCAB, mask_prob=0.0)


def test_mlm_loss_only_counts_labelled_positions():
    logits = torch.randn(2, 3, 7)
    labels = torch.tensor([[IGNORE_INDEX, 2, IGNORE_INDEX], [5, IGNORE_INDEX, IGNORE_INDEX]])
    expected = (torch.nn.functional.cross_entropy(logits[0, 1:2], labels[0, 1:2])
                + torch.nn.functional.cross_entropy(logits[1, :1], labels[1, :1])) / 2
    assert mlm_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
