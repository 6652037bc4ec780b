"""The report tokenizer: special ids, round trips, caching, determinism, bad input."""
import random
import warnings

import pytest
import torch

from medmm_lite.data import tokenizer as tokmod
from medmm_lite.data.tokenizer import (BOS_ID, CLS_ID, EOS_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS,
                                       encode_for_decoder, encode_reports, minimum_vocab_size,
                                       train_tokenizer)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own cache directory, never the user's ~/.cache/medmm."""
    monkeypatch.setenv("MEDMM_DATA", str(tmp_path / "cache"))


def _reports(n=200, seed=0):
    """Report-like sentences with negations, uncertainty, locations and section headers."""
    rng = random.Random(seed)
    findings = ["pleural effusion", "pneumothorax", "consolidation", "cardiomegaly", "edema",
                "atelectasis", "nodule", "rib fracture", "support devices"]
    where = ["in the left lower zone", "in the right upper zone", "at the left base", "bilaterally", ""]
    sev = ["Small", "Moderate", "Large", "Mild"]
    out = []
    for _ in range(n):
        parts = ["FINDINGS:"]
        for f in rng.sample(findings, 3):
            kind = rng.randrange(3)
            if kind == 0:
                parts.append(f"No {f}.")
            elif kind == 1:
                parts.append(f"{rng.choice(sev)} {f} {rng.choice(where)}.".replace(" .", "."))
            else:
                parts.append(f"Cannot exclude {f}.")
        parts.append("IMPRESSION: Heart size is " + rng.choice(["normal", "enlarged"]) + ", lungs are clear.")
        out.append(" ".join(parts))
    return out


REPORTS = _reports()


@pytest.fixture(scope="module")
def tok():
    # module-scoped fixtures cannot use monkeypatch: train without the cache here.
    return train_tokenizer(REPORTS, 300, cache=False)


def test_special_token_ids(tok):
    for expected, token in enumerate(SPECIAL_TOKENS):
        assert tok.convert_tokens_to_ids(token) == expected
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id) == (0, 1, 2, 3)
    assert (tok.mask_token_id, tok.bos_token_id, tok.eos_token_id) == (4, 5, 6)
    assert tok.padding_side == "right"
    assert tok.model_max_length == 512
    assert 50 < len(tok) <= 300


def test_round_trip_is_the_normalised_text(tok):
    text = "FINDINGS: Small pleural effusion in the left lower zone. Cannot exclude pneumothorax, Café."
    ids = tok(text)["input_ids"]
    assert ids[0] == CLS_ID and ids[-1] == SEP_ID
    assert tok.decode(ids, skip_special_tokens=True) == (
        "findings: small pleural effusion in the left lower zone. cannot exclude pneumothorax, cafe.")
    # and on every training report: lowercase, whitespace collapsed, nothing else changed
    for report in REPORTS[:50]:
        decoded = tok.decode(tok(report)["input_ids"], skip_special_tokens=True)
        assert decoded == " ".join(report.lower().split())


def test_subwords_split_unseen_words(tok):
    pieces = tok.tokenize("pneumothoraces")
    assert len(pieces) > 1 and all(p.startswith("##") for p in pieces[1:])
    assert tok.decode(tok("pneumothoraces")["input_ids"], skip_special_tokens=True) == "pneumothoraces"


def test_same_pipeline_as_transformers_bert_tokenizer(tok, tmp_path):
    """Cross-check: BERT's original pure-Python tokenizer (an independent implementation of
    normalising, punctuation splitting and greedy WordPiece), given our vocabulary, gives our ids."""
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(t for t, _ in vocab) + "\n")
    bert = BertTokenizerLegacy(vocab_file=str(vocab_file), do_lower_case=True, strip_accents=True,
                         unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
                         mask_token="[MASK]")
    for report in REPORTS[:40] + ["Café au lait: épanchement pleural?", "rib fracture x3 (old)."]:
        assert tok(report)["input_ids"] == bert(report)["input_ids"]


