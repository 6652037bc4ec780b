"""GLoRIA's local alignment: word merging, word-region attention, the local loss (checked against
a per-report loop that follows GLoRIA's reference code step by step), the model, the pointing game."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from medmm_lite.data.tokenizer import SPECIAL_TOKENS, encode_reports, train_tokenizer
from medmm_lite.models import TextEncoder, ViT
from medmm_lite.objectives import (LocalAlignment, clip_loss, local_contrastive_loss, local_similarities,
                                   merge_subwords, merged_words, word_region_attention)
from medmm_lite.objectives.local import subword_tables, word_ids
from medmm_lite.pretrain import gloria as G


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDMM_DATA", str(tmp_path / "cache"))


# --------------------------------------------------------------------------- GLoRIA, one report at a time
def gloria_loop_loss(region_maps, words_bdw, cap_lens, t_att=4.0, t_sim=5.0, t_loss=10.0):
    """GLoRIA's ``local_loss`` written out as its reference code runs it (gloria/loss/gloria_loss.py):
    for each report i, its first ``cap_lens[i]`` words are repeated for every image; attention is
    softmax over the words per region, times t_att, softmax over the regions per word; each word's
    attended context is compared with the word by cosine; exp(t_sim * cos) is summed over the
    words and its log taken. ``region_maps`` (B, D, h, w) and ``words_bdw`` (B, D, W) use GLoRIA's
    channel-first layouts. Returns (image->text loss, text->image loss, [attention (n_i, h, w)])."""
    B, D, h, w = region_maps.shape
    regions = region_maps.reshape(B, D, h * w)                          # (B, D, R)
    columns, own_maps = [], []
    for i in range(words_bdw.shape[0]):
        n = cap_lens[i]
        query = words_bdw[i, :, :n].unsqueeze(0).repeat(B, 1, 1)       # (B, D, n): report i against every image
        scores = torch.bmm(regions.transpose(1, 2), query)              # (B, R, n)
        shares = torch.softmax(scores, dim=2)                           # per region, over the words
        attn = torch.softmax(t_att * shares.transpose(1, 2), dim=2)     # per word, over the regions: (B, n, R)
        context = torch.bmm(regions, attn.transpose(1, 2))              # (B, D, n)
        own_maps.append(attn[i].reshape(n, h, w))
        q = query.transpose(1, 2).reshape(B * n, D)
        c = context.transpose(1, 2).reshape(B * n, D)
        cos = (q * c).sum(1) / (q.norm(dim=1) * c.norm(dim=1)).clamp(min=1e-8)
        columns.append(torch.log(torch.exp(t_sim * cos.view(B, n)).sum(dim=1, keepdim=True)))   # (B, 1)
    logits = t_loss * torch.cat(columns, dim=1)                          # (images, reports)
    labels = torch.arange(B)
    return F.cross_entropy(logits, labels), F.cross_entropy(logits.t(), labels), own_maps


def random_batch(B=6, W=9, D=16, h=3, w=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    words = torch.randn(B, W, D, generator=g, dtype=dtype)
    lens = torch.randint(2, W + 1, (B,), generator=g)
    lens[0] = W
    mask = torch.arange(W)[None] < lens[:, None]
    regions = torch.randn(B, h * w, D, generator=g, dtype=dtype)
    return words * mask[..., None], mask, regions, lens


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_vectorised_local_loss_equals_gloria_loop(dtype, tol):
    words, mask, regions, lens = random_batch(dtype=dtype)
    B, h, w = len(words), 3, 4
    l0, l1, maps = gloria_loop_loss(regions.transpose(1, 2).reshape(B, -1, h, w), words.transpose(1, 2), lens.tolist())
    out = local_contrastive_loss(words, mask, regions)
    assert isinstance(out, LocalAlignment)
    assert out.image_to_text.item() == pytest.approx(l0.item(), rel=tol, abs=tol)
    assert out.text_to_image.item() == pytest.approx(l1.item(), rel=tol, abs=tol)
    assert out.loss.item() == pytest.approx((l0 + l1).item(), rel=tol, abs=tol)
    for b in range(B):
        torch.testing.assert_close(out.attention[b, :lens[b]], maps[b].reshape(lens[b], -1), rtol=tol, atol=tol)
        assert out.attention[b, lens[b]:].abs().sum() == 0


def test_gradients_equal_the_loop():
    words, mask, regions, lens = random_batch(B=5, W=7, D=8)
    words.requires_grad_(True)
    regions.requires_grad_(True)
    local_contrastive_loss(words, mask, regions).loss.backward()
    g_words, g_regions = words.grad.clone(), regions.grad.clone()
    words.grad = regions.grad = None
    l0, l1, _ = gloria_loop_loss(regions.transpose(1, 2).reshape(5, 8, 3, 4), words.transpose(1, 2), lens.tolist())
    (l0 + l1).backward()
    torch.testing.assert_close(g_words, words.grad)
    torch.testing.assert_close(g_regions, regions.grad)


def test_word_region_attention_matches_the_per_pair_computation():
    words, mask, regions, lens = random_batch()
    context, attention = word_region_attention(words, regions, 4.0, mask)
    for b in range(len(words)):
        n = lens[b]
        scores = regions[b] @ words[b, :n].t()                              # (R, n)
        attn = torch.softmax(4.0 * torch.softmax(scores, dim=1).t(), dim=1)  # (n, R)
        torch.testing.assert_close(attention[b, :n], attn)
        torch.testing.assert_close(context[b, :n], attn @ regions[b])


def test_cosine_attention_is_one_softmax_over_cosines():
    words, mask, regions, lens = random_batch()
    context, attention = word_region_attention(words, regions, 4.0, mask, attention="cosine")
    for b in range(len(words)):
        n = lens[b]
        cos = F.normalize(words[b, :n], dim=-1) @ F.normalize(regions[b], dim=-1).t()
        expected = torch.softmax(4.0 * cos, dim=1)
        torch.testing.assert_close(attention[b, :n], expected)
        torch.testing.assert_close(context[b, :n], expected @ regions[b])
    # the batched loss with cosine attention equals a per-pair loop too
    B = len(words)
    Z = torch.zeros(B, B, dtype=words.dtype)
    for t in range(B):
        e = words[t, :lens[t]]
        for i in range(B):
            a = torch.softmax(4.0 * F.normalize(e, dim=-1) @ F.normalize(regions[i], dim=-1).t(), dim=1)
            Z[i, t] = torch.logsumexp(5.0 * F.cosine_similarity(e, a @ regions[i], dim=-1), dim=0)
    out = local_contrastive_loss(words, mask, regions, attention="cosine")
    torch.testing.assert_close(out.similarities, Z)
    expected = F.cross_entropy(10 * Z, torch.arange(B)) + F.cross_entropy(10 * Z.t(), torch.arange(B))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.parametrize("kind", ["gloria", "cosine"])
def test_attention_rows_sum_to_one_and_masks_get_no_weight(kind):
    words, mask, regions, lens = random_batch(B=4, W=6, D=8, h=2, w=3)
    region_mask = torch.ones(4, 6, dtype=torch.bool)
    region_mask[1, [0, 4]] = False
    context, attention = word_region_attention(words, regions, 4.0, mask, region_mask, attention=kind)
    row_sums = attention.sum(-1)
    torch.testing.assert_close(row_sums[mask], torch.ones(int(mask.sum()), dtype=row_sums.dtype))
    assert (row_sums[~mask] == 0).all(), "padding words must attend nowhere"
    assert (attention[1][:, [0, 4]] == 0).all(), "masked regions must get no weight"
    # What sits in masked words or masked regions changes nothing.
    words2, regions2 = words.clone(), regions.clone()
    words2[~mask] = 123.0
    regions2[1, [0, 4]] = -50.0
    context2, attention2 = word_region_attention(words2, regions2, 4.0, mask, region_mask, attention=kind)
    torch.testing.assert_close(attention2[mask], attention[mask])
    torch.testing.assert_close(context2[mask], context[mask])
    loss = local_contrastive_loss(words, mask, regions, attention=kind).loss
    assert local_contrastive_loss(words2, mask, regions, attention=kind).loss.item() == pytest.approx(loss.item(),
                                                                                                     rel=1e-12)


def test_temperature_sharpens_attention():
    words, mask, regions, _ = random_batch(B=2, W=5)
    entropy = []
    for t in (1.0, 4.0, 16.0):
        _, a = word_region_attention(words, regions, t, mask)
        p = a[mask]
        entropy.append(float(-(p * p.clamp(min=1e-30).log()).sum(-1).mean()))
    assert entropy[0] > entropy[1] > entropy[2]


def test_local_similarities_max_aggregate_and_shapes():
    words, mask, regions, lens = random_batch(B=3, W=5, D=8)
    regions = torch.cat([regions, regions[:1]])          # 4 images, 3 reports: not square
    z_sum, attention = local_similarities(words, mask, regions)
    z_max, _ = local_similarities(words, mask, regions, aggregate="max")
    assert z_sum.shape == z_max.shape == (4, 3) and attention.shape == (4, 3, 5, 12)
    # log-sum-exp over the words lies between the best word and the best word + log(#words)
    assert (z_sum >= z_max - 1e-12).all()
    assert (z_sum <= z_max + torch.log(lens.double())[None] + 1e-12).all()


def test_matching_pairs_give_lower_local_loss():
    g = torch.Generator().manual_seed(3)
    B, W, R, D = 8, 4, 9, 16
    regions = torch.randn(B, R, D, generator=g)
    # each report's words are copies of some of its own image's regions: they should find them
    pick = torch.randint(0, R, (B, W), generator=g)
    words = torch.gather(regions, 1, pick[..., None].expand(B, W, D)) * 5
    mask = torch.ones(B, W, dtype=torch.bool)
    aligned = local_contrastive_loss(words, mask, regions).loss
    shuffled = local_contrastive_loss(words[torch.randperm(B, generator=g)], mask, regions).loss
    assert aligned < math.log(B) * 2 < shuffled


# --------------------------------------------------------------------------- words from word pieces
def hand_made_tokenizer():
    """A WordPiece tokenizer with a tiny hand-written vocabulary, BERT's normaliser and pre-tokeniser."""
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for t in ["no", "pl", "##eural", "effusion", ".", ",", "left", "at", "##elect", "##asis", "small", "-", "sided"]:
        vocab[t] = len(vocab)
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", padding_side="right")


