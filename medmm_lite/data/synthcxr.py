"""SynthCXR's renderer: procedural chest X-rays, drawn for a whole batch at once.

Every study is described by a few dozen numbers (where the lungs are, how wide
the heart is, which findings it has and where); this module turns those numbers
into pixels. No per-image or per-pixel Python loop: each step is a NumPy
expression over a chunk of studies, shape (B, H, W).

The physics is a cartoon of radiography. We build a *density* map D (how much
the body attenuates the beam along each ray) and map it to brightness:
bone and metal are bright, soft tissue grey, aerated lung dark. Most findings
are a loss of aeration: fluid (effusion), pus (consolidation), collapse
(atelectasis) or water (edema) replace air, so the lung turns grey. That is the
one idea behind most of a radiologist's "opacities", and it is literally how
they are drawn here: an aeration map A (1 = normal lung) is multiplied down.

Normal variants (nipple shadows, breast shadows, skin folds) mimic nodules, basal
opacities and pneumothorax lines, so a model has to learn the findings, not "any
blob" or "any line".

Coordinates. Anatomy lives in *body coordinates* (u, v): u across, v down,
0 at the middle of the chest, about 1 unit = the width of the image. A per-study
scale, shift and small rotation (patient positioning) map them to the image.
Images are displayed the way radiologists read a PA film: the patient's RIGHT is
on the image's LEFT. Everything named "right"/"left" here is the patient's side,
so the right lung is at u < 0 and the heart bulges to u > 0.

Public pieces: :func:`sample_anatomy`, :func:`sample_finding_geometry`,
:func:`render` (and :data:`MIN_IMAGE_SIZE`, :data:`MAX_IMAGE_SIZE`).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from .findings import PATHOLOGIES

# Below 32 px a rib is a third of a pixel and a nodule vanishes between pixels; above
# 512 px the cohort stops fitting in a laptop's memory at course sizes.
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 512



def render_chunk_size(image_size: int) -> int:
    """Studies rendered together: about a million pixels per chunk up to 64 px, a quarter of
    that above (measured fastest on one core: big arrays fall out of the CPU cache). Fixed
    by the image size alone, never by the machine, because each chunk draws its pixel noise
    from its own random stream: a different chunking would give different images."""
    budget = 2**20 if image_size <= 64 else 2**18
    return max(1, min(512, budget // (image_size * image_size)))


TEXTURE_GRID = 16          # lung markings: a 16x16 random field per patient, upsampled

SIDES = ("right", "left", "bilateral")
ZONES = ("upper", "middle", "lower")
# One severity scale per finding: size words for things with an extent, degree words for the rest.
SEVERITY_WORDS = {
    "Cardiomegaly": ("mild", "moderate", "severe"),
    "Pleural Effusion": ("small", "moderate", "large"),
    "Pneumothorax": ("small", "moderate", "large"),
    "Consolidation": ("small", "moderate", "large"),
    "Lung Lesion": ("small", "moderate", "large"),
    "Atelectasis": ("small", "moderate", "large"),
    "Edema": ("mild", "moderate", "severe"),
    "Support Devices": None,
    "Fracture": None,
}
DEVICE_NAMES = ("endotracheal tube", "nasogastric tube", "central venous catheter", "PICC line", "pacemaker")
F = {name: i for i, name in enumerate(PATHOLOGIES)}   # column of each pathology in the (N, 9) arrays

# Densities (arbitrary units; the final exposure maps them to [0, 1]).
SOFT_TISSUE = 0.50
LUNG_AIR = 0.38            # how much a fully aerated lung lowers the density
MARKINGS = 0.12            # vessels in the lung
RIB = 0.09
METAL = 0.55


# --------------------------------------------------------------------------------------------
# shapes: each returns an approximate signed distance (negative inside) so edges can be
# anti-aliased to one pixel with `soft`, which matters at 32 px.
# --------------------------------------------------------------------------------------------

def soft(d, px):
    """Inside-ness in [0, 1] from a signed distance: a one-pixel ramp across the edge."""
    return np.clip(0.5 - d / px, 0.0, 1.0)


def lung_distance(u, v, c, cv, a, b):
    """Lung outline without the diaphragm: a rounded apex (half an ellipse) on top of
    near-vertical sides that widen slightly toward the base, where the diaphragm cuts it."""
    half_width = a * (1.0 + 0.12 * (v - cv) / b)
    above = np.minimum(v - cv, 0.0) / b
    f = ((u - c) / half_width) ** 2 + above ** 2 - 1.0
    return f * (0.5 * np.minimum(a, b))


def dome_v(u, c, a, base, height):
    """Height of a hemidiaphragm under column u: a dome peaking under the lung's middle,
    lowest at the lateral edge, which makes the sharp costophrenic angle."""
    t = np.clip(1.0 - ((u - c) / (1.05 * a)) ** 2, 0.0, 1.0)
    return base - height * t


def _ellipse_distance(u, v, cu, cv, a, b):
    f = ((u - cu) / a) ** 2 + ((v - cv) / b) ** 2 - 1.0
    return f * (0.5 * np.minimum(a, b))


def _segment_distance(u, v, p0, p1):
    """Distance from every pixel to the segment p0-p1 (p0, p1: (B, 2) arrays), and the
    position t in [0, 1] along it of the closest point."""
    x0, y0 = _col(p0[:, 0]), _col(p0[:, 1])
    dx, dy = _col(p1[:, 0] - p0[:, 0]), _col(p1[:, 1] - p0[:, 1])
    length2 = np.maximum(dx * dx + dy * dy, 1e-12)
    t = np.clip(((u - x0) * dx + (v - y0) * dy) / length2, 0.0, 1.0)
    ex, ey = u - x0 - t * dx, v - y0 - t * dy
    return np.sqrt(ex * ex + ey * ey), t


def _polyline_distance(u, v, points):
    """points: (B, K, 2) vertices; distance to the nearest of the K-1 segments."""
    d = None
    for k in range(points.shape[1] - 1):
        dk, _ = _segment_distance(u, v, points[:, k], points[:, k + 1])
        d = dk if d is None else np.minimum(d, dk)
    return d


def _linear_taps(n_out: int, n_in: int):
    """For each of n_out output cells: the two input cells to blend and the weight of the second."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    return lo, np.minimum(lo + 1, n_in - 1), (pos - lo).astype(np.float32)


