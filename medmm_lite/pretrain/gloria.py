"""GLoRIA: global and local image-report alignment (Huang et al., ICCV 2021), at course size.

    from medmm_lite.pretrain import gloria
    model, info = gloria.pretrain_gloria(P, data, seed=0)                  # local + global
    clip_like, _ = gloria.pretrain_gloria(P, data, seed=0, local_weight=0)  # the same model, global loss only

The model is two towers with two pairs of projections:

* **global**: the mean of the ViT's patch features and the mean of the report's word
  features (GLoRIA pools both: it average-pools its CNN's last map and averages BERT's
  word features), each through a linear layer into one ``embed_dim`` space, trained with
  CLIP's symmetric InfoNCE at a fixed logit scale of 10 (GLoRIA's ``global_loss``);
* **local**: the ViT's patch grid (the image's regions) and the report's *words* (word
  pieces merged, specials and punctuation dropped), each through a bias-free linear layer
  (GLoRIA's 1x1 convolution), trained with the word-region attention loss of
  :mod:`medmm_lite.objectives.local` (``attention="gloria"``, GLoRIA's two softmaxes, or
  ``"cosine"``, one softmax over cosines, which does not collapse from scratch as GLoRIA's
  does; see that module).

Loss = local_weight * (local image->text + text->image) + (global image->text + text->image),
GLoRIA's sum. ``local_weight=0`` trains the same architecture with the global loss alone:
the CLIP-style arm of the comparison, at the same budget.

**One sentence at a time.** GLoRIA's reference code pairs each image, at each step, with
*one random sentence* of its report (``full_report: false`` in its configs), not the whole
report. A sentence names one finding ("Small nodule in the right middle lobe."), so its
words have one place to look; it also makes the all-pairs local loss cheap (a dozen words
instead of a hundred). :func:`pretrain_gloria` does the same (``text="sentence"``), and
the trained text tower reads sentences: prompts and pointing-game queries are sentences too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..backbones import image_encoder, text_encoder
from ..data.augment import light_augment
from ..data.findings import PATHOLOGIES
from ..data.tensors import TensorDictDataset
from ..hub import data_fingerprint, load_or_train
from ..objectives.contrastive import distributed_clip_loss
from ..objectives.local import (ATTENTION_KINDS, GLORIA_ATTENTION_TEMPERATURE, GLORIA_LOGIT_SCALE,
                                GLORIA_SIMILARITY_TEMPERATURE, local_contrastive_loss, merge_subwords, merged_words,
                                subword_tables, word_region_attention)
from ..objectives.local import word_ids as token_word_ids
from ..profiles import Profile
from ..train import fit


class GLoRIAOutput(NamedTuple):
    """Everything the two losses need, already projected into the shared space.

    ``image_global`` (B, E), ``image_local`` (B, R, E) on the encoder's (h, w) grid,
    ``text_global`` (B, E), ``words`` (B, W, E) with ``word_mask`` (B, W); ``words`` and
    ``word_mask`` are None when the text was encoded without its words.
    """

    image_global: torch.Tensor
    image_local: torch.Tensor
    text_global: torch.Tensor
    words: torch.Tensor | None
    word_mask: torch.Tensor | None


class GLoRIAModel(nn.Module):
    """An image encoder and a text encoder with global and local projections.

    Args:
        image_encoder: returns ``ImageFeatures(global (B, d), local (B, R, d))`` and has ``dim``,
            ``local_dim`` and ``grid_size`` (the course's ``ViT``).
        text_encoder: returns ``TextFeatures(global (B, d), tokens (B, L, d))`` and has ``dim``.
        embed_dim: the shared space's width.
        tokenizer: the tokenizer of the reports; its ``##`` pieces, specials and punctuation are
            kept as lookup tables so the model can merge word pieces into words by itself.
            Without it, pass ``word_ids`` (from ``medmm_lite.objectives.local.word_ids``) to ``forward``.
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, embed_dim: int, tokenizer=None):
        super().__init__()
        for name, enc, attrs in (("image_encoder", image_encoder, ("dim", "local_dim", "grid_size")),
                                 ("text_encoder", text_encoder, ("dim",))):
            missing = [a for a in attrs if not hasattr(enc, a)]
            if missing:
                raise TypeError(f"{name} ({type(enc).__name__}) lacks {missing}: use medmm_lite.backbones"
                                f".{'image' if name.startswith('image') else 'text'}_encoder(P, ...)")
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        self.embed_dim = embed_dim
        self.grid_size = tuple(image_encoder.grid_size)
        self.image_global = nn.Linear(image_encoder.dim, embed_dim)
        self.text_global = nn.Linear(text_encoder.dim, embed_dim)
        # GLoRIA projects the local image features with a bias-free 1x1 convolution: a Linear per region.
        self.image_local = nn.Linear(image_encoder.local_dim, embed_dim, bias=False)
        self.text_local = nn.Linear(text_encoder.dim, embed_dim, bias=False)
        if tokenizer is not None:
            continues, dropped = subword_tables(tokenizer)
            vocab = getattr(text_encoder, "vocab_size", len(continues))
            if len(continues) > vocab:
                raise ValueError(f"the tokenizer has {len(continues)} tokens but the text encoder's vocabulary "
                                 f"is {vocab}: build the text encoder with vocab_size=len(tokenizer)")
            # not saved with the weights (persistent=False): they come from the tokenizer, not from training
            self.register_buffer("subword_continues", continues, persistent=False)
            self.register_buffer("subword_dropped", dropped, persistent=False)
        else:
            self.subword_continues = self.subword_dropped = None

    def word_ids(self, input_ids, attention_mask=None) -> torch.Tensor:
        """(B, L) word index of each token (-1: special, punctuation or padding)."""
        if self.subword_continues is None:
            raise ValueError("this GLoRIAModel was built without a tokenizer, so it cannot tell words from word "
                             "pieces: build it with tokenizer=..., or pass word_ids=medmm_lite.objectives.local"
                             ".word_ids(input_ids, tokenizer)")
        return token_word_ids(input_ids, (self.subword_continues, self.subword_dropped), attention_mask)

    def encode_image(self, images, projection: str = "local"):
        """``(global (B, E), regions (B, R, E))``; regions through the local projection, or through
        the global one with ``projection="global"`` (how a CLIP-style model is asked for maps)."""
        features = self.image_encoder(images)
        proj = self.image_local if projection == "local" else self.image_global
        return self.image_global(features.global_features), proj(features.local_features)

    def encode_text(self, input_ids, attention_mask=None, word_ids=None, words: bool = True,
                    projection: str = "local"):
        """``(global (B, E), words (B, W, E) or None, word_mask (B, W) or None)``.

        The report's global feature is the mean of its word features, as in GLoRIA."""
        features = self.text_encoder(input_ids, attention_mask)
        if word_ids is None:
            word_ids = self.word_ids(input_ids, attention_mask)
        merged, mask = merge_subwords(features.token_features, input_ids, word_ids, attention_mask)
        if not bool(mask.any(dim=1).all()):
            raise ValueError("a text in the batch has no words (only special tokens or punctuation)")
        weights = mask.to(merged.dtype)[..., None]
        text_global = self.text_global((merged * weights).sum(1) / weights.sum(1))
        if not words:
            return text_global, None, None
        proj = self.text_local if projection == "local" else self.text_global
        return text_global, proj(merged), mask

    def forward(self, images, input_ids, attention_mask=None, word_ids=None, words: bool = True,
                projection: str = "local") -> GLoRIAOutput:
        if projection not in ("local", "global"):
            raise ValueError(f"projection must be 'local' or 'global', got {projection!r}")
        image_global, image_local = self.encode_image(images, projection)
        text_global, word_features, word_mask = self.encode_text(input_ids, attention_mask, word_ids, words,
                                                                 projection)
        return GLoRIAOutput(image_global, image_local, text_global, word_features, word_mask)


