"""One entry point for every dataset a lesson can use: ``load_dataset(name, ...)``.

Each returns the structure of its synthetic counterpart, so a lesson switches data with its
``DATASET`` parameter and nothing else:

    name         returns                          synthetic counterpart
    synthcxr     Cohort                           (the default; no download)
    iu_xray      Cohort (images + reports)        SynthCXR
    chestmnist   Cohort (images, no reports)      SynthCXR
    vqa_rad      VQARad (a Cohort of images + questions/answers)
    ixi          MRIPhantoms (T1/T2 slices)       generate_mri_phantoms

Real datasets are read from ``root`` (default ``$MEDMM_DATA/<name>``) once they have been
fetched with ``python data_scripts/prepare_<name>.py``; without them the call fails with a
message that says what to run and names the synthetic default. See ``medmm_lite.data.real``.
"""
from __future__ import annotations

import inspect
from pathlib import Path

from .cohort import generate_cohort
from .real import chestmnist, iu_xray, ixi, vqa_rad

REAL_DATASETS = {
    "iu_xray": "IU X-ray / Open-I chest radiographs with reports",
    "chestmnist": "MedMNIST ChestMNIST (NIH ChestX-ray14, no reports)",
    "vqa_rad": "VQA-RAD radiology visual question answering",
    "ixi": "IXI brain MRI (T1, T2, PD)",
}
DATASETS = ("synthcxr",) + tuple(REAL_DATASETS)
DEFAULT_SYNTH_STUDIES = 2000


def load_dataset(name: str = "synthcxr", root: str | Path | None = None, *, image_size: int = 64,
                 n_studies: int | None = None, seed: int = 0, **knobs):
    """Load a dataset by name. ``"synthcxr"`` (the default) needs nothing on disk.

    ``n_studies``: for SynthCXR, how many studies to generate (default 2000); for a real
    dataset, the most studies to load (a random subset for ``seed``; None loads all).
    ``knobs`` go to the dataset's own loader (e.g. ``prevalence=`` for SynthCXR,
    ``images_per_report="first"`` for IU X-ray, ``splits=("test",)`` for ChestMNIST,
    ``slices="all"`` for IXI); an unknown knob is an error, not silently ignored.
    """
    if name == "synthcxr":
        if root is not None:
            raise ValueError("synthcxr is generated, not read from disk: leave root=None")
        n = DEFAULT_SYNTH_STUDIES if n_studies is None else n_studies
        return generate_cohort(n, image_size=image_size, seed=seed, **knobs)
    if name not in REAL_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS} (the default, 'synthcxr', "
                         "needs no download)")
    loader = _real_loader(name)
    accepted = [p for p in inspect.signature(loader).parameters if p != "root"]
    unknown = sorted(set(knobs) - set(accepted))
    if unknown:
        raise TypeError(f"load_dataset({name!r}) got unknown argument(s) {unknown}; this dataset's loader accepts "
                        f"{accepted}")
    return loader(root, image_size=image_size, n_studies=n_studies, seed=seed, **knobs)


def _real_loader(name: str):
    return {"iu_xray": iu_xray.load_iu_xray, "chestmnist": chestmnist.load_chestmnist,
            "vqa_rad": vqa_rad.load_vqa_rad, "ixi": ixi.load_ixi}[name]