def _upsample(grid: np.ndarray, H: int, W: int) -> np.ndarray:
    """Bilinear upsampling of (B, h, w) to (B, H, W). Written as gathers and blends rather than
    a matrix product so the result is bit-identical whatever BLAS and thread count."""
    y0, y1, wy = _linear_taps(H, grid.shape[1])
    x0, x1, wx = _linear_taps(W, grid.shape[2])
    rows = grid[:, y0] * (1.0 - wy)[None, :, None] + grid[:, y1] * wy[None, :, None]     # (B, H, w)
    return rows[:, :, x0] * (1.0 - wx) + rows[:, :, x1] * wx


def _col(x):
    """(B,) per-study numbers -> (B, 1, 1) so they broadcast over pixels."""
    return np.asarray(x, dtype=np.float32).reshape(-1, 1, 1)


# --------------------------------------------------------------------------------------------
# sampling the numbers that describe each study (vectorised over studies, never over pixels)
# --------------------------------------------------------------------------------------------

def sample_anatomy(rng: np.random.Generator, patient_of_study: np.ndarray, n_patients: int,
                   female: np.ndarray | None = None) -> dict:
    """Anatomy and positioning of every study. Habitus (lung size, rib spacing, markings)
    belongs to the patient; positioning and exposure change from study to study.

    Also the normal variants that mimic findings and make reading films hard for people and
    models alike: nipple shadows (look like nodules; usually paired), breast shadows (raise
    the density of the lower zones, like an opacity) and skin folds (a line like the edge of
    a pneumothorax, but with lung markings on both sides). `female`: (N,) bool per study."""
    n = len(patient_of_study)
    female = np.zeros(n, bool) if female is None else np.asarray(female, bool)
    per_patient = lambda x: np.asarray(x, dtype=np.float32)[patient_of_study]   # noqa: E731
    u = rng.uniform
    A = {}
    thorax = u(0.93, 1.05, n_patients)
    A["scale"] = per_patient(thorax) * rng.normal(1.0, 0.015, n).astype(np.float32)
    A["cx"] = (0.5 + rng.normal(0.0, 0.012, n)).astype(np.float32)
    A["cy"] = (0.47 + rng.normal(0.0, 0.015, n)).astype(np.float32)
    A["rot"] = rng.normal(0.0, 0.03, n).astype(np.float32)
    A["body_w"] = per_patient(u(0.44, 0.50, n_patients))
    A["tissue"] = per_patient(u(0.46, 0.54, n_patients))
    # lungs: column 0 = the patient's right lung (image left, u < 0), column 1 = left lung
    half = u(0.15, 0.175, n_patients)
    A["lung_a"] = np.stack([per_patient(half * u(0.98, 1.04, n_patients)), per_patient(half)], 1)
    A["lung_c"] = np.stack([-per_patient(u(0.175, 0.2, n_patients)), per_patient(u(0.18, 0.205, n_patients))], 1)
    cv = per_patient(u(-0.05, -0.01, n_patients))
    A["lung_cv"] = np.stack([cv, cv + 0.01], 1)
    b = per_patient(u(0.31, 0.36, n_patients))
    A["lung_b"] = np.stack([b, b * 0.98], 1)
    inspiration = rng.normal(0.0, 0.012, n).astype(np.float32)          # depth of breath this time
    base = per_patient(u(0.25, 0.29, n_patients)) + inspiration
    A["dome_base"] = np.stack([base, base + per_patient(u(0.0, 0.03, n_patients))], 1)  # the right sits higher (liver)
    A["dome_h"] = per_patient(u(0.07, 0.11, n_patients))
    A["heart_v"] = per_patient(u(0.12, 0.16, n_patients))
    A["heart_b"] = per_patient(u(0.11, 0.14, n_patients))
    A["rib_spacing"] = per_patient(u(0.068, 0.078, n_patients))
    A["rib_top"] = per_patient(u(-0.45, -0.42, n_patients))
    A["rib_density"] = per_patient(u(0.8, 1.2, n_patients)) * RIB
    A["clav_v"] = per_patient(u(-0.37, -0.33, n_patients))
    A["clav_rise"] = per_patient(u(0.04, 0.09, n_patients))
    A["texture"] = rng.standard_normal((n_patients, TEXTURE_GRID, TEXTURE_GRID)).astype(np.float32)[patient_of_study]
    # normal variants (per patient, so they recur at every visit, as they do)
    first = np.unique(patient_of_study, return_index=True)[1]
    female_p = female[first]
    A["nipples"] = per_patient(u(0, 1, n_patients) < np.where(female_p, 0.35, 0.25))
    A["nipple_one_sided"] = per_patient(u(0, 1, n_patients) < 0.3)
    A["nipple_u"] = per_patient(u(0.19, 0.27, n_patients))
    A["nipple_dv"] = per_patient(u(0.05, 0.11, n_patients))            # above the diaphragm
    A["nipple_r"] = per_patient(u(0.011, 0.017, n_patients))
    A["nipple_density"] = per_patient(u(0.08, 0.18, n_patients))
    A["breast"] = per_patient(female_p & (u(0, 1, n_patients) < 0.85)) * per_patient(u(0.04, 0.09, n_patients))
    A["breast_r"] = per_patient(u(0.15, 0.2, n_patients))
    A["skin_fold"] = (u(0, 1, n) < 0.1).astype(np.float32)            # positioning: varies by study
    A["skin_fold_side"] = (u(0, 1, n) < 0.5).astype(np.float32)
    A["skin_fold_u"] = u(0.22, 0.33, n).astype(np.float32)
    A["contrast"] = u(1.05, 1.25, n).astype(np.float32)
    A["offset"] = u(0.0, 0.05, n).astype(np.float32)
    A["gamma"] = u(0.9, 1.1, n).astype(np.float32)
    return A


def thoracic_width(A: dict) -> np.ndarray:
    """Widest lung-to-lung distance (the denominator of the cardiothoracic ratio)."""
    c, a, cv, b = A["lung_c"], A["lung_a"], A["lung_cv"], A["lung_b"]
    widen = 1.0 + 0.12 * (A["dome_base"] - cv) / b
    return (c[:, 1] + a[:, 1] * widen[:, 1]) - (c[:, 0] - a[:, 0] * widen[:, 0])


def heart_geometry(A: dict, ctr: np.ndarray):
    """Heart half-width and centre for a cardiothoracic ratio: one third right of the
    midline, two thirds left, as on a normal film; a big heart grows mostly leftward."""
    half_width = 0.5 * ctr * thoracic_width(A)
    mid = 0.5 * (A["lung_c"][:, 0] + A["lung_c"][:, 1])
    return half_width.astype(np.float32), (mid + 0.32 * half_width).astype(np.float32)