def test_merge_subwords_on_a_hand_made_sentence():
    tok = hand_made_tokenizer()
    ids, mask = encode_reports(tok, ["No pleural effusion, left atelectasis.", "Small left-sided effusion."], 14)
    assert tok.convert_ids_to_tokens(ids[0][:mask[0].sum()]) == [
        "[CLS]", "no", "pl", "##eural", "effusion", ",", "left", "at", "##elect", "##asis", ".", "[SEP]"]
    features = torch.arange(2 * 14, dtype=torch.float32).view(2, 14, 1).repeat(1, 1, 3)
    merged, word_mask = merge_subwords(features, ids, tok, mask)
    assert merged.shape == (2, 5, 3)
    assert word_mask.tolist() == [[True] * 5, [True, True, True, True, False]]
    # sentence 0: no=1, pleural=(2+3)/2, effusion=4, left=6, atelectasis=(7+8+9)/3 (the comma and [CLS]/[SEP] dropped)
    assert merged[0, :, 0].tolist() == [1.0, 2.5, 4.0, 6.0, 8.0]
    # sentence 1: small, left, sided, effusion (the hyphen dropped); the padding word stays zero
    assert merged[1, :, 0].tolist() == [15.0, 16.0, 18.0, 19.0, 0.0]
    assert merged_words(ids, tok, mask) == [["no", "pleural", "effusion", "left", "atelectasis"],
                                            ["small", "left", "sided", "effusion"]]
    # precomputed word ids give the same result
    again, again_mask = merge_subwords(features, ids, word_ids(ids, tok, mask))
    torch.testing.assert_close(again, merged)
    assert torch.equal(again_mask, word_mask)


