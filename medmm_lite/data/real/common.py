"""What the real-dataset loaders share: where data lives, what each dataset is (licence, size,
the command that fetches it), the clear error when it is missing, image resizing, filling the
Cohort fields a real dataset does not have, and writing a prepared dataset atomically.

Unknown fields are filled so that nobody mistakes them for data:

    age          NaN             (no dataset here publishes ages with the images we use)
    sex          "U"             (unknown)
    radiologist  -1              (no reader ids)
    labs         NaN, (N, 4)     (no labs; NaN poisons any arithmetic that forgets to check)
    boxes        []              (no boxes)
    ctr          NaN             (no cardiothoracic ratio)
    visit        0               (one study per patient, as far as the dataset tells)

Labels a dataset cannot provide (e.g. Fracture in ChestMNIST) are 0 in ``labels``; which
columns are real is in ``INFO[name].available_findings`` (see :func:`available_findings`).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ...utils import HOST, STALE_SECONDS, atomic_write_bytes, cache_dir, current_umask, file_lock, pid_alive
from ..cohort import Cohort
from ..findings import FINDINGS, LAB_NAMES
from .download import SYNTHETIC_HINT

MANIFEST_NAME = "MANIFEST.json"
LICENSE_NAME = "LICENSE.txt"
FORMAT_VERSION = 1
MIN_SIZE, MAX_SIZE = 16, 1024


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset card in a few fields: what it is, its licence, how big, how to get it."""
    name: str
    title: str
    licence: str
    licence_url: str
    homepage: str
    citation: str
    size: str
    script: str
    fits: str
    available_findings: tuple = field(default=FINDINGS)

    def fetch_command(self, data_dir=None) -> str:
        where = f" --data-dir {data_dir}" if data_dir else ""
        return f"python data_scripts/{self.script}{where}"

    def licence_text(self) -> str:
        return (f"{self.title}\n\nLicence: {self.licence}\n  {self.licence_url}\nHomepage: {self.homepage}\n"
                f"Please cite: {self.citation}\n\nPrepared for medmm-course by data_scripts/{self.script}; the data "
                "are the original authors' and stay under their licence.\n")


