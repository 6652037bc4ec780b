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
# # 09 Adaptation: every method, side by side
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medmm-course/medmm-course/blob/main/notebooks/09_adaptation.ipynb)
#
# A pretrained encoder is only useful once it is *adapted* to a clinical task. The review sorts
# the ways of doing that into four families, and this lesson runs all of them on **one**
# pretrained encoder (lesson 02's CLIP ViT), on the **same** labelled subsets, and measures what
# each costs and what each gets:
#
# | family | method here | what trains | labels it needs |
# |---|---|---|---|
# | fine-tuning | **full** | every weight of the encoder + a head | task labels |
# | | **partial** | the last transformer block + the final norm + a head | task labels |
# | | **LoRA** | a low-rank update of every attention and MLP matrix + a head | task labels |
# | frozen encoder + head | **linear probe** | a linear head on frozen features | task labels |
# | zero-shot prompting | **CLIP prompts** | nothing | none |
# | instruction tuning | **the VLM of lesson 07**, asked "is there ...?" | (its own training) | questions and answers |
#
# Plus the reference every pretraining paper compares with: the same ViT trained **from scratch**
# on the labels (lesson 01's baseline).
#
# You will: draw the label regimes (a few-shot one with k positives per finding, then 1%, 10% and
# 100% of the training labels), build the pieces of each method by hand and check them against
# `medmm_lite.adapt`, train everything, and read one figure and one table: AUROC per regime with
# bootstrap intervals, trainable parameters and training time per method.

# %% tags=["parameters"]
PROFILE = "auto"     # "smoke" (CI), "cpu" (laptop), "gpu", or "auto"
SEED = 0
DATASET = "synthcxr"
FEW_SHOT_K = 4       # the few-shot regime: k positive studies per finding
LORA_RANK = 4

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
import copy
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

import medmm_lite
from medmm_lite import data as D
from medmm_lite.adapt import (LoRALinear, apply_lora, extract_features, finetune, finetune_steps, head_from_probe,
                              label_subset, linear_probe, merge_lora, pathology_auroc, predict, prepare,
                              report_prompt_embeddings, supervised_baseline, zero_shot_classify)
from medmm_lite.adapt.finetune import LORA_TARGETS
from medmm_lite.data.findings import PATHOLOGIES
from medmm_lite.eval.metrics import interval, macro_auroc, patient_bootstrap_weights
from medmm_lite.models import count_parameters
from medmm_lite.plotting import label_efficiency
from medmm_lite.pretrain import clip as CL
from medmm_lite.vlm import classify_by_instruction, pretrain_vlm

P = medmm_lite.profile(PROFILE)
medmm_lite.seed_everything(SEED)
lesson_started = time.perf_counter()
print(medmm_lite.profile_summary(P))

# %% [markdown]
# ## 1. One pretrained encoder
#
# Lesson 02's CLIP model, trained on the training split's image-impression pairs without a
# single label (loaded from the cache, or trained here if the cache is empty). Its image tower,
# a ViT, is the encoder every method below starts from; its text tower serves zero-shot
# prompting; and lesson 07's VLM uses the same ViT, frozen, as its eyes.

# %%
data = D.prepare_data(P, seed=SEED, dataset=DATASET)
cohort = data.cohort
train_idx, test_idx = np.asarray(data.splits["train"]), np.asarray(data.splits["test"])
labels = cohort.labels[:, [D.FINDINGS.index(f) for f in PATHOLOGIES]]    # (N, 9): the nine pathologies
test_images, test_labels = cohort.images[test_idx], labels[test_idx]

clip_model, clip_info = CL.pretrain_clip(P, data, seed=SEED)
encoder = clip_model.image_encoder.eval()
print(f"{len(train_idx)} training and {len(test_idx)} test studies; the ViT encoder has "
      f"{count_parameters(encoder):,} parameters ({P.depth} blocks of width {P.dim}, {P.image_size} px images)")

# %% [markdown]
# ## 2. The label regimes
#
# Every method sees exactly the same labelled studies in each regime (`label_subset`, one seed):
#
# * **few-shot**: one random study, then topped up until each of the nine pathologies has
#   `FEW_SHOT_K` positive studies (the "k-shot" setting of the few-shot literature; a study with
#   two findings counts for both);
# * **1%, 10%, 100%** of the training studies, at random; with 1% of a small cohort a rare
#   finding might have no positive at all, so `label_subset` tops each pathology up to one.
#
# The test split is never touched by any of this.

