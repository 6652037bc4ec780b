"""VQA-RAD: questions that clinicians asked about radiology images, with their answers.

Distributed on OSF (https://osf.io/89kps/) as ``VQA_RAD Dataset Public.json`` (also as .xlsx
and .xml) beside the folder ``VQA_RAD Image Folder/`` of ``synpicNNNNN.jpg`` images from
MedPix. Each JSON entry is one question-answer pair:

    {"qid": ..., "image_name": "synpic54610.jpg", "image_organ": "HEAD",
     "question": "Are regions of the brain infarcted?", "answer": "Yes",
     "answer_type": "CLOSED", "question_type": "PRES", "phrase_type": "freeform",
     "image_case_url": "https://medpix.nlm.nih.gov/case?id=...", ...}

``answer_type`` is CLOSED (yes/no and other fixed-choice answers) or OPEN (free text); the
official test set is the questions whose ``phrase_type`` starts with "test" (test_freeform,
test_para). Answers are kept as written (some are numbers in the JSON; they become strings);
``answer_type`` is stripped and upper-cased because the public file is not uniform.

:func:`load_vqa_rad` returns a :class:`VQARad`: a Cohort of the *images* (one row each, empty
reports, no labels: ``available_findings("vqa_rad")`` is empty) plus the question-answer table,
whose ``image_index`` points into the cohort's rows. Patients: MedPix cases stand in for
patients (``image_case_url``'s id; images of one case share a patient id), so
``patient_split(vqa.cohort)`` keeps a case's images together. Note that the official test
questions are asked about images that also have training questions (the split is by
question, not by image); :meth:`VQARad.image_disjoint_split` gives a split by case instead.
"""
from __future__ import annotations

import json
import re
import shutil
import warnings
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..cohort import patient_split
from ..findings import FINDINGS
from .common import (INFO, atomic_directory, check_image_size, check_n_studies, choose_subset, data_root,
                     dataset_lock, default_root, make_cohort, not_available, read_manifest, to_square, write_card)
from .download import RemoteFile, fetch

NAME = "vqa_rad"
JSON_NAME = "VQA_RAD Dataset Public.json"
IMAGE_DIR = "VQA_RAD Image Folder"
SITE_NAMES = ("MedPix",)
REQUIRED_KEYS = ("image_name", "question", "answer", "answer_type")


def _check_zip(path: Path) -> None:
    with zipfile.ZipFile(path) as z:
        bad = z.testzip()
        if bad is not None:
            raise ValueError(f"the member {bad!r} is damaged")


# OSF serves a project's files as one zip made on the fly: no published checksum, so the first
# download's SHA-256 is recorded; the zip's own CRCs are checked on every download.
REMOTE = RemoteFile("https://files.osf.io/v1/resources/89kps/providers/osfstorage/?zip=", "VQA_RAD_osf.zip",
                    validate=_check_zip)


@dataclass(eq=False)
class VQARad:
    """VQA-RAD: images as a Cohort, and one row per question in the other fields."""
    cohort: object                   # Cohort, one row per image
    image_names: list                # per image row: "synpic54610.jpg"
    image_organ: np.ndarray          # per image row: "HEAD" / "CHEST" / "ABD"
    image_index: np.ndarray          # per question: its image's row in `cohort`
    questions: list
    answers: list
    answer_type: np.ndarray          # "CLOSED" / "OPEN"
    question_type: np.ndarray        # e.g. "PRES", "POS", "ABN", "MODALITY", "SIZE", ...
    phrase_type: np.ndarray          # "freeform", "para", "test_freeform", "test_para", ...
    split: np.ndarray                # "train" / "test" (the official split, by question)
    qid: np.ndarray

    def __len__(self) -> int:
        return len(self.questions)

    def __repr__(self) -> str:
        return (f"VQARad({len(self)} questions ({int((self.answer_type == 'CLOSED').sum())} closed) on "
                f"{len(self.cohort)} images, {self.cohort.image_size}px)")

    @property
    def closed(self) -> np.ndarray:
        """Boolean mask of closed questions (yes/no and fixed choices)."""
        return self.answer_type == "CLOSED"

    def official_split(self) -> dict:
        """{"train": question indices, "test": question indices}: VQA-RAD's own split."""
        return {name: np.nonzero(self.split == name)[0] for name in ("train", "test")}

    def image_disjoint_split(self, fractions=(0.7, 0.1, 0.2), seed: int = 0) -> dict:
        """Question indices for train / val / test with no MedPix case in two splits (so no
        image is seen in training and asked about in testing)."""
        by_image = patient_split(self.cohort, fractions=fractions, seed=seed)
        return {name: np.nonzero(np.isin(self.image_index, rows))[0] for name, rows in by_image.items()}

    def questions_subset(self, idx) -> "VQARad":
        """The questions at ``idx`` (all images kept, so ``image_index`` stays valid)."""
        idx = np.arange(len(self))[idx]
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("cohort", "image_names", "image_organ"):
                picked[f.name] = value
            elif isinstance(value, np.ndarray):
                picked[f.name] = value[idx]
            else:
                picked[f.name] = [value[i] for i in idx]
        return VQARad(**picked)