INFO = {
    "iu_xray": DatasetInfo(
        name="iu_xray", title="Indiana University Chest X-ray Collection (Open-I, NLM)",
        licence="Creative Commons Attribution-NonCommercial-NoDerivatives 4.0 (CC BY-NC-ND 4.0), as named in "
                "each report's <licenseURL>; prepare_iu_xray.py prints the licence it finds in the files",
        licence_url="https://creativecommons.org/licenses/by-nc-nd/4.0/",
        homepage="https://openi.nlm.nih.gov/faq",
        citation="Demner-Fushman D. et al. Preparing a collection of radiology examinations for distribution and "
                 "retrieval. J Am Med Inform Assoc 2016;23(2):304-310.",
        size="3,955 XML reports (NLMCXR_reports.tgz, a few MB) and 7,470 PNG images (NLMCXR_png.tgz, about 1.3 GB)",
        script="prepare_iu_xray.py",
        fits="every image-text lesson (00-05, 08-10, 12); labels come from the course's report labeler"),
    "chestmnist": DatasetInfo(
        name="chestmnist", title="MedMNIST v2 ChestMNIST (from NIH ChestX-ray14)",
        licence="Creative Commons Attribution 4.0 (CC BY 4.0); the source images are NIH ChestX-ray14 "
                "(acknowledge the NIH Clinical Center)",
        licence_url="https://creativecommons.org/licenses/by/4.0/",
        homepage="https://medmnist.com/ (data: https://zenodo.org/records/10519652)",
        citation="Yang J. et al. MedMNIST v2. Scientific Data 2023;10:41. Wang X. et al. ChestX-ray8. CVPR 2017.",
        size="112,120 images in one .npz per size: 28 px (chestmnist.npz), 64 px (chestmnist_64.npz, 402 MB), "
             "128 px and 224 px (larger)",
        script="prepare_chestmnist.py",
        fits="image-only lessons: 01 (supervised baseline), 04 (MAE), 09 (probe / fine-tuning), and the image-only "
             "arms of 02 (SimCLR) and 10; it has no reports",
        available_findings=("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation", "Lung Lesion",
                            "Atelectasis", "Edema", "No Finding")),
    "vqa_rad": DatasetInfo(
        name="vqa_rad", title="VQA-RAD: clinician-written questions and answers about radiology images",
        licence="CC0 1.0 Universal (public domain dedication)",
        licence_url="https://creativecommons.org/publicdomain/zero/1.0/",
        homepage="https://osf.io/89kps/",
        citation="Lau J.J. et al. A dataset of clinically generated visual questions and answers about radiology "
                 "images. Scientific Data 2018;5:180251.",
        size="315 images (head CT/MRI, chest X-ray, abdominal CT) and 2,248 question-answer pairs; tens of MB",
        script="prepare_vqa_rad.py",
        fits="lesson 07 (VQA, closed and open questions)",
        available_findings=()),
    "ixi": DatasetInfo(
        name="ixi", title="IXI brain MRI of healthy subjects (Guy's, Hammersmith and IoP hospitals, London)",
        licence="Creative Commons Attribution-ShareAlike 3.0 (CC BY-SA 3.0)",
        licence_url="https://creativecommons.org/licenses/by-sa/3.0/",
        homepage="https://brain-development.org/ixi-dataset/",
        citation="IXI - Information eXtraction from Images (EPSRC GR/S21533/02), https://brain-development.org/"
                 "ixi-dataset/",
        size="about 580 subjects; IXI-T1.tar, IXI-T2.tar and IXI-PD.tar are several GB each; the prepared slices "
             "are a few tens of MB",
        script="prepare_ixi.py",
        fits="lessons 06 (T1 -> T2 translation) and 11 (T1/T2 contrastive)",
        available_findings=()),
}


def available_findings(name: str) -> tuple:
    """The label columns (names from ``FINDINGS``) a dataset really provides. The other columns
    of its ``labels`` are 0 because they are unknown, not because they are absent."""
    if name == "synthcxr":
        return FINDINGS
    if name not in INFO:
        raise ValueError(f"unknown dataset {name!r}; choose one of {('synthcxr',) + tuple(INFO)}")
    return INFO[name].available_findings


class DatasetNotAvailableError(FileNotFoundError):
    """A real dataset is not on disk (or not complete). The message says what to run."""


def not_available(name: str, root, what: str) -> DatasetNotAvailableError:
    """The error for a missing or incomplete dataset: which dataset, what failed, the command to
    fetch it, and the synthetic default."""
    info = INFO[name]
    if root is None or Path(root).name == name:
        data_dir = None if root is None else Path(root).parent
        command = info.fetch_command(data_dir)
        call = f"{name}.download_and_prepare({'' if data_dir is None else repr(str(data_dir))})"
    else:                             # a folder of the user's own naming
        command = f"{info.fetch_command('DIR')}   (then load with root='DIR/{name}')"
        call = f"{name}.download_and_prepare('DIR')"
    return DatasetNotAvailableError(
        f"{name} ({info.title}): {what}.\n"
        f"  Fetch and prepare it once (needs internet; {info.size}):\n"
        f"      {command}\n"
        f"  or in a notebook: from medmm_lite.data.real import {name}; {call}\n"
        f"  {SYNTHETIC_HINT}")


def data_root() -> Path:
    """Where real datasets are prepared: ``$MEDMM_DATA`` (default ``~/.cache/medmm``)."""
    return cache_dir()


def default_root(name: str) -> Path:
    """The prepared location of dataset ``name`` (not created here: a missing dataset must
    stay missing, so the loader can say so)."""
    return data_root() / name


def check_image_size(image_size) -> int:
    if (not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool)
            or not MIN_SIZE <= image_size <= MAX_SIZE):
        raise ValueError(f"image_size must be an int between {MIN_SIZE} and {MAX_SIZE}, got {image_size!r}")
    return int(image_size)


