"""What every image-text lesson starts from: a cohort, patient splits, a tokenizer
trained on the training reports only, and the reports encoded as token ids."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..profiles import Profile
from .datasets import load_dataset
from .tokenizer import encode_for_decoder, encode_reports, train_tokenizer


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


def prepare_data(P: Profile, seed: int = 0, dataset: str = "synthcxr", **knobs) -> PreparedData:
    """The cohort for profile ``P``, its splits, a tokenizer fitted on train reports, encoded reports."""
    from .cohort import patient_split

    cohort = load_dataset(dataset, n_studies=P.n_studies, image_size=P.image_size, seed=seed, **knobs)
    splits = patient_split(cohort, seed=seed)
    train_reports = [cohort.reports[i] for i in np.asarray(splits["train"])]
    tokenizer = train_tokenizer(train_reports, P.vocab_size)
    input_ids, attention_mask = encode_reports(tokenizer, cohort.reports, P.max_text_len)
    return PreparedData(cohort, splits, tokenizer, input_ids, attention_mask)
