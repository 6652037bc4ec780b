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
# # 08 Combined pretraining: contrastive + captioning in one model (CoCa)
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medmm-course/medmm-course/blob/main/notebooks/08_combined_coca.ipynb)
#
# Lesson 02 learned from reports by *matching* them to images (the review's **contrastive**
# family): good embeddings for retrieval and zero-shot prompts, but no words out. Lesson 05
# learned by *writing* them (**generative**): a report out, but no shared space to search. The
# review's **combined** family asks for both from one model. CoCa (Contrastive Captioners, Yu et
# al. 2022) is the simplest such recipe: one image encoder, one text decoder cut in two, two
# losses from one forward pass.
#
# You will: build CoCa's text side (a causal text tower whose last token, a [CLS] appended at the
# end, gives the contrastive text embedding; then cross-attention blocks that write the report),
# check each piece, write its loss by hand, train it beside its two halves (contrastive-only and
# captioning-only: the same model, backbone, data, steps and learning rate, one loss weight set
# to zero), all three starting from lesson 02's CLIP image encoder, with a CoCa trained from
# scratch as the control; then compare them on retrieval, zero-shot classification, the reports
# they write and what their image encoders learned.

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
import copy
import textwrap
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import medmm_lite
from medmm_lite import data as D
from medmm_lite.adapt import pathology_auroc, probe_curve, prompt_embeddings, zero_shot_classify
from medmm_lite.eval import (bootstrap_ci, hallucinations, labels_matrix, precision_at_k, report_metrics,
                             retrieval_recall_at_k)
from medmm_lite.models import count_parameters
from medmm_lite.objectives import clip_loss
from medmm_lite.pretrain import caption as C
from medmm_lite.pretrain import coca as K
from medmm_lite.pretrain.clip import embed_images, embed_reports, pretrain_clip
from medmm_lite.pretrain.m3ae import derangement

P = medmm_lite.profile(PROFILE)
medmm_lite.seed_everything(SEED)
print(medmm_lite.profile_summary(P))

# %% [markdown]
# ## 1. One text for both losses
#
# Both halves of CoCa read the same tokens: the **IMPRESSION**, the radiologist's conclusion
# (lesson 02's text for CLIP), as `[BOS] text [EOS]`. The contrastive half embeds it, the
# captioning half writes it. It names what is present in a line or two: a third of the tokens of
# the FINDINGS section that lesson 05's captioner wrote, which is what lets three models train
# within this lesson's budget, and a captioner that writes it has to say *which* findings the
# image shows instead of listing every absent one.

# %%
data = D.prepare_data(P, seed=SEED, dataset=DATASET)
cohort, splits, tok = data.cohort, data.splits, data.tokenizer
train_idx, val_idx, test_idx = (np.asarray(splits[k]) for k in ("train", "val", "test"))
TEXT = "impression"
texts = C.caption_texts(data, TEXT)
ids, mask = C.encode_captions(data, TEXT)
example = int(test_idx[0])
print(cohort.reports[example])
print("\nboth halves read:", tok.convert_ids_to_tokens(ids[example][: int(mask[example].sum())].tolist()))
findings_mask = C.encode_captions(data, "findings")[1]
print(f"\ntokens per text (median, with [BOS] and [EOS]): impression {mask.sum(1).median():.0f}, "
      f"findings {findings_mask.sum(1).median():.0f}")
assert ids[example, 0] == tok.bos_token_id and ids[example, int(mask[example].sum()) - 1] == tok.eos_token_id

# %% [markdown]
# ## 2. The idea in one picture
#
# ```
# image --ViT--> [CLS] ----MLP head----------------------------> image embedding --.
#                [CLS] + patch tokens (memory) ----------.                           |  contrastive loss
# [BOS] w1 ... [EOS] [CLS_text] --unimodal causal blocks--+-> [CLS_text] output -----'  (CLIP's, weight 1)
#                                    token outputs --multimodal blocks (self + cross-attention)--> next token
#                                                                                   captioning loss (weight 2)
# ```
#
# $$\mathcal{L}_{\text{CoCa}} = \lambda_{\text{con}}\,\mathcal{L}_{\text{con}} + \lambda_{\text{cap}}\,\mathcal{L}_{\text{cap}},
# \qquad \lambda_{\text{con}} = 1,\ \lambda_{\text{cap}} = 2 \ \text{(the paper's weights)}.$$
#
# The text decoder is split in two. The lower, **unimodal** blocks are a causal language model
# that never sees the image. A learned token, `[CLS_text]`, is appended at the *end* of the text:
# in a causal sequence only the last position sees every token, and no token sees it, so the
# captioning path is untouched by it. Its output, through a projection head, is the report's
# embedding for the contrastive loss. The upper, **multimodal** blocks take the unimodal token
# outputs, cross-attend to the image and predict the next token. One pass through the image
# encoder and the unimodal blocks serves both losses.
#
# The choices, against the two public implementations (open_clip's `coca_model.py`, lucidrains'
# `CoCa-pytorch`): the text [CLS] at the end (both), masked so that it reads only real tokens
# (open_clip); one decoder of the profile's depth split in half, as in the paper (open_clip stacks a
# full text tower and a full multimodal decoder, twice the cost); the output layer tied to the
# token embedding (lucidrains). Not kept: CoCa's
# *attentional poolers* (learned queries that compress hundreds of image tokens); our ViT has
# 16-64 patches, so the decoder reads the ViT's output tokens directly, and the image embedding
# is the ViT's global feature through lesson 02's projection head.

