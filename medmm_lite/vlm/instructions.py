"""Instruction data for the VLM, generated from the cohort's labels, boxes and reports.

LLaVA (Liu et al. 2023) turned image-caption pairs into conversations with a text-only
LLM; here the cohort's structured truth writes them directly, so every answer is
correct by construction:

* **closed** questions, one word answers:
  ``presence`` ("Is there a pleural effusion?" yes / no, *balanced per finding*: every
  image with the finding is asked, and as many images without it),
  ``side`` ("Which side is the pneumothorax?" left / right / both),
  ``size`` ("How large is the effusion?" small / moderate / large; mild / moderate /
  severe for cardiomegaly and edema);
* **grounding**: "Where is the nodule?" answered with the box as text,
  ``[x0, y0, x1, y1]`` in percent of the image width and height (MAIRA-2's idea: the
  language model writes coordinates like any other words);
* **open** questions: "Describe the findings." (the FINDINGS section) and
  "Write the impression." (the IMPRESSION);
* **multi-turn** conversations: several of one image's questions in a row, the image
  given once, in the first user turn.

The chat template (see :func:`encode_conversation`)::

    [BOS] <|user|> <image> is there a pneumothorax? <|assistant|> yes [EOS] <|user|> which side ... <|assistant|> left [EOS]

Only the answers and the ``[EOS]`` that closes each answer carry labels; everything
else is -100 (``IGNORE_INDEX``), LLaVA's masking. Stage 1 uses LLaVA-1.5's *plain*
template instead: ``[BOS] <image> report [EOS]``, with the report as the only target.
"""
from __future__ import annotations

import copy
import re

import numpy as np
import torch

from ..data.findings import FINDINGS, PATHOLOGIES

IGNORE_INDEX = -100
IMAGE_TOKEN = "<image>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
VLM_SPECIAL_TOKENS = (IMAGE_TOKEN, USER_TOKEN, ASSISTANT_TOKEN)

QUESTION_KINDS = ("presence", "side", "size", "grounding", "open_findings", "open_impression")
CLOSED_KINDS = ("presence", "side", "size")

# How a question names each finding: "is there <phrase>?" and "<the name>".
PRESENCE_PHRASES = {
    "Cardiomegaly": "cardiomegaly", "Pleural Effusion": "a pleural effusion", "Pneumothorax": "a pneumothorax",
    "Consolidation": "consolidation", "Lung Lesion": "a lung nodule", "Atelectasis": "atelectasis",
    "Edema": "pulmonary edema", "Support Devices": "a support device", "Fracture": "a rib fracture",
}
NAMES = {
    "Cardiomegaly": "cardiomegaly", "Pleural Effusion": "pleural effusion", "Pneumothorax": "pneumothorax",
    "Consolidation": "consolidation", "Lung Lesion": "nodule", "Atelectasis": "atelectasis",
    "Edema": "edema", "Support Devices": "support device", "Fracture": "fracture",
}
NORMAL_QUESTION = "is this a normal study?"
SIDE_ANSWERS = {"left": "left", "right": "right", "bilateral": "both"}
SIZE_ANSWERS = ("small", "moderate", "large", "mild", "severe")
# Side questions only where the side is not fixed (edema is always bilateral, cardiomegaly has none).
SIDE_FINDINGS = ("Pleural Effusion", "Pneumothorax", "Consolidation", "Lung Lesion", "Atelectasis",
                 "Support Devices", "Fracture")
STAGE1_PROMPT = None  # the plain template has no question
OPEN_QUESTIONS = {"open_findings": "describe the findings.", "open_impression": "write the impression."}


def presence_question(finding: str) -> str:
    """The closed question for ``finding`` (``"No Finding"`` asks whether the study is normal)."""
    if finding == "No Finding":
        return NORMAL_QUESTION
    if finding not in PRESENCE_PHRASES:
        raise ValueError(f"unknown finding {finding!r}; one of {FINDINGS}")
    return f"is there {PRESENCE_PHRASES[finding]}?"


def side_question(finding: str) -> str:
    return f"which side is the {NAMES[finding]}?"


def size_question(finding: str) -> str:
    verb = "severe" if finding in ("Cardiomegaly", "Edema") else "large"
    return f"how {verb} is the {NAMES[finding]}?"


