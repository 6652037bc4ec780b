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
# # 11 Beyond text: labs, a second MRI contrast, and missing modalities
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medmm-course/medmm-course/blob/main/notebooks/11_beyond_text.ipynb)
#
# Most of the review's multimodal foundation models pair an image with its **report**. Not all:
# a second group pairs the image with **clinical data** (labs, vital signs, EHR fields), and a
# third pairs two **images** of the same patient (T1 and T2 MRI, PET and CT). The recipes are
# the ones of lessons 02-04; only the second tower changes. This lesson asks of each pair the
# course's question, *which modality pairs help, and by how much?*
#
# 1. **Image + labs at pretraining**: CLIP with the labs as the "text", against SimCLR at the
#    same budget. Which findings gain?
# 2. **Image + labs at prediction**: a fused classifier (`medmm_lite.fusion`) against image-only
#    and labs-only models, per finding, with intervals.
# 3. **A missing modality**: the fused model with the labs or the image removed, trained with and
#    without modality dropout (lesson 12 has the full table; here the short version).
# 4. **Image + image**: T1 <-> T2 contrastive pretraining against SimCLR on T1 alone; lesion
#    detection and segmentation (Dice) from T1 only.

# %% tags=["parameters"]
PROFILE = "auto"     # "smoke" (CI), "cpu" (laptop), "gpu", or "auto"
SEED = 0
DATASET = "synthcxr"
N_BOOT = 1000        # bootstrap resamples for every interval

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
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import medmm_lite
from medmm_lite import data as D
from medmm_lite import fusion as FU
from medmm_lite.adapt import extract_features, linear_probe, pathology_auroc
from medmm_lite.adapt.protocol import PATHOLOGY_COLUMNS
from medmm_lite.backbones import image_encoder
from medmm_lite.eval import auroc, dice
from medmm_lite.eval.metrics import macro_auroc, patient_bootstrap_weights, weighted_auroc
from medmm_lite.objectives import clip_loss
from medmm_lite.pretrain import labs_clip as LC
from medmm_lite.pretrain import mri_contrastive as MC
from medmm_lite.pretrain import simclr as SC

P = medmm_lite.profile(PROFILE)
medmm_lite.seed_everything(SEED)
lesson_started = time.perf_counter()
print(medmm_lite.profile_summary(P))

# Sizes. Both chest X-ray encoders train for the profile's steps at its batch size. The two MRI
# encoders train for half the steps, at batch 32 on the CPU (a two-tower step at 64 px and batch 32
# took ~0.26 s on one shared thread), on fewer phantoms than the cohort has studies.
CXR_STEPS = P.steps
MRI_STEPS = P.steps // 2
MRI_BATCH = 32 if P.device == "cpu" else P.batch_size
N_PHANTOMS = {"smoke": 240, "cpu": 800}.get(P.name, 2000)
FUSION_STEPS = max(P.probe_steps, 200)
print(f"X-ray pretraining: {CXR_STEPS} steps of {P.batch_size}; MRI: {MRI_STEPS} steps of {MRI_BATCH} on "
      f"{N_PHANTOMS} phantoms")

# %% [markdown]
# ## 1. The labs, and what they know
#
# The cohort of every lesson. Each study carries four labs: BNP (a heart-failure marker), white
# cell count, temperature and SpO2, drawn by `medmm_lite/data/clinical.py` from the patient's
# findings with noise (BNP rises with edema and cardiomegaly; WBC and temperature with
# consolidation; SpO2 falls with pneumothorax, consolidation and edema). Before any model: how
# well does each lab alone rank each finding? (AUROC of the lab's value, flipped when low means
# sick.) The labs are standardised with the training split's statistics (BNP on the log scale).
# We call a finding **lab-informed** when a lab measures it.

# %%
data = D.prepare_data(P, seed=SEED, dataset=DATASET)
cohort, splits = data.cohort, data.splits
train_idx, test_idx = np.asarray(splits["train"]), np.asarray(splits["test"])
Y = cohort.labels[:, PATHOLOGY_COLUMNS].numpy()                       # (N, 9)
FINDINGS = list(D.PATHOLOGIES)
labs_train_z, lab_stats = FU.standardise_labs(cohort.labs[train_idx], cohort.lab_names)
labs_z, _ = FU.standardise_labs(cohort.labs, cohort.lab_names, lab_stats)   # every study, one scale
print({k: len(v) for k, v in splits.items()}, "studies; labs:", cohort.lab_names)

lab_auroc = np.array([[max(a, 1 - a) for a in (auroc(Y[train_idx, j], labs_z[train_idx, i].numpy())["macro"]
                                               for i in range(labs_z.shape[1]))] for j in range(len(FINDINGS))])
best_lab = dict(zip(FINDINGS, lab_auroc.max(1)))
# The findings a lab *measures* (clinical.py draws BNP from edema and cardiomegaly, WBC and temperature
# from consolidation, SpO2 from pneumothorax, consolidation and edema): one lab alone ranks each of
# them with AUROC >= 0.8. The others are at most linked through co-occurrence (an effusion travels
# with edema, devices with sick patients) or not at all (a fracture, a nodule).
INFORMED = ["Cardiomegaly", "Pneumothorax", "Consolidation", "Edema"]
OTHERS = [f for f in FINDINGS if f not in INFORMED]
print("measured by a lab:", INFORMED)
print("not measured by any lab:", OTHERS)
print("best single-lab AUROC:", {f: round(float(a), 2) for f, a in best_lab.items()})
assert min(best_lab[f] for f in INFORMED) >= 0.8 and max(best_lab[f] for f in OTHERS) < 0.8, \
    "the labs measure exactly these four findings"

# %%
fig, ax = plt.subplots(figsize=(5.2, 3.4))
im = ax.imshow(lab_auroc, cmap="viridis", vmin=0.5, vmax=1.0, aspect="auto")
for j in range(len(FINDINGS)):
    for i in range(lab_auroc.shape[1]):
        ax.text(i, j, f"{lab_auroc[j, i]:.2f}", ha="center", va="center", fontsize=7,
                color="white" if lab_auroc[j, i] < 0.8 else "black")