# %%
regimes = {f"few-shot (k={FEW_SHOT_K})": label_subset(train_idx, cohort.labels, 1 / len(train_idx), seed=SEED,
                                                      min_positives=FEW_SHOT_K)}
for fraction in (0.01, 0.1, 1.0):
    regimes[f"{fraction:.0%}"] = label_subset(train_idx, cohort.labels, fraction, seed=SEED)
n_labels = {name: len(subset) for name, subset in regimes.items()}

print(f"{'regime':16s}{'studies':>8s}   positives per pathology")
for name, subset in regimes.items():
    positives = labels[subset].sum(0).int().tolist()
    print(f"{name:16s}{len(subset):8d}   {positives}")
    assert set(subset) <= set(train_idx.tolist()), "labelled studies come from the training split only"
assert (labels[regimes[f"few-shot (k={FEW_SHOT_K})"]].sum(0) >= FEW_SHOT_K).all()
assert all((labels[s].sum(0) >= 1).all() for s in regimes.values())

# %% [markdown]
# Read the positives column by column. The few-shot row has at least `FEW_SHOT_K` positive
# studies for every pathology (the assert checks it), while 1% of the studies drawn at random may
# leave a rare finding with the single positive the top-up guarantees. Every method below must
# learn each finding from these few positives, so expect the noisiest results in the first two
# rows.
#
# ## 3. Frozen encoder + linear head: the linear probe
#
# The cheapest adaptation trains no encoder weight at all. The frozen encoder runs once over every
# image (`extract_features`), and a linear head is trained on the stored features, so each regime
# costs seconds. Following MAE, the head is preceded by a **BatchNorm without scale and shift**: it
# only standardises each feature, so one learning rate suits every encoder's feature scale. Check
# that the library's probe is built that way:

# %%
started = time.perf_counter()
train_features = extract_features(encoder, cohort.images[train_idx])
test_features = extract_features(encoder, test_images)
feature_seconds = time.perf_counter() - started
row_of = {int(j): r for r, j in enumerate(train_idx)}           # cohort index -> row of train_features
print(f"features of {len(train_idx) + len(test_idx)} images in {feature_seconds:.1f} s: {tuple(train_features.shape)}")

probes = {}
for name, subset in regimes.items():
    rows = [row_of[int(j)] for j in subset]
    probes[name] = linear_probe(train_features[rows], labels[subset], test_features, steps=P.probe_steps, seed=SEED)
norm, head = probes["100%"].model
assert isinstance(norm, nn.BatchNorm1d) and not norm.affine and norm.weight is None, "non-affine BatchNorm first"
assert isinstance(head, nn.Linear) and head.in_features == encoder.dim
for name, probe in probes.items():
    print(f"probe, {name:16s} test macro AUROC {pathology_auroc(test_labels, probe.test_scores)['macro']:.3f}")

# %% [markdown]
# These four lines are the floor of everything that follows: every fine-tuning run below starts
# from its regime's probe (section 5), so what a method gains over these numbers is what moving
# the encoder's own weights bought.
#
# ## 4. What each fine-tuning method trains
#
# Fine-tuning methods differ in *which parameters move*. `medmm_lite.adapt.prepare(encoder, method)`
# copies the encoder, puts a head on it and sets `requires_grad` on exactly the parameters the
# method trains; `fit` (through `train_classifier`) gives the optimiser only those. First by hand.
#
# **Partial fine-tuning** freezes the patch embedding, the positions and every block but the last,
# and trains the last block, the final LayerNorm and the head. The early blocks compute generic
# features (edges, textures); the last one is the most task-specific.

# %%
mine = copy.deepcopy(encoder)
mine.requires_grad_(False)
for p in [*mine.blocks[-1].parameters(), *mine.norm.parameters()]:
    p.requires_grad_(True)
my_partial = {f"encoder.{n}" for n, p in mine.named_parameters() if p.requires_grad} | {"head.weight", "head.bias"}

library_partial = prepare(encoder, "partial", blocks=1)
assert my_partial == {n for n, p in library_partial.named_parameters() if p.requires_grad}
assert not any(p.requires_grad for p in library_partial.encoder.patch_embed.parameters())
print("partial fine-tuning trains:", sorted({".".join(n.split(".")[:3]) if ".blocks." in n else n.rsplit(".", 1)[0]
                                            for n in my_partial}))

