"""Data for the course: the SynthCXR cohort (procedural chest X-rays with reports,
labels, boxes, patients, sites and labs) and registered MRI phantoms.

    from medmm_lite.data import generate_cohort, patient_split, CohortDataset
    cohort = generate_cohort(2000, image_size=64, seed=0)
    split = patient_split(cohort)

Modules: ``findings`` (the label names), ``clinical`` (who has what), ``synthcxr``
(drawing it), ``reports`` (writing it up), ``cohort`` (putting it together,
caching, splitting, torch Dataset), ``mri`` (brain phantoms), ``cache``, ``samplers``
(batches drawn from one group), ``labeler`` (the course's report labeler: reports -> labels).
"""
import importlib

from .clinical import DEFAULT_PREVALENCE, SITE_NAMES
from .cohort import GENERATOR_VERSION, Cohort, CohortDataset, generate_cohort, patient_split
from .findings import FINDING_INDEX, FINDINGS, LAB_NAMES, PATHOLOGIES
from .mri import MRIPhantoms, generate_mri_phantoms
from .reports import MENTION_PHRASES, RADIOLOGISTS
from .synthcxr import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE

# Names from sibling modules that import heavier libraries (transformers): loaded on first use,
# so `import medmm_lite.data` stays fast.
_LAZY = {"train_tokenizer": ".tokenizer", "encode_reports": ".tokenizer", "encode_for_decoder": ".tokenizer",
         "load_dataset": ".datasets", "DATASETS": ".datasets", "prepare_data": ".prepare", "dataset_split": ".prepare",
         "PreparedData": ".prepare", "TensorDictDataset": ".tensors"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FINDINGS", "PATHOLOGIES", "FINDING_INDEX", "LAB_NAMES", "SITE_NAMES", "DEFAULT_PREVALENCE",
           "GENERATOR_VERSION", "MIN_IMAGE_SIZE", "MAX_IMAGE_SIZE", "MENTION_PHRASES", "RADIOLOGISTS",
           "Cohort", "CohortDataset", "generate_cohort", "patient_split", "MRIPhantoms", "generate_mri_phantoms",
           *_LAZY]
