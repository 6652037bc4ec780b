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
# # 06 Generative pretraining: drawing the image
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medmm-course/medmm-course/blob/main/notebooks/06_generative_images.ipynb)
#
# Lesson 05 wrote the report from the image. This lesson turns the direction around. The review's
# **generative** family has two image-producing branches. **Report -> image** models (RoentGen,
# a Stable Diffusion fine-tuned on MIMIC-CXR reports, is the best known) draw a chest X-ray from
# a sentence, and are used mostly to make *synthetic training data*. **Image -> image** models
# translate one acquisition into another (MRI T1 -> T2, CT -> MRI, low dose -> full dose); most of
# the review's image-image studies are of this kind. Both are judged by what the pictures are
# *for*: a generated X-ray is worth something if it shows the finding it was asked for, and a
# synthesised T2 if it matches the real one where it matters, in the lesion.
#
# You will: write the forward noising process of a diffusion model and check it against the
# library, train a small conditional DDPM on the cohort's images and findings, sample it with DDIM
# and classifier-free guidance, *measure* whether the prompted finding is there with a classifier
# trained on real images, test RoentGen's claim that generated images help a classifier trained
# on few labels, and then synthesise T2 and FLAIR from T1 on MRI phantoms with an L1 U-Net and
# with pix2pix, scored by PSNR and SSIM and, separately, inside the lesions.

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
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

import medmm_lite
from medmm_lite import data as D
from medmm_lite import generative as G
from medmm_lite.eval import psnr
from medmm_lite.eval.metrics import interval, macro_auroc, patient_bootstrap_weights
from medmm_lite.models import count_parameters
from medmm_lite.widgets import generation_box

P = medmm_lite.profile(PROFILE)
medmm_lite.seed_everything(SEED)
print(medmm_lite.profile_summary(P))

# Sizes. A diffusion model needs many more steps than a classifier to draw anything, and each step
# costs more (the U-Net runs at full resolution). Measured on one CPU thread: a 32 px step of batch
# 64 takes ~0.28 s, a 64 px one ~1.3 s; so on the CPU the DDPM is trained at 32 px whatever the
# profile's image size, for two thirds of the profile's steps in smoke (a learning signal in ~30 s,
# at batch 32) and for the profile's steps otherwise. The translation U-Net is cheaper per image
# but runs at the phantoms' full size: a fifth of the profile's steps in smoke (60), a quarter
# otherwise (150 in cpu), at batch 16 on the CPU (an L1 step at 32 px then costs ~0.1 s, at 64 px
# ~0.4 s). The DDPM's learning rate is three times the profile's on the CPU: measured in smoke, at
# the profile's own rate 200 steps leave every sample grainy (high-frequency energy twice the real
# images'), at three times it about half the samples are as smooth as real ones.
GEN_SIZE = 32 if P.device == "cpu" else 64
DDPM_STEPS = 2 * P.steps // 3 if P.name == "smoke" else P.steps
DDPM_BATCH = 32 if P.name == "smoke" else P.batch_size
DDPM_LR = 3 * P.lr if P.device == "cpu" else P.lr
DDIM_STEPS = 12 if P.name == "smoke" else 25           # DDIM: tens of steps instead of 1000
N_PER_PROMPT = {"smoke": 32, "cpu": 64}.get(P.name, 256)   # generated images per prompt, per guidance scale
TRANSLATION_STEPS = P.steps // 5 if P.name == "smoke" else P.steps // 4
TRANSLATION_BATCH = 16 if P.device == "cpu" else 32
N_PHANTOMS = {"smoke": 240, "cpu": 800}.get(P.name, 2000)
print(f"DDPM: {DDPM_STEPS} steps of {DDPM_BATCH} images at {GEN_SIZE} px; DDIM {DDIM_STEPS} steps; "
      f"translation: {TRANSLATION_STEPS} steps on {N_PHANTOMS} phantoms")

# %% [markdown]
# ## 1. The data
#
# The same cohort as every lesson. The generator is conditioned on the **findings**, the cohort's
# ten labels as a multi-hot vector, and a written prompt becomes such a vector through the course's
# report labeler (`findings_from_reports`): "large right pleural effusion" sets Pleural Effusion,
# "no acute findings" sets No Finding. RoentGen conditions on the report's text itself through a
# text encoder (`train_ddpm(..., condition="report")` does that here too); the label vector is the
# cheaper, CPU-sized version of the same idea, and it says exactly what the prompt asks for.

# %%
data = D.prepare_data(P, seed=SEED, dataset=DATASET)
cohort, splits = data.cohort, data.splits
train_idx, val_idx, test_idx = (np.asarray(splits[k]) for k in ("train", "val", "test"))
labels = torch.as_tensor(cohort.labels).float()
EFFUSION = D.FINDINGS.index("Pleural Effusion")
PROMPTS = ["Large right pleural effusion.", "No acute findings.", "Moderate cardiomegaly."]
prompt_cond = G.findings_from_reports(PROMPTS)
for text, vec in zip(PROMPTS, prompt_cond):
    print(f"{text:32s} -> {[D.FINDINGS[j] for j in np.flatnonzero(vec.numpy())]}")
assert prompt_cond[0, EFFUSION] == 1 and prompt_cond[0].sum() == 1
assert prompt_cond[1, D.FINDINGS.index("No Finding")] == 1 and prompt_cond[1].sum() == 1
images_gen = G.resize_images(cohort.images, GEN_SIZE)        # the images the generator learns, [0, 1]
print("images for the generator:", tuple(images_gen.shape))