# %% [markdown]
# **LoRA** (Hu et al. 2021) keeps every pretrained matrix $W$ frozen and learns a low-rank change:
#
# $$ y = W x + \tfrac{\alpha}{r}\, B A x, \qquad A \in \mathbb{R}^{r \times d_{in}},\; B \in \mathbb{R}^{d_{out} \times r}. $$
#
# $B$ starts at zero, so the adapted network computes exactly what the pretrained one did, and
# only $r (d_{in} + d_{out})$ numbers per matrix train instead of $d_{in} d_{out}$. One layer by hand,
# checked against the library's `LoRALinear`:

# %%
layer = encoder.blocks[0].attn.qkv
rank, alpha = LORA_RANK, 2 * LORA_RANK                          # alpha = 2 r, a common choice
torch.manual_seed(SEED)
wrapped = LoRALinear(copy.deepcopy(layer), rank=rank, alpha=alpha)
with torch.no_grad():
    wrapped.lora_B.normal_()                                    # pretend training moved B
    x = torch.randn(5, layer.in_features)
    mine_out = layer(x) + (alpha / rank) * x @ wrapped.lora_A.T @ wrapped.lora_B.T
    assert torch.allclose(mine_out, wrapped(x), atol=1e-5)
print(f"qkv layer {layer.in_features} -> {layer.out_features}: full {layer.weight.numel():,} weights, "
      f"LoRA rank {LORA_RANK}: {wrapped.lora_A.numel() + wrapped.lora_B.numel():,}")

# apply_lora wraps every attention (qkv, proj) and MLP (fc1, fc2) matrix; at init nothing changes
lora_model = prepare(encoder, "lora", rank=LORA_RANK, alpha=2 * LORA_RANK)
with torch.no_grad():
    same = torch.allclose(lora_model.encoder(test_images[:16]).global_features,
                          encoder(test_images[:16]).global_features, atol=1e-5)
assert same, "B = 0 at initialisation: the LoRA model must compute what the pretrained one does"
assert sum(isinstance(m, LoRALinear) for m in lora_model.modules()) == 4 * P.depth

# %% [markdown]
# Every method's trainable parameters, from the library:

# %%
built = {method: prepare(encoder, method, rank=LORA_RANK, alpha=2 * LORA_RANK)
         for method in ("probe", "partial", "lora", "full")}
trainable = {m: count_parameters(model, trainable_only=True) for m, model in built.items()}
total = count_parameters(built["full"])
for method, n in trainable.items():
    print(f"{method:8s} {n:>9,} trainable of {total:,} ({n / total:.2%})")
assert trainable["probe"] < trainable["lora"] < trainable["partial"] < trainable["full"] == total
medmm_lite.record("lora_trainable_fraction", trainable["lora"] / total)
medmm_lite.record("partial_trainable_fraction", trainable["partial"] / total)

# %% [markdown]
# The counts span orders of magnitude, from a head alone to every weight, in the order the assert
# fixes: probe, LoRA, partial, full. Keep the column in mind for section 10, which asks whether
# the AUROC follows the parameter count.
#
# ## 5. Start the head from the probe (LP-FT)
#
# A fine-tuning run that starts from a *random* head sends large, meaningless gradients into the
# pretrained encoder during its first steps, and can wreck the features before the head has
# learned anything (Kumar et al. 2022, "Fine-tuning can distort pretrained features"). The
# standard cures: a smaller learning rate for the encoder than for the head, or **linear probing,
# then fine-tuning** (LP-FT). `fit` has one learning rate, so the course does LP-FT, and it costs
# nothing extra: the probes of section 3 are already trained. Their BatchNorm (a fixed
# standardisation after training) could even fold into the head's linear layer,
# $W \frac{x - \mu}{\sigma} + b = \frac{W}{\sigma} x + \left(b - \frac{W}{\sigma}\mu\right)$:

