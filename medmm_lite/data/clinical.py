"""SynthCXR's clinical model: who the patients are and what they have.

The renderer (synthcxr.py) draws what it is told; this module decides it, with
the dependencies a clinician would expect, so that the cohort has the structure
the lessons measure:

* patients with 1-4 studies each, an age, a sex, one site;
* findings that co-occur: heart failure (Cardiomegaly) drives Edema, Edema and
  Cardiomegaly drive Pleural Effusion, effusions compress the lung (Atelectasis),
  sick and old patients carry Support Devices, lines and broken ribs cause
  Pneumothorax;
* findings that persist: a patient's nodule, big heart or old fracture is there
  at every visit (a patient-level random effect per finding);
* sites that differ in case mix (the ICU has the devices, the cancer centre the
  nodules) and in scanner look (contrast, noise, blur, burned-in markers);
* labs that follow the findings: BNP with Edema/Cardiomegaly, WBC and
  temperature with Consolidation, SpO2 down with Pneumothorax, Consolidation
  and Edema.

Each finding is a logistic model ``logit = intercept + effects``; the intercept
is solved for (by bisection) so that the cohort's prevalence matches the one
asked for, whatever the effects are.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .findings import LAB_NAMES, PATHOLOGIES
from .synthcxr import F

DEFAULT_PREVALENCE = {
    # CheXpert-like ordering, raised so that every finding has enough positives to learn from
    "Cardiomegaly": 0.20,
    "Pleural Effusion": 0.25,
    "Pneumothorax": 0.10,
    "Consolidation": 0.15,
    "Lung Lesion": 0.12,
    "Atelectasis": 0.20,
    "Edema": 0.15,
    "Support Devices": 0.30,
    "Fracture": 0.08,
}


@dataclass(frozen=True)
class Site:
    """One hospital: its share of patients, its case mix and its scanner's look."""
    name: str
    weight: float                     # relative number of patients
    age_mean: float
    case_mix: dict = field(default_factory=dict)   # finding -> shift of its logit
    portable: bool = False            # bedside AP films (reports say so)
    gamma: float = 1.0                # scanner look: tone curve,
    contrast: float = 1.0             # contrast around mid-grey,
    offset: float = 0.0               # brightness,
    noise: float = 0.015              # noise std (of [0, 1] intensities),
    blur: float = 0.3                 # blur std in pixels at 64 px (detector resolution),
    marker: int = -1                  # burned-in marker style (synthcxr.MARKER_STYLES), -1 none
    radiologists: tuple = (0, 1)      # who usually reads here


SITES = (
    Site("St. Aurelia General", 1.0, 58.0, {}, False, 1.0, 1.0, 0.0, 0.015, 0.3, 0, (0, 1, 2)),
    Site("Northgate ICU", 0.8, 66.0,
         {"Support Devices": 1.6, "Edema": 0.6, "Pleural Effusion": 0.6, "Atelectasis": 0.6, "Pneumothorax": 0.7,
          "Consolidation": 0.5, "Lung Lesion": -0.4, "Fracture": -0.2},
         True, 1.15, 0.85, 0.05, 0.035, 0.7, 1, (1, 3)),
    Site("Lakeview Clinic", 0.9, 50.0,
         {"Support Devices": -1.3, "Edema": -0.6, "Pleural Effusion": -0.5, "Pneumothorax": -0.5,
          "Atelectasis": -0.4, "Consolidation": -0.2, "Lung Lesion": 0.3},
         False, 0.85, 1.1, -0.03, 0.01, 0.0, 2, (0, 4)),
    Site("Harbor Cancer Centre", 0.6, 63.0,
         {"Lung Lesion": 1.4, "Pleural Effusion": 0.5, "Support Devices": 0.4, "Consolidation": 0.2},
         False, 1.0, 0.95, 0.02, 0.02, 1.0, 3, (2, 4)),
    Site("Ridgeway Community", 0.7, 68.0,
         {"Fracture": 0.8, "Cardiomegaly": 0.4, "Edema": 0.2, "Support Devices": -0.3},
         False, 1.1, 1.05, 0.04, 0.025, 0.45, -1, (3, 0)),
)
SITE_NAMES = tuple(site.name for site in SITES)
N_RADIOLOGISTS = 5

