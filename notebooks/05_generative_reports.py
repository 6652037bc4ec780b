# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: py:percent,ipynb
#     notebook_metadata_filter: -all
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 Generative pretraining: writing the report
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medmm-course/medmm-course/blob/main/notebooks/05_generative_reports.ipynb)
#
# Lessons 02 and 03 learned from reports by *matching* them to images (the review's
# **contrastive** family); lesson 04 by *filling in* hidden parts (**self-prediction**). The
# review's **generative** family learns by *producing* one modality from the other. With a report
# beside every image, the natural task is image -> report: a model that writes the radiologist's
# findings from the pixels. Its encoder must learn to see whatever the report mentions, and the
# trained model is also a product of its own (a draft report), which is why generative studies
# are scored on the text they write, and why that scoring needs care.
#
# You will: turn reports into decoder targets, build the teacher-forcing loss by hand, train a
# decoder to write from lesson 02's frozen CLIP encoder, write reports with greedy, sampling and beam decoding, score them
# with BLEU, ROUGE-L and clinical F1 against trivial baselines, find where lexical and clinical
# metrics disagree, count hallucinated findings, compare with the same decoder on an encoder
# trained from scratch, and measure what writing reports taught that encoder (a linear probe
# against lesson 01's supervised baseline).

# %% tags=["parameters"]
PROFILE = "auto"     # "smoke" (CI), "cpu" (laptop), "gpu", or "auto"
SEED = 0
DATASET = "synthcxr"

# %%
try:
    import medmm_lite
except ImportError:  # Colab: install the course's library once; Colab's torch is kept.
    import subprocess
    import sys
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "medmm-lite @ git+https://github.com/medmm-course/medmm-course@v0.1.0"])
    import medmm_lite

# %%
import textwrap
import time
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import medmm_lite
from medmm_lite import data as D
from medmm_lite.adapt import probe_curve, supervised_baseline
from medmm_lite.eval import bootstrap_ci, hallucinations, label_report, labels_matrix, report_metrics, rouge_l
from medmm_lite.models import count_parameters
from medmm_lite.pretrain import caption as C
from medmm_lite.pretrain.clip import pretrain_clip, recalibrate_batchnorm
from medmm_lite.pretrain.m3ae import derangement

P = medmm_lite.profile(PROFILE)
medmm_lite.seed_everything(SEED)
print(medmm_lite.profile_summary(P))

# %% [markdown]
# ## 1. What the model writes
#
# The same data as every lesson: the cohort, patient splits, a tokenizer trained on the training
# reports. The model writes the **FINDINGS** section, as most report-generation studies on IU
# X-ray and MIMIC-CXR do: it states every finding, present or absent, and the IMPRESSION mostly
# repeats the present ones. A decoder reads `[BOS] text [EOS]`: `[BOS]` gives the first position
# something to predict from, `[EOS]` teaches the model when to stop.

# %%
data = D.prepare_data(P, seed=SEED, dataset=DATASET)
cohort, splits, tok = data.cohort, data.splits, data.tokenizer
train_idx, val_idx, test_idx = (np.asarray(splits[k]) for k in ("train", "val", "test"))
TEXT = "findings"
texts = C.caption_texts(data, TEXT)
ids, mask = C.encode_captions(data, TEXT)
example = int(test_idx[0])
print(cohort.reports[example])
print("\nthe model writes:", texts[example])
print("\n", tok.convert_ids_to_tokens(ids[example][: int(mask[example].sum())].tolist()))
n_tokens = np.array([len(t) for t in tok(texts, add_special_tokens=False)["input_ids"]])
print(f"\ntokens per text: median {np.median(n_tokens):.0f}, longest {n_tokens.max()}; "
      f"{np.mean(n_tokens > ids.shape[1] - 2):.1%} cut at max_text_len = {ids.shape[1]}")
assert ids[example, 0] == tok.bos_token_id and ids[example, int(mask[example].sum()) - 1] == tok.eos_token_id

# %% [markdown]
# ## 2. One token at a time
#
# A report is a sequence $w_1, \dots, w_T$ (the last one `[EOS]`). Any distribution over
# sequences factorises left to right, so the model only ever predicts the *next* token, given the
# image $x$ and the tokens so far:
#
# $$p(w_1, \dots, w_T \mid x) = \prod_{t=1}^{T} p(w_t \mid w_{<t}, x), \qquad
# \mathcal{L} = -\frac{1}{T} \sum_{t=1}^{T} \log p(w_t \mid w_{<t}, x).$$
#
# **Teacher forcing**: in training, the decoder reads the *true* previous tokens, not its own
# guesses. Then all $T$ terms come out of one forward pass, because a causal mask keeps position
# $t$ from seeing the tokens it must predict. At test time there are no true tokens: the model
# feeds its own output back in (section 6).
#
# ## 3. The model
#
# An image encoder turns the image into a grid of region features; a linear map brings them to the
# decoder's width and a learned position per region is added (the *memory*). Every block of a
# causal text decoder (lesson 01's `TextDecoder`) has a cross-attention layer over the memory, so
# each word can look at the regions it needs ("left lower lobe").
#
# The image encoder is **lesson 02's CLIP ViT, frozen**: the way LLaVA reads images with a CLIP
# ViT and most report generators start from an encoder pretrained elsewhere. CLIP has already
# learned which parts of a radiograph its report talks about; the captioner only learns to turn
# that into words (the projection, the region positions and the decoder train; the ViT does not).
# Section 11 trains the same decoder on an encoder from scratch, the control that shows what the
# pretrained start is worth. `pretrain_clip` loads lesson 02's model from the cache, or trains it.
# %%
clip_model, _ = pretrain_clip(P, data, seed=SEED)
untrained = C.build_caption(P, len(tok), seed=SEED, encoder="clip",      # the initial weights of the
                            pretrained=clip_model.image_encoder).eval()   # model trained below