# %%
probe = probes["10%"]
bn, linear = probe.model
sigma = torch.sqrt(bn.running_var + bn.eps)
my_head = nn.Linear(encoder.dim, len(PATHOLOGIES))
with torch.no_grad():
    my_head.weight.copy_(linear.weight / sigma)
    my_head.bias.copy_(linear.bias - (linear.weight / sigma) @ bn.running_mean)
    # The algebra is exact, float32 is not: the folded bias subtracts two large terms wherever a
    # feature's mean is far from zero in units of its spread. So check the fold in float64, against
    # the probe module itself (a float32 check passed with one CPU thread and failed with two).
    x64, w64 = test_features.double(), linear.weight.double()
    sigma64 = torch.sqrt(bn.running_var.double() + bn.eps)
    folded = x64 @ (w64 / sigma64).T + (linear.bias.double() - (w64 / sigma64) @ bn.running_mean.double())
    exact = copy.deepcopy(probe.model).double().eval()(x64)      # the probe's logits, in float64
    torch.testing.assert_close(folded, exact, rtol=0, atol=1e-9)
    # The library keeps the two steps instead: a fixed standardisation, then a trainable copy of
    # the probe's linear layer. Same map, and no cancellation in float32.
    library_head = head_from_probe(probe, nn.Linear(encoder.dim, len(PATHOLOGIES)))
    standardize, library_linear = library_head
    assert torch.equal(library_linear.weight, linear.weight) and torch.equal(library_linear.bias, linear.bias)
    assert not any(p.requires_grad for p in standardize.parameters()), "the standardisation stays fixed"
    folded_gap = (my_head(test_features).double() - exact).abs().max().item()
    library_gap = (library_head(test_features).double() - exact).abs().max().item()
assert library_gap < 1e-3, "the library's head computes the probe's logits"
print(f"in float32, against the probe's logits in float64: the folded head is off by up to {folded_gap:.1e}, the "
      f"library's two-step head by {library_gap:.1e}: fine-tuning starts from the probe's answer")

# %% [markdown]
# Does it matter? Full fine-tuning on 10% of the labels, once from a fresh head and once from the
# probe's head, at the same (fairly high) learning rate, the profile's own:

# %%
subset = regimes["10%"]
steps_10 = finetune_steps(len(subset), P.batch_size, P.probe_steps)
lpft_demo = {}
for start, head_init in (("fresh head", None), ("probe's head (LP-FT)", probes["10%"])):
    result = finetune(encoder, cohort.images[subset], labels[subset], method="full", steps=steps_10,
                      batch_size=P.batch_size, lr=P.lr, head=head_init, seed=SEED,
                      cache_key={"lesson": "09", "profile": P.name, "dataset": DATASET, "demo": start})
    lpft_demo[start] = pathology_auroc(test_labels, predict(result.model, test_images))["macro"]
    print(f"full fine-tuning at lr {P.lr:g} from a {start:22s}: test AUROC {lpft_demo[start]:.3f} "
          f"(the probe alone: {pathology_auroc(test_labels, probes['10%'].test_scores)['macro']:.3f})")

# %% [markdown]
# Compare the two runs with the probe alone (all three printed above): from a fresh head, the
# encoder's first updates follow a random target's gradients; from the probe's head, fine-tuning
# starts where the probe ended. Every fine-tuning run below starts from its regime's probe. The
# pretrained weights (full and partial fine-tuning) move at 0.3 x the profile's learning rate;
# LoRA's new factors, which start at zero, at the full rate (chosen on this cohort at 10% and 100%
# labels).

# %%
LEARNING_RATES = {"partial": 0.3 * P.lr, "lora": P.lr, "full": 0.3 * P.lr}
print({m: f"{lr:g}" for m, lr in LEARNING_RATES.items()})

# %% [markdown]
# ## 6. Train every method in every regime
#
# Steps follow the data: `finetune_steps` gives 30 epochs (at least 20 steps), capped at the
# profile's probe budget, so a few dozen studies are not trained for hundreds of steps (that would
# only memorise them) and the full training set gets `P.probe_steps`. Each model is cached, so a
# re-run loads it; `history.seconds` keeps the time its training took.

# %%
finetuned = {m: {} for m in LEARNING_RATES}
for name, subset in regimes.items():
    steps = finetune_steps(len(subset), P.batch_size, P.probe_steps)
    for method, lr in LEARNING_RATES.items():
        finetuned[method][name] = finetune(
            encoder, cohort.images[subset], labels[subset], method=method, steps=steps, batch_size=P.batch_size,
            lr=lr, head=probes[name], rank=LORA_RANK, alpha=2 * LORA_RANK, seed=SEED,
            cache_key={"lesson": "09", "profile": P.name, "dataset": DATASET, "regime": name})

