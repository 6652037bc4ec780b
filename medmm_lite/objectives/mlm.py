"""Masked language modelling (BERT): hide some words of a report, predict them back.

:func:`mask_tokens` chooses ``mask_prob`` (15%) of the real, non-special tokens and
returns the corrupted input and the labels (-100 everywhere except at the chosen
positions, where the label is the original token). Of the chosen tokens

* 80% are replaced by ``[MASK]``,
* 10% by a random token of the vocabulary,
* 10% are left unchanged,

so the model cannot learn "only [MASK] positions matter": it must keep a good
representation of every token, since any of them may be a hidden target (Devlin et
al. 2019, section 3.1). Special tokens (``[CLS]``, ``[SEP]``, ``[PAD]``...) and padding
are never chosen.

**Whole-word masking** chooses words instead of tokens: when WordPiece splits a
word ("pneumo ##thorax"), hiding one piece and showing the other makes the task
trivial, so every piece of a chosen word is hidden together.

The random draws happen in the same order and with the same distributions as
``transformers.DataCollatorForLanguageModeling.torch_mask_tokens``, so the same
``torch.Generator`` state gives exactly the same masks (tests/test_masking.py checks it).
"""
from __future__ import annotations

import torch

# The tokenizer's special tokens have fixed ids 0..6: [PAD] [UNK] [CLS] [SEP] [MASK] [BOS] [EOS]
# (medmm_lite.data.tokenizer.SPECIAL_TOKENS; not imported here, so this module stays light).
DEFAULT_SPECIAL_IDS = (0, 1, 2, 3, 4, 5, 6)
IGNORE_INDEX = -100  # the label of a position that is not predicted (cross_entropy's ignore_index)


def _bernoulli(p, shape, where_not, generator, device) -> torch.Tensor:
    """Bool tensor: True with probability ``p`` (0 where ``where_not``), drawn on the generator's device
    (CPU by default, like ``transformers``' collator) and moved to ``device``."""
    where = generator.device if generator is not None else device
    probs = torch.full(shape, float(p), device=where)
    if where_not is not None:
        probs.masked_fill_(where_not.to(where), 0.0)
    return torch.bernoulli(probs, generator=generator).bool().to(device)


def _check_ids(input_ids, attention_mask, word_ids, whole_word):
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.is_floating_point():
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be an integer tensor of shape (B, L), got {shape}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask must have input_ids' shape {tuple(input_ids.shape)} "
                         f"(1 = real token, 0 = padding), got {tuple(attention_mask.shape)}")
    if whole_word:
        if word_ids is None:
            raise ValueError("whole_word=True needs word_ids (B, L): the word each token belongs to, -1 for "
                             "special tokens; build them with wordpiece_word_ids(input_ids, tokenizer)")
        if tuple(word_ids.shape) != tuple(input_ids.shape):
            raise ValueError(f"word_ids must have input_ids' shape {tuple(input_ids.shape)}, got {tuple(word_ids.shape)}")
    elif word_ids is not None:
        raise ValueError("word_ids is only used with whole_word=True")


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, mask_token_id: int, vocab_size: int,
                mask_prob: float = 0.15, special_ids=DEFAULT_SPECIAL_IDS, whole_word: bool = False,
                word_ids: torch.Tensor | None = None, generator: torch.Generator | None = None,
                mask_replace_prob: float = 0.8, random_replace_prob: float = 0.1):
    """Corrupt a batch of token ids for masked language modelling (BERT's recipe).

    Args:
        input_ids: (B, L) token ids, e.g. ``[CLS] report [SEP] [PAD]...``; not modified.
        attention_mask: (B, L) 1 for real tokens, 0 for padding (None: every position is real).
        mask_token_id: the id of ``[MASK]`` (4 for the course's tokenizer).
        vocab_size: random replacements are drawn uniformly from ``[0, vocab_size)``, as in BERT
            and ``transformers`` (``len(tokenizer)``).
        mask_prob: probability that a token (or, with ``whole_word``, a word) is chosen.
        special_ids: token ids never chosen (default: the course tokenizer's 7 specials).
        whole_word: choose whole words; needs ``word_ids``.
        word_ids: (B, L) long, the word each token belongs to, -1 for tokens outside any word.
            Tokens sharing an id in a row are masked together, and the group is chosen (with
            ``mask_prob``) through its first token: a word's pieces (:func:`wordpiece_word_ids`), or
            every occurrence of a word in the report (:func:`word_type_ids`).
        generator: a ``torch.Generator`` for reproducible masks (default: the global RNG).
        mask_replace_prob, random_replace_prob: the 80% / 10% of BERT; the rest stays unchanged.

    Returns:
        ``(masked_input_ids, labels)``, both (B, L) long: the corrupted ids, and the original id at
        chosen positions with ``-100`` everywhere else (``F.cross_entropy(..., ignore_index=-100)``).
    """
    _check_ids(input_ids, attention_mask, word_ids, whole_word)
    if not 0 < mask_prob <= 1:
        raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
    if not (0 <= mask_replace_prob <= 1 and 0 <= random_replace_prob <= 1 - mask_replace_prob):
        raise ValueError(f"need 0 <= mask_replace_prob <= 1 and 0 <= random_replace_prob <= 1 - mask_replace_prob, "
                         f"got {mask_replace_prob} and {random_replace_prob}")
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id={mask_token_id} is not in the vocabulary [0, {vocab_size})")
    device = input_ids.device
    input_ids = input_ids.long()
    specials = torch.as_tensor(tuple(special_ids), dtype=torch.long, device=device)
    can_mask = ~torch.isin(input_ids, specials)
    if attention_mask is not None:
        can_mask &= attention_mask.bool()

    if whole_word:
        word_ids = word_ids.long().to(device)
        in_word = can_mask & (word_ids >= 0)
        ids = word_ids.clamp(min=0).masked_fill(~in_word, 0)
        n_ids = int(ids.max()) + 1 if ids.numel() else 1
        # a word (a group of tokens sharing an id) is chosen through its first token in the row
        position = torch.arange(input_ids.shape[1], device=device).expand_as(ids)
        first = torch.full((ids.shape[0], n_ids), input_ids.shape[1], dtype=torch.long, device=device)
        first.scatter_reduce_(1, ids, position.masked_fill(~in_word, input_ids.shape[1]), reduce="amin")
        first_piece = in_word & (position == first.gather(1, ids))
        chosen_first = _bernoulli(mask_prob, input_ids.shape, ~first_piece, generator, device)
        # spread the choice to every token of the group
        chosen_word = torch.zeros(ids.shape[0], n_ids, dtype=torch.long, device=device)
        chosen_word.scatter_add_(1, ids, chosen_first.long())
        chosen = (chosen_word.gather(1, ids) > 0) & in_word
    else:
        chosen = _bernoulli(mask_prob, input_ids.shape, ~can_mask, generator, device)

    labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)
    masked = input_ids.clone()
    replaced = _bernoulli(mask_replace_prob, input_ids.shape, None, generator, device) & chosen
    masked[replaced] = mask_token_id
    if mask_replace_prob == 1 or random_replace_prob == 0:
        return masked, labels
    scaled = random_replace_prob / (1 - mask_replace_prob)  # of the not-[MASK]ed, the share made random
    randomised = _bernoulli(scaled, input_ids.shape, None, generator, device) & chosen & ~replaced
    where = generator.device if generator is not None else device
    random_words = torch.randint(vocab_size, input_ids.shape, generator=generator, device=where).to(device)
    masked[randomised] = random_words[randomised]
    return masked, labels


