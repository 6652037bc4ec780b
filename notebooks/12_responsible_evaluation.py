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
# # 12 Responsible evaluation: the review's guidelines as measured checks
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medmm-course/medmm-course/blob/main/notebooks/12_responsible_evaluation.ipynb)
#
# A macro AUROC on a random test split answers one question: does the model rank the findings
# of patients like the training patients? The review ends with guidelines for the people who
# build, approve and use these models, and each asks a different question. This lesson turns
# each into a number with an interval:
#
# | who | the question | the check here |
# |---|---|---|
# | dataset curators | does it work for everyone? | AUROC by sex, age band and site, with patient-bootstrap intervals; a training set skewed against one group |
# | everyone | does it work somewhere else? | train on two sites, test on the third (another scanner); which pretraining transfers best |
# | policy makers | what if an input is missing? | an image + labs model scored with each modality removed, trained with and without modality dropout |
# | clinicians | is acting on it better than not? | a decision-action pair and its net benefit across thresholds (a decision curve) |
# | model developers | does the report metric see the error? | reports with planted errors (wrong side, missed, invented finding) scored by lexical and factual metrics |
#
# The model under evaluation is a **linear probe on the CLIP image encoder** of lesson 02 (loaded
# from the cache when lesson 02 has run, trained here otherwise): sections 2 and 5 score it,
# section 3 compares it with other encoders under the same probe protocol, sections 4 and 5
# add the labs to its image features, and section 6 needs no model at all.

# %% tags=["parameters"]
PROFILE = "auto"     # "smoke" (CI), "cpu" (laptop), "gpu", or "auto"
SEED = 0
DATASET = "synthcxr"
HELD_OUT_SITE = "Northgate ICU"      # the unseen hospital of section 3
DECISION_FINDING = "Pneumothorax"    # the finding of section 5's decision-action pair
N_BOOT = 1000                        # bootstrap resamples for every interval

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
from medmm_lite import fusion as FU
from medmm_lite.adapt import Classifier, extract_features, linear_probe, pathology_auroc, train_classifier
from medmm_lite.adapt.protocol import PATHOLOGY_COLUMNS
from medmm_lite.backbones import image_encoder
from medmm_lite.eval import auroc
from medmm_lite.eval import decision as DC
from medmm_lite.eval import fairness as FA
from medmm_lite.eval import planted as PL
from medmm_lite.eval.shift import hold_out_site
from medmm_lite.hub import load_or_train
from medmm_lite.pretrain import clip as CL
from medmm_lite.pretrain import simclr as SC

P = medmm_lite.profile(PROFILE)
medmm_lite.seed_everything(SEED)
lesson_started = time.perf_counter()
print(medmm_lite.profile_summary(P))

# %% [markdown]
# ## 1. The model under evaluation
#
# The cohort, its patient-level splits, and the CLIP model of lesson 02. We extract the frozen
# image features of every study once and train a linear probe on the training split: nine
# sigmoid outputs, one per pathology. Every later section reads these features or scores.

# %%
data = D.prepare_data(P, seed=SEED, dataset=DATASET)
cohort, splits = data.cohort, data.splits
train_idx, test_idx = np.asarray(splits["train"]), np.asarray(splits["test"])
Y = cohort.labels[:, PATHOLOGY_COLUMNS].numpy()          # (N, 9) pathology labels
print(cohort)
print({k: len(v) for k, v in splits.items()}, "studies;", "sites:", cohort.site_names)

clip_model, _ = CL.pretrain_clip(P, data, seed=SEED)
features = extract_features(clip_model.image_encoder, cohort.images, device=P.device)   # (N, dim), every study
probe = linear_probe(features[train_idx], Y[train_idx], steps=P.probe_steps, seed=SEED, device=P.device)
scores = probe.predict_proba(features).numpy()            # (N, 9) for every study
overall = pathology_auroc(Y[test_idx], scores[test_idx])
print(f"test macro AUROC {overall['macro']:.3f}")
print({k: round(v, 3) for k, v in overall["per_finding"].items()})
medmm_lite.record("probe_auroc", overall["macro"])
assert overall["macro"] > 0.55, "the probe should beat chance before we evaluate it further"

# %% [markdown]
# ## 2. Dataset curators: who does it work for?
#
# ### Intervals that respect patients
#
# A subgroup holds a few hundred studies, so its AUROC moves with the sample: a gap between
# groups means nothing without an interval. The bootstrap gives one: resample, recompute,
# take percentiles. But *what* to resample matters. Patients have up to four studies, and a
# patient's studies share a heart, a nodule, a fracture: they are not independent. Resampling
# studies treats them as if they were, and where a patient's studies are alike in what the
# model gets right and wrong, that makes intervals too narrow. So we resample **patients**
# (each drawn patient brings all of its studies): the unit that was actually sampled.
#
# A resample is then just a weight per study: how many times its patient was drawn. AUROC with
# weights is the weighted Mann-Whitney statistic, the probability that a positive outscores a
# negative, each pair counted with the product of its weights (ties half):
#
# $$\mathrm{AUROC}_w = \frac{\sum_{i:\,y_i=1}\sum_{j:\,y_j=0} w_i w_j\,\big([s_i>s_j] + \tfrac12[s_i=s_j]\big)}{\sum_{i:\,y_i=1} w_i\,\sum_{j:\,y_j=0} w_j}$$
#
# Inline for one finding (a double loop would be N^2; sorting once is enough):

# %%
def weighted_auroc_one(y, s, w):
    """AUROC of one column with study weights w (ties counted half)."""
    order = np.argsort(s, kind="stable")
    y, s, w = y[order], s[order], w[order]
    total, neg_below, i = 0.0, 0.0, 0
    while i < len(s):                                   # walk through groups of tied scores
        j = i
        while j < len(s) and s[j] == s[i]:
            j += 1
        pos_here = (w[i:j] * y[i:j]).sum()
        neg_here = (w[i:j] * (1 - y[i:j])).sum()
        total += pos_here * (neg_below + 0.5 * neg_here)
        neg_below += neg_here
        i = j
    return total / ((w * y).sum() * (w * (1 - y)).sum())


