"""One entry point for every dataset a lesson can use: ``load_dataset(name, ...)``.

Each returns the cohort structure of SynthCXR, so a lesson switches data with its
``DATASET`` parameter and nothing else.
"""
from __future__ import annotations

from pathlib import Path

REAL_DATASETS = {
    "iu_xray": "IU X-ray / Open-I chest radiographs with reports",
    "chestmnist": "MedMNIST ChestMNIST (NIH ChestX-ray14, no reports)",
    "vqa_rad": "VQA-RAD radiology visual question answering",
    "ixi": "IXI brain MRI (T1, T2, PD)",
}
DATASETS = ("synthcxr",) + tuple(REAL_DATASETS)


def load_dataset(name: str = "synthcxr", root: str | Path | None = None, *, image_size: int = 64,
                 n_studies: int = 2000, seed: int = 0, **knobs):
    """Load a cohort by name. ``"synthcxr"`` (the default) needs nothing on disk."""
    if name == "synthcxr":
        from .cohort import generate_cohort

        return generate_cohort(n_studies, image_size=image_size, seed=seed, **knobs)
    if name not in REAL_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS} (the default, 'synthcxr', "
                         "needs no download)")
    raise NotImplementedError(
        f"{name!r} ({REAL_DATASETS[name]}) has no loader in this version of medmm_lite yet"
        f"{f' (root={str(root)!r})' if root else ''}. Use DATASET = 'synthcxr', the embedded "
        "synthetic cohort, which every lesson runs on.")
