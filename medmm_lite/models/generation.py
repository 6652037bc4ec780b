"""Turning a next-token model into text: greedy decoding, sampling and beam search.

Every strategy runs over a KV cache: the start tokens (and any prefix) are fed
once, then each step feeds only the token just chosen, and every block appends
that token's key and value to its cache instead of recomputing the whole
sequence. Cross-attention keys and values of the context (the image) are
computed at the first step and reused.

* greedy: take the most likely token. Deterministic, tends to repeat itself.
* sample: draw from softmax(logits / temperature), optionally only among the
  ``top_k`` most likely tokens and/or the smallest set whose probability reaches
  ``top_p`` (nucleus sampling, Holtzman et al. 2020).
* beam: keep the ``num_beams`` best partial sequences by total log-probability;
  a sequence ends at ``eos_id`` and is scored ``sum log p / length ** length_penalty``
  (length counts the generated tokens, eos included). Search stops only when no
  live beam can still beat the finished ones, so with enough beams it is exact.
"""
from __future__ import annotations

import torch

from .attention import LayerCache

STRATEGIES = ("greedy", "sample", "beam")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row, set the rest to -inf."""
    if k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose total probability is >= ``p``.

    Sorted by probability, a token is dropped when the tokens before it already
    hold at least ``p``; the most likely token is always kept.
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # the probability mass of the tokens before each one: a shifted cumsum (no cancellation error)
    mass_before = torch.cat([torch.zeros_like(probs[..., :1]), probs.cumsum(dim=-1)[..., :-1]], dim=-1)
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits are scored in float32; float64 (tests) stays float64."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def reorder_cache(past: tuple[LayerCache, ...], index: torch.Tensor) -> tuple[LayerCache, ...]:
    """Select (and repeat) rows of every cached tensor: beam search follows its beams' parents."""
    return tuple(LayerCache(*(t.index_select(0, index) if t is not None else None for t in layer))
                 for layer in past)


def _check_args(decoder, *, bos_id, eos_id, pad_id, max_new_tokens, strategy, temperature, top_k, top_p,
                num_beams, start_len, prefix_len):
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    V = decoder.vocab_size
    for name, value in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
        if value is not None and not (isinstance(value, int) and 0 <= value < V):
            raise ValueError(f"{name} must be a token id in [0, {V}), got {value!r}")
    # the last new token is returned, never fed back, so it needs no position
    needed = prefix_len + start_len + max_new_tokens - 1
    if needed > decoder.max_len:
        raise ValueError(f"{prefix_len + start_len} start positions + max_new_tokens={max_new_tokens} need "
                         f"{needed} positions, the decoder's context is {decoder.max_len}; lower max_new_tokens")
    if strategy != "sample" and (temperature != 1.0 or top_k is not None or top_p is not None):
        raise ValueError(f"temperature, top_k and top_p only apply to strategy='sample', not {strategy!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use strategy='greedy' for the limit 0), got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")
    if strategy == "beam" and (not isinstance(num_beams, int) or num_beams < 1):
        raise ValueError(f"num_beams must be a positive int, got {num_beams!r}")


