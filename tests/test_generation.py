"""Tests of medmm_lite.models.generation: the KV cache changes nothing, beam search is
exact when wide enough, sampling filters match transformers', sampling repeats under
a seed, and a batch decodes like its rows one by one."""
from __future__ import annotations

import itertools

import pytest
import torch

from medmm_lite.models import TextDecoder, generate, top_k_filter, top_p_filter

torch.set_num_threads(1)
BOS, EOS, PAD = 1, 2, 0


def peaky_decoder(vocab=5, dim=16, depth=2, heads=2, max_len=12, cross_attention=True, context_dim=8, seed=0):
    """A random float64 decoder whose next-token distributions are confident and
    depend on the context (the default init's 0.02 weights give near-uniform ones),
    so the best sequence is clear and ties do not happen."""
    torch.manual_seed(seed)
    dec = TextDecoder(vocab, dim, depth, heads, max_len, cross_attention=cross_attention, tie_weights=False,
                      context_dim=context_dim if cross_attention else None).double().eval()
    with torch.no_grad():
        for m in dec.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0.0, m.in_features ** -0.5)
            elif isinstance(m, torch.nn.Embedding):
                m.weight.normal_(0.0, 1.0)
        dec.lm_head.weight.mul_(2.0)
        # a random offset per token (LayerNorm's output sums to 0 over channels, so with
        # bias 1 each token's logit moves by the sum of its output row)
        dec.norm.bias.fill_(1.0)
        dec.lm_head.weight.sub_(dec.lm_head.weight.mean(1, keepdim=True))
    return dec


def greedy_without_cache(dec, context, context_mask, max_new_tokens, prefix_embeds=None, start=None):
    """The slow reference: recompute the whole sequence at every step."""
    B = context.shape[0] if context is not None else (start.shape[0] if start is not None else prefix_embeds.shape[0])
    ids = start if start is not None else torch.full((B, 1), BOS)
    finished = torch.zeros(B, dtype=torch.bool)
    new = []
    for _ in range(max_new_tokens):
        logits = dec(ids, context=context, context_mask=context_mask, prefix_embeds=prefix_embeds).logits[:, -1]
        token = logits.argmax(-1).masked_fill(finished, PAD)
        new.append(token)
        finished |= token == EOS
        ids = torch.cat([ids, token[:, None]], dim=1)
        if finished.all():
            break
    return torch.stack(new, dim=1)


def test_greedy_with_cache_equals_recomputing_everything():
    dec = peaky_decoder(vocab=20, dim=32, heads=4, max_len=16)
    context = torch.randn(4, 6, 8, dtype=torch.float64)
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[1, 3:] = 0
    fast = generate(dec, context, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_new_tokens=12, context_mask=mask)
    slow = greedy_without_cache(dec, context, mask, 12)
    assert torch.equal(fast, slow)
    assert torch.equal(dec.generate(context, bos_id=BOS, eos_id=EOS, max_new_tokens=12, context_mask=mask), fast)


def test_greedy_with_prompt_and_prefix_equals_recomputing_everything():
    dec = peaky_decoder(vocab=20, dim=32, heads=4, max_len=16, cross_attention=False)
    prefix = torch.randn(3, 3, 32, dtype=torch.float64)
    prompt = torch.randint(3, 20, (3, 4))
    fast = generate(dec, bos_id=None, eos_id=EOS, max_new_tokens=8, prompt_ids=prompt, prefix_embeds=prefix)
    slow = greedy_without_cache(dec, None, None, 8, prefix_embeds=prefix, start=prompt)
    assert torch.equal(fast, slow)


def test_output_format_pads_after_eos():
    dec = peaky_decoder(vocab=6, seed=3)
    context = torch.randn(16, 4, 8, dtype=torch.float64)
    out = generate(dec, context, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_new_tokens=10)
    assert out.dtype == torch.long and out.shape[0] == 16 and out.shape[1] <= 10
    for row in out.tolist():
        if EOS in row:
            assert all(t == PAD for t in row[row.index(EOS) + 1:])
    assert (out == EOS).any(), "the test model should end some sequences"
    no_stop = generate(dec, context, bos_id=BOS, eos_id=None, max_new_tokens=10)
    assert no_stop.shape == (16, 10)


def exhaustive_best(dec, context, max_len, length_penalty):
    """The best sequence by brute force: every sequence that ends with EOS within
    max_len tokens, or reaches max_len without one, scored sum(log p) / len**lp."""
    V = dec.vocab_size
    full = torch.tensor(list(itertools.product(range(V), repeat=max_len)))          # (V^T, T)
    inputs = torch.cat([torch.full((len(full), 1), BOS), full[:, :-1]], dim=1)
    with torch.no_grad():
        logp = dec(inputs, context=context.expand(len(full), -1, -1)).logits.log_softmax(-1)
    token_logp = logp.gather(2, full[..., None])[..., 0].cumsum(1)                   # (V^T, T)
    best, best_score = None, float("-inf")
    for row, seq in enumerate(full.tolist()):
        for length in range(1, max_len + 1):
            prefix = seq[:length]
            if EOS in prefix[:-1]:
                break
            if length < max_len and prefix[-1] != EOS:
                continue
            score = token_logp[row, length - 1].item() / length ** length_penalty
            if score > best_score:
                best, best_score = prefix, score
    return best