# %% [markdown]
# ## 2. The idea in one equation
#
# A diffusion model learns to undo noise. The **forward process** adds a little Gaussian noise at
# each of $T$ steps (here $T = 1000$); its steps compose, so the noisy image at any step $t$ has a
# closed form, with $\bar\alpha_t = \prod_{s \le t} (1 - \beta_s)$ falling from 1 to 0:
#
# $$x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon, \qquad \epsilon \sim \mathcal N(0, I),
# \qquad\qquad \mathcal L = \mathbb E_{x_0, c, t, \epsilon} \big\| \epsilon - \epsilon_\theta(x_t, t, c) \big\|^2 .$$
#
# A network $\epsilon_\theta$ sees the noisy image, the step and the condition $c$ and predicts the
# noise that was added (DDPM's "simple" loss). Every training example is one draw of $t$ and
# $\epsilon$: no chain to run. To generate, start from pure noise and remove the predicted noise a
# bit at a time (section 4).
#
# The forward process by hand, against the library's `q_sample` (images live in [-1, 1] inside
# the model; the cosine schedule of Nichol & Dhariwal):

# %%
schedule = G.NoiseSchedule(1000, "cosine")
g = torch.Generator().manual_seed(SEED)
x0 = G.to_model_range(images_gen[train_idx[:6]])
t = torch.tensor([0, 100, 250, 500, 750, 999])
noise = torch.randn(x0.shape, generator=g)
abar = schedule.alphas_cumprod.float()[t].view(-1, 1, 1, 1)
x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise           # the closed form
torch.testing.assert_close(x_t, G.q_sample(schedule, x0, t, noise))
print("abar_t at t =", t.tolist(), "->", [round(float(a), 4) for a in abar.flatten()])
# the noisy image keeps the clean one's signal in proportion sqrt(abar): correlation with x0 falls
corr = [float(np.corrcoef(x_t[i].flatten(), x0[i].flatten())[0, 1]) for i in range(len(t))]
print("correlation with the clean image:", [round(c, 2) for c in corr])
assert corr[0] > 0.99 and abs(corr[-1]) < 0.2

# %% [markdown]
# One image along the forward process, and the signal-to-noise ratio $\bar\alpha_t / (1 -
# \bar\alpha_t)$ over the steps: the cosine schedule spends many steps at moderate noise, where
# the findings are decided, instead of wasting them on nearly pure noise.

# %%
steps_shown = [0, 50, 150, 300, 500, 700, 850, 999]
one = x0[:1].expand(len(steps_shown), -1, -1, -1)
noisy = G.q_sample(schedule, one, torch.tensor(steps_shown), torch.randn(one.shape, generator=g))
fig, axes = plt.subplots(1, len(steps_shown) + 1, figsize=(14, 2.0),
                         gridspec_kw={"width_ratios": [1] * len(steps_shown) + [2]})
for ax, im, s in zip(axes, noisy, steps_shown):
    ax.imshow(G.from_model_range(im)[0], cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"t = {s}", fontsize=9)
    ax.axis("off")
for kind in ("linear", "cosine"):
    axes[-1].plot(G.NoiseSchedule(1000, kind).snr().log10().numpy(), label=kind)
axes[-1].set_xlabel("t", fontsize=8)
axes[-1].set_ylabel("log10 SNR", fontsize=8)
axes[-1].legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# ## 3. The model and its training
#
# The denoiser is a small **U-Net** (`medmm_lite.generative.UNet`): convolutions that halve the
# image twice and come back up, with skip connections carrying the detail across. The step $t$
# enters as a sinusoidal embedding (like a transformer's positions) through an MLP; the condition
# is embedded by a linear layer and *added* to it; every residual block adds a projection of that
# sum to its feature maps.
#
# **Classifier-free guidance** needs one more thing at training time: with probability 0.1 the
# condition is replaced by a learned *null* embedding, so the same network learns both
# $\epsilon_\theta(x_t, t, c)$ and the unconditional $\epsilon_\theta(x_t, t, \varnothing)$.
# `train_ddpm` trains it with `fit` on the training split and caches it.

# %%
model, schedule, info = G.train_ddpm(P, data, seed=SEED, steps=DDPM_STEPS, batch_size=DDPM_BATCH,
                                     lr=DDPM_LR, image_size=GEN_SIZE, condition="findings", dataset=DATASET)
history = info["history"]
device = next(model.parameters()).device
print(f"{count_parameters(model):,} parameters; {len(history)} steps, {history.seconds:.0f} s of training",
      "(loaded from the cache)" if info["cached"] else "")

# %% [markdown]
# The training loss is noisy by nature (every batch draws new steps, and predicting the noise at
# $t \approx 0$ is nearly impossible while at $t \approx T$ it is trivial). So compare the trained
# and the untrained network on the *same* test images, steps and noise:

# %%
untrained = G.build_denoiser(GEN_SIZE, condition="findings", n_findings=labels.shape[1],
                             base_channels=model.unet.base_channels, seed=SEED).to(device).eval()


@torch.no_grad()
def test_loss(m, seed=SEED):
    gen = torch.Generator().manual_seed(seed)
    x = G.to_model_range(images_gen[test_idx]).to(device)
    return float(G.diffusion_loss(m, schedule, x, labels[test_idx].to(device), drop_prob=0.0, generator=gen))