def _lateral_sign(side):
    return np.where(side == 0, -1.0, 1.0).astype(np.float32)   # right lung grows toward u < 0


def _lung_point(A, side, zone, u_rel, v_rel, margin):
    """A point inside one lung (side 0/1) in a zone, from unit random numbers; kept above
    the diaphragm and inside the rounded apex by `margin`."""
    rows = np.arange(len(side))
    s = np.clip(side, 0, 1)
    c, a = A["lung_c"][rows, s], A["lung_a"][rows, s]
    cv, b = A["lung_cv"][rows, s], A["lung_b"][rows, s]
    lo = np.array([-0.72, -0.3, 0.15], np.float32)[zone]
    hi = np.array([-0.42, 0.05, 0.45], np.float32)[zone]
    vr = lo + (hi - lo) * v_rel
    taper = np.sqrt(np.clip(1.0 - np.minimum(vr, 0.0) ** 2, 0.05, 1.0))        # the apex is narrower
    ur = (-0.15 + 0.7 * u_rel) * taper                                           # biased lateral: away from the heart
    pu = c + _lateral_sign(s) * ur * a
    pv = cv + vr * b
    floor = dome_v(pu, c, a, A["dome_base"][rows, s], A["dome_h"]) - margin
    return pu.astype(np.float32), np.minimum(pv, floor).astype(np.float32)


def _beside_heart(A, pu, pv, side, ctr, margin):
    """Move left-lung points that would fall behind the heart (a radiologist cannot see
    through it either) to just lateral of its border, staying inside the lung."""
    half, centre = heart_geometry(A, ctr)
    dv = np.clip((pv - A["heart_v"]) / A["heart_b"], -1.0, 1.0)
    border = centre + half * np.sqrt(1.0 - dv * dv) * (pv > A["heart_v"] - A["heart_b"])
    c, a = A["lung_c"][:, 1], A["lung_a"][:, 1]
    moved = np.minimum(np.maximum(pu, border + margin), c + 0.85 * a)
    return np.where(side == 1, moved, pu).astype(np.float32)


def sample_finding_geometry(rng: np.random.Generator, A: dict, side, zone, severity,
                            patient_of_study, n_patients, ctr) -> dict:
    """Where and how big each finding is drawn, for every study (also where it is absent:
    then it is simply not drawn, which lets a test render the same study with and without it).
    `side`, `zone`, `severity`: (N, 9) int arrays chosen by the clinical model; `ctr`: the
    largest cardiothoracic ratio the study can have (findings are kept out from behind the heart)."""
    n = len(patient_of_study)
    u = rng.uniform
    G = {}
    sev = severity
    # pleural effusion: fluid height above the costophrenic angle, and the meniscus rise
    heights = np.array([[0.05, 0.08], [0.11, 0.17], [0.21, 0.30]], np.float32)
    heights = heights[np.clip(sev[:, F["Pleural Effusion"]], 0, 2)]
    G["eff_height"] = u(heights[:, 0], heights[:, 1]).astype(np.float32)
    G["eff_meniscus"] = u(0.03, 0.06, n).astype(np.float32)
    # pneumothorax: how far the lung has fallen back toward the hilum (1 = not at all)
    shrink = np.array([[0.84, 0.9], [0.72, 0.8], [0.55, 0.65]], np.float32)[np.clip(sev[:, F["Pneumothorax"]], 0, 2)]
    G["ptx_shrink"] = u(shrink[:, 0], shrink[:, 1]).astype(np.float32)
    # consolidation: a cluster of three lobules around a centre, sized by severity
    s = F["Consolidation"]
    G["cons_u"], G["cons_v"] = _lung_point(A, side[:, s], np.clip(zone[:, s], 0, 2), u(0, 1, n), u(0, 1, n), 0.03)
    size = np.array([[0.035, 0.045], [0.05, 0.065], [0.075, 0.095]], np.float32)[np.clip(sev[:, s], 0, 2)]
    G["cons_size"] = u(size[:, 0], size[:, 1]).astype(np.float32)
    G["cons_u"] = _beside_heart(A, G["cons_u"], G["cons_v"], side[:, s], ctr, G["cons_size"])
    G["cons_lobes"] = rng.normal(0.0, 0.7, (n, 3, 2)).astype(np.float32)
    G["cons_bronchus"] = u(0.0, 1.0, n) < 0.6                      # air bronchograms in some
    # lung lesion (nodule): persists per patient, at the same place in every study
    s = F["Lung Lesion"]
    ur, vr = u(0, 1, n_patients)[patient_of_study], u(0, 1, n_patients)[patient_of_study]
    radius = np.array([[0.022, 0.03], [0.03, 0.04], [0.04, 0.05]], np.float32)[np.clip(sev[:, s], 0, 2)]
    G["nodule_r"] = u(radius[:, 0], radius[:, 1]).astype(np.float32)
    G["nodule_u"], G["nodule_v"] = _lung_point(A, side[:, s], np.clip(zone[:, s], 0, 2), ur, vr, 0.05)
    G["nodule_u"] = _beside_heart(A, G["nodule_u"], G["nodule_v"], side[:, s], ctr, G["nodule_r"] + 0.015)
    # atelectasis: a plate (or, when large, a wedge) just above the diaphragm
    s = F["Atelectasis"]
    G["atel_u"], _ = _lung_point(A, side[:, s], np.full(n, 2), u(0.2, 0.9, n), u(0, 1, n), 0.0)
    rows, sd = np.arange(n), np.clip(side[:, s], 0, 1)
    G["atel_v"] = (dome_v(G["atel_u"], A["lung_c"][rows, sd], A["lung_a"][rows, sd], A["dome_base"][rows, sd],
                          A["dome_h"]) - u(0.04, 0.08, n)).astype(np.float32)
    G["atel_angle"] = u(-0.35, 0.35, n).astype(np.float32)
    G["atel_length"] = u(0.09, 0.15, n).astype(np.float32)
    G["atel_u"] = _beside_heart(A, G["atel_u"], G["atel_v"], side[:, s], ctr, 0.45 * G["atel_length"] + 0.01)
    # support devices: small jitter of every tube's course
    G["device_jitter"] = rng.normal(0.0, 0.012, (n, 8)).astype(np.float32)
    # fracture: one posterior rib, the same one in every study of the patient
    G["fracture_rib"] = rng.integers(2, 8, n_patients)[patient_of_study]            # rib cell index
    G["fracture_w"] = u(0.2, 0.31, n_patients)[patient_of_study].astype(np.float32)  # distance from the spine
    step = u(0.25, 0.35, n_patients) * rng.choice([-1.0, 1.0], n_patients)        # in rib spacings
    G["fracture_step"] = step[patient_of_study].astype(np.float32)
    G["fracture_healing"] = (u(0, 1, n_patients) < 0.5)[patient_of_study]
    return G


