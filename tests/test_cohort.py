"""SynthCXR cohort and MRI phantoms: determinism, structure, caching, splits, what the
images show and what the reports say. Small cohorts at 32 px keep this file fast."""
import re
import warnings

import numpy as np
import pytest
import torch

from medmm_lite.data import (FINDINGS, LAB_NAMES, MENTION_PHRASES, PATHOLOGIES, SITE_NAMES, Cohort, CohortDataset,
                             generate_cohort, generate_mri_phantoms, patient_split)
from medmm_lite.data import cohort as cohort_module
from medmm_lite.data.clinical import SITES
from medmm_lite.data.cohort import render_state, sample_state
from medmm_lite.data.reports import NO_FINDING_IMPRESSIONS, UNCERTAINTY_CUES

N, SIZE = 240, 32
NF = FINDINGS.index("No Finding")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own cache directory: never the user's."""
    monkeypatch.setenv("MEDMM_DATA", str(tmp_path / "medmm"))


@pytest.fixture(scope="module")
def cohort():
    return generate_cohort(N, SIZE, seed=0, cache=False)


@pytest.fixture(scope="module")
def big_cohort():
    return generate_cohort(800, SIZE, seed=1, cache=False, sites=5)


def _same(a: Cohort, b: Cohort) -> bool:
    return (torch.equal(a.images, b.images) and a.reports == b.reports and torch.equal(a.labels, b.labels)
            and torch.equal(a.true_labels, b.true_labels) and a.boxes == b.boxes
            and np.array_equal(a.patient_ids, b.patient_ids) and np.array_equal(a.age, b.age)
            and np.array_equal(a.sex, b.sex) and np.array_equal(a.site, b.site) and torch.equal(a.labs, b.labs)
            and np.array_equal(a.radiologist, b.radiologist) and a.site_names == b.site_names)


# ---------------------------------------------------------------------------------------------
# determinism, structure
# ---------------------------------------------------------------------------------------------

def test_same_seed_same_cohort_different_seed_different(cohort):
    again = generate_cohort(N, SIZE, seed=0, cache=False)
    assert _same(cohort, again)
    other = generate_cohort(N, SIZE, seed=1, cache=False)
    assert not torch.equal(cohort.images, other.images)
    assert cohort.reports != other.reports
    assert not torch.equal(cohort.labels, other.labels)


def test_same_seed_draws_the_same_studies_at_every_size(cohort):
    bigger = generate_cohort(N, 48, seed=0, cache=False)
    assert bigger.images.shape == (N, 1, 48, 48)
    assert bigger.reports == cohort.reports and torch.equal(bigger.labels, cohort.labels)
    # same anatomy: the 48 px image, shrunk to 32 px, is close to the 32 px one
    shrunk = torch.nn.functional.interpolate(bigger.images, size=SIZE, mode="area")
    assert (shrunk - cohort.images).abs().mean() < 0.05


