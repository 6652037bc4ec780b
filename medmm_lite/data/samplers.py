"""Datasets that choose what goes into a batch together.

``fit`` asks a dataset for a whole batch of indices at once (``__getitems__``), so a dataset can
shape the batch as a whole:

* :class:`SameGroupBatches`: every batch from one group, e.g. one hospital (CLIP's negatives from
  the same site, lesson 02) or one band of text lengths.
* :func:`length_grouped`: batches of sequences of similar length (LLaVA's ``group_by_length``).
"""
from __future__ import annotations

import numpy as np

from .tensors import TensorDictDataset


class SameGroupBatches(TensorDictDataset):
    """A ``TensorDictDataset`` whose every batch comes from one group (e.g. one hospital).

    ``fit`` asks for a batch of random indices; the group of the first index is the
    batch's group (so a group is picked in proportion to its size), and the batch is
    re-drawn without replacement from that group's studies. The draw is seeded by the
    requested indices, which ``fit`` derives from (seed, step), so runs stay
    reproducible and resumable. A group smaller than the batch is topped up at random
    from the others.
    """

    def __init__(self, groups, **tensors):
        super().__init__(**tensors)
        groups = np.asarray(groups)
        if groups.shape != (self.length,):
            raise ValueError(f"groups must hold one group id per sample ({self.length}), got shape {groups.shape}")
        self.groups = groups
        self.members = {g: np.flatnonzero(groups == g) for g in np.unique(groups)}

    def __getitems__(self, indices) -> dict:
        indices = [int(i) for i in indices]
        rng = np.random.default_rng(indices)
        pool = self.members[self.groups[indices[0]]]
        n = len(indices)
        chosen = rng.choice(pool, min(n, len(pool)), replace=False)
        if len(chosen) < n:
            others = np.setdiff1d(np.arange(self.length), chosen)
            chosen = np.concatenate([chosen, rng.choice(others, n - len(chosen), replace=False)])
        return super().__getitems__(chosen.tolist())


def length_grouped(tensors: dict, n_groups: int = 4) -> SameGroupBatches:
    """A dataset whose every batch holds sequences of similar length (LLaVA's ``group_by_length``).

    Sequences are cut into ``n_groups`` groups by length quantile (of ``attention_mask.sum(1)``);
    each batch is drawn from one group (:class:`SameGroupBatches`), and a step that trims the
    padding columns (``vlm.vlm_step``) then does not pad a batch of short questions to the longest
    report in the data set.
    """
    lengths = tensors["attention_mask"].sum(1).numpy()
    edges = np.quantile(lengths, np.linspace(0, 1, n_groups + 1)[1:-1])
    return SameGroupBatches(np.digitize(lengths, edges), **tensors)


__all__ = ["SameGroupBatches", "length_grouped"]
