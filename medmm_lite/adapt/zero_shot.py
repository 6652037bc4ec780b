"""Zero-shot classification: no labels, only words.

A contrastive model places images and reports in one space. To ask "is there a
pleural effusion?", embed a positive prompt ("... pleural effusion.") and a negative
one ("No pleural effusion."), compare the image with both, and softmax the two
similarities. A prompt *ensemble* averages the embeddings of several phrasings
first (CLIP's trick), which makes the answer less sensitive to one wording.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from ..data.findings import PATHOLOGIES

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