def test_shapes_dtypes_and_ranges(cohort):
    c = cohort
    assert len(c) == N and c.image_size == SIZE and c.seed == 0
    assert c.images.shape == (N, 1, SIZE, SIZE) and c.images.dtype == torch.float32
    assert 0.0 <= c.images.min() and c.images.max() <= 1.0 and c.images.std() > 0.1
    for labels in (c.labels, c.true_labels):
        assert labels.shape == (N, len(FINDINGS)) and labels.dtype == torch.float32
        assert set(labels.unique().tolist()) <= {0.0, 1.0}
        others = [FINDINGS.index(f) for f in PATHOLOGIES if f != "Support Devices"]
        assert torch.equal(labels[:, NF], (labels[:, others].sum(1) == 0).float())   # CheXpert's No Finding rule
    assert len(c.reports) == N and all(r.startswith("FINDINGS: ") and " IMPRESSION: " in r for r in c.reports)
    assert c.patient_ids.dtype == np.int64 and c.study_ids.dtype == np.int64 and c.site.dtype == np.int64
    assert len(np.unique(c.study_ids)) == N
    counts = np.unique(c.patient_ids, return_counts=True)[1]
    assert counts.max() <= 4 and counts.mean() > 1.3                     # several studies per patient
    assert c.age.dtype == np.float32 and 18 <= c.age.min() and c.age.max() <= 95
    assert set(np.unique(c.sex)) == {"F", "M"}
    assert c.site_names == SITE_NAMES[:3] and set(np.unique(c.site)) == {0, 1, 2}
    assert c.radiologist.dtype == np.int64 and c.radiologist.min() >= 0 and c.radiologist.max() < 5
    assert c.labs.shape == (N, len(LAB_NAMES)) and c.labs.dtype == torch.float32 and c.lab_names == LAB_NAMES
    bnp, wbc, temp, spo2 = c.labs.T
    assert bnp.min() >= 5 and 1.5 <= wbc.min() and 35 <= temp.min() and temp.max() <= 41.5 and spo2.max() <= 100
    # the patient's sex and site never change between studies
    for pid in np.unique(c.patient_ids)[:50]:
        at = c.patient_ids == pid
        assert len(set(c.sex[at])) == 1 and len(set(c.site[at])) == 1


def test_boxes_describe_exactly_the_present_findings(cohort):
    severities = {"small", "moderate", "large", "mild", "severe", None}
    for i in range(N):
        names = [b["finding"] for b in cohort.boxes[i]]
        truth = [f for j, f in enumerate(PATHOLOGIES) if cohort.true_labels[i, j] == 1]
        assert sorted(names) == sorted(truth)
        for b in cohort.boxes[i]:
            x0, y0, x1, y1 = b["box"]
            assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0, b
            assert b["laterality"] in {"left", "right", "bilateral", None}
            assert b["zone"] in {"upper", "middle", "lower", None}
            assert b["severity"] in severities
        if "Lung Lesion" in names:                                     # a nodule is small and local
            x0, y0, x1, y1 = next(b["box"] for b in cohort.boxes[i] if b["finding"] == "Lung Lesion")
            assert (x1 - x0) * (y1 - y0) < 0.03


def test_subset_keeps_everything_aligned(cohort):
    idx = np.array([5, 0, 17, 17, 3])
    s = cohort.subset(idx)
    assert len(s) == 5 and torch.equal(s.images, cohort.images[idx]) and s.reports[2] == cohort.reports[17]
    assert s.boxes[0] == cohort.boxes[5] and s.patient_ids[3] == cohort.patient_ids[17]
    assert torch.equal(s.labs, cohort.labs[idx]) and s.site_names == cohort.site_names
    mask = np.zeros(N, bool)
    mask[:10] = True
    assert len(cohort.subset(mask)) == 10 and len(cohort.subset(torch.arange(4))) == 4


def test_summary_and_card(cohort):
    s = cohort.summary()
    assert s["studies"] == N and s["patients"] == len(np.unique(cohort.patient_ids))
    for j, f in enumerate(FINDINGS):
        assert s["prevalence"][f] == pytest.approx(cohort.labels[:, j].mean().item(), abs=1e-3)
    assert sum(v["studies"] for v in s["sites"].values()) == N
    card = cohort.card()
    assert "Cardiomegaly" in card and SITE_NAMES[0] in card and str(N) in card
    frame = cohort.label_frame()
    assert len(frame["study_id"]) == N and frame["Edema"].sum() == cohort.labels[:, FINDINGS.index("Edema")].sum()


