"""ChestMNIST (MedMNIST v2): NIH ChestX-ray14's 112,120 frontal radiographs, shrunk to 28, 64,
128 or 224 pixels, with 14 labels and no reports, as a :class:`~medmm_lite.data.Cohort`.

The files are MedMNIST's ``.npz`` archives from Zenodo, one per size, with the arrays
``train_images`` (N, S, S) uint8, ``train_labels`` (N, 14) uint8, and the same for ``val_``
and ``test_``. MedMNIST publishes an MD5 for each file; the download is checked against it.

Labels: the 14 NIH labels map onto the course's findings where they mean the same thing:

    atelectasis -> Atelectasis        cardiomegaly -> Cardiomegaly
    effusion -> Pleural Effusion      pneumothorax -> Pneumothorax
    consolidation -> Consolidation    edema -> Edema
    mass, nodule -> Lung Lesion       (none of the 14) -> No Finding

Infiltration, pneumonia, emphysema, fibrosis, pleural thickening and hernia have no course
column (they still rule out No Finding). Support Devices and Fracture are not labelled in
ChestMNIST: their columns are 0 meaning *unknown*; ``available_findings("chestmnist")`` lists
the real ones. There are no reports (``reports`` are empty strings), so ChestMNIST fits the
image-only lessons.

Patients and splits: MedMNIST keeps NIH's official split, which is by patient, but drops the
patient ids. So every image gets its own ``patient_id`` here, and ``patient_split`` on this
cohort can put two images of one patient in different splits (optimistic results; it warns).
Use :func:`official_split` instead, as ``prepare_data`` does: it recovers MedMNIST's
train/val/test from ``study_ids`` (``study_id = split * 10_000_000 + index in that split``),
which survives ``cohort.subset``.
"""
from __future__ import annotations

import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .common import (INFO, atomic_directory, check_image_size, check_n_studies, choose_subset, data_root,
                     dataset_lock, default_root, make_cohort, not_available, read_manifest, to_square, write_card)
from .download import RemoteFile, fetch
from ..findings import FINDINGS

NAME = "chestmnist"
SPLITS = ("train", "val", "test")
SPLIT_STRIDE = 10_000_000
SIZES = (28, 64, 128, 224)
NIH_LABELS = ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
              "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia")
NIH_TO_COURSE = {"atelectasis": "Atelectasis", "cardiomegaly": "Cardiomegaly", "effusion": "Pleural Effusion",
                 "pneumothorax": "Pneumothorax", "consolidation": "Consolidation", "edema": "Edema",
                 "mass": "Lung Lesion", "nodule": "Lung Lesion"}
SITE_NAMES = ("NIH Clinical Center",)

# From MedMNIST's medmnist/info.py (Zenodo record 10519652, MedMNIST+ / v3 files).
ZENODO = "https://zenodo.org/records/10519652/files"
PUBLISHED_MD5 = {28: "02c8a6516a18b556561a56cbdd36c4a8", 64: "9de6cd0b934ebb5b7426cfba5efbae16",
                 128: "db107e5590b27930b62dbaf558aebee3", 224: "45bd33e6f06c3e8cdb481c74a89152aa"}


def file_name(size: int) -> str:
    """MedMNIST's name for a size: ``chestmnist.npz`` (28 px) or ``chestmnist_64.npz``."""
    return "chestmnist.npz" if size == 28 else f"chestmnist_{size}.npz"


def remote_file(size: int, mirror: str | None = None, md5: str | None = None) -> RemoteFile:
    if size not in SIZES:
        raise ValueError(f"ChestMNIST comes in sizes {SIZES}, got {size!r}")
    base = mirror.rstrip("/") if mirror else ZENODO
    url = f"{base}/{file_name(size)}" + ("" if mirror else "?download=1")
    return RemoteFile(url, file_name(size), md5=md5 or PUBLISHED_MD5[size], validate=check_npz)


def _check_keys(z, name: str) -> None:
    for split in SPLITS:
        for key in (f"{split}_images", f"{split}_labels"):
            if key not in z.files:
                raise ValueError(f"{name} has no array {key!r} (it has {sorted(z.files)})")