def gloria_step(model: GLoRIAModel, batch: dict, local_weight: float = 1.0,
                temp_attention: float = GLORIA_ATTENTION_TEMPERATURE,
                temp_similarity: float = GLORIA_SIMILARITY_TEMPERATURE, temp_loss: float = GLORIA_LOGIT_SCALE,
                attention: str = "gloria"):
    """One GLoRIA loss for ``fit``: ``(loss, {"global": ..., "local": ..., "attention_peak": ...})``.

    ``attention_peak`` watches the local attention: the mean over words of its largest weight,
    times the number of regions (1 = uniform, R = all on one region).

    ``batch``: ``image`` (B, 1, H, W), ``input_ids`` (B, L), ``attention_mask`` (B, L) and,
    for a model built without a tokenizer, ``word_ids`` (B, L). With ``local_weight == 0``
    the words and the local loss are skipped (the global-only arm costs what CLIP costs).
    """
    for key in ("image", "input_ids", "attention_mask"):
        if key not in batch:
            raise KeyError(f"gloria_step needs batch[{key!r}]; got keys {sorted(batch)}")
    if local_weight < 0:
        raise ValueError(f"local_weight must be >= 0, got {local_weight}")
    use_local = local_weight > 0
    out = model(batch["image"], batch["input_ids"], batch["attention_mask"], batch.get("word_ids"), words=use_local)
    # clip_loss averages its two directions; GLoRIA sums them, hence the 2. Under DDP the global
    # loss sees every process's pairs; the local (word-region) loss stays within each process.
    global_loss = 2 * distributed_clip_loss(out.image_global, out.text_global, temp_loss)
    logs = {"global": global_loss.detach()}
    loss = global_loss
    if use_local:
        local = local_contrastive_loss(out.words, out.word_mask, out.image_local, temp_attention, temp_similarity,
                                       temp_loss, attention=attention)
        loss = loss + local_weight * local.loss
        logs["local"] = local.loss.detach()
        # how peaked the words' attention is: its maximum times the number of regions (1 = uniform)
        peak = local.attention.detach().amax(dim=-1)[out.word_mask]
        logs["attention_peak"] = peak.mean() * out.image_local.shape[1]
    return loss, logs