ax.set_xticks(range(len(cohort.lab_names)), cohort.lab_names, fontsize=8)
ax.set_yticks(range(len(FINDINGS)), FINDINGS, fontsize=8)
ax.set_title("AUROC of one lab for one finding (training split)", fontsize=9)
fig.colorbar(im, ax=ax, fraction=0.04)
fig.tight_layout()

# %% [markdown]
# Find each row's brightest cell. Each of the four lab-informed findings has a lab that ranks it
# well on its own; the other five rows stay below that bar (the assert above checks both), and
# what signal they show is weak or borrowed from the findings they travel with. That split is the
# prediction the rest of the lesson tests: a second modality can teach only what it knows about.
#
# ## 2. Contrastive pretraining of images against labs
#
# CLIP (lesson 02) with the labs in the text's place. An image tower (the course's ViT) and a
# labs tower (a small MLP) each end in a projection head; for a batch of $N$ studies with image
# embeddings $u_i$ and labs embeddings $v_i$ (L2-normalised), and logit scale $s = 1/T$:
#
# $$\mathcal{L} = \tfrac12\Big[-\tfrac1N\sum_i \log\frac{e^{s\,u_i\cdot v_i}}{\sum_k e^{s\,u_i\cdot v_k}}
#   \;-\;\tfrac1N\sum_i \log\frac{e^{s\,u_i\cdot v_i}}{\sum_k e^{s\,u_k\cdot v_i}}\Big]$$
#
# "Which labs belong to this film?" Four noisy numbers cannot single out one study, so the loss
# stays well above zero. What the image tower *can* learn is what in the film predicts the labs
# (a big heart, edema, a consolidation), and nothing pushes it towards the findings the labs
# ignore. The prediction to test: probed per finding, this encoder beats an image-only SSL encoder
# on the lab-informed findings, and not on the others.
#
# The labs tower, by hand, then the loss by hand, checked against the library's step:

# %%
lab_tower = torch.nn.Sequential(torch.nn.Linear(4, P.dim), torch.nn.GELU(), torch.nn.Linear(P.dim, P.dim),
                                torch.nn.LayerNorm(P.dim))
library_tower = LC.LabsEncoder(4, P.dim)
lab_tower.load_state_dict(library_tower.net.state_dict())          # same weights: same features?
with torch.no_grad():
    assert torch.allclose(lab_tower(labs_train_z[:8]), library_tower(labs_train_z[:8]).global_features)
print("labs (8, 4) ->", tuple(lab_tower(labs_train_z[:8]).shape), "features, as the library's LabsEncoder")


def image_labs_loss(u, v, logit_scale):
    u, v = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
    logits = logit_scale * u @ v.T                     # (N, N): row i = image i against every study's labs
    target = torch.arange(len(u))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


model = LC.build_labs_clip(P, seed=SEED).eval()
batch = {"image": cohort.images[train_idx[:16]], "labs": labs_train_z[:16]}
with torch.no_grad():
    u, v = model(batch["image"], batch["labs"])
    ours = image_labs_loss(u, v, model.logit_scale())
    library = LC.labs_clip_step(model, batch, augment=None)[0]
print(f"loss by hand {ours.item():.4f}, library {library.item():.4f}, chance log(16) = {np.log(16):.4f}")
assert torch.allclose(ours, library, atol=1e-5) and torch.allclose(ours, clip_loss(u, v, model.logit_scale()))

# %% [markdown]
# Now the real run, cached (`pretrain_labs_clip`), and the baseline at the same budget: SimCLR
# (lesson 02) on the same training images, same ViT, steps and batch. An untrained ViT is the
# floor.

# %%
labs_clip, labs_info = LC.pretrain_labs_clip(P, data, seed=SEED, steps=CXR_STEPS)
simclr, simclr_info = SC.pretrain_simclr(P, data, seed=SEED, steps=CXR_STEPS)
with torch.random.fork_rng():
    torch.manual_seed(SEED)
    random_vit = image_encoder(P)
encoders = {"image-labs CLIP": labs_clip.image_encoder, "SimCLR (image only)": simclr.encoder,
            "random ViT": random_vit}
features = {name: extract_features(enc, cohort.images, device=P.device) for name, enc in encoders.items()}

fig, axes = plt.subplots(1, 2, figsize=(8, 2.6))
for ax, (name, info) in zip(axes, (("image-labs CLIP", labs_info), ("SimCLR", simclr_info))):
    h = info["history"]
    ax.plot(h.steps, h.loss, lw=0.8)
    ax.set_title(f"{name}: training loss", fontsize=9)
    ax.set_xlabel("step", fontsize=8)
axes[0].axhline(np.log(min(P.batch_size, len(train_idx))), color="gray", ls="--", lw=0.8, label="chance: log N")
axes[0].legend(fontsize=7)
fig.tight_layout()
h = labs_info["history"]
print(f"image-labs CLIP loss {np.mean(h.loss[:10]):.2f} -> {h.final_loss:.2f} "
      f"(chance {np.log(P.batch_size):.2f}); temperature {h.metrics['temperature'][-1]:.3f}")
assert h.final_loss < np.log(P.batch_size) - 0.3, "the image tower must learn to pick its labs out of the batch"

# %% [markdown]
# The image-labs loss falls below the chance line (the assert asks for a clear margin) but stays
# far above zero: four noisy numbers cannot single out one study in a batch, so the loss can only
# fall as far as the labs tell studies apart. SimCLR's loss has its own chance level, so do not
# compare the two curves' heights; each says only that its objective learned, and the probes
# below say what.
#
# ### Probing per finding, with intervals
#
# A linear probe on each frozen encoder (nine sigmoid outputs, the training split's labels), AUROC
# per finding on the test split. For intervals we resample test studies (a percentile bootstrap)
# and compute, on each resample, both encoders' AUROC, so the interval of their *difference* is
# paired. A resample is a row of weights, how many times each test study was drawn, and the
# library's `weighted_auroc` scores every finding on every resample at once (the weighted
# Mann-Whitney statistic: the chance a random positive outscores a random negative):