loss_untrained, loss_trained = test_loss(untrained), test_loss(model)
print(f"test noise-prediction loss: untrained {loss_untrained:.3f}, trained {loss_trained:.3f}")
medmm_lite.record("ddpm_loss_ratio", loss_trained / loss_untrained)
assert loss_trained < 0.5 * loss_untrained

fig, ax = plt.subplots(figsize=(6, 3))
history.plot(ax=ax)
ax.set_yscale("log")
ax.set_title("DDPM training loss", fontsize=10)
fig.tight_layout()

# %% [markdown]
# Trust the printed pair more than the curve. On the same test images, steps and noise, the
# trained network's loss is a small fraction of the untrained one's (the assert asks for under
# half, the lesson's bounds for much less): it has learned to tell noise from chest. The curve's
# spread is the mix of easy and hard steps in each batch, not an unstable run.
#
# ## 4. Sampling with DDIM
#
# DDPM samples by running all 1000 steps backwards. **DDIM** (Song et al. 2021) takes a few
# large steps instead: at each, the predicted noise gives an estimate of the clean image,
# $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta) / \sqrt{\bar\alpha_t}$, and the
# sampler jumps to an earlier step's noise level around it. With `eta=0` it is deterministic:
# the same starting noise always gives the same image. Here are the estimates $\hat x_0$ along
# one trajectory per prompt: the coarse layout is decided in the first steps, the detail last.

# %%
def condition_for(k, n):
    """The findings vector of prompt k, for n images."""
    return prompt_cond[k:k + 1].expand(n, -1).clone()


t0 = time.perf_counter()
x_T = torch.randn(len(PROMPTS), 1, GEN_SIZE, GEN_SIZE, generator=torch.Generator().manual_seed(SEED))
cond = torch.cat([condition_for(k, 1) for k in range(len(PROMPTS))])
final, trajectory = G.sample(model, schedule, x_T=x_T, cond=cond, steps=DDIM_STEPS, guidance=3.0,
                             return_trajectory=True)
print(f"{len(PROMPTS)} images in {DDIM_STEPS} DDIM steps: {time.perf_counter() - t0:.1f} s")
shown = np.linspace(0, len(trajectory) - 1, 6).round().astype(int)
fig, axes = plt.subplots(len(PROMPTS), len(shown), figsize=(9, 1.6 * len(PROMPTS)))
for r in range(len(PROMPTS)):
    for c, i in enumerate(shown):
        axes[r, c].imshow(G.from_model_range(trajectory[i][r, 0]), cmap="gray", vmin=0, vmax=1)
        axes[r, c].axis("off")
        if r == 0:
            axes[r, c].set_title(f"step {i + 1}/{len(trajectory)}", fontsize=8)
    axes[r, 0].text(-2, GEN_SIZE / 2, PROMPTS[r], ha="right", va="center", fontsize=8)
fig.tight_layout()
torch.testing.assert_close(trajectory[-1], final.cpu())           # the last estimate is the sample
again = G.sample(model, schedule, x_T=x_T, cond=cond, steps=DDIM_STEPS, guidance=3.0)
torch.testing.assert_close(again, final)                          # eta = 0: deterministic

# %% [markdown]
# ## 5. Does the image show what the prompt asked for?
#
# Looking is not measuring. A **classifier trained on real images** (logistic regression on the
# pixels, downsampled to 16 x 16: simple, fast, and it sees only what is in the image) scores
# every generated image for pleural effusion. If the generator draws effusions when asked, the
# classifier separates "large right pleural effusion" samples from "no acute findings" samples:
# an AUROC well above 0.5. The same starting noise is used for both prompts, so any difference
# is the prompt's doing.

# %%
def features(images):
    """Pixels at 16 x 16, flattened: the classifier's input (any image size, [0, 1])."""
    return G.resize_images(images.float(), 16).flatten(1).numpy()


y_train, y_test = labels[train_idx, EFFUSION].numpy(), labels[test_idx, EFFUSION].numpy()
X_train, X_test = features(cohort.images[train_idx]), features(cohort.images[test_idx])
mean, std = X_train.mean(0), X_train.std(0) + 1e-6


def fit_classifier(X, y):
    return LogisticRegression(C=0.1, max_iter=2000).fit((X - mean) / std, y)


def score(clf, X):
    return clf.decision_function((X - mean) / std)


classifier = fit_classifier(X_train, y_train)
real_auroc = macro_auroc(y_test, score(classifier, X_test))
print(f"effusion classifier trained on {len(y_train)} real images ({int(y_train.sum())} effusions): "
      f"real test AUROC {real_auroc:.3f}")
medmm_lite.record("real_classifier_auroc", real_auroc)
assert real_auroc > 0.65

# %% [markdown]
# Now the **guidance sweep**. Classifier-free guidance combines the two predictions of the one
# network, $\tilde\epsilon = \epsilon_\theta(x_t, \varnothing) + w\,(\epsilon_\theta(x_t, c) -
# \epsilon_\theta(x_t, \varnothing))$: $w = 0$ ignores the prompt, $w = 1$ is the plain
# conditional model, $w > 1$ pushes further in the prompt's direction (at the cost of variety and,
# eventually, realism).