def _check_pair(images: np.ndarray, labels: np.ndarray, split: str, name: str) -> None:
    if images.ndim not in (3, 4) or labels.ndim != 2 or labels.shape[1] != len(NIH_LABELS):
        raise ValueError(f"{name}: {split} images {images.shape} / labels {labels.shape}; expected (N, S, S) and "
                         f"(N, {len(NIH_LABELS)})")
    if len(images) != len(labels):
        raise ValueError(f"{name}: {len(images)} {split} images but {len(labels)} labels")


def check_npz(path) -> None:
    """Raise unless ``path`` is a ChestMNIST archive: every split's images and 14-column labels,
    as many of one as of the other. (The structural check of a fresh download; it reads every
    array once.)"""
    name = Path(path).name
    with np.load(path, allow_pickle=False) as z:
        _check_keys(z, name)
        for split in SPLITS:
            _check_pair(z[f"{split}_images"], z[f"{split}_labels"], split, name)


def map_labels(nih: np.ndarray) -> np.ndarray:
    """(N, 14) NIH labels -> (N, len(FINDINGS)) course labels (see the module docstring)."""
    nih = np.asarray(nih)
    if nih.ndim != 2 or nih.shape[1] != len(NIH_LABELS):
        raise ValueError(f"expected NIH labels of shape (N, {len(NIH_LABELS)}), got {nih.shape}")
    out = np.zeros((len(nih), len(FINDINGS)), np.float32)
    for j, name in enumerate(NIH_LABELS):
        if name in NIH_TO_COURSE:
            k = FINDINGS.index(NIH_TO_COURSE[name])
            out[:, k] = np.maximum(out[:, k], nih[:, j] > 0)
    out[:, FINDINGS.index("No Finding")] = (nih > 0).sum(axis=1) == 0
    return out


def official_split(cohort) -> dict:
    """MedMNIST's (NIH's patient-level) train / val / test, as index arrays into ``cohort``."""
    code = np.asarray(cohort.study_ids) // SPLIT_STRIDE
    return {name: np.nonzero(code == k)[0] for k, name in enumerate(SPLITS)}


# ----------------------------------------------------------------------------------------------
# finding the files
# ----------------------------------------------------------------------------------------------

def _size_of(path: Path) -> int | None:
    m = re.fullmatch(r"chestmnist(?:_(\d+))?\.npz", path.name)
    if m is None:
        return None
    return int(m.group(1)) if m.group(1) else 28


def available_files(root) -> dict:
    """size -> path of every ChestMNIST archive under ``root`` (a prepared folder with one
    sub-folder per size, a folder of MedMNIST's .npz files, or one .npz file)."""
    root = Path(root)
    if root.is_file():
        size = _size_of(root)
        return {size if size is not None else -1: root}
    found = {}
    if root.is_dir():
        for path in sorted(root.glob("chestmnist*.npz")) + sorted(root.glob("*px/chestmnist*.npz")):
            size = _size_of(path)
            prepared = path.parent != root
            if size is not None and (not prepared or read_manifest(path.parent) is not None):
                found.setdefault(size, path)
    return found


def pick_file(files: dict, image_size: int) -> Path:
    """The smallest archive at least ``image_size`` pixels wide (so we shrink, never blur up),
    else the largest there is."""
    bigger = [s for s in files if s >= image_size]
    return files[min(bigger)] if bigger else files[max(files)]


# ----------------------------------------------------------------------------------------------
# the loader
# ----------------------------------------------------------------------------------------------

