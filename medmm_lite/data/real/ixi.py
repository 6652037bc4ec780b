"""IXI brain MRI: T1- and T2-weighted (and PD) slices of about 580 healthy adults, paired by
subject, as :class:`~medmm_lite.data.MRIPhantoms`.

IXI distributes one tarball per contrast (``IXI-T1.tar``, ``IXI-T2.tar``, ``IXI-PD.tar``)
of NIfTI volumes named ``IXI002-Guys-0828-T1.nii.gz``: subject ``IXI002``, scanned at Guy's
(also ``HH``, Hammersmith, and ``IOP``, the Institute of Psychiatry).

**How T1 and T2 are paired, and the limit of it.** IXI's T1 and T2 are separate acquisitions,
*not registered to each other*: the T1 is a sagittal 3-D volume, the T2 (with PD, from the
same dual-echo sequence) an axial stack, with different voxel sizes. Preparation pairs them
without a registration tool:

1. same subject (the file names' ``IXI002-Guys-0828`` part);
2. a common grid: the T2's own axial grid (reoriented to RAS with nibabel); each T2 slice's
   pixel centres are mapped to scanner (world) millimetres with the T2's affine, then into
   the T1 (and PD) volume with the inverse of its affine, and sampled there (trilinear);
3. matching central axial slices: the T2's middle slice (optionally a few more, ``spacing_mm``
   apart), so each slice pair shows the same plane of the same head.

This aligns the two only as well as the scanner's coordinates do: it assumes the head did not
move between the two acquisitions of one session. Small motion (a few millimetres, a slight
tilt) is not corrected, so pairs are *approximately* registered, unlike the phantoms, whose
contrasts match pixel for pixel. A T1 -> T2 model trained on them will look blurrier and
score lower PSNR/SSIM than on the phantoms partly for that reason.

Other fields of MRIPhantoms: ``flair`` is NaN (IXI has no FLAIR; the prepared PD slices are
in :func:`load_ixi_arrays`); IXI subjects are healthy volunteers, so ``lesion_mask`` is empty
and ``has_lesion`` False; ``brain_mask`` is the *head* foreground (a threshold of the T2 slice
with holes filled), not a skull-stripped brain mask. Intensities are scaled per volume so its
99.5th percentile maps to 1 (MRI has no absolute units). Slices are shown as radiologists look
at axial images, from the feet: anterior up, the patient's right on the image left.

nibabel is needed to *prepare* IXI (``pip install nibabel``, or ``pip install
"medmm-lite[real]"``); loading the prepared slices needs only numpy.
"""
from __future__ import annotations

import gzip
import re
import tarfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..mri import MRIPhantoms
from .common import (INFO, atomic_directory, check_image_size, check_n_studies, choose_subset, data_root,
                     dataset_lock, default_root, not_available, read_manifest, to_square, write_card)
from .download import RemoteFile, fetch

NAME = "ixi"
CONTRASTS = ("T1", "T2", "PD")
BASE_URL = "https://biomedic.doc.ic.ac.uk/brain-development/downloads/IXI"
SLICES_FILE = "ixi_slices.npz"
FILE_PATTERN = re.compile(r"(IXI\d+-[A-Za-z]+-\d+)-(T1|T2|PD)\.nii(?:\.gz)?$")
PERCENTILE = 99.5


def require_nibabel():
    try:
        import nibabel
    except ImportError as err:
        raise ImportError("Preparing IXI reads NIfTI volumes with nibabel, which is not installed. Install it with "
                          "`pip install nibabel` (or `pip install \"medmm-lite[real]\"`), then run the command "
                          "again. Loading already prepared IXI slices does not need it.") from err
    return nibabel


def _check_tar(path: Path) -> None:
    with tarfile.open(path) as tar:
        if not any(FILE_PATTERN.search(m.name) for m in tar.getmembers()):
            raise ValueError("the archive holds no IXI NIfTI volume (IXI###-Site-####-T1.nii.gz)")


def remote_file(contrast: str, mirror: str | None = None) -> RemoteFile:
    if contrast not in CONTRASTS:
        raise ValueError(f"IXI contrasts are {CONTRASTS}, got {contrast!r}")
    name = f"IXI-{contrast}.tar"
    return RemoteFile(f"{(mirror or BASE_URL).rstrip('/')}/{name}", name, validate=_check_tar)


# ----------------------------------------------------------------------------------------------
# reading volumes and pairing slices
# ----------------------------------------------------------------------------------------------

def index_tar(path) -> dict:
    """subject key ("IXI002-Guys-0828") -> tar member, for one contrast's tarball."""
    out = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            m = FILE_PATTERN.search(Path(member.name).name)
            if m and member.isfile():
                out[m.group(1)] = member
    return out


