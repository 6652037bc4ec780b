"""Zero-shot classification: no labels, only words.

A contrastive model places images and reports in one space. To ask "is there a
pleural effusion?", embed a positive prompt ("... pleural effusion.") and a negative
one ("No pleural effusion."), compare the image with both, and softmax the two
similarities. A prompt *ensemble* averages the embeddings of several phrasings
first (CLIP's trick), which makes the answer less sensitive to one wording.

Hand-written prompts must guess how the training text says a thing. The reports already
say it: :func:`report_prompt_embeddings` takes, for each finding, the mean embedding of
the training texts whose report mentions it as present, against the mean of the rest.
The report labeler reads them; no image label is used, so it is still zero-shot.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from ..data.findings import PATHOLOGIES
from ..eval.labeler import label_report

# Phrasings in the style of the reports the model was trained on.
FINDING_PROMPTS = {
    "Cardiomegaly": (["Cardiomegaly.", "The heart is enlarged.", "Enlarged cardiac silhouette."],
                     ["No cardiomegaly.", "Heart size is normal.", "Normal heart size."]),
    "Pleural Effusion": (["Pleural effusion.", "There is a pleural effusion.", "Small pleural effusion."],
                         ["No pleural effusion.", "No effusion.", "There is no pleural effusion."]),
    "Pneumothorax": (["Pneumothorax.", "There is a pneumothorax.", "Small pneumothorax."],
                     ["No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax."]),
    "Consolidation": (["Consolidation.", "There is airspace consolidation.", "Focal consolidation."],
                      ["No consolidation.", "No focal consolidation.", "There is no consolidation."]),
    "Lung Lesion": (["Pulmonary nodule.", "There is a nodule.", "Nodular opacity."],
                    ["No pulmonary nodule.", "No nodule.", "There is no nodule."]),
    "Atelectasis": (["Atelectasis.", "Atelectatic change.", "There is atelectasis."],
                    ["No atelectasis.", "There is no atelectasis.", "No atelectatic change."]),
    "Edema": (["Pulmonary edema.", "Interstitial edema.", "There is pulmonary edema."],
              ["No pulmonary edema.", "No edema.", "There is no pulmonary edema."]),
    "Support Devices": (["Endotracheal tube in place.", "Central venous catheter.", "Pacemaker."],
                        ["No support devices.", "No lines or tubes.", "No devices."]),
    "Fracture": (["Rib fracture.", "There is a rib fracture.", "Fracture."],
                 ["No rib fracture.", "No fracture.", "No acute rib fracture."]),
}


def prompt_embeddings(encode_text, findings=PATHOLOGIES, prompts=FINDING_PROMPTS, ensemble: bool = True):
    """Embed each finding's positive and negative prompts with ``encode_text(list[str]) -> (K, D)``.

    Returns ``(positive (F, D), negative (F, D))``: the mean of the L2-normalised
    embeddings of all phrasings (``ensemble=True``) or of the first phrasing only.
    """
    missing = [f for f in findings if f not in prompts]
    if missing:
        raise ValueError(f"no prompts for {missing}; pass prompts={{finding: ([positives], [negatives])}}")
    pos, neg = [], []
    for f in findings:
        p, n = prompts[f]
        p, n = (p, n) if ensemble else (p[:1], n[:1])
        pos.append(F.normalize(encode_text(list(p)).float(), dim=-1).mean(0))
        neg.append(F.normalize(encode_text(list(n)).float(), dim=-1).mean(0))
    return torch.stack(pos), torch.stack(neg)


def zero_shot_classify(image_embeddings, positive_embeddings, negative_embeddings, temperature: float = 0.1):
    """P(finding present) for every image and finding, from prompt similarities alone.

    image_embeddings (N, D); positive/negative_embeddings (F, D), one row per finding.
    score = softmax([cos(img, pos), cos(img, neg)] / temperature)[0]. The temperature
    does not change AUROC (it is a monotone map of the difference); it only calibrates.
    """
    if image_embeddings.ndim != 2 or positive_embeddings.shape != negative_embeddings.shape:
        raise ValueError("image_embeddings must be (N, D) and positive/negative embeddings both (F, D); got "
                         f"{tuple(image_embeddings.shape)}, {tuple(positive_embeddings.shape)}, "
                         f"{tuple(negative_embeddings.shape)}")
    if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
            or not (temperature > 0 and math.isfinite(temperature))):
        raise ValueError(f"temperature must be a number > 0 (0.1 is typical; smaller is sharper), got {temperature!r}: "
                         "a negative one inverts every score (1 - p), 0 turns them into hard 0/1")
    if image_embeddings.shape[1] != positive_embeddings.shape[1]:
        raise ValueError(f"image embeddings have {image_embeddings.shape[1]} dims, prompts "
                         f"{positive_embeddings.shape[1]}: embed both with the same model's projections")
    img = F.normalize(image_embeddings.float(), dim=-1)
    pos = img @ F.normalize(positive_embeddings.float(), dim=-1).t()
    neg = img @ F.normalize(negative_embeddings.float(), dim=-1).t()
    return torch.sigmoid((pos - neg) / temperature)


def report_prompt_embeddings(encode_text, texts, reports, findings=PATHOLOGIES, labeler=None):
    """Prompts read off the training reports: ``(positive (F, D), negative (F, D))``.

    For each finding, ``positive`` is the mean of the L2-normalised embeddings of the ``texts``
    (what the model was trained to match, e.g. the impressions) whose ``reports`` the labeler
    reads as positive, and ``negative`` the mean over all the others. ``labeler`` (default
    :func:`~medmm_lite.eval.labeler.label_report`) maps a report to ``{finding: 1, 0 or -1}``;
    uncertain mentions count as not positive.
    """
    labeler = labeler or label_report
    texts, reports = list(texts), list(reports)
    if len(texts) != len(reports) or not texts:
        raise ValueError(f"need one text per report and at least one: got {len(texts)} texts, {len(reports)} reports")
    unique = sorted(set(texts))          # impressions repeat ("No acute cardiopulmonary process."): embed once
    with torch.no_grad():
        table = F.normalize(encode_text(unique).float(), dim=-1)
    rows = {t: i for i, t in enumerate(unique)}
    embedded = table[[rows[t] for t in texts]]
    labels = [labeler(r) for r in reports]
    pos, neg = [], []
    for f in findings:
        present = torch.tensor([lab.get(f, 0) == 1 for lab in labels])
        if present.all() or not present.any():
            raise ValueError(f"{f}: the labeler finds it in {int(present.sum())} of {len(reports)} reports; "
                             "prompts from reports need both reports that state it and reports that do not")
        pos.append(embedded[present].mean(0))
        neg.append(embedded[~present].mean(0))
    return torch.stack(pos), torch.stack(neg)