# --------------------------------------------------------------------------- sentences
_HEADING = re.compile(r"\b(?:FINDINGS|IMPRESSION)\s*:")
_NUMBERED = re.compile(r"(?:^|\s)\d+\.\s")
_SENTENCE_END = re.compile(r"\.(?:\s|$)")


def report_sentences(report: str) -> list[str]:
    """A report's sentences, as GLoRIA cuts them: section headings and list numbers removed,
    split at full stops, sentences of fewer than two words dropped.

    >>> report_sentences("FINDINGS: No effusion. IMPRESSION: 1. Small nodule in the right middle lobe.")
    ['No effusion.', 'Small nodule in the right middle lobe.']
    """
    if not isinstance(report, str):
        raise TypeError(f"report must be a string, got {type(report).__name__}")
    text = _NUMBERED.sub(" ", _HEADING.sub(". ", report))
    pieces = (p.strip().rstrip(".") for p in _SENTENCE_END.split(text))
    return [p + "." for p in pieces if len(re.findall(r"\w+", p)) > 1]


@dataclass
class SentenceBank:
    """Every sentence of every report, tokenised once; ``sample`` draws one per study.

    ``input_ids`` / ``attention_mask`` (S, L): all sentences; ``study`` (S,): the report each
    came from; ``first`` / ``count`` (N,): where a study's sentences start in the bank and
    how many it has; ``sentences``: the S strings.
    """

    sentences: list
    study: torch.Tensor
    first: torch.Tensor
    count: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def sample(self, studies: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Bank rows of one uniformly random sentence for each study in ``studies``."""
        studies = studies.cpu().long()
        u = torch.rand(len(studies), generator=generator)
        return self.first[studies] + (u * self.count[studies]).long().clamp(max=self.count[studies] - 1)


def sentence_bank(reports, tokenizer, max_len: int | None = None) -> SentenceBank:
    """Split every report into sentences (:func:`report_sentences`) and tokenise them all.

    Sentences are padded to the longest one (plus [CLS] and [SEP]), and cut at ``max_len``
    tokens if that is shorter. A report with no sentence of two words or more keeps its
    whole text as its one sentence.
    """
    from ..data.tokenizer import encode_reports

    sentences, study, count = [], [], []
    for i, report in enumerate(reports):
        found = report_sentences(report) or [report]
        sentences += found
        study += [i] * len(found)
        count.append(len(found))
    longest = max(len(ids) for ids in tokenizer(sentences)["input_ids"])
    input_ids, attention_mask = encode_reports(tokenizer, sentences, min(longest, max_len or longest))
    count_t = torch.tensor(count, dtype=torch.long)
    first = torch.cumsum(count_t, 0) - count_t
    return SentenceBank(sentences, torch.tensor(study, dtype=torch.long), first, count_t, input_ids, attention_mask)


def build_gloria(P: Profile, tokenizer, embed_dim: int | None = None) -> GLoRIAModel:
    """The course's GLoRIA model for profile ``P``: the standard ViT and text encoder."""
    # pool="mean": the image's global feature is the mean of its patch features, as GLoRIA
    # average-pools its CNN's last map; linear probes then read the same feature the model trained.
    return GLoRIAModel(image_encoder(P, pool="mean"), text_encoder(P, len(tokenizer)), embed_dim or P.dim,
                       tokenizer=tokenizer)


def pretrain_gloria(P: Profile, data, *, seed: int = 0, local_weight: float = 1.0, steps: int | None = None,
                    device=None, dataset: str = "synthcxr", text: str = "sentence", attention: str = "gloria",
                    augment=light_augment, progress: bool = True):
    """Pretrain (or load from the cache) a GLoRIA model on the training split of ``data``.

    Args:
        P: the profile (sizes, batch size, learning rate, steps).
        data: :class:`medmm_lite.data.PreparedData` (cohort, splits, tokenizer, encoded reports).
        seed: fixes the initialisation, the batch order, the sentences drawn and the augmentations.
        local_weight: 1.0 is GLoRIA; 0 trains the same model with the global loss only.
        steps: optimiser steps (default ``P.steps``).
        device: default ``P.device``.
        dataset: the dataset's name, part of the cache key.
        text: ``"sentence"`` (GLoRIA: one random sentence of the report per image and step)
            or ``"report"`` (the whole report, ``data.input_ids``: about six times the words, so
            the all-pairs local loss costs several times more).
        attention: ``"gloria"`` (GLoRIA's two softmaxes) or ``"cosine"``
            (see :func:`medmm_lite.objectives.word_region_attention`).
        augment: batch image augmentation (default small shifts, rotations, window changes).

    Returns:
        ``(model, info)`` from :func:`medmm_lite.hub.load_or_train`; ``info["history"]`` is the
        training :class:`~medmm_lite.train.History` with ``metrics["global"]`` (and ``["local"]``).
    """
    if text not in ("sentence", "report"):
        raise ValueError(f"text must be 'sentence' (GLoRIA) or 'report', got {text!r}")
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
    steps = P.steps if steps is None else steps
    device = device or P.device
    train_idx = torch.as_tensor(np.asarray(data.splits["train"]), dtype=torch.long)
    key = {"profile": P.name, "dataset": dataset, "n_studies": len(data.cohort), "image_size": P.image_size,
           "patch_size": P.patch_size, "dim": P.dim, "depth": P.depth, "heads": P.heads,
           "vocab_size": len(data.tokenizer), "max_text_len": int(data.input_ids.shape[1]),
           "batch_size": P.batch_size, "lr": P.lr, "steps": steps, "seed": seed, "local_weight": local_weight,
           "n_train": len(train_idx), "data": data_fingerprint(data), "text": text, "attention": attention,
           "augment": getattr(augment, "__name__", str(augment))}

    def build():
        torch.manual_seed(seed)  # the same initial weights for both arms of a comparison
        return build_gloria(P, data.tokenizer)

    def train(model):
        generator = torch.Generator().manual_seed(seed)
        if text == "sentence":
            bank = sentence_bank([data.cohort.reports[i] for i in train_idx.tolist()], data.tokenizer,
                                 max_len=int(data.input_ids.shape[1]))
            ids, mask = bank.input_ids, bank.attention_mask
            dataset_ = TensorDictDataset(image=data.cohort.images[train_idx], study=torch.arange(len(train_idx)))
        else:
            dataset_ = TensorDictDataset(image=data.cohort.images[train_idx], input_ids=data.input_ids[train_idx],
                                         attention_mask=data.attention_mask[train_idx])

        def loss_fn(m, batch):
            if text == "sentence":  # GLoRIA: one random sentence of each report, new at every step
                rows = bank.sample(batch["study"], generator)
                batch = {**batch, "input_ids": ids[rows].to(batch["image"].device),
                         "attention_mask": mask[rows].to(batch["image"].device)}
            if augment is not None:
                x = batch["image"]
                batch = {**batch, "image": augment(x, generator=generator if x.device.type == "cpu" else None)}
            return gloria_step(m, batch, local_weight, attention=attention)

        name = "GLoRIA local+global" if local_weight > 0 else "global only"
        return fit(model, loss_fn, dataset_, steps=steps, batch_size=min(P.batch_size, len(dataset_)), lr=P.lr,
                   seed=seed, device=device, amp=P.amp, progress=progress, desc=name, rng=generator)

    name = "gloria" if local_weight > 0 else "gloria_global_only"
    return load_or_train(name, train, build_fn=build, key=key, device=device)


@torch.no_grad()
def attention_maps(model: GLoRIAModel, images, input_ids, attention_mask=None, *, word_ids=None,
                   projection: str = "local", batch_size: int = 256, temperature: float = GLORIA_ATTENTION_TEMPERATURE,
                   attention: str = "gloria"):
    """Where each word of each report looks in its own image.

    Returns ``(maps (N, W, h, w), word_mask (N, W))`` on the CPU: ``maps[n, w]`` is word w's
    attention over image n's patch grid (sums to 1; zeros for padding words), W the most
    words in any report. ``projection="global"`` projects words and patches with the
    *global* projections instead (the way to ask a CLIP-style model, whose local projections
    were never trained, for word-region maps).
    """
    if projection not in ("local", "global"):
        raise ValueError(f"projection must be 'local' or 'global', got {projection!r}")
    if len(images) != len(input_ids):
        raise ValueError(f"{len(images)} images but {len(input_ids)} reports: one report per image")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunks, masks = [], []
    try:
        for i in range(0, len(images), batch_size):
            sl = slice(i, i + batch_size)
            mask = None if attention_mask is None else attention_mask[sl].to(device)
            ids = None if word_ids is None else word_ids[sl].to(device)
            out = model(images[sl].to(device), input_ids[sl].to(device), mask, ids, projection=projection)
            _, weights = word_region_attention(out.words, out.image_local, temperature, out.word_mask,
                                               attention=attention)
            chunks.append(weights.float().cpu())
            masks.append(out.word_mask.cpu())
    finally:
        model.train(was_training)
    if not chunks:
        raise ValueError("images is empty: nothing to attend over")
    W = max(c.shape[1] for c in chunks)
    maps = torch.cat([nn.functional.pad(c, (0, 0, 0, W - c.shape[1])) for c in chunks])
    word_mask = torch.cat([nn.functional.pad(m, (0, W - m.shape[1])) for m in masks])
    return maps.view(len(maps), W, *model.grid_size), word_mask


# --------------------------------------------------------------------------- the pointing game
# The words that name each finding in SynthCXR's reports (medmm_lite.data.reports' phrases).
FINDING_WORDS = {
    "Cardiomegaly": ("cardiomegaly", "heart", "cardiac"),
    "Pleural Effusion": ("effusion", "effusions"),
    "Pneumothorax": ("pneumothorax",),
    "Consolidation": ("consolidation",),
    "Lung Lesion": ("nodule", "mass", "nodular"),
    "Atelectasis": ("atelectasis", "atelectatic"),
    "Edema": ("edema", "congestion"),
    "Support Devices": ("tube", "catheter", "pacemaker", "picc"),
    "Fracture": ("fracture",),
}


@dataclass
class PointingTrials:
    """One trial per (study, present finding) whose name appears in the report: the first
    sentence that names it, tokenised, and which of its words name it.

    ``study`` (K,) cohort indices; ``finding`` K names; ``sentence`` K strings;
    ``input_ids`` / ``attention_mask`` (K, L); ``query`` (K, W) bool, the naming words
    (in :func:`~medmm_lite.objectives.merge_subwords` order); ``boxes``: K lists of the
    finding's boxes (fractions of the image).
    """

    study: np.ndarray
    finding: list
    sentence: list
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    query: torch.Tensor
    boxes: list

    def __len__(self) -> int:
        return len(self.study)


def pointing_trials(cohort, indices, tokenizer, max_len: int = 32, findings=PATHOLOGIES,
                    words=FINDING_WORDS) -> PointingTrials:
    """The pointing game's trials for the studies ``indices`` of ``cohort``."""
    from ..data.tokenizer import encode_reports

    missing = [f for f in findings if f not in words]
    if missing:
        raise ValueError(f"no naming words for {missing}; pass words={{finding: (word, ...)}}")
    study, names, sentences, boxes = [], [], [], []
    for i in np.asarray(indices).tolist():
        present = {b["finding"] for b in cohort.boxes[i]}
        sents = report_sentences(cohort.reports[i])
        for f in findings:
            if f not in present:
                continue
            hit = next((s for s in sents if set(re.findall(r"\w+", s.lower())) & set(words[f])), None)
            if hit is None:   # the report does not name it (cannot happen with SynthCXR's grammar)
                continue
            study.append(i)
            names.append(f)
            sentences.append(hit)
            boxes.append([b["box"] for b in cohort.boxes[i] if b["finding"] == f])
    if not study:
        raise ValueError("no study among these indices has a present finding named in its report")
    input_ids, attention_mask = encode_reports(tokenizer, sentences, max_len)
    merged = merged_words(input_ids, tokenizer, attention_mask)
    W = max(len(m) for m in merged)
    query = torch.zeros(len(merged), W, dtype=torch.bool)
    for k, (ws, f) in enumerate(zip(merged, names)):
        for w, word in enumerate(ws):
            query[k, w] = word in words[f]
    if not bool(query.any(dim=1).all()):
        k = int((~query.any(dim=1)).nonzero()[0, 0])
        raise ValueError(f"the naming word of {names[k]!r} was cut from {sentences[k]!r}: raise max_len")
    return PointingTrials(np.asarray(study), names, sentences, input_ids, attention_mask, query, boxes)


def cells_touching(boxes, grid_size) -> torch.Tensor:
    """(h, w) bool: the grid cells that overlap any of ``boxes`` ((x0, y0, x1, y1) fractions)."""
    h, w = grid_size
    ys, xs = torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64)
    hit = torch.zeros(h, w, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        rows = (ys / h < y1) & ((ys + 1) / h > y0)
        cols = (xs / w < x1) & ((xs + 1) / w > x0)
        hit |= rows[:, None] & cols[None, :]
    return hit


def pointing_game(maps: torch.Tensor, trials: PointingTrials) -> dict:
    """Score word-region attention maps: does each naming word's peak fall on its finding?

    ``maps`` (K, W, h, w) from :func:`attention_maps` on the trials' sentences. A trial's map
    is the mean over its naming words; it *hits* when its peak cell overlaps one of the
    finding's boxes. A random peak would hit with probability (cells touching a box) /
    (all cells): the ``chance`` of each trial, whose mean is the random-attention baseline.

    Returns ``{"accuracy", "chance", "hits" (K,) bool, "chance_per_trial" (K,),
    "per_finding": {finding: (accuracy, chance, n)}}``.
    """
    if maps.ndim != 4 or len(maps) != len(trials):
        raise ValueError(f"maps must be (K={len(trials)}, W, h, w) from attention_maps on the trials' sentences, "
                         f"got {tuple(maps.shape)}")
    W = min(maps.shape[1], trials.query.shape[1])
    query = trials.query[:, :W].to(maps.dtype)
    if not bool(query.any(dim=1).all()):
        raise ValueError("some trial's naming word lies beyond the maps' words: compute the maps from "
                         "trials.input_ids and trials.attention_mask")
    mean_map = (maps[:, :W] * query[..., None, None]).sum(1) / query.sum(1)[:, None, None]   # (K, h, w)
    grid = tuple(maps.shape[2:])
    touching = torch.stack([cells_touching(b, grid) for b in trials.boxes])                 # (K, h, w)
    peak = mean_map.flatten(1).argmax(dim=1)
    hits = touching.flatten(1).gather(1, peak[:, None])[:, 0]
    chance = touching.flatten(1).double().mean(dim=1)
    per_finding = {}
    names = np.asarray(trials.finding)
    for f in dict.fromkeys(trials.finding):
        m = torch.as_tensor(names == f)
        per_finding[f] = (float(hits[m].double().mean()), float(chance[m].mean()), int(m.sum()))
    return {"accuracy": float(hits.double().mean()), "chance": float(chance.mean()), "hits": hits,
            "chance_per_trial": chance, "per_finding": per_finding, "maps": mean_map}


@torch.no_grad()
def encode_images(model: GLoRIAModel, images, batch_size: int = 256) -> torch.Tensor:
    """Global image embeddings (N, E) on the CPU, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        out = [model.encode_image(images[i:i + batch_size].to(device))[0].float().cpu()
               for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def encode_texts(model: GLoRIAModel, tokenizer, texts, max_len: int | None = None) -> torch.Tensor:
    """Global text embeddings (K, E) of a list of strings (e.g. zero-shot prompts), on the CPU."""
    from ..data.tokenizer import encode_reports

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        texts = list(texts)
        if max_len is None:  # the longest text: no padding beyond what is needed
            max_len = max(len(ids) for ids in tokenizer(texts)["input_ids"])
        ids, mask = encode_reports(tokenizer, texts, max_len)
        text_global, _, _ = model.encode_text(ids.to(device), mask.to(device), words=False)
    finally:
        model.train(was_training)
    return text_global.float().cpu()


__all__ = ["GLoRIAModel", "GLoRIAOutput", "gloria_step", "build_gloria", "pretrain_gloria", "attention_maps",
           "encode_images", "encode_texts", "report_sentences", "SentenceBank", "sentence_bank", "FINDING_WORDS",
           "PointingTrials", "pointing_trials", "cells_touching", "pointing_game"]