# %%
GUIDANCE = (0.0, 1.0, 3.0, 5.0)
noise_sweep = torch.randn(N_PER_PROMPT, 1, GEN_SIZE, GEN_SIZE, generator=torch.Generator().manual_seed(SEED + 1))
generated, gen_auroc = {}, {}
t0 = time.perf_counter()
for w in GUIDANCE:
    pair = [G.from_model_range(G.sample(model, schedule, x_T=noise_sweep, cond=condition_for(k, N_PER_PROMPT),
                                        steps=DDIM_STEPS, guidance=w)).cpu() for k in (0, 1)]
    generated[w] = pair
    s_eff, s_none = score(classifier, features(pair[0])), score(classifier, features(pair[1]))
    gen_auroc[w] = macro_auroc(np.r_[np.ones(N_PER_PROMPT), np.zeros(N_PER_PROMPT)], np.r_[s_eff, s_none])
    print(f"w = {w}: classifier AUROC, effusion prompt vs no-finding prompt: {gen_auroc[w]:.3f}")
print(f"{2 * N_PER_PROMPT * len(GUIDANCE)} images in {time.perf_counter() - t0:.0f} s")
medmm_lite.record("gen_classifier_auroc_w0", gen_auroc[0.0])
medmm_lite.record("gen_classifier_auroc_w1", gen_auroc[1.0])
medmm_lite.record("gen_classifier_auroc_w3", gen_auroc[3.0])
medmm_lite.record("gen_classifier_auroc_w5", gen_auroc[5.0])
# w = 0 is the unconditional model: the same noise gives the same image whatever the prompt
torch.testing.assert_close(generated[0.0][0], generated[0.0][1])

# %%
fig, axes = plt.subplots(len(GUIDANCE), 9, figsize=(11, 1.35 * len(GUIDANCE)),
                         gridspec_kw={"width_ratios": [1] * 8 + [0.2]})
for r, w in enumerate(GUIDANCE):
    for c in range(8):
        k, i = divmod(c, 4)
        axes[r, c].imshow(generated[w][k][i, 0], cmap="gray", vmin=0, vmax=1)
        axes[r, c].axis("off")
        if r == 0:
            axes[r, c].set_title("effusion" if k == 0 else "no finding", fontsize=8)
    axes[r, 0].text(-2, GEN_SIZE / 2, f"w = {w:g}\nAUROC {gen_auroc[w]:.2f}", ha="right", va="center", fontsize=8)
    axes[r, 8].axis("off")
fig.suptitle("same noise in each column pair: left four 'large right pleural effusion', right four "
             "'no acute findings'", fontsize=9)
fig.tight_layout()

# %% [markdown]
# Real images of each kind, for comparison, and the third prompt (cardiomegaly) at $w = 3$:

# %%
real_eff = train_idx[labels[train_idx, EFFUSION] == 1][:6]
real_none = train_idx[labels[train_idx, D.FINDINGS.index("No Finding")] == 1][:6]
cardio = G.from_model_range(G.sample(model, schedule, x_T=noise_sweep[:6], cond=condition_for(2, 6),
                                     steps=DDIM_STEPS, guidance=3.0)).cpu()
rows = [("real, effusion", images_gen[real_eff]), ("real, no finding", images_gen[real_none]),
        ("generated, effusion (w=3)", generated[3.0][0][:6]), ("generated, no finding", generated[3.0][1][:6]),
        ("generated, cardiomegaly", cardio)]
fig, axes = plt.subplots(len(rows), 6, figsize=(8, 1.45 * len(rows)))
for r, (name, ims) in enumerate(rows):
    for c in range(6):
        axes[r, c].imshow(ims[c, 0], cmap="gray", vmin=0, vmax=1)
        axes[r, c].axis("off")
    axes[r, 0].text(-2, GEN_SIZE / 2, name, ha="right", va="center", fontsize=8)
fig.tight_layout()

# %% [markdown]
# At this budget (half a minute of training in smoke, a few minutes in cpu) many samples are still
# grainy: the model has learned the layout of a chest, and the prompts are meant to change it
# (compare the width of the heart in the cardiomegaly row with the other rows), but not yet the
# texture of a clean image. To the eye the effusion and
# no-finding rows differ little. The classifier does not care about looks, only about what it
# learned from real effusions; that is the point of measuring.
#
# The AUROC per $w$ is the lesson's first measured answer: at $w = 0$ it is 0.5 by construction;
# as $w$ grows, the effusion prompt's images look more and more like effusions *to a model that
# has only ever seen real ones*. Past some $w$ the samples get exaggerated and less varied: the
# trade-off RoentGen and every text-to-image model tune.

# %%
fig, ax = plt.subplots(figsize=(4.5, 3))
ax.plot(GUIDANCE, [gen_auroc[w] for w in GUIDANCE], "o-", label="generated: effusion vs no-finding prompt")
ax.axhline(real_auroc, color="tab:green", ls="--", label="real test images")
ax.axhline(0.5, color="0.6", ls=":")
ax.set_xlabel("guidance scale w")
ax.set_ylabel("classifier AUROC")
ax.legend(fontsize=7)
fig.tight_layout()
assert gen_auroc[3.0] > gen_auroc[0.0] + 0.1, "guidance should make the prompted finding recognisable"

# %% [markdown]
# **Try it: the prompt box.** Type a report and move the guidance scale: the report goes through
# the same labeler as the training reports (`findings_from_reports`), so the model sees only which
# findings it names, not their side or size ("left" below changes nothing). Every click starts from the
# same noise, so what changes between two clicks is the prompt and $w$ alone. Saved, it shows four
# samples of "Moderate cardiomegaly. Small left pleural effusion." at $w = 3$.