def grounding_question(finding: str) -> str:
    return f"where is the {NAMES[finding]}?"


def box_to_text(box) -> str:
    """(x0, y0, x1, y1) fractions -> ``"[x0, y0, x1, y1]"`` in whole percent."""
    return "[" + ", ".join(str(int(round(float(v) * 100))) for v in box) + "]"


_NUMBER = re.compile(r"\d+")


def parse_box(text: str):
    """The first four numbers of a generated answer as a box in fractions, or None."""
    numbers = [int(n) for n in _NUMBER.findall(text)][:4]
    if len(numbers) < 4:
        return None
    x0, y0, x1, y1 = (min(max(n, 0), 100) / 100 for n in numbers)
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def box_iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0 when either is None."""
    if a is None or b is None:
        return 0.0
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def report_sections(report: str) -> tuple[str, str]:
    """``(findings, impression)`` of a SynthCXR report (each the whole text when a section is missing)."""
    head, sep, tail = report.partition("IMPRESSION:")
    findings = head.replace("FINDINGS:", "").strip()
    return (findings or report.strip()), (tail.strip() if sep and tail.strip() else report.strip())


# --------------------------------------------------------------------------- questions from the cohort
def _qa(image, kind, finding, question, answer, box=None):
    return {"image": int(image), "kind": kind, "finding": finding, "question": question, "answer": answer,
            "box": box}


def generate_questions(cohort, indices, *, seed: int = 0, kinds=QUESTION_KINDS) -> list[dict]:
    """Every single-turn question the cohort answers for the studies ``indices``.

    Each question is a dict ``{image, kind, finding, question, answer, box}`` (``box`` only for
    grounding). Presence questions are balanced per finding: all images with the finding are
    asked ("yes") and as many images without it, drawn with ``seed`` ("no"); the normal-study
    question likewise. So a model that ignores the image can get 50% at best.
    """
    unknown = [k for k in kinds if k not in QUESTION_KINDS]
    if unknown:
        raise ValueError(f"unknown question kinds {unknown}; choose from {QUESTION_KINDS}")
    rng = np.random.default_rng(seed)
    indices = np.asarray(indices, dtype=np.int64)
    labels = np.asarray(cohort.labels)[indices]
    out: list[dict] = []
    if "presence" in kinds:
        for j, finding in enumerate(FINDINGS):
            pos = indices[labels[:, j] == 1]
            neg = indices[labels[:, j] == 0]
            n = min(len(pos), len(neg))
            if n == 0:
                continue
            pos = rng.choice(pos, n, replace=False) if len(pos) > n else pos
            neg = rng.choice(neg, n, replace=False)
            q = presence_question(finding)
            out += [_qa(i, "presence", finding, q, "yes") for i in pos]
            out += [_qa(i, "presence", finding, q, "no") for i in neg]
    for i in indices.tolist():
        for box in cohort.boxes[i]:
            finding = box["finding"]
            if "side" in kinds and finding in SIDE_FINDINGS and box.get("laterality") in SIDE_ANSWERS:
                out.append(_qa(i, "side", finding, side_question(finding), SIDE_ANSWERS[box["laterality"]]))
            if "size" in kinds and box.get("severity") in SIZE_ANSWERS:
                out.append(_qa(i, "size", finding, size_question(finding), box["severity"]))
            if "grounding" in kinds and box.get("box") is not None:
                out.append(_qa(i, "grounding", finding, grounding_question(finding), box_to_text(box["box"]),
                               box=tuple(float(v) for v in box["box"])))
        findings_text, impression_text = report_sections(cohort.reports[i])
        if "open_findings" in kinds:
            out.append(_qa(i, "open_findings", None, OPEN_QUESTIONS["open_findings"], findings_text))
        if "open_impression" in kinds:
            out.append(_qa(i, "open_impression", None, OPEN_QUESTIONS["open_impression"], impression_text))
    return out


def build_conversations(questions, *, max_turns: int = 3, seed: int = 0) -> list[dict]:
    """Group one image's questions into multi-turn conversations ``{image, turns: [qa, ...]}``.

    Each image's questions are shuffled and cut into runs of 1 to ``max_turns`` turns; an
    open question (a long answer) always ends its conversation, so lengths stay bounded.
    """
    rng = np.random.default_rng(seed)
    by_image: dict[int, list[dict]] = {}
    for qa in questions:
        by_image.setdefault(qa["image"], []).append(qa)
    conversations = []
    for image in sorted(by_image):
        pool = [by_image[image][k] for k in rng.permutation(len(by_image[image]))]
        while pool:
            n = int(rng.integers(1, max_turns + 1))
            turns = []
            while pool and len(turns) < n:
                qa = pool.pop()
                turns.append(qa)
                if qa["kind"].startswith("open"):
                    break
            conversations.append({"image": image, "turns": turns})
    order = rng.permutation(len(conversations))
    return [conversations[k] for k in order]


def sample_eval_questions(questions, n_per_kind: int, *, seed: int = 0) -> dict[str, list[dict]]:
    """At most ``n_per_kind`` questions of each kind (presence keeps its yes/no balance)."""
    rng = np.random.default_rng(seed)
    out = {}
    for kind in QUESTION_KINDS:
        items = [q for q in questions if q["kind"] == kind]
        if kind == "presence":
            yes = [q for q in items if q["answer"] == "yes"]
            no = [q for q in items if q["answer"] == "no"]
            half = min(n_per_kind // 2, len(yes), len(no))
            pick = [yes[k] for k in rng.choice(len(yes), half, replace=False)] + \
                   [no[k] for k in rng.choice(len(no), half, replace=False)]
        else:
            pick = [items[k] for k in rng.choice(len(items), min(n_per_kind, len(items)), replace=False)]
        out[kind] = pick
    return out


def template_texts() -> list[str]:
    """Every question and short answer the templates can write: the tokenizer learns their words too."""
    texts = [presence_question(f) for f in FINDINGS] + list(OPEN_QUESTIONS.values())
    for f in PATHOLOGIES:
        texts += [side_question(f), size_question(f), grounding_question(f)]
    texts += ["yes", "no", *SIDE_ANSWERS.values(), *SIZE_ANSWERS]
    texts += ["[" + ", ".join(str((k + s) % 101) for s in (0, 17, 43, 71)) + "]" for k in range(101)]
    return texts


# --------------------------------------------------------------------------- tokenizer and chat template
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<|user|> {{ m['content'] }} "
    "{% else %}<|assistant|> {{ m['content'] }}{{ eos_token }} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def vlm_tokenizer(data, vocab_size: int | None = None):
    """The language model's tokenizer: WordPiece on the training reports and the question templates,
    plus the special tokens ``<image>``, ``<|user|>``, ``<|assistant|>`` and a chat template.

    Why a tokenizer of its own: ``data.tokenizer`` (lesson 01) saw only reports, so "which",
    "side" or "where" would be spelled letter by letter. A real LLM's tokenizer knows both
    kinds of text; this one learns both. The specials keep their course ids
    (``[PAD]``=0 ... ``[EOS]``=6); the three new ones come after the vocabulary.
    """
    from ..data.tokenizer import train_tokenizer

    train = np.asarray(data.splits["train"], dtype=np.int64)
    # the templates are repeated so their words (and "yes") become whole tokens, as a chat corpus would make them
    texts = [data.cohort.reports[i] for i in train] + template_texts() * 20
    base = train_tokenizer(texts, int(vocab_size or len(data.tokenizer) + 100))
    tok = copy.deepcopy(base)
    tok.add_special_tokens({"additional_special_tokens": list(VLM_SPECIAL_TOKENS)})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def special_ids(tokenizer) -> dict:
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in
           (("image", IMAGE_TOKEN), ("user", USER_TOKEN), ("assistant", ASSISTANT_TOKEN))}
    if any(i is None or i == tokenizer.unk_token_id for i in ids.values()):
        raise ValueError("this tokenizer lacks <image>, <|user|> or <|assistant|>; build it with vlm_tokenizer(data)")
    return {**ids, "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}


def _words(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_conversation(tokenizer, turns, *, max_len: int | None = None, generation: bool = False):
    """Token ids and labels of one conversation in the chat template.

    ``turns``: a list of ``(question, answer)`` pairs (or dicts with those keys); the image
    placeholder goes in the first user turn. Labels are the answer tokens and the ``[EOS]``
    closing each answer; every other position is ``IGNORE_INDEX`` (-100).
    ``generation=True``: the last turn's answer is left out and the ids end with
    ``<|assistant|>``, the prompt the model continues.
    ``max_len``: later turns that do not fit are dropped; a first turn that does not fit
    has its answer cut (it still ends in ``[EOS]``).

    Returns ``(input_ids, labels)``, two lists of ints of the same length.
    """
    s = special_ids(tokenizer)
    turns = [(t["question"], t["answer"]) if isinstance(t, dict) else tuple(t) for t in turns]
    if not turns:
        raise ValueError("a conversation needs at least one (question, answer) turn")
    ids, labels = [s["bos"]], [IGNORE_INDEX]
    for k, (question, answer) in enumerate(turns):
        user = [s["user"]] + ([s["image"]] if k == 0 else []) + _words(tokenizer, question) + [s["assistant"]]
        last = k == len(turns) - 1
        answer_ids = [] if (generation and last) else _words(tokenizer, answer) + [s["eos"]]
        if max_len is not None and len(ids) + len(user) + len(answer_ids) > max_len:
            if k > 0:
                break
            room = max_len - len(ids) - len(user)
            if generation or room < 2:
                raise ValueError(f"max_len={max_len} leaves no room for the first question and an answer")
            answer_ids = answer_ids[:room - 1] + [s["eos"]]
        ids += user + answer_ids
        labels += [IGNORE_INDEX] * len(user) + answer_ids
    return ids, labels


def encode_plain(tokenizer, report: str, *, max_len: int):
    """Stage 1's plain template: ``[BOS] <image> report [EOS]``; labels on the report and ``[EOS]``."""
    s = special_ids(tokenizer)
    words = _words(tokenizer, report)[:max_len - 3] + [s["eos"]]
    return [s["bos"], s["image"], *words], [IGNORE_INDEX, IGNORE_INDEX, *words]


