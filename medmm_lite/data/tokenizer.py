"""A WordPiece tokenizer trained on the cohort's own reports.

Radiology reports use a small, repetitive vocabulary ("pleural", "effusion",
"cardiomegaly"), so a few hundred WordPiece tokens learned from the reports
themselves cover them far better than a general-purpose English vocabulary
would. The pipeline is BERT's, run by Hugging Face ``tokenizers``:

    text --normaliser--> "no pleural effusion."      (lowercase, accents stripped)
         --pre-tokeniser--> ["no", "pleural", "effusion", "."]   (whitespace and punctuation)
         --WordPiece--> ["no", "pl", "##eural", "effusion", "."]  (greedy longest match)
         --post-processor--> [CLS] ... [SEP]          (for encoders, like BERT)

Special tokens have fixed ids so every lesson can rely on them:
``[PAD]``=0, ``[UNK]``=1, ``[CLS]``=2, ``[SEP]``=3, ``[MASK]``=4, ``[BOS]``=5, ``[EOS]``=6.

Encoders (CLIP's text tower, masked language modelling) read
``[CLS] report [SEP]`` from :func:`encode_reports`; decoders (captioning, the
small language model of the VLM lesson) read ``[BOS] report [EOS]`` from
:func:`encode_for_decoder`.

The vocabulary is learned by :func:`learn_wordpiece_vocab`, a short Python
version of Hugging Face's ``WordPieceTrainer`` (merge the most frequent pair of
pieces, again and again). We learn it ourselves because the Rust trainer breaks
ties in hash order, so the same reports can give a different vocabulary on each
run; ours breaks them alphabetically and is reproducible. Everything else
(normalising, splitting, encoding, decoding) is ``tokenizers``' own code.

Trained tokenizers are cached as ``tokenizer.json`` under
``cache_dir("tokenizers")``, keyed by a hash of the texts and settings, so a
lesson that trains the same tokenizer again gets it instantly.
"""
from __future__ import annotations

import hashlib
import heapq
import warnings
from collections import Counter, defaultdict

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from ..utils import atomic_write_bytes, cache_dir

# Order matters: a token's position here is its id.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BOS]", "[EOS]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID, BOS_ID, EOS_ID = range(len(SPECIAL_TOKENS))

# Bump when the pipeline below changes, so old cached tokenizers are not reused.
TOKENIZER_VERSION = 1

# Reports are a few hundred tokens at most; 512 is BERT's limit and ours.
MODEL_MAX_LENGTH = 512


def _check_texts(texts, what: str = "texts") -> list[str]:
    if isinstance(texts, str):
        raise ValueError(f"{what} must be a list of report strings, got a single string; wrap it: [text]")
    if not hasattr(texts, "__iter__"):
        raise ValueError(f"{what} must be a list of report strings, got {type(texts).__name__}")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what} is empty: pass at least one report string")
    bad = [(i, type(t).__name__) for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        i, kind = bad[0]
        raise ValueError(f"{what} must all be strings, but item {i} is a {kind} ({len(bad)} non-strings in all); "
                         "convert them with str() or drop them")
    return texts


def _empty_tokenizer() -> Tokenizer:
    """BERT's normaliser, pre-tokeniser and decoder around an untrained WordPiece model."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # The WordPiece decoder glues "##" pieces back on and, token by token, removes the
    # space before . , ? !; we add : and ; so "findings: no effusion." decodes as written.
    tok.decoder = decoders.Sequence([
        decoders.WordPiece(prefix="##", cleanup=True),
        decoders.Replace(" :", ":"),
        decoders.Replace(" ;", ";"),
    ])
    return tok


def minimum_vocab_size(texts) -> int:
    """The smallest vocabulary WordPiece can train on ``texts``: specials + every character
    + every character in its ``##`` continuation form. Anything smaller cannot spell the reports."""
    return _minimum_vocab_size(_word_counts(_check_texts(texts)))


def _minimum_vocab_size(word_counts) -> int:
    chars = {c for word in word_counts for c in word}
    continuations = {c for word in word_counts for c in word[1:]}
    return len(SPECIAL_TOKENS) + len(chars) + len(continuations)


def _cache_key(texts: list[str], vocab_size: int, min_frequency: int) -> str:
    h = hashlib.sha256(f"v{TOKENIZER_VERSION}|{vocab_size}|{min_frequency}|{len(texts)}|".encode())
    for text in texts:
        data = text.encode("utf-8")
        # Length-prefix each text so ["ab", "c"] and ["a", "bc"] hash differently.
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:24]


