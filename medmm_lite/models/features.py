"""What the course's encoders promise the heads put on them: their global feature width.

Every encoder in ``medmm_lite.models`` (and every one ``medmm_lite.backbones`` builds) has an int
attribute ``.dim``, the width of its ``global_features``. A projection head or a classifier reads
it to size its first layer; :func:`feature_dim` does so with an error that says what is missing.
"""
from __future__ import annotations

from torch import nn


def feature_dim(encoder: nn.Module, what: str) -> int:
    """The width of ``encoder``'s global features (its ``.dim``); ``what`` names it in the error."""
    dim = getattr(encoder, "dim", None)
    if not isinstance(dim, int):
        raise ValueError(f"the {what} encoder must have an int attribute .dim (its global feature width), as "
                         f"the course's encoders do (medmm_lite.backbones); got {type(encoder).__name__}")
    return dim


__all__ = ["feature_dim"]
