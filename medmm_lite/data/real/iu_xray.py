"""IU X-ray (the Indiana University chest X-ray collection on Open-I): real radiographs with
the radiologists' reports, as a :class:`~medmm_lite.data.Cohort`.

What Open-I distributes, and how it is read here:

* ``NLMCXR_reports.tgz`` unpacks to ``ecgen-radiology/1.xml ... 3955.xml``, one report each.
  The text sits in ``<MedlineCitation>/.../<Abstract>`` as ``<AbstractText Label="FINDINGS">``
  and ``<AbstractText Label="IMPRESSION">`` (also COMPARISON and INDICATION, which we skip:
  they describe why the study was done, not what it shows). Each report lists its images as
  ``<parentImage id="CXR1_1_IM-0001-3001">``.
* ``NLMCXR_png.tgz`` unpacks to ``CXR1_1_IM-0001-3001.png`` and so on: the file name *is*
  the ``parentImage`` id. We accept the PNGs in ``NLMCXR_png/`` or directly in ``root``.

Pairing: one Cohort row per (report, image) pair, so a report with a frontal and a lateral
view gives two rows with the same report text, patient id and study id
(``images_per_report="first"`` keeps one row per report). A report that lists no image found
on disk, and an image that no report lists, are left out (``scan`` counts them).

Patients: Open-I gives no patient identifier. The collection holds one report per patient as
distributed (its de-identification kept one examination per patient), so the report number is
used as the patient id; ``patient_split`` then keeps both views of a report in one split.

Labels: the course's labeler (``medmm_lite.data.labeler.labels_matrix``, which evaluation reads
as ``medmm_lite.eval.labels_matrix``) reads each report, uncertain mentions counting as
positive (CheXpert's "U-Ones"); ``hedged`` marks those uncertain ones.
Open-I replaced identifying words with ``XXXX``; we keep them, as the reports were published.
Reports with neither FINDINGS nor IMPRESSION text are dropped (``require_text=False`` keeps
them, with empty reports and all-zero labels).

Images are centre-cropped to a square and resized to ``image_size``; the resized cohort is
cached under ``$MEDMM_DATA/real`` (keyed by the files' names, sizes and times), so the second
load takes a second instead of decoding thousands of PNGs again.
"""
from __future__ import annotations

import hashlib
import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import cache as _cache
from ..findings import FINDINGS
from ..labeler import label_report, labels_matrix
from .common import (INFO, atomic_directory, check_image_size, check_n_studies, choose_subset, data_root,
                     dataset_lock, default_root, make_cohort, not_available, read_manifest, to_square, write_card)
from .download import RemoteFile, fetch

NAME = "iu_xray"
SITE_NAMES = ("Indiana University",)
REPORTS_DIR = "ecgen-radiology"
IMAGES_DIR = "NLMCXR_png"
CACHE_VERSION = 1


def _check_tar(path: Path) -> None:
    """A structural check for a downloaded .tgz: it opens and lists to its end (a truncated
    gzip stream fails here)."""
    with tarfile.open(path) as tar:
        if not tar.getmembers():
            raise ValueError("the archive is empty")


REMOTE_FILES = (
    RemoteFile("https://openi.nlm.nih.gov/imgs/collections/NLMCXR_reports.tgz", "NLMCXR_reports.tgz",
               validate=_check_tar),
    RemoteFile("https://openi.nlm.nih.gov/imgs/collections/NLMCXR_png.tgz", "NLMCXR_png.tgz",
               validate=_check_tar),
)


# ----------------------------------------------------------------------------------------------
# parsing one report
# ----------------------------------------------------------------------------------------------

@dataclass
class IUReport:
    """One Open-I report: its number, the two sections we use and the images it lists."""
    report_id: int
    uid: str
    findings: str
    impression: str
    image_ids: list = field(default_factory=list)
    licence_url: str = ""

    @property
    def text(self) -> str:
        """In SynthCXR's layout, "FINDINGS: ... IMPRESSION: ...", leaving out an empty section."""
        parts = []
        if self.findings:
            parts.append(f"FINDINGS: {self.findings}")
        if self.impression:
            parts.append(f"IMPRESSION: {self.impression}")
        return " ".join(parts)


def _clean(text) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


def parse_report(source) -> IUReport:
    """Parse one Open-I XML report (a path, or the file's bytes). The report number comes from
    ``<uId id="CXR123">`` (else from the file name, ``123.xml``)."""
    from_bytes = isinstance(source, bytes)
    root = ET.fromstring(source) if from_bytes else ET.parse(source).getroot()
    sections = {}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").upper()
        sections[label] = _clean("".join(node.itertext()))
    uid_node = root.find("uId")
    uid = uid_node.get("id", "") if uid_node is not None else ""
    number = re.search(r"(\d+)$", uid)
    if number is None and not from_bytes:
        number = re.search(r"(\d+)", Path(source).stem)
    if number is None:
        raise ValueError(f"cannot find the report number in <uId id={uid!r}>")
    images = [node.get("id") for node in root.iter("parentImage") if node.get("id")]
    licence = root.find("licenseURL")
    return IUReport(report_id=int(number.group(1)), uid=uid, findings=sections.get("FINDINGS", ""),
                    impression=sections.get("IMPRESSION", ""), image_ids=images,
                    licence_url=_clean(licence.text) if licence is not None else "")