def read_volume(tar: tarfile.TarFile, member):
    """A NIfTI image read straight from the tarball (no extraction to disk)."""
    nib = require_nibabel()
    raw = tar.extractfile(member).read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return nib.Nifti1Image.from_bytes(raw)


def _scale(volume: np.ndarray) -> float:
    """The intensity that maps to 1: the 99.5th percentile of the non-background voxels."""
    values = volume[volume > 0]
    if values.size == 0:
        return 1.0
    return float(np.percentile(values, PERCENTILE)) or 1.0


def paired_slices(t2_image, others: dict, n_slices: int = 1, spacing_mm: float = 5.0, offset_mm: float = 0.0):
    """Axial slices of ``t2_image`` and the same planes sampled from each of ``others``
    (``{"T1": image, "PD": image}``), all on the T2's grid, scaled to [0, 1].

    Returns ``({"T2": (k, H, W), "T1": ..., ...}, offsets_mm (k,))`` with slices rotated for
    display (anterior up). See the module docstring for what this alignment assumes."""
    from scipy.ndimage import map_coordinates

    nib = require_nibabel()

    t2 = nib.as_closest_canonical(t2_image)
    data2 = np.asarray(t2.dataobj, dtype=np.float32)
    if data2.ndim == 4:
        data2 = data2[..., 0]
    nx, ny, nz = data2.shape
    dz = float(abs(t2.header.get_zooms()[2])) or 1.0
    step = max(1, int(round(spacing_mm / dz)))
    centre = nz // 2 + int(round(offset_mm / dz))
    ks = [centre + step * (j - (n_slices - 1) // 2) for j in range(n_slices)]
    ks = [k for k in ks if 0 <= k < nz]
    if not ks:
        raise ValueError(f"no slice within the T2 volume ({nz} slices) at offset {offset_mm} mm")
    ii, jj = np.meshgrid(np.arange(nx, dtype=np.float64), np.arange(ny, dtype=np.float64), indexing="ij")

    volumes = {"T2": (data2, None)}
    for name, image in others.items():
        data = np.asarray(image.dataobj, dtype=np.float32)
        if data.ndim == 4:
            data = data[..., 0]
        # world (scanner mm) -> this volume's voxel indices
        volumes[name] = (data, np.linalg.inv(image.affine) @ t2.affine)
    out = {name: np.empty((len(ks), ny, nx), np.float32) for name in volumes}
    for name, (data, t2_to_vox) in volumes.items():
        scale = _scale(data)
        for s, k in enumerate(ks):
            if t2_to_vox is None:
                plane = data[:, :, k]
            else:
                vox = np.stack([ii, jj, np.full_like(ii, k), np.ones_like(ii)], axis=0).reshape(4, -1)
                coords = (t2_to_vox @ vox)[:3]
                plane = map_coordinates(data, coords, order=1, mode="constant", cval=0.0).reshape(nx, ny)
            # (x: patient's right, y: anterior) -> rows anterior first, columns from the patient's right
            out[name][s] = np.rot90(np.clip(plane / scale, 0.0, 1.0))[:, ::-1]
    offsets = np.array([(k - nz // 2) * dz for k in ks], np.float32)
    return out, offsets


def foreground_mask(image: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """The head: pixels above ``threshold`` of full scale, holes filled (uint8 0/1)."""
    from scipy.ndimage import binary_fill_holes

    return binary_fill_holes(np.asarray(image, np.float32) > threshold).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# the loader
# ----------------------------------------------------------------------------------------------

def load_ixi_arrays(root=None) -> dict:
    """Everything prepared: ``t1``, ``t2`` (and ``pd``) uint8 ``(n, S, S)``, ``foreground``,
    ``subject`` ("IXI002"), ``site`` ("Guys"), ``offset_mm`` (slice offset from the T2 centre)."""
    root = Path(root) if root is not None else default_root(NAME)
    path = root / SLICES_FILE
    if read_manifest(root) is None or not path.is_file():
        raise not_available(NAME, root, f"no prepared IXI slices ({SLICES_FILE} with its MANIFEST.json) in {root}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as err:          # noqa: BLE001 - any damage means "prepare again"
        raise not_available(NAME, root, f"{path} cannot be read ({type(err).__name__}: {err}); prepare it again "
                                        "with --force") from err


def _rows(a: dict, n_studies, seed: int, slices: str) -> list:
    """The prepared slices :func:`load_ixi` returns, in its row order."""
    subjects = np.unique(a["subject"])
    chosen = set(subjects[choose_subset(len(subjects), n_studies, seed)].tolist())
    rows = [i for i in range(len(a["subject"])) if a["subject"][i] in chosen]
    if slices == "center":
        best = {}
        for i in rows:
            s = a["subject"][i]
            if s not in best or abs(a["offset_mm"][i]) < abs(a["offset_mm"][best[s]]):
                best[s] = i
        rows = sorted(best.values())
    return rows


def subject_ids(root=None, n_studies: int | None = None, seed: int = 0, *, slices: str = "center") -> np.ndarray:
    """The subject ("IXI002") of each row of ``load_ixi(root, n_studies=..., seed=..., slices=...)``,
    for splitting by subject (:func:`subject_split`) when ``slices="all"`` gives several rows each."""
    n_studies = check_n_studies(n_studies)
    if slices not in ("center", "all"):
        raise ValueError(f"slices must be 'center' or 'all', got {slices!r}")
    a = load_ixi_arrays(root)
    return np.asarray(a["subject"])[_rows(a, n_studies, seed, slices)]


def subject_split(subjects, fractions=(0.7, 0.1, 0.2), seed: int = 0) -> dict:
    """``{"train", "val", "test"}`` row indices with every subject's rows on one side (slices of one
    head are not independent). ``subjects``: one id per row, e.g. :func:`subject_ids`."""
    subjects = np.asarray(subjects)
    fractions = np.asarray(fractions, float)
    if fractions.shape != (3,) or (fractions <= 0).any() or abs(fractions.sum() - 1) > 1e-6:
        raise ValueError(f"fractions must be three positive numbers (train, val, test) summing to 1, got "
                         f"{tuple(fractions.tolist())}")
    unique = np.unique(subjects)
    if len(unique) < 3:
        raise ValueError(f"a train/val/test split by subject needs at least 3 subjects, got {len(unique)}")
    order = np.random.default_rng(seed).permutation(unique)
    n_val = max(1, int(round(fractions[1] * len(unique))))
    n_test = max(1, int(round(fractions[2] * len(unique))))
    n_train = max(1, len(unique) - n_val - n_test)
    n_val = len(unique) - n_train - n_test
    groups = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {name: np.nonzero(np.isin(subjects, members))[0] for name, members in groups.items()}


def load_ixi(root=None, image_size: int = 64, n_studies: int | None = None, seed: int = 0, *,
             slices: str = "center"):
    """IXI as MRIPhantoms (see the module docstring). ``n_studies`` caps the number of
    *subjects* (a random subset for ``seed``); ``slices="center"`` keeps each subject's middle
    slice (one row per subject, so any split of the rows is a split by subject), ``"all"`` every
    prepared slice (rows of one subject are then not independent: split them with
    ``subject_split(subject_ids(root, n_studies, seed, slices="all"))``)."""
    image_size = check_image_size(image_size)
    n_studies = check_n_studies(n_studies)
    if slices not in ("center", "all"):
        raise ValueError(f"slices must be 'center' or 'all', got {slices!r}")
    a = load_ixi_arrays(root)
    rows = _rows(a, n_studies, seed, slices)

    def stack(key):
        resized = np.stack([to_square(a[key][i], image_size) for i in rows])
        return torch.from_numpy(resized).unsqueeze(1).float().div_(255.0)

    t1, t2 = stack("t1"), stack("t2")
    fg = np.stack([to_square(a["foreground"][i] * 255, image_size) > 127 for i in rows]).astype(np.float32)
    n = len(rows)
    return MRIPhantoms(t1=t1, t2=t2, flair=torch.full_like(t1, float("nan")), lesion_mask=torch.zeros_like(t1),
                       brain_mask=torch.from_numpy(fg).unsqueeze(1), has_lesion=torch.zeros(n, dtype=torch.bool),
                       n_lesions=np.zeros(n, np.int64), image_size=image_size, seed=seed)


# ----------------------------------------------------------------------------------------------
# fetching and preparing
# ----------------------------------------------------------------------------------------------

def download_and_prepare(data_dir=None, *, contrasts=("T1", "T2"), size: int = 128, slices_per_subject: int = 1,
                         spacing_mm: float = 5.0, max_subjects: int | None = None, mirror: str | None = None,
                         force: bool = False, progress: bool = True, keep_archives: bool = True, opener=None,
                         log=print, accept_new_checksum: bool = False) -> Path:
    """Download the tarballs of ``contrasts`` (T1 and T2 always; PD if asked), pair each
    subject's volumes into ``slices_per_subject`` axial slices at ``size`` px, and write them
    with LICENSE.txt and MANIFEST.json to ``DATA_DIR/ixi`` atomically. IXI publishes no
    checksum: a download that differs from the one first recorded is an error unless
    ``accept_new_checksum``. Two runs at once take turns."""
    require_nibabel()                 # before downloading gigabytes, not after
    contrasts = tuple(dict.fromkeys(("T1", "T2") + tuple(c.upper() for c in contrasts)))
    for c in contrasts:
        if c not in CONTRASTS:
            raise ValueError(f"IXI contrasts are {CONTRASTS}, got {c!r}")
    size = check_image_size(size)
    if not isinstance(slices_per_subject, int) or slices_per_subject < 1:
        raise ValueError(f"slices_per_subject must be a positive int, got {slices_per_subject!r}")
    data_dir = Path(data_dir) if data_dir is not None else data_root()
    final = data_dir / NAME
    if read_manifest(final) is not None and not force:
        log(f"[{NAME}] already prepared in {final} (use --force to prepare it again)")
        return final
    with dataset_lock(data_dir, NAME, log):
        if read_manifest(final) is not None and not force:
            log(f"[{NAME}] prepared meanwhile by another run, in {final}")
            return final
        return _prepare(data_dir, final, contrasts=contrasts, size=size, slices_per_subject=slices_per_subject,
                        spacing_mm=spacing_mm, max_subjects=max_subjects, mirror=mirror, progress=progress,
                        keep_archives=keep_archives, opener=opener, log=log,
                        accept_new_checksum=accept_new_checksum)


def _prepare(data_dir: Path, final: Path, *, contrasts, size, slices_per_subject, spacing_mm, max_subjects, mirror,
             progress, keep_archives, opener, log, accept_new_checksum) -> Path:
    log(f"[{NAME}] {INFO[NAME].title}\n[{NAME}] licence: {INFO[NAME].licence}")
    tars = {c: fetch(remote_file(c, mirror), data_dir / "downloads" / NAME, dataset=NAME, progress=progress,
                     opener=opener, log=log, accept_new_checksum=accept_new_checksum) for c in contrasts}
    index = {c: index_tar(p) for c, p in tars.items()}
    subjects = sorted(set.intersection(*(set(i) for i in index.values())))
    if max_subjects is not None:
        subjects = subjects[:max_subjects]
    if not subjects:
        raise ValueError(f"{NAME}: no subject has all of {contrasts} in the tarballs")

    collected = {c: [] for c in contrasts}
    meta = {"subject": [], "site": [], "offset_mm": []}
    skipped = []
    handles = {c: tarfile.open(p) for c, p in tars.items()}
    try:
        for key in tqdm(subjects, desc=f"{NAME}: pairing T1/T2 slices", disable=not progress, leave=False):
            try:
                vols = {c: read_volume(handles[c], index[c][key]) for c in contrasts}
                planes, offsets = paired_slices(vols["T2"], {c: v for c, v in vols.items() if c != "T2"},
                                                n_slices=slices_per_subject, spacing_mm=spacing_mm)
            except Exception as err:      # noqa: BLE001 - one unreadable volume should not sink 580 subjects
                skipped.append(f"{key}: {type(err).__name__}: {err}")
                continue
            for c in contrasts:
                collected[c].extend(to_square(np.rint(p * 255).astype(np.uint8), size) for p in planes[c])
            subject, site = key.split("-")[:2]
            meta["subject"] += [subject] * len(offsets)
            meta["site"] += [site] * len(offsets)
            meta["offset_mm"] += offsets.tolist()
    finally:
        for h in handles.values():
            h.close()
    if not meta["subject"]:
        raise ValueError(f"{NAME}: no subject could be read ({skipped[:3]} ...)")

    arrays = {c.lower(): np.stack(v) for c, v in collected.items()}
    arrays["foreground"] = np.stack([foreground_mask(t2 / 255.0) for t2 in arrays["t2"]])
    arrays["subject"] = np.array(meta["subject"])
    arrays["site"] = np.array(meta["site"])
    arrays["offset_mm"] = np.array(meta["offset_mm"], np.float32)
    with atomic_directory(final, exclusive=True) as tmp:  # under dataset_lock
        with open(tmp / SLICES_FILE, "wb") as f:
            np.savez_compressed(f, **arrays)
        write_card(tmp, NAME, {p.name: {"size": p.stat().st_size, "url": remote_file(c, mirror).url}
                               for c, p in tars.items()},
                   {"contrasts": list(contrasts), "image_size": size, "subjects": len(set(meta["subject"])),
                    "slices": len(meta["subject"]), "skipped": skipped,
                    "pairing": "same subject; T1/PD resampled onto the T2 axial grid through the scanner "
                               "coordinates (affines); central axial slices; not registered (no motion "
                               "correction)"})
    if not keep_archives:
        for p in tars.values():
            p.unlink(missing_ok=True)
    if skipped:
        log(f"[{NAME}] skipped {len(skipped)} subject(s) that could not be read, e.g. {skipped[0]}")
    log(f"[{NAME}] ready in {final}: {len(set(meta['subject']))} subjects, {len(meta['subject'])} slices")
    return final