# --------------------------------------------------------------------------------------------
# site looks: burned-in markers
# --------------------------------------------------------------------------------------------

_GLYPHS = {
    "L": ["1000", "1000", "1000", "1000", "1111"],
    "R": ["1110", "1001", "1110", "1010", "1001"],
    "text": ["1101101101110111011", "1001001001010100010", "1101101101110111010"],
    "square": ["111", "101", "111"],
}
# (glyph, corner) of each burned-in marker a site can use; a site's `marker` indexes this (-1: none)
MARKER_STYLES = (("L", "tr"), ("text", "tl"), ("R", "tl"), ("square", "br"))


def _marker_layer(kind: str, corner: str, H: int, W: int) -> np.ndarray:
    """A (H, W) layer in [0, 1] with a burned-in marker (side letter or text band) in a corner."""
    layer = np.zeros((H, W), np.float32)
    glyph = np.array([[int(ch) for ch in row] for row in _GLYPHS[kind]], np.float32)
    gh, gw = glyph.shape
    cell = max(1, round(0.012 * H))                      # a glyph cell ~1.2% of the image, >= 1 px
    h, w = gh * cell, gw * cell
    margin = max(1, round(0.03 * H))
    y0 = margin if corner[0] == "t" else H - margin - h
    x0 = margin if corner[1] == "l" else W - margin - w
    layer[y0:y0 + h, x0:x0 + w] = np.kron(glyph, np.ones((cell, cell), np.float32))
    return layer


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------