# ---------------------------------------------------------------------------------------------
# bad input: a ValueError that names the argument
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, argument", [
    (dict(n_studies=0), "n_studies"),
    (dict(n_studies=-5), "n_studies"),
    (dict(n_studies=10.0), "n_studies"),
    (dict(n_studies=True), "n_studies"),
    (dict(image_size=16), "image_size"),
    (dict(image_size=4096), "image_size"),
    (dict(image_size=64.0), "image_size"),
    (dict(seed=-1), "seed"),
    (dict(prevalence={"Pneumonia": 0.2}), "Pneumonia"),
    (dict(prevalence={"No Finding": 0.2}), "No Finding"),
    (dict(prevalence={"Edema": 1.5}), "prevalence"),
    (dict(prevalence={"Edema": -0.1}), "prevalence"),
    (dict(prevalence={"Edema": float("nan")}), "prevalence"),
    (dict(prevalence=[0.1]), "prevalence"),
    (dict(subtlety=0.0), "subtlety"),
    (dict(subtlety=2.5), "subtlety"),
    (dict(label_noise=0.5), "label_noise"),
    (dict(label_noise=-0.1), "label_noise"),
    (dict(sites=0), "sites"),
    (dict(sites=len(SITE_NAMES) + 1), "sites"),
    (dict(sites=["Nowhere Hospital"]), "sites"),
    (dict(sites=[SITE_NAMES[0], SITE_NAMES[0]]), "sites"),
    (dict(cache="yes"), "cache"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, argument):
    args = dict(n_studies=20, image_size=SIZE, seed=0, cache=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=re.escape(argument)):
        generate_cohort(args.pop("n_studies"), **args)


def test_unknown_prevalence_key_lists_the_findings():
    with pytest.raises(ValueError) as err:
        generate_cohort(20, SIZE, prevalence={"Pneumonia": 0.2}, cache=False)
    assert all(f in str(err.value) for f in FINDINGS)


# ---------------------------------------------------------------------------------------------
# knobs
# ---------------------------------------------------------------------------------------------

def test_prevalence_override_is_honoured():
    c = generate_cohort(300, SIZE, seed=2, cache=False,
                        prevalence={"Pneumothorax": 0.0, "Lung Lesion": 1.0, "Edema": 0.5})
    col = {f: c.true_labels[:, j] for j, f in enumerate(FINDINGS)}
    assert col["Pneumothorax"].sum() == 0 and col["Lung Lesion"].min() == 1
    assert abs(col["Edema"].mean().item() - 0.5) < 0.08
    assert col["No Finding"].sum() == 0                    # everyone has a nodule
    assert all(_read(r).get("Pneumothorax", 0) == 0 for r in c.reports)


def test_label_noise_flips_labels_after_the_report(cohort):
    noisy = generate_cohort(N, SIZE, seed=0, cache=False, label_noise=0.2)
    assert torch.equal(noisy.true_labels, cohort.true_labels)
    assert torch.equal(noisy.images, cohort.images) and noisy.reports == cohort.reports   # written before noise
    flipped = (noisy.labels[:, :NF] != noisy.true_labels[:, :NF]).float().mean().item()
    assert 0.15 < flipped < 0.25
    others = [FINDINGS.index(f) for f in PATHOLOGIES if f != "Support Devices"]
    assert torch.equal(noisy.labels[:, NF], (noisy.labels[:, others].sum(1) == 0).float())


def test_subtlety_makes_findings_fainter_and_reports_hedge_more():
    state = {s: sample_state(150, 0, subtlety=s) for s in (0.5, 2.0)}
    for s in state.values():
        s["present"][:] = False
        s["present"][:, PATHOLOGIES.index("Consolidation")] = True
    clean = sample_state(150, 0, subtlety=1.0)
    clean["present"][:] = False
    base, _ = render_state(clean, SIZE)
    effect = {k: np.abs(render_state(s, SIZE)[0].astype(float) - base).mean() for k, s in state.items()}
    assert effect[2.0] < 0.6 * effect[0.5]
    faint = generate_cohort(200, SIZE, seed=0, cache=False, subtlety=2.0)
    plain = generate_cohort(200, SIZE, seed=0, cache=False, subtlety=1.0)
    assert faint.hedged.sum() > 2 * plain.hedged.sum()


