"""The SynthCXR cohort: generate it, cache it, split it by patient, feed it to torch.

    cohort = generate_cohort(2000, image_size=64, seed=0)
    cohort.images        # (N, 1, H, W) float32 in [0, 1]
    cohort.reports[0]    # 'FINDINGS: ... IMPRESSION: ...'
    cohort.labels        # (N, 10) 1 present / 0 absent, in FINDINGS order
    split = patient_split(cohort)          # {"train": idx, "val": idx, "test": idx}
    train = CohortDataset(cohort, split["train"])

Generation runs in four steps, each in its own module: the clinical model
decides who has what (clinical.py), the renderer draws it (synthcxr.py), the
grammar writes the report (reports.py), and this module puts the pieces
together, adds annotation noise and caches the result.
"""
from __future__ import annotations

import math
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from . import cache as _cache
from .clinical import (DEFAULT_PREVALENCE, SITE_NAMES, SITES, sample_attributes, sample_findings, sample_labs,
                       sample_patients, sample_radiologists)
from .findings import FINDINGS, LAB_NAMES, PATHOLOGIES
from .reports import RADIOLOGISTS, write_report
from .synthcxr import (DEVICE_NAMES, F, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, SEVERITY_WORDS, SIDES, ZONES, render,
                       sample_anatomy, sample_finding_geometry)

# Bump when anything changes what a seed generates: old cache files then stop matching.
GENERATOR_VERSION = 1
MAX_STUDIES = 1_000_000
HEDGE_BELOW = 0.62            # conspicuity under which a radiologist hedges ("possible ...")
CM_PER_UNIT = 36.0            # body units -> cm (a chest is ~36 cm wide), for nodule sizes in reports
NO_FINDING = FINDINGS.index("No Finding")

# Independent random streams, one per step, so changing one step never shifts another.
_STREAM = {"patients": 1, "findings": 2, "attributes": 3, "anatomy": 4, "geometry": 5, "labs": 6,
           "readers": 7, "noise": 8, "reports": 9, "label_noise": 10}


