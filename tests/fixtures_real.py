"""Tiny files in the real datasets' formats, and a local HTTP server that serves them.

Each builder writes what the real distribution contains, at toy scale:

* IU X-ray: Open-I ``ecgen-radiology/N.xml`` reports (``<eCitation>`` with ``<uId>``,
  ``<MedlineCitation>/.../<AbstractText Label="FINDINGS">`` and ``<parentImage id=...>``)
  and ``NLMCXR_png/<parentImage id>.png`` images;
* ChestMNIST: MedMNIST's ``.npz`` with ``{train,val,test}_{images,labels}``;
* VQA-RAD: ``VQA_RAD Dataset Public.json`` and ``VQA_RAD Image Folder/synpicN.jpg``;
* IXI: ``IXI-T1.tar`` / ``IXI-T2.tar`` / ``IXI-PD.tar`` of ``IXI0NN-Site-NNNN-T1.nii.gz``
  volumes, with the T1 stored sagittally and the T2/PD axially, as in IXI.

Every image encodes which one it is (its grey level), so the tests can check pairing.
"""
from __future__ import annotations

import functools
import io
import json
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

# ----------------------------------------------------------------------------------------------
# IU X-ray
# ----------------------------------------------------------------------------------------------

IU_LICENCE = "http://creativecommons.org/licenses/by-nc-nd/4.0/"

# report number -> (findings, impression, [image ids]); ids follow Open-I's CXR<n>_<k>_IM-<...> names
IU_REPORTS = {
    1: ("The cardiac silhouette and mediastinum size are within normal limits. There is no pulmonary edema. "
        "There is no focal consolidation. There are no XXXX of a pleural effusion. There is no evidence of "
        "pneumothorax.", "Normal chest x-XXXX.", ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]),
    2: ("Small left pleural effusion. The heart is enlarged.", "Cardiomegaly with small left effusion.",
        ["CXR2_1_IM-0652-1001"]),
    3: ("No pneumothorax.", "No acute disease.", []),                                 # a report with no image
    4: ("Heart size normal. Lungs are clear.", "Normal chest.", ["CXR4_1_IM-2050-1001"]),  # image not on disk
    5: ("", "", ["CXR5_1_IM-2117-1003"]),                                             # no text at all
    6: ("Right upper lobe consolidation.", "Pneumonia.", ["CXR6_1_IM-2263-1001", "CXR6_1_IM-2263-2001"]),
    7: ("Cannot exclude a small right pneumothorax.", "Possible small pneumothorax.", ["CXR7_1_IM-2325-1001"]),
    8: ("Mild pulmonary edema. Cardiomegaly.", "Congestive heart failure.", ["CXR8_1_IM-2366-1001"]),
    9: ("There is a 1 cm nodule in the left upper lobe.", "Pulmonary nodule.", ["CXR9_1_IM-2407-1001"]),
    10: ("Left basilar atelectasis. No effusion.", "Atelectasis.", ["CXR10_1_IM-0059-1001"]),
    11: ("Healed right rib fracture. No pneumothorax.", "Old rib fracture.", ["CXR11_1_IM-0067-1001"]),
    12: ("Lungs are clear. No pleural effusion or pneumothorax.", "No acute cardiopulmonary abnormality.",
         ["CXR12_1_IM-0080-1001"]),
    13: ("Right IJ central venous catheter tip in the SVC. No pneumothorax.", "Line as above.",
         ["CXR13_1_IM-0093-1001"]),
}
IU_ORPHAN = "CXR999_1_IM-9999-1001"          # an image no report lists
IU_MISSING = {"CXR4_1_IM-2050-1001"}         # listed but not on disk


def iu_image_ids() -> list:
    ids = [i for _, _, images in IU_REPORTS.values() for i in images if i not in IU_MISSING]
    return ids + [IU_ORPHAN]


def iu_grey(image_id: str) -> int:
    """The grey level the fixture gives an image: distinct per image, so rows can be traced."""
    return 20 + 15 * sorted(iu_image_ids()).index(image_id)