# %%
def sample_from_report(report, guidance, n):
    """n images for one report, from fixed noise: DDIM, classifier-free guidance w = guidance."""
    condition = G.findings_from_reports([report]).expand(n, -1).clone()
    noise = torch.randn(n, 1, GEN_SIZE, GEN_SIZE, generator=torch.Generator().manual_seed(SEED + 2))
    return G.from_model_range(G.sample(model, schedule, x_T=noise, cond=condition, steps=DDIM_STEPS,
                                       guidance=guidance)).cpu()


view = generation_box(sample_from_report, "Moderate cardiomegaly. Small left pleural effusion.", guidance=3.0, n=4)
plt.show()

# %% [markdown]
# ## 6. The RoentGen experiment: do generated images help a classifier?
#
# RoentGen's most quoted use: add synthetic images to a *small* labelled real set and train the
# classifier on both. Here: 5% of the training studies with their effusion labels (the label-poor
# setting of lesson 01), then the same plus the generated images of section 5 at $w = 3$, each
# labelled by its prompt (effusion = 1, no finding = 0). Same classifier, same real test set.
# The bootstrap interval is over the test studies, for each AUROC and for the difference.

# %%
rng = np.random.default_rng(SEED)
small = rng.choice(train_idx, size=int(np.ceil(0.05 * len(train_idx))), replace=False)
while labels[small, EFFUSION].sum() < 2:                 # at least two positives to learn from
    small = np.r_[small, rng.choice(train_idx[labels[train_idx, EFFUSION] == 1], 1)]
X_small, y_small = features(cohort.images[small]), labels[small, EFFUSION].numpy()
X_syn = np.r_[features(generated[3.0][0]), features(generated[3.0][1])]
y_syn = np.r_[np.ones(N_PER_PROMPT), np.zeros(N_PER_PROMPT)]
s_real_only = score(fit_classifier(X_small, y_small), X_test)
s_with_syn = score(fit_classifier(np.r_[X_small, X_syn], np.r_[y_small, y_syn]), X_test)
s_syn_only = score(fit_classifier(X_syn, y_syn), X_test)


# A thousand resamples of the test studies, as weights (each study its own "patient": how many
# times it was drawn), scored all at once by the library's AUROC; the same resamples for both
# classifiers, so the difference is paired.
resamples = patient_bootstrap_weights(np.arange(len(y_test)), n_boot=1000, seed=SEED)
boot_real, boot_with = macro_auroc(y_test, s_real_only, resamples), macro_auroc(y_test, s_with_syn, resamples)
ci_real = (macro_auroc(y_test, s_real_only), *interval(boot_real))
ci_with = (macro_auroc(y_test, s_with_syn), *interval(boot_with))
ci_diff = (ci_with[0] - ci_real[0], *interval(boot_with - boot_real))
print(f"{len(small)} real labelled studies ({int(y_small.sum())} effusions), {len(y_syn)} generated ones")
print(f"real only:          AUROC {ci_real[0]:.3f} [{ci_real[1]:.3f}, {ci_real[2]:.3f}]")
print(f"real + generated:   AUROC {ci_with[0]:.3f} [{ci_with[1]:.3f}, {ci_with[2]:.3f}]")
print(f"generated only:     AUROC {macro_auroc(y_test, s_syn_only):.3f}")
print(f"all {len(train_idx)} real labels: AUROC {real_auroc:.3f}")
print(f"difference (with - without): {ci_diff[0]:+.3f} [{ci_diff[1]:+.3f}, {ci_diff[2]:+.3f}]")
medmm_lite.record("roentgen_auroc_real_only", ci_real[0])
medmm_lite.record("roentgen_auroc_with_synthetic", ci_with[0])
medmm_lite.record("roentgen_auroc_synthetic_only", macro_auroc(y_test, s_syn_only))
medmm_lite.record("roentgen_auroc_gain", ci_diff[0])
verdict = ("helped (the interval is above 0)" if ci_diff[1] > 0 else "hurt (the interval is below 0)"
           if ci_diff[2] < 0 else "made no difference this test set can resolve (the interval includes 0)")
print(f"measured answer: adding generated images {verdict}")

# %% [markdown]
# Read the interval, not only the point: the test set is small and so are the gains. The
# generator itself was trained on *all* the training images with their labels, so the synthetic
# images carry information from labels the small set does not have: that is RoentGen's setting
# too (a generator trained on a large labelled or reported archive, used to help a small task),
# and it is why "generated only" can beat "real only". Whether it helps a given task is an
# empirical question, which is why the measured answer above is printed, not assumed.
#
# ## 7. Image to image: MRI T1 to T2
#
# The phantoms give every brain as registered T1, T2 and FLAIR slices, with a mask of its white
# matter lesions (dark on T1, bright on T2 and FLAIR). Because the pairs are registered pixel for
# pixel, synthesis is supervised regression: a U-Net (the same one as above, without the step
# embedding) maps T1 to T2.

# %%
mri = D.generate_mri_phantoms(N_PHANTOMS, image_size=P.image_size, seed=SEED)
order = np.random.default_rng(SEED).permutation(len(mri))
mri_train, mri_test = mri.subset(order[: int(0.8 * len(mri))]), mri.subset(order[int(0.8 * len(mri)):])
print(f"{len(mri_train)} training and {len(mri_test)} test phantoms at {P.image_size} px; "
      f"{float(mri.has_lesion.float().mean()):.0%} have lesions")