# %%
model0 = K.build_coca(P, len(tok), seed=SEED, max_len=ids.shape[1]).eval()   # the initial weights
dec = model0.decoder
parts = {"image encoder (ViT)": model0.image_encoder, "unimodal text blocks": dec.unimodal,
         "multimodal blocks": dec.multimodal, "token + position embeddings": [dec.token_embed, dec.pos_embed],
         "projection heads": [model0.image_projection, model0.text_projection]}
for name, modules in parts.items():
    modules = modules if isinstance(modules, list) else [modules]
    print(f"{name:28s}{sum(count_parameters(m) for m in modules):>10,}")
print(f"{'all (the embedding is shared)':28s}{count_parameters(model0):>10,}")

# %% [markdown]
# Compare the rows with what each loss needs. A captioner needs everything but the projection
# heads; the contrastive half adds only those heads (and the [CLS] token) on top of it. Image
# encoder, text blocks and embeddings serve both losses, which is CoCa's case for training them
# together.
#
# ## 3. The text tower and its [CLS] at the end
#
# Build the unimodal pass by hand. Texts are right-padded, so the appended [CLS] sits after the
# padding: its row of the attention mask must let it see the real tokens and itself, and nothing
# else. Each token sees the tokens before it (causal), never the [CLS].

# %%
b = {"image": cohort.images[train_idx[:8]], "input_ids": ids[train_idx[:8]], "attention_mask": mask[train_idx[:8]]}
L = int(b["attention_mask"].sum(1).max())                      # trim the all-padding columns
x_ids, x_mask = b["input_ids"][:, :L], b["attention_mask"][:, :L]


def cls_mask(attention_mask):
    """(B, L) real-token mask -> (B, 1, L+1, L+1) boolean attention mask, True = may attend."""
    B, L = attention_mask.shape
    keys = torch.cat([attention_mask.bool(), torch.ones(B, 1, dtype=torch.bool)], dim=1)   # the [CLS] is real
    causal = torch.ones(L + 1, L + 1, dtype=torch.bool).tril()
    itself = torch.eye(L + 1, dtype=torch.bool)                  # a padded query must see something
    return ((causal & keys[:, None, :]) | itself)[:, None]


with torch.no_grad():
    x = torch.cat([dec.token_embed(x_ids) + dec.pos_embed(torch.arange(L)),
                   dec.cls_token.expand(len(x_ids), -1, -1)], dim=1)   # the [CLS] gets no position: always last
    attn = cls_mask(x_mask)
    for block in dec.unimodal:
        x = block(x, attn_mask=attn)
    my_cls, my_tokens = dec.cls_norm(x[:, -1]), x[:, :-1]
    lib_cls, lib_tokens = dec.encode_text(x_ids, x_mask)
torch.testing.assert_close(my_cls, lib_cls)
torch.testing.assert_close(my_tokens[x_mask.bool()], lib_tokens[x_mask.bool()])
print("text [CLS]", tuple(my_cls.shape), "| token outputs", tuple(my_tokens.shape), "| matches the library")

fig, ax = plt.subplots(figsize=(3.2, 3.2))
short = int(x_mask.sum(1).argmin())
ax.imshow(attn[short, 0].numpy(), cmap="Greys", vmin=0, vmax=1.6)
ax.set_title(f"who sees whom: text {short}\n({int(x_mask[short].sum())} real tokens, then padding, then [CLS])", fontsize=8)
ax.set_xlabel("key"); ax.set_ylabel("query")
fig.tight_layout()

# %% [markdown]
# Check what the picture says: the [CLS] embedding does not change with the padding, does change
# with the last real token, and cannot change with the image, which the unimodal blocks never
# receive.

# %%
with torch.no_grad():
    padded = x_ids.masked_fill(x_mask == 0, 7)
    torch.testing.assert_close(dec.encode_text(padded, x_mask)[0], lib_cls)
    last = x_mask.sum(1) - 2                                     # the last word before [EOS]
    edited = x_ids.clone()
    edited[torch.arange(len(edited)), last] = (edited[torch.arange(len(edited)), last] + 5) % len(tok)
    assert (dec.encode_text(edited, x_mask)[0] - lib_cls).abs().amax(1).min() > 1e-4
    a = model0(b["image"], x_ids, x_mask)
    shuffled = model0(b["image"].flip(0), x_ids, x_mask)