def test_beam_search_with_every_beam_is_exhaustive_search():
    """With num_beams = V**T nothing is ever pruned, so beam search must return the
    best of all sequences, for any length penalty."""
    V, T = 5, 3
    dec = peaky_decoder(vocab=V)
    answers = {}
    for length_penalty in (0.0, 1.0, 2.0):
        for seed in range(4):
            context = torch.randn(1, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
            beam = generate(dec, context, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_new_tokens=T, strategy="beam",
                            num_beams=V ** T, length_penalty=length_penalty)[0].tolist()
            expected = exhaustive_best(dec, context, T, length_penalty)
            assert beam[:len(expected)] == expected and all(t == PAD for t in beam[len(expected):])
            answers[length_penalty, seed] = expected
    # the cases cover early stops, unfinished sequences, and a length penalty that changes the answer
    assert any(a[-1] == EOS and len(a) < T for a in answers.values())
    assert any(a[-1] != EOS for a in answers.values())
    assert any(answers[0.0, s] != answers[2.0, s] for s in range(4))


def reference_beam_search(dec, context, num_beams, max_new_tokens, length_penalty):
    """Textbook beam search for one context: no cache, no batching, no early stop;
    every step expands every beam, the best 2K candidates are scanned in order, an EOS
    candidate becomes a finished hypothesis, the first K others the next beams."""
    V, beams, finished = dec.vocab_size, [([], 0.0)], []
    for _ in range(max_new_tokens):
        candidates = []
        for tokens, total in beams:
            with torch.no_grad():
                logp = dec(torch.tensor([[BOS] + tokens]), context=context).logits[0, -1].log_softmax(-1)
            candidates += [(total + logp[v].item(), tokens + [v]) for v in range(V)]
        candidates.sort(key=lambda c: c[0], reverse=True)
        beams = []
        for total, tokens in candidates[:2 * num_beams]:
            if tokens[-1] == EOS:
                finished.append((total / len(tokens) ** length_penalty, tokens))
            else:
                beams.append((tokens, total))
                if len(beams) == num_beams:
                    break
    finished += [(total / len(tokens) ** length_penalty, tokens) for tokens, total in beams]
    return max(finished, key=lambda f: f[0])[1]


@pytest.mark.parametrize("length_penalty, vocab, max_new_tokens, seed", [(0.0, 6, 7, 5), (1.0, 5, 8, 4), (2.0, 5, 8, 4)])
def test_beam_search_early_stop_loses_nothing(length_penalty, vocab, max_new_tokens, seed):
    """With few beams, the search stops once no live beam can still win; the answer
    must equal that of the textbook search that always runs to max_new_tokens. (These
    models and lengths are ones where a looser stopping rule, e.g. dividing by the
    current length instead of the longest possible one, does change some answers.)"""
    dec = peaky_decoder(vocab=vocab, seed=seed)
    contexts = torch.randn(40, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = generate(dec, contexts, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_new_tokens=max_new_tokens,
                    strategy="beam", num_beams=2, length_penalty=length_penalty)
    for i in range(len(contexts)):
        expected = reference_beam_search(dec, contexts[i:i + 1], 2, max_new_tokens, length_penalty)
        assert ours[i, :len(expected)].tolist() == expected and (ours[i, len(expected):] == PAD).all()


def test_beam_search_with_one_beam_is_greedy():
    dec = peaky_decoder(vocab=12, seed=1)
    context = torch.randn(5, 4, 8, dtype=torch.float64)
    greedy = generate(dec, context, bos_id=BOS, eos_id=EOS, max_new_tokens=8)
    beam = generate(dec, context, bos_id=BOS, eos_id=EOS, max_new_tokens=8, strategy="beam", num_beams=1,
                    length_penalty=0.0)
    assert torch.equal(beam[:, :greedy.shape[1]], greedy) and (beam[:, greedy.shape[1]:] == PAD).all()


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_batched_generation_equals_one_by_one(strategy):
    dec = peaky_decoder(vocab=12, seed=2)
    lengths = [5, 2, 4]
    context = torch.randn(3, 5, 8, dtype=torch.float64)
    mask = (torch.arange(5)[None] < torch.tensor(lengths)[:, None]).long()
    kwargs = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD, max_new_tokens=9, strategy=strategy, num_beams=3)
    batched = generate(dec, context, context_mask=mask, **kwargs)
    for i, n in enumerate(lengths):
        alone = generate(dec, context[i:i + 1, :n], **kwargs)[0]
        width = len(alone)
        assert torch.equal(batched[i, :width], alone) and (batched[i, width:] == PAD).all()


def test_top_k_one_sampling_is_greedy():
    dec = peaky_decoder(vocab=20, dim=32, heads=4, max_len=16)
    context = torch.randn(6, 4, 8, dtype=torch.float64)
    greedy = generate(dec, context, bos_id=BOS, eos_id=EOS, max_new_tokens=10)
    sampled = generate(dec, context, bos_id=BOS, eos_id=EOS, max_new_tokens=10, strategy="sample", top_k=1,
                       temperature=0.7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, greedy)


def test_sampling_repeats_under_a_seed():
    dec = peaky_decoder(vocab=20, dim=32, heads=4, max_len=16)
    with torch.no_grad():
        for p in dec.parameters():
            p.mul_(0.3)   # a flatter model, so that sampling has choices to make
    context = torch.randn(8, 4, 8, dtype=torch.float64)
    kwargs = dict(bos_id=BOS, eos_id=EOS, max_new_tokens=10, strategy="sample", top_p=0.9)
    a = generate(dec, context, generator=torch.Generator().manual_seed(7), **kwargs)
    b = generate(dec, context, generator=torch.Generator().manual_seed(7), **kwargs)
    c = generate(dec, context, generator=torch.Generator().manual_seed(8), **kwargs)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampling_follows_the_filtered_distribution():
    """4000 first tokens drawn with temperature 2 and top_k 4 match softmax(top4(logits / 2))."""
    dec = peaky_decoder(vocab=8, dim=16, cross_attention=False, seed=4)
    n = 4000
    out = generate(dec, bos_id=BOS, eos_id=None, max_new_tokens=1, strategy="sample", temperature=2.0, top_k=4,
                   generator=torch.Generator().manual_seed(0), batch_size=n)
    with torch.no_grad():
        logits = dec(torch.tensor([[BOS]])).logits[0, -1]
    expected = top_k_filter(logits / 2.0, 4).softmax(-1)
    observed = torch.bincount(out[:, 0], minlength=8).double() / n
    assert (observed[expected == 0] == 0).all()
    assert (observed - expected).abs().max() < 0.04   # ~5 standard errors at n=4000


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.125, 0.5, 0.125, 0.25]], dtype=torch.float64)  # sorted: 0.5, 0.25, 0.125, 0.125
    logits = probs.log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()  # noqa: E731
    assert kept(0.3) == [False, True, False, False]       # 0.5 alone reaches 0.3
    assert kept(0.51) == [False, True, False, True]       # needs 0.5 + 0.25
    assert kept(0.74) == [False, True, False, True]
    assert kept(0.76) == [True, True, False, True] or kept(0.76) == [False, True, True, True]
    assert sum(kept(0.76)) == 3
    assert kept(1.0) == [True, True, True, True]
    # a set that reaches p exactly is enough (">= p"): make p the exact mass of the top two
    top_two = logits.softmax(-1).sort(descending=True).values.cumsum(-1)[0, 1].item()
    assert kept(top_two) == [False, True, False, True]
    # kept logits are unchanged
    torch.testing.assert_close(top_p_filter(logits, 0.6)[0, [1, 3]], logits[0, [1, 3]])