def test_deterministic_vocab():
    """Same texts, same vocabulary and ids, also in a fresh process (hash seeds differ there)."""
    import json
    import subprocess
    import sys

    a = train_tokenizer(REPORTS, 250, cache=False)
    b = train_tokenizer(list(REPORTS), 250, cache=False)
    assert a.get_vocab() == b.get_vocab()
    code = ("import json, sys; sys.path.insert(0, 'tests'); from test_tokenizer import REPORTS; "
            "from medmm_lite.data.tokenizer import train_tokenizer; "
            "print(json.dumps(train_tokenizer(REPORTS, 250, cache=False).get_vocab()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert json.loads(out.stdout) == a.get_vocab()


def test_cache_hit_returns_identical_vocab(monkeypatch):
    first = train_tokenizer(REPORTS, 260)
    files = list(tokmod.cache_dir("tokenizers").rglob("tokenizer.json"))
    assert len(files) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the cached tokenizer should have been loaded, not trained again")

    monkeypatch.setattr(tokmod, "_train", no_training)
    second = train_tokenizer(REPORTS, 260)
    assert second.get_vocab() == first.get_vocab()
    assert second(REPORTS[0])["input_ids"] == first(REPORTS[0])["input_ids"]
    # another vocab size, or other texts, is another cache entry: training is needed again
    with pytest.raises(AssertionError, match="should have been loaded"):
        train_tokenizer(REPORTS, 261)
    with pytest.raises(AssertionError, match="should have been loaded"):
        train_tokenizer(REPORTS[:-1], 260)


def test_corrupt_cache_warns_and_retrains():
    first = train_tokenizer(REPORTS, 260)
    (path,) = tokmod.cache_dir("tokenizers").rglob("tokenizer.json")
    good = path.read_text()
    path.write_text(good[: len(good) // 2])  # a half-written file
    with pytest.warns(RuntimeWarning, match="unreadable"):
        again = train_tokenizer(REPORTS, 260)
    assert again.get_vocab() == first.get_vocab()
    assert path.read_text() == good  # the cache was repaired
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_tokenizer(REPORTS, 260)  # and is silent again


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer([], 100)
    with pytest.raises(ValueError, match="item 1 is a int"):
        train_tokenizer(["no effusion.", 3], 100)
    with pytest.raises(ValueError, match="single string"):
        train_tokenizer("no effusion.", 100)
    smallest = minimum_vocab_size(REPORTS)
    with pytest.raises(ValueError, match=f"vocab_size >= {smallest}"):
        train_tokenizer(REPORTS, smallest - 1, cache=False)
    train_tokenizer(REPORTS, smallest, cache=False)  # the minimum itself is fine
    with pytest.raises(ValueError, match="min_frequency"):
        train_tokenizer(REPORTS, 300, min_frequency=0)


def _hf_wordpiece_vocab(texts, vocab_size):
    """The vocabulary Hugging Face's own (Rust) WordPieceTrainer learns on the same pipeline."""
    from tokenizers import trainers

    tok = tokmod._empty_tokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                        continuing_subword_prefix="##", show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return set(tok.get_vocab())


def test_vocab_learner_matches_hf_trainer_where_it_has_no_ties():
    """Hugging Face course's corpus: every pair count is distinct, so HF's Rust trainer is
    deterministic here and ours must learn exactly the same tokens at every size."""
    counts = {"hug": 10, "pug": 5, "pun": 12, "bun": 4, "hugs": 5}
    corpus = [" ".join([w] * c) for w, c in counts.items()]
    ours = tokmod.learn_wordpiece_vocab(counts, vocab_size=100)
    base = len(SPECIAL_TOKENS) + 7 + 4  # b g h n p s u, and ##g ##n ##s ##u
    # by hand: ##u ##g (20) -> ##ug; ##u ##n (16) -> ##un; h ##ug (15) -> hug; p ##un (12) -> pun
    assert ours[base:base + 4] == ["##ug", "##un", "hug", "pun"]
    for size in range(base, base + 4):
        assert set(tokmod.learn_wordpiece_vocab(counts, size)) == _hf_wordpiece_vocab(corpus, size)
    # On report text, where many pairs tie (every pair inside a word has that word's count),
    # the Rust trainer's choice follows hash order: two runs need not agree with each other,
    # which is why train_tokenizer learns the vocabulary with learn_wordpiece_vocab.


def test_min_frequency_stops_rare_merges():
    counts = {"effusion": 5, "zyx": 1}
    vocab = tokmod.learn_wordpiece_vocab(counts, 1000, min_frequency=2)
    assert "effusion" in vocab and "zyx" not in vocab and "zy" not in vocab
    assert "zyx" in tokmod.learn_wordpiece_vocab(counts, 1000, min_frequency=1)


def test_minimum_vocab_size_is_what_wordpiece_needs():
    assert len(_hf_wordpiece_vocab(REPORTS, 0)) == minimum_vocab_size(REPORTS)
    assert len(tokmod.learn_wordpiece_vocab(tokmod._word_counts(REPORTS), 0)) == minimum_vocab_size(REPORTS)


def test_encode_reports(tok):
    texts = ["No pleural effusion.", REPORTS[0] * 3]
    ids, mask = encode_reports(tok, texts, max_len=24)
    assert ids.dtype == torch.long and mask.dtype == torch.long and ids.shape == mask.shape == (2, 24)
    n = int(mask[0].sum())
    assert ids[0, 0] == CLS_ID and ids[0, n - 1] == SEP_ID
    assert (ids[0, n:] == PAD_ID).all() and (mask[0, n:] == 0).all() and (mask[0, :n] == 1).all()
    assert tok.decode(ids[0, :n], skip_special_tokens=True) == "no pleural effusion."
    assert mask[1].all() and ids[1, 0] == CLS_ID and ids[1, -1] == SEP_ID  # truncated, still closed
    with pytest.raises(ValueError, match="max_len"):
        encode_reports(tok, texts, max_len=2)


def test_encode_for_decoder(tok):
    texts = ["No pleural effusion.", REPORTS[1] * 3]
    ids, mask = encode_for_decoder(tok, texts, max_len=20)
    assert ids.shape == mask.shape == (2, 20) and ids.dtype == torch.long
    n = int(mask[0].sum())
    assert ids[0, 0] == BOS_ID and ids[0, n - 1] == EOS_ID and (ids[0, n:] == PAD_ID).all()
    assert not torch.isin(ids, torch.tensor([CLS_ID, SEP_ID])).any()
    assert tok.decode(ids[0, 1:n - 1]) == "no pleural effusion."
    assert mask[1].all() and ids[1, 0] == BOS_ID and ids[1, -1] == EOS_ID
    # the body equals the encoder's body, only the wrapping tokens differ
    enc_ids, enc_mask = encode_reports(tok, texts[:1], max_len=20)
    assert enc_ids[0, 1:int(enc_mask[0].sum()) - 1].tolist() == ids[0, 1:n - 1].tolist()