def test_word_ids_agree_with_hugging_face_word_ids():
    # A small vocabulary so that many words are cut into pieces.
    texts = ["FINDINGS: Moderate right pleural effusion. No pneumothorax. IMPRESSION: 1. Small nodule, likely benign.",
             "Left-sided pacemaker with leads in the right atrium. Linear atelectasis at the left base.",
             "Endotracheal tube terminates 5 cm above the carina. Heart size is normal."] * 3
    tok = train_tokenizer(texts, 90, cache=False)
    enc = tok(texts[:3], padding="max_length", max_length=48, truncation=True)
    ids = torch.tensor(enc["input_ids"])
    ours = word_ids(ids, tok, torch.tensor(enc["attention_mask"]))
    continues, _ = subword_tables(tok)
    assert continues.sum() > 10, "the test needs a vocabulary that splits words into pieces"
    for row in range(3):
        tokens = tok.convert_ids_to_tokens(enc["input_ids"][row])
        hf = enc.word_ids(row)                           # BERT's words: punctuation is a word of its own
        kept = sorted({w for w, t in zip(hf, tokens) if w is not None and any(c.isalnum() for c in t)})
        renumber = {w: k for k, w in enumerate(kept)}
        expected = [renumber.get(w, -1) if w is not None else -1 for w in hf]
        assert ours[row].tolist() == expected


