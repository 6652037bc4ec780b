"""The library's metrics and diffusion maths against the field's reference implementations.

BLEU against sacrebleu, ROUGE-L against Google's rouge-score, the DDPM noise schedules, the
forward process, DDIM's timesteps and single DDIM updates against diffusers' schedulers. The
reference libraries are [dev] dependencies and are imported plainly: where one is missing these
tests fail (install the [dev] extras), they never skip.
"""
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from medmm_lite.eval import bleu, rouge_l
from medmm_lite.eval.metrics import _BLEU_TOKEN
from medmm_lite.generative import NoiseSchedule, ddim_step, q_sample, sampling_timesteps

# ------------------------------------------------------------------------------------------- text

REFS = ["The heart is normal in size.", "Small left pleural effusion, no pneumothorax.",
        "No pneumothorax is seen.", "Moderate cardiomegaly with mild pulmonary edema.",
        "Lungs are clear. No acute cardiopulmonary process."]
HYPS = ["The heart size is normal.", "Small left pleural effusion. No pneumothorax.",
        "No pneumothorax is seen here.", "Mild cardiomegaly and pulmonary edema.",
        "The lungs are clear, no acute process."]


def _as_sacrebleu_input(text: str) -> str:
    """The library's tokens (lowercased words and punctuation marks), joined by spaces."""
    return " ".join(_BLEU_TOKEN.findall(text.lower()))


@pytest.mark.parametrize("max_n", [1, 2, 3, 4])
def test_bleu_matches_sacrebleu(max_n):
    reference = BLEU(max_ngram_order=max_n, smooth_method="none", tokenize="none", force=True,
                     effective_order=False)
    expected = reference.corpus_score([_as_sacrebleu_input(h) for h in HYPS],
                                      [[_as_sacrebleu_input(r) for r in REFS]]).score / 100
    assert expected > 0
    assert bleu(REFS, HYPS, max_n=max_n) == pytest.approx(expected, rel=1e-9)


def test_bleu_matches_sacrebleu_with_several_references_and_a_brevity_penalty():
    refs = [[r, r.replace("normal", "unremarkable")] for r in REFS]
    hyps = [h.split(",")[0] for h in HYPS]              # short hypotheses: the brevity penalty applies
    reference = BLEU(max_ngram_order=2, smooth_method="none", tokenize="none", force=True, effective_order=False)
    streams = [[_as_sacrebleu_input(r[k]) for r in refs] for k in range(2)]
    result = reference.corpus_score([_as_sacrebleu_input(h) for h in hyps], streams)
    assert result.bp < 1
    assert bleu(refs, hyps, max_n=2) == pytest.approx(result.score / 100, rel=1e-9)


def test_bleu_zero_without_a_matching_ngram_as_sacrebleu():
    reference = BLEU(smooth_method="none", tokenize="none", force=True, effective_order=False)
    assert reference.corpus_score(["cardiomegaly"], [["no effusion"]]).score == 0.0
    assert bleu(["no effusion"], ["cardiomegaly"]) == 0.0


def test_rouge_l_matches_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    per_pair = [scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(REFS, HYPS)]
    for r, h, expected in zip(REFS, HYPS, per_pair):
        assert rouge_l([r], [h]) == pytest.approx(expected, rel=1e-12)
    assert rouge_l(REFS, HYPS) == pytest.approx(float(np.mean(per_pair)), rel=1e-12)
    assert rouge_l(["no effusion"], ["cardiomegaly"]) == scorer.score("no effusion", "cardiomegaly")["rougeL"].fmeasure


def test_rouge_l_best_of_several_references_matches_score_multi():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    targets = [REFS[0], "The heart size is within normal limits.", "Normal heart."]
    expected = scorer.score_multi(targets, HYPS[0])["rougeL"].fmeasure
    assert rouge_l([targets], [HYPS[0]]) == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------------- diffusion

