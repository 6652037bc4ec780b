"""Lesson 07's library: instruction data, label masking, <image> splicing, generation, training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import medmm_lite
from medmm_lite import vlm
from medmm_lite.data import FINDINGS, prepare_data
from medmm_lite.vlm import instructions as I
from medmm_lite.vlm.model import generate, next_token_logits, splice_image_tokens


@pytest.fixture(scope="module")
def data():
    P = medmm_lite.profile("smoke").with_(n_studies=160)
    return prepare_data(P, seed=0)


@pytest.fixture(scope="module")
def tokenizer(data):
    return vlm.vlm_tokenizer(data)


def tiny_vlm(tokenizer, seed=0, projector="mlp"):
    P = medmm_lite.profile("smoke").with_(dim=32, depth=1, heads=2)
    return vlm.build_vlm(P, tokenizer, seed=seed, image_grid=2, projector=projector,
                         sizes={"layers": 2, "dim": 32, "heads": 2}).eval()


# --------------------------------------------------------------------------- instruction data
def test_answers_agree_with_cohort(data):
    c = data.cohort
    qs = vlm.generate_questions(c, data.splits["train"], seed=0)
    assert {q["kind"] for q in qs} == set(I.QUESTION_KINDS)
    for q in qs:
        i, kind, finding = q["image"], q["kind"], q["finding"]
        if kind == "presence":
            assert q["answer"] == ("yes" if c.labels[i, FINDINGS.index(finding)] == 1 else "no")
        elif kind in ("side", "size", "grounding"):
            box = [b for b in c.boxes[i] if b["finding"] == finding]
            assert box, f"{kind} question about a finding study {i} does not have"
            if kind == "side":
                assert q["answer"] == I.SIDE_ANSWERS[box[0]["laterality"]]
            elif kind == "size":
                assert q["answer"] == box[0]["severity"]
            else:
                assert I.parse_box(q["answer"]) == pytest.approx(box[0]["box"], abs=0.006)
        elif kind == "open_impression":
            assert q["answer"] in c.reports[i] and "IMPRESSION" not in q["answer"]


def test_presence_questions_balanced_per_finding(data):
    qs = vlm.generate_questions(data.cohort, data.splits["train"], seed=0, kinds=("presence",))
    for finding in FINDINGS:
        answers = [q["answer"] for q in qs if q["finding"] == finding]
        assert answers.count("yes") == answers.count("no") > 0, finding
    ev = vlm.sample_eval_questions(qs, 40, seed=0)["presence"]
    assert sum(q["answer"] == "yes" for q in ev) == sum(q["answer"] == "no" for q in ev) == 20


def test_questions_respect_patient_split(data):
    train, test = set(data.splits["train"].tolist()), set(data.splits["test"].tolist())
    qs = vlm.generate_questions(data.cohort, data.splits["train"], seed=0)
    assert {q["image"] for q in qs} <= train
    convs = vlm.build_conversations(qs, seed=0)
    assert {c["image"] for c in convs} <= train and not ({c["image"] for c in convs} & test)
    assert sum(len(c["turns"]) for c in convs) == len(qs)
    assert all(all(t["image"] == c["image"] for t in c["turns"]) for c in convs)
    assert max(len(c["turns"]) for c in convs) > 1  # multi-turn


def test_box_text_round_trip_and_iou():
    box = (0.125, 0.4, 0.3125, 0.59)
    assert I.box_to_text(box) == "[12, 40, 31, 59]" or I.box_to_text(box) == "[13, 40, 31, 59]"
    assert I.parse_box("[ 12, 40, 31, 59 ]") == pytest.approx((0.12, 0.40, 0.31, 0.59))
    assert I.parse_box("yes") is None
    assert I.box_iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert I.box_iou((0, 0, 0.5, 1), (0.5, 0, 1, 1)) == 0.0
    assert I.box_iou((0, 0, 1, 1), (0, 0, 0.5, 0.5)) == pytest.approx(0.25)
    assert I.box_iou(None, (0, 0, 1, 1)) == 0.0


# --------------------------------------------------------------------------- label masking
def test_only_answer_tokens_carry_labels(tokenizer):
    turns = [("is there a pneumothorax?", "yes"), ("which side is the pneumothorax?", "left"),
             ("where is the pneumothorax?", "[10, 20, 30, 40]")]
    ids, labels = vlm.encode_conversation(tokenizer, turns)
    s = I.special_ids(tokenizer)
    assert len(ids) == len(labels) and ids[0] == s["bos"] and ids.count(s["image"]) == 1
    # the labelled positions are exactly each answer's tokens and its closing [EOS]
    expected = []
    for q, a in turns:
        expected += tokenizer(a, add_special_tokens=False)["input_ids"] + [s["eos"]]
    assert [l for l in labels if l != I.IGNORE_INDEX] == expected
    for i, (t, l) in enumerate(zip(ids, labels)):
        if l != I.IGNORE_INDEX:
            assert l == t
    # every question token, role token, the image and BOS are masked
    user_spans, k = [], 0
    while k < len(ids):
        if ids[k] == s["user"]:
            end = ids.index(s["assistant"], k)
            user_spans.append((k, end))
            k = end
        k += 1
    assert len(user_spans) == 3  # all three turns present: every answer is trained
    for a, b in user_spans:
        assert all(labels[j] == I.IGNORE_INDEX for j in range(a, b + 1))
    assert labels[0] == I.IGNORE_INDEX
    # the chat template (HF apply_chat_template) tokenises to the same ids
    messages = []
    for k, (q, a) in enumerate(turns):
        messages += [{"role": "user", "content": ("<image> " if k == 0 else "") + q},
                     {"role": "assistant", "content": a}]
    applied = tokenizer.apply_chat_template(messages, tokenize=True)
    applied = applied["input_ids"] if isinstance(applied, dict) or hasattr(applied, "keys") else applied
    assert list(applied) == ids
    assert tokenizer(vlm.render_chat(turns), add_special_tokens=False)["input_ids"] == ids


def test_generation_prompt_and_plain_template(tokenizer):
    s = I.special_ids(tokenizer)
    ids, labels = vlm.encode_conversation(tokenizer, [("is there edema?", "no"), ("where is the edema?", "")],
                                          generation=True)
    assert ids[-1] == s["assistant"] and labels.count(s["eos"]) == 1
    ids, labels = vlm.encode_plain(tokenizer, "No pleural effusion. Normal heart size.", max_len=64)
    assert ids[:2] == [s["bos"], s["image"]] and labels[:2] == [I.IGNORE_INDEX] * 2 and ids[2:] == labels[2:]
    assert ids[-1] == s["eos"]


def test_truncation_keeps_eos(tokenizer):
    long = "there is a large right pleural effusion. " * 20
    ids, labels = vlm.encode_conversation(tokenizer, [("describe the findings.", long), ("is there edema?", "no")],
                                          max_len=30)
    assert len(ids) == 30 and ids[-1] == tokenizer.eos_token_id and labels[-1] == tokenizer.eos_token_id


# --------------------------------------------------------------------------- splicing
def test_image_tokens_land_at_placeholder():
    B, L, K, D, img = 3, 7, 4, 5, 99
    ids = torch.tensor([[5, 7, img, 8, 9, 0, 0], [5, img, 8, 9, 10, 11, 0], [0, 0, 5, 7, 8, img, 9]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1]])
    labels = torch.where(mask.bool(), ids + 1000, torch.full_like(ids, -100))
    text = torch.arange(B * L * D, dtype=torch.float).reshape(B, L, D)
    image = -torch.arange(1, B * K * D + 1, dtype=torch.float).reshape(B, K, D)
    emb, m, lab, pos = splice_image_tokens(text, ids, image, img, mask, labels)
    assert emb.shape == (B, L + K - 1, D) and m.shape == lab.shape == pos.shape == (B, L + K - 1)
    for b in range(B):
        p = int((ids[b] == img).nonzero())
        assert torch.equal(emb[b, :p], text[b, :p])
        assert torch.equal(emb[b, p:p + K], image[b])
        assert torch.equal(emb[b, p + K:], text[b, p + 1:])
        assert (lab[b, p:p + K] == -100).all() and (m[b, p:p + K] == 1).all()
        assert torch.equal(lab[b, p + K:], labels[b, p + 1:]) and torch.equal(m[b, :p], mask[b, :p])
        real = m[b].bool()
        assert torch.equal(pos[b, real], torch.arange(int(real.sum())))  # positions count real tokens only
    # left padding stays on the left, right padding on the right
    assert m[2, :2].sum() == 0 and m[0, -2:].sum() == 0


def test_placeholder_errors():
    text, image = torch.zeros(1, 4, 3), torch.zeros(1, 2, 3)
    with pytest.raises(ValueError, match="exactly one <image>"):
        splice_image_tokens(text, torch.tensor([[5, 7, 8, 9]]), image, 99)
    with pytest.raises(ValueError, match="exactly one <image>"):
        splice_image_tokens(text, torch.tensor([[5, 99, 8, 99]]), image, 99)


def test_model_forward_loss_masks_image_and_question(tokenizer, data):
    model = tiny_vlm(tokenizer)
    tensors = I.encode_conversations(tokenizer, [{"image": 0, "turns": [{"question": "is there edema?",
                                                                          "answer": "no"}]}], max_len=40)
    images = data.cohort.images[:1]
    out = model(tensors["input_ids"], tensors["attention_mask"], tensors["labels"], images=images)
    # the loss is the mean cross-entropy over the two labelled tokens ("no", [EOS]) only
    emb, m, lab, pos = model.embed(tensors["input_ids"], model.image_features(images), tensors["attention_mask"],
                                   tensors["labels"])
    logits = model.lm(inputs_embeds=emb, attention_mask=m, position_ids=pos).logits
    targets = lab[0, 1:]
    keep = targets != -100
    assert int(keep.sum()) == 2
    manual = torch.nn.functional.cross_entropy(logits[0, :-1][keep], targets[keep])
    assert out.loss.item() == pytest.approx(manual.item(), rel=1e-5)


# --------------------------------------------------------------------------- generation
def _prompts(tokenizer):
    qs = ["is there edema?", "where is the pleural effusion?", "describe the findings."]
    return [vlm.encode_conversation(tokenizer, [(q, "")], generation=True)[0] for q in qs]


def test_kv_cache_generation_equals_no_cache(tokenizer, data):
    model = tiny_vlm(tokenizer, seed=3)
    feats = model.image_features(data.cohort.images[:3])
    prompts = _prompts(tokenizer)
    with_cache = generate(model, prompts, feats, max_new_tokens=8, use_cache=True)
    without = generate(model, prompts, feats, max_new_tokens=8, use_cache=False)
    assert with_cache == without
    # and step by step, the argmax of a full re-read equals the cached token
    seq = list(prompts[0])
    for t in with_cache[0][:4]:
        ids = torch.tensor([seq])
        logits = model(ids, torch.ones_like(ids), image_features=feats[:1]).logits
        assert int(logits[0, -1].argmax()) == t
        seq.append(t)


def test_batched_generation_equals_one_at_a_time(tokenizer, data):
    model = tiny_vlm(tokenizer, seed=4)
    feats = model.image_features(data.cohort.images[:3])
    prompts = _prompts(tokenizer)
    assert len({len(p) for p in prompts}) > 1  # different lengths: left padding is exercised
    batched = generate(model, prompts, feats, max_new_tokens=10)
    single = [generate(model, [p], feats[i:i + 1], max_new_tokens=10)[0] for i, p in enumerate(prompts)]
    assert batched == single
    a = next_token_logits(model, prompts, feats)
    b = torch.cat([next_token_logits(model, [p], feats[i:i + 1]) for i, p in enumerate(prompts)])
    assert torch.allclose(a, b, atol=1e-4)


def test_classify_by_instruction_shape_and_range(tokenizer, data):
    model = tiny_vlm(tokenizer)
    scores = vlm.classify_by_instruction(model, data.cohort.images[:5])
    assert scores.shape == (5, len(FINDINGS)) and np.all((scores > 0) & (scores < 1))


def test_from_pretrained_offline_message(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE when it is imported, so setting it here does not stop a
    # network attempt (47 s of retries in make test); local_files_only is the per-call way to be offline.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="pretrain_language_model"):
        vlm.from_pretrained("no-such-org/no-such-model-xyz", local_files_only=True)


# --------------------------------------------------------------------------- training
def test_tiny_end_to_end_training_lowers_loss(tokenizer, data):
    from medmm_lite.data.tensors import TensorDictDataset
    from medmm_lite.train import fit
    from medmm_lite.vlm.model import batched_image_features, vlm_step

    model = tiny_vlm(tokenizer, seed=1)
    train = data.splits["train"][:60]
    qs = vlm.generate_questions(data.cohort, train, seed=0, kinds=("presence", "side"))
    convs = vlm.build_conversations(qs, seed=0)
    t = I.encode_conversations(tokenizer, convs, max_len=48)
    feats = batched_image_features(model, data.cohort.images)
    t["image_features"] = feats[t.pop("image")]
    vision_before = {k: v.clone() for k, v in model.vision.state_dict().items()}
    hist = fit(model, vlm_step, TensorDictDataset(**t), steps=60, batch_size=16, lr=3e-3, seed=0, device="cpu",
               progress=False, params=[p for p in model.parameters() if p.requires_grad])
    assert np.mean(hist.loss[-10:]) < 0.6 * np.mean(hist.loss[:5])
    assert all(torch.equal(v, model.vision.state_dict()[k]) for k, v in vision_before.items())  # frozen


def test_lora_trains_fewer_parameters(tokenizer):
    full = tiny_vlm(tokenizer)
    n_full = sum(p.numel() for n, p in full.named_parameters() if not n.startswith("vision"))
    lora = vlm.train.add_lora(tiny_vlm(tokenizer), rank=2)
    n_lora = lora.trainable_parameters()
    assert 0 < n_lora < n_full / 3
    assert all(p.requires_grad for p in lora.projector.parameters())
    assert not any(p.requires_grad for p in lora.vision.parameters())