# %%
# every test study its own "patient": a bootstrap of studies, the same resamples everywhere
BOOT_WEIGHTS = patient_bootstrap_weights(np.arange(len(test_idx)), n_boot=N_BOOT, seed=SEED)   # (N_BOOT, n_test)


def per_finding_auroc(scores, columns=range(len(FINDINGS))):
    """{finding: (AUROC, bootstrap resamples (N_BOOT,))} on the test split; scores (n_test, 9)."""
    columns = list(columns)
    y, s = Y[test_idx][:, columns], np.asarray(scores)[:, columns]
    point, boot = weighted_auroc(y, s), weighted_auroc(y, s, BOOT_WEIGHTS)   # (k,), (N_BOOT, k); NaN: one class
    return {FINDINGS[j]: (float(point[i]), boot[:, i]) for i, j in enumerate(columns)}


def difference(a, b):
    """Point and 95% interval of AUROC(a) - AUROC(b), paired over the same resamples."""
    d = a[1] - b[1]
    low, high = np.nanpercentile(d, [2.5, 97.5])
    return a[0] - b[0], low, high


probe_scores = {}
for name, f in features.items():
    probe = linear_probe(f[train_idx], Y[train_idx], f[test_idx], steps=P.probe_steps, seed=SEED, device=P.device)
    probe_scores[name] = probe.test_scores.numpy()
probe_auroc = {name: per_finding_auroc(s) for name, s in probe_scores.items()}
print(f"{'finding':<18}" + "".join(f"{n:>22}" for n in probe_auroc) + f"{'CLIP - SimCLR [95% CI]':>28}")
gains = {}
for f in FINDINGS:
    gains[f] = difference(probe_auroc["image-labs CLIP"][f], probe_auroc["SimCLR (image only)"][f])
    mark = "*" if f in INFORMED else " "
    print(f"{f:<17}{mark}" + "".join(f"{probe_auroc[n][f][0]:>22.3f}" for n in probe_auroc)
          + f"{gains[f][0]:>+12.3f} [{gains[f][1]:+.3f}, {gains[f][2]:+.3f}]")
macro = {name: float(np.mean([v[0] for v in per.values()])) for name, per in probe_auroc.items()}
print("macro:", {k: round(v, 3) for k, v in macro.items()}, "  (* = lab-informed)")

# %%
def mean_gain(findings):
    """Mean over findings of the CLIP - SimCLR difference, with a paired interval."""
    d = np.mean([probe_auroc["image-labs CLIP"][f][1] - probe_auroc["SimCLR (image only)"][f][1]
                 for f in findings], axis=0)
    point = np.mean([gains[f][0] for f in findings])
    return point, *np.nanpercentile(d, [2.5, 97.5])


gain_informed, gain_others = mean_gain(INFORMED), mean_gain(OTHERS)
print(f"findings a lab measures: image-labs CLIP - SimCLR = {gain_informed[0]:+.3f} "
      f"[{gain_informed[1]:+.3f}, {gain_informed[2]:+.3f}]")
print(f"the other findings:      image-labs CLIP - SimCLR = {gain_others[0]:+.3f} "
      f"[{gain_others[1]:+.3f}, {gain_others[2]:+.3f}]")


def group_boot(findings):
    return np.mean([probe_auroc["image-labs CLIP"][f][1] - probe_auroc["SimCLR (image only)"][f][1]
                    for f in findings], axis=0)


contrast = gain_informed[0] - gain_others[0]
contrast_ci = np.nanpercentile(group_boot(INFORMED) - group_boot(OTHERS), [2.5, 97.5])
print(f"difference of the two: {contrast:+.3f} [{contrast_ci[0]:+.3f}, {contrast_ci[1]:+.3f}]")
medmm_lite.record("labs_clip_gain_informed_minus_others", contrast)
for name, short in (("image-labs CLIP", "labs_clip"), ("SimCLR (image only)", "simclr"), ("random ViT", "random")):
    medmm_lite.record(f"probe_macro_{short}", macro[name])
medmm_lite.record("labs_clip_gain_informed", gain_informed[0])
medmm_lite.record("labs_clip_gain_others", gain_others[0])
medmm_lite.record("labs_clip_minus_random", macro["image-labs CLIP"] - macro["random ViT"])

# %%
fig, ax = plt.subplots(figsize=(8, 2.8))
order = INFORMED + OTHERS
x = np.arange(len(order))
points = np.array([gains[f][0] for f in order])
err = np.array([[gains[f][0] - gains[f][1], gains[f][2] - gains[f][0]] for f in order]).T
ax.bar(x, points, color=["tab:orange" if f in INFORMED else "tab:gray" for f in order], yerr=err, capsize=3)
ax.axhline(0, color="black", lw=0.8)
ax.axvline(len(INFORMED) - 0.5, color="gray", ls=":", lw=0.8)
ax.set_xticks(x, order, rotation=25, ha="right", fontsize=8)
ax.set_ylabel("AUROC difference", fontsize=8)
ax.set_title("image-labs CLIP minus SimCLR, linear probe per finding (95% CI); orange: measured by a lab", fontsize=9)
fig.tight_layout()

