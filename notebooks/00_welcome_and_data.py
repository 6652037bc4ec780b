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
# # 00 Welcome, and the SynthCXR cohort
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medmm-course/medmm-course/blob/main/notebooks/00_welcome_and_data.ipynb)
#
# This course builds multimodal foundation models for medical imaging from scratch: every
# pretraining strategy and every adaptation method of the review *Multimodal Foundation Models
# for Medical Imaging* (Huang, Jensen et al.), each trained here on real tensors.
#
# This first lesson shows the map of the course and the data every lesson uses: **SynthCXR**, a
# procedural chest X-ray cohort that ships inside `medmm_lite`. Each study has an image, a
# free-text report, labels for ten CheXpert findings, boxes, a patient, a site and lab values.
# It needs no download and no credentials, and a seed fixes every pixel and every word.
#
# You will: draw the cohort, read its reports, check that reports and labels agree, look at how
# sites and labs differ, split by patient, and write a dataset card.

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
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

import medmm_lite
from medmm_lite import data as D
from medmm_lite.eval import label_report
from medmm_lite.plotting import draw_course_map, show_images

P = medmm_lite.profile(PROFILE)
medmm_lite.seed_everything(SEED)
print(medmm_lite.profile_summary(P))

# %% [markdown]
# ## 1. The map
#
# The review sorts multimodal foundation models by how they are **pretrained** (what the model
# is asked to do with unlabelled image-text pairs) and how they are **adapted** to a clinical
# task. Each box is a lesson. Lessons 10-12 then ask the review's questions: does the second
# modality help, for whom, and how do we know?

# %%
draw_course_map();

# %% [markdown]
# ## 2. Generate the cohort
#
# `generate_cohort` draws every study at once (vectorised over the batch) and caches the result
# on disk under `$MEDMM_DATA`, keyed by its arguments and the generator's version: the second
# call is a file read. The profile decides how many studies and how many pixels.

# %%
started = time.perf_counter()
cohort = D.load_dataset(DATASET, n_studies=P.n_studies, image_size=P.image_size, seed=SEED)
print(f"{len(cohort)} studies in {time.perf_counter() - started:.2f} s")
print("images:", tuple(cohort.images.shape), cohort.images.dtype,
      f"range [{cohort.images.min():.2f}, {cohort.images.max():.2f}]")
print("labels:", tuple(cohort.labels.shape), "columns:", D.FINDINGS)
print("patients:", len(np.unique(cohort.patient_ids)), " sites:", cohort.site_names)

# %%
# NBVAL_CHECK_OUTPUT
print(len(D.FINDINGS), "findings:", ", ".join(D.FINDINGS))
print(len(D.LAB_NAMES), "labs:", ", ".join(D.LAB_NAMES))

# %% [markdown]
# ## 3. Look at it
#
# Sixteen studies with their findings' boxes. Some findings are large and global (a big heart,
# an effusion filling a lung base); others are small and local (a nodule, a rib fracture, a
# small apical pneumothorax). That difference matters in lesson 03, which asks whether aligning
# words with image regions finds the small ones better than a single global embedding does.

# %%
pick = np.arange(16)
titles = [", ".join(f for f, v in zip(D.FINDINGS, cohort.labels[i]) if v) for i in pick]
show_images(cohort.images[pick], titles=titles, boxes=[cohort.boxes[i] for i in pick], ncols=8, size=1.8);

# %% [markdown]
# Each finding has its own look. One example of each, with the box the generator drew it in:

# %%
examples, names = [], []
for k, name in enumerate(D.FINDINGS):
    candidates = np.flatnonzero(cohort.labels[:, k].numpy() == 1)
    if len(candidates):
        examples.append(int(candidates[0]))
        names.append(name)
show_images(cohort.images[examples], titles=names,
            boxes=[[b for b in cohort.boxes[i] if b["finding"] == n] for i, n in zip(examples, names)],
            ncols=5, size=2.2);