# --------------------------------------------------------------------------- the model
def tiny_model(tokenizer, embed_dim=24):
    torch.manual_seed(0)
    image = ViT(image_size=16, patch_size=4, in_chans=1, dim=32, depth=1, heads=2)
    text = TextEncoder(vocab_size=len(tokenizer), dim=32, depth=1, heads=2, max_len=24)
    return G.GLoRIAModel(image, text, embed_dim, tokenizer=tokenizer)


SENTENCES = ["Small nodule in the right upper lobe.", "Large left pleural effusion.", "No pneumothorax.",
             "Right apical pneumothorax.", "Heart size is normal.", "Left lower lobe atelectasis.",
             "Moderate pulmonary edema.", "Acute left rib fracture."]


@pytest.fixture(scope="module")
def small_tok():
    return train_tokenizer(SENTENCES * 4, 120, cache=False)


def test_model_shapes_and_grid(small_tok):
    model = tiny_model(small_tok)
    ids, mask = encode_reports(small_tok, SENTENCES[:4], 16)
    out = model(torch.rand(4, 1, 16, 16), ids, mask)
    assert out.image_global.shape == (4, 24) and out.text_global.shape == (4, 24)
    assert out.image_local.shape == (4, 16, 24) and model.grid_size == (4, 4)
    n_words = [len(w) for w in merged_words(ids, small_tok, mask)]
    assert out.words.shape == (4, max(n_words), 24)
    assert out.word_mask.sum(1).tolist() == n_words
    maps, word_mask = G.attention_maps(model, torch.rand(4, 1, 16, 16), ids, mask)
    assert maps.shape == (4, max(n_words), 4, 4)
    torch.testing.assert_close(maps.sum((2, 3))[word_mask], torch.ones(sum(n_words)))
    assert maps.sum((2, 3))[~word_mask].abs().sum() == 0
    g_maps, _ = G.attention_maps(model, torch.rand(4, 1, 16, 16), ids, mask, projection="global", batch_size=3)
    assert g_maps.shape == maps.shape
    assert G.encode_texts(model, small_tok, ["No effusion."]).shape == (1, 24)


def test_gloria_step_is_global_plus_local(small_tok):
    model = tiny_model(small_tok)
    ids, mask = encode_reports(small_tok, SENTENCES, 16)
    batch = {"image": torch.rand(8, 1, 16, 16), "input_ids": ids, "attention_mask": mask}
    loss, logs = G.gloria_step(model, batch, local_weight=0.5)
    out = model(batch["image"], ids, mask)
    global_loss = 2 * clip_loss(out.image_global, out.text_global, 10.0)
    local = local_contrastive_loss(out.words, out.word_mask, out.image_local)
    assert logs["global"].item() == pytest.approx(global_loss.item(), rel=1e-5)
    assert logs["local"].item() == pytest.approx(local.loss.item(), rel=1e-5)
    assert loss.item() == pytest.approx(global_loss.item() + 0.5 * local.loss.item(), rel=1e-5)
    assert 1.0 <= logs["attention_peak"].item() <= out.image_local.shape[1]
    loss0, logs0 = G.gloria_step(model, batch, local_weight=0.0)
    assert "local" not in logs0 and loss0.item() == pytest.approx(global_loss.item(), rel=1e-5)
    loss_cos, _ = G.gloria_step(model, batch, local_weight=1.0, attention="cosine")
    local_cos = local_contrastive_loss(out.words, out.word_mask, out.image_local, attention="cosine")
    assert loss_cos.item() == pytest.approx(global_loss.item() + local_cos.loss.item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["gloria", "cosine"])