k = list(D.PATHOLOGIES).index("Pleural Effusion")
y_k, s_k = Y[test_idx, k], scores[test_idx, k]
ones = np.ones(len(test_idx))
assert abs(weighted_auroc_one(y_k, s_k, ones) - auroc(y_k, s_k)["macro"]) < 1e-9     # weights 1: the usual AUROC
w = FA.patient_bootstrap_weights(cohort.patient_ids[test_idx], n_boot=3, seed=SEED)
for row in w:                                           # the library computes every resample at once
    assert abs(weighted_auroc_one(y_k, s_k, row) - FA.weighted_auroc(y_k, s_k, row)[0]) < 1e-9
repeated = np.repeat(np.arange(len(test_idx)), w[0].astype(int))   # integer weights = repeated rows
assert abs(FA.weighted_auroc(y_k, s_k, w[0])[0] - auroc(y_k[repeated], s_k[repeated])["macro"]) < 1e-9
print("weighted AUROC matches: by hand, the library, and the AUROC of the repeated rows")

# %% [markdown]
# How much wider is the patient interval than the study interval? A study bootstrap (what the
# library's `bootstrap_ci` does: resample rows) is the same resampler with every study its own
# "patient"; `subgroup_auroc` resamples the real patients. The answer is
# a measurement, not a rule: in SynthCXR chronic findings persist across a patient's visits,
# but acute ones and every image are drawn anew, and half the patients have a single study.
# Read the ratio printed below: near 1, the difference is within the bootstrap's own noise. The
# patient interval is the right one either way; only on a cohort with many, similar studies per
# patient is the study interval badly overconfident.

# %%
study_weights = FA.patient_bootstrap_weights(np.arange(len(test_idx)), N_BOOT, seed=SEED)   # bootstrap_ci's resamples
study_ci = (FA.macro_auroc(Y[test_idx], scores[test_idx]),
            *FA.interval(FA.macro_auroc(Y[test_idx], scores[test_idx], study_weights)))
by_all = FA.subgroup_auroc(Y[test_idx], scores[test_idx], np.zeros(len(test_idx)),
                           cohort.patient_ids[test_idx], n_boot=N_BOOT, seed=SEED)["all"]
print(f"test macro AUROC {study_ci[0]:.3f}: study bootstrap [{study_ci[1]:.3f}, {study_ci[2]:.3f}], "
      f"patient bootstrap [{by_all['low']:.3f}, {by_all['high']:.3f}]")
ratio = (by_all["high"] - by_all["low"]) / (study_ci[2] - study_ci[1])
print(f"the patient interval is {ratio:.2f}x as wide ({len(test_idx)} studies of "
      f"{len(np.unique(cohort.patient_ids[test_idx]))} patients)")
medmm_lite.record("patient_vs_study_ci_width", ratio)

# %% [markdown]
# ### By sex, age band and site
#
# The same resamples (one seed, one set of patients) score every group, so the difference of
# two groups has an interval too: subtract resample by resample. A group's macro AUROC averages
# the findings with at least two positive studies in that group (few young patients have an
# enlarged heart), so small groups average over fewer findings.

# %%
test_pid = cohort.patient_ids[test_idx]
site_names = np.asarray(cohort.site_names, dtype=object)[cohort.site]
attributes = {"sex": (cohort.sex, ("F", "M")), "age band": (FA.age_bands(cohort.age), FA.AGE_BANDS),
              "site": (site_names, tuple(cohort.site_names))}
subgroups = {}
for attribute, (values, order) in attributes.items():
    subgroups[attribute] = FA.subgroup_auroc(Y[test_idx], scores[test_idx], values[test_idx], test_pid,
                                             n_boot=N_BOOT, seed=SEED, order=order)
    print(FA.subgroup_table(subgroups[attribute], attribute), "\n")

sex = subgroups["sex"]
sex_gap = sex["F"]["auroc"] - sex["M"]["auroc"]
sex_gap_ci = FA.interval(sex["F"]["boot"] - sex["M"]["boot"])
print(f"female - male: {sex_gap:+.3f} [{sex_gap_ci[0]:+.3f}, {sex_gap_ci[1]:+.3f}]")
ages = subgroups["age band"]
age_gap = ages["65+"]["auroc"] - ages["<40"]["auroc"]
age_gap_ci = FA.interval(ages["65+"]["boot"] - ages["<40"]["boot"])
print(f"65+ - <40:     {age_gap:+.3f} [{age_gap_ci[0]:+.3f}, {age_gap_ci[1]:+.3f}]")
for name in ("F", "M"):
    medmm_lite.record(f"auroc_sex_{name}", sex[name]["auroc"])
medmm_lite.record("sex_gap", sex_gap)
medmm_lite.record("age_gap_65_vs_40", age_gap)
for i, name in enumerate(cohort.site_names):
    medmm_lite.record(f"auroc_site_{i}", subgroups["site"][name]["auroc"])
assert all(r["low"] <= r["auroc"] <= r["high"] for g in subgroups.values() for r in g.values())