test_scores = {"linear probe": {name: probe.test_scores for name, probe in probes.items()}}
for method, label in (("partial", "partial fine-tuning"), ("lora", f"LoRA (r={LORA_RANK})"),
                      ("full", "full fine-tuning")):
    test_scores[label] = {name: predict(run.model, test_images) for name, run in finetuned[method].items()}
for method, runs in finetuned.items():
    assert all(run.trainable == trainable[method] for run in runs.values())

# %% [markdown]
# ## 7. Zero-shot prompting: no labels at all
#
# CLIP's text tower turns a positive and a negative description of each finding into two points of
# the shared space; a test image's score is how much closer it is to the positive one. The
# descriptions are the ones lesson 02 chose on its validation split: for each finding, the mean
# embedding of the training impressions the labeler reads as positive, and of those it reads as
# negative (`report_prompt_embeddings`). No label of any image is used, only the reports' words.

# %%
encode_text = CL.text_embedder(clip_model, data.tokenizer)
train_reports = [cohort.reports[i] for i in train_idx]
positive, negative = report_prompt_embeddings(encode_text, [CL.impression(r) for r in train_reports], train_reports)
zero_shot_scores = zero_shot_classify(CL.embed_images(clip_model, test_images), positive, negative)
zero_shot = pathology_auroc(test_labels, zero_shot_scores)["macro"]
print(f"zero-shot test macro AUROC: {zero_shot:.3f} (trained parameters: 0, labels: 0)")

# %% [markdown]
# ## 8. Classification by an instruction-tuned VLM
#
# Lesson 07's VLM (the LLaVA recipe: the same CLIP ViT, frozen, a projector, a small language
# model pretrained on reports, then instruction-tuned on questions about the training images) is
# asked, per finding, "is there ...?"; the score is $p(\text{yes}) / (p(\text{yes}) + p(\text{no}))$
# of its first answer token (`classify_by_instruction`).
#
# Be careful with the comparison. Its instruction data were generated from the labels (and boxes)
# of **every** training study: it is a "100% labels, different supervision" method, not a
# label-free one, and it is plotted at 100%.

# %%
vlm_model, vlm_info = pretrain_vlm(P, data, seed=SEED)
vlm_scores = classify_by_instruction(vlm_model, test_images)        # (N, 10): every finding, FINDINGS order
vlm_auroc = pathology_auroc(cohort.labels[test_idx], torch.as_tensor(vlm_scores))["macro"]
vlm_trainable = count_parameters(vlm_model.lm) + count_parameters(vlm_model.projector)   # what stage 2 trains
vlm_seconds = sum(float(info.get("train_seconds", 0.0)) for phase, info in vlm_info["phases"].items()
                  if phase != "clip")
print(f"VLM by instruction: test macro AUROC {vlm_auroc:.3f}; its language model + projector: "
      f"{vlm_trainable:,} parameters, {vlm_seconds:.0f} s of training (report LM, stage 1, stage 2)")

# %% [markdown]
# ## 9. The reference: the same ViT trained from scratch
#
# Lesson 01's supervised baseline: the same architecture, randomly initialised, trained end to end
# on 1%, 10% and 100% of the labels (the same subsets: `label_subset` with the same seed), for
# `P.steps` steps each. Cached by lesson 01; trained here if the cache is empty.

# %%
supervised = supervised_baseline(P, data, seed=SEED, dataset=DATASET)
for fraction, result in supervised.items():
    assert result["n_labels"] == n_labels[f"{fraction:.0%}"], "the baseline must see the same subsets"
test_scores["from scratch (lesson 01)"] = {f"{f:.0%}": r["test_scores"] for f, r in supervised.items()}

# %% [markdown]
# ## 10. Results: one figure, one table
#
# AUROC on a few hundred test studies is itself uncertain. A bootstrap resamples the test studies
# with replacement and recomputes the metric; the 2.5 and 97.5 percentiles make a 95% interval.
# It needs thousands of AUROCs, so the resamples are written as weights (how many times each
# study was drawn; every study its own "patient" for the library's patient bootstrap) and the
# library's `macro_auroc` scores all of them in one call: the weighted Mann-Whitney form of AUROC,
# the probability that a random positive outranks a random negative.