torch.testing.assert_close(a.text_embeddings, shuffled.text_embeddings)
assert not torch.allclose(a.logits, shuffled.logits)
print("padding: no effect; the last word: changes the [CLS]; the image: no effect on the [CLS], "
      "changes the captioning logits")

# %% [markdown]
# ## 4. The captioning half, and the loss by hand
#
# The multimodal blocks read the unimodal token outputs (not the [CLS]) and cross-attend to the
# image's memory: the ViT's global feature (the mean of its patch outputs) and the patch outputs. Causality still holds end to end: a token
# changed at position 6 changes nothing before it.

# %%
with torch.no_grad():
    memory = model0.image_memory(b["image"])
    logits = dec.multimodal_logits(lib_tokens, memory)
    changed = x_ids.clone()
    changed[:, 6] = (changed[:, 6] + 3) % len(tok)
    after = model0(b["image"], changed, x_mask).logits
print("memory", tuple(memory.shape), f"= (images, the global feature + {model0.image_encoder.num_patches} patches, width)")
print("logits", tuple(logits.shape), "= (texts, positions, vocabulary)")
torch.testing.assert_close(logits, a.logits)
torch.testing.assert_close(logits[:, :6], after[:, :6])
assert not torch.allclose(logits[:, 6:], after[:, 6:])

# %% [markdown]
# The loss: CLIP's symmetric InfoNCE between the image and text embeddings (lesson 02), plus twice
# the next-token cross-entropy over the real target tokens (lesson 05), from one forward pass.

# %%
model0.train()
out = model0(b["image"], x_ids, x_mask)
l_con = clip_loss(out.image_embeddings, out.text_embeddings, model0.logit_scale())
targets = x_ids[:, 1:].masked_fill(x_mask[:, 1:] == 0, -100)          # padding: no loss
l_cap = F.cross_entropy(out.logits[:, :-1].reshape(-1, len(tok)), targets.reshape(-1), ignore_index=-100)
by_hand = 1.0 * l_con + 2.0 * l_cap
library, terms = K.coca_loss(model0, b["image"], b["input_ids"], b["attention_mask"])
model0.eval()
torch.testing.assert_close(library, by_hand)
print(f"contrastive {l_con.item():.3f} (ln 8 = {np.log(8):.3f} for a batch of 8), captioning {l_cap.item():.3f} "
      f"(ln {len(tok)} = {np.log(len(tok)):.3f}); total = 1 x {l_con.item():.3f} + 2 x {l_cap.item():.3f} = {by_hand.item():.3f}")

# %% [markdown]
# ## 5. Three models, one start, one budget
#
# `pretrain_coca` trains with `fit` and caches the result. The two single-loss models are the same
# recipe with one weight set to zero (the CoCa paper's own ablation): the contrastive-only model
# is CLIP with CoCa's text tower (lesson 02's loss, heads and temperature), the captioning-only
# model is an encoder-decoder captioner with a deeper decoder. Everything else is shared: the
# batches from one hospital at a time, light augmentation, the profile's steps, batch size and
# learning rate, the seed, and the start: `image_init="clip"` copies lesson 02's CLIP image
# encoder and projection head into the model, and every weight then trains (the paper starts its
# encoders from pretraining too). A zero-weight part is frozen and never run, so each model pays
# only for what it trains: equal steps are not equal compute, and the wall time is printed
# beside each.
#
# The control is the same CoCa with its image encoder from scratch (`image_init="scratch"`): it
# shows what the start is worth.

# %%
ARMS = {"CoCa": (1.0, 2.0, "clip"), "contrastive only": (1.0, 0.0, "clip"), "captioning only": (0.0, 2.0, "clip"),
        "CoCa from scratch": (1.0, 2.0, "scratch")}
ARM_KEYS = {"CoCa": "coca", "contrastive only": "contrastive", "captioning only": "captioning",
            "CoCa from scratch": "coca_scratch"}
models, histories = {}, {}
for name, (w_con, w_cap, start) in ARMS.items():
    models[name], info = K.pretrain_coca(P, data, seed=SEED, dataset=DATASET, contrastive_weight=w_con,
                                         caption_weight=w_cap, text=TEXT, image_init=start)
    histories[name] = info["history"]
device = next(models["CoCa"].parameters()).device
print(f"\n{'':18s}{'steps':>6s}{'train s':>9s}{'ms/step':>9s}  final validation losses "
      f"(contrastive: all {len(val_idx)} validation pairs at once, chance ln {len(val_idx)} = {np.log(len(val_idx)):.2f})")