# %%
def forest(ax, rows, title):
    """Point and interval per row: a forest plot."""
    names = list(rows)
    for i, name in enumerate(names):
        r = rows[name]
        ax.plot([r["low"], r["high"]], [i, i], color="tab:blue")
        ax.plot(r["auroc"], i, "o", color="black" if name == "all" else "tab:blue")
    ax.set_yticks(range(len(names)), [f"{n} ({rows[n]['n']})" for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(rows["all"]["auroc"], color="gray", ls=":")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("macro AUROC, 95% patient-bootstrap CI")


fig, axes = plt.subplots(1, 3, figsize=(12, 2.8), sharex=True)
for ax, (attribute, rows) in zip(axes, subgroups.items()):
    forest(ax, rows, f"by {attribute}")
fig.tight_layout()

# %% [markdown]
# How to read it: an interval that covers the overall value (dotted) is a group the data cannot
# tell apart from the rest. SynthCXR's generator draws findings from age and site (older
# patients have bigger hearts and more edema; the ICU has more devices and effusions) and draws
# breast shadows on most women's films, but it draws each finding the same way for every group.
# So differences here come from *case mix* (which findings, how severe) and from the scanner
# (site), not from a finding that looks different in one group. A real cohort can have both.
#
# Compare each site's AUROC with the pooled test set's: a site can score *below* the pooled number
# without a contradiction: a pooled AUROC also rewards ranking one site's positives above another
# site's negatives, and the sites differ in case mix and scanner, which the model can see. Within
# one site only the harder, within-site ranking is left. So compare groups with each other, with
# paired intervals (the gaps printed above), not with the pooled number.
#
# ### A cohort skewed at training time
#
# What if the training set had few women? We keep only 10% of the female *patients* in the
# training split (the test split is unchanged), retrain the probe, and score both sexes. And
# the same for a site, the ICU, whose scanner *does* change the image. The effect of the skew
# on a group is the change of its gap to the rest, with the interval of that change (paired:
# the same test resamples for both probes).

# %%
skews = {"sex": ("F", cohort.sex, ("F", "M")),
         "site": (HELD_OUT_SITE, site_names, tuple(cohort.site_names))}
skew_results = {}
for attribute, (group, values, order) in skews.items():
    kept = FA.keep_fraction_of_group(train_idx, values, group, 0.1, cohort.patient_ids, seed=SEED)
    skewed_probe = linear_probe(features[kept], Y[kept], steps=P.probe_steps, seed=SEED, device=P.device)
    skewed_scores = skewed_probe.predict_proba(features[test_idx]).numpy()
    balanced = FA.subgroup_auroc(Y[test_idx], scores[test_idx], values[test_idx], test_pid, n_boot=N_BOOT,
                                 seed=SEED, order=order)
    skewed = FA.subgroup_auroc(Y[test_idx], skewed_scores, values[test_idx], test_pid, n_boot=N_BOOT,
                               seed=SEED, order=order)
    rest = [g for g in order if g != group]

    def gap(result):     # the group minus the mean of the other groups, per resample
        return result[group]["boot"] - np.mean([result[g]["boot"] for g in rest], axis=0), \
            result[group]["auroc"] - np.mean([result[g]["auroc"] for g in rest])

    (b_boot, b_gap), (s_boot, s_gap) = gap(balanced), gap(skewed)
    change, change_ci = s_gap - b_gap, FA.interval(s_boot - b_boot)
    own_drop = skewed[group]["auroc"] - balanced[group]["auroc"]
    own_ci = FA.interval(skewed[group]["boot"] - balanced[group]["boot"])
    skew_results[attribute] = dict(group=group, balanced=balanced, skewed=skewed, change=change, change_ci=change_ci,
                                   own=own_drop, own_ci=own_ci, n_train=(len(train_idx), len(kept)))
    print(f"{attribute}: training on {len(kept)} of {len(train_idx)} studies (10% of {group!r} patients kept)")
    print(f"  {group}: AUROC {balanced[group]['auroc']:.3f} -> {skewed[group]['auroc']:.3f} "
          f"(change {own_drop:+.3f} [{own_ci[0]:+.3f}, {own_ci[1]:+.3f}])")
    print(f"  its gap to the others changes by {change:+.3f} [{change_ci[0]:+.3f}, {change_ci[1]:+.3f}]: "
          + ("the interval covers zero, the data cannot tell" if change_ci[0] <= 0 <= change_ci[1]
             else "the interval excludes zero"))
medmm_lite.record("skew_sex_gap_change", skew_results["sex"]["change"])
medmm_lite.record("skew_site_gap_change", skew_results["site"]["change"])
medmm_lite.record("skew_site_own_change", skew_results["site"]["own"])

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 2.8))
for ax, (attribute, r) in zip(axes, skew_results.items()):
    names = list(r["balanced"])
    x = np.arange(len(names))
    for offset, (label, result, color) in enumerate((("balanced", r["balanced"], "tab:blue"),
                                                      ("10% kept", r["skewed"], "tab:orange"))):
        values = [result[n]["auroc"] for n in names]
        errors = np.array([[result[n]["auroc"] - result[n]["low"], result[n]["high"] - result[n]["auroc"]]
                           for n in names]).T
        ax.errorbar(x + (offset - 0.5) * 0.25, values, yerr=errors, fmt="o", color=color, label=label, capsize=2)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylabel("macro AUROC")
    ax.set_title(f"training skewed against {r['group']!r}", fontsize=10)
    ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# Read the intervals before the points: the verdict printed under each attribute says whether the
# interval of the gap's change covers zero. Keeping a tenth of a group removes hundreds of
# *labelled* studies, but a linear probe on a frozen encoder has few weights to fit, and the
# encoder's features were learned from every training image without labels, the
# under-represented group's included (CLIP saw the ICU's films and the women's). Where the
# verdict is "the data cannot tell", even the ICU, whose scanner does change the image, kept its
# performance. A model trained end to end on the skewed set, an encoder pretrained
# without the group, or a real cohort where a disease looks different in the
# under-represented group can show much larger effects: this is a check to run, not a result
# to assume.
#
# ## 3. Distribution shift: a hospital the model has never seen
#
# The review asks for external validation: test at a site whose data took no part in training.
# We hold out one site entirely. `hold_out_site` drops it from every split and refits the
# tokenizer without its reports, so that **no** step (pretraining, tokenizer, probe) sees it;
# all its studies form the external test set. The internal test set is the usual test split of
# the two training sites.