def test_sites_select_names_and_differ_in_case_mix_and_look(big_cohort):
    one = generate_cohort(30, SIZE, seed=0, cache=False, sites=1)
    assert one.site_names == SITE_NAMES[:1] and set(one.site) == {0}
    named = generate_cohort(30, SIZE, seed=0, cache=False, sites=["Northgate ICU", "Lakeview Clinic"])
    assert named.site_names == ("Northgate ICU", "Lakeview Clinic") and set(named.site) <= {0, 1}
    c = big_cohort
    devices = c.true_labels[:, FINDINGS.index("Support Devices")].numpy()
    icu, clinic = SITE_NAMES.index("Northgate ICU"), SITE_NAMES.index("Lakeview Clinic")
    assert devices[c.site == icu].mean() > devices[c.site == clinic].mean() + 0.2
    # scanner look: a few global image statistics tell the site (chance would be 1 in 5)
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    x = c.images[:, 0]
    hf = (x[:, :, 1:] - x[:, :, :-1]).abs().mean(dim=(1, 2))
    corners = torch.stack([x[:, :4, :4].mean((1, 2)), x[:, :4, -4:].mean((1, 2)), x[:, -4:, :4].mean((1, 2)),
                           x[:, -4:, -4:].mean((1, 2))], 1)
    stats = torch.cat([x.mean((1, 2))[:, None], x.std((1, 2))[:, None], hf[:, None], corners], 1).numpy()
    stats = (stats - stats.mean(0)) / stats.std(0)
    assert cross_val_score(LogisticRegression(max_iter=1000), stats, c.site, cv=3).mean() > 0.6


def test_findings_co_occur_and_labs_follow_them(big_cohort):
    c = big_cohort
    has = {f: c.true_labels[:, j].numpy() == 1 for j, f in enumerate(FINDINGS)}
    assert has["Edema"][has["Cardiomegaly"]].mean() > 2 * has["Edema"][~has["Cardiomegaly"]].mean()
    assert has["Pleural Effusion"][has["Edema"]].mean() > 1.5 * has["Pleural Effusion"][~has["Edema"]].mean()
    bnp, wbc, temp, spo2 = (c.labs[:, k].numpy() for k in range(4))
    assert np.median(bnp[has["Edema"]]) > 2 * np.median(bnp[~has["Edema"]])
    assert wbc[has["Consolidation"]].mean() > wbc[~has["Consolidation"]].mean() + 2
    assert temp[has["Consolidation"]].mean() > temp[~has["Consolidation"]].mean() + 0.5
    assert spo2[has["Pneumothorax"]].mean() < spo2[~has["Pneumothorax"]].mean() - 1
    # chronic findings persist: a patient's nodule is there at most of their other visits
    lesion_pat = np.unique(c.patient_ids[has["Lung Lesion"]])
    repeat = np.isin(c.patient_ids, lesion_pat)
    assert has["Lung Lesion"][repeat].mean() > 0.6


# ---------------------------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------------------------

def _cache_files(tmp_path):
    return sorted((tmp_path / "medmm" / "cohorts").glob("*.npz"))


def test_cache_hit_returns_identical_data_without_regenerating(tmp_path, monkeypatch):
    first = generate_cohort(60, SIZE, seed=3, cache=True)
    assert _same(first, generate_cohort(60, SIZE, seed=3, cache=False))
    files = _cache_files(tmp_path)
    assert len(files) == 1
    monkeypatch.setattr(cohort_module, "_generate", lambda *a, **k: pytest.fail("regenerated despite a cache hit"))
    second = generate_cohort(60, SIZE, seed=3, cache=True)
    assert _same(first, second) and np.array_equal(first.hedged, second.hedged)
    assert np.array_equal(first.ctr, second.ctr) and np.array_equal(first.visit, second.visit)


def test_cache_key_covers_every_argument(tmp_path):
    generate_cohort(40, SIZE, seed=3)
    generate_cohort(40, SIZE, seed=3, label_noise=0.1)
    generate_cohort(40, SIZE, seed=3, prevalence={"Edema": 0.3})
    generate_cohort(40, SIZE, seed=3, sites=2)
    assert len(_cache_files(tmp_path)) == 4