n_enc, n_dec = count_parameters(untrained.image_encoder), count_parameters(untrained.decoder)
print(f"image encoder {n_enc:,} parameters (frozen), projection and positions "
      f"{count_parameters(untrained) - n_enc - n_dec:,}, decoder {n_dec:,}; "
      f"{count_parameters(untrained, trainable_only=True):,} trained")
batch = {"image": cohort.images[train_idx[:8]], "input_ids": ids[train_idx[:8]],
         "attention_mask": mask[train_idx[:8]]}
with torch.no_grad():
    memory = untrained.encode_image(batch["image"])
    logits = untrained(batch["image"], batch["input_ids"])
grid = untrained.image_encoder.grid_size
print("memory", tuple(memory.shape), f"= (images, the {grid[0]}x{grid[1]} regions, decoder width)")
print("logits", tuple(logits.shape), "= (texts, positions, vocabulary)")
assert memory.shape == (8, grid[0] * grid[1], P.dim) and logits.shape == (8, ids.shape[1], len(tok))

# %% [markdown]
# Causal means: changing a later token changes nothing before it.

# %%
changed = batch["input_ids"].clone()
changed[:, 12] = (changed[:, 12] + 7) % len(tok)
with torch.no_grad():
    after = untrained(batch["image"], changed)
torch.testing.assert_close(logits[:, :12], after[:, :12])
assert not torch.allclose(logits[:, 12:], after[:, 12:])
print("positions 0-11 unchanged by a new token at position 12; positions 12 onwards changed")

# %% [markdown]
# ## 4. Teacher forcing by hand
#
# Position $t$ predicts token $t+1$: the logits lose their last position, the targets their first
# (`[BOS]` is never a target). Padding targets are set to -100, which `F.cross_entropy` ignores,
# so a short report and a long one each count by their real tokens.

# %%
targets = batch["input_ids"][:, 1:].clone()
targets[batch["attention_mask"][:, 1:] == 0] = -100             # padding: no loss
V = logits.shape[-1]
by_hand = F.cross_entropy(logits[:, :-1].reshape(-1, V), targets.reshape(-1), ignore_index=-100)

# the same, without F.cross_entropy: minus the log-probability of each true next token
log_p = logits[:, :-1].log_softmax(dim=-1)
real = targets != -100
nll = -log_p.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
torch.testing.assert_close(nll[real].mean(), by_hand)

library, logs = C.caption_step(untrained, batch)
torch.testing.assert_close(library, by_hand, rtol=1e-5, atol=1e-5)
print(f"untrained: {by_hand.item():.3f} nats per token; a uniform guess over the vocabulary: "
      f"ln {V} = {np.log(V):.3f}")

# %% [markdown]
# `caption_step` is this loss, plus the fraction of next tokens the model gets right
# (`token_accuracy`); it trims the all-padding columns first, which changes nothing.
#
# ## 5. Training
#
# `pretrain_caption` trains the model with `fit` on the training split and caches it: batches of
# similar-length reports (less padding to pay for), light augmentation without flips (a flip would
# swap the side a report names), and three times the profile's learning rate (measured: at the
# profile's own rate the run ends while the decoder is still learning the language, before it
# starts to use the image). Validation loss is measured ten times along the way.
# `encoder="clip"` builds the model above from lesson 02's CLIP and keeps the ViT frozen. A frozen
# encoder needs no backward pass, so its steps are cheaper than those of a model that trains its
# encoder too: this one gets half as many steps again as the profile's, and section 11 prints
# its training time beside the control's, which trains the whole model for the profile's steps.