@dataclass(eq=False)
class Cohort:
    """A generated (or loaded) cohort of chest X-ray studies. Every per-study attribute is
    indexed the same way; ``cohort.subset(idx)`` keeps them aligned."""
    images: torch.Tensor                 # (N, 1, H, W) float32 in [0, 1]
    reports: list                        # N strings "FINDINGS: ... IMPRESSION: ..."
    labels: torch.Tensor                 # (N, len(FINDINGS)) float32, after annotation noise
    true_labels: torch.Tensor            # the same before annotation noise (what was drawn)
    boxes: list                          # per study: list of dicts, one per present pathology
    patient_ids: np.ndarray              # int64
    study_ids: np.ndarray                # int64
    age: np.ndarray                      # float32 years
    sex: np.ndarray                      # "F" / "M"
    site: np.ndarray                     # int64 index into site_names
    site_names: tuple
    radiologist: np.ndarray              # int64 index into reports.RADIOLOGISTS
    labs: torch.Tensor                   # (N, len(LAB_NAMES)) float32, clinical units
    lab_names: tuple = LAB_NAMES
    image_size: int = 64
    seed: int = 0
    hedged: np.ndarray = None            # (N, len(FINDINGS)) bool: present but stated with uncertainty
    visit: np.ndarray = None             # int64: 0 for a patient's first study, 1 for the next, ...
    ctr: np.ndarray = None               # float32 cardiothoracic ratio (> 0.5 is Cardiomegaly)
    findings: tuple = field(default=FINDINGS)

    def __len__(self) -> int:
        return len(self.reports)

    def __repr__(self) -> str:
        return (f"Cohort({len(self)} studies, {len(np.unique(self.patient_ids))} patients, "
                f"{self.image_size}px, {len(self.site_names)} sites, seed={self.seed})")

    def subset(self, idx) -> "Cohort":
        """The studies at `idx` (indices, a boolean mask, a slice or a tensor), as a new Cohort."""
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        idx = np.arange(len(self))[idx]
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                picked[f.name] = value[torch.from_numpy(idx)]
            elif isinstance(value, np.ndarray):
                picked[f.name] = value[idx]
            elif isinstance(value, list):
                picked[f.name] = [value[i] for i in idx]
            else:
                picked[f.name] = value
        return Cohort(**picked)

    def label_frame(self) -> dict:
        """Columns for a table (``pandas.DataFrame(cohort.label_frame())``): ids, demographics,
        site and one 0/1 column per finding."""
        frame = {"study_id": self.study_ids, "patient_id": self.patient_ids, "age": self.age, "sex": self.sex,
                 "site": np.array(self.site_names)[self.site]}
        labels = self.labels.numpy().astype(np.int64)
        for j, name in enumerate(self.findings):
            frame[name] = labels[:, j]
        return frame

    def summary(self) -> dict:
        """The numbers of a dataset card: size, prevalences, sites, demographics, report lengths."""
        labels = self.labels.numpy()
        per_site = {}
        for k, name in enumerate(self.site_names):
            at = self.site == k
            per_site[name] = {"studies": int(at.sum()), "patients": int(len(np.unique(self.patient_ids[at]))),
                              "prevalence": {f: round(float(labels[at, j].mean()), 3) if at.any() else 0.0
                                             for j, f in enumerate(self.findings)}}
        words = np.array([len(r.split()) for r in self.reports])
        return {
            "studies": len(self),
            "patients": int(len(np.unique(self.patient_ids))),
            "image_size": self.image_size,
            "seed": self.seed,
            "prevalence": {f: round(float(labels[:, j].mean()), 3) for j, f in enumerate(self.findings)},
            "label_noise_flips": int((self.labels != self.true_labels).sum()),
            "sites": per_site,
            "age": {"mean": round(float(self.age.mean()), 1), "min": round(float(self.age.min()), 1),
                    "max": round(float(self.age.max()), 1)},
            "female_fraction": round(float((self.sex == "F").mean()), 3),
            "report_words": {"mean": round(float(words.mean()), 1), "max": int(words.max())},
            "labs": {name: round(float(self.labs[:, j].median()), 2) for j, name in enumerate(self.lab_names)},
        }

    def card(self) -> str:
        """A short dataset card in Markdown."""
        s = self.summary()
        lines = [f"# SynthCXR cohort (seed {s['seed']}, {s['image_size']} px)", "",
                 f"{s['studies']} studies of {s['patients']} patients; age {s['age']['mean']} "
                 f"({s['age']['min']}-{s['age']['max']}); {100 * s['female_fraction']:.0f}% female; "
                 f"reports {s['report_words']['mean']} words on average.", "",
                 "| finding | prevalence |", "|---|---|"]
        lines += [f"| {f} | {p:.1%} |" for f, p in s["prevalence"].items()]
        lines += ["", "| site | studies | patients |", "|---|---|---|"]
        lines += [f"| {name} | {v['studies']} | {v['patients']} |" for name, v in s["sites"].items()]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# checking arguments: say what was wrong, what was expected, what to do
# ----------------------------------------------------------------------------------------------