def check_n_studies(n_studies):
    if n_studies is None:
        return None
    if not isinstance(n_studies, (int, np.integer)) or isinstance(n_studies, bool) or n_studies < 1:
        raise ValueError(f"n_studies must be a positive int (the most studies to load) or None (all), "
                         f"got {n_studies!r}")
    return int(n_studies)


def choose_subset(n_total: int, n_studies, seed: int) -> np.ndarray:
    """Indices of at most ``n_studies`` of ``n_total`` items, random for ``seed`` but in their
    original order (so a bigger request with the same seed is not a reshuffle of a smaller one's
    order, only of its membership)."""
    if n_studies is None or n_studies >= n_total:
        return np.arange(n_total)
    rng = np.random.default_rng([seed, 0x5245414C])             # "REAL"
    return np.sort(rng.choice(n_total, size=n_studies, replace=False))


# ----------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------

def to_gray_uint8(image) -> np.ndarray:
    """A PIL image or array as 2-D uint8. 8-bit stays as is; deeper images (16-bit PNG, float)
    are min-max scaled per image, since their useful range is rarely the full type range."""
    from PIL import Image

    if isinstance(image, Image.Image):
        if image.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
            image = image.convert("L")
        array = np.asarray(image)
    else:
        array = np.asarray(image)
    if array.ndim == 3:                                          # H, W, C arrays: average the channels
        array = array.mean(axis=2)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got an array of shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    array = array.astype(np.float64)
    lo, hi = np.nanmin(array), np.nanmax(array)
    if not np.isfinite(hi) or hi <= lo:
        return np.zeros(array.shape, np.uint8)
    return np.rint((array - lo) / (hi - lo) * 255.0).astype(np.uint8)


def to_square(image, size: int) -> np.ndarray:
    """Centre-crop to a square, then resize to ``size`` x ``size`` (uint8).

    Cropping rather than squashing keeps anatomy's proportions (a heart stays heart-shaped);
    it is what MedMNIST and torchxrayvision do. Pillow's bicubic resize averages over the
    source pixels when shrinking (antialiased), so fine detail does not alias into noise."""
    from PIL import Image

    array = to_gray_uint8(image)
    h, w = array.shape
    side = min(h, w)
    top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))    # torchvision's center_crop rounding
    array = array[top:top + side, left:left + side]
    if side == size:
        return np.ascontiguousarray(array)
    return np.asarray(Image.fromarray(array).resize((size, size), Image.Resampling.BICUBIC))


# ----------------------------------------------------------------------------------------------
# cohorts
# ----------------------------------------------------------------------------------------------