# ----------------------------------------------------------------------------------------------
# finding and pairing the files
# ----------------------------------------------------------------------------------------------

@dataclass
class Pairing:
    """Reports matched with their images through ``parentImage`` ids."""
    reports: list                    # IUReport, those with text and at least one image on disk
    images: dict                     # image id -> Path, for every PNG found
    pairs: list                      # (index into reports, image id), in report then listing order
    reports_without_images: list     # report ids whose listed images are not on disk (or list none)
    reports_without_text: list       # report ids with no FINDINGS and no IMPRESSION
    images_without_reports: list     # image ids no report lists
    licences: tuple                  # the distinct <licenseURL> values found

    def summary(self) -> dict:
        return {"reports": len(self.reports), "pairs": len(self.pairs), "images": len(self.images),
                "reports_without_images": len(self.reports_without_images),
                "reports_without_text": len(self.reports_without_text),
                "images_without_reports": len(self.images_without_reports)}


def _reports_dir(root: Path) -> Path | None:
    for candidate in (root / REPORTS_DIR, root):
        if candidate.is_dir() and any(candidate.glob("*.xml")):
            return candidate
    return None


def _image_files(root: Path) -> dict:
    found = {}
    for folder in (root, root / IMAGES_DIR):
        if folder.is_dir():
            for path in folder.glob("*.png"):
                found.setdefault(path.stem, path)
    return found


def scan(root=None, require_text: bool = True) -> Pairing:
    """Find Open-I's reports and images under ``root`` and pair them."""
    root = Path(root) if root is not None else default_root(NAME)
    if not root.is_dir():
        raise not_available(NAME, root, f"the folder {root} does not exist")
    xml_dir = _reports_dir(root)
    if xml_dir is None:
        raise not_available(NAME, root, f"no XML reports in {root / REPORTS_DIR} (nor directly in {root})")
    images = _image_files(root)
    if not images:
        raise not_available(NAME, root, f"no PNG images in {root / IMAGES_DIR} (nor directly in {root})")
    kept, pairs, no_images, no_text, licences, listed = [], [], [], [], set(), set()
    for path in sorted(xml_dir.glob("*.xml"), key=lambda p: (len(p.stem), p.stem)):
        try:
            report = parse_report(path)
        except (ET.ParseError, ValueError) as err:
            raise ValueError(f"{NAME}: cannot read the report {path} ({err}); the file may be damaged: prepare "
                             f"the dataset again with {INFO[NAME].fetch_command()}") from err
        listed.update(report.image_ids)
        if report.licence_url:
            licences.add(report.licence_url)
        on_disk = [i for i in report.image_ids if i in images]
        if require_text and not report.text:
            no_text.append(report.report_id)
            continue
        if not on_disk:
            no_images.append(report.report_id)
            continue
        for image_id in on_disk:
            pairs.append((len(kept), image_id))
        kept.append(report)
    orphans = sorted(set(images) - listed)
    return Pairing(kept, images, pairs, no_images, no_text, orphans, tuple(sorted(licences)))


def _fingerprint(root: Path, pairing: Pairing) -> str:
    """Changes when any paired file changes (name, size or modification time)."""
    h = hashlib.sha256(str(root.resolve()).encode())
    xml_dir = _reports_dir(root)
    for path in sorted(xml_dir.glob("*.xml")) + sorted(pairing.images.values()):
        st = path.stat()
        h.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# the loader
# ----------------------------------------------------------------------------------------------