def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _check_arguments(n_studies, image_size, seed, prevalence, subtlety, label_noise, sites, cache):
    if not _is_int(n_studies) or not 0 < n_studies <= MAX_STUDIES:
        raise ValueError(f"n_studies must be an int between 1 and {MAX_STUDIES}, got {n_studies!r}")
    if not _is_int(image_size) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image_size must be an int between {MIN_IMAGE_SIZE} (smaller cannot show ribs and "
                         f"nodules) and {MAX_IMAGE_SIZE}, got {image_size!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    merged = dict(DEFAULT_PREVALENCE)
    if prevalence is not None:
        if not isinstance(prevalence, dict):
            raise ValueError("prevalence must be a dict {finding name: probability}, "
                             f"got {type(prevalence).__name__}")
        for name, p in prevalence.items():
            if name == "No Finding":
                raise ValueError("prevalence: 'No Finding' cannot be set, it follows from the others (a study has "
                                 "No Finding when it has no pathology); lower the other findings' prevalences "
                                 f"instead. Settable names: {PATHOLOGIES}")
            if name not in PATHOLOGIES:
                raise ValueError(f"prevalence: unknown finding {name!r}; the findings are {FINDINGS} "
                                 f"(settable: all but 'No Finding')")
            if not _is_number(p) or not 0.0 <= float(p) <= 1.0 or math.isnan(float(p)):
                raise ValueError(f"prevalence[{name!r}] must be a probability in [0, 1], got {p!r}")
            merged[name] = float(p)
    if not _is_number(subtlety) or not 0.0 < float(subtlety) <= 2.0:
        raise ValueError(f"subtlety must be a number in (0, 2] (1 = default, higher = fainter findings), "
                         f"got {subtlety!r}")
    if not _is_number(label_noise) or not 0.0 <= float(label_noise) < 0.5:
        raise ValueError(f"label_noise must be a probability in [0, 0.5) (chance each pathology label is flipped), "
                         f"got {label_noise!r}")
    if _is_int(sites):
        if not 1 <= sites <= len(SITES):
            raise ValueError(f"sites must be between 1 and {len(SITES)} (or a sequence of names from "
                             f"{SITE_NAMES}), got {sites!r}")
        chosen = SITES[:sites]
    elif isinstance(sites, Sequence) and not isinstance(sites, str) and len(sites) > 0:
        unknown = [s for s in sites if s not in SITE_NAMES]
        if unknown or len(set(sites)) != len(sites):
            raise ValueError(f"sites: names must be distinct and from {SITE_NAMES}, got {list(sites)!r}")
        chosen = tuple(SITES[SITE_NAMES.index(s)] for s in sites)
    else:
        raise ValueError(f"sites must be an int (how many sites) or a non-empty sequence of names from "
                         f"{SITE_NAMES}, got {sites!r}")
    if not isinstance(cache, (bool, np.bool_)):
        raise ValueError(f"cache must be True or False, got {cache!r}")
    return merged, float(subtlety), float(label_noise), chosen


# ----------------------------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------------------------

def generate_cohort(n_studies: int, image_size: int = 64, seed: int = 0, *, prevalence: dict | None = None,
                    subtlety: float = 1.0, label_noise: float = 0.0, sites=3, cache: bool = True) -> Cohort:
    """Generate (or load from the cache) a SynthCXR cohort. Deterministic for its arguments.

    n_studies: number of studies (patients have 1-4 each).
    image_size: pixels per side, 32..512. The same seed draws the same anatomy and findings at
        every size (only the pixel noise differs).
    prevalence: {finding: probability} overriding :data:`clinical.DEFAULT_PREVALENCE`.
    subtlety: in (0, 2]; how faint findings are drawn (1 default, 2 = half the contrast).
    label_noise: in [0, 0.5); chance each pathology label is flipped AFTER the report is written
        (annotation noise). ``true_labels`` keeps the clean labels.
    sites: how many sites (1..5, from :data:`SITE_NAMES`) or a sequence of site names.
    cache: store under ``utils.cache_dir("cohorts")`` and reuse (checksummed).
    """
    merged, subtlety, label_noise, chosen = _check_arguments(n_studies, image_size, seed, prevalence, subtlety,
                                                             label_noise, sites, cache)
    arguments = dict(n_studies=int(n_studies), image_size=int(image_size), seed=int(seed), prevalence=merged,
                     subtlety=subtlety, label_noise=label_noise, sites=[s.name for s in chosen])
    path = None
    if cache:
        key = _cache.cache_key("synthcxr", GENERATOR_VERSION, **arguments)
        path = _cache.cache_path("cohorts", f"synthcxr_{n_studies}_{image_size}px_seed{seed}", key)
        hit = _cache.load(path)
        if hit is not None:
            return _cohort_from_arrays(*hit)
    arrays, meta = _generate(int(n_studies), int(image_size), int(seed), merged, subtlety, label_noise, chosen)
    meta["arguments"] = arguments
    if cache:
        _cache.save(path, arrays, meta)
    return _cohort_from_arrays(arrays, meta)


def _rng(seed: int, step: str) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAM[step]])


def sample_state(n, seed, prevalence=None, subtlety=1.0, sites=SITES[:3]) -> dict:
    """Everything that describes the studies before any pixel is drawn: patients, findings,
    their attributes, anatomy, finding geometry and scanner look. Independent of image size.
    (Tests use it to render the same studies with and without a finding.)"""
    prevalence = dict(DEFAULT_PREVALENCE, **(prevalence or {}))
    people = sample_patients(_rng(seed, "patients"), n, sites)
    pid, n_pat = people["patient_of_study"], people["n_patients"]
    present = sample_findings(_rng(seed, "findings"), people, sites, prevalence)
    side, zone, severity, conspicuity, devices, ctr_yes, ctr_no = sample_attributes(
        _rng(seed, "attributes"), present, people, subtlety)
    anatomy = sample_anatomy(_rng(seed, "anatomy"), pid, n_pat, female=people["sex"] == "F")
    geometry = sample_finding_geometry(_rng(seed, "geometry"), anatomy, side, zone, severity, pid, n_pat, ctr_yes)
    zone[:, F["Fracture"]] = np.array([0, 0, 0, 0, 1, 1, 2, 2], np.int8)[geometry["fracture_rib"]]
    site = people["site"]
    look = {key: np.array([getattr(s, key) for s in sites])[site]
            for key in ("gamma", "contrast", "offset", "noise", "blur", "marker")}
    return dict(people=people, present=present, side=side, zone=zone, severity=severity, conspicuity=conspicuity,
                devices_if_present=devices, ctr_if_present=ctr_yes, ctr_if_absent=ctr_no, anatomy=anatomy,
                geometry=geometry, look=look, seed=seed)