@torch.no_grad()
def generate(decoder, context=None, *, bos_id=None, eos_id, pad_id: int = 0, max_new_tokens: int,
             strategy: str = "greedy", temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, num_beams: int = 4, length_penalty: float = 1.0,
             generator: torch.Generator | None = None, context_mask=None, prompt_ids=None,
             prefix_embeds=None, batch_size: int | None = None) -> torch.Tensor:
    """Generate token ids with a :class:`~medmm_lite.models.TextDecoder`.

    Args:
        decoder: the model; its forward must accept ``past_key_values`` / ``use_cache``.
        context: (B, N, context_dim) for a cross-attention decoder (e.g. image local features).
        bos_id: the start token fed first (not needed when ``prompt_ids`` is given).
        eos_id: the token that ends a sequence (None: always generate max_new_tokens).
        pad_id: written after a sequence's eos.
        max_new_tokens: the most tokens generated per sequence.
        strategy: ``"greedy"``, ``"sample"`` or ``"beam"``.
        temperature, top_k, top_p, generator: sampling settings; a seeded
            ``torch.Generator`` (on the decoder's device) makes sampling repeat exactly.
        num_beams, length_penalty: beam search settings (0 = total log-probability,
            which favours short reports; 1 = per-token average; > 1 favours longer ones).
        context_mask: (B, N) real context entries (1) vs padding (0).
        prompt_ids: (B, P) start tokens (all rows the same length) instead of ``bos_id``,
            e.g. a question for VQA; generation continues after them.
        prefix_embeds: (B, P, dim) vectors fed before the start tokens (LLaVA's image tokens).
        batch_size: how many sequences when nothing else tells (unconditional generation; default 1).

    Returns:
        LongTensor (B, T) of the new tokens only (not the start tokens), each sequence
        up to and including its eos, then ``pad_id``. T = max_new_tokens, or fewer
        when every sequence ended earlier.
    """
    device = next(decoder.parameters()).device
    if prompt_ids is not None:
        start = prompt_ids.to(device)
    else:
        if bos_id is None:
            raise ValueError("generate needs bos_id (the start token) or prompt_ids")
        B = next((t.shape[0] for t in (context, prefix_embeds) if t is not None), batch_size or 1)
        start = torch.full((B, 1), bos_id, dtype=torch.long, device=device)
    if start.ndim != 2 or start.shape[1] == 0:
        raise ValueError(f"prompt_ids must be (B, P) with P >= 1, got {tuple(start.shape)}")
    for name, t in (("context", context), ("prefix_embeds", prefix_embeds), ("context_mask", context_mask)):
        if t is not None and t.shape[0] != start.shape[0]:
            raise ValueError(f"{name} has batch size {t.shape[0]}, the start tokens {start.shape[0]}")
    prefix_len = 0 if prefix_embeds is None else prefix_embeds.shape[1]
    _check_args(decoder, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, max_new_tokens=max_new_tokens,
                strategy=strategy, temperature=temperature, top_k=top_k, top_p=top_p, num_beams=num_beams,
                start_len=start.shape[1], prefix_len=prefix_len)

    # the start tokens (and prefix, and the context's cross keys/values) go through once
    first = decoder(start, context=context, context_mask=context_mask, use_cache=True, prefix_embeds=prefix_embeds)
    if strategy == "beam":
        return _beam_search(decoder, first, context_mask, eos_id=eos_id, pad_id=pad_id,
                            max_new_tokens=max_new_tokens, num_beams=num_beams, length_penalty=length_penalty)
    return _greedy_or_sample(decoder, first, context_mask, eos_id=eos_id, pad_id=pad_id,
                             max_new_tokens=max_new_tokens, sample=strategy == "sample",
                             temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)


def _greedy_or_sample(decoder, first, context_mask, *, eos_id, pad_id, max_new_tokens, sample,
                      temperature, top_k, top_p, generator):
    logits, past = first.logits[:, -1], first.past_key_values
    B = logits.shape[0]
    finished = torch.zeros(B, dtype=torch.bool, device=logits.device)
    new_tokens = []
    for step in range(max_new_tokens):
        if sample:
            logits = _at_least_float32(logits) / temperature
            if top_k is not None:
                logits = top_k_filter(logits, top_k)
            if top_p is not None:
                logits = top_p_filter(logits, top_p)
            next_token = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)
        else:
            next_token = logits.argmax(dim=-1)
        next_token = next_token.masked_fill(finished, pad_id)   # a finished sequence only pads
        new_tokens.append(next_token)
        if eos_id is not None:
            finished |= next_token == eos_id
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        out = decoder(next_token[:, None], context_mask=context_mask, past_key_values=past, use_cache=True)
        logits, past = out.logits[:, -1], out.past_key_values
    return torch.stack(new_tokens, dim=1)


