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
# # 07 Generative VLM: the LLaVA recipe
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medmm-course/medmm-course/blob/main/notebooks/07_generative_vlm.ipynb)
#
# Lesson 05 trained a captioner: an image in, one report out. A **generative vision-language
# model** (the review's fourth pretraining family) goes further: it answers *any* question about
# an image, in words, by putting the image inside the prompt of a large language model. LLaVA
# (Liu et al. 2023) showed how little this takes:
#
# ```
# image --frozen vision encoder--> patch features --projector--> K "image tokens"
# prompt:  [BOS] <|user|> <image> is there a pneumothorax? <|assistant|>
# the LLM reads:  e(BOS) e(user) [img_1 ... img_K] e(is) e(there) ... e(assistant)  ->  "yes" [EOS]
# ```
#
# and two training stages: **stage 1** trains only the projector on image-report pairs (the
# image tokens learn to speak the LLM's language); **stage 2** trains the projector and the LLM
# on instruction conversations, with the loss on the **answer tokens only** (every other label
# is -100). LLaVA-Med, MAIRA-2 and CheXagent follow this recipe for radiology; MAIRA-2 also
# writes box coordinates as text, which is how our model will answer "where?".
#
# You will build each piece and check it (where the image tokens land, which labels are -100),
# train both stages, chat with the model, and measure it: closed-question accuracy beside the
# answer a model blind to the image would give, box IoU, open answers by clinical F1 and
# hallucinations, stage 1 against stages 1+2, and classification by instruction against
# lesson 02's zero-shot CLIP.

# %% tags=["parameters"]
PROFILE = "auto"     # "smoke" (CI), "cpu" (laptop), "gpu", or "auto"
SEED = 0
DATASET = "synthcxr"
N_EVAL = None        # evaluation questions per kind (None: from the profile)

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
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import medmm_lite
from medmm_lite import data as D
from medmm_lite import vlm
from medmm_lite.adapt import pathology_auroc, report_prompt_embeddings, zero_shot_classify
from medmm_lite.pretrain import clip as CL
from medmm_lite.vlm import instructions as I
from medmm_lite.vlm import model as M
from medmm_lite.widgets import chat_box

P = medmm_lite.profile(PROFILE)
medmm_lite.seed_everything(SEED)
N_EVAL = N_EVAL or (200 if P.name == "smoke" else 300)
print(medmm_lite.profile_summary(P))
started = time.perf_counter()

# %% [markdown]
# ## 1. The data, and a tokenizer that can chat
#
# The cohort, its patient splits and (for lesson 02's CLIP) the report tokenizer, as in every
# lesson. The language model gets a tokenizer of its own: WordPiece learned on the training
# reports *and* the question templates (a real LLM's vocabulary knows both kinds of text), plus
# three special tokens: `<image>` (the placeholder), `<|user|>` and `<|assistant|>` (the roles).
# Special tokens are never split or lower-cased, and keep the course's ids for `[PAD]`=0 ...
# `[EOS]`=6; the new ones come after the vocabulary.

# %%
data = D.prepare_data(P, seed=SEED, dataset=DATASET)
cohort, splits = data.cohort, data.splits
train_idx, test_idx = (np.asarray(splits[k]) for k in ("train", "test"))
tok = vlm.vlm_tokenizer(data)
special = I.special_ids(tok)
print(f"{len(train_idx)} training and {len(test_idx)} test studies; vocabulary {len(tok)} tokens")
print("special ids:", special)
assert tok.convert_ids_to_tokens([0, 5, 6]) == ["[PAD]", "[BOS]", "[EOS]"]
print("yes ->", tok.tokenize("yes"), "| no ->", tok.tokenize("no"))

# %% [markdown]
# ## 2. Instructions from the cohort
#
# LLaVA asked a text-only GPT-4 to turn captions and boxes into conversations. Our cohort knows
# its own truth (labels, sides, severities, boxes, reports), so it writes the instructions
# directly and every answer is right by construction:
#
# | kind | question | answer |
# |---|---|---|
# | presence | is there a pleural effusion? | yes / no |
# | side | which side is the pneumothorax? | left / right / both |
# | size | how large is the nodule? (how severe is the edema?) | small / moderate / large (mild / moderate / severe) |
# | grounding | where is the consolidation? | `[x0, y0, x1, y1]`, percent of width and height |
# | open | describe the findings. / write the impression. | the report's sections |
#
# **Closed questions must be balanced.** Most findings are absent in most images, so a model that
# always says "no" would look accurate. Each finding is asked of every training image that has it
# and of as many that do not: yes and no are exactly 50/50 for every question, and any accuracy
# above 0.5 must come from the image.