@pytest.mark.parametrize("damage", ["truncate", "flip_bytes", "garbage"])
def test_damaged_cache_file_warns_and_regenerates(tmp_path, damage):
    first = generate_cohort(60, SIZE, seed=4, cache=True)
    (path,) = _cache_files(tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip_bytes":
        for k in range(len(data) // 3, len(data) // 3 + 16):      # inside the image array
            data[k] ^= 0xFF
    else:
        data = bytearray(b"not a zip file at all")
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match=re.escape(path.name)):
        second = generate_cohort(60, SIZE, seed=4, cache=True)
    assert _same(first, second)
    with warnings.catch_warnings():                                  # the file was rewritten whole
        warnings.simplefilter("error")
        assert _same(first, generate_cohort(60, SIZE, seed=4, cache=True))


def test_checksum_catches_damage_that_the_zip_format_misses(tmp_path):
    """Rewrite one array consistently (valid zip, valid npy) but not its checksum: still caught."""
    import zipfile

    generate_cohort(30, SIZE, seed=5, cache=True)
    (path,) = _cache_files(tmp_path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["labels"] = 1 - arrays["labels"]
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    assert zipfile.is_zipfile(path)
    with pytest.warns(RuntimeWarning, match="checksum"):
        c = generate_cohort(30, SIZE, seed=5, cache=True)
    assert torch.equal(c.labels, generate_cohort(30, SIZE, seed=5, cache=False).labels)


# ---------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------

def test_patient_split_is_disjoint_complete_and_stratified(big_cohort):
    c = big_cohort
    split = patient_split(c, seed=0)
    assert set(split) == {"train", "val", "test"}
    allidx = np.concatenate(list(split.values()))
    assert len(allidx) == len(c) and len(np.unique(allidx)) == len(c)
    pats = {k: set(c.patient_ids[v]) for k, v in split.items()}
    assert not (pats["train"] & pats["val"]) and not (pats["train"] & pats["test"]) and not (pats["val"] & pats["test"])
    for k, frac in zip(("train", "val", "test"), (0.7, 0.1, 0.2)):
        assert abs(len(split[k]) / len(c) - frac) < 0.02
    labels = c.labels.numpy()
    prevalence = labels.mean(0)
    worst = {k: np.abs(labels[v].mean(0) - prevalence).max() for k, v in split.items()}
    # against random patient-level splits of the same sizes
    rng = np.random.default_rng(0)
    patients = np.unique(c.patient_ids)
    baseline = {k: [] for k in split}
    for _ in range(20):
        order = rng.permutation(patients)
        cut = np.cumsum([0] + [len(np.unique(c.patient_ids[split[k]])) for k in ("train", "val", "test")])
        for k, a, b in zip(("train", "val", "test"), cut[:-1], cut[1:]):
            idx = np.isin(c.patient_ids, order[a:b])
            baseline[k].append(np.abs(labels[idx].mean(0) - prevalence).max())
    for k in split:
        assert worst[k] < 0.75 * np.mean(baseline[k]), (k, worst[k], np.mean(baseline[k]))
    assert worst["train"] < 0.02 and worst["test"] < 0.04
    again = patient_split(c, seed=0)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    other = patient_split(c, seed=1)
    assert not np.array_equal(split["test"], other["test"])


@pytest.mark.parametrize("fractions", [(0.7, 0.3), (0.7, 0.2, 0.2), (0.8, 0.3, -0.1), (1.0, 0.0, 0.0), "abc"])
def test_patient_split_rejects_bad_fractions(cohort, fractions):
    with pytest.raises(ValueError, match="fractions"):
        patient_split(cohort, fractions=fractions)


def test_patient_split_of_a_tiny_cohort_leaves_no_split_empty():
    tiny = generate_cohort(8, SIZE, seed=0, cache=False)
    split = patient_split(tiny)
    assert all(len(v) > 0 for v in split.values())


# ---------------------------------------------------------------------------------------------
# torch dataset
# ---------------------------------------------------------------------------------------------

def test_dataset_items_and_batches(cohort):
    idx = np.array([4, 9, 11, 30, 31])
    ds = CohortDataset(cohort, idx)
    assert len(ds) == 5
    item = ds[1]
    assert set(item) == {"image", "report", "labels", "boxes", "index", "site", "labs"}
    assert item["index"] == 9 and torch.equal(item["image"], cohort.images[9]) and item["report"] == cohort.reports[9]
    batch = ds.__getitems__([0, 2, 3])
    assert batch["image"].shape == (3, 1, SIZE, SIZE) and batch["labels"].shape == (3, len(FINDINGS))
    assert batch["report"] == [cohort.reports[j] for j in (4, 11, 30)] and batch["index"].tolist() == [4, 11, 30]
    assert torch.equal(batch["labs"], cohort.labs[[4, 11, 30]]) and batch["boxes"][1] == cohort.boxes[11]
    stacked = CohortDataset.collate([ds[k] for k in (0, 2, 3)])          # the same, item by item
    assert torch.equal(stacked["image"], batch["image"]) and torch.equal(stacked["index"], batch["index"])
    seen = [b["index"] for b in ds.loader(batch_size=2, shuffle=True, seed=0)]
    assert sorted(torch.cat(seen).tolist()) == sorted(idx.tolist()) and len(seen) == 3
    flipped = CohortDataset(cohort, idx, transform=lambda im: im.flip(-1))
    assert torch.equal(flipped.__getitems__([0])["image"][0], cohort.images[4].flip(-1))
    assert torch.equal(flipped[0]["image"], cohort.images[4].flip(-1))
    with pytest.raises(ValueError, match="indices"):
        CohortDataset(cohort, [N + 5])
    with pytest.raises(ValueError, match="cohort"):
        CohortDataset("not a cohort")


# ---------------------------------------------------------------------------------------------
# what the images show
# ---------------------------------------------------------------------------------------------

# Mean |change| of pixel intensity inside the box when a finding is switched on in the same
# study (measured at 32 px: Cardiomegaly .05, Effusion .065, Pneumothorax .04, Consolidation .085,
# Lesion .06, Atelectasis .045, Edema .021, Devices .06, Fracture .011); the bar is about half.
MIN_EFFECT = {"Cardiomegaly": 0.025, "Pleural Effusion": 0.03, "Pneumothorax": 0.02, "Consolidation": 0.04,
              "Lung Lesion": 0.03, "Atelectasis": 0.025, "Edema": 0.012, "Support Devices": 0.03, "Fracture": 0.006}


@pytest.mark.parametrize("finding", PATHOLOGIES)
def test_each_finding_changes_the_image_inside_its_box(finding):
    """Render the same 60 studies with and without the finding (same anatomy, same noise):
    the change is there in every study, it is strong enough, and it is inside the box."""
    j = PATHOLOGIES.index(finding)
    state = sample_state(60, 7, sites=SITES)
    with_it = dict(state, present=state["present"].copy())
    with_it["present"][:, j] = True
    without = dict(state, present=state["present"].copy())
    without["present"][:, j] = False
    a, boxes = render_state(with_it, SIZE)
    b, _ = render_state(without, SIZE)
    diff = np.abs(a.astype(float) - b.astype(float)) / 255.0
    inside_mean, inside_share = [], []
    for i in range(len(diff)):
        x0, y0, x1, y1 = boxes[i, j]
        assert np.isfinite([x0, y0, x1, y1]).all(), f"study {i}: {finding} has no box"
        cols = slice(max(int(round(x0 * SIZE)) - 1, 0), int(round(x1 * SIZE)) + 1)   # one pixel of blur margin
        rows = slice(max(int(round(y0 * SIZE)) - 1, 0), int(round(y1 * SIZE)) + 1)
        assert diff[i].max() >= 2 / 255, f"study {i}: {finding} is not drawn at all"
        inside_mean.append(diff[i, rows, cols].mean())
        inside_share.append(diff[i, rows, cols].sum() / diff[i].sum())
    assert np.mean(inside_mean) > MIN_EFFECT[finding]
    assert np.mean(inside_share) > 0.9 and np.min(inside_share) > 0.5


def test_global_findings_are_learnable_from_pixels():
    """A regularised logistic regression on 16x16-downsampled pixels, cross-validated, beats
    chance clearly for the findings that change a large part of the image."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict

    c = generate_cohort(600, SIZE, seed=0, cache=False)
    x = torch.nn.functional.avg_pool2d(c.images, 2).flatten(1).numpy()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    for finding in ("Cardiomegaly", "Pleural Effusion", "Edema", "Support Devices", "Consolidation"):
        y = c.true_labels[:, FINDINGS.index(finding)].numpy()
        p = cross_val_predict(LogisticRegression(C=0.01, max_iter=500), x, y, cv=3, method="predict_proba")[:, 1]
        assert roc_auc_score(y, p) > 0.7, finding


def test_cardiomegaly_means_a_cardiothoracic_ratio_above_half(cohort):
    cm = cohort.true_labels[:, 0].numpy() == 1
    assert (cohort.ctr[cm] > 0.5).all() and (cohort.ctr[~cm] < 0.5).all()


# ---------------------------------------------------------------------------------------------
# what the reports say
# ---------------------------------------------------------------------------------------------

def _read(report: str) -> dict:
    """A deliberately simple reader: per finding, 1 if stated, -1 if hedged, 0 if only negated,
    absent if not mentioned. Sentence by sentence, with the grammar's own phrases and cues."""
    out = {}
    for sentence in re.split(r"(?<=\.)\s+|FINDINGS:|IMPRESSION:", report):
        s = re.sub(r"^\d+\.\s*", "", sentence.strip()).lower()
        if not s:
            continue
        negated = s.startswith("no ") or s.startswith("there is no ") or " normal" in s or s.startswith("normal ")
        hedged = any(cue in s for cue in UNCERTAINTY_CUES)
        for finding, phrases in MENTION_PHRASES.items():
            if any(re.search(r"\b" + re.escape(p.lower()) + r"s?\b", s) for p in phrases):
                value = 0 if negated else -1 if hedged else 1
                out[finding] = max(out.get(finding, value), value, key=lambda v: {0: 0, -1: 1, 1: 2}[v])
    return out


def test_reports_state_every_present_finding_and_never_assert_an_absent_one(big_cohort):
    c = big_cohort
    negations = 0
    for i, report in enumerate(c.reports):
        read = _read(report)
        for j, finding in enumerate(PATHOLOGIES):
            if c.true_labels[i, j] == 1:
                expected = -1 if c.hedged[i, j] else 1
                assert read.get(finding) == expected, (finding, report)
            else:
                assert read.get(finding, 0) == 0, (finding, report)
                negations += read.get(finding) == 0
        normal = any(p in report for p in NO_FINDING_IMPRESSIONS)
        assert normal == bool(c.true_labels[i, NF]), report
    assert negations > len(c)                                 # absent findings are often negated
    assert c.hedged[:, :NF].sum() > 20                        # and faint ones hedged


def test_reports_vary_by_radiologist(big_cohort):
    c = big_cohort
    normal = c.true_labels[:, NF].numpy() == 1
    styles = {}
    for r in np.unique(c.radiologist):
        reports = [c.reports[i] for i in np.nonzero((c.radiologist == r) & normal)[0]]
        styles[r] = np.mean([len(x.split()) for x in reports])
    assert len(styles) == 5 and max(styles.values()) > 1.5 * min(styles.values())
    assert len(set(c.reports)) > 0.5 * len(c)


def test_mention_phrases_cover_the_pathologies():
    assert set(MENTION_PHRASES) == set(PATHOLOGIES)
    assert all(isinstance(p, str) and p for phrases in MENTION_PHRASES.values() for p in phrases)


# ---------------------------------------------------------------------------------------------
# MRI phantoms
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mri():
    return generate_mri_phantoms(48, SIZE, seed=0, cache=False)


def test_mri_shapes_ranges_and_determinism(mri):
    for name in ("t1", "t2", "flair", "lesion_mask", "brain_mask"):
        x = getattr(mri, name)
        assert x.shape == (48, 1, SIZE, SIZE) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert set(mri.lesion_mask.unique().tolist()) <= {0.0, 1.0}
    assert mri.has_lesion.dtype == torch.bool and 0.2 < mri.has_lesion.float().mean() < 0.8
    assert torch.equal(mri.has_lesion, mri.lesion_mask.flatten(1).amax(1) > 0)
    again = generate_mri_phantoms(48, SIZE, seed=0, cache=False)
    assert torch.equal(mri.t1, again.t1) and torch.equal(mri.flair, again.flair)
    assert not torch.equal(mri.t2, generate_mri_phantoms(48, SIZE, seed=1, cache=False).t2)
    assert len(mri.subset([0, 3])) == 2


def test_mri_contrasts_are_registered(mri):
    """The edges of each contrast line up with the others' at zero shift, not one pixel off."""
    def edges(x):
        gy, gx = np.gradient(x[:, 0].numpy(), axis=(1, 2))
        return np.hypot(gx, gy)

    e = {k: edges(getattr(mri, k)) for k in ("t1", "t2", "flair")}
    for a, b in (("t1", "t2"), ("t1", "flair"), ("t2", "flair")):
        score = {}
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shifted = np.roll(e[b], (dy, dx), axis=(1, 2))
                score[(dy, dx)] = (e[a] * shifted).sum()
        assert max(score, key=score.get) == (0, 0), (a, b)
    for k in ("t1", "t2", "flair"):                             # outside the head: dark in all three
        assert getattr(mri, k)[:, :, :3, :3].mean() < 0.08


def test_mri_tissue_contrasts(mri):
    lesion = mri.lesion_mask.bool()
    around = (torch.nn.functional.max_pool2d(mri.lesion_mask, 5, 1, 2).bool() & ~lesion & mri.brain_mask.bool())
    assert lesion.any()
    t1, t2, flair = mri.t1, mri.t2, mri.flair
    assert t2[lesion].mean() > t2[around].mean() + 0.1          # lesions bright on T2
    assert flair[lesion].mean() > flair[around].mean() + 0.15   # and brighter still on FLAIR
    assert t1[lesion].mean() < t1[around].mean()                # dark on T1
    # CSF: bright on T2, suppressed on FLAIR, dark on T1 (inside the brain mask: the ventricles)
    brain = mri.brain_mask.bool()
    bright_t2 = brain & (t2 > 0.8) & ~lesion
    assert bright_t2.sum() > 100
    assert flair[bright_t2].mean() < 0.3 and t1[bright_t2].mean() < 0.3


def test_mri_bad_arguments_and_cache(tmp_path):
    for kwargs, name in ((dict(n=0), "n"), (dict(image_size=8), "image_size"), (dict(seed=-2), "seed")):
        args = dict(n=4, image_size=SIZE, seed=0, cache=False)
        args.update(kwargs)
        with pytest.raises(ValueError, match=name):
            generate_mri_phantoms(**args)
    first = generate_mri_phantoms(6, SIZE, seed=2)
    (path,) = sorted((tmp_path / "medmm" / "mri").glob("*.npz"))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match=re.escape(path.name)):
        second = generate_mri_phantoms(6, SIZE, seed=2)
    assert torch.equal(first.t1, second.t1) and torch.equal(first.lesion_mask, second.lesion_mask)


def test_texture_upsampling_matches_scipy():
    """The lung-marking texture is upsampled by hand (bit-stable gathers); scipy agrees."""
    from scipy.ndimage import zoom

    from medmm_lite.data.synthcxr import _upsample

    grid = np.random.default_rng(0).standard_normal((3, 16, 16)).astype(np.float32)
    for size in (32, 48, 64):
        expected = zoom(grid, (1, size / 16, size / 16), order=1, grid_mode=True, mode="nearest")
        assert np.allclose(_upsample(grid, size, size), expected, atol=1e-5)