def _find_image(root: Path, name: str) -> Path | None:
    for folder in (root / IMAGE_DIR, root):
        path = folder / name
        if path.is_file():
            return path
    return None


def read_entries(root) -> list:
    """The JSON's entries, checked for the fields the loader needs."""
    path = Path(root) / JSON_NAME
    if not path.is_file():
        raise not_available(NAME, root, f"no {JSON_NAME!r} in {root}")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise not_available(NAME, root, f"{path} is not valid JSON ({err}); the file may be damaged") from err
    if not isinstance(entries, list) or not entries:
        raise not_available(NAME, root, f"{path} should hold a non-empty JSON list of question entries")
    for k, e in enumerate(entries):
        missing = [key for key in REQUIRED_KEYS if key not in e]
        if missing:
            raise ValueError(f"{NAME}: entry {k} of {path.name} lacks {missing} (has {sorted(e)})")
    return entries


def _case_id(entry: dict, image_name: str) -> str:
    url = str(entry.get("image_case_url") or "")
    m = re.search(r"[?&]id=([^&#]+)", url)
    return m.group(1) if m else f"image:{image_name}"


def load_vqa_rad(root=None, image_size: int = 64, n_studies: int | None = None, seed: int = 0, *,
                 progress: bool = True) -> VQARad:
    """VQA-RAD with images resized to ``image_size``. ``n_studies`` caps the number of *images*
    (a random subset for ``seed``; their questions come along); None loads all. Entries whose
    image file is missing are dropped, with a count in the warning."""
    from PIL import Image

    image_size = check_image_size(image_size)
    n_studies = check_n_studies(n_studies)
    root = Path(root) if root is not None else default_root(NAME)
    if not root.is_dir():
        raise not_available(NAME, root, f"the folder {root} does not exist")
    entries = read_entries(root)

    names = sorted({str(e["image_name"]).strip() for e in entries})
    paths = {n: _find_image(root, n) for n in names}
    missing = [n for n, p in paths.items() if p is None]
    names = [n for n in names if paths[n] is not None]
    if not names:
        raise not_available(NAME, root, f"none of the {len(paths)} images named in {JSON_NAME!r} is in "
                                        f"{root / IMAGE_DIR}")
    if missing:
        warnings.warn(f"{NAME}: {len(missing)} image(s) named in the JSON are not on disk (e.g. {missing[0]}); "
                      "their questions are left out", RuntimeWarning, stacklevel=2)
    names = [names[i] for i in choose_subset(len(names), n_studies, seed)]
    row = {n: i for i, n in enumerate(names)}

    images = np.empty((len(names), image_size, image_size), np.uint8)
    for i, name in enumerate(tqdm(names, desc=f"{NAME}: reading images", disable=not progress, leave=False)):
        with Image.open(paths[name]) as img:
            img.load()
            images[i] = to_square(img, image_size)

    kept = [e for e in entries if str(e["image_name"]).strip() in row]
    organ_of, case_of = {}, {}
    for e in kept:
        n = str(e["image_name"]).strip()
        organ_of.setdefault(n, str(e.get("image_organ", "")).strip().upper())
        case_of.setdefault(n, _case_id(e, n))
    cases = {c: k for k, c in enumerate(sorted(set(case_of.values())))}
    patient_ids = np.array([cases[case_of[n]] if n in case_of else len(cases) + i for i, n in enumerate(names)])
    cohort = make_cohort(images, reports=[""] * len(names), labels=np.zeros((len(names), len(FINDINGS))),
                         patient_ids=patient_ids, study_ids=np.arange(len(names)), site_names=SITE_NAMES,
                         image_size=image_size, seed=seed)
    phrase = np.array([str(e.get("phrase_type", "")).strip() for e in kept])
    return VQARad(
        cohort=cohort, image_names=names, image_organ=np.array([organ_of.get(n, "") for n in names]),
        image_index=np.array([row[str(e["image_name"]).strip()] for e in kept], np.int64),
        questions=[str(e["question"]).strip() for e in kept], answers=[str(e["answer"]).strip() for e in kept],
        answer_type=np.array([str(e["answer_type"]).strip().upper() for e in kept]),
        question_type=np.array([str(e.get("question_type", "")).strip() for e in kept]),
        phrase_type=phrase, split=np.where(np.char.startswith(phrase, "test"), "test", "train"),
        qid=np.array([str(e.get("qid", k)) for k, e in enumerate(kept)]))


