"""Real datasets, one parameter away: ``load_dataset("iu_xray", ...)`` instead of "synthcxr".

Each dataset has a module with a loader and a ``download_and_prepare`` (which the command-line
scripts in ``data_scripts/`` call):

    module       returns        what
    iu_xray      Cohort         Open-I chest X-rays with reports; labels from the course's labeler
    chestmnist   Cohort         MedMNIST ChestMNIST: NIH images, 14 labels mapped to ours, no reports
    vqa_rad      VQARad         radiology images with clinicians' questions and answers
    ixi          MRIPhantoms    IXI brain MRI, T1/T2 slices paired by subject

Downloads are resumable and checksummed (``download``); preparation writes atomically, with
the dataset's licence (LICENSE.txt) and a MANIFEST.json beside the data. A missing dataset
raises :class:`DatasetNotAvailableError` (a ``FileNotFoundError``) whose message names the
command to run and the synthetic default.

    from medmm_lite.data.real import iu_xray
    iu_xray.download_and_prepare()                       # once: ~1.3 GB into $MEDMM_DATA/iu_xray
    cohort = load_dataset("iu_xray", image_size=128)
"""
from .common import (INFO, DatasetInfo, DatasetNotAvailableError, available_findings, data_root, default_root,
                     make_cohort)
from .download import ChecksumError, DownloadError, RemoteFile, fetch, file_digests, verify

__all__ = ["INFO", "DatasetInfo", "DatasetNotAvailableError", "available_findings", "data_root", "default_root",
           "make_cohort", "ChecksumError", "DownloadError", "RemoteFile", "fetch", "file_digests", "verify"]