# %% [markdown]
# Read the bars, not only the macro. The macro line compares image-labs CLIP and SimCLR overall,
# but that average hides a split by finding, and the split is the lesson (a bound of this lesson:
# the gain on the findings a lab measures exceeds the gain on the others by at least 0.05). On the
# findings a lab measures (BNP, WBC, temperature, SpO2: cardiomegaly, consolidation, edema,
# pneumothorax) look for image-labs CLIP's gains; on findings no lab measures (an effusion,
# devices, a lung lesion) for where it loses. The loss asks the
# image tower for what predicts the labs, and at a fixed budget the tower spends its capacity
# there, while SimCLR's views ask for everything that survives augmentation. The last printed
# lines put a number with an interval on the split. So: a second modality teaches the image
# encoder what it knows about, and only that; whether that beats an image-only objective overall
# depends on how much of the task it knows about. No label was used in either pretraining.
#
# ## 3. Image + labs at prediction time: late fusion
#
# The other way to use the labs: give them to the classifier. `medmm_lite.fusion.FusionClassifier`
# (written for lesson 12): the image features through a small layer, the standardised labs
# through an MLP, the two embeddings concatenated and an MLP head, one logit per finding. The
# image features are SimCLR's: the image encoder never saw a lab. Three models, same training
# studies: image only, labs only, both.

# %%
x_img = features["SimCLR (image only)"]
x_train, z_train, y_train = x_img[train_idx], labs_z[train_idx], torch.from_numpy(Y[train_idx])
x_test, z_test = x_img[test_idx], labs_z[test_idx]
fusion_models = {}
for name, use, p_drop in (("image only", ("image",), 0.0), ("labs only", ("labs",), 0.0),
                          ("image + labs", ("image", "labs"), 0.0)):
    fusion_models[name], _ = FU.train_fusion(x_train, z_train, y_train, use=use, modality_dropout=p_drop,
                                             steps=FUSION_STEPS, batch_size=P.batch_size * 4, seed=SEED,
                                             device=P.device)
fusion_scores = {name: FU.predict_fusion(m, x_test, z_test, image="image" in name,
                                         labs_present="labs" in name).numpy()
                 for name, m in fusion_models.items()}
fusion_auroc = {name: per_finding_auroc(s) for name, s in fusion_scores.items()}
print(f"{'finding':<18}" + "".join(f"{n:>14}" for n in fusion_auroc) + f"{'fused - image [95% CI]':>28}"
      + f"{'fused - labs':>14}")
fused_gain = {}
for f in FINDINGS:
    fused_gain[f] = difference(fusion_auroc["image + labs"][f], fusion_auroc["image only"][f])
    vs_labs = difference(fusion_auroc["image + labs"][f], fusion_auroc["labs only"][f])
    print(f"{f:<17}{'*' if f in INFORMED else ' '}" + "".join(f"{fusion_auroc[n][f][0]:>14.3f}" for n in fusion_auroc)
          + f"{fused_gain[f][0]:>+12.3f} [{fused_gain[f][1]:+.3f}, {fused_gain[f][2]:+.3f}]{vs_labs[0]:>+10.3f}")

# %%
def macro_over(table, findings):
    return float(np.mean([table[f][0] for f in findings]))


for name, short in (("image only", "image"), ("labs only", "labs"), ("image + labs", "fused")):
    for group, findings in (("informed", INFORMED), ("others", OTHERS)):
        medmm_lite.record(f"fusion_{short}_{group}", macro_over(fusion_auroc[name], findings))
fusion_gain_informed = macro_over(fusion_auroc["image + labs"], INFORMED) - macro_over(fusion_auroc["image only"], INFORMED)
fusion_gain_others = macro_over(fusion_auroc["image + labs"], OTHERS) - macro_over(fusion_auroc["image only"], OTHERS)
medmm_lite.record("fusion_gain_informed", fusion_gain_informed)
medmm_lite.record("fusion_gain_others", fusion_gain_others)
print(f"fused - image only, mean AUROC: lab-informed findings {fusion_gain_informed:+.3f}, "
      f"others {fusion_gain_others:+.3f}")
significant = [f for f in FINDINGS if fused_gain[f][1] > 0]
print("findings where the labs help with a 95% interval above zero:", significant)

fig, ax = plt.subplots(figsize=(8, 2.8))
width = 0.27
for k, (name, color) in enumerate((("image only", "tab:blue"), ("labs only", "tab:green"),
                                   ("image + labs", "tab:red"))):
    vals = np.array([fusion_auroc[name][f][0] for f in order])
    lo = np.array([np.nanpercentile(fusion_auroc[name][f][1], 2.5) for f in order])
    hi = np.array([np.nanpercentile(fusion_auroc[name][f][1], 97.5) for f in order])
    ax.bar(x + (k - 1) * width, vals, width, color=color, label=name, yerr=[vals - lo, hi - vals], capsize=2,
           error_kw={"lw": 0.7})
ax.axhline(0.5, color="black", lw=0.6, ls="--")
ax.axvline(len(INFORMED) - 0.5, color="gray", ls=":", lw=0.8)
ax.set_ylim(0.3, 1.0)
ax.set_xticks(x, order, rotation=25, ha="right", fontsize=8)
ax.set_ylabel("test AUROC", fontsize=8)
ax.legend(fontsize=7, ncol=3, loc="upper right")
ax.set_title("does the second modality help, per finding? (95% CI; lab-informed left of the line)", fontsize=9)
fig.tight_layout()

# %% [markdown]
# On the four lab-informed findings the labs alone are strong (SynthCXR's labs were *generated* from
# them), and the fused model lifts the image-only AUROC on each of them, mostly with intervals
# above zero (the printed list). On the other five the labs carry little (a fracture or a nodule:
# labs-only near 0.5; an effusion or devices: some signal, through the findings they travel with),
# and fusion moves the image-only AUROC by a hundredth or two, mostly inside the intervals. Fusion
# needs the labs *at test time*; pretraining with them (section 2) needs them only while training.
#
# ## 4. When a modality is missing
#
# Deployed where the labs are not drawn, the fused model meets a study without labs. `fusion`
# replaces a missing modality by a learned "missing" embedding. Trained with every input present,
# that embedding never receives a gradient; **modality dropout** (each training study loses its
# image or its labs with probability 0.3, never both) teaches the head to predict without either.
# Both models, each evaluated with both inputs, without labs, and without the image (lesson 12,
# section 4, has the full sensitivity table over all four models):