# ----------------------------------------------------------------------------------------------
# fetching and preparing
# ----------------------------------------------------------------------------------------------

def _safe_unzip(archive: Path, into: Path) -> None:
    """Extract a zip, refusing members that would land outside ``into``."""
    into_resolved = into.resolve()
    with zipfile.ZipFile(archive) as z:
        for member in z.infolist():
            target = (into / member.filename).resolve()
            if into_resolved not in (target, *target.parents):
                raise ValueError(f"{archive.name}: refusing the unsafe member {member.filename!r}")
        z.extractall(into)


def arrange(extracted: Path, into: Path) -> None:
    """Move the JSON and the image folder from wherever the zip put them to ``into``'s top level
    (an image folder shipped as a nested zip is unpacked)."""
    json_files = sorted(extracted.rglob(JSON_NAME))
    if not json_files:
        raise ValueError(f"{NAME}: the download has no {JSON_NAME!r}")
    shutil.move(str(json_files[0]), into / JSON_NAME)
    folders = [p for p in extracted.rglob(IMAGE_DIR) if p.is_dir()]
    if not folders:
        for nested in extracted.rglob("*.zip"):
            if "image" in nested.name.lower():
                _safe_unzip(nested, nested.parent)
        folders = [p for p in extracted.rglob(IMAGE_DIR) if p.is_dir()]
    if not folders:
        images = sorted(extracted.rglob("synpic*.jp*g"))
        if not images:
            raise ValueError(f"{NAME}: the download has no {IMAGE_DIR!r} and no synpic*.jpg images")
        (into / IMAGE_DIR).mkdir()
        for p in images:
            shutil.move(str(p), into / IMAGE_DIR / p.name)
    else:
        shutil.move(str(folders[0]), into / IMAGE_DIR)


def download_and_prepare(data_dir=None, *, mirror: str | None = None, force: bool = False, progress: bool = True,
                         keep_archives: bool = True, opener=None, log=print, accept_new_checksum: bool = False) -> Path:
    """Download the OSF project as one zip, extract the JSON and image folder into
    ``DATA_DIR/vqa_rad`` atomically, check that they load, and write LICENSE.txt and
    MANIFEST.json. ``mirror`` is the URL of a zip with the same content. OSF publishes no
    checksum: a download that differs from the one first recorded is an error unless
    ``accept_new_checksum``. Two runs at once take turns."""
    data_dir = Path(data_dir) if data_dir is not None else data_root()
    final = data_dir / NAME
    if read_manifest(final) is not None and not force:
        log(f"[{NAME}] already prepared in {final} (use --force to prepare it again)")
        return final
    with dataset_lock(data_dir, NAME, log):
        if read_manifest(final) is not None and not force:
            log(f"[{NAME}] prepared meanwhile by another run, in {final}")
            return final
        return _prepare(data_dir, final, mirror=mirror, progress=progress, keep_archives=keep_archives,
                        opener=opener, log=log, accept_new_checksum=accept_new_checksum)


def _prepare(data_dir: Path, final: Path, *, mirror, progress, keep_archives, opener, log, accept_new_checksum):
    log(f"[{NAME}] {INFO[NAME].title}\n[{NAME}] licence: {INFO[NAME].licence}")
    remote = RemoteFile(mirror, REMOTE.filename, validate=_check_zip) if mirror else REMOTE
    archive = fetch(remote, data_dir / "downloads" / NAME, dataset=NAME, progress=progress, opener=opener, log=log,
                    accept_new_checksum=accept_new_checksum)
    with atomic_directory(final, exclusive=True) as tmp:  # under dataset_lock
        _safe_unzip(archive, tmp / "_extracted")
        arrange(tmp / "_extracted", tmp)
        shutil.rmtree(tmp / "_extracted")
        entries = read_entries(tmp)
        n_images = len(list((tmp / IMAGE_DIR).glob("*")))
        counts = {"questions": len(entries), "images": n_images,
                  "closed": sum(str(e["answer_type"]).strip().upper() == "CLOSED" for e in entries)}
        write_card(tmp, NAME, {archive.name: {"size": archive.stat().st_size, "url": remote.url}},
                   {"counts": counts})
    if not keep_archives:
        archive.unlink(missing_ok=True)
    log(f"[{NAME}] ready in {final}: {counts}")
    return final