for name, h in histories.items():
    print(f"{name:18s}{len(h):6d}{h.seconds:9.1f}{1000 * h.seconds / len(h):9.0f}  "
          + ", ".join(f"{k} {v:.3f}" for k, v in h.evals[-1][1].items()))
    medmm_lite.record(f"{ARM_KEYS[name]}_train_seconds", h.seconds)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
for ax, metric, val in ((axes[0], "contrastive_loss", "val_contrastive"), (axes[1], "caption_loss", "val_caption")):
    for i, (name, h) in enumerate(histories.items()):
        if metric in h.metrics:
            window = max(1, len(h) // 20)
            ax.plot(h.steps[window - 1:], np.convolve(h.metrics[metric], np.ones(window) / window, "valid"),
                    color=f"C{i}", label=f"{name} (train)")
            if val == "val_caption":
                ax.plot(*h.eval_curve(val), "o--", color=f"C{i}", ms=4, label=f"{name} (validation)")
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
axes[0].set_ylabel("contrastive loss (nats, train)")
axes[0].axhline(np.log(P.batch_size), color="grey", lw=0.8, ls=":")
axes[0].text(len(histories["CoCa"]), np.log(P.batch_size), "ln(batch): chance", fontsize=7, ha="right", va="bottom")
axes[1].set_ylabel("captioning loss (nats per token)")
axes[1].set_yscale("log")
fig.tight_layout()

# %% [markdown]
# On the left, the contrastive losses against the dotted chance line; on the right, each
# captioner's training curve (solid) against its validation points (dashed): where they part,
# the model has started to memorise its training impressions. The contrastive-only model has no
# captioning curve and the captioning-only model no contrastive one, since a zero-weight part is
# never run. Mind the table above the figure: equal steps, unequal seconds.
#
# ## 6. Retrieval: does the shared space work?
#
# Embed every test image and every test report; rank the reports for each image (image -> text)
# and the images for each report (text -> image). The captioning-only model has no shared space:
# it cannot embed a report without an image, so it has no retrieval score here (exercise 3 gives
# it one, at a price).

# %%
test_images = cohort.images[test_idx]
test_ids, test_mask = ids[test_idx], mask[test_idx]
test_labels = cohort.labels[test_idx]
KS = (1, 5, 10)
retrieval, embeddings, sims = {}, {}, {}
for name in ("CoCa", "contrastive only"):
    m = models[name]
    image_emb, text_emb = embed_images(m, test_images), embed_reports(m, test_ids, test_mask)
    embeddings[name] = image_emb
    sim = sims[name] = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    retrieval[name] = {"i2t": retrieval_recall_at_k(sim, list(KS)), "t2i": retrieval_recall_at_k(sim.T, list(KS)),
                       "P@10": precision_at_k(sim, test_labels, test_labels, 10)}
print(f"{len(test_idx)} test pairs; chance R@10 = {10 / len(test_idx):.3f}\n")
print(f"{'':18s}" + "".join(f"{'i2t R@' + str(k):>9s}" for k in KS) + "".join(f"{'t2i R@' + str(k):>9s}" for k in KS)
      + f"{'P@10':>7s}")
for name, r in retrieval.items():
    print(f"{name:18s}" + "".join(f"{r['i2t'][k]:9.3f}" for k in KS) + "".join(f"{r['t2i'][k]:9.3f}" for k in KS)
          + f"{r['P@10']:7.3f}")
print(f"{'captioning only':18s}   (no shared space)")
for name, key in (("CoCa", "coca"), ("contrastive only", "contrastive")):
    medmm_lite.record(f"{key}_i2t_r10", retrieval[name]["i2t"][10])
    medmm_lite.record(f"{key}_t2i_r10", retrieval[name]["t2i"][10])
    medmm_lite.record(f"{key}_i2t_r1", retrieval[name]["i2t"][1])
assert all(r["i2t"][10] > 10 / len(test_idx) for r in retrieval.values())

# %% [markdown]
# Both rows are far above chance (the lesson's bounds ask it). The comparison that matters is
# CoCa against the contrastive-only model: the same contrastive half, so a gap between them is
# what the captioning loss beside it did to the shared space. Section 10 gives that gap an
# interval.
#
# ## 7. Zero-shot classification
#
# No labels: embed a positive and a negative prompt per finding ("Pleural effusion." / "No pleural
# effusion.", three phrasings each, averaged), and score each image by which one it is closer to
# (lesson 02). The prompts are encoded exactly as the training texts, `[BOS] text [EOS]`.

# %%
zero_shot = {}
for name in ("CoCa", "contrastive only"):
    positive, negative = prompt_embeddings(K.text_embedder(models[name], tok))
    zero_shot[name] = pathology_auroc(test_labels, zero_shot_classify(embeddings[name], positive, negative))
    print(f"{name:18s} zero-shot macro AUROC over the 9 pathologies: {zero_shot[name]['macro']:.3f}")
medmm_lite.record("coca_zero_shot_auroc", zero_shot["CoCa"]["macro"])
medmm_lite.record("contrastive_zero_shot_auroc", zero_shot["contrastive only"]["macro"])
findings = list(zero_shot["CoCa"]["per_finding"])
fig, ax = plt.subplots(figsize=(10, 2.8))
for offset, (name, result) in zip((-0.2, 0.2), zero_shot.items()):
    ax.bar(np.arange(len(findings)) + offset, [result["per_finding"][f] for f in findings], 0.4, label=name)
ax.axhline(0.5, color="grey", lw=0.8, ls="--")
ax.set_xticks(range(len(findings)), [f.replace(" ", "\n") for f in findings], fontsize=7)
ax.set_ylabel("zero-shot AUROC")
ax.set_ylim(0, 1)
ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# Both models read their prompts above chance on average (the lesson's bounds). Compare the two
# bars of each finding: if CoCa's and the contrastive-only model's are close, the captioning loss
# neither helped nor hurt the shared space for that finding; bars near the dashed line are
# findings whose hand-written prompts do not work for either.
#
# ## 8. Writing reports
#
# Does a captioner look at the image at all? Score the test reports with the right images and with
# another study's (each test study paired with another one): a ratio of 1 means the image changes
# nothing. The control, CoCa from scratch, is scored beside the two captioners that started from
# CLIP.

# %%
shuffle = derangement(len(test_idx), SEED).numpy()
image_use = {}
WRITER_KEYS = {"CoCa": "coca", "captioning only": "caption", "CoCa from scratch": "coca_scratch"}
WRITERS = ("CoCa", "captioning only", "CoCa from scratch")
for name in WRITERS:
    right = K.caption_nll(models[name], test_images, test_ids, test_mask)
    wrong = K.caption_nll(models[name], test_images[shuffle], test_ids, test_mask)
    image_use[name] = right / wrong
    print(f"{name:17s} test loss {right:.3f} nats per token with the right image, {wrong:.3f} with another "
          f"study's (ratio {right / wrong:.3f})")
    medmm_lite.record(f"{WRITER_KEYS[name]}_test_caption_nll", right)
print(f"(an untrained decoder: ln {len(tok)} = {np.log(len(tok)):.2f} nats per token)")
medmm_lite.record("coca_image_loss_ratio", image_use["CoCa"])
medmm_lite.record("caption_image_loss_ratio", image_use["captioning only"])
medmm_lite.record("coca_scratch_image_loss_ratio", image_use["CoCa from scratch"])

# %% [markdown]
# Now write: beam search (4 beams) through the library's `generate` with its KV cache; CoCa's
# decoder has the same interface as lesson 05's. Scores as in lesson 05: BLEU-4 and ROUGE-L
# (shared words), clinical F1 (the findings the labeler reads out of both reports), hallucinated
# findings; and the baseline every report model must beat, the most common training report.

# %%
references = [texts[i] for i in test_idx]
generated = {name: K.generate_reports(models[name], test_images, tok, "beam", num_beams=4) for name in WRITERS}
train_texts = [texts[i] for i in train_idx]
common_report = Counter(train_texts).most_common(1)[0][0]
rows = {name: report_metrics(references, g) for name, g in generated.items()}
rows["most common training report"] = report_metrics(references, [common_report] * len(test_idx))
found = {name: hallucinations(g, test_labels) for name, g in generated.items()}
found["most common training report"] = hallucinations([common_report] * len(test_idx), test_labels)
generated_or_common = {**generated, "most common training report": [common_report] * len(test_idx)}
print(f"most common training report: {common_report!r}\n")
print(f"{'':29s}{'BLEU-4':>8s}{'ROUGE-L':>9s}{'clin. F1 micro':>16s}{'macro':>7s}{'halluc./report':>16s}{'distinct':>9s}")
for name, r in rows.items():
    print(f"{name:29s}{r['bleu4']:8.3f}{r['rouge_l']:9.3f}{r['clinical_f1_micro']:16.3f}{r['clinical_f1_macro']:7.3f}"
          f"{found[name]['per_report_mean']:16.2f}{len(set(generated_or_common[name])):9d}")
for name, key in WRITER_KEYS.items():
    medmm_lite.record(f"{key}_clinical_f1", rows[name]["clinical_f1_micro"])
    medmm_lite.record(f"{key}_clinical_f1_macro", rows[name]["clinical_f1_macro"])
    medmm_lite.record(f"{key}_bleu4", rows[name]["bleu4"])
    medmm_lite.record(f"{key}_hallucinations_per_report", found[name]["per_report_mean"])
medmm_lite.record("common_report_clinical_f1", rows["most common training report"]["clinical_f1_micro"])

# %%
def wrap(text, width=110, indent="    "):
    return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent)