# %%
y_test = test_labels.numpy()
resamples = patient_bootstrap_weights(np.arange(len(y_test)), n_boot=500, seed=SEED)   # (500, n_test)

results = {method: {name: pathology_auroc(test_labels, s)["macro"] for name, s in scores.items()}
           for method, scores in test_scores.items()}
intervals = {}
for method, scores in test_scores.items():
    intervals[method] = {name: interval(macro_auroc(y_test, scores[name], resamples)) for name in ("1%", "100%")}
zero_shot_ci = interval(macro_auroc(y_test, zero_shot_scores, resamples))
vlm_ci = interval(macro_auroc(y_test, vlm_scores[:, [D.FINDINGS.index(f) for f in PATHOLOGIES]], resamples))

# %%
wall = {"linear probe": feature_seconds + sum(p.history.seconds for p in probes.values())}
params = {"linear probe": trainable["probe"]}
for method, label in (("partial", "partial fine-tuning"), ("lora", f"LoRA (r={LORA_RANK})"),
                      ("full", "full fine-tuning")):
    wall[label] = sum(run.seconds for run in finetuned[method].values())
    params[label] = trainable[method]
wall["from scratch (lesson 01)"] = sum(r["history"].seconds for r in supervised.values())
params["from scratch (lesson 01)"] = count_parameters(supervised[1.0]["model"])

fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5.4), gridspec_kw={"width_ratios": [1.35, 1]})
curves = {m: {n_labels[name]: v for name, v in r.items()} for m, r in results.items()}
label_efficiency(curves, ax=ax, intervals={m: {n_labels[k]: ci for k, ci in c.items()} for m, c in intervals.items()},
                 references={"zero-shot prompts (0 labels)": zero_shot},
                 markers={"instruction-tuned VLM (all training labels, as Q&A)": (len(train_idx), vlm_auroc)},
                 title="test macro AUROC by labelled studies (bars: 95% bootstrap CI)")
short = {name: name.split(" ")[1].strip("()") if name.startswith("few") else name for name in n_labels}
ax.set_xticks(list(n_labels.values()), [f"{short[name]}\n{n}" for name, n in n_labels.items()], fontsize=8)
ax.minorticks_off()
names = list(params) + ["instruction-tuned VLM"]
counts = list(params.values()) + [vlm_trainable]
bars = bx.barh(names, counts, color=[f"C{i}" for i in range(len(params))] + ["C6"])
for bar, name in zip(bars, names):
    seconds = wall.get(name, vlm_seconds)
    bx.annotate(f"{seconds:.0f} s", (bar.get_width(), bar.get_y() + bar.get_height() / 2), xytext=(3, 0),
                textcoords="offset points", va="center", fontsize=7)
bx.set_xscale("log")
bx.invert_yaxis()
bx.set_xlabel("trainable parameters (log scale); label: training time, all regimes")
bx.set_title("what each method trains")
fig.tight_layout()

# %%
order = list(regimes)
print(f"{'method':28s}{'trainable':>11s}{'of model':>9s}{'train s':>9s}" + "".join(f"{n:>17s}" for n in order))
for method, r in results.items():
    cells = []
    for name in order:
        if name not in r:
            cells.append(f"{'-':>17s}")
        elif name in intervals[method]:
            low, high = intervals[method][name]
            cells.append(f"{r[name]:7.3f} [{low:.2f},{high:.2f}]")
        else:
            cells.append(f"{r[name]:17.3f}")
    print(f"{method:28s}{params[method]:>11,}{params[method] / total:>9.1%}{wall[method]:>9.0f}" + "".join(cells))
print(f"{'zero-shot prompts':28s}{0:>11,}{0:>9.1%}{0:>9.0f}" + f"{'(no labels)':>17s}" * 3
      + f"{zero_shot:7.3f} [{zero_shot_ci[0]:.2f},{zero_shot_ci[1]:.2f}]")
print(f"{'instruction-tuned VLM':28s}{vlm_trainable:>11,}{'':>9s}{vlm_seconds:>9.0f}" + f"{'':>17s}" * 3
      + f"{vlm_auroc:7.3f} [{vlm_ci[0]:.2f},{vlm_ci[1]:.2f}]")
print(f"labelled studies per regime: {n_labels}; test studies: {len(test_idx)}; VLM row: tuned on Q&A built "
      "from every training label; its trainable count is its language model + projector")