# %% [markdown]
# Look inside each box before reading its title. Some findings change the whole chest at a glance;
# others are a few faint pixels even when you know where to look. A model has the same trouble,
# so when a later lesson reports one average score, look for these faint findings in its
# per-finding numbers: that is where an average hides what a model misses.
#
# ## 4. Reports
#
# Reports are written by a grammar with a FINDINGS and an IMPRESSION section, synonyms,
# negations ("No pleural effusion."), uncertainty for subtle findings ("cannot exclude"),
# location and severity, and a style per radiologist: the same finding is not always said the
# same way, as in real reports.

# %%
for i in range(4):
    present = [f for f, v in zip(D.FINDINGS, cohort.labels[i]) if v]
    print(f"study {i}  radiologist {cohort.radiologist[i]}  labels: {present}")
    print("  " + cohort.reports[i].replace("\n", "\n  "))
    print()

# %% [markdown]
# ### Do reports and labels agree?
#
# A label the report contradicts would teach a contrastive model nonsense. We read every report
# back with the course's **report labeler** (`medmm_lite.eval.label_report`, built in the manner of
# the CheXpert labeler and explained in lesson 01): each mentioned finding comes back as 1
# (positive), 0 (negated) or -1 (uncertain). A study agrees when every present finding is stated
# (positive or uncertain) and no absent finding is asserted.

# %%
print(cohort.reports[0])
print(label_report(cohort.reports[0]))

# %%
def agrees(report, labels):
    read = label_report(report)
    for k, name in enumerate(D.PATHOLOGIES):
        stated = read.get(name) in (1, -1)
        if bool(labels[k]) != stated:
            return False
    return True


true_labels = cohort.true_labels.numpy()
agreement = np.mean([agrees(r, y) for r, y in zip(cohort.reports, true_labels)])
medmm_lite.record("report_label_agreement", agreement)
uncertain = np.mean([-1 in label_report(r).values() for r in cohort.reports[:500]])
print(f"reports that agree with their labels: {agreement:.1%}; reports with an uncertain mention: {uncertain:.1%}")
assert agreement > 0.99

# %% [markdown]
# `labels` can differ from `true_labels`: the `label_noise` knob flips labels *after* the report
# is written, to model annotation error. The default is no noise.

# %% [markdown]
# ## 5. How common is each finding?

# %%
prevalence = cohort.labels.mean(0).numpy()
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
axes[0].barh(D.FINDINGS[::-1], prevalence[::-1], color="tab:blue")
axes[0].set_xlabel("fraction of studies")
axes[0].set_title("prevalence")
co = (cohort.labels.T @ cohort.labels / len(cohort)).numpy()
im = axes[1].imshow(co, cmap="viridis")
axes[1].set_xticks(range(len(D.FINDINGS)), [f[:10] for f in D.FINDINGS], rotation=60, fontsize=7)
axes[1].set_yticks(range(len(D.FINDINGS)), [f[:10] for f in D.FINDINGS], fontsize=7)
axes[1].set_title("co-occurrence (fraction of studies with both)")
fig.colorbar(im, ax=axes[1])
fig.tight_layout()

# %% [markdown]
# On the left, the shortest bars are the findings whose scores in later lessons rest on the fewest
# positive test studies, and so carry the widest intervals. On the right, findings co-occur as
# they do in real cohorts: edema with an enlarged heart and effusions, for instance. A model can
# exploit such correlations instead of seeing the finding itself: a shortcut, like the site
# signals of section 6, whose cost lesson 12 measures on an unseen site.

# %% [markdown]
# ## 6. Sites, patients and scanners
#
# Each site has its own scanner (contrast, noise, sharpness) and its own case mix. Lesson 12 trains
# on some sites and tests on an unseen one.