def _diffusers_betas(schedule: NoiseSchedule, cls=DDPMScheduler, **kwargs):
    T = schedule.num_steps
    if schedule.kind == "linear":
        scale = 1000.0 / T                                   # the library's rescaling for T != 1000
        return cls(num_train_timesteps=T, beta_schedule="linear", beta_start=scale * 1e-4, beta_end=scale * 0.02,
                   **kwargs)
    return cls(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", **kwargs)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("T", [1000, 200])
def test_schedules_match_diffusers(kind, T):
    ours = NoiseSchedule(T, kind)
    for cls in (DDPMScheduler, DDIMScheduler):
        theirs = _diffusers_betas(ours, cls)
        # diffusers keeps float32; ours is float64
        torch.testing.assert_close(ours.betas.float(), theirs.betas, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ours.alphas_cumprod.float(), theirs.alphas_cumprod, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_forward_process_matches_ddpm_add_noise(kind):
    ours = NoiseSchedule(1000, kind)
    theirs = _diffusers_betas(ours)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1, torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([0, 250, 500, 999])
    torch.testing.assert_close(q_sample(ours, x0, t, noise), theirs.add_noise(x0, noise, t), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("steps", [10, 25, 50])
def test_ddim_timesteps_match_linspace_spacing(steps):
    theirs = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="linspace")
    theirs.set_timesteps(steps)
    assert sampling_timesteps(1000, steps) == theirs.timesteps.tolist()


def _ddim(kind, clip):
    ours = NoiseSchedule(1000, kind)
    theirs = _diffusers_betas(ours, DDIMScheduler, clip_sample=clip, set_alpha_to_one=True, prediction_type="epsilon")
    theirs.set_timesteps(50)                                 # diffusers steps from t to t - 1000 // 50
    return ours, theirs


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("t", [980, 500, 20])
def test_one_deterministic_ddim_step_matches_diffusers(kind, clip, t):
    ours, theirs = _ddim(kind, clip)
    g = torch.Generator().manual_seed(t)
    x_t, eps = torch.randn(2, 1, 8, 8, generator=g) * 1.5, torch.randn(2, 1, 8, 8, generator=g)
    expected = theirs.step(eps, t, x_t, eta=0.0, use_clipped_model_output=clip)
    x_prev, x0 = ddim_step(ours, x_t, t, t - 20, eps, eta=0.0, clip_denoised=clip)
    torch.testing.assert_close(x0, expected.pred_original_sample, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x_prev, expected.prev_sample, rtol=1e-4, atol=1e-4)


def test_the_last_ddim_step_reaches_abar_one_as_set_alpha_to_one():
    ours, theirs = _ddim("cosine", False)
    g = torch.Generator().manual_seed(1)
    x_t, eps = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    expected = theirs.step(eps, 0, x_t, eta=0.0)             # prev step < 0: final_alpha_cumprod = 1
    x_prev, x0 = ddim_step(ours, x_t, 0, None, eps, eta=0.0, clip_denoised=False)
    torch.testing.assert_close(x_prev, expected.prev_sample, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x_prev, x0)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_one_stochastic_ddim_step_matches_diffusers(eta):
    ours, theirs = _ddim("linear", True)
    g = torch.Generator().manual_seed(2)
    x_t, eps = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    t, t_prev = 500, 480
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7), dtype=x_t.dtype)
    expected = theirs.step(eps, t, x_t, eta=eta, use_clipped_model_output=True, variance_noise=z)
    x_prev, _ = ddim_step(ours, x_t, t, t_prev, eps, eta=eta, clip_denoised=True,
                          generator=torch.Generator().manual_seed(7))   # the same z
    torch.testing.assert_close(x_prev, expected.prev_sample, rtol=1e-4, atol=1e-4)
    sigma = eta * math.sqrt((1 - ours.alphas_cumprod[t_prev]) / (1 - ours.alphas_cumprod[t])
                            * (1 - ours.alphas_cumprod[t] / ours.alphas_cumprod[t_prev]))
    assert float(theirs._get_variance(t, t_prev)) ** 0.5 * eta == pytest.approx(float(sigma), rel=1e-4)