show = np.flatnonzero(mri_test.has_lesion.numpy())[:3]
fig, axes = plt.subplots(len(show), 4, figsize=(7, 1.9 * len(show)))
for r, i in enumerate(show):
    for c, (name, im) in enumerate([("T1", mri_test.t1), ("T2", mri_test.t2), ("FLAIR", mri_test.flair),
                                    ("lesion mask", mri_test.lesion_mask)]):
        axes[r, c].imshow(im[i, 0], cmap="gray", vmin=0, vmax=1)
        axes[r, c].axis("off")
        if r == 0:
            axes[r, c].set_title(name, fontsize=9)
fig.tight_layout()

# %% [markdown]
# Follow each lesion across a row: bright on T2 and FLAIR, and on T1 only a faint darker spot, if
# you can find it at all. That faint spot is all a T1 -> T2 model has to go on; section 8 asks
# whether it is enough.
#
# Two models. **L1**: the mean absolute error between the predicted and the true T2. **pix2pix**
# (Isola et al. 2017): the same generator, plus a PatchGAN discriminator that judges (T1, T2)
# pairs patch by patch; the generator minimises the adversarial term plus $100 \times$ L1, so L1
# still does most of the work and the discriminator pushes against the blur L1 leaves behind.
# The baseline every translation must beat is doing nothing: "T2 is the T1".

# %%
l1_model, l1_info = G.train_translation(P, mri_train, source="t1", target="t2", seed=SEED,
                                        steps=TRANSLATION_STEPS, batch_size=TRANSLATION_BATCH)
p2p_model, p2p_info = G.train_translation(P, mri_train, source="t1", target="t2", seed=SEED,
                                          steps=TRANSLATION_STEPS, batch_size=TRANSLATION_BATCH, adversarial=True)
print(f"L1 U-Net {count_parameters(l1_model):,} parameters, {l1_info['history'].seconds:.0f} s; "
      f"pix2pix (+ discriminator) {count_parameters(p2p_model):,}, {p2p_info['history'].seconds:.0f} s")
scores = {"identity (T1 as T2)": G.identity_baseline(mri_test.t1, mri_test.t2),
          "U-Net, L1": G.evaluate_translation(l1_model, mri_test.t1, mri_test.t2),
          "pix2pix": G.evaluate_translation(p2p_model, mri_test.t1, mri_test.t2)}
print(f"{'':22s} {'PSNR (dB)':>10s} {'SSIM':>7s}")
for name, s in scores.items():
    print(f"{name:22s} {s['psnr']:10.2f} {s['ssim']:7.3f}")
medmm_lite.record("t2_psnr_identity", scores["identity (T1 as T2)"]["psnr"])
medmm_lite.record("t2_ssim_identity", scores["identity (T1 as T2)"]["ssim"])
medmm_lite.record("t2_psnr_l1", scores["U-Net, L1"]["psnr"])
medmm_lite.record("t2_ssim_l1", scores["U-Net, L1"]["ssim"])
medmm_lite.record("t2_psnr_pix2pix", scores["pix2pix"]["psnr"])
medmm_lite.record("t2_ssim_pix2pix", scores["pix2pix"]["ssim"])
assert scores["U-Net, L1"]["psnr"] > scores["identity (T1 as T2)"]["psnr"] + 5

# %% [markdown]
# PSNR is $10 \log_{10}(1 / \text{MSE})$ in dB (for images in [0, 1]): +6 dB halves the
# root-mean-square error. SSIM compares local means, contrasts and structure in small windows (1 is
# identical). The identity baseline's SSIM is near zero or below: T1 and T2 have opposite contrast
# (fluid dark on one, bright on the other), so much of their local structure is anti-correlated. Both metrics
# average over the whole image, most of which is background and healthy brain. Where is the error?

# %%
pred_l1, pred_p2p = G.translate(l1_model, mri_test.t1), G.translate(p2p_model, mri_test.t1)
fig, axes = plt.subplots(len(show), 5, figsize=(9, 1.9 * len(show)))
for r, i in enumerate(show):
    panels = [("T1 (input)", mri_test.t1[i, 0], "gray"), ("true T2", mri_test.t2[i, 0], "gray"),
              ("L1 T2", pred_l1[i, 0], "gray"), ("pix2pix T2", pred_p2p[i, 0], "gray"),
              ("|L1 - true|", (pred_l1[i, 0] - mri_test.t2[i, 0]).abs(), "magma")]
    for c, (name, im, cmap) in enumerate(panels):
        axes[r, c].imshow(im, cmap=cmap, vmin=0, vmax=1 if cmap == "gray" else 0.3)
        axes[r, c].contour(mri_test.lesion_mask[i, 0], levels=[0.5], colors="cyan", linewidths=0.6)
        axes[r, c].axis("off")
        if r == 0:
            axes[r, c].set_title(name, fontsize=9)
fig.suptitle("cyan: the true lesion outline", fontsize=9)
fig.tight_layout()

# %% [markdown]
# Look at the error map (right) against the cyan outlines: where is it brightest? Then compare
# the lesions of the two synthetic T2s with the true one: are they there, and are they as bright?
# And look for whether pix2pix's T2 is sharper than L1's, the point of its discriminator. Section
# 8 measures the lesions.
#
# ## 8. The lesion: is its contrast reproduced?
#
# The reason to acquire a T2 is to see what the T1 shows poorly; a synthetic T2 is only as good as
# its lesions. Two measures, over the test phantoms with lesions: the mean absolute error inside
# the lesions against that in the rest of the brain, and the **lesion contrast**: the mean T2
# intensity inside a lesion minus that of a ring of tissue around it (the mask dilated by two
# pixels), predicted vs true. A ratio of 1 means the lesion is as bright against its surroundings
# as it really is; 0 means it has vanished.