def load_chestmnist(root=None, image_size: int = 64, n_studies: int | None = None, seed: int = 0, *,
                    splits=SPLITS, progress: bool = True):
    """ChestMNIST as a Cohort: images resized to ``image_size`` from the nearest prepared size,
    labels mapped to the course's findings, empty reports. ``n_studies`` caps the number of
    images (a random subset for ``seed``, across ``splits``); None loads all 112,120."""
    image_size = check_image_size(image_size)
    n_studies = check_n_studies(n_studies)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {splits!r}")
    root = Path(root) if root is not None else default_root(NAME)
    files = available_files(root)
    if not files:
        raise not_available(NAME, root, f"no prepared ChestMNIST archive (chestmnist*.npz) in {root}")
    path = pick_file(files, image_size)
    try:
        with np.load(path, allow_pickle=False) as z:
            _check_keys(z, path.name)
            all_labels = {s: z[f"{s}_labels"] for s in splits}
            counts = [len(all_labels[s]) for s in splits]
            chosen = choose_subset(sum(counts), n_studies, seed)
            starts = np.cumsum([0] + counts)
            images, labels, study_ids = [], [], []
            for k, split in enumerate(splits):
                local = chosen[(chosen >= starts[k]) & (chosen < starts[k + 1])] - starts[k]
                split_images = z[f"{split}_images"]
                _check_pair(split_images, all_labels[split], split, path.name)
                images.append(split_images[local])
                labels.append(all_labels[split][local])
                study_ids.append(SPLITS.index(split) * SPLIT_STRIDE + local)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise not_available(NAME, root, f"{path} is not a readable ChestMNIST archive ({type(err).__name__}: {err}); "
                                        "prepare it again with --force") from err
    images = np.concatenate(images)
    if images.ndim == 4:
        images = images.mean(axis=-1).round().astype(np.uint8)
    if images.shape[1] != image_size:
        images = np.stack([to_square(im, image_size) for im in tqdm(images, desc=f"{NAME}: resizing",
                                                                     disable=not progress, leave=False)])
    study_ids = np.concatenate(study_ids).astype(np.int64)
    n = len(images)
    return make_cohort(images, reports=[""] * n, labels=map_labels(np.concatenate(labels)),
                       patient_ids=np.arange(n), study_ids=study_ids, site_names=SITE_NAMES,
                       image_size=image_size, seed=seed)


# ----------------------------------------------------------------------------------------------
# fetching and preparing
# ----------------------------------------------------------------------------------------------

def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)          # same bytes, no second copy on disk
    except OSError:
        shutil.copy2(src, dst)


def download_and_prepare(data_dir=None, *, size: int = 64, mirror: str | None = None, md5: str | None = None,
                         force: bool = False, progress: bool = True, keep_archives: bool = True, opener=None,
                         log=print) -> Path:
    """Download ``chestmnist_<size>.npz`` (checked against MedMNIST's published MD5, or ``md5``
    for a mirror that serves another build), check its arrays, and place it with LICENSE.txt
    and MANIFEST.json in ``DATA_DIR/chestmnist/<size>px`` atomically. Returns the dataset
    folder ``DATA_DIR/chestmnist`` (the ``root`` of :func:`load_chestmnist`)."""
    data_dir = Path(data_dir) if data_dir is not None else data_root()
    root = data_dir / NAME
    final = root / f"{size}px"
    remote = remote_file(size, mirror, md5)
    if read_manifest(final) is not None and not force:
        log(f"[{NAME}] {size} px already prepared in {final} (use --force to prepare it again)")
        return root
    with dataset_lock(data_dir, NAME, log):
        if read_manifest(final) is not None and not force:
            log(f"[{NAME}] {size} px prepared meanwhile by another run, in {final}")
            return root
        return _prepare(data_dir, root, final, remote, size=size, progress=progress, keep_archives=keep_archives,
                        opener=opener, log=log)


def _prepare(data_dir: Path, root: Path, final: Path, remote: RemoteFile, *, size, progress, keep_archives, opener,
             log) -> Path:
    log(f"[{NAME}] {INFO[NAME].title}\n[{NAME}] licence: {INFO[NAME].licence}")
    archive = fetch(remote, data_dir / "downloads" / NAME, dataset=NAME, progress=progress, opener=opener, log=log)
    with atomic_directory(final, exclusive=True) as tmp:  # under dataset_lock
        _link_or_copy(archive, tmp / archive.name)
        with np.load(tmp / archive.name, allow_pickle=False) as z:
            counts = {s: int(len(z[f"{s}_labels"])) for s in SPLITS}
        write_card(tmp, NAME, {archive.name: {"size": archive.stat().st_size, "md5": remote.md5,
                                              "url": remote.url}},
                   {"image_size": size, "counts": counts, "label_names": list(NIH_LABELS)})
    if not keep_archives:
        archive.unlink(missing_ok=True)
    log(f"[{NAME}] ready in {final}: {counts}")
    return root