# %%
fusion_models["image + labs, dropout"], _ = FU.train_fusion(
    x_train, z_train, y_train, use=("image", "labs"), modality_dropout=0.3, steps=FUSION_STEPS,
    batch_size=P.batch_size * 4, seed=SEED, device=P.device)
informed_cols = [FINDINGS.index(f) for f in INFORMED]


def macro_informed(y, s):
    return auroc(np.asarray(y)[:, informed_cols], np.asarray(s)[:, informed_cols], names=INFORMED)["macro"]


models = {name: (fusion_models[name], ("image", "labs")) for name in ("image + labs", "image + labs, dropout")}
table = FU.sensitivity_table(models, x_test, z_test, Y[test_idx], macro_informed)
print(f"macro AUROC over the lab-informed findings\n{'trained / at test':<26}" + "".join(f"{c:>15}" for c in FU.CONDITIONS))
for name, row in table.items():
    print(f"{name:<26}" + "".join(f"{v:>15.3f}" for v in row.values()))
drops = {name: {c: row["image + labs"] - row[c] for c in ("image only", "labs only")} for name, row in table.items()}
for name, d in drops.items():
    print(f"{name}: drop without labs {d['image only']:+.3f}, without the image {d['labs only']:+.3f}")
medmm_lite.record("drop_no_labs_plain", drops["image + labs"]["image only"])
medmm_lite.record("drop_no_labs_dropout", drops["image + labs, dropout"]["image only"])
medmm_lite.record("drop_no_image_plain", drops["image + labs"]["labs only"])
medmm_lite.record("drop_no_image_dropout", drops["image + labs, dropout"]["labs only"])
saved = drops["image + labs"]["image only"] - drops["image + labs, dropout"]["image only"]
print(f"modality dropout saves {saved:+.3f} AUROC when the labs are missing")
medmm_lite.record("dropout_saves_no_labs", saved)
no_drop = fusion_models["image + labs"]
assert no_drop.missing_labs.norm().item() == 0, "never dropped in training: the missing embedding is still zero"

# %%
fig, ax = plt.subplots(figsize=(5.5, 2.6))
for k, (name, color) in enumerate((("image + labs", "tab:red"), ("image + labs, dropout", "tab:purple"))):
    ax.bar(np.arange(2) + (k - 0.5) * 0.38, [drops[name]["image only"], drops[name]["labs only"]], 0.38,
           color=color, label=f"trained: {name}")
ax.set_xticks(range(2), ["labs missing", "image missing"], fontsize=8)
ax.set_ylabel("AUROC lost", fontsize=8)
ax.axhline(0, color="black", lw=0.6)
ax.legend(fontsize=7)
ax.set_title("drop from both inputs (lab-informed findings)", fontsize=9)
fig.tight_layout()

# %% [markdown]
# Without dropout the fused model leans on the labs (the stronger input for these findings) and,
# with them removed, gets a missing embedding that was never trained: it loses more than the model
# trained with dropout, which has practised that case, and which gives up little or nothing when
# both inputs are there (the two "drop" lines above). Removing the image costs little
# either way: for these four findings the labs alone are nearly as good as both. Lesson 12 asks
# the deployment question with the full table (four models, all nine findings, a policy reading).
#
# ## 5. Image + image: contrastive pretraining across T1 and T2
#
# MRI phantoms (lesson 06): registered T1, T2 and FLAIR slices of the same brain, about half with
# white-matter lesions, and the true lesion mask. A lesion is bright on T2 and only a faint dark
# spot on T1. Two pretraining recipes on the same unlabelled training phantoms, same ViT, steps
# and batch:
#
# * **T1 <-> T2 contrastive**: a T1 tower and a T2 tower (`ContrastPairModel`). Two losses. The
#   global one is CLIP's between the two contrasts of each brain. The dense one uses what only a
#   registered pair has: pixel correspondence. The token of T1 patch $p$ of brain $i$ must find
#   the token of T2 patch $p$ of brain $i$ among 16 sampled patches of every brain in the batch
#   (`dense_pair_loss`, temperature 0.1). A patch holding a lesion is unlike any other on T2, so
#   its T1 token has to carry the lesion. Downstream we keep only the T1 tower.
# * **SimCLR on T1 alone**: two augmented views of the same T1 slice.
#
# At test time only T1 is given (the cheap, always-acquired sequence). The question: does having
# seen T2 while pretraining make the T1 encoder better at lesions?
#
# One choice differs from the chest lessons: the MRI encoders keep the original **linear** patch
# embedding. The lesion labels here are per patch and the lesions are a few pixels wide; the
# course's conv stem (lesson 01) lets each token see its neighbours' pixels, and in the smoke
# profile it pulled every arm's lesion Dice, the random ViT's included, down to the level of an
# empty mask. `P_mri` is the profile with that one field changed.

# %%
P_mri = P.with_(vit_stem="linear")
mri = D.generate_mri_phantoms(N_PHANTOMS, image_size=P.image_size, seed=SEED)
perm = np.random.default_rng(SEED).permutation(len(mri))
n_train = int(0.7 * len(mri))
mri_train, mri_test = mri.subset(perm[:n_train]), mri.subset(perm[n_train:])
print(f"{len(mri_train)} training and {len(mri_test)} test phantoms at {P.image_size} px; "
      f"{float(mri.has_lesion.float().mean()):.0%} with lesions, "
      f"lesion area {float(mri_test.lesion_mask.flatten(1).sum(1)[mri_test.has_lesion].mean()):.0f} px on average")
show = np.flatnonzero(mri_test.has_lesion.numpy())[:3]
fig, axes = plt.subplots(len(show), 3, figsize=(4.2, 1.45 * len(show)))
for r, i in enumerate(show):
    for c, (name, im) in enumerate((("T1", mri_test.t1), ("T2", mri_test.t2), ("lesion mask", mri_test.lesion_mask))):
        axes[r, c].imshow(im[i, 0], cmap="gray", vmin=0, vmax=1)
        axes[r, c].set_axis_off()
        if r == 0:
            axes[r, c].set_title(name, fontsize=8)