def _mask_boxes(mask: np.ndarray, threshold: float) -> np.ndarray:
    """(b, H, W) -> (b, 4) boxes (x0, y0, x1, y1) in image fractions of the pixels above threshold;
    NaN where nothing is."""
    on = mask > threshold
    b, H, W = on.shape
    cols, rows = on.any(axis=1), on.any(axis=2)
    has = cols.any(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = W - cols[:, ::-1].argmax(axis=1)
    y0 = rows.argmax(axis=1)
    y1 = H - rows[:, ::-1].argmax(axis=1)
    box = np.stack([x0 / W, y0 / H, x1 / W, y1 / H], axis=1).astype(np.float32)
    box[~has] = np.nan
    return box


class _Chunk:
    """The pixels of one chunk of studies: body coordinates u, v (B, H, W), the size of a
    pixel in body units, and each per-study number reshaped to (B, 1, 1)."""

    def __init__(self, A, sl, H, W):
        B = sl.stop - sl.start
        self.A = {k: v[sl] for k, v in A.items()}
        s = _col(self.A["scale"])
        cos, sin = _col(np.cos(self.A["rot"])), _col(np.sin(self.A["rot"]))
        x = ((np.arange(W, dtype=np.float32) + 0.5) / W).reshape(1, 1, W) - _col(self.A["cx"])
        y = ((np.arange(H, dtype=np.float32) + 0.5) / H).reshape(1, H, 1) - _col(self.A["cy"])
        self.u = ((x * cos + y * sin) / s).astype(np.float32)
        self.v = ((y * cos - x * sin) / s).astype(np.float32)
        self.px = (1.0 / (H * s)).astype(np.float32)
        self.B, self.H, self.W = B, H, W

    def col(self, key, side=None, idx=None):
        x = self.A[key] if side is None else self.A[key][:, side]
        return _col(x if idx is None else x[idx])


def _lung_masks(ch: _Chunk):
    """Soft masks of the right and left lung, with the diaphragm cut in (before the heart
    and mediastinum are taken out)."""
    masks = []
    for s in (0, 1):
        c, a = ch.col("lung_c", s), ch.col("lung_a", s)
        d = lung_distance(ch.u, ch.v, c, ch.col("lung_cv", s), a, ch.col("lung_b", s))
        dome = dome_v(ch.u, c, a, ch.col("dome_base", s), ch.col("dome_h"))
        masks.append(soft(d, ch.px) * soft(ch.v - dome, ch.px))
    return masks


def _one_lung(ch, idx, side):
    """Lung mask (with diaphragm) of one side for a subset of studies; side: (b,) 0/1."""
    rows = np.arange(ch.B)[idx]
    u, v, px = ch.u[idx], ch.v[idx], ch.px[idx]
    c, a = _col(ch.A["lung_c"][rows, side]), _col(ch.A["lung_a"][rows, side])
    cv, b = _col(ch.A["lung_cv"][rows, side]), _col(ch.A["lung_b"][rows, side])
    base, h = _col(ch.A["dome_base"][rows, side]), _col(ch.A["dome_h"][rows])
    d = lung_distance(u, v, c, cv, a, b)
    return soft(d, px) * soft(v - dome_v(u, c, a, base, h), px), (c, cv, a, b)


def _sides_of(side_codes):
    """Yield (lung side 0/1, which studies) for side codes 0 right, 1 left, 2 bilateral."""
    for s in (0, 1):
        yield s, np.nonzero((side_codes == s) | (side_codes == 2))[0]


def render(A: dict, G: dict, present: np.ndarray, side: np.ndarray, zone: np.ndarray, severity: np.ndarray,
           conspicuity: np.ndarray, devices: np.ndarray, ctr: np.ndarray, look: dict, image_size: int,
           noise_seed: int):
    """Draw every study. Returns ``(images, boxes)``: images uint8 (N, H, W) (0..255), boxes
    float32 (N, 9, 4) in image fractions (NaN where the pathology is absent).

    `present`, `side`, `zone`, `severity`, `conspicuity`: (N, 9) per pathology; `devices`:
    (N, 5) bool over DEVICE_NAMES plus side codes inside `side`; `ctr`: (N,) cardiothoracic
    ratios; `look`: per-study scanner look (gamma, contrast, offset, noise, blur, marker).
    """
    n = len(ctr)
    H = W = int(image_size)
    images = np.empty((n, H, W), np.uint8)
    boxes = np.full((n, len(PATHOLOGIES), 4), np.nan, np.float32)
    A = dict(A)
    A["heart_a"], A["heart_u"] = heart_geometry(A, ctr)
    per_study = dict(G, present=present, side=side, zone=zone, severity=severity, conspicuity=conspicuity,
                     devices=devices, **{f"look_{k}": v for k, v in look.items()})
    markers = {int(k): _marker_layer(*MARKER_STYLES[k], H, W) for k in np.unique(look["marker"]) if k >= 0}
    chunk = render_chunk_size(image_size)
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        rng = np.random.default_rng([noise_seed, start // chunk])
        ch = _Chunk({**A, **per_study}, sl, H, W)
        images[sl], boxes[sl] = _render_chunk(ch, rng, markers)
    return images, boxes


class _Layers:
    """What a chunk's drawing steps share: anatomy masks (B, H, W), the density map D, and
    what findings change: aeration (1 = normal lung), lung markings, added density, boxes."""

    def __init__(self, B, H, W):
        shape = (B, H, W)
        self.aeration = np.ones(shape, np.float32)
        self.markings = np.ones(shape, np.float32)     # multiplier: 0 where a pneumothorax removed them
        self.added = np.zeros(shape, np.float32)       # nodules, pleural lines (negative: extra air)
        self.boxes = np.full((B, len(PATHOLOGIES), 4), np.nan, np.float32)


def _render_chunk(ch: _Chunk, rng, markers):
    """All the steps for one chunk: anatomy, findings, lung, ribs, devices, scanner."""
    L = _Layers(ch.B, ch.H, ch.W)
    _draw_anatomy(ch, L)
    for name, draw in _FINDING_DRAWERS.items():
        idx = np.nonzero(ch.A["present"][:, F[name]])[0]
        if len(idx):
            draw(ch, idx, L)
    _draw_lungs(ch, L)
    _draw_bones(ch, L, np.nonzero(ch.A["present"][:, F["Fracture"]])[0])
    idx = np.nonzero(ch.A["present"][:, F["Support Devices"]])[0]
    if len(idx):
        dev_mask = _draw_devices(ch, idx)
        L.D[idx] += METAL * dev_mask
        L.boxes[idx, F["Support Devices"]] = _mask_boxes(dev_mask, 0.3)
    return _scanner(ch, L.D, rng, markers), L.boxes


def _draw_anatomy(ch: _Chunk, L: _Layers):
    """Body, lungs (masks only, filled later), mediastinum, heart, spine, trachea."""
    u, v, px, H = ch.u, ch.v, ch.px, ch.H
    body_w = ch.col("body_w")
    tu, tv = np.square(u / body_w), np.square((v - 0.17) / 0.64)
    torso = (tu * tu + tv * tv - 1.0) * (0.25 * body_w)            # a rounded rectangle (superellipse)
    neck = np.maximum(np.abs(u) - 0.1, -0.3 - v)
    L.body = soft(np.minimum(torso, neck), px)
    L.D = L.body * (ch.col("tissue") + 0.08 * np.clip(1.0 - (u / 0.5) ** 2, 0.0, 1.0))

    right, left = _lung_masks(ch)
    L.dome_lowest = np.maximum(ch.col("dome_base", 0), ch.col("dome_base", 1))
    med_half = 0.045 + 0.025 * np.clip((v + 0.2) / 0.3, 0.0, 1.0)
    mediastinum = soft(np.abs(u - 0.005) - med_half, px) * soft(v - L.dome_lowest, px) * L.body
    L.heart = soft(_ellipse_distance(u, v, ch.col("heart_u"), ch.col("heart_v"), ch.col("heart_a"),
                                      ch.col("heart_b")), px) * L.body
    L.not_central = (1.0 - L.heart) * (1.0 - mediastinum)      # lung is only where these are not
    L.lung = (right + left) * L.not_central
    L.D += 0.08 * mediastinum + 0.11 * L.heart
    spine = soft(np.abs(u) - 0.035, px) * L.body
    rows = ((np.arange(H, dtype=np.float32) + 0.5) / H).reshape(1, H, 1) - ch.col("cy")
    vertebrae = 1.0 + 0.4 * (np.cos(rows / ch.col("scale") * (2 * np.pi / 0.06)) > 0.3)   # per row: cheap
    L.D += 0.05 * spine * vertebrae
    trachea = soft(np.abs(u) - 0.02, px) * soft(v + 0.11, px) * L.body          # the air column
    L.D -= 0.2 * trachea
    _draw_normal_variants(ch, L)


def _draw_normal_variants(ch: _Chunk, L: _Layers):
    """Soft tissue in front of the lungs that mimics findings (see :func:`sample_anatomy`)."""
    A, u, v, px = ch.A, ch.u, ch.v, ch.px
    idx = np.nonzero(A["nipples"])[0]
    if len(idx):
        shadow = np.zeros((len(idx), ch.H, ch.W), np.float32)
        for s, sign in ((0, -1.0), (1, 1.0)):
            show = _col((A["nipple_one_sided"][idx] < 0.5) | (s == 1))   # one-sided: only the left shows
            cu = sign * _col(A["nipple_u"][idx])
            cv = _col(A["dome_base"][idx, s] - A["nipple_dv"][idx])
            d = np.sqrt((u[idx] - cu) ** 2 + (v[idx] - cv) ** 2) - _col(A["nipple_r"][idx])
            shadow = np.maximum(shadow, soft(d, 1.5 * px[idx]) * show)
        L.D[idx] += _col(A["nipple_density"][idx]) * shadow
    idx = np.nonzero(A["breast"] > 0)[0]
    if len(idx):
        r = _col(A["breast_r"][idx])
        shadow = np.zeros((len(idx), ch.H, ch.W), np.float32)
        for s, sign in ((0, -1.0), (1, 1.0)):
            # a sharp lower (inferior) margin, fading out upward
            cv = _col(A["dome_base"][idx, s]) - 0.1
            d = np.sqrt((u[idx] - sign * 0.24) ** 2 + (v[idx] - cv) ** 2) - r
            fade = np.clip((v[idx] - (cv - r)) / (1.4 * r), 0.0, 1.0)
            shadow = np.maximum(shadow, soft(d, 1.5 * px[idx]) * fade)
        L.D[idx] += _col(A["breast"][idx]) * shadow * L.body[idx]
    idx = np.nonzero(A["skin_fold"] > 0)[0]
    if len(idx):
        sign = np.where(A["skin_fold_side"][idx] > 0, 1.0, -1.0)
        top = np.stack([sign * A["skin_fold_u"][idx], np.full(len(idx), -0.25)], 1)
        bottom = np.stack([sign * (A["skin_fold_u"][idx] + 0.06), np.full(len(idx), 0.2)], 1)
        d, _ = _segment_distance(u[idx], v[idx], top, bottom)
        L.D[idx] += 0.07 * np.clip(1.0 - d / (0.9 * px[idx]), 0.0, 1.0) * L.body[idx]


def _draw_cardiomegaly(ch, idx, L):
    """Already drawn: it is the heart's width (from the cardiothoracic ratio). Box: the heart."""
    L.boxes[idx, F["Cardiomegaly"]] = _mask_boxes(L.heart[idx], 0.5)


def _draw_effusion(ch, idx, L):
    """Fluid fills the base of the hemithorax up to a meniscus that climbs the lateral wall
    (so the costophrenic angle is blunted first)."""
    A, c_f = ch.A, F["Pleural Effusion"]
    fluid_all = np.zeros((len(idx), ch.H, ch.W), np.float32)
    for s, sub in _sides_of(A["side"][idx, c_f]):
        if not len(sub):
            continue
        j = idx[sub]
        lung_s, (c, cv, a, b) = _one_lung(ch, j, np.full(len(j), s))
        lateral = np.clip((ch.u[j] - c) * (1.0 if s == 1 else -1.0) / a, 0.0, 1.2)
        level = _col(A["dome_base"][j, s] - A["eff_height"][j]) - _col(A["eff_meniscus"][j]) * lateral ** 2
        fluid = lung_s * L.not_central[j] * np.clip(0.5 + (ch.v[j] - level) / (2.5 * ch.px[j]), 0.0, 1.0)
        fluid_all[sub] = np.maximum(fluid_all[sub], fluid)
    k = _col(np.clip(0.95 * A["conspicuity"][idx, c_f], 0.0, 1.0))
    L.aeration[idx] *= 1.0 - k * fluid_all
    L.boxes[idx, c_f] = _mask_boxes(fluid_all, 0.5)


def _draw_pneumothorax(ch, idx, L):
    """The lung falls back toward the hilum; the gap is black and without markings, bounded
    by a thin bright (visceral pleural) line. Small ones stay at the apex."""
    A, c_p = ch.A, F["Pneumothorax"]
    sides = np.clip(A["side"][idx, c_p], 0, 1)
    lung_s, (c, cv, a, b) = _one_lung(ch, idx, sides)
    lung_s *= L.not_central[idx]
    uu, vv, pp = ch.u[idx], ch.v[idx], ch.px[idx]
    f = _col(A["ptx_shrink"][idx])
    hu = c - _col(_lateral_sign(sides)) * 0.5 * a              # hilum: the medial part of the lung
    hv = cv + 0.05
    d_in = lung_distance(hu + (uu - hu) / f, hv + (vv - hv) / f, c, cv, a, b) * f   # the shrunken lung
    collapsed = soft(d_in, pp)
    sev = A["severity"][idx, c_p]
    cv1, b1 = cv[:, 0, 0], b[:, 0, 0]
    v_cut = np.where(sev == 0, cv1 - 0.45 * b1, np.where(sev == 1, cv1 + 0.2 * b1, 10.0))   # lowest reach
    keep = soft(vv - _col(v_cut), pp)
    region = lung_s * (1.0 - collapsed) * keep
    line = lung_s * keep * np.clip(1.0 - np.abs(d_in) / (0.8 * pp), 0.0, 1.0)
    k = _col(np.clip(A["conspicuity"][idx, c_p], 0.0, 1.5))
    L.markings[idx] *= 1.0 - np.clip(k, 0, 1) * region
    L.added[idx] += k * (0.25 * line - 0.2 * region)
    L.boxes[idx, c_p] = _mask_boxes(np.maximum(region, line), 0.5)


def _draw_consolidation(ch, idx, L):
    """Patchy airspace opacity (three overlapping lobules), sometimes crossed by an air
    bronchogram: a dark branch where an open airway runs through the opaque lung."""
    A, c_c = ch.A, F["Consolidation"]
    uu, vv = ch.u[idx], ch.v[idx]
    size = _col(A["cons_size"][idx])
    cu, cv0 = _col(A["cons_u"][idx]), _col(A["cons_v"][idx])
    blob = np.zeros((len(idx), ch.H, ch.W), np.float32)
    for k in range(3):
        ou = cu + size * _col(A["cons_lobes"][idx, k, 0])
        ov = cv0 + size * _col(A["cons_lobes"][idx, k, 1])
        blob += np.exp(-((uu - ou) ** 2 + (vv - ov) ** 2) / (2 * (0.75 * size) ** 2))
    opacity = np.clip((blob - 0.3) / 0.45, 0.0, 1.0)
    hilum = np.stack([A["lung_c"][idx, np.clip(A["side"][idx, c_c], 0, 1)] * 0.35, A["heart_v"][idx] - 0.12], 1)
    start = np.stack([A["cons_u"][idx], A["cons_v"][idx]], 1)
    d_br, _ = _segment_distance(uu, vv, start, start + 0.6 * (hilum - start))
    bronchus = np.clip(1.0 - d_br / (0.9 * ch.px[idx]), 0.0, 1.0) * _col(A["cons_bronchus"][idx].astype(np.float32))
    opacity *= (1.0 - 0.6 * bronchus) * L.lung[idx]
    k = _col(np.clip(0.8 * A["conspicuity"][idx, c_c], 0.0, 1.0))
    L.aeration[idx] *= 1.0 - k * opacity
    L.boxes[idx, c_c] = _mask_boxes(opacity, 0.35)


def _draw_nodule(ch, idx, L):
    """Lung Lesion: a small round nodule, denser than the lung it replaces."""
    A, c_n = ch.A, F["Lung Lesion"]
    d = np.sqrt((ch.u[idx] - _col(A["nodule_u"][idx])) ** 2 + (ch.v[idx] - _col(A["nodule_v"][idx])) ** 2)
    nodule = soft(d - _col(A["nodule_r"][idx]), ch.px[idx])
    k = _col(np.clip(A["conspicuity"][idx, c_n], 0.0, 1.5))
    L.aeration[idx] *= 1.0 - np.clip(0.9 * k, 0, 1) * nodule
    L.added[idx] += 0.06 * k * nodule
    L.boxes[idx, c_n] = _mask_boxes(nodule, 0.3)


def _draw_atelectasis(ch, idx, L):
    """A plate-like band above the diaphragm (linear when small); a wedge when large."""
    A, c_a = ch.A, F["Atelectasis"]
    ang, half = A["atel_angle"][idx], 0.5 * A["atel_length"][idx]
    centre = np.stack([A["atel_u"][idx], A["atel_v"][idx]], 1)
    direction = np.stack([np.cos(ang), np.sin(ang)], 1)
    d, t = _segment_distance(ch.u[idx], ch.v[idx], centre - half[:, None] * direction,
                             centre + half[:, None] * direction)
    sev = A["severity"][idx, c_a]
    w0 = _col(np.array([0.008, 0.014, 0.012], np.float32)[sev])
    w1 = _col(np.array([0.008, 0.014, 0.05], np.float32)[sev])
    width = np.maximum(w0 + (w1 - w0) * t, 0.6 * ch.px[idx])          # at least ~1 px wide
    band = soft(d - width, ch.px[idx]) * L.lung[idx]
    k = _col(np.clip(0.9 * A["conspicuity"][idx, c_a], 0.0, 1.0))
    L.aeration[idx] *= 1.0 - k * band
    L.boxes[idx, c_a] = _mask_boxes(band, 0.25)


def _draw_edema(ch, idx, L):
    """Bilateral perihilar haze ("bat wings"), congested (thicker) vessels and, from
    moderate on, Kerley B lines: short horizontal lines at the lateral bases."""
    A, c_e = ch.A, F["Edema"]
    sev = A["severity"][idx, c_e]
    uu, vv = ch.u[idx], ch.v[idx]
    haze = np.zeros((len(idx), ch.H, ch.W), np.float32)
    lateral = np.zeros_like(haze)
    for s in (0, 1):
        c, a = _col(A["lung_c"][idx, s]), _col(A["lung_a"][idx, s])
        outward = 1.0 if s == 1 else -1.0
        hu, hv = c - outward * 0.45 * a, _col(A["lung_cv"][idx, s]) + 0.05
        su, sv = 0.09 + 0.03 * _col(sev), 0.12 + 0.03 * _col(sev)
        haze = np.maximum(haze, np.exp(-0.5 * (((uu - hu) / su) ** 2 + ((vv - hv) / sv) ** 2)))
        outer = np.clip((np.abs(uu - c) / a - 0.6) / 0.2, 0.0, 1.0) * (np.sign(uu - c) == outward)
        lateral = np.maximum(lateral, outer)
    kerley = ((np.cos(vv * (2 * np.pi / 0.03)) > 0.55) * lateral
              * soft(_col(A["lung_cv"][idx, 0]) + 0.1 - vv, ch.px[idx]) * _col(sev >= 1))
    lungs = L.lung[idx]
    conspicuity = _col(A["conspicuity"][idx, c_e])
    strength = _col(np.array([0.15, 0.26, 0.38], np.float32)[sev]) * conspicuity
    L.aeration[idx] *= 1.0 - np.clip(strength * haze + 0.3 * conspicuity * kerley, 0.0, 1.0) * lungs
    L.markings[idx] *= 1.0 + 0.4 * haze
    L.boxes[idx, c_e] = _mask_boxes(np.maximum(haze, kerley) * lungs, 0.2)


# Drawn in this order (Fracture is drawn with the ribs, Support Devices last, over everything).
_FINDING_DRAWERS = {"Cardiomegaly": _draw_cardiomegaly, "Pleural Effusion": _draw_effusion,
                    "Pneumothorax": _draw_pneumothorax, "Consolidation": _draw_consolidation,
                    "Lung Lesion": _draw_nodule, "Atelectasis": _draw_atelectasis, "Edema": _draw_edema}


def _draw_lungs(ch: _Chunk, L: _Layers):
    """Fill the lungs: air (times aeration) and vessels. Vessels are the zero-crossings of a
    smooth random field, a branching network of thin ridges ("ridged noise"), denser toward
    the hila."""
    tex = _upsample(ch.A["texture"], ch.H, ch.W)
    ridges = np.clip(1.0 - np.abs(tex) * 3.0, 0.0, 1.0)
    hilum_dist = np.sqrt((np.abs(ch.u) - 0.09) ** 2 + (ch.v - 0.02) ** 2)
    vessels = (0.35 + 0.65 * ridges) * np.clip(1.15 - hilum_dist / 0.3, 0.25, 1.0)
    L.D += L.lung * L.aeration * (MARKINGS * vessels * L.markings - LUNG_AIR)
    L.D += L.added * L.body


def _draw_bones(ch: _Chunk, L: _Layers, fx):
    """Posterior ribs (curving down laterally), with a fracture where `fx` says, and clavicles.

    All ribs of a side are one periodic function: `phase` counts rib spacings down from the
    top of the thorax along curved lines, a rib is where the phase is near a half-integer."""
    A, u, v, px = ch.A, ch.u, ch.v, ch.px
    w = np.abs(u - 0.005)                                   # distance from the spine
    spacing = ch.col("rib_spacing")
    phase = (v - ch.col("rib_top") + 0.35 * w - 1.8 * w * w) / spacing
    if len(fx):
        c_f = F["Fracture"]
        side_u = np.where(A["side"][fx, c_f] == 0, -1.0, 1.0)
        on_rib = (np.floor(phase[fx]) == _col(A["fracture_rib"][fx])) & (np.sign(u[fx] - 0.005) == _col(side_u))
        w_break = _col(A["fracture_w"][fx])
        fk = _col(np.clip(A["conspicuity"][fx, c_f], 0.0, 1.5))
        # the fragment lateral to the break is displaced, the displacement fading over a few mm
        lateral_fragment = soft(w_break - w[fx], px[fx]) * np.clip(1.0 - (w[fx] - w_break) / 0.05, 0.0, 1.0)
        phase[fx] -= on_rib * lateral_fragment * _col(A["fracture_step"][fx]) * fk
    t = np.abs(phase - np.floor(phase) - 0.5)               # 0 on a rib's centre line, 0.5 between ribs
    rib = np.clip(0.5 + (0.17 - t) * spacing / px, 0.0, 1.0)
    lateral_edge = np.maximum(-(ch.col("lung_c", 0) - ch.col("lung_a", 0)), ch.col("lung_c", 1) + ch.col("lung_a", 1))
    thorax = soft(w - lateral_edge - 0.03, px) * soft(0.025 - w, px) * (phase > 0)
    below = soft(v - L.dome_lowest, -px * 3)                 # ribs fade under the abdomen
    rib *= thorax * (1.0 - below) * L.body
    if len(fx):
        # the break: a gap across the rib, and a bright callus around it (bigger when healing)
        gap = soft(np.abs(w[fx] - w_break) - (0.014 + 0.5 * px[fx]) * fk, px[fx]) * on_rib
        rib[fx] *= 1.0 - gap
        healing = _col(A["fracture_healing"][fx].astype(np.float32))
        callus_d = np.sqrt((w[fx] - w_break) ** 2 / 4.0 + (t[fx] * spacing[fx]) ** 2)
        callus = soft(callus_d - (0.016 + 0.008 * healing), px[fx]) * on_rib
        L.D[fx] += (0.12 + 0.08 * healing) * fk * callus * L.body[fx]
        near_break = on_rib * soft(np.abs(w[fx] - w_break) - 0.05, px[fx])
        L.boxes[fx, c_f] = _mask_boxes(np.maximum(near_break * (rib[fx] + gap), callus), 0.2)
    L.D += ch.col("rib_density") * rib
    top = int(np.ceil(0.45 * ch.H))                 # clavicles only reach the top rows: draw there only
    for s in (-1.0, 1.0):
        p0 = np.stack([np.full(ch.B, 0.03 * s), A["clav_v"]], 1)
        p1 = np.stack([np.full(ch.B, 0.3 * s), A["clav_v"] - A["clav_rise"]], 1)
        d, _ = _segment_distance(u[:, :top], v[:, :top], p0, p1)
        L.D[:, :top] += 0.13 * soft(d - 0.017, px) * L.body[:, :top]


def _scanner(ch: _Chunk, D, rng, markers):
    """Density -> pixel values: the patient's exposure, the site's tone curve, burned-in
    marker, detector blur and noise; quantised to 8 bits like a stored image."""
    A, H = ch.A, ch.H
    # one tone curve: patient (offset, contrast), site (offset, contrast), both gammas in one power
    img = ch.col("offset") + ch.col("contrast") * D
    np.clip(img, 0.0, 1.0, out=img)
    img = ch.col("look_offset") + ch.col("look_contrast") * (img - 0.5) + 0.5
    np.clip(img, 0.0, 1.0, out=img)
    img **= ch.col("gamma") * ch.col("look_gamma")
    for key, layer in markers.items():
        sel = np.nonzero(A["look_marker"] == key)[0]
        if len(sel):
            img[sel] = np.maximum(img[sel], 0.92 * layer)
    for blur in np.unique(A["look_blur"]):
        sel = np.nonzero(A["look_blur"] == blur)[0]
        sigma = float(blur) * H / 64.0                         # site resolution, in pixels at 64 px
        if sigma > 0.05:
            img[sel] = gaussian_filter1d(gaussian_filter1d(img[sel], sigma, axis=1), sigma, axis=2)
    img += ch.col("look_noise") * rng.standard_normal(img.shape, dtype=np.float32)
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def _draw_devices(ch: _Chunk, idx):
    """Tubes and lines as polylines in body coordinates (standard courses, jittered); the
    pacemaker as a bright box in the upper chest with leads to the right heart."""
    A = ch.A
    u, v, px = ch.u[idx], ch.v[idx], ch.px[idx]
    j = A["device_jitter"][idx]
    dev = A["devices"][idx]
    dev_side = A["side"][idx, F["Support Devices"]]     # side of CVC / PICC / pacemaker (0 right, 1 left)
    mask = np.zeros(u.shape, np.float32)
    width = np.maximum(0.0055, 0.45 * px)

    def draw(which, pts):
        sel = np.nonzero(which)[0]
        if len(sel):
            d = _polyline_distance(u[sel], v[sel], pts[sel])
            mask[sel] = np.maximum(mask[sel], soft(d - width[sel], px[sel]))

    def P(*xy):
        return np.stack([np.stack([np.broadcast_to(x, len(idx)), np.broadcast_to(y, len(idx))], 1)
                         for x, y in xy], 1).astype(np.float32)

    # endotracheal tube: down the trachea, tip a few cm above the carina
    draw(dev[:, 0], P((0.0 + j[:, 0] * 0.3, -0.6), (0.0 + j[:, 0] * 0.3, -0.2 + j[:, 1])))
    # nasogastric tube: midline, under the left hemidiaphragm into the stomach
    draw(dev[:, 1], P((0.03, -0.6), (0.035 + j[:, 2] * 0.3, 0.1), (0.07, 0.3 + j[:, 3]), (0.17 + j[:, 4], 0.36)))
    sgn = np.where(dev_side == 0, -1.0, 1.0).astype(np.float32)
    # central venous catheter: internal jugular on the right, subclavian on the left, tip in the SVC
    right_ij = P((-0.11 + j[:, 5], -0.6), (-0.06, -0.28), (-0.035, -0.1 + j[:, 6]))
    left_sc = P((0.3, -0.3 + j[:, 5]), (0.12, -0.25), (0.02, -0.18), (-0.03, -0.1 + j[:, 6]))
    draw(dev[:, 2] & (dev_side == 0), right_ij)
    draw(dev[:, 2] & (dev_side == 1), left_sc)
    # PICC line: up the arm, across the shoulder, to the SVC
    draw(dev[:, 3], P((0.5 * sgn, -0.22 + j[:, 7]), (0.32 * sgn, -0.31), (0.12 * sgn, -0.27), (-0.03, -0.12 + j[:, 6])))
    # pacemaker: generator in the upper chest, leads to the right atrium and ventricle
    pm = np.nonzero(dev[:, 4])[0]
    if len(pm):
        gu = _col(0.28 * sgn[pm] + j[pm, 0])
        gv = _col(-0.32 + j[pm, 1])
        box = np.maximum(np.abs(u[pm] - gu) - 0.035, np.abs(v[pm] - gv) - 0.024)
        mask[pm] = np.maximum(mask[pm], soft(box, px[pm]))
    draw(dev[:, 4], P((0.26 * sgn, -0.31), (0.1 * sgn, -0.22), (-0.01, -0.05), (0.02, 0.04 + j[:, 2])))
    draw(dev[:, 4], P((0.26 * sgn, -0.31), (0.1 * sgn, -0.2), (0.0, -0.02), (0.1, 0.19 + j[:, 3])))
    return mask