def openi_xml(number: int, findings: str, impression: str, images: list) -> str:
    """One report in Open-I's layout (abridged: the fields real files have around these)."""
    abstract = "".join(f'<AbstractText Label="{label}">{text}</AbstractText>'
                       for label, text in (("COMPARISON", "None."), ("INDICATION", "Cough."),
                                           ("FINDINGS", findings), ("IMPRESSION", impression)))
    parents = "".join(f'<parentImage id="{i}"><figureId>F{k + 1}</figureId><caption>Xray Chest PA and Lateral'
                      f'</caption><panel type="single"><url>/hadoop/storage/radiology/extract/{i}.jpg</url>'
                      f'</panel></parentImage>' for k, i in enumerate(images))
    return ('<?xml version="1.0" encoding="utf-8"?>\n<eCitation><meta type="rr"/>'
            f'<uId id="CXR{number}"/><pmcId id="{number}"/><docSource>CXR</docSource><IUXRId id="{number}"/>'
            f'<licenseType>open-access</licenseType><licenseURL>{IU_LICENCE}</licenseURL>'
            '<ccLicense>byncnd</ccLicense><articleType>XR</articleType><publisher>Indiana University</publisher>'
            '<title>Indiana University Chest X-ray Collection</title>'
            '<MedlineCitation Owner="Indiana University" Status="supplied by publisher">'
            '<Article PubModel="Electronic"><Journal><JournalTitle>Indiana University Chest X-ray Collection'
            f'</JournalTitle></Journal><Abstract>{abstract}</Abstract></Article></MedlineCitation>'
            f'<MeSH><major>normal</major></MeSH>{parents}</eCitation>\n')


def write_iu_xray(root: Path, images_in_subfolder: bool = True) -> Path:
    """Open-I's two archives, extracted as distributed, under ``root``."""
    root = Path(root)
    (root / "ecgen-radiology").mkdir(parents=True, exist_ok=True)
    for number, (findings, impression, images) in IU_REPORTS.items():
        (root / "ecgen-radiology" / f"{number}.xml").write_text(openi_xml(number, findings, impression, images))
    image_dir = root / "NLMCXR_png" if images_in_subfolder else root
    image_dir.mkdir(parents=True, exist_ok=True)
    for k, image_id in enumerate(iu_image_ids()):
        h, w = (60, 48) if k % 2 else (48, 64)                 # not square, either way round
        pixels = np.full((h, w), iu_grey(image_id), np.uint8)
        if image_id == "CXR2_1_IM-0652-1001":
            # orientation check: a bright block in the top-left corner of the kept square
            top, left = (h - min(h, w)) // 2, (w - min(h, w)) // 2
            pixels[top:top + 12, left:left + 12] = 255
        Image.fromarray(pixels).save(image_dir / f"{image_id}.png")
    return root