fig.tight_layout()

# %% [markdown]
# Follow each lesion from T2, where it is plain, to T1, where it is at most a faint darker spot.
# A T1 encoder that finds lesions must have learned that faint trace; pretraining against T2 is
# meant to teach it, since the T2 partner of a lesion patch is unlike any other patch.
#
# The global pair loss is section 2's CLIP loss with a T2 tower in the labs tower's place, and the
# dense loss is the same InfoNCE over patch tokens (fixed temperature): the hand-written pieces
# give the library's step.

# %%
pair_model = MC.build_contrast_pair(P_mri, seed=SEED).eval()
pair_batch = {"a": mri_train.t1[:16], "b": mri_train.t2[:16]}
with torch.no_grad():
    u, v, tok_a, tok_b = pair_model(pair_batch["a"], pair_batch["b"], tokens=True)
    global_by_hand = image_labs_loss(u, v, pair_model.logit_scale())
    a_, b_ = F.normalize(tok_a.flatten(0, 1), dim=-1), F.normalize(tok_b.flatten(0, 1), dim=-1)
    logits = a_ @ b_.T / MC.DENSE_TEMPERATURE          # every T1 patch of the batch against every T2 patch
    target = torch.arange(len(a_))
    dense_by_hand = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    assert torch.allclose(dense_by_hand, MC.dense_pair_loss(tok_a, tok_b, n_positions=None), atol=1e-5)
    step_loss, logs = MC.contrast_pair_step(pair_model, pair_batch, augment=None, dense_weight=1.0)
    assert torch.allclose(logs["global_loss"], global_by_hand, atol=1e-5)          # (the step samples 16 patches
    assert torch.allclose(step_loss, logs["global_loss"] + logs["dense_loss"], atol=1e-5)   # per image for the dense part)
print(f"tokens per image: {tok_a.shape[1]}; global loss {global_by_hand.item():.3f}, dense loss (all patches) "
      f"{dense_by_hand.item():.3f} = chance log({len(a_)}) ~ {np.log(len(a_)):.3f} before training")

# %%
t1t2, t1t2_info = MC.pretrain_t1t2(P_mri, mri_train.t1, mri_train.t2, seed=SEED, steps=MRI_STEPS, batch_size=MRI_BATCH)
t1_simclr, t1_simclr_info = MC.pretrain_t1_simclr(P_mri, mri_train.t1, seed=SEED, steps=MRI_STEPS, batch_size=MRI_BATCH)
with torch.random.fork_rng():
    torch.manual_seed(SEED)
    mri_random = image_encoder(P_mri)
mri_encoders = {"T1<->T2 contrastive": t1t2.encoder_a, "SimCLR on T1": t1_simclr.encoder,
                "random ViT": mri_random}
h = t1t2_info["history"]
print(f"T1<->T2 loss (global + dense) {np.mean(h.loss[:10]):.2f} -> {h.final_loss:.2f} (chance "
      f"{np.log(MRI_BATCH) + np.log(MRI_BATCH * MC.DENSE_POSITIONS):.2f}); "
      f"SimCLR on T1 {np.mean(t1_simclr_info['history'].loss[:10]):.2f} -> {t1_simclr_info['history'].final_loss:.2f}")
chance = np.log(MRI_BATCH) + np.log(MRI_BATCH * MC.DENSE_POSITIONS)
assert h.final_loss < chance - 1.0, "each T1 (and each T1 patch) must find its own T2 in the batch"

# %% [markdown]
# ### Lesion detection and segmentation from T1, encoder frozen
#
# **Segmentation**: a small head on the frozen patch tokens (`PatchSegHead`: one MLP per token
# that predicts the lesion mask of that token's pixels), trained with BCE + soft Dice on half the
# training phantoms (lesion pixels weighted 30 times, as they are under 1% of a slice), Dice on
# the test phantoms that have lesions. **Detection**: does the slice hold a lesion? Two scores, each
# by AUROC on the test phantoms: the segmentation head's highest pixel probability, and a linear
# probe on the encoder's global feature (all training labels). Everything reads only frozen T1
# features.

# %%
mri_results = {}
seg_masks = {}
n_seg = len(mri_train) // 2
les_test = mri_test.has_lesion.numpy()
rows_les = np.random.default_rng(SEED).integers(0, les_test.sum(), size=(N_BOOT, les_test.sum()))
weights_all = patient_bootstrap_weights(np.arange(len(les_test)), n_boot=N_BOOT, seed=SEED + 1)
y_det = les_test.astype(float)
for name, enc in mri_encoders.items():
    g_train, l_train = MC.extract_patch_features(enc, mri_train.t1, device=P.device)
    g_test, l_test = MC.extract_patch_features(enc, mri_test.t1, device=P.device)
    head = MC.train_seg_head(l_train[:n_seg], mri_train.lesion_mask[:n_seg], enc.grid_size, P.patch_size,
                             steps=P.probe_steps, seed=SEED, device=P.device, progress=False)
    prob = MC.lesion_probabilities(head, l_test)
    masks = (prob > 0.5).float()
    d = dice(masks[les_test], mri_test.lesion_mask[les_test]).numpy()
    det_seg = prob.flatten(1).max(1).values.numpy()
    probe = linear_probe(g_train, mri_train.has_lesion.float(), g_test, steps=P.probe_steps, seed=SEED,
                         device=P.device)
    det_global = probe.test_scores[:, 0].numpy()
    mri_results[name] = {"dice": float(d.mean()), "dice_boot": d[rows_les].mean(1),
                         "auroc": auroc(y_det, det_seg)["macro"],
                         "auroc_boot": macro_auroc(y_det, det_seg, weights_all),
                         "auroc_global": auroc(y_det, det_global)["macro"]}
    seg_masks[name] = masks