# %%
data_2 = hold_out_site(data, HELD_OUT_SITE, P)
data_2, external_idx = data_2
train_2, internal_idx = np.asarray(data_2.splits["train"]), np.asarray(data_2.splits["test"])
held_out = list(cohort.site_names).index(HELD_OUT_SITE)
assert not (cohort.site[train_2] == held_out).any() and (cohort.site[external_idx] == held_out).all()
assert not set(cohort.patient_ids[external_idx]) & set(cohort.patient_ids[train_2])
print(f"train on {len(train_2)} studies of {sorted(set(site_names[train_2]))}; internal test {len(internal_idx)}, "
      f"external test {len(external_idx)} ({HELD_OUT_SITE})")
fig, axes = plt.subplots(1, 3, figsize=(6, 2.2))
for ax, s in zip(axes, range(len(cohort.site_names))):
    ax.imshow(cohort.images[int(np.flatnonzero(cohort.site == s)[0]), 0], cmap="gray", vmin=0, vmax=1)
    ax.set_title(cohort.site_names[s], fontsize=8)
    ax.axis("off")

# %% [markdown]
# Four encoders, the same protocol (frozen encoder, linear probe on the two sites' training
# labels): an untrained ViT, a ViT trained **supervised** on the two sites' labels, **SimCLR**
# (images only) and **CLIP** (images and reports), both pretrained on the two sites only.

# %%
with torch.random.fork_rng():
    torch.manual_seed(SEED)
    random_vit = image_encoder(P)
clip_2, _ = CL.pretrain_clip(P, data_2, seed=SEED)
simclr_2, _ = SC.pretrain_simclr(P, data_2, seed=SEED)


def train_supervised(model):
    return train_classifier(model, cohort.images[train_2], torch.from_numpy(Y[train_2]), steps=P.steps,
                            batch_size=P.batch_size, lr=P.lr, seed=SEED, device=P.device, amp=P.amp,
                            desc="supervised, two sites")


supervised_2, _ = load_or_train("supervised_two_sites", train_supervised, build_fn=lambda: Classifier(image_encoder(P)),
                                key={**CL.profile_key(P), "data": CL.data_fingerprint(data_2), "seed": SEED,
                                     "steps": P.steps, "lr": P.lr, "batch_size": P.batch_size}, device=P.device)
encoders = {"random ViT": random_vit, "supervised": supervised_2.encoder, "SimCLR": simclr_2.encoder,
            "CLIP": clip_2.image_encoder}

shift = {}
evaluated = np.concatenate([internal_idx, external_idx])
where = np.array(["internal"] * len(internal_idx) + ["external"] * len(external_idx), dtype=object)
for name, encoder in encoders.items():
    f = extract_features(encoder, cohort.images, device=P.device)
    p = linear_probe(f[train_2], Y[train_2], steps=P.probe_steps, seed=SEED, device=P.device)
    s = p.predict_proba(f[evaluated]).numpy()
    shift[name] = FA.subgroup_auroc(Y[evaluated], s, where, cohort.patient_ids[evaluated], n_boot=N_BOOT,
                                    seed=SEED, order=("internal", "external"))