def iu_archives(root: Path, out: Path) -> dict:
    """``NLMCXR_reports.tgz`` and ``NLMCXR_png.tgz`` bytes made from a fixture folder (reports
    under ecgen-radiology/, images at the archive's top level, as Open-I ships them)."""
    out = {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(root / "ecgen-radiology", arcname="ecgen-radiology")
    out["NLMCXR_reports.tgz"] = buf.getvalue()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for png in sorted((root / "NLMCXR_png").glob("*.png")):
            tar.add(png, arcname=png.name)
    out["NLMCXR_png.tgz"] = buf.getvalue()
    return out


# ----------------------------------------------------------------------------------------------
# ChestMNIST
# ----------------------------------------------------------------------------------------------

def medmnist_npz_bytes(size: int = 28, counts=(6, 3, 4), seed: int = 0) -> bytes:
    """A ChestMNIST-format archive. Row 0 of each split has no label (No Finding), row 1 mass +
    nodule, row 2 only infiltration (no course column, but not No Finding); image k of a split
    has grey level 10 + k (+ 100 for val, + 150 for test) so rows can be traced."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for s, (split, n) in enumerate(zip(("train", "val", "test"), counts)):
        labels = (rng.random((n, 14)) < 0.2).astype(np.uint8)
        labels[0] = 0
        labels[1] = 0
        labels[1, [4, 5]] = 1
        labels[2] = 0
        labels[2, 3] = 1
        images = np.stack([np.full((size, size), 10 + k + (0, 100, 150)[s], np.uint8) for k in range(n)])
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# VQA-RAD
# ----------------------------------------------------------------------------------------------

def vqa_rad_entries() -> list:
    case = "https://medpix.nlm.nih.gov/case?id="
    e = lambda qid, img, organ, q, a, at, qt, pt, c: {                     # noqa: E731
        "qid": qid, "phrase_type": pt, "qid_linked_id": f"link-{qid}", "image_case_url": case + c,
        "image_name": img, "image_organ": organ, "evaluation": "not evaluated", "question": q,
        "question_rephrase": "NULL", "question_relation": "NULL", "question_frame": "NULL",
        "question_type": qt, "answer": a, "answer_type": at}
    return [
        e(0, "synpic54610.jpg", "HEAD", "Are regions of the brain infarcted?", "Yes", "CLOSED", "PRES", "freeform", "c1"),
        e(1, "synpic54610.jpg", "HEAD", "Is there an infarct in the brain?", "Yes", "CLOSED ", "PRES", "para", "c1"),
        e(2, "synpic54610.jpg", "HEAD", "Where is the infarct?", "left temporal lobe", "OPEN", "POS",
          "test_freeform", "c1"),
        e(3, "synpic29265.jpg", "CHEST", "Are the lungs normal appearing?", "No", "CLOSED", "ABN", "freeform", "c2"),
        e(4, "synpic29265.jpg", "CHEST", "How many lesions are there?", 2, "OPEN", "COUNT", "test_para", "c2"),
        e(5, "synpic31116.jpg", "CHEST", "Is this a PA film?", "Yes", "CLOSED", "PLANE", "freeform", "c2"),
        e(6, "synpic40272.jpg", "ABD", "What organ is abnormal?", "Liver", "OPEN", "ORGAN", "freeform", "c3"),
        e(7, "synpic40272.jpg", "ABD", "Is the liver enlarged?", "yes", "CLOSED", "SIZE", "test_freeform", "c3"),
        e(8, "synpic12345.jpg", "HEAD", "Is this an MRI?", "No", "CLOSED", "MODALITY", "freeform", "c4"),
        e(9, "synpic99999.jpg", "ABD", "Is there free air?", "No", "CLOSED", "PRES", "freeform", "c5"),  # no image file
    ]


VQA_IMAGES = {"synpic54610.jpg": 40, "synpic29265.jpg": 90, "synpic31116.jpg": 140, "synpic40272.jpg": 190,
              "synpic12345.jpg": 230}


def write_vqa_rad(root: Path) -> Path:
    root = Path(root)
    folder = root / "VQA_RAD Image Folder"
    folder.mkdir(parents=True, exist_ok=True)
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(vqa_rad_entries(), indent=1))
    for k, (name, grey) in enumerate(VQA_IMAGES.items()):
        rgb = np.full((50 + 4 * k, 40, 3), grey, np.uint8)          # RGB JPEGs of various sizes, as in MedPix
        Image.fromarray(rgb).save(folder / name, quality=95)
    return root


def vqa_rad_zip_bytes(root: Path) -> bytes:
    """The OSF project as OSF zips it: everything under one top-level folder."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(Path(root).rglob("*")):
            if path.is_file():
                z.write(path, "osfstorage/" + str(path.relative_to(root)))
        z.writestr("osfstorage/Readme.docx", b"not really a docx")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# IXI
# ----------------------------------------------------------------------------------------------

IXI_SUBJECTS = ("IXI002-Guys-0828", "IXI012-HH-1211", "IXI013-HH-1212", "IXI035-IOP-0873")
MARKER_WORLD = np.array([30.0, 35.0, 0.0])      # mm: the patient's right (+x), anterior (+y), mid-height
MARKER_RADIUS = 14.0                              # big enough (>0.5% of the head) to set the 99.5th percentile


def _head(world: np.ndarray, t2_like: bool) -> np.ndarray:
    """An ellipsoid head with a bright marker, as a function of world coordinates (mm)."""
    x, y, z = world[..., 0], world[..., 1], world[..., 2]
    head = (x / 60.0) ** 2 + (y / 75.0) ** 2 + (z / 55.0) ** 2 <= 1.0
    ventricle = (x / 12.0) ** 2 + (y / 25.0) ** 2 + (z / 15.0) ** 2 <= 1.0
    marker = np.sum((world - MARKER_WORLD) ** 2, axis=-1) <= MARKER_RADIUS ** 2
    value = np.where(head, 300.0, 0.0)
    value = np.where(ventricle, 900.0 if t2_like else 80.0, value)    # CSF: bright on T2, dark on T1
    return np.where(marker, 1200.0, value).astype(np.float32)


@functools.lru_cache(maxsize=None)
def ixi_volumes(key: str):
    """(T1, T2, PD) nibabel images of one subject: T2/PD axial 1.5 mm in-plane x 3 mm slices;
    T1 sagittal, stored (y, z, x)-major with 1.2 x 1.2 x 1.6 mm voxels and another origin."""
    import nibabel as nib

    shift = float(int(key[3:6]) % 5)                        # each subject sits a little differently
    a2 = np.diag([1.5, 1.5, 3.0, 1.0])
    a2[:3, 3] = [-72.0 + shift, -90.0, -57.0]
    shape2 = (96, 120, 38)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape2], indexing="ij"), -1).astype(float)
    world2 = ijk @ a2[:3, :3].T + a2[:3, 3]
    t2 = nib.Nifti1Image(_head(world2, True), a2)
    pd = nib.Nifti1Image(0.5 * _head(world2, True) + 100 * (_head(world2, True) > 0), a2)
    # T1: voxel axes (i, j, k) run along world (y, z, x): a sagittal acquisition
    a1 = np.zeros((4, 4))
    a1[1, 0], a1[2, 1], a1[0, 2], a1[3, 3] = 1.2, 1.2, 1.6, 1.0
    a1[:3, 3] = [-80.0, -95.0 + shift, -66.0]
    shape1 = (160, 110, 100)
    ijk1 = np.stack(np.meshgrid(*[np.arange(n) for n in shape1], indexing="ij"), -1).astype(float)
    world1 = ijk1 @ a1[:3, :3].T + a1[:3, 3]
    t1 = nib.Nifti1Image(_head(world1, False), a1)
    return t1, t2, pd