def _ctr_and_devices(state):
    """What the present flags imply: the heart's size and the devices actually there."""
    present = state["present"]
    ctr = np.where(present[:, F["Cardiomegaly"]], state["ctr_if_present"], state["ctr_if_absent"])
    devices = state["devices_if_present"] & present[:, [F["Support Devices"]]]
    return ctr.astype(np.float32), devices


def render_state(state: dict, image_size: int):
    """Draw the studies of a state: ``(images uint8 (N, H, W), boxes (N, 9, 4))``."""
    s = state
    ctr, devices = _ctr_and_devices(s)
    noise_seed = int(_rng(s["seed"], "noise").integers(2**62))
    return render(s["anatomy"], s["geometry"], s["present"], s["side"], s["zone"], s["severity"], s["conspicuity"],
                  devices, ctr, s["look"], image_size, noise_seed)


def _generate(n, image_size, seed, prevalence, subtlety, label_noise, sites):
    state = sample_state(n, seed, prevalence, subtlety, sites)
    images, box_array = render_state(state, image_size)
    people, present, side, zone = state["people"], state["present"], state["side"], state["zone"]
    severity, conspicuity = state["severity"], state["conspicuity"]
    ctr, devices = _ctr_and_devices(state)
    geometry, site, pid = state["geometry"], people["site"], people["patient_of_study"]

    hedged = np.zeros((n, len(FINDINGS)), bool)
    hedged[:, :len(PATHOLOGIES)] = present & (conspicuity < HEDGE_BELOW)
    hedged[:, F["Support Devices"]] = False
    hedged[:, F["Cardiomegaly"]] = present[:, F["Cardiomegaly"]] & (ctr < 0.53)
    boxes = _box_dicts(present, side, zone, severity, devices, ctr, geometry, box_array)

    readers = sample_radiologists(_rng(seed, "readers"), site, sites)
    text_rng = random.Random(int(_rng(seed, "reports").integers(2**62)))
    reports = []
    for i in range(n):
        entries = [dict(b, uncertain=bool(hedged[i, F[b["finding"]]])) for b in boxes[i]]
        absent = {name for name in PATHOLOGIES if not present[i, F[name]]}
        reports.append(write_report(entries, absent, RADIOLOGISTS[readers[i]], text_rng, sites[site[i]].portable))

    true_labels = np.zeros((n, len(FINDINGS)), np.uint8)
    true_labels[:, :len(PATHOLOGIES)] = present
    true_labels[:, NO_FINDING] = _no_finding(true_labels)
    labels = true_labels.copy()
    flips = _rng(seed, "label_noise").random((n, len(PATHOLOGIES))) < label_noise
    labels[:, :len(PATHOLOGIES)] ^= flips.astype(np.uint8)
    labels[:, NO_FINDING] = _no_finding(labels)

    arrays = {"images": images, "labels": labels, "true_labels": true_labels,
              "patient_ids": (100000 + pid).astype(np.int64), "study_ids": (1000000 + np.arange(n)).astype(np.int64),
              "age": people["age"], "male": people["sex"] == "M", "site": site.astype(np.int64),
              "radiologist": readers, "labs": sample_labs(_rng(seed, "labs"), present, severity, people),
              "hedged": hedged, "visit": people["visit"].astype(np.int64), "ctr": ctr}
    meta = {"reports": reports, "boxes": boxes, "site_names": [s.name for s in sites], "image_size": image_size,
            "seed": seed, "version": GENERATOR_VERSION}
    return arrays, meta


def _no_finding(labels: np.ndarray) -> np.ndarray:
    """CheXpert's rule: No Finding when no pathology other than Support Devices is present."""
    others = [F[name] for name in PATHOLOGIES if name != "Support Devices"]
    return (labels[:, others].sum(axis=1) == 0).astype(np.uint8)