# %%
def lesion_stats(pred, ph):
    lesion, brain = ph.lesion_mask.bool(), ph.brain_mask.bool()
    ring = F.max_pool2d(ph.lesion_mask, 5, stride=1, padding=2).bool() & ~lesion & brain
    err = (pred - ph.t2).abs()
    has = ph.has_lesion.numpy() & (ring.flatten(1).sum(1) > 0).numpy()
    contrast = lambda im: np.array([float(im[i][lesion[i]].mean() - im[i][ring[i]].mean())  # noqa: E731
                                    for i in np.flatnonzero(has)])
    true_c, pred_c = contrast(ph.t2), contrast(pred)
    return {"lesion_mae": float(err[lesion].mean()), "brain_mae": float(err[brain & ~lesion].mean()),
            "true_contrast": float(true_c.mean()), "pred_contrast": float(pred_c.mean()),
            "contrast_ratio": float(pred_c.mean() / true_c.mean()), "per_lesion": (true_c, pred_c)}


lesions = {"U-Net, L1": lesion_stats(pred_l1, mri_test), "pix2pix": lesion_stats(pred_p2p, mri_test),
           "identity (T1 as T2)": lesion_stats(mri_test.t1, mri_test)}
print(f"true T2 lesion contrast {lesions['U-Net, L1']['true_contrast']:.3f}")
print(f"{'':22s} {'MAE lesion':>11s} {'MAE brain':>10s} {'contrast':>9s} {'ratio':>6s}")
for name, s in lesions.items():
    print(f"{name:22s} {s['lesion_mae']:11.3f} {s['brain_mae']:10.3f} {s['pred_contrast']:9.3f} "
          f"{s['contrast_ratio']:6.2f}")
assert lesions["U-Net, L1"]["lesion_mae"] > lesions["U-Net, L1"]["brain_mae"]   # the lesions are the hard part
medmm_lite.record("t2_lesion_mae_l1", lesions["U-Net, L1"]["lesion_mae"])
medmm_lite.record("t2_brain_mae_l1", lesions["U-Net, L1"]["brain_mae"])
medmm_lite.record("t2_lesion_contrast_ratio_l1", lesions["U-Net, L1"]["contrast_ratio"])
medmm_lite.record("t2_lesion_contrast_ratio_pix2pix", lesions["pix2pix"]["contrast_ratio"])

fig, ax = plt.subplots(figsize=(4, 3.5))
for name in ("U-Net, L1", "pix2pix"):
    true_c, pred_c = lesions[name]["per_lesion"]
    ax.scatter(true_c, pred_c, s=10, label=name)
lim = max(lesions["U-Net, L1"]["per_lesion"][0].max(), 0.1)
ax.plot([0, lim], [0, lim], color="0.5", ls=":")
ax.set_xlabel("true lesion contrast (T2)")
ax.set_ylabel("synthesised lesion contrast")
ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# The error concentrates in the lesions: per pixel it is several times the rest of the brain's.
# A lesion is a few pixels of the image, so the L1 loss barely notices it, and its only trace in
# the T1 is a slightly darker spot in the white matter: the network must learn "faint dark spot ->
# bright spot" from few examples. On the diagonal above a lesion would be reproduced at its true
# contrast; below it, the synthetic T2 shows the lesion fainter than it is, and near zero not at
# all. The lesions are *where* they should be (the figure of section 7) but not *as bright*: the
# hedged, averaged answer an L1 loss gives when it is unsure. That is the case where a synthetic T2
# would mislead a reader (a lesion load underestimated) while its PSNR and SSIM look excellent.

# %%
true_c, pred_c = lesions["U-Net, L1"]["per_lesion"]
faint = float(np.mean(pred_c < 0.5 * true_c))
print(f"L1: {faint:.0%} of the test phantoms with lesions have their lesion contrast at under half its true value")
medmm_lite.record("t2_lesions_faint_frac_l1", faint)

# %% [markdown]
# ## 9. T1 to FLAIR
#
# FLAIR suppresses the fluid signal: ventricles go dark, lesions stay bright. The same recipe:

# %%
flair_model, _ = G.train_translation(P, mri_train, source="t1", target="flair", seed=SEED,
                                     steps=TRANSLATION_STEPS, batch_size=TRANSLATION_BATCH)
flair_scores = G.evaluate_translation(flair_model, mri_test.t1, mri_test.flair)
flair_identity = G.identity_baseline(mri_test.t1, mri_test.flair)
print(f"T1 -> FLAIR: PSNR {flair_scores['psnr']:.2f} dB, SSIM {flair_scores['ssim']:.3f} "
      f"(identity {flair_identity['psnr']:.2f} dB, {flair_identity['ssim']:.3f})")
medmm_lite.record("flair_psnr_l1", flair_scores["psnr"])
medmm_lite.record("flair_psnr_identity", flair_identity["psnr"])
assert flair_scores["psnr"] > flair_identity["psnr"]