# %%
CAPTION_STEPS = 3 * P.steps // 2
model, info = C.pretrain_caption(P, data, seed=SEED, text=TEXT, dataset=DATASET, encoder="clip", steps=CAPTION_STEPS)
history = info["history"]
device = next(model.parameters()).device
print(f"{len(history)} steps, {history.seconds:.0f} s of training", "(loaded from the cache)" if info["cached"] else "")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
window = max(1, len(history.loss) // 20)
smooth = lambda x: np.convolve(x, np.ones(window) / window, mode="valid")   # noqa: E731
axes[0].plot(history.steps[window - 1:], smooth(history.loss), label="train")
axes[0].plot(*history.eval_curve("val_loss"), "o-", label="validation")
axes[0].set_yscale("log")
axes[0].set_ylabel("nats per token")
axes[1].plot(history.steps[window - 1:], smooth(history.metrics["token_accuracy"]))
axes[1].set_ylabel("next-token accuracy (train)")
for ax in axes:
    ax.set_xlabel("step")
axes[0].legend()
fig.tight_layout()

# %% [markdown]
# The loss falls fast: most tokens of a report are predictable from the tokens before them
# ("no pleural ..." -> "effusion"). That is the decoder learning the *language* of the reports,
# which it could do without ever looking at the image. Where the validation curve flattens while
# the training curve keeps falling, the model has started to memorise its training reports.
#
# Does it look at the image? Score the test reports with their own images, and with the images of
# other studies (each test study paired with another one):

# %%
test_images = cohort.images[test_idx]
test_ids, test_mask = ids[test_idx], mask[test_idx]
shuffle = derangement(len(test_idx), SEED).numpy()          # every study paired with another one
loss_untrained = C.caption_loss(untrained.to(device), test_images, test_ids, test_mask)
loss_test = C.caption_loss(model, test_images, test_ids, test_mask)
loss_shuffled = C.caption_loss(model, test_images[shuffle], test_ids, test_mask)
print(f"test loss: untrained {loss_untrained:.3f}, trained {loss_test:.3f} nats per token; "
      f"with another study's image {loss_shuffled:.3f}")
medmm_lite.record("caption_loss_ratio", loss_test / loss_untrained)
medmm_lite.record("caption_image_loss_ratio", loss_test / loss_shuffled)
assert loss_test < 0.5 * loss_untrained

# %% [markdown]
# With another study's image the decoder has only the language of the reports to go on; the gap
# to the loss with the right image is what it reads from the image. On which words? The image's
# help per word, as the loss with a shuffled image minus the loss with the right one, averaged
# over every time the word is a target:

# %%
@torch.no_grad()
def token_losses(m, images, batch_size=256):
    """The loss of every target token of the test texts (N, L-1), 0 at padding."""
    out = []
    for s in range(0, len(images), batch_size):
        logits = m(images[s:s + batch_size].to(device), test_ids[s:s + batch_size].to(device))[:, :-1]
        t = C.shift_targets(test_ids[s:s + batch_size], test_mask[s:s + batch_size]).to(device)
        out.append(F.cross_entropy(logits.float().transpose(1, 2), t, ignore_index=-100, reduction="none").cpu())
    return torch.cat(out)


targets_test = C.shift_targets(test_ids, test_mask)
gain = token_losses(model, test_images[shuffle]) - token_losses(model, test_images)
real = targets_test != -100
per_token = Counter()
counts = Counter(targets_test[real].tolist())
for t, g in zip(targets_test[real].tolist(), gain[real].tolist()):
    per_token[t] += g
min_count = max(5, len(test_idx) // 20)
ranked = sorted((per_token[t] / n, t) for t, n in counts.items() if n >= min_count)
top = ranked[::-1][:12]
assert abs(gain[real].mean().item() - (loss_shuffled - loss_test)) < 1e-3
fig, ax = plt.subplots(figsize=(10, 2.6))
ax.bar([tok.convert_ids_to_tokens(t) for _, t in top], [g for g, _ in top])
ax.set_ylabel("nats saved by the image")
ax.set_title(f"words the image helps most (each a target at least {min_count} times in the test reports)", fontsize=9)
plt.setp(ax.get_xticklabels(), rotation=30, fontsize=8)
fig.tight_layout()

# %% [markdown]
# Read which words top the chart. If they are finding, side and size words, the decoder uses the
# image where a radiologist would; words that every report shares ("no", "is", "normal") follow
# from the text and leave the image nothing to add. Each bar averages every time the word is a
# target, so a word seen only a few times (the chart keeps those seen at least the number in its
# title) moves most by luck.
#
# ## 6. Decoding: three ways to write
#
# Now without the true report. The decoder starts from `[BOS]`, picks a token, feeds it back, and
# stops at `[EOS]`. Greedy decoding by hand, one full forward pass per new token:

# %%
@torch.no_grad()
def greedy_by_hand(m, image, max_new_tokens=25):
    tokens = [tok.bos_token_id]
    memory = m.encode_image(image[None].to(device))
    for _ in range(max_new_tokens):
        next_token = int(m.decoder(torch.tensor([tokens], device=device), context=memory).logits[0, -1].argmax())
        if next_token == tok.eos_token_id:
            break
        tokens.append(next_token)
    return tok.decode(tokens[1:])


mine = greedy_by_hand(model, test_images[0])
library = C.generate_reports(model, test_images[:1], tok, "greedy", max_new_tokens=25)[0]
print(mine)
assert mine == library

# %% [markdown]
# The library's `generate` does the same with a **KV cache** (each step feeds only the new token;
# the keys and values of earlier positions, and of the image memory, are kept), and two other
# strategies:
#
# * **greedy**: the most likely token at each step. Fast and deterministic, but a locally likely
#   start ("no ...") can commit it to a report that is unlikely as a whole.
# * **sampling**: draw each token from the model's distribution; temperature $T$ divides the
#   logits (below 1 sharpens), top-$p$ keeps the smallest set of tokens holding probability $p$.
#   Varied reports, and every draw a different one.
# * **beam search**: keep the $k$ most likely partial reports at each step, return the most likely
#   finished one (log-probability divided by length). Closer to the most likely *whole* report.

# %%
DECODING = {"greedy": dict(strategy="greedy"),
            "sample": dict(strategy="sample", temperature=0.7, top_p=0.9),
            "beam": dict(strategy="beam", num_beams=4)}
references = [texts[i] for i in test_idx]
generated = {}
for name, options in DECODING.items():
    started = time.perf_counter()
    generated[name] = C.generate_reports(model, test_images, tok, seed=SEED, **options)
    seconds = time.perf_counter() - started
    words = np.mean([len(g.split()) for g in generated[name]])
    print(f"{name:6s} {seconds:5.1f} s for {len(test_idx)} reports: {len(set(generated[name])):4d} different "
          f"reports, {words:4.1f} words on average (true reports: {np.mean([len(r.split()) for r in references]):.1f})")
assert generated["sample"] == C.generate_reports(model, test_images, tok, seed=SEED, **DECODING["sample"])
medmm_lite.record("distinct_reports_greedy_frac", len(set(generated["greedy"])) / len(test_idx))

# %%
def wrap(text, width=110, indent="    "):
    return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent)


has_finding = cohort.labels[test_idx][:, :len(D.PATHOLOGIES)].sum(1).numpy()
shown = [int(np.argmax(has_finding)), int(np.flatnonzero(has_finding == 1)[0]),   # the sickest, one finding,
         int(np.flatnonzero(has_finding == 0)[0])]                                   # and a normal study
for k in shown:
    present = [f for f, y in zip(D.FINDINGS, cohort.labels[test_idx[k]]) if y]
    print(f"test study {test_idx[k]}: labels {present}")
    print(wrap("TRUE:   " + references[k]))
    for name in DECODING:
        print(wrap(f"{name.upper() + ':':8s}" + generated[name][k]))
    print()

# %% [markdown]
# First the counts of different reports. Greedy and beam search are deterministic, so a decoder
# that ignores the image writes one report for every patient; a count far above one says the
# reports depend on the image (the lesson's bounds ask greedy decoding for at least a fifth as
# many different reports as test images). Sampling's count is high whether or not the image
# steers it. Then read the three studies finding by finding against TRUE, not word by word: a
# finding in a generated report that the labels lack is a hallucination, which section 9 counts.
#
# ## 7. Scores, and what they must beat
#
# * **BLEU-4**: the geometric mean of 1- to 4-gram precisions against the true report, pooled over
#   the corpus, with a penalty for being shorter. **ROUGE-L**: the longest common word subsequence,
#   as an F-measure per report. Both count shared words.
# * **Clinical F1**: both reports go through the report labeler (lesson 01); each of the nine
#   findings and No Finding is then a yes/no prediction of the true report's label. Micro F1 pools
#   every (report, finding) decision; macro F1 averages the per-finding F1, so rare findings count
#   as much as common ones.
#
# A number means little alone. Three baselines that never look at the test image: the **most
# common training report** written for everyone; a **random training report** (fluent, in the
# right style, about someone else); and the model's own beam reports scored against **another
# test study's** true report.

# %%
train_texts = [texts[i] for i in train_idx]
common_report, n_common = Counter(train_texts).most_common(1)[0]
rng = np.random.default_rng(SEED)
rows = {name: report_metrics(references, generated[name]) for name in DECODING}
rows["most common training report"] = report_metrics(references, [common_report] * len(test_idx))
random_reports = [train_texts[i] for i in rng.integers(0, len(train_texts), len(test_idx))]
rows["random training report"] = report_metrics(references, random_reports)
rows["beam, another study's report"] = report_metrics([references[j] for j in shuffle], generated["beam"])
print(f"most common training report ({n_common} of {len(train_texts)}): {common_report!r}\n")
print(f"{'':31s}{'BLEU-4':>8s}{'ROUGE-L':>9s}{'clin. F1 micro':>16s}{'macro':>7s}")
for name, r in rows.items():
    print(f"{name:31s}{r['bleu4']:8.3f}{r['rouge_l']:9.3f}{r['clinical_f1_micro']:16.3f}{r['clinical_f1_macro']:7.3f}")
for name in DECODING:
    for metric in ("bleu4", "rouge_l", "clinical_f1_micro", "clinical_f1_macro"):
        medmm_lite.record(f"{metric}_{name}", rows[name][metric])
medmm_lite.record("clinical_f1_micro_common_report", rows["most common training report"]["clinical_f1_micro"])
medmm_lite.record("bleu4_random_report", rows["random training report"]["bleu4"])
medmm_lite.record("clinical_f1_micro_random_report", rows["random training report"]["clinical_f1_micro"])
other = rows["beam, another study's report"]
medmm_lite.record("clinical_f1_micro_beam_shuffled", other["clinical_f1_micro"])
print(f"\nbeam reports scored against their own study / another study: BLEU-4 {rows['beam']['bleu4']:.3f} / "
      f"{other['bleu4']:.3f}, clinical F1 {rows['beam']['clinical_f1_micro']:.3f} / {other['clinical_f1_micro']:.3f}")

# %% [markdown]
# Is beam's clinical F1 above the most common report's by more than the luck of this test set? A
# paired bootstrap over test studies (labels read once, F1 recomputed on each resample):

# %%
truth = labels_matrix(references).astype(bool)
read = {name: labels_matrix(generated[name]).astype(bool) for name in DECODING}
read["common"] = np.repeat(labels_matrix([common_report]).astype(bool), len(test_idx), axis=0)


def micro_f1(y, p):
    tp, fp, fn = (y & p).sum(), (~y & p).sum(), (y & ~p).sum()
    return 2 * tp / max(2 * tp + fp + fn, 1)


assert abs(micro_f1(truth, read["beam"]) - rows["beam"]["clinical_f1_micro"]) < 1e-9
point, low, high = bootstrap_ci(lambda y, a, b: micro_f1(y, a) - micro_f1(y, b), truth, read["beam"], read["common"],
                                n_boot=500, seed=SEED)
print(f"clinical F1 (micro), beam minus most common report: {point:+.3f} (95% interval {low:+.3f} to {high:+.3f})")

# %% [markdown]
# Read the table by rows. The most common training report says "nothing is wrong"; its clinical F1
# comes only from the normal studies, and its BLEU is tiny because it is much shorter than most
# reports. A random training report has a decent BLEU and ROUGE-L: reports share most of their
# words ("no pneumothorax", "heart size is normal") whoever they are about. So lexical scores of
# the size seen here say little about reading the image. Clinical F1 is what separates a model
# that reads the image from one that writes well; the last row (the same beam reports, scored
# against other studies) shows how much of it comes from reading the image: compare the last line
# printed, where BLEU barely cares which study a report is about.
#
# The line under the table separates the two. What survives scoring the beam reports against
# *another* study's findings is the template (tubes, lines, effusions that often go together), not
# the image; only the gap between the beam row and the last row is what the model read from this
# patient's image. The interval above says whether beam's margin over the most common report is
# more than the luck of this test set.
#
# ## 8. When the metrics disagree
#
# A constructed case first. Take a true report with a present finding, and change one word of the
# sentence that states it: negate it, or swap its side.

# %%
def sentences(text):
    return [s.strip() + "." for s in text.split(".") if s.strip()]


def negate(sentence):
    for old, new in (("There is a ", "There is no "), ("There is ", "There is no "), ("There are ", "There are no ")):
        if sentence.startswith(old):
            return new + sentence[len(old):]
    return "No " + sentence[0].lower() + sentence[1:]


def swap_sides(text):
    return text.replace("left", "\0").replace("right", "left").replace("\0", "right")


def constructed_case():
    """The first test report with a sided, positive sentence whose negation the labeler reads as negative."""
    for i in test_idx:
        for s in sentences(texts[i]):
            positive = [f for f, v in label_report(s).items() if v == 1 and f != "No Finding"]
            if positive and ("left" in s or "right" in s) and label_report(negate(s)).get(positive[0]) == 0:
                return texts[i], s, positive[0]


original, sentence, finding = constructed_case()
variants = {"original": original,
            "negated": original.replace(sentence, negate(sentence)),
            "side swapped": original.replace(sentence, swap_sides(sentence))}
print(f"finding: {finding}\n{wrap('original: ' + original)}\n")
demo = {}
for name, text in variants.items():
    demo[name] = report_metrics([original], [text])
    m = demo[name]
    print(f"{name:13s} BLEU-4 {m['bleu4']:.3f}  ROUGE-L {m['rouge_l']:.3f}  clinical F1 {m['clinical_f1_micro']:.3f}"
          f"   {finding}: {label_report(text).get(finding)}")
assert demo["negated"]["bleu4"] > 0.5 and demo["negated"]["clinical_f1_micro"] < 1.0
medmm_lite.record("demo_bleu4_negated", demo["negated"]["bleu4"])
medmm_lite.record("demo_clinical_f1_negated", demo["negated"]["clinical_f1_micro"])

# %% [markdown]
# One word flips the finding: BLEU and ROUGE-L barely move, clinical F1 drops. And the side swap
# scores perfectly on clinical F1: the labeler, like CheXpert's, records *whether* a finding is
# there, not on which side. Each metric is blind to something: a finding reported on the wrong
# side is wrong for the patient and scores well on both.
#
# Now the model's own reports. Per report, ROUGE-L against clinical F1 (from the label matrices
# above; a report pair with no finding on either side is left out):

# %%
def per_report_f1(y, p):
    tp, fp, fn = (y & p).sum(1), (~y & p).sum(1), (y & ~p).sum(1)
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), np.nan)


