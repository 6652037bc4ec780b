"""What every image-text lesson starts from: a cohort, patient-level splits, a tokenizer
trained on the training reports only, and the reports encoded as token ids."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..profiles import Profile
from .cohort import patient_split
from .datasets import load_dataset
from .real.chestmnist import official_split
from .tokenizer import encode_for_decoder, encode_reports, train_tokenizer

# Real datasets that publish their own patient-level split, and where it lives.
OFFICIAL_SPLITS = {"chestmnist": "NIH ChestX-ray14's official split by patient, as MedMNIST keeps it"}


@dataclass
class PreparedData:
    cohort: object
    splits: dict            # "train" / "val" / "test" -> study indices (by patient)
    tokenizer: object       # transformers.PreTrainedTokenizerFast
    input_ids: torch.Tensor       # (N, L) [CLS] report [SEP], padded
    attention_mask: torch.Tensor  # (N, L) 1 real / 0 pad

    def decoder_inputs(self, max_len: int | None = None):
        """[BOS] report [EOS] ids and mask for captioning / language modelling."""
        return encode_for_decoder(self.tokenizer, self.cohort.reports, max_len or self.input_ids.shape[1])


def dataset_split(cohort, dataset: str = "synthcxr", seed: int = 0) -> dict:
    """``{"train", "val", "test"}`` study indices with no patient in two splits.

    A dataset that publishes a patient-level split gets that split (ChestMNIST: NIH's official
    split, which MedMNIST keeps while dropping the patient ids, so :func:`patient_split` on it
    could put one patient's images on both sides). Every other dataset gets
    :func:`~medmm_lite.data.patient_split` over its patient ids (SynthCXR's patients; IU X-ray's
    reports, one per patient as distributed)."""
    if dataset == "chestmnist":
        splits = official_split(cohort)
        empty = [name for name, idx in splits.items() if len(idx) == 0]
        if empty:
            raise ValueError(f"this ChestMNIST cohort has no study from the official {' or '.join(empty)} split, "
                             "so the patient-level split cannot be used: load all three splits "
                             "(splits=('train', 'val', 'test')) and enough studies (n_studies) that each has some")
        return splits
    return patient_split(cohort, seed=seed)


def prepare_data(P: Profile, seed: int = 0, dataset: str = "synthcxr", **knobs) -> PreparedData:
    """The cohort for profile ``P``, its patient-level splits (:func:`dataset_split`), a tokenizer
    fitted on train reports, encoded reports."""
    cohort = load_dataset(dataset, n_studies=P.n_studies, image_size=P.image_size, seed=seed, **knobs)
    splits = dataset_split(cohort, dataset, seed=seed)
    train_reports = [cohort.reports[i] for i in np.asarray(splits["train"])]
    tokenizer = train_tokenizer(train_reports, P.vocab_size)
    input_ids, attention_mask = encode_reports(tokenizer, cohort.reports, P.max_text_len)
    return PreparedData(cohort, splits, tokenizer, input_ids, attention_mask)