# %%
train_questions = vlm.generate_questions(cohort, train_idx, seed=SEED)
kinds = Counter(q["kind"] for q in train_questions)
print("training questions per kind:", dict(kinds))
presence = [q for q in train_questions if q["kind"] == "presence"]
for finding in D.FINDINGS:
    answers = Counter(q["answer"] for q in presence if q["finding"] == finding)
    assert answers["yes"] == answers["no"] > 0, finding
print("presence answers:", dict(Counter(q["answer"] for q in presence)), "(balanced for every finding)")
for q in [next(q for q in train_questions if q["kind"] == k) for k in I.QUESTION_KINDS]:
    print(f"  [{q['kind']}] study {q['image']}: {q['question']} -> {q['answer'][:70]}")

# %% [markdown]
# One image's questions are grouped into **multi-turn conversations** (up to three turns; the
# image is given once, in the first user turn). The test split's studies (other patients) only
# ever appear in evaluation.

# %%
conversations = vlm.build_conversations(train_questions, seed=SEED)
assert {c["image"] for c in conversations}.isdisjoint(test_idx.tolist())
turns = Counter(len(c["turns"]) for c in conversations)
print(f"{len(conversations)} conversations; turns per conversation: {dict(sorted(turns.items()))}")
example = next(c for c in conversations if len(c["turns"]) == 3)
print(vlm.render_chat(example["turns"]))

# %% [markdown]
# ## 3. The chat template and label masking
#
# The template (`vlm.render_chat`, and the same as a Jinja `chat_template` on the tokenizer, so
# `tok.apply_chat_template(messages)` works as with any Hugging Face chat model):
#
# `[BOS] <|user|> <image> question <|assistant|> answer [EOS] <|user|> question <|assistant|> answer [EOS] ...`
#
# **Loss on answers only.** The model must learn to *answer*, not to predict the questions (which
# the user writes) or the image placeholder. So the label of every position outside an answer is
# -100, which PyTorch's cross-entropy (`ignore_index=-100`) skips; each answer's `[EOS]` is
# labelled, so the model learns to stop. This is LLaVA's `IGNORE_INDEX` masking in
# `preprocess`. Written out by hand:

# %%
IGNORE = -100


def encode_with_labels(turns):
    """Ids and labels of a conversation: the answers (and their [EOS]) are targets, the rest -100."""
    ids, labels = [special["bos"]], [IGNORE]
    for k, (question, answer) in enumerate(turns):
        user = [special["user"]] + ([special["image"]] if k == 0 else [])
        user += tok(question, add_special_tokens=False)["input_ids"] + [special["assistant"]]
        reply = tok(answer, add_special_tokens=False)["input_ids"] + [special["eos"]]
        ids += user + reply
        labels += [IGNORE] * len(user) + reply
    return ids, labels


pairs = [(t["question"], t["answer"]) for t in example["turns"]]
ids, labels = encode_with_labels(pairs)
assert (ids, labels) == vlm.encode_conversation(tok, pairs), "same as the library's encoder"
messages = []
for k, (q, a) in enumerate(pairs):
    messages += [{"role": "user", "content": ("<image> " if k == 0 else "") + q}, {"role": "assistant", "content": a}]
applied = tok.apply_chat_template(messages, tokenize=True)
assert list(applied["input_ids"] if hasattr(applied, "keys") else applied) == ids, "the Jinja template agrees"

tokens = tok.convert_ids_to_tokens(ids)
print("token          label")
for t, l in zip(tokens, labels):
    print(f"{t:14s} {'-100' if l == IGNORE else tok.convert_ids_to_tokens(l)}")
n_answer_turns = sum(l == special["eos"] for l in labels)
assert n_answer_turns == len(pairs), "every turn's answer is trained, not only the last"
assert all(l == IGNORE for t, l in zip(ids, labels) if t in (special["user"], special["assistant"], special["image"]))

# %% [markdown]
# Read the label column down: every -100 sits outside the answers (`[BOS]`, the roles, the image
# placeholder, the questions), every real label inside them (the answer's words and its `[EOS]`),
# in every turn, not only the last. The cell's asserts check it.
#
# ## 4. The language model: a Hugging Face Llama, pretrained on reports
#
# A real VLM starts from an LLM trained on trillions of tokens. Ours is the same class,
# `transformers.LlamaForCausalLM` (RMSNorm, rotary positions, a SwiGLU MLP, a KV cache), built from
# a `LlamaConfig` with a few layers and "pretrained" here on the training reports by next-token
# prediction. With internet, `vlm.from_pretrained("HuggingFaceTB/SmolLM2-135M")` loads a real one
# (and its tokenizer) the same way; offline it fails with a message naming this default.