for name, r in mri_results.items():
    a_lo, a_hi = np.nanpercentile(r["auroc_boot"], [2.5, 97.5])
    d_lo, d_hi = np.percentile(r["dice_boot"], [2.5, 97.5])
    print(f"{name:<22} Dice {r['dice']:.3f} [{d_lo:.3f}, {d_hi:.3f}]   detection AUROC from the head "
          f"{r['auroc']:.3f} [{a_lo:.3f}, {a_hi:.3f}], from the global feature {r['auroc_global']:.3f}")
for name, short in (("T1<->T2 contrastive", "t1t2"), ("SimCLR on T1", "t1_simclr"), ("random ViT", "random")):
    medmm_lite.record(f"mri_auroc_{short}", mri_results[name]["auroc"])
    medmm_lite.record(f"mri_dice_{short}", mri_results[name]["dice"])
    medmm_lite.record(f"mri_auroc_global_{short}", mri_results[name]["auroc_global"])

# %%
def paired(metric, a, b):
    d = mri_results[a][f"{metric}_boot"] - mri_results[b][f"{metric}_boot"]
    return mri_results[a][metric] - mri_results[b][metric], *np.nanpercentile(d, [2.5, 97.5])


for metric in ("auroc", "dice"):
    for other in ("SimCLR on T1", "random ViT"):
        p_, lo, hi = paired(metric, "T1<->T2 contrastive", other)
        print(f"{metric:>5}: T1<->T2 - {other:<12} {p_:+.3f} [{lo:+.3f}, {hi:+.3f}]")
medmm_lite.record("mri_dice_t1t2_minus_simclr", paired("dice", "T1<->T2 contrastive", "SimCLR on T1")[0])
medmm_lite.record("mri_auroc_t1t2_minus_simclr", paired("auroc", "T1<->T2 contrastive", "SimCLR on T1")[0])
medmm_lite.record("mri_dice_t1t2_minus_random", paired("dice", "T1<->T2 contrastive", "random ViT")[0])

# %%
show = np.flatnonzero(les_test)[:3]
cols = [("T1 (input)", None)] + [(n, n) for n in mri_encoders]
fig, axes = plt.subplots(len(show), len(cols), figsize=(1.5 * len(cols), 1.5 * len(show)))
for r, i in enumerate(show):
    for c, (title, name) in enumerate(cols):
        ax = axes[r, c]
        ax.imshow(mri_test.t1[i, 0], cmap="gray", vmin=0, vmax=1)
        ax.contour(mri_test.lesion_mask[i, 0], levels=[0.5], colors="cyan", linewidths=0.6)
        if name is not None:
            ax.imshow(np.ma.masked_equal(seg_masks[name][i, 0].numpy(), 0), cmap="autumn", alpha=0.7)
        ax.set_axis_off()
        if r == 0:
            ax.set_title(title, fontsize=7)
fig.suptitle("predicted lesion (red) vs true outline (cyan), from frozen T1 features", fontsize=8)
fig.tight_layout()

# %% [markdown]
# Read the intervals of the last four lines. The lesson's bounds hold the T1 encoder pretrained
# against T2 above SimCLR on T1, in detection and in segmentation; against the untrained ViT, read
# whether each interval clears zero. Two more things to read. Where SimCLR is *below* the
# untrained ViT, its objective rewarded what survives augmentation of the whole slice (head shape
# and size, ventricles) and washed out small local detail that a random projection of the pixels
# still keeps. And where the global feature's AUROC is near 0.5 it knows nothing about lesions: a
# few pixels do not move a pooled vector. Exercise 4 asks which of the two T1<->T2 losses does the
# work. In the smoke profile
# (32 px, lesions of ~7 px, 150 steps) the three encoders cannot be told apart: every
# interval covers zero.
#
# ## Summary
#
# Which modality pairs help, measured on one budget:
#
# - **Image + labs, pretraining.** CLIP with the labs as the second tower teaches the image
#   encoder what the labs measure (the lab-informed findings gain over SimCLR) and costs it
#   elsewhere (findings no lab measures): overall it does not beat image-only SSL.
# - **Image + labs, prediction.** Fusing the labs into the classifier lifts the lab-informed
#   findings above the image alone; on the others it barely moves them.
# - **A missing modality.** A fused model trained with both inputs always present loses more
#   without its labs than one trained with modality dropout. Lesson 12 has the full table.
# - **Image + image.** Registered T1/T2 pairs allow a dense, patch-to-patch contrastive loss; its
#   T1 encoder finds lesions from T1 alone better than SimCLR on T1 (cpu profile; too small to tell
#   in smoke), and an untrained ViT is a strong baseline for segmentation that SimCLR falls below.
#
# The pattern across all three pairs: the second modality helps where it carries information
# about the target, in proportion to how much, and can cost where it does not.

# %%
print(f"lesson ran in {time.perf_counter() - lesson_started:.0f} s")

# %% [markdown]
# ## Exercises
#
# 1. **Late fusion by averaging.** The simplest fusion needs no new model: average the image-only
#    and labs-only models' probabilities. Compute `avg_scores` (n_test, 9) from
#    `fusion_scores["image only"]` and `fusion_scores["labs only"]`, and `avg_informed`, its macro
#    AUROC over `INFORMED` (use `macro_over` and `per_finding_auroc`). Is it close to the learned
#    fusion's?

# %% tags=["solution"]
avg_scores = 0.5 * (fusion_scores["image only"] + fusion_scores["labs only"])
avg_informed = macro_over(per_finding_auroc(avg_scores), INFORMED)
print(f"averaged probabilities: {avg_informed:.3f}; learned fusion: {macro_over(fusion_auroc['image + labs'], INFORMED):.3f}; "
      f"image only: {macro_over(fusion_auroc['image only'], INFORMED):.3f}")

# %% tags=["check"]
assert avg_scores is not None and np.shape(avg_scores) == fusion_scores["image only"].shape, \
    "one score per test study and finding: combine the two (n_test, 9) arrays"