def ixi_tar_bytes(contrast: str, subjects=IXI_SUBJECTS) -> bytes:
    import gzip

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:          # IXI's tarballs are plain tar of .nii.gz
        for key in subjects:
            image = dict(zip(("T1", "T2", "PD"), ixi_volumes(key)))[contrast]
            data = gzip.compress(image.to_bytes(), compresslevel=1)
            info = tarfile.TarInfo(f"{key}-{contrast}.nii.gz")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# a local HTTP server (127.0.0.1 only) with Range support and configurable misbehaviour
# ----------------------------------------------------------------------------------------------

class FixtureServer:
    """Serves ``files`` (name -> bytes) at ``http://127.0.0.1:PORT/NAME``.

    ``truncate_next[name] = k``: the next k responses for ``name`` announce the full length but
    close after half the bytes (a dropped connection). ``ignore_range``: answer 200 with the
    whole file even when asked for a range. ``requests`` records (name, Range header)."""

    def __init__(self, files: dict):
        self.files = dict(files)
        self.truncate_next: dict = {}
        self.ignore_range = False
        self.requests: list = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/").split("?")[0]
                range_header = self.headers.get("Range")
                server.requests.append((name, range_header))
                if name not in server.files:
                    self.send_error(404)
                    return
                data = server.files[name]
                start = 0
                if range_header and not server.ignore_range:
                    start = int(range_header.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if server.truncate_next.get(name, 0) > 0:
                    server.truncate_next[name] -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def hits(self, name: str) -> int:
        return sum(1 for n, _ in self.requests if n == name)
