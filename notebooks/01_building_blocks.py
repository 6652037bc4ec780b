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
# # 01 Building blocks, and the label-hungry baseline
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medmm-course/medmm-course/blob/main/notebooks/01_building_blocks.ipynb)
#
# Every model in this course is assembled from the same few parts: a **tokenizer** that turns
# reports into ids, an **image encoder** (a ViT or a small ResNet) and a **text transformer**
# that turn pixels and ids into vectors, a **training loop**, **metrics**, and a **report
# labeler** that reads findings out of free text. This lesson builds each one, checks it, and
# then trains the model every later lesson must beat: a classifier trained from scratch with
# 1%, 10% and 100% of the labels. Labels are what multimodal pretraining tries to save.

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
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display
import torch
import torch.nn.functional as F

import medmm_lite
from medmm_lite import backbones
from medmm_lite import data as D
from medmm_lite.adapt import (Classifier, label_subset, pathology_auroc, predict, supervised_baseline,
                              supervised_budget, supervised_curve, train_classifier)
from medmm_lite.eval import bootstrap_ci, clinical_f1, extract_mentions, label_report, labels_matrix
from medmm_lite.models import TextDecoder, TextEncoder, ViT, count_parameters, patchify, unpatchify
from medmm_lite.train import fit, warmup_cosine

P = medmm_lite.profile(PROFILE)
medmm_lite.seed_everything(SEED)
device = torch.device(P.device)
print(medmm_lite.profile_summary(P))

# %% [markdown]
# `prepare_data` is lesson 00 in one call: the cohort, splits by patient, a tokenizer trained on
# the *training* reports only (the test reports must stay unseen), and every report encoded.

# %%
data = D.prepare_data(P, seed=SEED, dataset=DATASET)
cohort, splits = data.cohort, data.splits
print({k: len(v) for k, v in splits.items()}, "studies per split")

# %% [markdown]
# ## 1. The tokenizer
#
# A model reads numbers, not words. A **WordPiece** tokenizer (BERT's) keeps frequent words whole
# and splits rare ones into pieces marked `##`, so no word is ever out of vocabulary. Trained on
# the reports themselves, it learns radiology's small vocabulary: "effusion" and "pneumothorax"
# are single tokens here, where a general English tokenizer would cut them up.

# %%
tok = data.tokenizer
sentence = "Small left pleural effusion. No pneumothorax."
print("vocabulary:", len(tok), "tokens")
print(tok.tokenize(sentence))
print(tok.tokenize("Pneumomediastinum is not seen."), "<- an unseen word, split into known pieces")