sick = test_labels[:, :len(D.PATHOLOGIES)].sum(1).numpy()
for k in (int(np.argmax(sick)), int(np.flatnonzero(sick == 1)[0]), int(np.flatnonzero(sick == 0)[0])):
    print(f"test study {test_idx[k]}: labels {[f for f, y in zip(D.FINDINGS, test_labels[k]) if y]}")
    print(wrap("TRUE:            " + references[k]))
    for name in generated:
        print(wrap(f"{name.upper() + ':':17s}" + generated[name][k]))
    print()

# %% [markdown]
# Read the clinical F1 column against the last row of the table, the most common training
# report, which never looks at an image: a writer near that row is not reading the image, and
# the lesson's bounds hold CoCa above its control from scratch. Then the last two columns: a
# model that writes few different reports is writing the cohort's average, whatever its BLEU,
# and hallucinations count what it invents. The three studies printed above show what the
# columns average.
#
# ## 9. What did each image encoder learn?
#
# Throw the text side away, freeze each ViT and train a linear probe on 1%, 10% and 100% of the
# training labels (the course's protocol, lesson 01), on each ViT's global feature, the mean of its
# patch outputs. All three started from lesson 02's CLIP encoder, probed here as it was before
# this lesson trained it; the untrained ViT is the floor.