def make_cohort(images: np.ndarray, *, reports, labels: np.ndarray, patient_ids, study_ids, site_names,
                image_size: int, seed: int, site=None, hedged=None):
    """A :class:`~medmm_lite.data.Cohort` from uint8 images ``(N, H, W)`` and what a real
    dataset knows; every field it does not know is filled as the module docstring says."""
    n = len(images)
    labels = np.asarray(labels, np.float32)
    if labels.shape != (n, len(FINDINGS)):
        raise ValueError(f"labels must have shape ({n}, {len(FINDINGS)}), got {labels.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).float().div_(255.0)
    return Cohort(
        images=tensor, reports=list(reports), labels=torch.from_numpy(labels.copy()),
        # No second, independent reading exists: the labels are all there is.
        true_labels=torch.from_numpy(labels.copy()),
        boxes=[[] for _ in range(n)],
        patient_ids=np.asarray(patient_ids, np.int64), study_ids=np.asarray(study_ids, np.int64),
        age=np.full(n, np.nan, np.float32), sex=np.full(n, "U"),
        site=np.zeros(n, np.int64) if site is None else np.asarray(site, np.int64), site_names=tuple(site_names),
        radiologist=np.full(n, -1, np.int64),
        labs=torch.full((n, len(LAB_NAMES)), float("nan")), lab_names=LAB_NAMES,
        image_size=int(image_size), seed=int(seed),
        hedged=np.zeros((n, len(FINDINGS)), bool) if hedged is None else np.asarray(hedged, bool),
        visit=np.zeros(n, np.int64), ctr=np.full(n, np.nan, np.float32))


# ----------------------------------------------------------------------------------------------
# prepared datasets on disk: atomic, with a licence and a manifest
# ----------------------------------------------------------------------------------------------

_TMP_DIR = r"\.{name}\.tmp-(?:old-)?(?:(?P<host>[A-Za-z0-9]*)-(?P<pid>\d+)-)?.+"


def _remove_stale_directories(final: Path, exclusive: bool) -> None:
    """Remove the ``.NAME.tmp-*`` folders of runs that were killed: those of a dead process of
    this machine, and others (another machine, an older version) untouched for an hour, or at
    once when ``exclusive`` (the caller holds :func:`dataset_lock`, so no other preparation is
    running). A live process's folder on this machine is never touched."""
    pattern = re.compile(_TMP_DIR.format(name=re.escape(final.name)))
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        m = pattern.fullmatch(stale.name)
        if m is None:
            continue
        try:
            if m.group("pid") is not None and m.group("host") == HOST:
                dead = int(m.group("pid")) != os.getpid() and not pid_alive(int(m.group("pid")))
            else:
                dead = exclusive or time.time() - stale.stat().st_mtime > STALE_SECONDS
        except OSError:
            continue
        if dead:
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike, *, exclusive: bool = False):
    """Build a directory under a temporary name and move it to ``final`` only when the block
    finishes. An interruption (error, Ctrl-C, killed process) leaves ``final`` as it was (absent,
    or the previous complete version), never half-written; leftovers of a killed run are
    ``.NAME.tmp-HOST-PID-*`` siblings that the next run removes (never a live run's).
    ``exclusive=True`` says the caller holds :func:`dataset_lock`: then every leftover of
    another machine or an older version is known dead and removed too.

        with dataset_lock(data_dir, "iu_xray"), atomic_directory(root / "iu_xray", exclusive=True) as tmp:
            ... write everything into tmp ...

    The folder is created readable by others as the umask allows (``mkdtemp`` alone gives 0700).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_directories(final, exclusive)
    owner = f"{HOST}-{os.getpid()}-"
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-{owner}"))
    os.chmod(tmp, 0o777 & ~current_umask())
    try:
        yield tmp
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-old-{owner}"))
            os.replace(final, old)  # an empty directory is replaced by the rename
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def dataset_lock(data_dir, name: str, log=print):
    """One preparation of dataset ``name`` in ``data_dir`` at a time (a file lock): a second run
    started meanwhile waits, then finds the dataset prepared (or its downloads verified)."""
    return file_lock(Path(data_dir) / ".locks" / f"{name}.lock", f"preparing {name} in this folder",
                     log=(lambda message: log(f"[{name}] {message}")) if log else None)


def write_card(directory: Path, name: str, files: dict, extra: dict | None = None) -> dict:
    """Write ``LICENSE.txt`` and ``MANIFEST.json`` into a prepared dataset directory. The
    manifest is written last: its presence is what says "this dataset is complete"."""
    info = INFO[name]
    directory = Path(directory)
    atomic_write_bytes(directory / LICENSE_NAME, info.licence_text().encode())
    manifest = {"dataset": name, "title": info.title, "format_version": FORMAT_VERSION, "complete": True,
                "licence": info.licence, "licence_url": info.licence_url, "citation": info.citation,
                "prepared_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "prepared_by": f"data_scripts/{info.script}", "files": files, **(extra or {})}
    atomic_write_bytes(directory / MANIFEST_NAME, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest


def read_manifest(directory: Path) -> dict | None:
    """The manifest of a complete prepared dataset, or None."""
    path = Path(directory) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("complete") is True else None