# %%
keys = {"linear probe": "probe", "partial fine-tuning": "partial", f"LoRA (r={LORA_RANK})": "lora",
        "full fine-tuning": "full", "from scratch (lesson 01)": "supervised"}
suffix = {f"few-shot (k={FEW_SHOT_K})": "fewshot", "1%": "1pct", "10%": "10pct", "100%": "100pct"}
for method, r in results.items():
    for name, value in r.items():
        medmm_lite.record(f"{keys[method]}_auroc_{suffix[name]}", value)
medmm_lite.record("zero_shot_auroc", zero_shot)
medmm_lite.record("vlm_auroc", vlm_auroc)
medmm_lite.record("lpft_gain_full_10pct", lpft_demo["probe's head (LP-FT)"] - lpft_demo["fresh head"])
for method in ("linear probe", "full fine-tuning", f"LoRA (r={LORA_RANK})"):
    assert results[method]["100%"] > 0.6, f"{method} should learn with every label"
    assert results[method]["100%"] > results[method]["1%"], f"{method}: more labels should help"
print(f"lesson time so far: {time.perf_counter() - lesson_started:.0f} s")

# %% [markdown]
# In the figure, read the x-axis as labelled studies on a log scale, and the error bars (at 1%
# and 100%) as 95% intervals: where two methods' bars overlap, this run cannot rank them there.
# The dashed horizontal line is zero-shot prompting (no labels), the star the VLM (questions
# built from every label). On the right, trainable parameters, again on a log scale, with each
# method's training time: a method that trains a small fraction of the weights and lands inside
# another's interval is the cheaper choice.
#
# Three comparisons carry the story; here they are as numbers (the 95% intervals of the 1% and
# 100% points say how large a difference must be to mean something):

# %%
adapted = ["linear probe", "partial fine-tuning", f"LoRA (r={LORA_RANK})", "full fine-tuning"]
for name in order:
    values = [results[m][name] for m in adapted]
    line = f"{name:16s} the four adapted methods span {min(values):.3f}-{max(values):.3f}"
    if name in results["from scratch (lesson 01)"]:
        line += f"; from scratch {results['from scratch (lesson 01)'][name]:.3f}"
    if name in intervals["linear probe"]:
        low, high = intervals["linear probe"][name]
        line += f"; the probe's 95% interval is {high - low:.3f} wide"
    print(line)
print(f"zero-shot (0 labels) {zero_shot:.3f}; instruction-tuned VLM {vlm_auroc:.3f}; "
      f"probe with every label {results['linear probe']['100%']:.3f}")

# %% [markdown]
# How to read it (the numbers are the table's and the lines above it):
#
# * **Labels help every method that uses them**: read each row from the few-shot column to the
#   100% column.
# * **Do the four ways of adapting the CLIP encoder differ?** Where their span (printed above) is
#   smaller than the probe's interval, this run cannot tell them apart. With larger encoders, more
#   data and longer runs, full fine-tuning usually pulls ahead at 100% labels; only a comparison on
#   the same subsets, with intervals, can say whether it did here.
# * **With a couple of dozen labels** the methods differ most, and the intervals are widest: one
#   seed and one subset per regime is a hint, not a finding, until other seeds and subsets repeat it.
# * **Against training from scratch** (lesson 01's baseline, trained for more steps than any
#   fine-tuning run): the gap to that row, column by column, is what pretraining on reports paid.
# * **Zero-shot prompting** used no label at all: set it beside the few-shot and 1% columns. Where
#   it is above them, thousands of impressions taught the model more than a couple of dozen labels
#   did, which is the review's case for image-text pretraining.
# * **The VLM** is judged like the others, as a classifier, but its questions were built from every
#   training label: compare it with the 100% column. Its small language model was trained from
#   scratch on a few thousand reports (lesson 07 shows what it does and does not read from the
#   image); set its number beside the probe's with every label, printed above: a dedicated head on
#   the same frozen features is the simpler classifier, the VLM the more general tool.
# * **Cost** (the wall-time column): the probe trains a few hundred numbers in seconds. LoRA trains a
#   few percent of the weights, but its backward pass still runs through every block, plus the
#   extra thin matrix products: its savings are optimiser memory and a small file per task, which
#   matter for large models more than wall time on a small one. Partial fine-tuning runs the
#   backward pass through the last block only.