# %%
clip_model, _ = pretrain_clip(P, data, seed=SEED)
encoders = {"CoCa": models["CoCa"].image_encoder, "contrastive only": models["contrastive only"].image_encoder,
            "captioning only": models["captioning only"].image_encoder,
            "CLIP (the start)": clip_model.image_encoder, "untrained ViT": model0.image_encoder}
curves = {name: probe_curve(enc, cohort, splits, steps=P.probe_steps, seed=SEED, device=P.device)
          for name, enc in encoders.items()}
fractions = list(curves["CoCa"])
print(f"{'':18s}" + "".join(f"{f:>8.0%}" for f in fractions))
for name, curve in curves.items():
    print(f"{name:18s}" + "".join(f"{curve[f]['macro']:8.3f}" for f in fractions))
for name, key in (("CoCa", "coca"), ("contrastive only", "contrastive"), ("captioning only", "caption"),
                  ("CLIP (the start)", "clip"), ("untrained ViT", "untrained")):
    for f in fractions:
        medmm_lite.record(f"{key}_probe_auroc_{round(f * 100)}pct", curves[name][f]["macro"])

fig, ax = plt.subplots(figsize=(5.5, 3.4))
for name, curve in curves.items():
    ax.plot([100 * f for f in fractions], [curve[f]["macro"] for f in fractions], marker="o", label=name,
            ls="--" if name in ("untrained ViT", "CLIP (the start)") else "-")
ax.set_xscale("log")
ax.set_xlabel("% of training labels")
ax.set_ylabel("linear-probe AUROC (test)")
ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# The two dashed lines are the references: the untrained ViT is the floor, CLIP is where all
# three trained encoders began. A solid line above the CLIP line means this lesson's training
# taught the encoder more than lesson 02 had; at or below it, the training changed the encoder
# without improving what a linear probe reads. The scoreboard below compares them with the rest.
#
# ## 10. The scoreboard

# %%
board = {
    "i2t R@10": {n: retrieval[n]["i2t"][10] for n in retrieval},
    "t2i R@10": {n: retrieval[n]["t2i"][10] for n in retrieval},
    "zero-shot AUROC": {n: zero_shot[n]["macro"] for n in zero_shot},
    "clinical F1 (beam)": {n: rows[n]["clinical_f1_micro"] for n in generated},
    "image loss ratio": {n: image_use[n] for n in image_use},
    "probe AUROC 1%": {n: curves[n][fractions[0]]["macro"] for n in ARMS if n in curves},
    "probe AUROC 100%": {n: curves[n][fractions[-1]]["macro"] for n in ARMS if n in curves},
    "training s": {n: histories[n].seconds for n in ARMS},
}
print(f"{'':20s}" + "".join(f"{n:>19s}" for n in ARMS))
for metric, values in board.items():
    print(f"{metric:20s}" + "".join(f"{values[n]:19.3f}" if n in values else f"{'-':>19s}" for n in ARMS))

# %% [markdown]
# Which differences are larger than the luck of this test set? Paired bootstrap over the test
# studies (the same resampled studies for both models): image -> text R@10 of CoCa minus the
# contrastive-only model, and clinical F1 of CoCa's reports minus the captioning-only model's,
# the control's (CoCa from scratch) and the most common report's.

# %%
def top10_hits(sim):
    """Per query: 1 if its own report is among the 10 most similar (ties in its favour)."""
    return ((sim > sim.diag()[:, None]).sum(1) < 10).float().numpy()


def micro_f1(y, p):
    tp, fp, fn = (y & p).sum(), (~y & p).sum(), (y & ~p).sum()
    return 2 * tp / max(2 * tp + fp + fn, 1)