def _word_counts(texts: list[str]) -> Counter:
    """How often each pre-tokenised word occurs, after BERT normalisation."""
    tok = _empty_tokenizer()
    counts: Counter = Counter()
    for text in texts:
        counts.update(word for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)))
    return counts


def learn_wordpiece_vocab(word_counts, vocab_size: int, min_frequency: int = 1) -> list[str]:
    """Learn a WordPiece vocabulary the way Hugging Face's ``WordPieceTrainer`` does, deterministically.

    Every word starts as its characters, the non-initial ones marked ``##``
    (``"hug" -> h ##u ##g``). Then, repeatedly, the most frequent adjacent pair is merged
    into one new token (``##u ##g -> ##ug``) until the vocabulary is full or no pair occurs
    ``min_frequency`` times. Ties go to the alphabetically first pair, so the result is a
    pure function of the word counts; the Rust trainer breaks ties by hash order and can
    return a different vocabulary on every run. Encoding later uses only the vocabulary
    (greedy longest match), not the merge order.

    Returns the tokens in id order: specials, characters, ``##`` characters, merges.
    """
    words = sorted(word_counts)
    freq = [word_counts[w] for w in words]
    splits = [[w[0]] + ["##" + c for c in w[1:]] for w in words]
    # Every character is a token on its own (as HF does), even one seen only inside words,
    # so any word made of known characters can be spelled.
    chars = sorted({c for w in words for c in w})
    continuations = sorted({"##" + c for w in words for c in w[1:]})
    vocab = list(SPECIAL_TOKENS) + chars + continuations
    known = set(vocab)

    pair_count: Counter = Counter()
    words_with_pair: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, split in enumerate(splits):
        for pair in zip(split, split[1:]):
            pair_count[pair] += freq[i]
            words_with_pair[pair].add(i)
    # A max-heap on (count, alphabetical order) with stale entries skipped when popped.
    heap = [(-c, pair) for pair, c in pair_count.items()]
    heapq.heapify(heap)

    while len(vocab) < vocab_size and heap:
        neg_count, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg_count:
            continue  # stale: this pair's count changed after the entry was pushed
        if -neg_count < min_frequency:
            break
        left, right = pair
        merged = left + right[2:]  # the right piece is always a "##" continuation
        if merged not in known:
            vocab.append(merged)
            known.add(merged)
        touched = set()
        for i in sorted(words_with_pair.pop(pair)):
            old = splits[i]
            new, j = [], 0
            while j < len(old):
                if j + 1 < len(old) and old[j] == left and old[j + 1] == right:
                    new.append(merged)
                    j += 2
                else:
                    new.append(old[j])
                    j += 1
            for p in zip(old, old[1:]):
                pair_count[p] -= freq[i]
                touched.add(p)
            for p in zip(new, new[1:]):
                pair_count[p] += freq[i]
                words_with_pair[p].add(i)
                touched.add(p)
            splits[i] = new
        for p in sorted(touched):
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
            else:
                pair_count.pop(p, None)
    return vocab


def _train(word_counts, vocab_size: int, min_frequency: int) -> Tokenizer:
    vocab = learn_wordpiece_vocab(word_counts, vocab_size, min_frequency)
    tok = _empty_tokenizer()
    tok.model = models.WordPiece({token: i for i, token in enumerate(vocab)},
                                 unk_token="[UNK]", continuing_subword_prefix="##")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)],
    )
    return tok


def _check_specials(tok: Tokenizer) -> None:
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(token) != expected_id:
            raise ValueError(f"special token {token} has id {tok.token_to_id(token)}, expected {expected_id}")


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", bos_token="[BOS]", eos_token="[EOS]",
        model_max_length=MODEL_MAX_LENGTH, padding_side="right",
        # The decoder above already tidies spaces per token; transformers' whole-string
        # clean-up would also rewrite "do not" as "don't", which a report must never do.
        clean_up_tokenization_spaces=False,
    )


