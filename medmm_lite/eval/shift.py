"""Distribution shift to an unseen site: the data a site-held-out experiment may see.

To ask "does the model work at a hospital it has never seen?", nothing trained may have seen
that hospital: not the classifier, not the pretraining, not even the tokenizer's vocabulary
(each site's radiologists write in their own style). :func:`hold_out_site` returns a copy of a
``PreparedData`` whose train, val and test splits keep only the other sites, with a tokenizer
fitted on *their* training reports, and the indices of every study of the held-out site (all
of them are unseen, so all of them form the external test set).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np


def hold_out_site(data, site, P) -> tuple:
    """``(data_without_site, external_idx)``.

    Args:
        data: a ``PreparedData`` (``medmm_lite.data.prepare_data``).
        site: the held-out site's index into ``cohort.site_names``, or its name.
        P: the profile (vocabulary size and text length of the refitted tokenizer).

    The cohort object is shared (no copy of the images); only ``splits``, ``tokenizer``,
    ``input_ids`` and ``attention_mask`` are new. The pretraining recipes read
    ``data.splits["train"]``, so they never see the held-out site.
    """
    from ..data.tokenizer import encode_reports, train_tokenizer

    cohort = data.cohort
    names = list(cohort.site_names)
    index = names.index(site) if isinstance(site, str) else int(site)
    if not 0 <= index < len(names):
        raise ValueError(f"site must be one of {names} or an index below {len(names)}, got {site!r}")
    site_of = np.asarray(cohort.site)
    if not (site_of == index).any():
        raise ValueError(f"no study comes from site {names[index]!r}")
    splits = {k: np.asarray(v)[site_of[np.asarray(v)] != index] for k, v in data.splits.items()}
    if not len(splits["train"]):
        raise ValueError("no training study is left once the site is held out")
    tokenizer = train_tokenizer([cohort.reports[i] for i in splits["train"]], P.vocab_size)
    input_ids, attention_mask = encode_reports(tokenizer, cohort.reports, P.max_text_len)
    external = np.flatnonzero(site_of == index)
    return replace(data, splits=splits, tokenizer=tokenizer, input_ids=input_ids,
                   attention_mask=attention_mask), external


__all__ = ["hold_out_site"]