print(f"{'encoder':<12}{'internal':>24}{'external':>24}{'drop':>24}")
for name, r in shift.items():
    drop = r["internal"]["boot"] - r["external"]["boot"]
    lo, hi = FA.interval(drop)
    r["drop"] = (r["internal"]["auroc"] - r["external"]["auroc"], lo, hi)
    cells = [f"{r[g]['auroc']:.3f} [{r[g]['low']:.3f}, {r[g]['high']:.3f}]" for g in ("internal", "external")]
    cells.append(f"{r['drop'][0]:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    print(f"{name:<12}" + "".join(f"{c:>24}" for c in cells))
    key = name.split()[0].lower()
    medmm_lite.record(f"shift_internal_{key}", r["internal"]["auroc"])
    medmm_lite.record(f"shift_external_{key}", r["external"]["auroc"])

clip_vs_random = shift["CLIP"]["external"]["auroc"] - shift["random ViT"]["external"]["auroc"]
medmm_lite.record("shift_external_clip_minus_random", clip_vs_random)
best = max(shift, key=lambda n: shift[n]["external"]["auroc"])
print(f"best on the unseen site: {best}")
versus = {n: FA.interval(shift[best]["external"]["boot"] - shift[n]["external"]["boot"]) for n in shift if n != best}
for n, (lo, hi) in versus.items():
    print(f"  {best} - {n} on the external site: "
          f"{shift[best]['external']['auroc'] - shift[n]['external']['auroc']:+.3f} [{lo:+.3f}, {hi:+.3f}]")

# %%
fig, ax = plt.subplots(figsize=(6.5, 3))
x = np.arange(len(shift))
for offset, (group, color) in enumerate((("internal", "tab:blue"), ("external", "tab:red"))):
    values = [shift[n][group]["auroc"] for n in shift]
    errors = np.array([[shift[n][group]["auroc"] - shift[n][group]["low"],
                        shift[n][group]["high"] - shift[n][group]["auroc"]] for n in shift]).T
    ax.bar(x + (offset - 0.5) * 0.38, values, 0.36, yerr=errors, color=color, alpha=0.8, capsize=3,
           label=f"{group} ({'two training sites' if group == 'internal' else HELD_OUT_SITE})")
ax.set_xticks(x, list(shift))
ax.set_ylim(0.4, 1.0)
ax.axhline(0.5, color="gray", ls=":")
ax.set_ylabel("macro AUROC (95% CI)")
ax.set_title("the same probe protocol, at the training sites and at an unseen one", fontsize=10)
ax.legend(fontsize=8);

# %% [markdown]
# The external site differs in two ways at once: its **scanner** (contrast, noise, blur, its
# own burned-in marker) and its **case mix** (an ICU: more devices, effusions, edema, and
# sicker patients). AUROC does not depend on prevalence, but it does depend on which cases are
# hard, so a drop mixes both. Read "which pretraining transfers best" from the intervals of the
# differences above, not from the bars alone.
#
# ## 4. Policy makers: what if a modality is missing?
#
# A model that reads the film *and* the labs may be deployed where labs are not drawn, or
# images come late. SynthCXR's labs follow the findings (`medmm_lite/data/clinical.py`): BNP
# rises with edema, cardiomegaly and effusion; white count and temperature with consolidation;
# SpO2 falls with pneumothorax, consolidation and edema. How much each lab alone says about
# each finding (AUROC of the raw value, or of its negative for SpO2):

# %%
labs_z, lab_stats = FU.standardise_labs(cohort.labs[train_idx], cohort.lab_names)
labs_all, _ = FU.standardise_labs(cohort.labs, cohort.lab_names, lab_stats)
informed = ["Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation", "Edema"]
informed_cols = [list(D.PATHOLOGIES).index(f) for f in informed]
print(f"{'':<18}" + "".join(f"{n:>12}" for n in cohort.lab_names))
for f, j in zip(informed, informed_cols):
    cells = [max(a, 1 - a) for a in (auroc(Y[train_idx, j], labs_all[train_idx, i].numpy())["macro"]
                                     for i in range(labs_all.shape[1]))]
    print(f"{f:<18}" + "".join(f"{c:>12.2f}" for c in cells))

# %% [markdown]
# `medmm_lite.fusion.FusionClassifier`: each modality has its own small encoder (a linear layer
# on the frozen image features; a two-layer MLP, the labs encoder, on the standardised labs), the
# two embeddings are concatenated, and an MLP head gives nine logits. A missing modality is
# replaced by a **learned "missing" embedding**. We train four models on the same training
# studies: image only, labs only, both, and both with **modality dropout** (each training sample
# loses its image or its labs with probability 0.3, never both), then score each with each
# modality present or removed.

# %%
fusion_steps = max(P.probe_steps, 200)
x_train, z_train, y_train = features[train_idx], labs_all[train_idx], torch.from_numpy(Y[train_idx])
fusion_models = {}
for name, use, p_drop in (("image only", ("image",), 0.0), ("labs only", ("labs",), 0.0),
                          ("image + labs", ("image", "labs"), 0.0),
                          ("image + labs, modality dropout", ("image", "labs"), 0.3)):
    model, history = FU.train_fusion(x_train, z_train, y_train, use=use, modality_dropout=p_drop,
                                     steps=fusion_steps, batch_size=P.batch_size * 4, seed=SEED, device=P.device)
    fusion_models[name] = (model, use)

# the missing embeddings: trained with dropout, untouched (still zero) without it
no_drop = fusion_models["image + labs"][0]
with_drop = fusion_models["image + labs, modality dropout"][0]
print("missing-embedding norms, no dropout:", round(no_drop.missing_image.norm().item(), 3),
      round(no_drop.missing_labs.norm().item(), 3), "| with dropout:",
      round(with_drop.missing_image.norm().item(), 3), round(with_drop.missing_labs.norm().item(), 3))
assert no_drop.missing_labs.norm().item() == 0 and with_drop.missing_labs.norm().item() > 0


# %%
def macro_on(columns):
    return lambda y, s: pathology_auroc(np.asarray(y), np.asarray(s))["macro"] if columns is None else \
        auroc(np.asarray(y)[:, columns], np.asarray(s)[:, columns], names=[D.PATHOLOGIES[c] for c in columns])["macro"]


x_test, z_test, y_test = features[test_idx], labs_all[test_idx], Y[test_idx]
tables = {label: FU.sensitivity_table(fusion_models, x_test, z_test, y_test, macro_on(columns))
          for label, columns in (("all nine pathologies", None), ("the five lab-informed findings", informed_cols))}
for label, table in tables.items():
    print(f"test macro AUROC, {label}")
    print(f"{'model / at test time':<34}" + "".join(f"{c:>16}" for c in FU.CONDITIONS))
    for name, row in table.items():
        print(f"{name:<34}" + "".join(f"{'-':>16}" if np.isnan(v) else f"{v:>16.3f}" for v in row.values()))
    print()
informed_table = tables["the five lab-informed findings"]
for name, short in (("image only", "image"), ("labs only", "labs"), ("image + labs", "fusion"),
                    ("image + labs, modality dropout", "fusion_dropout")):
    for condition, c_short in (("image + labs", "both"), ("image only", "no_labs"), ("labs only", "no_image")):
        value = informed_table[name][condition]
        if not np.isnan(value):
            medmm_lite.record(f"modality_{short}_{c_short}", value)

gain = (informed_table["image + labs, modality dropout"]["image only"] - informed_table["image + labs"]["image only"])
print(f"without labs at test time, modality dropout adds {gain:+.3f} AUROC on the lab-informed findings")
medmm_lite.record("modality_dropout_gain_no_labs", gain)

# %%
fig, ax = plt.subplots(figsize=(8, 3))
cell = np.array([[v for v in row.values()] for row in informed_table.values()])
cmap = plt.get_cmap("RdYlGn").copy()
cmap.set_bad("lightgray")
im = ax.imshow(np.ma.masked_invalid(cell), cmap=cmap, vmin=0.5, vmax=max(0.9, np.nanmax(cell)), aspect="auto")
for i in range(cell.shape[0]):
    for jj in range(cell.shape[1]):
        ax.text(jj, i, "n/a" if np.isnan(cell[i, jj]) else f"{cell[i, jj]:.3f}", ha="center", va="center", fontsize=9)
ax.set_xticks(range(cell.shape[1]), [f"at test:\n{c}" for c in FU.CONDITIONS], fontsize=8)
ax.set_yticks(range(cell.shape[0]), [f"trained: {n}" for n in informed_table], fontsize=8)
ax.set_title("missing-modality sensitivity (macro AUROC, five lab-informed findings)", fontsize=10)
fig.colorbar(im, ax=ax, fraction=0.03)
fig.tight_layout()

# %%
rows = informed_table
best_single = max(rows["image only"]["image + labs"], rows["labs only"]["image + labs"])
print(f"both inputs: fusion {rows['image + labs']['image + labs']:.3f} (with dropout "
      f"{rows['image + labs, modality dropout']['image + labs']:.3f}) vs the better single-modality model "
      f"{best_single:.3f}")
print(f"labs removed: fusion {rows['image + labs']['image only']:.3f}, with dropout "
      f"{rows['image + labs, modality dropout']['image only']:.3f}, image-only model {rows['image only']['image only']:.3f}")
print(f"image removed: fusion {rows['image + labs']['labs only']:.3f}, with dropout "
      f"{rows['image + labs, modality dropout']['labs only']:.3f}, labs-only model {rows['labs only']['labs only']:.3f}")
below = rows["image + labs"]["image only"] < rows["image only"]["image only"]
print("without labs, the fusion model trained on both inputs is "
      + ("below the image-only model" if below else "not below the image-only model"))
cost = rows["image + labs"]["image + labs"] - rows["image + labs, modality dropout"]["image + labs"]
print(f"what modality dropout costs when both inputs are there: {cost:+.3f} AUROC")

# %% [markdown]
# How to read the table: row by row, each row being one model that might be deployed.
# SynthCXR's labs were *generated* from these five findings, so the labs-only model is strong;
# whether the fused model beats the better single-modality model is printed above (on the smoke
# profile's few hundred training studies it may not, having the image features to overfit). The
# robustness columns are the point. A fusion model trained
# with both inputs always present has never moved its missing embeddings from zero: remove the
# labs and it can fall below the image-only model, a model that never had labs (the last lines
# above say whether it did here). Modality dropout teaches it to work without either input and
# recovers part of that loss (a bound of this lesson: at least 0.02 AUROC); what it costs when
# both inputs are there is printed last. A policy question ("may this model run where labs are not
# drawn?") is answered by the row of the model actually deployed, not by its best cell.
#
# ## 5. Clinicians: is acting on the model better than not?
#
# A decision-action pair: **flag the film for an urgent read if the model's probability of
# pneumothorax is at least t**. Choosing t says how many false alarms one caught pneumothorax
# is worth: at t = 0.1 the odds t / (1 - t) = 1/9, nine unnecessary urgent reads for one
# needed. Net benefit (Vickers & Elkin 2006) counts true positives per patient and charges each
# false positive at those odds:
#
# $$\mathrm{NB}(t) = \frac{TP}{n} - \frac{FP}{n}\,\frac{t}{1-t}$$
#
# Two policies need no model: flag no one (NB = 0) and flag everyone
# (NB = prevalence - (1 - prevalence) t / (1 - t)). A model is useful where it beats both.
# We compare two models on the test split: the image probe of section 1, and the image + labs
# model of section 4 trained with modality dropout (an emergency department knows the SpO2).

# %%
j = list(D.PATHOLOGIES).index(DECISION_FINDING)
y_dec = Y[test_idx, j]
decision_models = {"image probe": scores[test_idx, j],
                   "image + labs (dropout)": FU.predict_fusion(with_drop, x_test, z_test)[:, j].numpy()}
t = 0.1
for name, p in decision_models.items():
    flag = p >= t
    tp, fp, n = int((flag & (y_dec == 1)).sum()), int((flag & (y_dec == 0)).sum()), len(y_dec)
    nb_by_hand = tp / n - fp / n * t / (1 - t)
    assert abs(nb_by_hand - DC.net_benefit(y_dec, p, [t])[0]) < 1e-12
    print(f"{name}: AUROC {auroc(y_dec, p)['macro']:.3f}; at t = {t}: {int(flag.sum())} of {n} films flagged, "
          f"{tp} true, {fp} false; net benefit {nb_by_hand:.4f} ({nb_by_hand * 100:.2f} net true positives "
          f"per 100 patients)")
print(f"{DECISION_FINDING} prevalence {y_dec.mean():.3f}: flagging everyone at t = {t} nets "
      f"{DC.treat_all(y_dec, [t])[0]:.4f}")

thresholds = np.round(np.arange(0.01, 0.51, 0.01), 2)
curves = {name: DC.decision_curve(y_dec, p, thresholds) for name, p in decision_models.items()}
for name, c in curves.items():
    print(f"{name}: beats both policies for t in {DC.useful_range(c)}")

# intervals: patient bootstrap of (model - the better of flag-everyone / flag-no-one)
weights = FA.patient_bootstrap_weights(cohort.patient_ids[test_idx], N_BOOT, seed=SEED)
wn = weights.sum(1)
prev = (weights * y_dec).sum(1) / wn
for name, p in decision_models.items():
    short = "probe" if name == "image probe" else "fusion"
    for t_ in (0.05, 0.1):
        act = p >= t_
        nb_boot = ((weights * (act & (y_dec == 1))).sum(1)
                   - (weights * (act & (y_dec == 0))).sum(1) * t_ / (1 - t_)) / wn
        advantage_boot = nb_boot - np.maximum(prev - (1 - prev) * t_ / (1 - t_), 0)
        lo, hi = FA.interval(advantage_boot)
        nb = DC.net_benefit(y_dec, p, [t_])[0]
        point = nb - max(DC.treat_all(y_dec, [t_])[0], 0)
        print(f"{name:<24} t = {t_:.2f}: net benefit {nb:.4f}; minus the best policy {point:+.4f} "
              f"[{lo:+.4f}, {hi:+.4f}]")
        medmm_lite.record(f"net_benefit_{short}_t{round(t_ * 100):02d}", nb)
        medmm_lite.record(f"net_benefit_advantage_{short}_t{round(t_ * 100):02d}", point)
    useful = DC.useful_range(curves[name])
    medmm_lite.record(f"useful_threshold_width_{short}", 0.0 if useful is None else useful[1] - useful[0] + 0.01)
for t_ in (0.05, 0.1):
    medmm_lite.record(f"net_benefit_treat_all_t{round(t_ * 100):02d}", DC.treat_all(y_dec, [t_])[0])

# %%
fig, ax = plt.subplots(figsize=(6.5, 3.3))
for (name, c), color, style in zip(curves.items(), ("tab:blue", "tab:green"), ("--", "-")):
    ax.plot(c["thresholds"], c["model"], style, color=color, lw=2, label=name, zorder=3)
    useful = DC.useful_range(c)
    if useful is not None:
        ax.axvspan(useful[0], useful[1], color=color, alpha=0.1)
first = next(iter(curves.values()))
ax.plot(first["thresholds"], first["treat_all"], color="tab:orange", label="flag everyone")
ax.plot(first["thresholds"], first["treat_none"], color="black", label="flag no one")
ax.set_ylim(-0.02, max(0.02, y_dec.mean() * 1.2))
ax.set_xlabel("threshold probability t")
ax.set_ylabel("net benefit (true positives per patient)")
ax.set_title(f"decision curve: urgent read if p({DECISION_FINDING}) >= t (shaded: beats both)", fontsize=10)
ax.legend(fontsize=8);

# %% [markdown]
# At these resolutions a small apical pneumothorax is a few pixels: the image probe ranks it
# poorly (its AUROC is printed above), and where its curve is not above both "flag everyone"
# and "flag no one", acting on it is no better than a policy that needs no model; at high
# thresholds it flags few films and may gain a little there. The image + labs model reads the
# SpO2 as well: compare its printed range of thresholds where it beats both policies with the
# image probe's, and its net benefit interval at each threshold (an interval that includes zero
# says the advantage is not established there). AUROC alone would not say at which thresholds a
# model helps, or by how many patients per hundred.
#
# A decision curve depends on the probabilities being right, not only on their order: a model
# with a good AUROC but miscalibrated scores flags the wrong number of films at a given t. The
# probe was trained with the cohort's own prevalence, which puts its mean probability near the
# prevalence, but its calibration is not measured here (a reliability diagram would be the
# check); a model moved to a hospital with another prevalence would need recalibrating before
# its decision curve means anything there.
#
# ## 6. Model developers: which report metric notices which error?
#
# Lesson 05 scored generated reports with BLEU, ROUGE-L and clinical F1. To see what each
# metric can see, we take real reports and plant one error at a time (`medmm_lite.eval.planted`):
# swap **left and right** for one finding, **drop** every sentence of a present finding (a miss),
# **add** a finding the report does not state (a hallucination), and, as a control, a
# **paraphrase** that changes words but no fact. Each edited report is scored against its
# original with BLEU-4, ROUGE-L, finding F1 (the labeler's findings, what clinical F1 reads) and
# laterality F1 (finding *and* side).

# %%
reports = [cohort.reports[i] for i in test_idx]
example = next(i for i, r in enumerate(reports) if PL.flip_side(r) is not None and PL.drop_finding(r) is not None)
print("original:  ", reports[example])
for kind in PL.ERROR_KINDS:
    edited = PL.EDITS[kind](reports[example], SEED)
    print(f"{kind + ':':<18}", edited)
    scores_here = PL.pair_scores([reports[example]], [edited])
    print(" " * 18, {m: round(float(v[0]), 3) for m, v in scores_here.items()})
assert PL.pair_scores([reports[example]], [reports[example]])["bleu4"][0] > 0.999   # a report matches itself

# %%
planted = PL.which_metric_notices(reports, seed=SEED)
metrics = ("bleu4", "rouge_l", "finding_f1", "laterality_f1")
print(f"{'mean score vs the original':<28}{'n':>5}" + "".join(f"{m:>15}" for m in metrics))
for kind in PL.ERROR_KINDS:
    print(f"{kind:<28}{planted['n'][kind]:>5}" + "".join(f"{planted['mean'][kind][m]:>15.3f}" for m in metrics))
print(f"\n{'notices (below paraphrase)':<33}" + "".join(f"{m:>15}" for m in metrics))
for kind in PL.ERROR_KINDS[1:]:
    print(f"{kind:<33}" + "".join(f"{planted['notices'][kind][m]:>15.2f}" for m in metrics))
for kind, short in (("wrong side", "side"), ("missed finding", "missed"), ("invented finding", "invented")):
    for m in metrics:
        medmm_lite.record(f"notices_{short}_{m}", planted["notices"][kind][m])
for m in metrics:
    medmm_lite.record(f"paraphrase_mean_{m}", planted["mean"]["paraphrase"][m])

# %%
fig, ax = plt.subplots(figsize=(7.5, 2.6))
rates = np.array([[planted["notices"][k][m] for m in metrics] for k in PL.ERROR_KINDS[1:]])
ax.imshow(rates, cmap="Greens", vmin=0, vmax=1.3, aspect="auto")
for i in range(rates.shape[0]):
    for jj in range(rates.shape[1]):
        ax.text(jj, i, f"{rates[i, jj]:.0%}", ha="center", va="center", fontsize=10)
ax.set_xticks(range(len(metrics)), ["BLEU-4", "ROUGE-L", "finding F1\n(clinical F1's labels)", "laterality F1"],
              fontsize=9)
ax.set_yticks(range(rates.shape[0]), PL.ERROR_KINDS[1:])
ax.set_title("share of reports the metric scores below a harmless paraphrase", fontsize=10)
fig.tight_layout()

# %% [markdown]
# "Notices" here is strict on purpose: a metric notices an error when it scores the wrong report
# *below a paraphrase of the same report*, since a paraphrase is what a good generator also
# produces. BLEU and ROUGE-L lose more to rewording than to a swapped side, so they rank most
# wrong-side reports above the harmless paraphrase; they catch missed and invented findings
# only when the edit deletes or adds more words than the paraphrase changed. Finding F1 ignores
# rewording entirely and catches every miss and every invention, but it is blind to laterality:
# CheXpert's labels have no side, so "left effusion" and "right effusion" are the same label.
# Only a laterality-aware check sees the wrong side. Report a lexical and a factual metric, and
# know what neither measures.

# %%
elapsed = time.perf_counter() - lesson_started
print(f"lesson ran in {elapsed:.0f} s ({P.name} profile)")

# %% [markdown]
# ## Summary
#
# - **Intervals by patient.** A subgroup AUROC without an interval is an anecdote; resampling
#   studies instead of patients makes the interval too narrow.
# - **Subgroups and skew.** Report every group with its interval, and the gap's interval. A skew
#   in the training set can cost most where the under-represented group's images look different;
#   measure it with an interval before claiming it.
# - **Shift.** Test on a site no part of the pipeline saw; its drop mixes scanner and case mix.
# - **Missing modalities.** A fusion model trained with every input present is fragile without
#   one; modality dropout buys robustness. Publish the table, not only the best cell.
# - **Decisions.** Net benefit turns a threshold into a statement of costs; a model is useful
#   only where it beats flagging everyone and flagging no one.
# - **Report metrics.** Lexical metrics punish rewording and miss wrong sides; label-based
#   clinical F1 catches misses and inventions but not laterality.
#
# ## Exercises
#
# 1. **Net benefit by hand.** For `DECISION_FINDING` on the test split, compute the net benefit
#    of the image + labs model (`decision_models["image + labs (dropout)"]`) at t = 0.2 from the
#    counts of true and false positives, and store it in `nb_at_20`.

# %% tags=["solution"]
p_dec = decision_models["image + labs (dropout)"]
flag_20 = p_dec >= 0.2
nb_at_20 = ((flag_20 & (y_dec == 1)).sum() - (flag_20 & (y_dec == 0)).sum() * 0.2 / 0.8) / len(y_dec)

# %% tags=["check"]
assert nb_at_20 is not None, "compute TP/n - FP/n * t/(1-t) at t = 0.2"
assert abs(float(nb_at_20) - DC.net_benefit(y_dec, decision_models["image + labs (dropout)"], [0.2])[0]) < 1e-9, \
    "flag a film when p >= t; count true and false positives; divide by n; weigh FP by t/(1-t)"
print(f"correct: net benefit at t = 0.2 is {float(nb_at_20):.4f}")

# %% [markdown]
# 2. **The interval of a gap.** With the site results of section 2 (`subgroups["site"]`), store
#    in `site_gap_ci` the 95% interval of the AUROC of the first site minus that of the second
#    (`cohort.site_names[0]` and `[1]`), computed from their bootstrap values.

# %% tags=["solution"]
first, second = cohort.site_names[0], cohort.site_names[1]
site_gap_ci = FA.interval(subgroups["site"][first]["boot"] - subgroups["site"][second]["boot"])

# %% tags=["check"]
assert site_gap_ci is not None and len(site_gap_ci) == 2, "an interval is a (low, high) pair"
_expected = FA.interval(subgroups["site"][cohort.site_names[0]]["boot"]
                        - subgroups["site"][cohort.site_names[1]]["boot"])
assert np.allclose(site_gap_ci, _expected), \
    "subtract the two groups' 'boot' arrays resample by resample, then take FA.interval of the difference"
print(f"correct: {cohort.site_names[0]} - {cohort.site_names[1]}: [{site_gap_ci[0]:+.3f}, {site_gap_ci[1]:+.3f}]")

# %% [markdown]
# 3. **A fifth error.** Write `flip_negation(report)` that turns the first negated finding
#    sentence starting with "No " (e.g. "No pneumothorax.") into a positive one ("Pneumothorax.");
#    return None when there is none. Which of the four metrics notice it? (Score your edits of
#    the test reports with `PL.pair_scores`.)

# %% tags=["solution"]
def flip_negation(report):
    findings, impression = PL.split_report(report)
    for i, sentence in enumerate(findings):
        if sentence.startswith("No ") and "acute" not in sentence:
            rest = sentence[3:]
            findings[i] = rest[:1].upper() + rest[1:]
            return PL.join_report(findings, impression)
    return None


# %% tags=["check"]
_demo = "FINDINGS: Small left effusion. No pneumothorax. IMPRESSION: Small left effusion."
assert flip_negation(_demo) is not None, "return the edited report (a str) when a 'No ...' sentence exists"
assert "Pneumothorax." in flip_negation(_demo) and "No pneumothorax" not in flip_negation(_demo), \
    "drop the leading 'No ' and capitalise what remains"
assert flip_negation("FINDINGS: The lungs are clear. IMPRESSION: Normal chest.") is None, "None when nothing to flip"
assert PL.pair_scores([_demo], [flip_negation(_demo)])["finding_f1"][0] < 1, "the labeler now reads a pneumothorax"
print("correct:", flip_negation(_demo))

# %% [markdown]
# 4. **Going further** (no check). (a) Replace the learned missing embedding by zeros in
#    `FusionClassifier` and compare the dropout model's "image only" column. (b) Hold out another
#    site (`HELD_OUT_SITE = "Lakeview Clinic"`): does the ranking of the encoders stay? (c) Train
#    the supervised ViT end to end on the sex-skewed training set instead of a probe.