# %%
n_sites = len(cohort.site_names)
fig, axes = plt.subplots(1, n_sites + 1, figsize=(3.2 * (n_sites + 1), 3))
for s, name in enumerate(cohort.site_names):
    at_site = np.flatnonzero(cohort.site == s)
    axes[s].imshow(cohort.images[at_site].mean(0)[0], cmap="gray", vmin=0, vmax=1)
    axes[s].set_title(f"{name}: mean of {len(at_site)} images", fontsize=9)
    axes[s].axis("off")
    axes[-1].hist(cohort.images[at_site[:200]].flatten().numpy(), bins=50, histtype="step", density=True,
                  label=name)
axes[-1].set_title("pixel intensities by site", fontsize=9)
axes[-1].legend(fontsize=8)
fig.tight_layout()

# %%
print(f"{'site':20s} {'studies':>8s} {'patients':>9s} {'female':>7s} {'age':>11s}  most common finding")
for s, name in enumerate(cohort.site_names):
    m = cohort.site == s
    ages = cohort.age[m]
    top = D.PATHOLOGIES[int(cohort.labels[m][:, :-1].mean(0).argmax())]
    print(f"{name:20s} {m.sum():8d} {len(np.unique(cohort.patient_ids[m])):9d} "
          f"{np.mean(cohort.sex[m] == 'F'):7.0%} {ages.mean():5.1f}+-{ages.std():4.1f}  {top}")
per_patient = np.bincount(np.unique(cohort.patient_ids, return_inverse=True)[1])
print(f"\nstudies per patient: {np.bincount(per_patient)[1:]} (for 1, 2, 3, ... studies)")

# %% [markdown]
# Read the figure and the table together. The mean images and the intensity histograms differ by
# site (brightness, contrast, sharpness, a burned-in marker in a corner) before any finding is
# involved, so a model can tell the sites apart from the pixels alone. The table shows that the
# sites also see different patients: the ICU's are the oldest, the clinic's the youngest, and
# their most common findings need not agree. A scanner that predicts the case mix is a shortcut
# to the labels; lesson 02 meets it, lesson 12 measures what it costs on an unseen site. The last
# line is why section 9 splits by patient: many patients have more than one study.
#
# ## 7. Labs
#
# Lab values are a second, non-image modality (lesson 11). They are generated to correlate with
# findings as they do in the clinic: BNP rises with heart failure (edema, an enlarged heart), the
# white cell count and temperature with infection (consolidation), and oxygen saturation falls
# when the lung cannot exchange gas.

# %%
pairs = [("BNP", "Edema"), ("WBC", "Consolidation"), ("Temperature", "Consolidation"), ("SpO2", "Pneumothorax")]
fig, axes = plt.subplots(1, len(pairs), figsize=(3.3 * len(pairs), 3))
for ax, (lab, finding) in zip(axes, pairs):
    values = cohort.labs[:, D.LAB_NAMES.index(lab)].numpy()
    has = cohort.labels[:, D.FINDINGS.index(finding)].numpy() == 1
    ax.boxplot([values[~has], values[has]], showfliers=False)
    ax.set_xticks([1, 2], [f"no {finding.lower()}", finding.lower()], fontsize=8)
    ax.set_title(lab, fontsize=10)
    if lab == "BNP":
        ax.set_yscale("log")  # BNP spans orders of magnitude in heart failure
fig.tight_layout()

# %% [markdown]
# In each panel, compare the two boxes. Each lab moves with its finding in the direction a
# clinician expects (SpO2 falls, the others rise), but the boxes overlap: a lab hints at a
# finding, it does not decide it. How far apart the boxes sit differs from lab to lab, and that
# is how much the lab can add to the image when lesson 11 gives the model both.
#
# ## 8. MRI phantoms
#
# For the image-image lessons (MRI T1 -> T2 synthesis in 06, T1/T2 contrastive pretraining in 11),
# SynthCXR also draws registered brain phantoms: the same anatomy in three contrasts, with
# lesions that are bright on T2 and FLAIR. CSF is dark on T1, bright on T2 and suppressed on FLAIR.