def train_tokenizer(texts, vocab_size: int, *, cache: bool = True,
                    min_frequency: int = 1) -> PreTrainedTokenizerFast:
    """Train (or load from the cache) a WordPiece tokenizer on report ``texts``.

    Args:
        texts: the reports, a list of strings (use the training split only, as for any model).
        vocab_size: the largest vocabulary to learn, special tokens included. It must be at
            least :func:`minimum_vocab_size` (specials + the characters of the reports).
        cache: reuse a tokenizer trained earlier on exactly these texts and settings.
        min_frequency: merges seen fewer times than this are not learned.

    Returns:
        a ``transformers.PreTrainedTokenizerFast`` with ``[PAD]``=0 ... ``[EOS]``=6,
        right padding, and ``[CLS] ... [SEP]`` added when encoding.

    Training is deterministic: the same texts give the same vocabulary.
    """
    texts = _check_texts(texts)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ValueError(f"vocab_size must be an int, got {vocab_size!r}")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be an int >= 1, got {min_frequency!r}")
    path = cache_dir("tokenizers") / f"wordpiece-{_cache_key(texts, vocab_size, min_frequency)}" / "tokenizer.json"
    if cache and path.exists():
        try:
            tok = Tokenizer.from_str(path.read_text(encoding="utf-8"))
            _check_specials(tok)
            return _wrap(tok)
        except Exception as err:  # a half-written or hand-edited file: train again
            warnings.warn(f"cached tokenizer {path} is unreadable ({type(err).__name__}: {err}); "
                          "training it again and overwriting the cache", RuntimeWarning, stacklevel=2)

    word_counts = _word_counts(texts)
    smallest = _minimum_vocab_size(word_counts)
    if vocab_size < smallest:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for these texts: the {len(SPECIAL_TOKENS)} special tokens "
            f"and the characters of the reports (plain and ##-continuation) already need {smallest}; "
            f"use vocab_size >= {smallest} (a few hundred is typical for reports)")
    tok = _train(word_counts, vocab_size, min_frequency)
    _check_specials(tok)
    if cache:
        atomic_write_bytes(path, tok.to_str(pretty=True).encode("utf-8"))
    return _wrap(tok)


def _check_max_len(max_len, smallest: int) -> int:
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < smallest:
        raise ValueError(f"max_len must be an int >= {smallest} (room for the two special tokens "
                         f"and at least one word), got {max_len!r}")
    return max_len


def encode_reports(tokenizer: PreTrainedTokenizerFast, texts, max_len: int):
    """Encode reports for a text *encoder*: ``[CLS] tokens [SEP]``, truncated and right-padded.

    Returns:
        ``(input_ids, attention_mask)``, both ``LongTensor`` of shape ``(len(texts), max_len)``;
        the mask is 1 on real tokens and 0 on ``[PAD]``. A truncated report still ends in ``[SEP]``.
    """
    texts = _check_texts(texts)
    max_len = _check_max_len(max_len, 3)
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_len,
                    return_tensors="pt", return_token_type_ids=False)
    return enc["input_ids"].long(), enc["attention_mask"].long()


def encode_for_decoder(tokenizer: PreTrainedTokenizerFast, texts, max_len: int):
    """Encode reports for a text *decoder* (captioning, language modelling):
    ``[BOS] tokens [EOS]``, no ``[CLS]``/``[SEP]``, truncated and right-padded.

    A report longer than ``max_len - 2`` tokens is cut and still ends in ``[EOS]``, so a
    model trained on it always learns to stop inside the window.

    Returns:
        ``(input_ids, attention_mask)``, both ``LongTensor`` of shape ``(len(texts), max_len)``.
        Next-token targets are ``input_ids[:, 1:]`` with padding set to -100.
    """
    texts = _check_texts(texts)
    max_len = _check_max_len(max_len, 3)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    pieces = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_len - 2)["input_ids"]
    input_ids = torch.full((len(texts), max_len), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(texts), max_len), dtype=torch.long)
    for row, ids in enumerate(pieces):
        seq = [bos, *ids, eos]
        input_ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, :len(seq)] = 1
    return input_ids, attention_mask


__all__ = ["train_tokenizer", "encode_reports", "encode_for_decoder", "minimum_vocab_size", "learn_wordpiece_vocab",
           "SPECIAL_TOKENS", "PAD_ID", "UNK_ID", "CLS_ID", "SEP_ID", "MASK_ID", "BOS_ID", "EOS_ID"]