hits = {name: top10_hits(sim) for name, sim in sims.items()}
assert abs(hits["CoCa"].mean() - retrieval["CoCa"]["i2t"][10]) < 1e-6
truth = labels_matrix(references).astype(bool)
read = {name: labels_matrix(g).astype(bool) for name, g in generated_or_common.items()}
assert abs(micro_f1(truth, read["CoCa"]) - rows["CoCa"]["clinical_f1_micro"]) < 1e-9
comparisons = {
    "i2t R@10, CoCa - contrastive only": bootstrap_ci(lambda a, b: a.mean() - b.mean(), hits["CoCa"],
                                                      hits["contrastive only"], n_boot=1000, seed=SEED),
    "clinical F1, CoCa - captioning only": bootstrap_ci(lambda y, a, b: micro_f1(y, a) - micro_f1(y, b), truth,
                                                        read["CoCa"], read["captioning only"], n_boot=1000, seed=SEED),
    "clinical F1, CoCa - CoCa from scratch": bootstrap_ci(lambda y, a, b: micro_f1(y, a) - micro_f1(y, b), truth,
                                                          read["CoCa"], read["CoCa from scratch"], n_boot=1000,
                                                          seed=SEED),
    "clinical F1, CoCa - most common report": bootstrap_ci(
        lambda y, a, b: micro_f1(y, a) - micro_f1(y, b), truth, read["CoCa"], read["most common training report"],
        n_boot=1000, seed=SEED),
}
for what, (point, low, high) in comparisons.items():
    verdict = "CoCa higher" if low > 0 else "CoCa lower" if high < 0 else "no clear difference"
    print(f"{what:40s} {point:+.3f} (95% interval {low:+.3f} to {high:+.3f}): {verdict}")
medmm_lite.record("coca_minus_contrastive_i2t_r10", comparisons["i2t R@10, CoCa - contrastive only"][0])
medmm_lite.record("coca_minus_caption_clinical_f1", comparisons["clinical F1, CoCa - captioning only"][0])
medmm_lite.record("coca_minus_scratch_clinical_f1", comparisons["clinical F1, CoCa - CoCa from scratch"][0])

# %% [markdown]
# **Reading the scoreboard.** CoCa's promise is the union of its halves: one model that retrieves
# and prompts like a contrastive model and writes like a captioner. Read it row by row, with the
# intervals above, and with the control in mind.
#
# * **The start is worth something, not everything.** With the course's ViT (its convolutional
#   stem, lesson 01), even CoCa from scratch reads the image at this budget: its loss rises with
#   another study's image, and its clinical F1 is far above the most common report's. Started
#   from CLIP's encoder, the same recipe reads it better: a lower image loss ratio, and a clinical
#   F1 above the control's by the interval printed above.
# * **Does the contrastive term help the writer?** CoCa and the captioning-only model started from
#   the same encoder; the interval of their clinical F1 difference answers it for this run, and
#   the hallucination column of section 8 shows where the two differ.
# * **Retrieval and zero-shot** come from the contrastive half; the interval of CoCa minus the
#   contrastive-only model says whether the captioning loss beside it helped or cost anything.
#   (Both score zero-shot with the hand-written prompts; lesson 02 showed what prompts taken from
#   the training reports add.)
# * **Probes**: all three started from CLIP's encoder (the dashed line). Compare each with that
#   start to see what another 600 steps on the same pairs did, and the captioning-only line (no
#   contrastive term) with the two that have one.
# * **Cost**: the training seconds row. A CoCa step costs more than either single-loss step; the
#   times come from one machine, possibly running other work, so read them to about 30%.
#
# So the combined model is a better writer when it starts from an encoder that already sees, as
# the paper's CoCa, LLaVA (lesson 07) and the report generators of lesson 05 do, and it keeps a
# shared space for retrieval and zero-shot prompts beside its decoder.
#
# ## Summary
#
# * CoCa = one image encoder + one text decoder cut in two: unimodal causal blocks whose appended
#   [CLS] gives the text embedding, multimodal blocks that cross-attend to the image and write.
#   Loss = 1 x contrastive + 2 x captioning, from one forward pass.
# * The [CLS] goes at the *end* of the causal sequence: only there does it see the whole text, and
#   no token sees it, so captioning is untouched. Masked to the real tokens, it ignores padding.
# * The single-loss models are the same recipe with a weight set to 0: everything else equal, and
#   the compute each spent reported beside its scores.
# * Check that a captioner reads the image (the loss with shuffled images, clinical F1 against the
#   most common report) before reading its BLEU.
# * The control (the same recipe from scratch) is what shows what a pretrained start is worth: here,
#   reports that read the image better, by an interval that excludes zero.
#
# ## Exercises

# %% [markdown]
# 1. **The [CLS] at the start.** Build the mask for a [CLS] *prepended* before `[BOS]` in a causal
#    tower (`cls_first_mask(attention_mask)`, shape (B, 1, L+1, L+1), True = may attend) and say what
#    the [CLS]'s output could then depend on. Store in `cls_sees` how many keys the [CLS] query may
#    attend to in row 0.