def pad_batch(sequences, pad_value: int, side: str = "right") -> torch.Tensor:
    """Lists of ints -> (B, longest) LongTensor, padded on ``side`` (``"right"`` or ``"left"``)."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    longest = max(len(s) for s in sequences)
    out = torch.full((len(sequences), longest), pad_value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            if side == "right":
                out[row, :len(seq)] = torch.tensor(seq)
            else:
                out[row, longest - len(seq):] = torch.tensor(seq)
    return out


def encode_conversations(tokenizer, conversations, *, max_len: int):
    """All conversations as right-padded tensors: ``{input_ids, labels, attention_mask, image}``."""
    pairs = [encode_conversation(tokenizer, c["turns"], max_len=max_len) for c in conversations]
    pad = tokenizer.pad_token_id
    input_ids = pad_batch([p[0] for p in pairs], pad)
    return {"input_ids": input_ids, "labels": pad_batch([p[1] for p in pairs], IGNORE_INDEX),
            "attention_mask": pad_batch([[1] * len(p[0]) for p in pairs], 0),
            "image": torch.tensor([c["image"] for c in conversations], dtype=torch.long)}


def render_chat(turns, *, generation: bool = False) -> str:
    """The conversation as the chat template's text (what :func:`encode_conversation` tokenises)."""
    turns = [(t["question"], t["answer"]) if isinstance(t, dict) else tuple(t) for t in turns]
    parts = ["[BOS]"]
    for k, (q, a) in enumerate(turns):
        parts.append(f"{USER_TOKEN} {IMAGE_TOKEN + ' ' if k == 0 else ''}{q}")
        if generation and k == len(turns) - 1:
            parts.append(ASSISTANT_TOKEN)
        else:
            parts.append(f"{ASSISTANT_TOKEN} {a}[EOS]")
    return " ".join(parts)


__all__ = ["IGNORE_INDEX", "IMAGE_TOKEN", "USER_TOKEN", "ASSISTANT_TOKEN", "VLM_SPECIAL_TOKENS", "QUESTION_KINDS",
           "CLOSED_KINDS", "PRESENCE_PHRASES", "NAMES", "SIDE_FINDINGS", "presence_question", "side_question",
           "size_question", "grounding_question", "box_to_text", "parse_box", "box_iou", "report_sections",
           "generate_questions", "build_conversations", "sample_eval_questions", "template_texts", "vlm_tokenizer",
           "special_ids", "encode_conversation", "encode_plain", "pad_batch", "encode_conversations", "render_chat",
           "CHAT_TEMPLATE"]