def _beam_search(decoder, first, context_mask, *, eos_id, pad_id, max_new_tokens, num_beams, length_penalty):
    logits = first.logits[:, -1]
    B, V = logits.shape
    K = num_beams
    device = logits.device
    # every sequence starts as K copies of its start state; only copy 0 is live at first,
    # so the first step does not pick the same token K times
    rows = torch.arange(B, device=device).repeat_interleave(K)
    past = reorder_cache(first.past_key_values, rows)
    if context_mask is not None:
        context_mask = context_mask.to(device).repeat_interleave(K, dim=0)
    log_probs = _at_least_float32(logits).log_softmax(dim=-1)[rows]                       # (B*K, V)
    beam_scores = torch.full((B, K), float("-inf"), dtype=log_probs.dtype, device=device)
    beam_scores[:, 0] = 0.0
    sequences = torch.empty(B * K, 0, dtype=torch.long, device=device)
    finished = [[] for _ in range(B)]   # per sequence: up to K (score, tokens) hypotheses
    done = [False] * B

    def add_hypothesis(b, score, tokens):
        finished[b].append((score, tokens))
        finished[b].sort(key=lambda h: h[0], reverse=True)
        del finished[b][K:]

    def best_possible(sum_logprob, length):
        # the best normalised score a live beam (sum so far, `length` tokens) could still reach;
        # future log-probs only lower the sum, the length can grow to max_new_tokens
        if length_penalty > 0:
            return sum_logprob / max_new_tokens ** length_penalty
        return sum_logprob / (length + 1) ** length_penalty

    for step in range(max_new_tokens):
        length = step + 1                                                      # tokens incl. this one
        candidates = (beam_scores.view(-1, 1) + log_probs).view(B, K * V)
        top_scores, top_index = candidates.topk(min(2 * K, K * V), dim=1)      # sorted, best first
        top_scores, top_index = top_scores.tolist(), top_index.tolist()
        next_scores = [[float("-inf")] * K for _ in range(B)]
        next_tokens = [[pad_id] * K for _ in range(B)]
        parents = [[0] * K for _ in range(B)]
        for b in range(B):
            if done[b]:
                continue
            slot = 0
            for score, index in zip(top_scores[b], top_index[b]):
                if score == float("-inf"):
                    break
                parent, token = divmod(index, V)
                if eos_id is not None and token == eos_id:
                    tokens = torch.cat([sequences[b * K + parent], sequences.new_tensor([token])])
                    add_hypothesis(b, score / length ** length_penalty, tokens)
                else:
                    next_scores[b][slot], next_tokens[b][slot], parents[b][slot] = score, token, parent
                    slot += 1
                    if slot == K:
                        break
            best_live = max(next_scores[b])
            if best_live == float("-inf"):
                done[b] = True
            elif len(finished[b]) == K and finished[b][-1][0] >= best_possible(best_live, length):
                done[b] = True
        next_scores = torch.tensor(next_scores, dtype=log_probs.dtype, device=device)
        next_tokens = torch.tensor(next_tokens, dtype=torch.long, device=device)
        parents = torch.tensor(parents, dtype=torch.long, device=device)
        source = (parents + torch.arange(B, device=device)[:, None] * K).view(-1)
        sequences = torch.cat([sequences[source], next_tokens.view(-1, 1)], dim=1)
        beam_scores = next_scores
        if step == max_new_tokens - 1 or all(done):
            break
        past = reorder_cache(past, source)
        out = decoder(next_tokens.view(-1, 1), context_mask=context_mask, past_key_values=past, use_cache=True)
        log_probs, past = _at_least_float32(out.logits[:, -1]).log_softmax(dim=-1), out.past_key_values

    for b in range(B):
        if done[b]:
            continue
        # out of steps: the live beams end here, unfinished, with their full length
        for k in range(K):
            score = beam_scores[b, k].item()
            if score != float("-inf"):
                add_hypothesis(b, score / sequences.shape[1] ** length_penalty, sequences[b * K + k])
    best = [finished[b][0][1] for b in range(B)]
    width = max(len(t) for t in best)
    result = torch.full((B, width), pad_id, dtype=torch.long, device=device)
    for b, tokens in enumerate(best):
        result[b, :len(tokens)] = tokens
    return result