# %% [markdown]
# ## Summary
#
# - A diffusion model is trained with one line of noise, $x_t = \sqrt{\bar\alpha_t} x_0 +
#   \sqrt{1-\bar\alpha_t}\epsilon$, and a regression onto $\epsilon$; sampling runs it backwards,
#   and DDIM does so in tens of steps instead of a thousand.
# - Classifier-free guidance trains one network with and without the condition and extrapolates
#   between them; the guidance scale trades faithfulness to the prompt for variety.
# - Whether a generated image shows its prompt is a measurement: a classifier trained on real
#   images, scoring generated ones (section 5), not an impression from a grid of samples.
# - Synthetic images as training data (RoentGen's use) is an empirical claim: compare with and
#   without on a real test set, with an interval, and report what was measured.
# - Image-to-image translation is supervised regression on registered pairs. PSNR and SSIM are
#   dominated by the easy pixels; measure the lesions separately, because that is where synthesis
#   fails and where it matters.
#
# ## Exercises
#
# 1. **Half the signal.** Find the step `t_half` at which $\bar\alpha_t$ is closest to 0.5 (the
#    image and the noise contribute equal variance), and noise the test images to that step with
#    `q_sample` and noise from `torch.Generator().manual_seed(SEED)`: store the result in
#    `x_half`.

# %% tags=["solution"]
t_half = int((schedule.alphas_cumprod - 0.5).abs().argmin())
x_clean = G.to_model_range(images_gen[test_idx])
x_half = G.q_sample(schedule, x_clean, torch.full((len(x_clean),), t_half),
                    torch.randn(x_clean.shape, generator=torch.Generator().manual_seed(SEED)))

# %% tags=["check"]
assert t_half is not None and x_half is not None, "find t_half and noise the test images to it"
assert abs(float(schedule.alphas_cumprod[t_half]) - 0.5) <= float(
    (schedule.alphas_cumprod - 0.5).abs().min()) + 1e-12, "t_half: the step whose abar is closest to 0.5"
expected = (0.5 ** 0.5) * x_clean + (0.5 ** 0.5) * torch.randn(x_clean.shape,
                                                                generator=torch.Generator().manual_seed(SEED))
assert torch.allclose(x_half, expected, atol=0.01), "x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, abar ~ 0.5"
print(f"correct: t_half = {t_half} of {schedule.num_steps}")

# %% [markdown]
# 2. **Guidance by hand.** For the first four noisy images of exercise 1, compute the model's
#    conditional prediction (the effusion prompt) and its unconditional one (`cond=None`), and
#    combine them at $w = 2$ into `eps_guided`.

# %% tags=["solution"]
with torch.no_grad():
    xb, tb = x_half[:4].to(device), torch.full((4,), t_half, device=device)
    eps_cond = model(xb, tb, condition_for(0, 4).to(device))
    eps_uncond = model(xb, tb, None)
    eps_guided = eps_uncond + 2.0 * (eps_cond - eps_uncond)

# %% tags=["check"]
assert eps_guided is not None, "combine the two predictions"
with torch.no_grad():
    library = G.guided_eps(model, x_half[:4].to(device), torch.full((4,), t_half, device=device),
                           condition_for(0, 4).to(device), guidance=2.0)
torch.testing.assert_close(eps_guided, library, rtol=1e-4, atol=1e-4)
print("correct: eps_uncond + w (eps_cond - eps_uncond)")

# %% [markdown]
# 3. **PSNR by hand.** Compute the PSNR of the L1 model's T2 (`pred_l1`) against the true T2 the
#    way `psnr` does: per image $10 \log_{10}(1 / \text{MSE})$, then the mean over images. Store it
#    in `psnr_by_hand`. Then store in `lesion_share` the fraction of the total absolute error of
#    `pred_l1` (over the test images) that falls inside the lesion masks, and compare it with the
#    fraction of pixels that are lesion.

# %% tags=["solution"]
mse = ((pred_l1 - mri_test.t2) ** 2).flatten(1).mean(1)
psnr_by_hand = float((10 * torch.log10(1 / mse)).mean())
abs_err = (pred_l1 - mri_test.t2).abs()
lesion_share = float(abs_err[mri_test.lesion_mask.bool()].sum() / abs_err.sum())

# %% tags=["check"]
assert psnr_by_hand is not None and lesion_share is not None, "compute both"
assert abs(psnr_by_hand - psnr(pred_l1, mri_test.t2)) < 1e-3, "per-image 10 log10(1 / MSE), then the mean"
share = float((pred_l1 - mri_test.t2).abs()[mri_test.lesion_mask.bool()].sum() / (pred_l1 - mri_test.t2).abs().sum())
assert abs(lesion_share - share) < 1e-6, "the error inside the lesions divided by the error everywhere"
pixels = float(mri_test.lesion_mask.mean())
print(f"correct: PSNR {psnr_by_hand:.2f} dB; lesions are {pixels:.2%} of the pixels and carry "
      f"{lesion_share:.2%} of the error")

# %% [markdown]
# 4. **Going further** (longer runs, no check). (a) Condition on the report text instead of the
#    labels: `G.train_ddpm(P, data, condition="report", image_size=GEN_SIZE)`, prompt it with
#    tokenized sentences, and repeat section 5's measurement. (b) Repeat the RoentGen experiment
#    with 1% and 20% real labels and with 4x the generated images: when do synthetic images stop
#    helping? (c) Train pix2pix with `l1_weight=10` and look at the lesions and the texture.
#
# Next: lesson 07 puts a language model behind the image encoder (the generative VLM recipe).