# %% tags=["solution"]
def cls_first_mask(attention_mask):
    B, L = attention_mask.shape
    keys = torch.cat([torch.ones(B, 1, dtype=torch.bool), attention_mask.bool()], dim=1)
    causal = torch.ones(L + 1, L + 1, dtype=torch.bool).tril()
    return ((causal & keys[:, None, :]) | torch.eye(L + 1, dtype=torch.bool))[:, None]


first = cls_first_mask(x_mask)
cls_sees = int(first[0, 0, 0].sum())
print(f"a [CLS] first sees {cls_sees} key(s): only itself. Its output is the same for every text, "
      "so a causal tower must put it last.")

# %% tags=["check"]
assert cls_sees is not None and first is not None, "build the mask and count the True entries of the [CLS]'s row"
assert tuple(first.shape) == (len(x_mask), 1, x_mask.shape[1] + 1, x_mask.shape[1] + 1), "shape (B, 1, L+1, L+1)"
assert cls_sees == 1, "in a causal mask, row 0 (the first position) may only attend to key 0: itself"
assert bool(first[0, 0, -1, 0]), "every later token may attend to the [CLS] at position 0"
print("correct")

# %% [markdown]
# 2. **Who pulls the shared encoder harder?** For one training batch `b` and the trained CoCa
#    model, compute the gradient norm on the ViT's parameters of the contrastive term alone
#    (`grad_con`) and of the *weighted* captioning term `2 * caption` alone (`grad_cap`), with
#    `K.coca_loss(...)`'s parts. Which loss shapes the image encoder more? Try weight 1 instead of 2.

# %% tags=["solution"]
def encoder_grad_norm(loss, encoder):
    grads = torch.autograd.grad(loss, [p for p in encoder.parameters() if p.requires_grad], allow_unused=True,
                                retain_graph=True)    # the two terms share one graph
    return float(torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None)))


coca = copy.deepcopy(models["CoCa"]).train()      # a copy: train mode would update the BatchNorm statistics
_, terms = K.coca_loss(coca, b["image"].to(device), b["input_ids"].to(device), b["attention_mask"].to(device))
grad_con = encoder_grad_norm(terms["contrastive"], coca.image_encoder)
grad_cap = encoder_grad_norm(2.0 * terms["caption"], coca.image_encoder)
print(f"|grad| on the ViT: contrastive {grad_con:.4f}, 2 x captioning {grad_cap:.4f}")

# %% tags=["check"]
assert grad_con is not None and grad_cap is not None, "compute both gradient norms"
assert grad_con > 0 and grad_cap > 0, "both losses reach the ViT: the captioner through cross-attention"
assert np.isfinite(grad_con) and np.isfinite(grad_cap), "use torch.autograd.grad on the ViT's parameters"
print("correct")

# %% [markdown]
# 3. **Retrieval with a captioner.** A captioner has no embedding, but it can still rank reports:
#    score image i against report j by the mean log-probability the decoder gives report j when it
#    reads image i. For the first 48 test studies build `caption_sim` (48, 48) with the
#    captioning-only model (hint: `K.caption_nll` on one pair at a time is slow; repeat the image
#    and run the model on all 48 reports at once) and compute its image -> text R@10. What does it
#    cost compared with one matrix product of embeddings?

# %% tags=["solution"]
n = min(48, len(test_idx))
cap_model = models["captioning only"]
rows_ids, rows_mask = test_ids[:n].to(device), test_mask[:n].to(device)
targets_n = C.shift_targets(rows_ids, rows_mask)
caption_sim = torch.zeros(n, n)
with torch.no_grad():
    for i in range(n):
        logits_i = cap_model(test_images[i:i + 1].expand(n, -1, -1, -1).to(device), rows_ids, rows_mask,
                             contrastive=False).logits[:, :-1].float()
        nll = F.cross_entropy(logits_i.transpose(1, 2), targets_n, ignore_index=-100, reduction="none")
        caption_sim[i] = -(nll.sum(1) / (targets_n != -100).sum(1)).cpu()
caption_r10 = retrieval_recall_at_k(caption_sim, 10)
print(f"captioner as a retriever on {n} pairs: i2t R@10 {caption_r10:.3f} (chance {10 / n:.3f}); "
      f"{n * n} decoder passes instead of one matrix product")

# %% tags=["check"]
assert caption_sim is not None and caption_sim.ndim == 2 and caption_sim.shape[0] == caption_sim.shape[1], \
    "one score per (image, report) pair: a square matrix"
assert torch.isfinite(caption_sim).all() and (caption_sim < 0).all(), "a mean log-probability is negative"
assert caption_sim.std() > 0, "each report gets its own score: different texts have different likelihoods"
print("correct:", round(caption_r10, 3))