# %%
# NBVAL_CHECK_OUTPUT
print({t: tok.convert_tokens_to_ids(t) for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BOS]", "[EOS]"]})

# %% [markdown]
# Encoders read `[CLS] report [SEP]`, padded to a fixed length; the attention mask says which
# positions are real. The text back from the ids is the normalised report (lower case).

# %%
ids, mask = D.encode_reports(tok, [sentence], max_len=16)
print(ids[0].tolist())
print(mask[0].tolist())
decoded = tok.decode(ids[0], skip_special_tokens=True)
print(repr(decoded))
assert decoded == sentence.lower()

lengths = data.attention_mask.sum(1).numpy()
truncated = np.mean([len(tok(r)["input_ids"]) > P.max_text_len for r in cohort.reports[:1000]])
plt.figure(figsize=(5, 2.5))
plt.hist(lengths, bins=40)
plt.xlabel("tokens per report (after truncation)")
plt.title(f"max_text_len = {P.max_text_len}; {truncated:.0%} of reports truncated", fontsize=9)
plt.tight_layout()

# %% [markdown]
# Look at the right edge of the histogram and at the title. Reports longer than `max_text_len`
# are cut and pile up at the limit; a cut report loses its end, which is its IMPRESSION. If the
# title's fraction is small, the limit costs little text and keeps every batch short; if it is
# large, a model would never read the conclusions. The spread of lengths is also the padding a
# batch carries, which lesson 05 saves by batching reports of similar length.
#
# ## 2. Patches
#
# A Vision Transformer reads an image as a sequence of square **patches**, each flattened to a
# vector, just as a text transformer reads tokens. Patchify by hand with a reshape:

# %%
def patchify_by_hand(images, p):
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p)          # split rows and columns into blocks
    x = x.permute(0, 2, 4, 3, 5, 1)                         # (b, grid_h, grid_w, p, p, c)
    return x.reshape(b, (h // p) * (w // p), p * p * c)     # one row per patch


images = cohort.images[:4]
patches = patchify_by_hand(images, P.patch_size)
print("images", tuple(images.shape), "-> patches", tuple(patches.shape))
assert torch.equal(patches, patchify(images, P.patch_size)), "same layout as the library (MAE's)"
assert torch.equal(unpatchify(patches, P.patch_size, 1), images), "and back"

grid = P.image_size // P.patch_size
fig, axes = plt.subplots(grid, grid, figsize=(3.2, 3.2))
for k, ax in enumerate(axes.flat):
    ax.imshow(patches[0, k].reshape(P.patch_size, P.patch_size), cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
fig.suptitle(f"{grid * grid} patches of {P.patch_size}x{P.patch_size} px", fontsize=9)
fig.tight_layout()

# %% [markdown]
# Read the grid as the ViT does, row by row, one token per square. No single patch holds a heart
# or a lung: anything larger than a patch the transformer must assemble by attending across
# patches. A small nodule, on the other hand, fits inside one patch, mixed with whatever else
# that square holds; lesson 03 comes back to findings smaller than a patch.
#
# ## 3. Attention, and the ViT
#
# Each token (patch) looks at every other and takes a weighted average of their values:
#
# $$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d}}\right) V$$
#
# The library calls PyTorch's fused `F.scaled_dot_product_attention`, which computes exactly this
# (faster, and without storing the attention matrix on GPU). Check it by hand:

# %%
q, k, v = torch.randn(3, 2, 4, 16, 8).unbind(0)      # (batch, heads, tokens, head_dim)
by_hand = torch.softmax(q @ k.transpose(-2, -1) / 8 ** 0.5, dim=-1) @ v
torch.testing.assert_close(by_hand, F.scaled_dot_product_attention(q, k, v))
print("hand-written attention == F.scaled_dot_product_attention")

# %% [markdown]
# A ViT = patch embedding + a learned position per patch + a `[CLS]` token + pre-norm transformer
# blocks. Every image encoder in the course returns two things: a **global** vector per image and
# **local** features, one per patch, on a grid. Contrastive lessons use the global one; local
# alignment (03), MAE (04) and the VLM (07) need the grid. The global vector is the mean of the
# patch outputs (`pool="mean"`, as in MAE's fine-tuning); the original ViT takes the `[CLS]`
# output (`pool="cls"`), which at this budget learned slower and less steadily across seeds
# (docs/performance.md keeps the backbone study).
#
# The original ViT embeds each patch with one linear map (a convolution whose kernel and stride
# are the patch size). From a few thousand images that single matrix has to learn edges and
# blobs on its own, and at this course's budget it barely does (section 6 measures it). The
# course's ViT therefore starts with a small **convolutional stem** ("Early convolutions help
# transformers see better", Xiao et al. 2021): three 3x3 convolutions of stride 2 (8 = 2 x 2 x 2,
# the patch size), each with BatchNorm and GELU, then a 1x1 projection to the model's width. The
# grid and the token count stay exactly the same. Built by hand:

# %%
def conv_stem_by_hand(patch_size, dim):
    layers, channels = [], 1
    n_layers = int(np.log2(patch_size))                       # each layer halves the resolution
    for i in range(n_layers):
        width = max(16, dim // 2 ** (n_layers - 1 - i))         # widths grow to the model's width
        layers += [torch.nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False),
                   torch.nn.BatchNorm2d(width), torch.nn.GELU()]
        channels = width
    return torch.nn.Sequential(*layers, torch.nn.Conv2d(channels, dim, 1))


vit = backbones.image_encoder(P)          # the course's ViT: stem=P.vit_stem, "conv"
stem = conv_stem_by_hand(P.patch_size, P.dim)
stem.load_state_dict(vit.patch_embed.proj.state_dict())   # same layers, so the library's weights fit
with torch.no_grad():
    tokens = stem.eval()(images).flatten(2).transpose(1, 2)                      # (B, grid*grid, dim)
    torch.testing.assert_close(tokens, vit.eval().patch_embed(images))
print(f"stem: {tuple(images.shape)} -> {tuple(tokens.shape)} tokens, the same grid as a linear patch embedding")
print("each token now sees a 15 x 15 px window: its own 8 x 8 patch and a few pixels of its neighbours")

# %%
features = vit(images)
print("global:", tuple(features.global_features.shape), " local:", tuple(features.local_features.shape),
      " grid:", vit.grid_size)
assert features.local_features.shape[1] == vit.grid_size[0] * vit.grid_size[1]
torch.testing.assert_close(features.global_features, features.local_features.mean(dim=1))  # pool="mean"
print(f"ViT parameters at this profile: {count_parameters(vit):,}")

# %%
# NBVAL_CHECK_OUTPUT
# The cpu-profile ViT with the original linear stem, whatever PROFILE is: the parameter count equals
# timm's VisionTransformer of the same size (tests/test_models.py checks it, and that the outputs
# match with copied weights).
reference_vit = ViT(image_size=64, patch_size=8, in_chans=1, dim=96, depth=3, heads=4, stem="linear")
print(f"ViT(64 px, patch 8, dim 96, depth 3, heads 4, linear stem): {count_parameters(reference_vit):,} parameters")

# %% [markdown]
# Bad input gets an error that says what was expected, not a shape error deep inside a matmul:

# %%
try:
    vit(torch.rand(2, 3, P.image_size, P.image_size))
except ValueError as err:
    print("ValueError:", err)

# %% [markdown]
# The small ResNet-style CNN has the same interface; its local grid is coarser (one region per
# 16 px), its inductive bias (locality, translation equivariance) stronger.

# %%
cnn = backbones.image_encoder(P, kind="cnn")
out = cnn(images)
print("CNN global:", tuple(out.global_features.shape), " local:", tuple(out.local_features.shape),
      f" parameters: {count_parameters(cnn):,}")

# %% [markdown]
# ## 4. The text transformer
#
# The **encoder** reads a whole report at once (every token sees every other) and returns a
# global vector (the `[CLS]` output) and one vector per token. Padding must not change anything:

# %%
text_encoder = backbones.text_encoder(P, vocab_size=len(tok)).eval()
ids, mask = data.input_ids[:2], data.attention_mask[:2]
with torch.no_grad():
    a = text_encoder(ids, mask)
    longer = torch.cat([ids, torch.zeros(2, 8, dtype=torch.long)], 1)[:, :P.max_text_len]
    b = text_encoder(longer, (longer != 0).long())
n_real = int(mask[0].sum())
torch.testing.assert_close(a.token_features[0, :n_real], b.token_features[0, :n_real], atol=1e-5, rtol=1e-5)
print("global:", tuple(a.global_features.shape), " tokens:", tuple(a.token_features.shape),
      "- extra padding changed nothing")

# %% [markdown]
# The **decoder** writes text one token at a time: a causal mask lets position t see only
# positions up to t. With cross-attention it can also read image features (lesson 05). Check
# causality: changing the last token must not change the predictions before it.

# %%
decoder = backbones.text_decoder(P, vocab_size=len(tok), cross_attention=True,
                                 context_dim=vit.local_dim).eval()
dec_ids, _ = data.decoder_inputs()
x = dec_ids[:1, :12].clone()
context = features.local_features[:1].detach()
with torch.no_grad():
    before = decoder(x, context=context).logits
    x[0, -1] = (x[0, -1] + 7) % len(tok)
    after = decoder(x, context=context).logits
torch.testing.assert_close(before[0, :-1], after[0, :-1])
print("logits", tuple(before.shape), "- earlier positions do not see later tokens")

with torch.no_grad():
    sample = decoder.generate(context, bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, max_new_tokens=12)
print("untrained decoder writes:", repr(tok.decode(sample[0], skip_special_tokens=True)), "(lesson 05 trains it)")

# %% [markdown]
# ## 5. The training loop
#
# Every lesson trains with one small loop, `medmm_lite.train.fit`: AdamW (no weight decay on
# biases, norms and embeddings), a linear warmup then a cosine decay of the learning rate,
# gradient clipping, mixed precision on CUDA, a progress bar, periodic evaluation, and
# checkpoints written atomically so a killed run resumes where it stopped, with the same result.

# %%
steps = np.arange(P.steps)
schedule = [warmup_cosine(int(s), total_steps=P.steps, warmup_steps=max(1, P.steps // 20), min_lr_ratio=0.1)
            for s in steps]
plt.figure(figsize=(4.5, 2.2))
plt.plot(steps, np.array(schedule) * P.lr)
plt.xlabel("step")
plt.ylabel("learning rate")
plt.title("warmup, then cosine decay", fontsize=9)
plt.tight_layout()

# %% [markdown]
# The warmup keeps the first updates small while AdamW's running averages of the gradients still
# mean little; the cosine then lowers the rate smoothly to a floor of a tenth of the peak
# (`min_lr_ratio=0.1`), so the last steps refine instead of jumping around. Every lesson's
# training uses this shape, stretched to its own number of steps.
#
# A first run of the loop: a ViT with a linear head, multi-label binary cross-entropy on the
# nine pathologies, on a fifth of the training studies for a few steps, evaluated on the
# validation split as it trains. `fit` takes a model, a loss function `loss_fn(model, batch)` and
# a dataset; it does the rest.

# %%
labels = cohort.labels[:, [D.FINDINGS.index(f) for f in D.PATHOLOGIES]]
train_idx, val_idx, test_idx = splits["train"], splits["val"], splits["test"]
few = train_idx[: len(train_idx) // 5]


def val_auroc(model):
    return {"val_auroc": pathology_auroc(labels[val_idx], predict(model, cohort.images[val_idx]))["macro"]}


def loss_fn(model, batch):
    return F.binary_cross_entropy_with_logits(model(batch["image"]), batch["labels"])


medmm_lite.seed_everything(SEED)
model = Classifier(backbones.image_encoder(P))
checkpoint = Path(tempfile.mkdtemp()) / "supervised.pt"
demo_steps = max(20, P.steps // 10)
history = fit(model, loss_fn, D.TensorDictDataset(image=cohort.images[few], labels=labels[few]),
              steps=demo_steps, batch_size=P.batch_size, lr=P.lr, seed=SEED, device=device, amp=P.amp,
              eval_fn=val_auroc, eval_every=max(1, demo_steps // 4), checkpoint_path=checkpoint,
              desc="a first run")
print("validation AUROC at each evaluation:", [round(e["val_auroc"], 3) for _, e in history.evals])

# %% [markdown]
# The checkpoint holds the model, the optimiser, the schedule, the step and the random state.
# Calling `fit` again with the same path finds the run finished and returns at once; after a
# crash it would continue from the last checkpoint (the tests kill a run with SIGKILL and check
# that the resumed weights equal an uninterrupted run's, bit for bit).

# %%
again = fit(model, loss_fn, D.TensorDictDataset(image=cohort.images[few], labels=labels[few]),
            steps=demo_steps, batch_size=P.batch_size, lr=P.lr, seed=SEED, device=device, amp=P.amp,
            checkpoint_path=checkpoint, progress=False)
assert len(again.loss) == len(history.loss)
print(f"resumed from {checkpoint.name}: {len(again.loss)} steps already done, nothing to train")

# %% [markdown]
# ## 6. The label-hungry baseline
#
# Now the question the whole course asks. Labels are expensive (a radiologist's time); reports
# come free with every study. How good is a model trained from scratch when only 1% or 10% of the
# training studies are labelled? `supervised_baseline` trains the same ViT at each fraction (the
# same number of steps for each) and caches the models, so lessons 02-10 compare with exactly
# these numbers. Each subset keeps at least one positive per finding.
#
# How many steps, of what size? At this budget the ViT is still learning when the steps run out,
# and what it needs is more *updates*, not bigger ones: `supervised_budget` takes the profile's
# images in twice as many updates of half the batch, which at 100% labels was worth several
# hundredths of validation AUROC for the same time (docs/performance.md keeps the study).

# %%
steps, batch_size = supervised_budget(P)
print(f"{steps} updates of {batch_size} studies (the profile: {P.steps} of {P.batch_size})")
baseline = supervised_baseline(P, data, seed=SEED, dataset=DATASET)
for fraction, result in baseline.items():
    print(f"{fraction:>5.0%} labels ({result['n_labels']:4d} studies): test AUROC {result['macro']:.3f}")
    medmm_lite.record(f"supervised_auroc_{round(fraction * 100)}pct", result["macro"])

# %% [markdown]
# Read the column from the top. More labels should mean a better model: the lesson's bounds ask
# that 10% of the labels beat 1%, and whether 100% ends above 10% moves with the seed at this
# budget (section 6 comes back to it). The 1% and 10% rows are the numbers every pretraining
# lesson tries to beat with reports instead of labels.
#
# The 100% run's training loss (the History that `fit` returned, cached with the model):

# %%
baseline[1.0]["history"].plot();

# %% [markdown]
# Look at the last steps: if the smoothed loss is still falling there, the run stopped for lack of
# steps, not for lack of anything left to learn, which is what "still learning when the steps run
# out" above means. A loss that had flattened long before the end would say the opposite: more
# steps would buy nothing.
#
# ### What the stem is worth
#
# Section 3 gave the ViT a convolutional stem. Is it worth it? Train two more models with all the
# labels and the same steps: the ViT with the original **linear** patch embedding, and the small
# ResNet-style **CNN**, whose locality and shared filters are built in. Both are cached like the
# baseline.

# %%
cache_key = {"profile": P.name, "dataset": DATASET, "n_studies": len(cohort)}
linear_curve = supervised_curve(lambda: backbones.image_encoder(P, stem="linear"), cohort, splits, fractions=(1.0,),
                                steps=steps, batch_size=batch_size, lr=P.lr, seed=SEED, device=device,
                                amp=P.amp, cache_key={**cache_key, "backbone": "vit_linear_stem"})
cnn_curve = supervised_curve(lambda: backbones.image_encoder(P, kind="cnn"), cohort, splits, fractions=(1.0,),
                             steps=steps, batch_size=batch_size, lr=P.lr, seed=SEED, device=device, amp=P.amp,
                             cache_key={**cache_key, "backbone": "cnn"})
medmm_lite.record("linear_stem_auroc_100pct", linear_curve[1.0]["macro"])
medmm_lite.record("cnn_auroc_100pct", cnn_curve[1.0]["macro"])
stems = {"ViT, linear patch embedding": linear_curve[1.0], "ViT, convolutional stem (the course's)": baseline[1.0],
         "small CNN": cnn_curve[1.0]}
for name, result in stems.items():
    print(f"{name:40s} test AUROC {result['macro']:.3f}  (100% labels, {steps} steps of {batch_size})")

# %%
fractions = list(baseline)
fig, axes = plt.subplots(1, 2, figsize=(11.5, 3.6))
axes[0].plot([f * 100 for f in fractions], [baseline[f]["macro"] for f in fractions], "o-",
             label="supervised ViT (conv stem)")
axes[0].axhline(cnn_curve[1.0]["macro"], color="tab:green", ls="--", label="small CNN, 100% labels")
axes[0].axhline(linear_curve[1.0]["macro"], color="tab:red", ls="--", label="ViT, linear stem, 100% labels")
axes[0].axhline(0.5, color="0.6", ls=":", label="chance")
axes[0].set_xscale("log")
axes[0].set_xticks([f * 100 for f in fractions], [f"{f:.0%}" for f in fractions])
axes[0].set_xlabel("training labels used")
axes[0].set_ylabel("test macro AUROC (9 pathologies)")
axes[0].legend(fontsize=8)
axes[0].set_title("the label-hungry baseline", fontsize=10)
names = list(baseline[1.0]["per_finding"])
y = np.arange(len(names))
for offset, (label, result) in zip((-0.27, 0, 0.27), stems.items()):
    axes[1].barh(y + offset, [result["per_finding"][n] for n in names], height=0.27, label=label)
axes[1].set_yticks(y, names, fontsize=8)
axes[1].invert_yaxis()
axes[1].axvline(0.5, color="0.6", ls=":")
axes[1].set_xlim(0.3, 1)
axes[1].set_xlabel("test AUROC, 100% labels")
axes[1].legend(fontsize=7, loc="lower right")
axes[1].set_title("per finding", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# What to notice: the curve should rise with every tenfold increase in labels, and the two dashed
# lines say what the stem does. The cell below reads it off this run. Between 10% and 100% the
# rise is the smallest and the least certain: at this budget both models are still learning when
# the steps run out, and which of the two ends ahead moves with the seed and even with the number
# of threads (docs/performance.md, "Which ViT sees", has runs of both).

# %%
monotone = all(baseline[a]["macro"] < baseline[b]["macro"] for a, b in zip(fractions, fractions[1:]))
gain = baseline[1.0]["macro"] - linear_curve[1.0]["macro"]
gap_to_cnn = cnn_curve[1.0]["macro"] - baseline[1.0]["macro"]
rising = " < ".join(f"{baseline[f]['macro']:.3f}" for f in fractions)
display(Markdown(
    f"- More labels, better model: AUROC {rising} "
    f"at {', '.join(f'{f:.0%}' for f in fractions)} of the labels" if monotone else
    "- In this run the curve is **not** monotone in the labels: read the per-fraction numbers above."))
display(Markdown(
    f"- The convolutional stem is worth **{gain:+.3f}** AUROC over the linear patch embedding, and the ViT "
    f"ends {abs(gap_to_cnn):.3f} {'below' if gap_to_cnn > 0 else 'above'} the small CNN."))

# %% [markdown]
# Why such a difference from a few layers? A linear patch embedding must learn, from a few
# thousand images and a few hundred steps, what a CNN knows before it sees a single one: that
# nearby pixels belong together and that the same edge means the same thing anywhere. The stem
# hands the transformer that prior in its first layers, and keeps everything the course needs from
# a ViT: one token per patch on a grid, for local alignment (03), MAE (04) and the VLM (07). One
# consequence for MAE: a stem token also sees a few pixels of its neighbours, so masking a patch
# no longer hides all of it (lesson 04 deals with it). `benchmarks/backbone_study.py` tries more
# variants; docs/performance.md keeps the table.
#
# How sure are we of these numbers? A bootstrap over test studies gives an interval (lesson 10
# uses it to compare methods honestly):

# %%
scores = baseline[1.0]["test_scores"].numpy()
point, low, high = bootstrap_ci(lambda y, s: pathology_auroc(y, s)["macro"], labels[test_idx].numpy(), scores,
                                n_boot=200, seed=SEED)
print(f"test AUROC at 100% labels: {point:.3f} (95% bootstrap interval {low:.3f}-{high:.3f}, "
      f"{len(test_idx)} test studies)")
assert low <= point <= high

# %% [markdown]
# Keep the interval's width in mind whenever two models are compared on this test set: two AUROCs
# closer together than that may differ only by which studies happened to be in it. That is why
# later lessons compare methods with *paired* intervals, not by their points.
#
# ## 7. The report labeler
#
# Reports are the free supervision of this course, and also how generated reports are scored
# (lessons 05 and 07). `label_report` reads findings out of free text in the manner of the
# CheXpert labeler: find **mentions** with phrase lists, then decide each mention with rules for
# **negation** ("no", "without", "has resolved"), **uncertainty** ("possible", "cannot exclude")
# and their scope (the sentence, the clause, a list after "no"), then aggregate per finding.
# It works on real radiology language, not only on SynthCXR's grammar:

# %%
real_style = [
    "Heart size is normal. No focal consolidation, pleural effusion or pneumothorax.",
    "Small left pleural effusion with adjacent atelectasis. Cannot exclude early pneumonia.",
    "Interval resolution of the right pneumothorax. Right chest tube in place.",
    "Possible nodular opacity in the right upper lobe, recommend CT. Stable cardiomegaly.",
    "No acute cardiopulmonary process.",
]
symbol = {1: "+", 0: "-", -1: "?"}
for text in real_style:
    marks = "  ".join(f"[{symbol[m.label]}{m.finding}: '{m.phrase}' ({m.reason})]"
                      for m in extract_mentions(text))
    print(text)
    print("   ", label_report(text))
    print("   ", marks)

# %% [markdown]
# On the cohort: `labels_matrix` reads every report into a 0/1 matrix (uncertain counted as
# positive, as for clinical F1); compare with the labels the generator drew.

# %%
read = labels_matrix(cohort.reports)
agreement = (read[:, :-1] == cohort.true_labels.numpy()[:, :-1]).mean(0)
for name, a in zip(D.PATHOLOGIES, agreement):
    print(f"{name:17s} labeler agrees with the drawn label in {a:.1%} of studies")
medmm_lite.record("labeler_agreement", float(agreement.mean()))
assert agreement.min() > 0.98

# %% [markdown]
# Every row is close to full agreement (the assert stops the lesson if any finding falls below its
# bar). That matters later: when lessons 05 and 07 score generated reports with this labeler, a
# low clinical F1 is the generator's fault, not the labeler's. On real reports a rule-based
# labeler makes more mistakes, and its mistakes become the metric's.
#
# `clinical_f1` compares the findings of two reports: 1.0 for the same findings in other words,
# lower when a finding is missed or invented. Lexical metrics (BLEU) do not see the difference
# between "no effusion" and "effusion"; lesson 05 measures it.

# %%
reference = ["Small right pleural effusion. No pneumothorax."]
print("same findings, other words:", clinical_f1(reference, ["There is a small effusion on the right. No pneumothorax."])["micro_f1"])
print("negation flipped:         ", clinical_f1(reference, ["No pleural effusion. No pneumothorax."])["micro_f1"])

# %% [markdown]
# ## Summary
#
# - A WordPiece tokenizer trained on the reports, patches, attention checked by hand, a ViT with a
#   convolutional stem and a CNN that return global and local features, a text encoder and a
#   causal decoder with generation: the parts of every later lesson.
# - One training loop with warmup + cosine, clipping, evaluation and resumable checkpoints.
# - The baseline: a supervised ViT is label-hungry. Its AUROC at 1% and 10% of the labels is the
#   number each pretraining lesson tries to beat with reports instead of labels; the CNN's AUROC at
#   100% is the reference line for what this budget allows.
# - The report labeler turns free text into findings, with negation and uncertainty.
#
# The numbers this lesson recorded (later lessons print the same ones, from the same cached models):

# %%
medmm_lite.show_recorded()

# %% [markdown]
# ## Exercises
#
# 1. **Multi-head attention by hand.** Split `x` (batch 2, 16 tokens, dim 32) into 4 heads, apply
#    attention per head, merge the heads back. Compare with `F.scaled_dot_product_attention`.

# %% tags=["solution"]
def multi_head_attention(x, heads):
    b, n, d = x.shape
    h = x.reshape(b, n, heads, d // heads).transpose(1, 2)                 # (b, heads, n, d/heads)
    weights = torch.softmax(h @ h.transpose(-2, -1) / (d // heads) ** 0.5, dim=-1)
    return (weights @ h).transpose(1, 2).reshape(b, n, d)


# %% tags=["check"]
x = torch.randn(2, 16, 32)
h = x.reshape(2, 16, 4, 8).transpose(1, 2)
expected = F.scaled_dot_product_attention(h, h, h).transpose(1, 2).reshape(2, 16, 32)
assert multi_head_attention(x, 4).shape == (2, 16, 32), "the output has the input's shape"
torch.testing.assert_close(multi_head_attention(x, 4), expected, msg="scale by sqrt(head_dim), not sqrt(dim)")
print("correct")

# %% [markdown]
# 2. **Negation scope.** What should the labeler return for
#    "No pneumothorax, but a small left effusion is seen."? Write the dict, then check.

# %% tags=["solution"]
my_labels = {"Pleural Effusion": 1, "Pneumothorax": 0}

# %% tags=["check"]
truth = label_report("No pneumothorax, but a small left effusion is seen.")
assert my_labels == truth, f"'but' ends the scope of 'no'; the labeler says {truth}"
print("correct")

# %% [markdown]
# 3. **A CNN baseline.** Train `Classifier(backbones.image_encoder(P, kind="cnn"))` with
#    `train_classifier` on 10% of the labels (`label_subset`) and compare its test AUROC with the
#    ViT's. Which inductive bias helps with few labels?
#
# Next: lesson 02 learns from the reports instead of the labels: contrastive pretraining.