def test_a_tiny_run_lowers_both_losses(small_tok, kind):
    from medmm_lite.data.tensors import TensorDictDataset
    from medmm_lite.train import fit

    g = torch.Generator().manual_seed(0)
    # each sentence gets an image with a bright square in its own place: something to find
    images = 0.1 * torch.rand(8, 1, 16, 16, generator=g)
    for k in range(8):
        r, c = divmod(k, 4)
        images[k, 0, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 0.9
    ids, mask = encode_reports(small_tok, SENTENCES, 16)
    model = tiny_model(small_tok)
    data = TensorDictDataset(image=images, input_ids=ids, attention_mask=mask)
    history = fit(model, lambda m, b: G.gloria_step(m, b, 1.0, attention=kind), data, steps=80, batch_size=8,
                  lr=3e-3, progress=False, log_every=1)
    for name in ("global", "local"):
        values = history.metrics[name]
        assert np.mean(values[-5:]) < 0.5 * np.mean(values[:5]), f"{name} loss did not fall: {values[:5]} -> " \
            f"{values[-5:]}"


def test_model_round_trips_through_the_hub_cache(small_tok, tmp_path):
    from medmm_lite.hub import load_or_train

    def train(model):  # "training" that moves the weights away from what build_fn makes
        with torch.no_grad():
            model.image_local.weight.add_(1.0)

    trained, _ = load_or_train("gloria_test", train, build_fn=lambda: tiny_model(small_tok), cache_dir=tmp_path)
    loaded, info = load_or_train("gloria_test", train, build_fn=lambda: tiny_model(small_tok), cache_dir=tmp_path)
    assert info["cached"]
    torch.testing.assert_close(loaded.image_local.weight, trained.image_local.weight)
    assert "subword_continues" not in loaded.state_dict(), "lookup tables come from the tokenizer, not the file"
    assert torch.equal(loaded.subword_continues, trained.subword_continues)


# --------------------------------------------------------------------------- sentences and the pointing game
def test_report_sentences_cut_like_gloria():
    report = ("FINDINGS: Portable AP view of the chest. There is a 1.8 cm nodule in the right upper lobe. "
              "No pneumothorax. IMPRESSION: 1. Small nodule in the right upper lobe. 2. Cardiomegaly.")
    assert G.report_sentences(report) == ["Portable AP view of the chest.",
                                          "There is a 1.8 cm nodule in the right upper lobe.", "No pneumothorax.",
                                          "Small nodule in the right upper lobe."]


def test_sentence_bank_samples_each_studys_own_sentences(small_tok):
    reports = ["FINDINGS: No pneumothorax. Small nodule. IMPRESSION: Small nodule.", "FINDINGS: Heart size is normal.",
               "Cardiomegaly"]
    bank = G.sentence_bank(reports, small_tok)
    assert bank.count.tolist() == [3, 1, 1] and bank.first.tolist() == [0, 3, 4]
    assert bank.sentences[4] == "Cardiomegaly", "a report without a two-word sentence keeps its text"
    studies = torch.tensor([0, 1, 2, 0, 0, 0, 0, 0] * 10)
    rows = bank.sample(studies, torch.Generator().manual_seed(0))
    assert torch.equal(bank.study[rows], studies)
    assert set(rows[studies == 0].tolist()) == {0, 1, 2}
    assert torch.equal(rows, bank.sample(studies, torch.Generator().manual_seed(0)))


def test_cells_touching_and_the_pointing_game():
    touching = G.cells_touching([(0.0, 0.0, 0.3, 0.2)], (4, 4))
    assert touching.nonzero().tolist() == [[0, 0], [0, 1]]
    assert G.cells_touching([(0.25, 0.25, 0.5, 0.5)], (4, 4)).sum() == 1, "touching an edge is no overlap"

    class Cohort:
        reports = ["FINDINGS: Small nodule in the right upper lobe. No pneumothorax.",
                   "FINDINGS: Large left pleural effusion. Right apical pneumothorax."]
        boxes = [[{"finding": "Lung Lesion", "box": (0.1, 0.1, 0.2, 0.2)}],
                 [{"finding": "Pleural Effusion", "box": (0.5, 0.5, 1.0, 1.0)},
                  {"finding": "Pneumothorax", "box": (0.0, 0.0, 0.5, 0.25)}]]

    tok = train_tokenizer(Cohort.reports * 3, 120, cache=False)
    trials = G.pointing_trials(Cohort(), [0, 1], tok)
    assert list(trials.study) == [0, 1, 1]
    assert trials.finding == ["Lung Lesion", "Pleural Effusion", "Pneumothorax"]
    assert trials.sentence[2] == "Right apical pneumothorax."
    words = merged_words(trials.input_ids, tok, trials.attention_mask)
    assert [w for w, q in zip(words[0], trials.query[0]) if q] == ["nodule"]
    maps = torch.zeros(3, trials.query.shape[1], 4, 4)
    maps[0, :, 0, 0] = 1.0      # the nodule word peaks at the top-left cell: inside its box
    maps[1, :, 0, 0] = 1.0      # the effusion word peaks top-left too: a miss (its box is bottom-right)
    maps[2, :, 0, 3] = 1.0      # pneumothorax: top-right cell, outside (0..0.5 wide)
    result = G.pointing_game(maps, trials)
    assert result["hits"].tolist() == [True, False, False]
    assert result["accuracy"] == pytest.approx(1 / 3)
    assert result["chance_per_trial"].tolist() == pytest.approx([1 / 16, 4 / 16, 2 / 16])
    assert result["per_finding"]["Pneumothorax"] == (0.0, 2 / 16, 1)


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_say_what_was_expected(small_tok):
    words, mask, regions, _ = random_batch(B=3, W=4, D=8)
    with pytest.raises(ValueError, match="same space"):
        local_contrastive_loss(words, mask, regions[..., :5])
    with pytest.raises(ValueError, match="3 reports but 2 images"):
        local_contrastive_loss(words, mask, regions[:2])
    with pytest.raises(ValueError, match=r"word_mask must be \(B, W\)"):
        local_contrastive_loss(words, mask[:, :2], regions)
    with pytest.raises(ValueError, match="flatten"):
        local_contrastive_loss(words, mask, regions.view(3, 8, 3, 4))
    empty = mask.clone()
    empty[1] = False
    with pytest.raises(ValueError, match="report 1 has no words"):
        local_contrastive_loss(words, empty, regions)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        local_contrastive_loss(words[:1], mask[:1], regions[:1])
    with pytest.raises(ValueError, match="hides every region"):
        word_region_attention(words, regions, 4.0, mask, torch.zeros(3, 12, dtype=torch.bool))
    with pytest.raises(ValueError, match="aggregate"):
        local_similarities(words, mask, regions, aggregate="mean")
    with pytest.raises(ValueError, match="attention must be one of"):
        local_contrastive_loss(words, mask, regions, attention="dot")
    with pytest.raises(ValueError, match="token_features must be"):
        merge_subwords(torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.long), small_tok)
    with pytest.raises(ValueError, match="outside the tokenizer's vocabulary"):
        word_ids(torch.full((1, 4), 10_000), small_tok)
    with pytest.raises(TypeError, match="Hugging Face tokenizer"):
        subword_tables(object())
    image = ViT(image_size=16, patch_size=4, in_chans=1, dim=32, depth=1, heads=2)
    text = TextEncoder(vocab_size=len(small_tok), dim=32, depth=1, heads=2, max_len=24)
    bare = G.GLoRIAModel(image, text, 16)
    ids, m = encode_reports(small_tok, SENTENCES[:2], 16)
    with pytest.raises(ValueError, match="without a tokenizer"):
        bare(torch.rand(2, 1, 16, 16), ids, m)
    out = bare(torch.rand(2, 1, 16, 16), ids, m, word_ids=word_ids(ids, small_tok, m))
    assert out.words.shape[0] == 2
    with pytest.raises(ValueError, match="vocabulary"):
        G.GLoRIAModel(image, TextEncoder(vocab_size=20, dim=32, depth=1, heads=2, max_len=24), 16, tokenizer=small_tok)
    with pytest.raises(KeyError, match="attention_mask"):
        G.gloria_step(bare, {"image": torch.rand(2, 1, 16, 16), "input_ids": ids})
    with pytest.raises(ValueError, match="projection"):
        G.attention_maps(bare, torch.rand(2, 1, 16, 16), ids, m, projection="mean")
    with pytest.raises(ValueError, match="text must be"):
        G.pretrain_gloria(None, None, text="paragraph")