# %%
mri = D.generate_mri_phantoms(24, image_size=P.image_size, seed=SEED)
with_lesion = np.flatnonzero(np.asarray(mri.has_lesion))[:3]
rows = [mri.t1[with_lesion], mri.t2[with_lesion], mri.flair[with_lesion], mri.lesion_mask[with_lesion].float()]
grid = torch.stack(rows, 1).flatten(0, 1)
show_images(grid, titles=["T1", "T2", "FLAIR", "lesion"] * len(with_lesion), ncols=4, size=2);

# %% [markdown]
# ## 9. Split by patient
#
# A patient's studies look alike (same anatomy, often the same findings). If one study of a
# patient is in training and another in testing, the test measures memory, not generalisation.
# `patient_split` assigns whole patients to train, validation and test (70 / 10 / 20%), stratified
# so that each split has about the same prevalence of each finding. `dataset_split`, which every
# lesson uses, calls it, except where a dataset publishes its own patient-level split: ChestMNIST
# keeps NIH's official one, since MedMNIST drops the patient ids that `patient_split` would need.

# %%
splits = D.dataset_split(cohort, DATASET, seed=SEED)
patients = {k: set(cohort.patient_ids[v]) for k, v in splits.items()}
overlap = len(patients["train"] & patients["test"]) + len(patients["train"] & patients["val"]) \
    + len(patients["val"] & patients["test"])
assert overlap == 0
print(f"{'split':6s} {'studies':>8s} {'patients':>9s}   " + " ".join(f"{f[:6]:>6s}" for f in D.PATHOLOGIES))
for k, idx in splits.items():
    prev = cohort.labels[idx][:, :-1].mean(0)
    print(f"{k:6s} {len(idx):8d} {len(patients[k]):9d}   " + " ".join(f"{p:6.2f}" for p in prev))
medmm_lite.record("patients_in_two_splits", overlap)
medmm_lite.record("n_studies", len(cohort))

# %% [markdown]
# Read each finding's column from top to bottom: its prevalence is about the same in the training,
# validation and test splits, which is what the stratification buys (a test split short of a
# rare finding would score it on a handful of cases). No patient is in two splits: the assert
# above stops the lesson if one is.
#
# ## 10. The dataset card
#
# Every dataset a model learns from deserves a card (the review's guideline for dataset
# curators): what is in it, how it was made, what it cannot tell you.

# %%
summary = cohort.summary()
print(f"""SynthCXR dataset card
- Made by: medmm_lite.data.generate_cohort(n_studies={len(cohort)}, image_size={cohort.image_size}, seed={cohort.seed})
- Studies: {len(cohort)}; patients: {len(np.unique(cohort.patient_ids))}; sites: {', '.join(cohort.site_names)}
- Image: 1 channel, {cohort.image_size} x {cohort.image_size} px, frontal chest radiograph (procedural)
- Text: FINDINGS and IMPRESSION sections from a grammar with {len(np.unique(cohort.radiologist))} radiologist styles
- Labels: {', '.join(D.FINDINGS)} (1 present / 0 absent); boxes, laterality, zone and severity per finding
- Demographics: age {cohort.age.min():.0f}-{cohort.age.max():.0f}, female {np.mean(cohort.sex == 'F'):.0%}
- Labs: {', '.join(D.LAB_NAMES)}, correlated with findings
- Splits: by patient, 70/10/20, stratified by finding
- Label quality: reports and labels agree in {agreement:.1%} of studies (course labeler); label noise: none by default
- Intended use: teaching and testing the methods of this course
- Not for: any clinical conclusion. The anatomy and findings are drawn by rules; they are far
  simpler than real radiographs, and a model that works here may fail on real images.""")
print(f"\nprevalence by site (the case mix differs: an ICU sees sicker patients)")
print(f"{'':18s}" + "".join(f"{name[:16]:>18s}" for name in summary["sites"]))
for f in D.FINDINGS:
    print(f"{f:18s}" + "".join(f"{site['prevalence'][f]:18.2f}" for site in summary["sites"].values()))