STUDIES_PER_PATIENT = (0.45, 0.30, 0.15, 0.10)      # P(1), P(2), P(3), P(4) studies

# How each finding depends on the patient and on findings drawn before it (logit shifts),
# in the order they are drawn. "age" is (age - 60) / 17; "frailty" a latent N(0, 1).
FINDING_ORDER = ("Cardiomegaly", "Edema", "Pleural Effusion", "Consolidation", "Atelectasis", "Fracture",
                 "Support Devices", "Pneumothorax", "Lung Lesion")
EFFECTS = {
    "Cardiomegaly": {"age": 0.8, "frailty": 0.5},
    "Edema": {"Cardiomegaly": 2.0, "age": 0.3, "frailty": 0.5},
    "Pleural Effusion": {"Edema": 1.5, "Cardiomegaly": 0.8, "frailty": 0.4},
    "Consolidation": {"frailty": 0.6, "age": 0.2},
    "Atelectasis": {"Pleural Effusion": 0.9, "Consolidation": 0.3, "frailty": 0.3},
    "Fracture": {"age": 0.5},
    "Support Devices": {"frailty": 0.9, "age": 0.5, "Edema": 0.8, "Consolidation": 0.3},
    "Pneumothorax": {"Support Devices": 0.8, "Fracture": 1.0, "age": -0.3},
    "Lung Lesion": {"age": 0.6},
}
# Patient-level random effect (std of the logit): chronic findings persist across visits.
PERSISTENCE = {"Cardiomegaly": 2.0, "Lung Lesion": 3.0, "Fracture": 2.5, "Support Devices": 1.2, "Edema": 0.8,
               "Pleural Effusion": 0.8, "Consolidation": 0.5, "Atelectasis": 0.5, "Pneumothorax": 0.5}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def calibrated_intercept(eta: np.ndarray, prevalence: float) -> float:
    """The intercept b with mean(sigmoid(b + eta)) == prevalence (bisection; the mean is monotone in b)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _sigmoid(mid + eta).mean() < prevalence:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _draw(rng, eta, prevalence):
    u = rng.random(len(eta))          # drawn even for 0 / 1 so the random stream never shifts
    if prevalence <= 0.0:
        return np.zeros(len(eta), bool)
    if prevalence >= 1.0:
        return np.ones(len(eta), bool)
    return u < _sigmoid(calibrated_intercept(eta, prevalence) + eta)


def sample_patients(rng: np.random.Generator, n_studies: int, sites: tuple):
    """Patients, their studies and demographics. Studies of a patient are consecutive."""
    counts = rng.choice(np.arange(1, 5), size=n_studies, p=STUDIES_PER_PATIENT)
    n_patients = int(np.searchsorted(np.cumsum(counts), n_studies) + 1)
    counts = counts[:n_patients]
    counts[-1] -= counts.sum() - n_studies                 # the last patient is cut to fit
    patient_of_study = np.repeat(np.arange(n_patients), counts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    visit = np.arange(n_studies) - first[patient_of_study]

    weights = np.array([s.weight for s in sites])
    site_of_patient = rng.choice(len(sites), size=n_patients, p=weights / weights.sum())
    sex_of_patient = np.where(rng.random(n_patients) < 0.5, "F", "M")
    age_mean = np.array([s.age_mean for s in sites])[site_of_patient]
    age0 = np.clip(rng.normal(age_mean, 16.0), 18.0, 94.0)
    gaps = rng.uniform(0.02, 0.6, n_studies) * (visit > 0)     # years between visits
    age = age0[patient_of_study] + _cumsum_within(gaps, patient_of_study)
    frailty = rng.normal(0.0, 1.0, n_patients)[patient_of_study] + rng.normal(0.0, 0.5, n_studies)
    return dict(patient_of_study=patient_of_study, n_patients=n_patients, visit=visit,
                site=site_of_patient[patient_of_study], sex=sex_of_patient[patient_of_study],
                age=np.minimum(age, 95.0).astype(np.float32), frailty=frailty.astype(np.float32))


def _cumsum_within(x, group):
    """Cumulative sum of x restarting at each group (groups are consecutive runs)."""
    total = np.cumsum(x)
    starts = np.concatenate([[True], group[1:] != group[:-1]])
    offset = np.maximum.accumulate(np.where(starts, total - x, 0.0))
    return total - offset


def sample_findings(rng: np.random.Generator, people: dict, sites: tuple, prevalence: dict) -> np.ndarray:
    """(N, 9) bool: which pathologies each study has (the truth the images are drawn from)."""
    n = len(people["site"])
    pid = people["patient_of_study"]
    covariates = {"age": (people["age"] - 60.0) / 17.0, "frailty": people["frailty"]}
    present = np.zeros((n, len(PATHOLOGIES)), bool)
    site_shift = {name: np.array([s.case_mix.get(name, 0.0) for s in sites])[people["site"]] for name in PATHOLOGIES}
    for name in FINDING_ORDER:
        eta = site_shift[name] + rng.normal(0.0, PERSISTENCE[name], people["n_patients"])[pid]
        for cause, weight in EFFECTS[name].items():
            x = covariates[cause] if cause in covariates else present[:, F[cause]]
            eta = eta + weight * x
        present[:, F[name]] = _draw(rng, eta, prevalence[name])
    return present


def sample_attributes(rng: np.random.Generator, present: np.ndarray, people: dict, subtlety: float):
    """Side, zone, severity and conspicuity of every pathology, the devices, and the
    cardiothoracic ratio with and without Cardiomegaly: all drawn also where the finding is
    absent (then unused), so a test can switch a finding on and see the same study with it. Codes: side 0 right,
    1 left, 2 bilateral; zone 0 upper, 1 middle, 2 lower; -1 where a field does not apply."""
    n, k = present.shape
    pid, n_pat = people["patient_of_study"], people["n_patients"]
    side = np.full((n, k), -1, np.int8)
    zone = np.full((n, k), -1, np.int8)
    severity = np.full((n, k), -1, np.int8)
    m = 2.0 ** (1.0 - subtlety)                            # subtlety 1 -> 1, 2 -> 0.5, -> 0: 2
    conspicuity = (rng.uniform(0.4, 1.1, (n, k)) * m).astype(np.float32)   # how visible each finding is

    def three(p, size=n):
        return rng.choice(3, size=size, p=p).astype(np.int8)

    edema = present[:, F["Edema"]]
    # pleural effusion: bilateral in heart failure, otherwise mostly one-sided; always at the base
    c = F["Pleural Effusion"]
    side[:, c] = np.where(edema, three((0.2, 0.15, 0.65)), three((0.45, 0.3, 0.25)))
    zone[:, c] = 2
    severity[:, c] = three((0.45, 0.35, 0.2))
    c = F["Pneumothorax"]
    side[:, c] = rng.integers(0, 2, n)
    severity[:, c] = three((0.5, 0.3, 0.2))
    zone[:, c] = np.where(severity[:, c] < 2, 0, -1)       # small/moderate are apical; large is the whole side
    c = F["Consolidation"]
    side[:, c] = (rng.random(n) < 0.45).astype(np.int8)
    zone[:, c] = three((0.25, 0.3, 0.45))
    severity[:, c] = three((0.35, 0.4, 0.25))
    c = F["Lung Lesion"]                                   # the same nodule at every visit
    side[:, c] = (rng.random(n_pat) < 0.45).astype(np.int8)[pid]
    zone[:, c] = three((0.45, 0.35, 0.2), n_pat)[pid]
    severity[:, c] = three((0.4, 0.4, 0.2), n_pat)[pid]
    c = F["Atelectasis"]
    side[:, c] = (rng.random(n) < 0.5).astype(np.int8)
    zone[:, c] = 2
    severity[:, c] = three((0.5, 0.35, 0.15))
    c = F["Edema"]
    side[:, c] = 2
    severity[:, c] = three((0.4, 0.35, 0.25))
    c = F["Fracture"]
    side[:, c] = (rng.random(n_pat) < 0.5).astype(np.int8)[pid]

    # support devices: ICU-type lines and tubes, or a pacemaker; sicker patients carry more
    c = F["Support Devices"]
    frail = people["frailty"]
    devices = np.zeros((n, 5), bool)                        # DEVICE_NAMES order
    p_line = _sigmoid(-0.3 + 0.8 * frail + 1.0 * edema)
    devices[:, 0] = rng.random(n) < 0.45 * p_line + 0.05         # endotracheal tube
    devices[:, 1] = rng.random(n) < 0.5 * devices[:, 0] + 0.1    # nasogastric tube, mostly with an ETT
    devices[:, 2] = rng.random(n) < 0.35                         # central venous catheter
    devices[:, 3] = rng.random(n) < 0.2                          # PICC line
    pacer = rng.random(n_pat) < _sigmoid(-2.0 + 0.05 * (people["age"][np.unique(pid, return_index=True)[1]] - 60))
    devices[:, 4] = pacer[pid]
    none = ~devices.any(axis=1)
    devices[none, rng.integers(0, 5, n)[none]] = True            # a study with devices has at least one
    side[:, c] = np.where(devices[:, 4], (rng.random(n) < 0.8), (rng.random(n) < 0.35)).astype(np.int8)
    conspicuity[:, c] = 1.0                                      # metal is never subtle

    # cardiomegaly: a cardiothoracic ratio; the heart is the patient's, enlarged when present
    c = F["Cardiomegaly"]
    normal_ctr = rng.uniform(0.40, 0.49, n_pat)[pid] + rng.normal(0.0, 0.005, n)
    excess = rng.uniform(0.01, 0.13, n_pat)[pid] + rng.normal(0.0, 0.008, n)
    ctr_if_present = (0.5 + np.clip(excess * m, 0.008, 0.2)).astype(np.float32)
    ctr_if_absent = np.minimum(normal_ctr, 0.495).astype(np.float32)
    severity[:, c] = np.digitize(ctr_if_present, [0.55, 0.6]).astype(np.int8)
    conspicuity[:, c] = np.clip((ctr_if_present - 0.5) / 0.05, 0.3, 1.5).astype(np.float32)
    return side, zone, severity, conspicuity, devices, ctr_if_present, ctr_if_absent


def sample_labs(rng: np.random.Generator, present: np.ndarray, severity: np.ndarray, people: dict) -> np.ndarray:
    """(N, 4) labs in clinical units, in LAB_NAMES order: BNP (pg/mL), WBC (10^9/L),
    Temperature (deg C), SpO2 (%). Each follows the findings, with noise."""
    n = len(present)
    age_z = (people["age"] - 60.0) / 17.0
    has = {name: present[:, F[name]].astype(np.float64) for name in PATHOLOGIES}
    edema_grade = has["Edema"] * (1.0 + severity[:, F["Edema"]].clip(0))
    ptx_grade = has["Pneumothorax"] * (1.0 + severity[:, F["Pneumothorax"]].clip(0))
    bnp = np.exp(np.log(60.0) + 0.4 * age_z + 0.9 * edema_grade + 1.0 * has["Cardiomegaly"]
                 + 0.3 * has["Pleural Effusion"] + rng.normal(0.0, 0.6, n))
    wbc = 7.0 + 5.0 * has["Consolidation"] + 0.6 * people["frailty"] + rng.normal(0.0, 1.8, n)
    temp = 36.8 + 1.2 * has["Consolidation"] + rng.normal(0.0, 0.35, n)
    spo2 = (97.5 - 1.8 * ptx_grade - 4.0 * has["Consolidation"] - 1.8 * edema_grade - 0.5 * people["frailty"]
            + rng.normal(0.0, 1.2, n))
    labs = np.stack([np.clip(bnp, 5.0, 35000.0), np.clip(wbc, 1.5, 40.0), np.clip(temp, 35.0, 41.5),
                     np.clip(spo2, 70.0, 100.0)], axis=1)
    assert labs.shape[1] == len(LAB_NAMES)
    return labs.astype(np.float32)


def sample_radiologists(rng: np.random.Generator, site: np.ndarray, sites: tuple) -> np.ndarray:
    """Who reads each study: mostly one of the site's own radiologists, sometimes anyone."""
    n = len(site)
    own = np.array([rng.choice(s.radiologists, n) for s in sites])[site, np.arange(n)]
    anyone = rng.integers(0, N_RADIOLOGISTS, n)
    return np.where(rng.random(n) < 0.85, own, anyone).astype(np.int64)
