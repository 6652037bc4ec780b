"""The language model: a Hugging Face ``LlamaForCausalLM`` built from a config, "pretrained" on reports.

A real VLM starts from an LLM trained on trillions of tokens. Ours is the same class
(``transformers.LlamaForCausalLM``: RMSNorm, rotary positions, SwiGLU MLP, a KV cache)
with a few layers, pretrained here on the training reports by next-token prediction.
Everything the lesson does with it (``inputs_embeds``, the cache, ``generate``) is what
one does with Llama, Vicuna or Mistral; :func:`from_pretrained` loads such a checkpoint
by name where one can be downloaded.

Why Llama and not GPT-2: GPT-2's attention uses ``Conv1D`` layers, which
``medmm_lite.adapt.apply_lora`` (it wraps ``nn.Linear``) would not find; Llama's
projections are ``nn.Linear``, as in most current LLMs.
"""
from __future__ import annotations

import inspect

import numpy as np
import torch

from ..data.samplers import length_grouped
from ..hub import data_fingerprint, load_or_train, profile_key
from ..train import fit
from .instructions import IGNORE_INDEX, pad_batch


def lm_sizes(P) -> dict:
    """Layers, width and heads of the language model for profile ``P`` (a few layers, the profile's width)."""
    return {"layers": max(2, P.depth - 1), "dim": P.dim, "heads": P.heads}


def lm_config(vocab_size: int, *, dim: int, layers: int, heads: int, max_len: int = 512, tokenizer=None):
    """A ``LlamaConfig`` for a small model; special ids from ``tokenizer`` (the course's: PAD 0, BOS 5, EOS 6)."""
    from transformers import LlamaConfig

    if dim % heads:
        raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
    bos, eos, pad = ((tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
                     if tokenizer is not None else (5, 6, 0))
    return LlamaConfig(vocab_size=vocab_size, hidden_size=dim, intermediate_size=int(8 * dim / 3 // 8 * 8),
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=max_len, rms_norm_eps=1e-5, tie_word_embeddings=True,
                       bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, attention_dropout=0.0)


def build_language_model(config, *, seed: int = 0):
    """``LlamaForCausalLM(config)`` initialised from ``seed`` (the global random state is untouched)."""
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def from_pretrained(name: str, **kwargs):
    """A pretrained causal LM and its tokenizer from the Hugging Face Hub (e.g. on Colab with internet).

    Returns ``(model, tokenizer)``. Offline, or for an unknown name, raises a RuntimeError that
    says so and names the course's default: the small model pretrained on the reports
    (``pretrain_language_model``), which needs no download.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except Exception as err:  # OSError offline / unknown repo, ValueError for odd configs
        raise RuntimeError(
            f"could not load the pretrained language model {name!r} ({type(err).__name__}: {err}). "
            "It needs the Hugging Face Hub (internet) or a local copy. The course's default needs neither: "
            "medmm_lite.vlm.pretrain_language_model(P, data, tokenizer), a small Llama pretrained on the "
            "reports.") from err
    return model, tokenizer


# The keyword for the KV cache: ``cache`` in recent transformers, ``past_key_values`` before.
def cache_keyword(model) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_of(output):
    """The KV cache an output carries (``.cache`` in recent transformers, ``.past_key_values`` before)."""
    return output.cache if "cache" in getattr(output, "keys", lambda: ())() else output.past_key_values


def lm_step(model, batch):
    """Next-token loss of a causal LM on ``batch`` (``input_ids``, ``attention_mask``, ``labels``).

    The labels are the input ids themselves (padding -100); Hugging Face's model shifts them by
    one inside, so position t is scored on predicting token t+1. Padding columns are trimmed first.
    """
    mask = batch["attention_mask"]
    longest = int(mask.sum(1).max())
    return model(input_ids=batch["input_ids"][:, :longest], attention_mask=mask[:, :longest],
                 labels=batch["labels"][:, :longest]).loss


def encode_reports_for_lm(tokenizer, reports, max_len: int):
    """``[BOS] report [EOS]`` ids, attention mask and labels (padding -100), right-padded."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pieces = tokenizer(list(reports), add_special_tokens=False)["input_ids"]
    seqs = [[bos, *p[:max_len - 2], eos] for p in pieces]
    ids = pad_batch(seqs, tokenizer.pad_token_id)
    mask = pad_batch([[1] * len(s) for s in seqs], 0)
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pretrain_language_model(P, data, tokenizer, *, seed: int = 0, steps: int | None = None, lr: float | None = None,
                            batch_size: int | None = None, device=None, progress: bool = True,
                            retrain: bool = False, sizes: dict | None = None):
    """Train (or load from the cache) the small Llama on the training reports: ``(model, info)``.

    Steps default to a third of the profile's; batches group reports of similar length; the
    reports are ``[BOS] report [EOS]``, truncated to ``P.max_text_len + 32`` tokens.
    """
    sizes = {**lm_sizes(P), **(sizes or {})}
    steps = steps or max(1, P.steps // 3)
    lr, device = lr or P.lr, device or P.device
    train = np.asarray(data.splits["train"], dtype=np.int64)
    batch_size = min(batch_size or max(8, P.batch_size // 2), len(train))
    max_len = P.max_text_len + 32
    tensors = encode_reports_for_lm(tokenizer, [data.cohort.reports[i] for i in train], max_len)
    vocab_size = len(tokenizer)

    def build():
        return build_language_model(lm_config(vocab_size, tokenizer=tokenizer, max_len=512, **sizes), seed=seed)

    def train_fn(model):
        return fit(model, lm_step, length_grouped(tensors), steps=steps, batch_size=batch_size, lr=lr,
                   seed=seed, device=device, amp=P.amp, progress=progress, desc="LM on reports")

    key = {**profile_key(P), "data": data_fingerprint(data), "vocab": vocab_size, "seed": seed, "steps": steps,
           "lr": float(lr), "batch_size": batch_size, "sizes": sizes, "max_len": max_len}
    model, info = load_or_train("vlm_lm", train_fn, build_fn=build, key=key, device=device, retrain=retrain)
    return model.eval(), info


__all__ = ["lm_sizes", "lm_config", "build_language_model", "from_pretrained", "cache_keyword", "cache_of",
           "lm_step",
           "encode_reports_for_lm", "pretrain_language_model"]