# %% [markdown]
# ## Summary
#
# * The review's four adaptation families differ in what moves: everything (full fine-tuning), the
#   top of the network (partial), a low-rank update (LoRA), only a head (linear probe), nothing
#   (zero-shot), or a language model that was taught to answer questions (instruction tuning).
# * `medmm_lite.adapt.prepare` sets exactly those parameters trainable and `finetune` trains them
#   with the course's `fit`; frozen parts stay bit-identical (tests/test_finetune.py checks it).
# * Start fine-tuning from a trained head (LP-FT): a random head sends random gradients into the
#   pretrained encoder first (section 5 compares the two starts).
# * Compare methods on the same labelled subsets, with intervals, and against the same encoder
#   trained from scratch: the table of section 7 says, regime by regime, where pretraining paid
#   and where the choice of adaptation method mattered.
#
# ## Exercises
#
# 1. **Count LoRA's parameters by hand.** Without building a model, compute how many parameters
#    LoRA of rank 8 trains on this encoder (the `qkv`, `proj`, `fc1` and `fc2` matrices of every
#    block, plus the head: `encoder.dim` inputs, 9 outputs, with bias) and store it in
#    `lora8_params`.

# %% tags=["solution"]
lora8_params = 0
for block in encoder.blocks:
    for lin in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
        lora8_params += 8 * (lin.in_features + lin.out_features)
lora8_params += encoder.dim * len(PATHOLOGIES) + len(PATHOLOGIES)

# %% tags=["check"]
assert lora8_params is not None, "set lora8_params"
expected = count_parameters(prepare(encoder, "lora", rank=8, alpha=16), trainable_only=True)
assert lora8_params == expected, ("each wrapped matrix adds A (r x in) and B (out x r): r * (in + out); "
                                  "add the head's weights and biases")
print(f"correct: {lora8_params:,} parameters at rank 8")

# %% [markdown]
# 2. **Merge LoRA away.** Take the LoRA model trained on 100% of the labels
#    (`finetuned["lora"]["100%"].model`), make a deep copy, fold its low-rank updates into the
#    weights with `merge_lora`, and store the largest absolute difference between the two models'
#    test scores in `merge_difference`. After merging, the model is an ordinary ViT again: no extra
#    cost at inference.

# %% tags=["solution"]
lora_trained = finetuned["lora"]["100%"].model
merged = copy.deepcopy(lora_trained)
merge_lora(merged.encoder)
merge_difference = (predict(merged, test_images) - predict(lora_trained, test_images)).abs().max().item()
print(f"largest score difference after merging: {merge_difference:.2e}")

# %% tags=["check"]
assert merge_difference is not None, "set merge_difference"
assert merge_difference < 1e-4, "merge_lora folds (alpha/rank) B A into each weight: the scores should not change"
assert not any(isinstance(m, LoRALinear) for m in merged.modules()), "merge the copy: no LoRALinear left"
print("correct")

# %% [markdown]
# 3. **Partial fine-tuning, deeper.** Fine-tune the last **two** blocks (`blocks=2`) on the 10%
#    regime, from its probe, with the partial learning rate, and store its test macro AUROC in
#    `partial2_auroc`. Does training more of the encoder help with 10% of the labels?

# %% tags=["solution"]
subset = regimes["10%"]
partial2 = finetune(encoder, cohort.images[subset], labels[subset], method="partial", blocks=2,
                    steps=finetune_steps(len(subset), P.batch_size, P.probe_steps), batch_size=P.batch_size,
                    lr=LEARNING_RATES["partial"], head=probes["10%"], seed=SEED)
partial2_auroc = pathology_auroc(test_labels, predict(partial2.model, test_images))["macro"]
print(f"last two blocks: {partial2_auroc:.3f}; last block: {results['partial fine-tuning']['10%']:.3f}; "
      f"{partial2.trainable:,} trainable parameters")

# %% tags=["check"]
assert partial2_auroc is not None, "set partial2_auroc"
assert partial2.trainable > trainable["partial"], "blocks=2 trains one more block than blocks=1"
assert abs(partial2_auroc - pathology_auroc(test_labels, predict(partial2.model, test_images))["macro"]) < 1e-9, (
    "score the test images with predict(...) and take pathology_auroc's macro")
print("correct")