# %%
sizes = vlm.language_model.lm_sizes(P)
config = vlm.lm_config(len(tok), tokenizer=tok, **sizes)
print(config.__class__.__name__, {k: getattr(config, k) for k in
      ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")})
lm, lm_info = vlm.pretrain_language_model(P, data, tok, seed=SEED)
print(f"LM parameters: {sum(p.numel() for p in lm.parameters()):,}; "
      f"loss {lm_info['history'].loss[0]:.2f} -> {lm_info['history'].final_loss:.2f}")
assert lm_info["history"].final_loss < 0.5 * lm_info["history"].loss[0]

# The standard Hugging Face API: a prompt of ids, generate() with the KV cache, greedy.
prompt = tok("there is a", add_special_tokens=False, return_tensors="pt")["input_ids"]
prompt = torch.cat([torch.tensor([[tok.bos_token_id]]), prompt], 1).to(lm.device)
out = lm.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False,
                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
print("the LM continues 'there is a':", tok.decode(out[0], skip_special_tokens=True))

# %% [markdown]
# ## 5. The vision encoder and the projector
#
# The vision encoder is lesson 02's CLIP ViT (from the cache, or trained now), **frozen**, as in
# LLaVA: its features were trained to line up with reports. Each image becomes K tokens: CLIP's
# global feature (the pooled output its loss trained) and its patch grid average-pooled to
# 4 x 4. Because the encoder is frozen, the features of every image are computed once and reused at
# every training step.
#
# One detail matters more than it looks. Every chest X-ray shows the same anatomy, so the frozen
# encoder gives all images nearly the same vector; what tells them apart is small. (CLIP's
# projection head has a BatchNorm for this reason, lesson 02.) The VLM therefore standardises
# each feature with the mean and standard deviation of the training images
# (`model.set_feature_stats`, fixed buffers, not learned) before the projector. Without it,
# our smoke-profile model answered the presence questions no better than with another study's image.
#
# The **projector** maps them into the LM's embedding space. LLaVA-1 used one linear layer;
# LLaVA-1.5 a two-layer MLP with a GELU (`mlp2x_gelu`), which aligned better. We build the MLP,
# then check it against the library's `Projector`.

# %%
clip_model, clip_info = CL.pretrain_clip(P, data, seed=SEED)
model = vlm.build_vlm(P, tok, seed=SEED)
model.vision.load_state_dict(clip_model.image_encoder.state_dict())
features = vlm.batched_image_features(model, cohort.images)          # (N, K, d_vision), computed once
print("image features:", tuple(features.shape), "=", f"1 global + {model.image_grid}x{model.image_grid} pooled patches")


class MLPProjector(nn.Module):
    def __init__(self, vision_dim, lm_dim):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(vision_dim, lm_dim), nn.Linear(lm_dim, lm_dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


my_projector = MLPProjector(features.shape[-1], config.hidden_size)
my_projector.fc1.load_state_dict(model.projector.net[0].state_dict())
my_projector.fc2.load_state_dict(model.projector.net[2].state_dict())
image_tokens = my_projector(features[:2])
assert torch.allclose(image_tokens, model.projector(features[:2]), atol=1e-6)
print("image tokens:", tuple(image_tokens.shape), "(batch, K, LM width)")

# %% [markdown]
# ## 6. Splicing the image into the prompt
#
# The prompt's `<image>` placeholder is replaced by the K image tokens: LLaVA's
# `prepare_inputs_labels_for_multimodal`. The sequence grows by K - 1, the attention mask marks
# the image tokens as real, their labels are -100 (nothing to predict there), and the positions
# count real tokens only, so a left-padded prompt still starts at position 0. Written per row,
# the way LLaVA does it:

# %%
def splice_by_hand(input_ids, image_embeds, mask, labels):
    text = model.lm.get_input_embeddings()(input_ids)
    rows = []
    for b in range(len(input_ids)):
        p = int((input_ids[b] == special["image"]).nonzero())
        K = image_embeds.shape[1]
        emb = torch.cat([text[b, :p], image_embeds[b], text[b, p + 1:]])
        m = torch.cat([mask[b, :p], torch.ones(K, dtype=mask.dtype), mask[b, p + 1:]])
        lab = torch.cat([labels[b, :p], torch.full((K,), IGNORE), labels[b, p + 1:]])
        rows.append((emb, m, lab))
    return [torch.stack(x) for x in zip(*rows)]


batch = I.encode_conversations(tok, [example] + conversations[:3], max_len=P.max_text_len + 32)
img = model.projector(features[batch["image"]])
mine = splice_by_hand(batch["input_ids"], img, batch["attention_mask"], batch["labels"])
lib = M.splice_image_tokens(model.lm.get_input_embeddings()(batch["input_ids"]), batch["input_ids"], img,
                            special["image"], batch["attention_mask"], batch["labels"])
assert torch.allclose(mine[0], lib[0]) and torch.equal(mine[1], lib[1]) and torch.equal(mine[2], lib[2])
K = img.shape[1]
print(f"text {tuple(batch['input_ids'].shape)} + {K} image tokens - 1 placeholder -> {tuple(lib[0].shape[:2])}")

# What the language model sees for the first conversation: image, prompt, answer, padding.
row_mask, row_labels = lib[1][0], lib[2][0]
p = int((batch["input_ids"][0] == special["image"]).nonzero())
kind = np.where(row_mask.numpy() == 0, 0, 1)
kind[p:p + K] = 2
kind[row_labels.numpy() != IGNORE] = 3
fig, ax = plt.subplots(figsize=(9, 1.1))
colors = plt.matplotlib.colors.ListedColormap(["#dddddd", "#8fb3de", "#e4a35b", "#5aa469"])
ax.imshow(kind[None], cmap=colors, vmin=0, vmax=3, aspect="auto")
ax.set_yticks([])
ax.set_xlabel("position")
ax.set_title("grey: padding   blue: prompt (label -100)   orange: image tokens (label -100)   green: answer (trained)",
             fontsize=8)
plt.show()
assert (row_labels[p:p + K] == IGNORE).all() and (row_mask[p:p + K] == 1).all()

# %% [markdown]
# In the strip, the orange block of K image tokens sits where the single `<image>` placeholder
# was, and only the green answer positions carry a label: the image tokens are read by every
# later position, never predicted.
#
# ## 7. Stage 1: align the projector
#
# Vision encoder and language model frozen; only the projector learns, on image-report pairs in
# LLaVA-1.5's *plain* template, `[BOS] <image> report [EOS]`, the report being the target. The
# LM already knows how reports read; the projector has to make the image tokens say *which*
# report. `pretrain_vlm(stage=1)` runs the phases so far (CLIP and the LM come from the cache).

# %%
stage1, info1 = vlm.pretrain_vlm(P, data, seed=SEED, stage=1)
h1 = info1["phases"]["stage1"]["history"]
trainable1 = sum(p.numel() for p in stage1.projector.parameters())
print(f"stage 1 trains the projector only: {trainable1:,} parameters; loss {h1.loss[0]:.3f} -> {h1.final_loss:.3f}")
assert h1.final_loss < h1.loss[0]

# %% [markdown]
# ## 8. Stage 2: instruction tuning
#
# Projector and language model learn together on the conversations, the loss on the answers
# only. At this size we fine-tune the whole LM (LLaVA's choice); with a large LM one trains a
# **LoRA** update instead (`lora_rank=8`, via `medmm_lite.adapt.apply_lora`; exercise 1 counts
# what that saves). Batches are drawn from sequences of similar length (LLaVA's
# `group_by_modality_length`), so a batch of one-word answers is not padded to the longest report.

# %%
model, info2 = vlm.pretrain_vlm(P, data, seed=SEED)
h2 = info2["history"]["history"]
print(f"stage 2 trains {info2['history']['trainable_parameters']:,} parameters on "
      f"{info2['history']['conversations']} conversations; loss {h2.loss[0]:.3f} -> {h2.final_loss:.3f}")
assert h2.final_loss < 0.5 * h2.loss[0]

fig, axes = plt.subplots(1, 3, figsize=(11, 2.8))
for ax, (name, h) in zip(axes, (("LM on reports", lm_info["history"]), ("stage 1: projector", h1),
                                ("stage 2: projector + LM", h2))):
    h.plot(ax=ax, smooth=10)
    ax.set_title(name, fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# The three curves are three different tasks, so compare each with its own start, not with the
# others. The language model and stage 2 each end below half of where they began (the lesson
# asserts it). Stage 1 only has to fall, and a shallow fall is expected: the language model
# already knows how reports read, so what the projector can remove is the part of a report only
# the image can tell.
#
# ## 9. Generation with the KV cache
#
# To answer, the model extends the prompt one token at a time. Re-reading the whole sequence for
# every new token repeats all the earlier work; the **KV cache** keeps every layer's keys and
# values of the positions already read, so each step feeds only the newest token. Prompts of
# different lengths are **left-padded**, so every row's next token lands in the same last column
# and the batch extends together. A greedy loop by hand, against the library's `generate`:

# %%
@torch.no_grad()
def greedy_by_hand(prompt_ids, feats, max_new_tokens=12):
    """One prompt, greedy, with the cache (transformers' keyword: cache in 5.x, past_key_values before)."""
    dev = model.lm.device
    ids = torch.tensor([prompt_ids], device=dev)
    embeds, mask, _, positions = model.embed(ids, feats[None].to(dev))
    out = model.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True)
    new = []
    for _ in range(max_new_tokens):
        token = int(out.logits[0, -1].argmax())
        if token == special["eos"]:
            break
        new.append(token)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        positions = positions[:, -1:] + 1
        out = model.lm(inputs_embeds=model.lm.get_input_embeddings()(torch.tensor([[token]], device=dev)), attention_mask=mask,
                       position_ids=positions, use_cache=True, **{model._cache_kw: M.cache_of(out)})
    return new


questions = ["is there a pleural effusion?", "where is the pleural effusion?", "write the impression."]
test_feats = features[test_idx[:3]]
prompts = [vlm.evaluate.prompt_ids(model, q) for q in questions]
by_hand = [greedy_by_hand(p, f) for p, f in zip(prompts, test_feats)]
batched = M.generate(model, prompts, test_feats, max_new_tokens=12)
no_cache = M.generate(model, prompts, test_feats, max_new_tokens=12, use_cache=False)
assert by_hand == batched == no_cache, "cache, no cache, batched and one at a time must agree"
for q, a in zip(questions, batched):
    print(f"{q} -> {tok.decode(a)}")

many = [vlm.evaluate.prompt_ids(model, "write the impression.")] * 64
timings = {}
for use_cache in (True, False):
    t0 = time.perf_counter()
    M.generate(model, many, features[test_idx[:64]], max_new_tokens=40, use_cache=use_cache)
    timings[use_cache] = time.perf_counter() - t0
print(f"64 impressions: {timings[True]:.2f} s with the KV cache, {timings[False]:.2f} s without")

# %% [markdown]
# ## 10. Chat with it
#
# In a live notebook this is a chat box: pick a study, type a question, keep talking (the model
# sees the earlier turns). In the executed copy it shows one study's conversation as a figure;
# a few more are printed below.

# %%
test_images = cohort.images[test_idx]
answer = vlm.answerer(model, test_images)
with_effusion = int(np.flatnonzero(cohort.labels[test_idx, D.FINDINGS.index("Pleural Effusion")] == 1)[0])
view = chat_box(answer, test_images, start=with_effusion,
                questions=("is there a pleural effusion?", "which side is the pleural effusion?", "write the impression."))
plt.show()

for k in range(1, 4):
    i = int(test_idx[k])
    history = []
    truth = [f for f, y in zip(D.FINDINGS, cohort.labels[i]) if y]
    print(f"--- test study {i}; truth: {', '.join(truth)}")
    first = truth[0] if truth[0] != "No Finding" else "Pleural Effusion"
    for q in (I.presence_question(first), I.grounding_question(first), "write the impression."):
        a = answer(k, q, history)
        history.append((q, a))
        print(f"USER: {q}\nASSISTANT: {a}")
    boxes = [b["box"] for b in cohort.boxes[i] if b["finding"] == first]
    print("true box:", I.box_to_text(boxes[0]) if boxes else "none", "| impression:", I.report_sections(cohort.reports[i])[1])

# %% [markdown]
# Read each printed conversation against its truth line: the presence answer against the
# labels, the box against the true box, the impression against the true one. A few conversations
# prove nothing either way; section 11 scores hundreds of questions against what a model blind to
# the image would answer.
#
# ## 11. How good are the answers?
#
# On test-split questions (other patients), at most `N_EVAL` per kind, presence kept 50/50.
# Every number stands beside what it must beat:
#
# * closed questions: accuracy vs the **majority answer** for that question in training (what a
#   model blind to the image would say), and vs the same model given **another study's image**
#   (the image-blind control: if the answers use the image, this must drop);
# * grounding: mean IoU of the written box with the true one vs the **mean training box** of that
#   finding;
# * open answers (the impression): clinical F1 (findings read out by the labeler, lesson 05) vs
#   the most common training impression, and hallucinated findings per report.

# %%
test_questions = vlm.generate_questions(cohort, test_idx, seed=SEED + 1)
eval_set = vlm.sample_eval_questions(test_questions, N_EVAL, seed=SEED)
eval_kinds = ("presence", "side", "size", "grounding", "open_impression")
t0 = time.perf_counter()
results = vlm.evaluate_vqa(model, eval_set, features, train_questions=train_questions, cohort=cohort, kinds=eval_kinds)
blind = vlm.evaluate_vqa(model, eval_set, features, train_questions=train_questions, cohort=cohort,
                         kinds=("presence", "side", "size", "grounding"), shuffle_images=True, seed=SEED)
results1 = vlm.evaluate_vqa(stage1, eval_set, features, train_questions=train_questions, cohort=cohort, kinds=eval_kinds)
print(f"evaluated {sum(len(eval_set[k]) for k in eval_kinds)} questions x 3 in {time.perf_counter() - t0:.1f} s")

print(f"{'kind':16s} {'stages 1+2':>10s} {'blind image':>11s} {'baseline':>9s} {'stage 1':>8s}")
for kind in ("presence", "side", "size"):
    r = results[kind]
    print(f"{kind:16s} {r['accuracy']:10.3f} {blind[kind]['accuracy']:11.3f} {r['baseline']:9.3f} "
          f"{results1[kind]['accuracy']:8.3f}   accuracy (n={r['n']})")
r = results["grounding"]
print(f"{'grounding':16s} {r['iou']:10.3f} {blind['grounding']['iou']:11.3f} {r['baseline_iou']:9.3f} "
      f"{results1['grounding']['iou']:8.3f}   box IoU (parsed {r['parsed']:.0%})")
r = results["open_impression"]
print(f"{'impression':16s} {r['clinical_f1']:10.3f} {'':11s} {r['baseline_clinical_f1']:9.3f} "
      f"{results1['open_impression']['clinical_f1']:8.3f}   clinical F1; "
      f"{r['hallucinations_per_report']:.2f} hallucinated findings per report")
print("most common training impression:", repr(r["baseline_answer"]))

for kind in ("presence", "side", "size"):
    medmm_lite.record(f"closed_acc_{kind}", results[kind]["accuracy"])
    medmm_lite.record(f"closed_acc_{kind}_majority", results[kind]["baseline"])
    medmm_lite.record(f"closed_acc_{kind}_blind", blind[kind]["accuracy"])
medmm_lite.record("grounding_iou", results["grounding"]["iou"])
medmm_lite.record("grounding_iou_mean_box", results["grounding"]["baseline_iou"])
medmm_lite.record("grounding_iou_blind", blind["grounding"]["iou"])
medmm_lite.record("grounding_parsed", results["grounding"]["parsed"])
medmm_lite.record("open_clinical_f1", results["open_impression"]["clinical_f1"])
medmm_lite.record("open_clinical_f1_common_report", results["open_impression"]["baseline_clinical_f1"])
medmm_lite.record("hallucinations_per_report", results["open_impression"]["hallucinations_per_report"])
medmm_lite.record("stage1_closed_acc_presence", results1["presence"]["accuracy"])

# %% [markdown]
# Per finding, the presence questions show where the image helps and where it does not:

# %%
per_finding = {}
for q, a in zip(eval_set["presence"], results["presence"]["answers"]):
    per_finding.setdefault(q["finding"], []).append(vlm.evaluate.normalise(a) == q["answer"])
names = [f for f in D.FINDINGS if f in per_finding]
fig, axes = plt.subplots(1, 2, figsize=(11, 3))
axes[0].bar(range(len(names)), [np.mean(per_finding[f]) for f in names], color="#5aa469")
axes[0].axhline(0.5, color="k", ls="--", lw=1, label="blind to the image (balanced)")
axes[0].set_xticks(range(len(names)), names, fontsize=7, rotation=35, ha="right")
axes[0].set_ylim(0, 1)
axes[0].set_title("presence accuracy per finding", fontsize=9)
axes[0].legend(fontsize=7)
labels_ = ["presence", "side", "size"]
x = np.arange(len(labels_))
for off, (name, vals, c) in zip((-0.3, -0.1, 0.1, 0.3), (
        ("stages 1+2", [results[k]["accuracy"] for k in labels_], "#5aa469"),
        ("another study's image", [blind[k]["accuracy"] for k in labels_], "#8fb3de"),
        ("majority answer", [results[k]["baseline"] for k in labels_], "#bbbbbb"),
        ("stage 1 only", [results1[k]["accuracy"] for k in labels_], "#e4a35b"))):
    axes[1].bar(x + off, vals, width=0.2, label=name, color=c)
axes[1].set_xticks(x, labels_)
axes[1].set_ylim(0, 1)
axes[1].set_title("closed questions: accuracy", fontsize=9)
axes[1].legend(fontsize=7, ncol=2)
plt.tight_layout()
plt.show()

# %% [markdown]
# **What the answers use.** Presence is read from the image: its accuracy is well above 0.5 (a
# bound of this lesson) and falls towards the blind control's when the model is shown another
# study's image. For side and size, compare each bar with the majority answer and the blind
# control beside it: where they are level, the answer is not read from the image. Side and size
# are *local* properties (which half of the chest, how much of it), and the frozen CLIP ViT was
# only ever trained through its pooled global feature. Is *where* in its image tokens at all?
# A linear probe answers without any language model: logistic regression from the same
# standardised image tokens (and which finding is asked about) to the side, fitted on the
# training questions, scored on the test questions the VLM answered.

# %%
from sklearn.linear_model import LogisticRegression


def side_probe_inputs(questions):
    tokens = (features[[q["image"] for q in questions]] - model.feature_mean) / model.feature_std
    asked = np.array([[q["finding"] == f for f in I.SIDE_FINDINGS] for q in questions], dtype=np.float32)
    return np.hstack([tokens.flatten(1).numpy(), asked]), [q["answer"] for q in questions]


train_side = [q for q in train_questions if q["kind"] == "side"]
probe = LogisticRegression(C=0.1, max_iter=2000).fit(*side_probe_inputs(train_side))
side_probe_acc = probe.score(*side_probe_inputs(eval_set["side"]))
print(f"which side, on the same {len(eval_set['side'])} test questions: linear probe on the frozen image tokens "
      f"{side_probe_acc:.3f}, the VLM {results['side']['accuracy']:.3f}, majority answer {results['side']['baseline']:.3f}")
medmm_lite.record("side_probe_acc_frozen_tokens", side_probe_acc)

# %% [markdown]
# Read the three numbers together. The probe's accuracy is what the frozen tokens hold about the
# side; where it is well above the majority answer, *where* is in the tokens, and the VLM's
# shortfall from the probe is what instruction tuning has not yet learned to read through
# language. That reading is learned late: presence is answered early in stage 2, side and size
# only after thousands of steps (docs/performance.md measures side accuracy against stage 2's
# length), which is why this lesson gives stage 2 most of its training. LLaVA-Med and MAIRA-2
# start from encoders trained on many more images, and local alignment (lesson 03) trains patch
# tokens to say *where* directly. The same shows in grounding below.
#
# **Stage 1 alone cannot follow instructions.** It has only ever written reports after an image,
# so asked "is there an effusion?" it writes a report: its closed-question accuracy is about
# zero, however well its image tokens are aligned. Stage 2 is what turns an image captioner into
# an assistant.
#
# **Grounding.** The written boxes beside the true ones (green: truth, orange: the model, grey
# dashed: the mean training box of that finding). The model always writes four numbers in the
# right format and often a plausible box for the finding, but compare its IoU with the blind
# control's: most of what it knows is where that finding *usually* is, not where it is in this
# image.

# %%
show = [k for k, q in enumerate(eval_set["grounding"])][:6]
fig, axes = plt.subplots(1, len(show), figsize=(2 * len(show), 2.3))
mean_box = vlm.mean_boxes(train_questions)
for ax, k in zip(np.atleast_1d(axes), show):
    q, a = eval_set["grounding"][k], results["grounding"]["answers"][k]
    ax.imshow(cohort.images[q["image"], 0], cmap="gray", vmin=0, vmax=1)
    H, W = cohort.images.shape[-2:]
    for box, color, ls in ((q["box"], "#5aa469", "-"), (I.parse_box(a), "#e4a35b", "-"),
                           (mean_box[q["finding"]], "#999999", "--")):
        if box is not None:
            x0, y0, x1, y1 = box
            ax.add_patch(plt.Rectangle((x0 * W - 0.5, y0 * H - 0.5), (x1 - x0) * W, (y1 - y0) * H, fill=False,
                                       color=color, ls=ls, lw=1.5))
    ax.set_title(f"{I.NAMES[q['finding']]}\n"
                 f"IoU {I.box_iou(I.parse_box(a), q['box']):.2f}", fontsize=7)
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 12. Classification by instruction vs zero-shot CLIP
#
# An instruction-tuned VLM is also a classifier: ask "is there X?" and read the probability of
# the answer token, $p(\text{yes}) / (p(\text{yes}) + p(\text{no}))$, one forward pass per
# image and finding (`vlm.classify_by_instruction`). Lesson 02's zero-shot CLIP compared each
# image with a positive and a negative prompt (here the prompts it chose on validation, read off
# the training reports); both use no label at test time, but the VLM's
# stage 2 saw labels *through its instructions*, so it is a supervised method in disguise: this
# is the comparison lesson 09 continues.

# %%
test_labels = cohort.labels[test_idx]
instr_scores = vlm.classify_by_instruction(model, test_images, image_features=features[test_idx])
instr = pathology_auroc(test_labels, torch.as_tensor(instr_scores))
instr1 = pathology_auroc(test_labels, torch.as_tensor(vlm.classify_by_instruction(
    stage1, test_images, image_features=features[test_idx])))
train_reports = [cohort.reports[i] for i in train_idx]      # lesson 02's prompts, read off the reports
positive, negative = report_prompt_embeddings(CL.text_embedder(clip_model, data.tokenizer),
                                              [CL.impression(r) for r in train_reports], train_reports)
zero = pathology_auroc(test_labels, zero_shot_classify(CL.embed_images(clip_model, test_images), positive, negative))
print(f"macro AUROC over the 9 pathologies: instruction-tuned VLM {instr['macro']:.3f}, "
      f"stage 1 only {instr1['macro']:.3f}, zero-shot CLIP (lesson 02) {zero['macro']:.3f}")
medmm_lite.record("instruction_auroc", instr["macro"])
medmm_lite.record("instruction_auroc_stage1", instr1["macro"])
medmm_lite.record("zero_shot_auroc", zero["macro"])

names = list(instr["per_finding"])
x = np.arange(len(names))
fig, ax = plt.subplots(figsize=(10, 3))
ax.bar(x - 0.2, [instr["per_finding"][n] for n in names], 0.4, label="VLM, by instruction", color="#5aa469")
ax.bar(x + 0.2, [zero["per_finding"][n] for n in names], 0.4, label="CLIP, zero-shot", color="#8fb3de")
ax.axhline(0.5, color="k", lw=1, ls="--")
ax.set_xticks(x, [n.replace(" ", "\n") for n in names], fontsize=7)
ax.set_ylim(0.3, 1)
ax.set_ylabel("AUROC")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
print(f"lesson run time so far: {time.perf_counter() - started:.0f} s")

# %% [markdown]
# Read the printed macro numbers first, then the bars finding by finding. Both classifiers are well
# above chance (the dashed line) on average, by the lesson's bounds. The VLM learned from
# questions built from the training labels, CLIP's zero-shot from the reports alone: where the
# VLM's bar stands above CLIP's, that is what the labels inside the instructions bought, and the
# stage 1 number shows how much of it needs the instruction tuning of stage 2.
#
# ## Summary
#
# * A generative VLM is a language model that reads images as tokens: a frozen vision encoder, a
#   projector, and the `<image>` placeholder replaced by K projected patch features
#   (`inputs_embeds`).
# * Stage 1 aligns the projector on image-report pairs; stage 2 tunes projector and LM on
#   instructions, with the loss on the answer tokens only (-100 elsewhere). Stage 1 alone does
#   not follow instructions.
# * Closed questions must be balanced and compared with the majority answer and an image-blind
#   control; boxes written as text can be scored by IoU; open answers by clinical F1 and
#   hallucination counts, not by word overlap. *Whether* a finding is there is read from the image
#   early in instruction tuning; *which side* and *how large* late, though a linear probe finds the
#   side in the frozen image tokens: what the tokens hold and what the VLM has learned to read
#   from them are two measurements.
# * Batched generation left-pads the prompts and uses the KV cache; greedy answers with and
#   without the cache are identical.
#
# ## Exercises

# %% [markdown]
# 1. **LoRA instead of full fine-tuning.** Build a fresh VLM with `vlm.build_vlm(P, tok, seed=SEED)`,
#    apply LoRA of rank 4 to its language model with `vlm.train.add_lora(m, 4)`, and store the
#    number of trainable parameters in `n_lora` and, for the full stage 2 (projector + every LM
#    parameter), in `n_full`.

# %% tags=["solution"]
fresh = vlm.build_vlm(P, tok, seed=SEED)
n_full = sum(p.numel() for p in fresh.projector.parameters()) + sum(p.numel() for p in fresh.lm.parameters())
n_lora = vlm.train.add_lora(vlm.build_vlm(P, tok, seed=SEED), 4).trainable_parameters()

# %% tags=["check"]
assert n_full is not None and n_lora is not None, "count the parameters with requires_grad"
assert n_full == info2["history"]["trainable_parameters"], "full stage 2 trains the projector and all of the LM"
assert 0 < n_lora < n_full / 2, "LoRA trains the projector and the small A, B matrices only"
print(f"correct: LoRA rank 4 trains {n_lora:,} parameters, {n_lora / n_full:.0%} of full fine-tuning's {n_full:,}")

# %% [markdown]
# 2. **A blank image.** The image-blind control above gave each question another study's image.
#    Give every presence question a *blank* image instead (all zeros, through
#    `vlm.batched_image_features(model, torch.zeros(...))`) and store the accuracy in `blank_accuracy`.
#    Is it closer to the shuffled control or to the real one?

# %% tags=["solution"]
blank = vlm.batched_image_features(model, torch.zeros_like(cohort.images[:1]))[0]
blank_features = {q["image"]: blank for q in eval_set["presence"]}
blank_accuracy = vlm.evaluate_vqa(model, eval_set, blank_features, kinds=("presence",))["presence"]["accuracy"]

# %% tags=["check"]
assert blank_accuracy is not None, "evaluate the presence questions with a blank image's features"
reference_blank = vlm.batched_image_features(model, torch.zeros_like(cohort.images[:1]))[0]
reference = vlm.evaluate_vqa(model, eval_set, {q["image"]: reference_blank for q in eval_set["presence"]},
                             kinds=("presence",))
assert abs(blank_accuracy - reference["presence"]["accuracy"]) < 1e-9, \
    "pass vlm.evaluate_vqa a dict: image index -> the blank image's features (one blank, all zeros)"
print(f"correct: blank image {blank_accuracy:.3f}, another study's image {blind['presence']['accuracy']:.3f}, "
      f"the right image {results['presence']['accuracy']:.3f}")

# %% [markdown]
# 3. **Going further** (longer runs, no check). (a) Train stage 2 with LoRA,
#    `vlm.pretrain_vlm(P, data, seed=SEED, lora_rank=8)`, and compare its closed-question accuracy.
#    (b) Skip stage 1 (`stage1_steps=1`): does stage 2 make up for it? (c) Use the linear projector
#    (`projector="linear"`, LLaVA-1). (d) Keep all patch tokens (`image_grid=8` at the cpu
#    profile): do side and grounding improve?
