"""An in-memory dataset of named tensors, fetched a whole batch at a time.

Every lesson trains on tensors that already sit in memory (images, token ids, labels),
so a batch is one indexing operation per tensor, not a Python loop over items.
"""
from __future__ import annotations

import torch


class TensorDictDataset(torch.utils.data.Dataset):
    """``TensorDictDataset(image=x, input_ids=ids, labels=y)[idx]`` -> ``{"image": x[idx], ...}``."""

    def __init__(self, **tensors: torch.Tensor):
        if not tensors:
            raise ValueError("TensorDictDataset needs at least one named tensor, e.g. image=images")
        lengths = {name: len(t) for name, t in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"all tensors must have the same first dimension, got {lengths}")
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        self.tensors = tensors
        self.length = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return {name: t[i] for name, t in self.tensors.items()}

    def __getitems__(self, indices) -> dict:
        index = torch.as_tensor(indices, dtype=torch.long)
        return {name: t[index] for name, t in self.tensors.items()}