def load_iu_xray(root=None, image_size: int = 64, n_studies: int | None = None, seed: int = 0, *,
                 images_per_report: str = "all", require_text: bool = True, uncertain_as: int = 1,
                 cache: bool = True, progress: bool = True):
    """IU X-ray as a Cohort (see the module docstring for every choice).

    ``root`` holds the two extracted archives (default ``$MEDMM_DATA/iu_xray``). ``n_studies``
    caps the number of *reports* (picked at random for ``seed``; all their images come along);
    None loads all. ``images_per_report`` is ``"all"`` (one row per image) or ``"first"`` (the
    first listed image of each report only).
    """
    image_size = check_image_size(image_size)
    n_studies = check_n_studies(n_studies)
    if images_per_report not in ("all", "first"):
        raise ValueError(f"images_per_report must be 'all' or 'first', got {images_per_report!r}")
    root = Path(root) if root is not None else default_root(NAME)
    pairing = scan(root, require_text=require_text)
    if not pairing.pairs:
        raise not_available(NAME, root, f"no report in {root} lists an image that is on disk ({pairing.summary()})")

    chosen = choose_subset(len(pairing.reports), n_studies, seed)
    keep = set(chosen.tolist())
    pairs = [(r, i) for r, i in pairing.pairs if r in keep]
    if images_per_report == "first":
        seen, first = set(), []
        for r, i in pairs:
            if r not in seen:
                seen.add(r)
                first.append((r, i))
        pairs = first

    images = None
    path = None
    if cache:
        key = _cache.cache_key(NAME, CACHE_VERSION, fingerprint=_fingerprint(root, pairing), image_size=image_size,
                               images=hashlib.sha256("|".join(i for _, i in pairs).encode()).hexdigest())
        path = _cache.cache_path("real", f"{NAME}_{len(pairs)}img_{image_size}px", key)
        hit = _cache.load(path)
        if hit is not None:
            images = hit[0]["images"]
    if images is None:
        images = _decode(pairs, pairing, image_size, progress)
        if cache:
            _cache.save(path, {"images": images}, {"image_ids": [i for _, i in pairs]})

    texts = [pairing.reports[r].text for r, _ in pairs]
    labels = labels_matrix(texts, uncertain_as=uncertain_as)
    read = {t: label_report(t) for t in set(texts)}            # two views share a report: label it once
    hedged = np.array([[read[t].get(f) == -1 for f in FINDINGS] for t in texts], bool).reshape(len(texts), -1)
    report_ids = np.array([pairing.reports[r].report_id for r, _ in pairs], np.int64)
    return make_cohort(images, reports=texts, labels=labels, patient_ids=report_ids, study_ids=report_ids,
                       site_names=SITE_NAMES, image_size=image_size, seed=seed, hedged=hedged)


def _decode(pairs, pairing: Pairing, image_size: int, progress: bool) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(pairs), image_size, image_size), np.uint8)
    for k, (_, image_id) in enumerate(tqdm(pairs, desc=f"{NAME}: reading images", disable=not progress,
                                           leave=False)):
        path = pairing.images[image_id]
        try:
            with Image.open(path) as img:
                img.load()
                out[k] = to_square(img, image_size)
        except OSError as err:
            raise ValueError(f"{NAME}: cannot read the image {path} ({err}); the file may be damaged: prepare "
                             f"the dataset again with {INFO[NAME].fetch_command()} --force") from err
    return out


# ----------------------------------------------------------------------------------------------
# fetching and preparing
# ----------------------------------------------------------------------------------------------

def _safe_extract(archive: Path, into: Path, progress: bool) -> None:
    """Extract a tar archive, refusing members that would land outside ``into`` (absolute
    paths, ``..``, links): a downloaded archive is untrusted input."""
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        into_resolved = into.resolve()
        for m in members:
            target = (into / m.name).resolve()
            if not (m.isfile() or m.isdir()) or into_resolved not in (target, *target.parents):
                raise ValueError(f"{archive.name}: refusing the unsafe member {m.name!r}")
        for m in tqdm(members, desc=f"extracting {archive.name}", disable=not progress, leave=False):
            tar.extract(m, into, filter="data") if hasattr(tarfile, "data_filter") else tar.extract(m, into)


def download_and_prepare(data_dir=None, *, mirror: str | None = None, force: bool = False, progress: bool = True,
                         keep_archives: bool = True, opener=None, log=print, accept_new_checksum: bool = False) -> Path:
    """Download Open-I's two archives into ``DATA_DIR/downloads/iu_xray`` (resumable, checked),
    extract them into ``DATA_DIR/iu_xray`` atomically, and write LICENSE.txt and MANIFEST.json.
    Returns the dataset folder (the ``root`` of :func:`load_iu_xray`). ``mirror`` replaces
    the base URL (``MIRROR/NLMCXR_png.tgz``...). Open-I publishes no checksum: a download that
    differs from the one first recorded is an error unless ``accept_new_checksum``. Two runs at
    once take turns (the second finds the dataset prepared)."""
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
    downloads = data_dir / "downloads" / NAME
    archives = []
    for remote in REMOTE_FILES:
        if mirror:
            remote = RemoteFile(f"{mirror.rstrip('/')}/{remote.filename}", remote.filename, remote.md5,
                                remote.sha256, remote.size, remote.validate)
        archives.append(fetch(remote, downloads, dataset=NAME, progress=progress, opener=opener, log=log,
                              accept_new_checksum=accept_new_checksum))
    with atomic_directory(final, exclusive=True) as tmp:  # under dataset_lock
        for archive in archives:
            _safe_extract(archive, tmp, progress)
        pairing = scan(tmp)
        if not pairing.pairs:
            raise ValueError(f"{NAME}: the archives extracted, but no report matched an image ({pairing.summary()})")
        files = {a.name: {"size": a.stat().st_size} for a in archives}
        write_card(tmp, NAME, files, {"counts": pairing.summary(), "licences_in_files": list(pairing.licences)})
    if pairing.licences:
        log(f"[{NAME}] licence named in the reports: {', '.join(pairing.licences)}")
    log(f"[{NAME}] ready in {final}: {pairing.summary()}")
    if not keep_archives:
        for archive in archives:
            archive.unlink(missing_ok=True)
    return final