def _box_dicts(present, side, zone, severity, devices, ctr, G, box_array):
    """Per study, one dict per present pathology: finding, box, laterality, zone, severity (+ a
    few finding-specific details the report grammar uses)."""
    out = []
    for i in range(len(present)):
        study = []
        for j in np.nonzero(present[i])[0]:
            name = PATHOLOGIES[j]
            x0, y0, x1, y1 = (float(x) for x in box_array[i, j])
            words = SEVERITY_WORDS[name]
            entry = {"finding": name, "box": (x0, y0, x1, y1),
                     "laterality": SIDES[side[i, j]] if side[i, j] >= 0 else None,
                     "zone": ZONES[zone[i, j]] if zone[i, j] >= 0 else None,
                     "severity": words[severity[i, j]] if words and severity[i, j] >= 0 else None}
            if name == "Support Devices":
                entry["devices"] = tuple(d for d, on in zip(DEVICE_NAMES, devices[i]) if on)
                if not devices[i, [2, 3, 4]].any():      # only lines and the pacemaker have a side
                    entry["laterality"] = None
            elif name == "Cardiomegaly":
                entry["ctr"] = round(float(ctr[i]), 3)
            elif name == "Fracture":
                entry["rib"] = int(G["fracture_rib"][i]) + 1
                entry["healing"] = bool(G["fracture_healing"][i])
            elif name == "Lung Lesion":
                entry["size_cm"] = round(float(2 * G["nodule_r"][i] * CM_PER_UNIT), 1)
            elif name == "Consolidation":
                entry["air_bronchograms"] = bool(G["cons_bronchus"][i])
            study.append(entry)
        out.append(study)
    return out


_TUPLE_KEYS = ("box", "devices")


def _cohort_from_arrays(arrays: dict, meta: dict) -> Cohort:
    """The one place a Cohort is built, from freshly generated or cached arrays alike, so both
    give bit-identical cohorts."""
    boxes = [[{k: tuple(v) if k in _TUPLE_KEYS else v for k, v in b.items()} for b in study]
             for study in meta["boxes"]]
    images = torch.from_numpy(np.ascontiguousarray(arrays["images"])).unsqueeze(1).float().div_(255.0)
    return Cohort(images=images, reports=list(meta["reports"]),
                  labels=torch.from_numpy(arrays["labels"].astype(np.float32)),
                  true_labels=torch.from_numpy(arrays["true_labels"].astype(np.float32)),
                  boxes=boxes, patient_ids=arrays["patient_ids"], study_ids=arrays["study_ids"],
                  age=arrays["age"].astype(np.float32), sex=np.where(arrays["male"], "M", "F"),
                  site=arrays["site"], site_names=tuple(meta["site_names"]), radiologist=arrays["radiologist"],
                  labs=torch.from_numpy(arrays["labs"].astype(np.float32)), lab_names=LAB_NAMES,
                  image_size=int(meta["image_size"]), seed=int(meta["seed"]), hedged=arrays["hedged"].astype(bool),
                  visit=arrays["visit"], ctr=arrays["ctr"].astype(np.float32))


# ----------------------------------------------------------------------------------------------
# patient-level, stratified splits
# ----------------------------------------------------------------------------------------------