def test_top_k_and_top_p_match_transformers_warpers():
    processors = pytest.importorskip("transformers.generation.logits_process")
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    for k in (1, 5, 50):
        theirs = processors.TopKLogitsWarper(k)(None, logits.clone())
        assert torch.equal(top_k_filter(logits, k), theirs)
    for p in (0.1, 0.5, 0.9, 0.99):
        theirs = processors.TopPLogitsWarper(p)(None, logits.clone())
        assert torch.equal(torch.isfinite(top_p_filter(logits, p)), torch.isfinite(theirs))


def test_generate_bad_arguments():
    dec = peaky_decoder(vocab=6, max_len=8)
    context = torch.randn(2, 3, 8, dtype=torch.float64)
    common = dict(bos_id=BOS, eos_id=EOS)
    with pytest.raises(ValueError, match="strategy must be one of"):
        generate(dec, context, max_new_tokens=3, strategy="nucleus", **common)
    with pytest.raises(ValueError, match="the decoder's context is 8; lower max_new_tokens"):
        generate(dec, context, max_new_tokens=9, **common)
    with pytest.raises(ValueError, match="only apply to strategy='sample'"):
        generate(dec, context, max_new_tokens=3, top_k=5, **common)
    with pytest.raises(ValueError, match="top_p must be in"):
        generate(dec, context, max_new_tokens=3, strategy="sample", top_p=1.5, **common)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        generate(dec, context, max_new_tokens=3, strategy="sample", temperature=0.0, **common)
    with pytest.raises(ValueError, match="needs bos_id"):
        generate(dec, context, eos_id=EOS, max_new_tokens=3)
    with pytest.raises(ValueError, match="eos_id must be a token id"):
        generate(dec, context, bos_id=BOS, eos_id=6, max_new_tokens=3)
    with pytest.raises(ValueError, match="num_beams must be a positive int"):
        generate(dec, context, max_new_tokens=3, strategy="beam", num_beams=0, **common)