def wordpiece_word_ids(input_ids: torch.Tensor, tokenizer, attention_mask: torch.Tensor | None = None,
                       special_ids=DEFAULT_SPECIAL_IDS) -> torch.Tensor:
    """Word ids for WordPiece tokens: a ``##`` piece continues the previous token's word.

    Returns (B, L) long: words numbered 0, 1, 2... in each row, -1 for special tokens and padding.
    Punctuation is its own word (BERT's pre-tokeniser splits it off).
    """
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    continues = torch.tensor([t.startswith("##") for t in vocab], device=input_ids.device)
    specials = torch.as_tensor(tuple(special_ids), dtype=torch.long, device=input_ids.device)
    real = ~torch.isin(input_ids, specials)
    if attention_mask is not None:
        real &= attention_mask.bool()
    starts = real & ~continues[input_ids]
    word = torch.cumsum(starts.long(), dim=1) - 1
    return word.masked_fill(~real, -1)


def word_type_ids(input_ids: torch.Tensor, tokenizer, attention_mask: torch.Tensor | None = None,
                  special_ids=DEFAULT_SPECIAL_IDS) -> torch.Tensor:
    """Group ids that put **every occurrence of a word** in a report into one group.

    Each token gets the vocabulary id of the first piece of its word (so "pneumo ##thorax" ->
    the id of "pneumo" for both pieces, at every place the word occurs), -1 for special tokens
    and padding. With ``mask_tokens(..., whole_word=True, word_ids=word_type_ids(...))`` a chosen
    word is hidden everywhere in the report. Reports repeat their findings (FINDINGS, then
    IMPRESSION); hiding only one copy lets a model copy the answer from the other.
    Words are told apart by their first piece, which for a report vocabulary is nearly always the word.
    """
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    continues = torch.tensor([t.startswith("##") for t in vocab], device=input_ids.device)
    specials = torch.as_tensor(tuple(special_ids), dtype=torch.long, device=input_ids.device)
    real = ~torch.isin(input_ids, specials)
    if attention_mask is not None:
        real &= attention_mask.bool()
    starts = real & ~continues[input_ids]
    position = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    last_start = torch.cummax(position.masked_fill(~starts, 0), dim=1).values   # where this token's word began
    return input_ids.gather(1, last_start).masked_fill(~real, -1)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the chosen positions only. ``logits`` (B, L, V) or (M, V) for
    already-selected positions; ``labels`` (B, L) or (M,) with -100 where nothing is predicted."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be labels' shape {tuple(labels.shape)} plus a vocab axis")
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                             ignore_index=IGNORE_INDEX)


__all__ = ["mask_tokens", "wordpiece_word_ids", "word_type_ids", "mlm_loss", "DEFAULT_SPECIAL_IDS", "IGNORE_INDEX"]