# %% [markdown]
# In the last table, read a row across the sites. Devices, effusions and edema are more common at
# the ICU, and "No Finding" less so: how common a finding is depends on where the study was taken.
# That is the case-mix half of a site shift; the scanner half is the figure of section 6. A test
# set from one hospital inherits both, which is why lesson 12 tests on a site no model has seen.
#
# ## 11. Real data, one parameter away
#
# SynthCXR is the default so every lesson runs anywhere. The course's loaders for real datasets
# return the same structure, so a lesson switches with `DATASET`:
#
# | `DATASET` | what | notes |
# |---|---|---|
# | `"synthcxr"` | this cohort | default, no download |
# | `"iu_xray"` | IU X-ray / Open-I: ~7,000 frontal/lateral images with radiology reports | public; labels from the course's labeler |
# | `"chestmnist"` | MedMNIST ChestMNIST: NIH ChestX-ray14 at 28-224 px, 14 labels, no reports | image-only lessons |
# | `"vqa_rad"` | VQA-RAD: radiology images with clinician questions and answers | lesson 07 |
# | `"ixi"` | IXI brain MRI with T1, T2 and PD | lessons 06 and 11 |
#
# Without the prepared files, asking for a real dataset fails with a message that says what to
# run and names the synthetic default:

# %%
try:
    D.load_dataset("iu_xray", root="/nonexistent")
except (FileNotFoundError, ValueError, NotImplementedError) as err:
    print(type(err).__name__ + ":", err)

# %% [markdown]
# ## Summary
#
# - The course follows the review's taxonomy: five pretraining strategies, four ways to adapt.
# - SynthCXR gives every lesson images, reports, labels, boxes, patients, sites and labs, the
#   same for a seed, generated in seconds and cached.
# - Its reports and labels agree (measured above with the course's labeler), findings co-occur,
#   labs follow findings, and sites differ: the raw material for the questions of lessons 10-12.
# - Splits are by patient.
#
# ## Exercises
#
# Each exercise ends with a check you can run.
#
# 1. **Prevalence at one site.** Compute the fraction of studies at the first site with a pleural
#    effusion, using `cohort.site` and `cohort.labels`.

# %% tags=["solution"]
effusion_at_site0 = float(cohort.labels[torch.as_tensor(cohort.site == 0), D.FINDINGS.index("Pleural Effusion")].mean())

# %% tags=["check"]
expected = cohort.labels[torch.as_tensor(cohort.site == 0)][:, 1].mean().item()
assert effusion_at_site0 is not None and abs(effusion_at_site0 - expected) < 1e-6, "filter rows by site, then average column 1"
print("correct:", round(effusion_at_site0, 3))

# %% [markdown]
# 2. **A harder cohort.** Generate 200 studies with `subtlety=1.8` (fainter findings) and with a
#    prevalence of 0.5 for Lung Lesion. Check that about half have a lesion.

# %% tags=["solution"]
hard = D.generate_cohort(200, image_size=P.image_size, seed=SEED + 1, subtlety=1.8, prevalence={"Lung Lesion": 0.5})

# %% tags=["check"]
assert hard is not None and len(hard) == 200, "generate_cohort(200, ...)"
lesion_rate = hard.labels[:, D.FINDINGS.index("Lung Lesion")].mean().item()
assert 0.35 < lesion_rate < 0.65, f"lesion prevalence {lesion_rate:.2f}: pass prevalence={{'Lung Lesion': 0.5}}"
print("correct: lesion prevalence", round(lesion_rate, 2))

# %% [markdown]
# 3. **Leakage.** Split the studies at random instead of by patient (`np.random.permutation`) and
#    count how many test patients also appear in training. Why does this inflate test scores?
#
# Next: lesson 01 builds the tokenizer, the image and text encoders, the training loop, and the
# supervised baseline that every pretraining method must beat.