lexical = np.array([rouge_l([r], [g]) for r, g in zip(references, generated["beam"])])
clinical = per_report_f1(truth, read["beam"])
ok = ~np.isnan(clinical)
fluent_wrong = np.flatnonzero(ok & (clinical == 0))
fluent_wrong = fluent_wrong[np.argsort(-lexical[fluent_wrong])]
sick = truth[:, :len(D.PATHOLOGIES)].any(1)
plain_right = np.flatnonzero(ok & (clinical == 1) & sick)                        # right about a finding
plain_right = plain_right[np.argsort(lexical[plain_right])]
print(f"{(ok & (clinical == 0) & (lexical >= np.median(lexical))).sum()} of {ok.sum()} beam reports have ROUGE-L "
      f"above the median and clinical F1 = 0")
fig, ax = plt.subplots(figsize=(5.5, 3.4))
jitter = np.random.default_rng(SEED).uniform(-0.02, 0.02, ok.sum())
ax.scatter(lexical[ok], clinical[ok] + jitter, s=8, alpha=0.4)
for k, colour in ((fluent_wrong[:1], "C3"), (plain_right[:1], "C2")):
    ax.scatter(lexical[k], clinical[k], s=60, facecolors="none", edgecolors=colour, linewidths=2)
ax.set_xlabel("ROUGE-L (per report)")
ax.set_ylabel("clinical F1 (per report)")
ax.set_title("beam reports: lexical vs clinical", fontsize=10)
fig.tight_layout()