def patient_split(cohort: Cohort, fractions=(0.7, 0.1, 0.2), seed: int = 0) -> dict:
    """Split study indices into train/val/test so that no patient is in two splits (studies of
    one patient are not independent: splitting them leaks) and each split's label prevalence is
    close to the cohort's.

    Stratification is iterative (Sechidis et al., 2011) over patients rather than studies."""
    if (not isinstance(fractions, Sequence) or len(fractions) != 3 or not all(_is_number(f) for f in fractions)
            or not all(f > 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6):
        raise ValueError(f"fractions must be three positive numbers (train, val, test) summing to 1, "
                         f"got {fractions!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    patients, patient_of_study = np.unique(np.asarray(cohort.patient_ids), return_inverse=True)
    if len(patients) < 3:
        raise ValueError(f"patient_split needs at least 3 patients (one per split), the cohort has {len(patients)}")
    labels = cohort.labels.numpy() if isinstance(cohort.labels, torch.Tensor) else np.asarray(cohort.labels)
    _check_split_labels(labels, len(patient_of_study), getattr(cohort, "findings", None))
    _warn_if_patients_unknown(cohort)
    n_pat, n_lab = len(patients), labels.shape[1]
    counts = np.zeros((n_pat, n_lab))
    np.add.at(counts, patient_of_study, labels)
    sizes = np.bincount(patient_of_study, minlength=n_pat).astype(float)

    # Iterative stratification (Sechidis et al. 2011), moving whole patients: take the label with
    # the fewest positive patients left; give each of them to the split that still wants the most
    # of that label (ties: the split that wants the most studies); repeat.
    frac = np.asarray(fractions, float)
    wanted = frac[:, None] * counts.sum(axis=0)[None, :]      # (3, labels) positives each split still wants
    wanted_size = frac * len(labels)
    rng = np.random.default_rng(seed)
    assign = np.full(n_pat, -1, np.int64)
    while (assign < 0).any():
        left = np.nonzero(assign < 0)[0]
        positives = (counts[left] > 0).sum(axis=0)
        if not positives.any():                               # patients without any positive label
            batch, label = rng.permutation(left), None
        else:
            label = int(np.argmin(np.where(positives > 0, positives, np.iinfo(np.int64).max)))
            batch = rng.permutation(left[counts[left, label] > 0])
        for p in batch:
            need = wanted[:, label] if label is not None else wanted_size
            best = np.flatnonzero(need == need.max())
            if len(best) > 1:                                 # tie: the split short of the most studies
                best = best[wanted_size[best] == wanted_size[best].max()]
            s = int(best[0] if len(best) == 1 else rng.choice(best))
            assign[p] = s
            wanted[s] -= counts[p]
            wanted_size[s] -= sizes[p]
    assign = _refine_split(assign, counts, sizes, frac, rng)
    for s in range(3):                                          # tiny cohorts: never leave a split empty
        if not (assign == s).any():
            donor = np.bincount(assign, minlength=3).argmax()
            members = np.nonzero(assign == donor)[0]
            assign[members[np.argmin(sizes[members])]] = s
    study_split = assign[patient_of_study]
    return {name: np.nonzero(study_split == s)[0] for s, name in enumerate(("train", "val", "test"))}


def _check_split_labels(labels: np.ndarray, n: int, names=None) -> None:
    """Labels must be 0/1 (or weights in [0, 1]) for the stratification: a -1 (CheXpert's
    "uncertain") or a NaN would silently skew it, or fail deep inside NumPy."""
    if labels.ndim != 2 or len(labels) != n:
        raise ValueError(f"patient_split needs labels of shape (studies, findings) = ({n}, F), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.number) or labels.dtype == bool:
        labels = labels.astype(float)
    bad = ~np.isfinite(labels) | (labels < 0) | (labels > 1)
    if bad.any():
        study, column = np.argwhere(bad)[0]
        finding = names[column] if names is not None and column < len(names) else f"column {column}"
        raise ValueError(
            f"patient_split needs labels in [0, 1] (1 = present, 0 = absent); study {study} has "
            f"{float(labels[study, column])} for {finding} ({int(bad.sum())} such values in all). Map uncertain labels (-1) to 0 or 1 first "
            "(e.g. labels.clamp(min=0), or 1 for CheXpert's U-Ones), and fill or drop missing (NaN) ones")


def _warn_if_patients_unknown(cohort) -> None:
    """ChestMNIST gives every image its own patient id (MedMNIST dropped NIH's): splitting by those
    ids can put one patient's images on both sides. Its official split is by patient."""
    if tuple(getattr(cohort, "site_names", ())) == ("NIH Clinical Center",):
        warnings.warn("this looks like a ChestMNIST cohort, whose images each carry their own patient id "
                      "(MedMNIST dropped NIH's): patient_split cannot keep a patient's images together. Use its "
                      "official patient-level split instead: medmm_lite.data.real.chestmnist.official_split(cohort) "
                      "(prepare_data does)", RuntimeWarning, stacklevel=3)


def _refine_split(assign, counts, sizes, frac, rng, size_weight=4.0, sweeps=8):
    """Local search after the stratification: move single patients between splits while that
    lowers  sum over splits and labels of (split prevalence - cohort prevalence)^2
          + size_weight * sum over splits of (relative error of the split's study count)^2.
    Whole patients move, so the split stays patient-disjoint."""
    prevalence = counts.sum(axis=0) / sizes.sum()
    goal = frac * sizes.sum()
    cnt = np.stack([counts[assign == s].sum(axis=0) for s in range(3)])
    n = np.array([sizes[assign == s].sum() for s in range(3)])

    def objective(c, m):                     # c: (..., 3, labels), m: (..., 3)
        with np.errstate(invalid="ignore", divide="ignore"):
            dev = c / m[..., None] - prevalence
        dev = np.where(m[..., None] > 0, dev, 1.0)          # an empty split is as bad as it gets
        return (dev ** 2).sum(axis=(-1, -2)) + size_weight * (((m - goal) / goal) ** 2).sum(axis=-1)

    current = objective(cnt, n)
    for _ in range(sweeps):
        moved = False
        for p in rng.permutation(len(assign)):
            s = assign[p]
            targets = [t for t in range(3) if t != s]
            c = np.repeat(cnt[None], 2, axis=0)
            m = np.repeat(n[None], 2, axis=0)
            for k, t in enumerate(targets):
                c[k, s] -= counts[p]
                c[k, t] += counts[p]
                m[k, s] -= sizes[p]
                m[k, t] += sizes[p]
            scores = objective(c, m)
            k = int(np.argmin(scores))
            if scores[k] < current - 1e-12:
                assign[p], cnt, n, current, moved = targets[k], c[k], m[k], scores[k], True
        if not moved:
            break
    return assign


# ----------------------------------------------------------------------------------------------
# torch
# ----------------------------------------------------------------------------------------------

class CohortDataset(torch.utils.data.Dataset):
    """A torch Dataset over (some of) a cohort's studies. Items are dicts with ``image``
    (1, H, W), ``report``, ``labels``, ``boxes``, ``index`` (into the cohort), ``site``, ``labs``.

    The data is already in memory, so batching one item at a time would waste most of the
    time in Python: ``__getitems__`` returns a whole batch as one dict of stacked tensors.
    Use ``dataset.loader(batch_size)`` or ``DataLoader(dataset, batch_size, collate_fn=CohortDataset.collate)``
    (torch's default collate does not expect an already-batched dict).
    """

    def __init__(self, cohort: Cohort, indices=None, transform=None):
        if not isinstance(cohort, Cohort):
            raise ValueError(f"cohort must be a Cohort (from generate_cohort), got {type(cohort).__name__}")
        n = len(cohort)
        if indices is None:
            indices = np.arange(n)
        elif isinstance(indices, torch.Tensor):
            indices = indices.cpu().numpy()
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.nonzero(indices)[0]
        if indices.ndim != 1 or (len(indices) and (indices.min() < -n or indices.max() >= n)):
            raise ValueError(f"indices must be a 1-D array of study indices in [0, {n}), got shape {indices.shape}")
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable (image tensor -> image tensor) or None, got {transform!r}")
        self.cohort, self.indices, self.transform = cohort, indices.astype(np.int64) % max(n, 1), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        j = int(self.indices[i])
        c = self.cohort
        image = c.images[j]
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "report": c.reports[j], "labels": c.labels[j], "boxes": c.boxes[j],
                "index": j, "site": int(c.site[j]), "labs": c.labs[j]}

    def __getitems__(self, items) -> dict:
        """A whole batch at once: stacked tensors and a list of reports."""
        rows = self.indices[np.asarray(items, dtype=np.int64)]
        c = self.cohort
        t = torch.from_numpy(rows)
        images = c.images[t]
        if self.transform is not None:
            images = torch.stack([self.transform(img) for img in images])
        return {"image": images, "report": [c.reports[j] for j in rows], "labels": c.labels[t],
                "boxes": [c.boxes[j] for j in rows], "index": t, "site": torch.from_numpy(c.site[rows]),
                "labs": c.labs[t]}

    @staticmethod
    def collate(batch):
        """collate_fn for DataLoader: passes a batched dict through; stacks a list of items."""
        if isinstance(batch, dict):
            return batch
        out = {}
        for key in batch[0]:
            values = [b[key] for b in batch]
            if isinstance(values[0], torch.Tensor):
                out[key] = torch.stack(values)
            elif isinstance(values[0], int):
                out[key] = torch.tensor(values)
            else:
                out[key] = values
        return out

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
               num_workers: int = 0) -> torch.utils.data.DataLoader:
        """A DataLoader that batches with ``__getitems__`` (shuffled reproducibly by `seed`)."""
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return torch.utils.data.DataLoader(self, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                                           num_workers=num_workers, collate_fn=CohortDataset.collate,
                                           generator=generator)