assert np.allclose(avg_scores, (fusion_scores["image only"] + fusion_scores["labs only"]) / 2), \
    "the mean of the two models' probabilities"
assert abs(avg_informed - macro_over(per_finding_auroc(avg_scores), INFORMED)) < 1e-9, \
    "macro AUROC of avg_scores over the INFORMED findings"
print("correct")

# %% [markdown]
# 2. **Which lab carries it?** Retrain the fused model (`FU.train_fusion`, as in section 3) with
#    one lab column set to zero (its training mean) in both the training and the test labs, for
#    each of the four labs, and store the fused model's macro AUROC over `INFORMED` in a dict
#    `without_lab` (lab name -> AUROC). Which lab's removal costs most? Compare with section 1's
#    heatmap.

# %% tags=["solution"]
without_lab = {}
for i, lab in enumerate(cohort.lab_names):
    z_tr, z_te = z_train.clone(), z_test.clone()
    z_tr[:, i], z_te[:, i] = 0.0, 0.0
    m, _ = FU.train_fusion(x_train, z_tr, y_train, steps=FUSION_STEPS, batch_size=P.batch_size * 4, seed=SEED,
                           device=P.device, progress=False)
    without_lab[lab] = macro_over(per_finding_auroc(FU.predict_fusion(m, x_test, z_te).numpy()), INFORMED)
print({k: round(v, 3) for k, v in without_lab.items()},
      "with all labs:", round(macro_over(fusion_auroc["image + labs"], INFORMED), 3))

# %% tags=["check"]
assert without_lab is not None and set(without_lab) == set(cohort.lab_names), "one entry per lab name"
assert all(0.4 < v < 1 for v in without_lab.values()), "AUROCs of the fused model, over the INFORMED findings"
assert min(without_lab, key=without_lab.get) in ("BNP", "WBC", "SpO2"), \
    "the lab whose removal hurts most should be one that informs several findings: check that you zeroed one column"
print("correct: removing", min(without_lab, key=without_lab.get), "costs most")

# %% [markdown]
# 3. **A threshold for Dice.** `predict_masks` thresholds at 0.5. For the T1<->T2 encoder, pick
#    the threshold from `(0.2, 0.3, 0.4, 0.5, 0.6)` that maximises the mean Dice on the *training*
#    phantoms the head did not see (`mri_train` rows `n_seg:`), then report the test Dice at that
#    threshold in `tuned_dice`. (Choosing it on the test set would overstate it.)

# %% tags=["solution"]
enc = mri_encoders["T1<->T2 contrastive"]
_, l_tr = MC.extract_patch_features(enc, mri_train.t1, device=P.device)
_, l_te = MC.extract_patch_features(enc, mri_test.t1, device=P.device)
head = MC.train_seg_head(l_tr[:n_seg], mri_train.lesion_mask[:n_seg], enc.grid_size, P.patch_size,
                         steps=P.probe_steps, seed=SEED, device=P.device, progress=False)
held = np.flatnonzero(mri_train.has_lesion.numpy()[n_seg:]) + n_seg
val_dice = {t: dice(MC.predict_masks(head, l_tr[held], threshold=t), mri_train.lesion_mask[held]).mean().item()
            for t in (0.2, 0.3, 0.4, 0.5, 0.6)}
best_t = max(val_dice, key=val_dice.get)
tuned_dice = dice(MC.predict_masks(head, l_te[les_test], threshold=best_t), mri_test.lesion_mask[les_test]).mean().item()
print({t: round(v, 3) for t, v in val_dice.items()}, "-> threshold", best_t, "test Dice", round(tuned_dice, 3),
      "(at 0.5:", round(mri_results["T1<->T2 contrastive"]["dice"], 3), ")")

# %% tags=["check"]
assert tuned_dice is not None and 0 <= tuned_dice <= 1, "a Dice is between 0 and 1"
assert best_t in (0.2, 0.3, 0.4, 0.5, 0.6) and val_dice[best_t] == max(val_dice.values()), \
    "choose the threshold with the highest Dice on the held-out training phantoms"
print("correct")

# %% [markdown]
# 4. **Which loss does the work?** Pretrain the T1<->T2 model with the global loss alone
#    (`MC.pretrain_t1t2(..., dense_weight=0.0)`, same steps and batch as in section 5), train a
#    segmentation head on its frozen T1 tokens as in section 5, and store the test Dice (phantoms
#    with lesions, threshold 0.5) in `dice_global_only`. Compare with the dense model and SimCLR.

# %% tags=["solution"]
global_only, _ = MC.pretrain_t1t2(P_mri, mri_train.t1, mri_train.t2, seed=SEED, steps=MRI_STEPS, batch_size=MRI_BATCH,
                                  dense_weight=0.0, progress=False)
_, l_tr = MC.extract_patch_features(global_only.encoder_a, mri_train.t1, device=P.device)
_, l_te = MC.extract_patch_features(global_only.encoder_a, mri_test.t1, device=P.device)
head = MC.train_seg_head(l_tr[:n_seg], mri_train.lesion_mask[:n_seg], global_only.encoder_a.grid_size, P.patch_size,
                         steps=P.probe_steps, seed=SEED, device=P.device, progress=False)
dice_global_only = dice(MC.predict_masks(head, l_te[les_test]), mri_test.lesion_mask[les_test]).mean().item()
print(f"Dice: global loss only {dice_global_only:.3f}; global + dense {mri_results['T1<->T2 contrastive']['dice']:.3f}; "
      f"SimCLR on T1 {mri_results['SimCLR on T1']['dice']:.3f}; random ViT {mri_results['random ViT']['dice']:.3f}")

# %% tags=["check"]
assert dice_global_only is not None and 0 <= dice_global_only <= 1, "a mean Dice is between 0 and 1"
assert dice_global_only != mri_results["T1<->T2 contrastive"]["dice"], \
    "this is a different encoder: pass dense_weight=0.0 to pretrain_t1t2"
print("correct")