# %%
for title, k in (("HIGH ROUGE-L, CLINICAL F1 = 0 (red)", fluent_wrong[:1]),
                 ("LOW ROUGE-L, CLINICAL F1 = 1 (green)", plain_right[:1])):
    if len(k):
        k = int(k[0])
        print(f"{title}: ROUGE-L {lexical[k]:.2f}")
        print(wrap("TRUE: " + references[k]), "\n   ", label_report(references[k]))
        print(wrap("BEAM: " + generated["beam"][k]), "\n   ", label_report(generated["beam"][k]), "\n")

# %% [markdown]
# In the scatter, per-report clinical F1 takes only a few values (a report names few findings),
# so the points form bands. If the two metrics agreed, high ROUGE-L would go with high clinical
# F1; look instead at the right end of the bottom band: fluent reports, full of shared words,
# that get every finding wrong. The circled reports, printed above, are the two extremes: fluent
# and wrong (red), plainly worded and right (green).
#
# ## 9. Hallucinated findings
#
# A **hallucinated** finding: the generated report states it (positive or hedged), and the image
# does not have it (its label is 0). `hallucinations` counts them per finding. On three hand-made
# reports first:

# %%
# NBVAL_CHECK_OUTPUT
handmade = ["Small left pleural effusion. No pneumothorax.",       # the image has an effusion: correct
            "Large right pneumothorax. Possible consolidation.",   # neither is there: two, one of them hedged
            "No pleural effusion. Heart size is normal."]          # states nothing: nothing to invent
