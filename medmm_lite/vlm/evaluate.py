"""Asking the VLM questions and scoring its answers.

* :func:`ask`: answers (text) to questions about images, batched, greedy with the KV cache.
* :func:`classify_by_instruction`: a probability per finding from one closed question,
  p("yes") / (p("yes") + p("no")) for the answer token, for AUROC against labels.
* :func:`evaluate_vqa`: closed-question accuracy per kind beside the majority answer,
  grounding IoU beside the mean box, open answers by clinical F1 and hallucinations.
* :func:`chat` / :func:`answerer`: one answer at a time, for ``medmm_lite.widgets.chat_box``.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.findings import FINDINGS
from .instructions import (CLOSED_KINDS, QUESTION_KINDS, box_iou, encode_conversation, parse_box, presence_question)
from .model import VisionLanguageModel, batched_image_features, generate, next_token_logits

MAX_NEW_TOKENS = {"presence": 3, "side": 3, "size": 3, "grounding": 16, "open_findings": 72, "open_impression": 40}


def decode(model: VisionLanguageModel, ids) -> str:
    return model.tokenizer.decode(ids, skip_special_tokens=True).strip()


def prompt_ids(model: VisionLanguageModel, question: str, history=()) -> list[int]:
    """The chat-template prompt for ``question`` after earlier ``(question, answer)`` turns."""
    ids, _ = encode_conversation(model.tokenizer, [*history, (question, "")], generation=True)
    return ids


def ask(model: VisionLanguageModel, image_features, questions, *, max_new_tokens: int = 32, histories=None,
        batch_size: int = 128, use_cache: bool = True) -> list[str]:
    """Greedy answers to ``questions`` (one per row of ``image_features`` (N, K, d)), as text."""
    histories = histories or [()] * len(questions)
    prompts = [prompt_ids(model, q, h) for q, h in zip(questions, histories)]
    out = generate(model, prompts, image_features, max_new_tokens=max_new_tokens, batch_size=batch_size,
                   use_cache=use_cache)
    return [decode(model, ids) for ids in out]


def answer_token_ids(model: VisionLanguageModel, words=("yes", "no")) -> list[int]:
    """The first token of each answer word (the one the model must choose first)."""
    ids = [model.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words]
    if len(set(ids)) != len(ids):
        raise ValueError(f"the answers {words} start with the same token; they cannot be told apart by it")
    return ids


@torch.no_grad()
def classify_by_instruction(model: VisionLanguageModel, images, findings=FINDINGS, batch_size: int = 256,
                            image_features=None) -> np.ndarray:
    """Scores (N, len(findings)): p("yes") / (p("yes") + p("no")) after "is there <finding>?".

    One forward pass per image and finding (no generation): the answer's first token decides
    (the first piece of "yes" when the tokenizer splits it).
    ``image_features`` (N, K, d) may be passed to skip the vision encoder.
    """
    feats = image_features if image_features is not None else batched_image_features(model, images, batch_size)
    yes, no = answer_token_ids(model)
    scores = np.zeros((len(feats), len(findings)), dtype=np.float32)
    for j, finding in enumerate(findings):
        prompt = prompt_ids(model, presence_question(finding))
        logits = next_token_logits(model, [prompt] * len(feats), feats, batch_size=batch_size)
        scores[:, j] = torch.softmax(logits[:, [yes, no]], -1)[:, 0].numpy()
    return scores


def normalise(answer: str) -> str:
    return answer.strip().lower().rstrip(".")


def majority_answers(train_questions) -> dict:
    """The most common training answer per (kind, finding): what a model blind to the image should say."""
    counts: dict = {}
    for q in train_questions:
        if q["kind"] in CLOSED_KINDS:
            key = (q["kind"], q["finding"])
            counts.setdefault(key, {}).setdefault(q["answer"], 0)
            counts[key][q["answer"]] += 1
    return {k: max(sorted(v), key=v.get) for k, v in counts.items()}


def mean_boxes(train_questions) -> dict:
    """The mean training box per finding: the grounding answer of a model blind to the image."""
    boxes: dict = {}
    for q in train_questions:
        if q["kind"] == "grounding":
            boxes.setdefault(q["finding"], []).append(q["box"])
    return {f: tuple(np.mean(b, 0).tolist()) for f, b in boxes.items()}


def evaluate_vqa(model: VisionLanguageModel, eval_questions: dict, image_features, *, train_questions=None,
                 cohort=None, kinds=QUESTION_KINDS, shuffle_images: bool = False, batch_size: int = 128,
                 seed: int = 0) -> dict:
    """Score the model on ``eval_questions`` (``sample_eval_questions``' dict kind -> questions).

    ``image_features``: a function ``image_index -> (K, d)`` tensor, or a dict/tensor indexed by the
    cohort index. ``shuffle_images=True`` gives every question another question's image (the
    image-blind control). ``train_questions`` give the baselines (majority answer, mean box),
    ``cohort`` the labels for hallucination counts and the reference reports for clinical F1.

    Returns ``{kind: {...}}``: closed kinds ``accuracy``, ``baseline``, ``answers``; grounding
    ``iou``, ``baseline_iou``, ``answers``; open kinds ``clinical_f1``, ``hallucinations_per_report``,
    ``answers`` (and ``baseline_clinical_f1`` with ``train_questions``).
    """
    from ..eval import clinical_f1, hallucinations

    rng = np.random.default_rng(seed)
    majority = majority_answers(train_questions) if train_questions else {}
    boxes = mean_boxes(train_questions) if train_questions else {}
    results = {}
    for kind in kinds:
        items = eval_questions.get(kind, [])
        if not items:
            continue
        images = [q["image"] for q in items]
        if shuffle_images:
            images = [images[k] for k in rng.permutation(len(images))]
        feats = torch.stack([image_features[i] for i in images])
        answers = ask(model, feats, [q["question"] for q in items], max_new_tokens=MAX_NEW_TOKENS[kind],
                      batch_size=batch_size)
        r = {"answers": answers, "n": len(items)}
        if kind in CLOSED_KINDS:
            correct = [normalise(a) == q["answer"] for a, q in zip(answers, items)]
            r["accuracy"] = float(np.mean(correct))
            if majority:
                r["baseline"] = float(np.mean([majority.get((kind, q["finding"])) == q["answer"] for q in items]))
        elif kind == "grounding":
            r["iou"] = float(np.mean([box_iou(parse_box(a), q["box"]) for a, q in zip(answers, items)]))
            r["parsed"] = float(np.mean([parse_box(a) is not None for a in answers]))
            if boxes:
                r["baseline_iou"] = float(np.mean([box_iou(boxes.get(q["finding"]), q["box"]) for q in items]))
        else:
            refs = [q["answer"] for q in items]
            if cohort is not None:
                refs = [cohort.reports[q["image"]] for q in items]
            r["clinical_f1"] = float(clinical_f1(refs, answers)["micro_f1"])
            if cohort is not None:
                labels = np.asarray(cohort.labels)[[q["image"] for q in items]]
                h = hallucinations(answers, labels)
                r["hallucinations_per_report"] = h["per_report_mean"]
                r["hallucinations"] = h["per_finding"]
            if train_questions:
                train_answers = [q["answer"] for q in train_questions if q["kind"] == kind]
                values, counts = np.unique(train_answers, return_counts=True)
                common = str(values[np.argmax(counts)])
                r["baseline_answer"] = common
                r["baseline_clinical_f1"] = float(clinical_f1(refs, [common] * len(refs))["micro_f1"])
        results[kind] = r
    return results


# --------------------------------------------------------------------------- chatting
def chat(model: VisionLanguageModel, image, question: str, history=(), max_new_tokens: int = 48) -> str:
    """One answer about one image (1, H, W) or (1, 1, H, W), after earlier ``(question, answer)`` turns."""
    image = image if image.ndim == 4 else image.unsqueeze(0)
    feats = batched_image_features(model, image)
    return ask(model, feats, [question], histories=[tuple(history)], max_new_tokens=max_new_tokens)[0]


def answerer(model: VisionLanguageModel, images, max_new_tokens: int = 48):
    """``answer(image_index, question, history) -> str`` for ``medmm_lite.widgets.chat_box``."""
    def answer(index, question, history=()):
        return chat(model, images[index], question.strip().lower(), history, max_new_tokens=max_new_tokens)
    return answer


__all__ = ["ask", "decode", "prompt_ids", "classify_by_instruction", "answer_token_ids", "evaluate_vqa",
           "majority_answers", "mean_boxes", "chat", "answerer", "MAX_NEW_TOKENS", "normalise"]