handmade_labels = np.zeros((3, len(D.FINDINGS)))
handmade_labels[0, D.FINDINGS.index("Pleural Effusion")] = 1
counted = hallucinations(handmade, handmade_labels)
print("per report:", counted["per_report"].tolist())
print("per finding:", {f: n for f, n in counted["per_finding"].items() if n})
assert counted["per_report"].tolist() == [0, 2, 0]

# %% [markdown]
# Now the model's reports, per finding, as a rate: divided by the number of test images without
# that finding. (The opposite error, a finding the image has and the report omits, is what
# clinical recall measures.)

# %%
y_test = cohort.labels[test_idx]
found = {name: hallucinations(generated[name], y_test) for name in DECODING}
fig, ax = plt.subplots(figsize=(10, 3))
x = np.arange(len(D.PATHOLOGIES))
for j, name in enumerate(DECODING):
    h = found[name]
    ax.bar(x + (j - 1) * 0.27, [h["per_finding"][f] / max(h["absent"][f], 1) for f in D.PATHOLOGIES], 0.27,
           label=f"{name}: {h['per_report_mean']:.2f} per report")
ax.set_xticks(x, [f.replace(" ", "\n") for f in D.PATHOLOGIES], fontsize=7)
ax.set_ylabel("hallucination rate\n(of images without it)")
ax.legend(fontsize=8)
fig.tight_layout()
for name in DECODING:
    medmm_lite.record(f"hallucinations_per_report_{name}", found[name]["per_report_mean"])
medmm_lite.record("hallucinations_per_report", found["beam"]["per_report_mean"])
for name in DECODING:
    worst = max(D.PATHOLOGIES, key=lambda f: found[name]["per_finding"][f])
    print(f"{name:6s} invents most often: {worst} ({found[name]['per_finding'][worst]} of "
          f"{found[name]['absent'][worst]} images without it)")
portable = np.array(["portable" in texts[i].lower() for i in train_idx])
devices = cohort.labels[train_idx][:, D.FINDINGS.index("Support Devices")].numpy() == 1
print(f"\ntraining reports: support devices in {devices[portable].mean():.0%} of portable films, "
      f"{devices[~portable].mean():.0%} of the others")
k = int(np.argmax(found["beam"]["per_report"]))
print(f"\nthe beam report with the most hallucinated findings ({found['beam']['per_report'][k]}):")
print(wrap(generated["beam"][k]))
print("    image labels:", [f for f, v in zip(D.FINDINGS, y_test[k]) if v])

# %% [markdown]
# The decoding strategy shapes the errors. Sampling may draw a less likely finding at any step, and
# nothing checks it against the image. Greedy and beam search write a *likely* report, and a
# likely report is built from what usually goes together in the training reports: a decoder that
# has learned that portable films tend to come with tubes and lines (printed above) writes them
# together whether or not this image has them. Hallucinations are the decoder's language model
# speaking where the image gives it too little to go on.
#
# ## 10. Reports beside their images

# %%
picks = shown + [int(i) for i in fluent_wrong[:1]]
fig, axes = plt.subplots(len(picks), 3, figsize=(12, 2.3 * len(picks)), gridspec_kw={"width_ratios": [1, 2.6, 2.6]})
for row, k in zip(axes, picks):
    row[0].imshow(test_images[k, 0], cmap="gray", vmin=0, vmax=1)
    present = [f for f, v in zip(D.FINDINGS, y_test[k]) if v]
    row[0].set_title(", ".join(present)[:40], fontsize=7)
    f1 = per_report_f1(truth[k:k + 1], read["beam"][k:k + 1])[0]
    for ax, (title, text) in zip(row[1:], ((f"generated (beam), clinical F1 {f1:.2f}", generated["beam"][k]),
                                           ("true findings", references[k]))):
        ax.text(0, 1, textwrap.fill(text, 62), va="top", fontsize=7.5, family="monospace")
        ax.set_title(title, fontsize=8, loc="left")
    for ax in row:
        ax.axis("off")
fig.tight_layout()

# %% [markdown]
# Read each generated report against the true findings beside it, finding by finding, and check
# both against the labels over the image. A finding in both columns is the model reading the
# image; one in the generated column only is a hallucination of the kind section 9 counted. The
# first rows are the studies of section 6; a last row, when this run has one, is section 8's
# fluent report with a clinical F1 of 0.
#
# ## 11. The control: the same decoder on an encoder trained from scratch
#
# Was it the pretrained encoder? Train the same captioner, same steps, data and learning rate,
# with an image encoder that starts from random weights and learns along with the decoder. It is
# the course's small CNN, the stronger of the two encoders from scratch (lesson 01), as in R2Gen.
# Each row is scored as above: the image's share of the loss, how many different reports greedy
# decoding writes for the test images, clinical F1 and hallucinated findings of the beam reports.

# %%
scratch, scratch_info = C.pretrain_caption(P, data, seed=SEED, text=TEXT, dataset=DATASET, encoder="cnn")


def scorecard(m, greedy=None, beam=None):
    own = C.caption_loss(m, test_images, test_ids, test_mask)
    other_image = C.caption_loss(m, test_images[shuffle], test_ids, test_mask)
    greedy = greedy or C.generate_reports(m, test_images, tok, "greedy")
    beam = beam or C.generate_reports(m, test_images, tok, "beam", num_beams=4)
    return {"image loss ratio": own / other_image, "distinct greedy": len(set(greedy)) / len(test_idx),
            "clinical F1 (beam)": report_metrics(references, beam)["clinical_f1_micro"],
            "hallucinated/report": hallucinations(beam, y_test)["per_report_mean"]}


cards = {"CLIP ViT, frozen (this lesson)": scorecard(model, generated["greedy"], generated["beam"]),
         "CNN from scratch (control)": scorecard(scratch)}
seconds = {"CLIP ViT, frozen (this lesson)": history, "CNN from scratch (control)": scratch_info["history"]}
columns = list(cards["CNN from scratch (control)"]) + ["steps", "training s"]
print(f"{'':31s}" + "".join(f"{k:>20s}" for k in columns))
for name, card in cards.items():
    h = seconds[name]
    print(f"{name:31s}" + "".join(f"{v:20.3f}" for v in card.values()) + f"{len(h):20d}{h.seconds:20.0f}")
print(f"{'most common training report':31s}{'':20s}{1 / len(test_idx):20.3f}"
      f"{rows['most common training report']['clinical_f1_micro']:20.3f}")
control = cards["CNN from scratch (control)"]
medmm_lite.record("scratch_caption_image_loss_ratio", control["image loss ratio"])
medmm_lite.record("scratch_distinct_reports_greedy_frac", control["distinct greedy"])
medmm_lite.record("scratch_clinical_f1_micro_beam", control["clinical F1 (beam)"])
medmm_lite.record("scratch_hallucinations_per_report_beam", control["hallucinated/report"])

# %% [markdown]
# An image loss ratio of 1 means the image changes nothing; a greedy decoder that writes one report
# for every patient has a distinct share of one in the number of test images. Trained from scratch
# for this budget, the decoder learns the reports' language long before the encoder learns to see,
# and once it can lower the loss from language alone the image's gradient is small: the table
# shows how far the control got. Starting from an encoder that already sees is what LLaVA and the
# report generators since R2Gen do, and here it is the difference between a model that writes the
# cohort's average report and one that reads the image.
#
# ## 12. What did writing reports teach the encoder?
#
# The frozen ViT learned nothing from the reports; whatever the control's CNN knows, it learned
# from them. Captioning can be pretraining too: throw the control's decoder away, freeze its image
# encoder, and train a linear probe on 1%, 10% and 100% of the training labels (lesson 01's
# protocol).
# References: the same CNN untrained (random features are a fair baseline for a CNN; its
# BatchNorm statistics recomputed on the training images as for the trained one) and lesson 01's
# supervised ViT trained on those labels from scratch (loaded from the cache if lesson 01 ran).

# %%
untrained_cnn = C.build_caption(P, len(tok), seed=SEED).eval()     # the control's initial weights
recalibrate_batchnorm(untrained_cnn.image_encoder, cohort.images[train_idx])
probes = {name: probe_curve(encoder, cohort, splits, steps=P.probe_steps, seed=SEED)
          for name, encoder in (("captioning CNN (frozen)", scratch.image_encoder),
                                ("untrained CNN (frozen)", untrained_cnn.image_encoder))}
supervised = supervised_baseline(P, data, seed=SEED, dataset=DATASET)
curves = {**probes, "supervised ViT (lesson 01)": supervised}
fractions = list(supervised)
print(f"{'':28s}" + "".join(f"{f:>8.0%}" for f in fractions))
for name, curve in curves.items():
    print(f"{name:28s}" + "".join(f"{curve[f]['macro']:8.3f}" for f in fractions))
assert all(list(curve) == fractions and all(0 <= v["macro"] <= 1 for v in curve.values()) for curve in probes.values())
for fraction in fractions:
    pct = round(fraction * 100)
    medmm_lite.record(f"caption_probe_auroc_{pct}pct", probes["captioning CNN (frozen)"][fraction]["macro"])
    medmm_lite.record(f"untrained_probe_auroc_{pct}pct", probes["untrained CNN (frozen)"][fraction]["macro"])

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
for name, curve in curves.items():
    axes[0].plot([f * 100 for f in fractions], [curve[f]["macro"] for f in fractions], "o-", label=name)
axes[0].axhline(0.5, color="0.6", ls=":")
axes[0].set_xscale("log")
axes[0].set_xticks([f * 100 for f in fractions], [f"{f:.0%}" for f in fractions])
axes[0].set_xlabel("training labels")
axes[0].set_ylabel("test macro AUROC")
axes[0].legend(fontsize=8)
per = {name: probes[name][fractions[-1]]["per_finding"] for name in probes}
x = np.arange(len(D.PATHOLOGIES))
for j, name in enumerate(per):
    axes[1].bar(x + (j - 0.5) * 0.4, [per[name][f] for f in D.PATHOLOGIES], 0.4, label=name)
axes[1].axhline(0.5, color="0.6", ls=":")
axes[1].set_ylim(0.3, 1)
axes[1].set_xticks(x, D.PATHOLOGIES, fontsize=7, rotation=35, ha="right")
axes[1].set_title(f"probe AUROC per finding, {fractions[-1]:.0%} labels", fontsize=10)
axes[1].legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# The supervised ViT and the probes differ in architecture as well as in supervision, so compare
# with care: the CNN line that matters is the untrained CNN, which has the same architecture and
# no training at all. Whatever the captioning CNN adds over it was learned from reports, with no
# label in sight; and a decoder that ignores its image (section 11's image loss ratio) sends its
# encoder almost no gradient, so the two lines can only part once the decoder reads the image.

# %% [markdown]
# ## Summary
#
# - A captioner factorises $p(\text{report} \mid \text{image})$ left to right and trains with
#   teacher forcing: one forward pass, a causal mask, cross-entropy on the next token with padding
#   set to -100.
# - Most of the loss is language. The image's share sits on a few words (section 5's bar chart);
#   shuffling the images is the test that shows whether a model reads them at all.
# - Start from an encoder that already sees: on lesson 02's frozen CLIP ViT the decoder reads the
#   image within the budget; the same decoder on an encoder from scratch (section 11) mostly writes
#   the cohort's average report.
# - Decoding matters as much as training: greedy commits early, sampling varies and can draw
#   findings the image does not support, beam search finds likelier whole reports, and a likely
#   report can still carry findings that merely tend to come together.
# - BLEU and ROUGE-L reward the shared phrasing of all reports: a random report of the right style
#   scores well. Clinical F1 reads the findings, and is itself blind to laterality. Report both,
#   against baselines that never see the image, and count hallucinated findings.
# - Writing reports trains an encoder only through a decoder that reads the image: the probe of
#   the control's CNN shows what it learned without labels.
#
# ## Exercises
#
# 1. **Temperature.** Sample reports for the test images at temperatures 0.5, 1.0 and 1.5
#    (no top-p, `seed=SEED`). For each, store the fraction of distinct reports and the clinical
#    F1 (micro) in `by_temperature = {T: {"distinct": ..., "clinical_f1": ...}}`. Where is the
#    best trade-off?

# %% tags=["solution"]
by_temperature = {}
for T in (0.5, 1.0, 1.5):
    sampled = C.generate_reports(model, test_images, tok, "sample", temperature=T, seed=SEED)
    by_temperature[T] = {"distinct": len(set(sampled)) / len(sampled),
                         "clinical_f1": report_metrics(references, sampled)["clinical_f1_micro"]}

# %% tags=["check"]
assert by_temperature is not None and sorted(by_temperature) == [0.5, 1.0, 1.5], "one entry per temperature"
again = C.generate_reports(model, test_images, tok, "sample", temperature=1.0, seed=SEED)
assert abs(by_temperature[1.0]["distinct"] - len(set(again)) / len(again)) < 1e-9, \
    "distinct: the number of different reports divided by the number of reports (sample with seed=SEED)"
assert abs(by_temperature[1.0]["clinical_f1"] - report_metrics(references, again)["clinical_f1_micro"]) < 1e-9
for T, v in by_temperature.items():
    print(f"correct: T = {T}: {v['distinct']:.0%} distinct, clinical F1 {v['clinical_f1']:.3f}")

# %% [markdown]
# 2. **Hallucinations by hand.** Count the beam reports that state a pleural effusion (the
#    labeler says 1 or -1) for an image whose label says there is none. Store it in
#    `effusion_hallucinated`.

# %% tags=["solution"]
column = D.FINDINGS.index("Pleural Effusion")
effusion_hallucinated = sum(label_report(g).get("Pleural Effusion") in (1, -1) and y_test[k, column] == 0
                            for k, g in enumerate(generated["beam"]))

# %% tags=["check"]
assert effusion_hallucinated is not None, "count the beam reports that state an effusion the image lacks"
assert effusion_hallucinated == found["beam"]["per_finding"]["Pleural Effusion"], \
    "count reports whose label_report gives Pleural Effusion 1 or -1 where cohort.labels is 0"
print(f"correct: {effusion_hallucinated} beam reports invent an effusion")

# %% [markdown]
# 3. **Beam width and length.** Beam search divides a report's log-probability by its length
#    (`length_penalty=1.0`). With `length_penalty=0.0` it ranks by the total log-probability,
#    which every extra token lowers. Decode the test images with `num_beams=4` and each penalty,
#    and store the mean number of words per report in `words_by_penalty = {0.0: ..., 1.0: ...}`.

# %% tags=["solution"]
words_by_penalty = {}
for penalty in (0.0, 1.0):
    written = C.generate_reports(model, test_images, tok, "beam", num_beams=4, length_penalty=penalty)
    words_by_penalty[penalty] = float(np.mean([len(w.split()) for w in written]))

# %% tags=["check"]
assert words_by_penalty is not None and set(words_by_penalty) == {0.0, 1.0}, "one mean length per penalty"
assert abs(words_by_penalty[1.0] - np.mean([len(w.split()) for w in generated["beam"]])) < 1e-9, \
    "length_penalty=1.0 with num_beams=4 is the beam decoding of section 6"
assert words_by_penalty[0.0] <= words_by_penalty[1.0], "the total log-probability favours shorter reports"
print(f"correct: {words_by_penalty[0.0]:.1f} words without the length normalisation, "
      f"{words_by_penalty[1.0]:.1f} with it")

# %% [markdown]
# 4. **Going further** (longer runs, no check). (a) Fine-tune the CLIP ViT instead of freezing
#    it: build the model of section 3, replace `model.image_encoder` by
#    `model.image_encoder.module.requires_grad_(True)`, train it with `fit` and `C.caption_step`,
#    and compare its image loss ratio with section 5's (`benchmarks/caption_encoders.py` does this
#    for every encoder). (b) Train on whole reports (`text="report"`) and
#    score the findings of what it writes (`C.report_section(generated, "findings")`) against
#    the true findings: does writing the impression as well help?
#
# Next: lesson 06 turns the direction around, report -> image.
