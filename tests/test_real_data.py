"""Real datasets on fixture files in their real formats, with no network: downloads (resume,
truncation, checksums, offline), parsing and pairing, labels, splits, resizing, atomic
preparation, the command-line scripts. The local HTTP server listens on 127.0.0.1 only."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fixtures_real as fx
from medmm_lite.data import FINDINGS, Cohort, MRIPhantoms, load_dataset, patient_split
from medmm_lite.data.real import (ChecksumError, DatasetNotAvailableError, DownloadError, RemoteFile,
                                  available_findings, fetch)
from medmm_lite.data.real import chestmnist, common, iu_xray, ixi, vqa_rad
from medmm_lite.data.real.download import RECORD_NAME
from medmm_lite.eval import labels_matrix

ROOT = Path(__file__).resolve().parent.parent
F = {name: i for i, name in enumerate(FINDINGS)}


@pytest.fixture(autouse=True)
def private_data_dir(tmp_path, monkeypatch):
    """Every test gets its own $MEDMM_DATA: never the user's, never another test's."""
    monkeypatch.setenv("MEDMM_DATA", str(tmp_path / "medmm"))
    return tmp_path / "medmm"


def quiet(*_):
    pass


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _no_network(*_, **__):
    raise AssertionError("this step must not touch the network")


class _Offline:
    """An opener that fails the test if used."""
    open = staticmethod(_no_network)


# ==============================================================================================
# downloads
# ==============================================================================================

PAYLOAD = bytes(range(256)) * 40 + b"end"          # 10,243 bytes


def _remote(server, name="payload.bin", **kw):
    return RemoteFile(f"{server.url}/{name}", name, **kw)


def test_fetch_verifies_published_md5_and_never_refetches_a_valid_file(tmp_path):
    with fx.FixtureServer({"payload.bin": PAYLOAD}) as server:
        remote = _remote(server, md5=_md5(PAYLOAD))
        path = fetch(remote, tmp_path, dataset="demo", progress=False, log=quiet)
        assert path.read_bytes() == PAYLOAD and not path.with_name("payload.bin.part").exists()
        fetch(remote, tmp_path, dataset="demo", progress=False, log=quiet)
        assert server.hits("payload.bin") == 1, "a present, valid file must not be downloaded again"


def test_truncated_download_is_detected_and_resumed_with_range(tmp_path):
    logs = []
    with fx.FixtureServer({"payload.bin": PAYLOAD}) as server:
        server.truncate_next["payload.bin"] = 1               # the first response stops halfway
        path = fetch(_remote(server, md5=_md5(PAYLOAD)), tmp_path, dataset="demo", progress=False, backoff=0,
                     log=logs.append)
        assert path.read_bytes() == PAYLOAD
        ranges = [r for n, r in server.requests if n == "payload.bin"]
    assert ranges == [None, f"bytes={len(PAYLOAD) // 2}-"], ranges
    assert any("resuming" in line for line in logs)


def test_a_part_file_from_an_interrupted_run_is_resumed(tmp_path):
    (tmp_path / "payload.bin.part").write_bytes(PAYLOAD[:1000])
    with fx.FixtureServer({"payload.bin": PAYLOAD}) as server:
        path = fetch(_remote(server, md5=_md5(PAYLOAD)), tmp_path, dataset="demo", progress=False, log=quiet)
        assert server.requests == [("payload.bin", "bytes=1000-")]
    assert path.read_bytes() == PAYLOAD


def test_a_server_that_ignores_range_restarts_the_file_instead_of_appending(tmp_path):
    (tmp_path / "payload.bin.part").write_bytes(PAYLOAD[:1000])
    with fx.FixtureServer({"payload.bin": PAYLOAD}) as server:
        server.ignore_range = True
        path = fetch(_remote(server, md5=_md5(PAYLOAD)), tmp_path, dataset="demo", progress=False, log=quiet)
    assert path.read_bytes() == PAYLOAD


def test_a_complete_part_file_is_not_downloaded_again(tmp_path):
    (tmp_path / "payload.bin.part").write_bytes(PAYLOAD)          # killed just before the rename
    with fx.FixtureServer({"payload.bin": PAYLOAD}) as server:
        path = fetch(_remote(server, md5=_md5(PAYLOAD)), tmp_path, dataset="demo", progress=False, log=quiet)
        assert server.requests == [("payload.bin", f"bytes={len(PAYLOAD)}-")]     # answered 416: nothing left
    assert path.read_bytes() == PAYLOAD


def test_a_part_file_longer_than_the_file_is_started_over(tmp_path):
    (tmp_path / "payload.bin.part").write_bytes(PAYLOAD + b"junk from another file")
    with fx.FixtureServer({"payload.bin": PAYLOAD}) as server:
        path = fetch(_remote(server), tmp_path, dataset="demo", progress=False, backoff=0, log=quiet)
        assert [r for _, r in server.requests] == [f"bytes={len(PAYLOAD) + 22}-", None]
    assert path.read_bytes() == PAYLOAD


def test_a_bad_checksum_is_fetched_again_once_then_fails_clearly(tmp_path):
    with fx.FixtureServer({"payload.bin": PAYLOAD}) as server:
        with pytest.raises(ChecksumError) as err:
            fetch(_remote(server, md5="0" * 32), tmp_path, dataset="demo", progress=False, log=quiet)
        assert server.hits("payload.bin") == 2
    message = str(err.value)
    assert "demo" in message and "MD5" in message and "0" * 32 in message and "synthcxr" in message
    assert not (tmp_path / "payload.bin").exists() and not (tmp_path / "payload.bin.part").exists()


def test_a_corrupted_file_on_disk_is_detected_and_fetched_again(tmp_path):
    with fx.FixtureServer({"payload.bin": PAYLOAD}) as server:
        remote = _remote(server, md5=_md5(PAYLOAD))
        path = fetch(remote, tmp_path, dataset="demo", progress=False, log=quiet)
        damaged = bytearray(PAYLOAD)
        damaged[5000] ^= 0xFF
        path.write_bytes(bytes(damaged))
        logs = []
        fetch(remote, tmp_path, dataset="demo", progress=False, log=logs.append)
        assert server.hits("payload.bin") == 2
    assert path.read_bytes() == PAYLOAD
    assert any("does not match" in line for line in logs)


def test_without_a_published_checksum_the_first_download_is_recorded_and_enforced(tmp_path):
    with fx.FixtureServer({"payload.bin": PAYLOAD}) as server:
        remote = _remote(server)
        path = fetch(remote, tmp_path, dataset="demo", progress=False, log=quiet)
        record = json.loads((tmp_path / RECORD_NAME).read_text())["payload.bin"]
        assert record["size"] == len(PAYLOAD) and record["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
        fetch(remote, tmp_path, dataset="demo", progress=False, log=quiet)
        assert server.hits("payload.bin") == 1
        path.write_bytes(PAYLOAD[:-10])                       # truncated on disk (a bad copy, a full disk)
        logs = []
        fetch(remote, tmp_path, dataset="demo", progress=False, log=logs.append)
        assert server.hits("payload.bin") == 2
    assert path.read_bytes() == PAYLOAD
    assert any("truncated" in line for line in logs)


def test_a_file_placed_by_hand_is_used_and_recorded_without_the_network(tmp_path):
    (tmp_path / "payload.bin").write_bytes(PAYLOAD)
    path = fetch(RemoteFile("http://unreachable.invalid/payload.bin", "payload.bin"), tmp_path, dataset="demo",
                 opener=_Offline(), progress=False, log=quiet)
    assert path.read_bytes() == PAYLOAD
    assert json.loads((tmp_path / RECORD_NAME).read_text())["payload.bin"]["size"] == len(PAYLOAD)


def test_a_structural_check_rejects_a_file_that_is_not_what_it_claims(tmp_path):
    def must_start_with_zero(path):
        if Path(path).read_bytes()[:1] != b"\x00":
            raise ValueError("wrong magic")

    with fx.FixtureServer({"payload.bin": b"\x01" + PAYLOAD[1:]}) as server:
        with pytest.raises(ChecksumError, match="wrong magic"):
            fetch(_remote(server, validate=must_start_with_zero), tmp_path, dataset="demo", progress=False, log=quiet)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_download_fails_with_a_message_naming_the_dataset_and_the_synthetic_default(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/NLMCXR_png.tgz"
    with pytest.raises(DownloadError) as err:
        fetch(RemoteFile(url, "NLMCXR_png.tgz"), tmp_path, dataset="iu_xray", progress=False, retries=1, backoff=0,
              log=quiet)
    message = str(err.value)
    assert "iu_xray" in message and url in message and 'DATASET = "synthcxr"' in message
    assert "run the same command again" in message


def test_a_missing_file_is_not_retried_forever(tmp_path):
    with fx.FixtureServer({}) as server:
        with pytest.raises(DownloadError, match="404"):
            fetch(_remote(server), tmp_path, dataset="demo", progress=False, backoff=0, log=quiet)
        assert server.hits("payload.bin") == 1


# ==============================================================================================
# IU X-ray
# ==============================================================================================

@pytest.fixture
def iu_root(tmp_path):
    return fx.write_iu_xray(tmp_path / "openi")


def test_parse_openi_report(iu_root):
    report = iu_xray.parse_report(iu_root / "ecgen-radiology" / "2.xml")
    assert report.report_id == 2 and report.uid == "CXR2"
    assert report.findings == "Small left pleural effusion. The heart is enlarged."
    assert report.impression == "Cardiomegaly with small left effusion."
    assert report.image_ids == ["CXR2_1_IM-0652-1001"]
    assert report.licence_url == fx.IU_LICENCE
    assert report.text == ("FINDINGS: Small left pleural effusion. The heart is enlarged. "
                           "IMPRESSION: Cardiomegaly with small left effusion.")
    # the same from bytes; COMPARISON and INDICATION are not part of the text
    same = iu_xray.parse_report((iu_root / "ecgen-radiology" / "2.xml").read_bytes())
    assert same.text == report.text and "Cough" not in same.text


def test_reports_pair_with_images_through_parent_image_ids(iu_root):
    pairing = iu_xray.scan(iu_root)
    by_report = {}
    for r, image_id in pairing.pairs:
        by_report.setdefault(pairing.reports[r].report_id, []).append(image_id)
    assert by_report[1] == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]        # a report with two images
    assert 3 in pairing.reports_without_images                                   # a report with none
    assert 4 in pairing.reports_without_images                                   # its image is not on disk
    assert pairing.reports_without_text == [5]
    assert pairing.images_without_reports == [fx.IU_ORPHAN]                      # an image with no report
    assert fx.IU_ORPHAN not in {i for _, i in pairing.pairs}
    assert set(by_report) == {1, 2, 6, 7, 8, 9, 10, 11, 12, 13}
    assert pairing.licences == (fx.IU_LICENCE,)


def test_load_iu_xray_returns_a_cohort_with_honest_unknowns(iu_root):
    cohort = load_dataset("iu_xray", root=iu_root, image_size=32)
    pairing = iu_xray.scan(iu_root)
    assert isinstance(cohort, Cohort) and len(cohort) == len(pairing.pairs) == 12
    assert cohort.images.shape == (12, 1, 32, 32) and cohort.images.dtype == torch.float32
    assert 0.0 <= float(cohort.images.min()) and float(cohort.images.max()) <= 1.0
    assert cohort.labels.shape == (12, len(FINDINGS)) and cohort.image_size == 32
    # every row shows the image its report lists: the fixture's grey levels trace them
    for k, (r, image_id) in enumerate(pairing.pairs):
        assert cohort.reports[k] == pairing.reports[r].text
        if image_id != "CXR2_1_IM-0652-1001":
            assert abs(float(cohort.images[k].median()) * 255 - fx.iu_grey(image_id)) <= 1, image_id
    # both views of report 1: same report, same patient, same study
    rows = [k for k, (r, _) in enumerate(pairing.pairs) if pairing.reports[r].report_id == 1]
    assert len(rows) == 2 and cohort.reports[rows[0]] == cohort.reports[rows[1]]
    assert cohort.patient_ids[rows[0]] == cohort.patient_ids[rows[1]] == 1
    # what Open-I does not have is marked unknown, not invented
    assert np.isnan(cohort.age).all() and (cohort.sex == "U").all() and torch.isnan(cohort.labs).all()
    assert cohort.boxes == [[] for _ in range(12)] and (cohort.radiologist == -1).all()
    assert cohort.site_names == ("Indiana University",)
    assert available_findings("iu_xray") == FINDINGS


def test_iu_xray_labels_come_from_the_course_labeler(iu_root):
    cohort = load_dataset("iu_xray", root=iu_root, image_size=32)
    assert torch.equal(cohort.labels, torch.from_numpy(labels_matrix(cohort.reports)))
    row = {int(p): k for k, p in enumerate(cohort.patient_ids)}
    L = cohort.labels
    assert L[row[2], F["Cardiomegaly"]] == 1 and L[row[2], F["Pleural Effusion"]] == 1
    assert L[row[1], F["No Finding"]] == 1 and L[row[1], :F["No Finding"]].sum() == 0
    assert L[row[9], F["Lung Lesion"]] == 1 and L[row[11], F["Fracture"]] == 1
    assert L[row[13], F["Support Devices"]] == 1
    # "Cannot exclude a small right pneumothorax": uncertain, counted positive (U-Ones) and flagged hedged
    assert L[row[7], F["Pneumothorax"]] == 1 and cohort.hedged[row[7], F["Pneumothorax"]]
    assert cohort.hedged.sum() == 1
    zeros = load_dataset("iu_xray", root=iu_root, image_size=32, uncertain_as=0)
    assert zeros.labels[row[7], F["Pneumothorax"]] == 0


def test_iu_xray_resizing_keeps_orientation_and_crops_to_the_centre(iu_root):
    for size in (16, 32, 48):
        cohort = load_dataset("iu_xray", root=iu_root, image_size=size)
        k = int(np.nonzero(cohort.patient_ids == 2)[0][0])
        img = cohort.images[k, 0]
        q = size // 4
        assert img[:q, :q].mean() > 0.9, "the bright block was in the top-left corner of the centre square"
        assert abs(float(img[-q:, -q:].mean()) * 255 - fx.iu_grey("CXR2_1_IM-0652-1001")) <= 2


def test_iu_xray_images_may_sit_directly_under_root(tmp_path, iu_root):
    flat = fx.write_iu_xray(tmp_path / "flat", images_in_subfolder=False)
    a = load_dataset("iu_xray", root=iu_root, image_size=32, cache=False)
    b = load_dataset("iu_xray", root=flat, image_size=32, cache=False)
    assert torch.equal(a.images, b.images) and a.reports == b.reports


def test_iu_xray_subsets_by_report_and_one_view_per_report(iu_root):
    a = load_dataset("iu_xray", root=iu_root, image_size=16, n_studies=4, seed=3)
    b = load_dataset("iu_xray", root=iu_root, image_size=16, n_studies=4, seed=3)
    c = load_dataset("iu_xray", root=iu_root, image_size=16, n_studies=4, seed=4)
    assert len(np.unique(a.patient_ids)) == 4 and np.array_equal(a.patient_ids, b.patient_ids)
    assert not np.array_equal(np.unique(a.patient_ids), np.unique(c.patient_ids))
    first = load_dataset("iu_xray", root=iu_root, image_size=16, images_per_report="first")
    assert len(first) == len(np.unique(first.patient_ids)) == 10
    keep_empty = iu_xray.scan(iu_root, require_text=False)
    assert 5 in {r.report_id for r in keep_empty.reports}


def test_iu_xray_works_with_patient_split_and_prepare_data(iu_root, private_data_dir):
    import shutil

    from medmm_lite import profile
    from medmm_lite.data import CohortDataset, prepare_data

    cohort = load_dataset("iu_xray", root=iu_root, image_size=32)
    split = patient_split(cohort, seed=0)
    owner = {}
    for name, idx in split.items():
        for p in cohort.patient_ids[idx]:
            assert owner.setdefault(int(p), name) == name, "a patient (report) in two splits"
    assert sum(len(v) for v in split.values()) == len(cohort) and all(len(v) for v in split.values())
    # prepare_data finds the dataset in $MEDMM_DATA/iu_xray, as after the prepare script
    shutil.copytree(iu_root, private_data_dir / "iu_xray")
    data = prepare_data(profile("smoke"), dataset="iu_xray")
    assert len(data.cohort) == 12 and data.input_ids.shape[0] == 12
    batch = CohortDataset(data.cohort, data.splits["train"]).loader(batch_size=4).__iter__().__next__()
    assert batch["image"].shape[1:] == (1, 32, 32) and len(batch["report"]) == len(batch["image"])


def test_iu_xray_resized_images_are_cached_and_the_cache_follows_the_files(iu_root, monkeypatch):
    from PIL import Image

    first = load_dataset("iu_xray", root=iu_root, image_size=32)
    calls = []
    real_decode = iu_xray._decode
    monkeypatch.setattr(iu_xray, "_decode", lambda *a: calls.append(1) or real_decode(*a))
    again = load_dataset("iu_xray", root=iu_root, image_size=32)
    assert calls == [] and torch.equal(first.images, again.images)
    # a changed image file is a different dataset: the cache must not serve the old pixels
    png = iu_root / "NLMCXR_png" / "CXR6_1_IM-2263-1001.png"
    Image.fromarray(np.full((40, 40), 250, np.uint8)).save(png)
    changed = load_dataset("iu_xray", root=iu_root, image_size=32)
    assert calls == [1]
    k = [i for i, (_, image_id) in enumerate(iu_xray.scan(iu_root).pairs) if image_id == png.stem][0]
    assert float(changed.images[k].mean()) * 255 > 245


def _serve_iu(tmp_path):
    src = fx.write_iu_xray(tmp_path / "src")
    return fx.FixtureServer(fx.iu_archives(src, tmp_path))


def test_iu_xray_download_and_prepare_end_to_end(tmp_path):
    data_dir = tmp_path / "data"
    with _serve_iu(tmp_path) as server:
        root = iu_xray.download_and_prepare(data_dir, mirror=server.url, progress=False, log=quiet)
        assert root == data_dir / "iu_xray"
        manifest = json.loads((root / "MANIFEST.json").read_text())
        assert manifest["complete"] and manifest["counts"]["pairs"] == 12
        assert manifest["licences_in_files"] == [fx.IU_LICENCE]
        assert "CC BY-NC-ND 4.0" in (root / "LICENSE.txt").read_text()
        records = json.loads((data_dir / "downloads" / "iu_xray" / RECORD_NAME).read_text())
        assert set(records) == {"NLMCXR_reports.tgz", "NLMCXR_png.tgz"}
        # prepared, valid: the second run touches nothing
        iu_xray.download_and_prepare(data_dir, mirror=server.url, progress=False, log=quiet)
        iu_xray.download_and_prepare(data_dir, mirror=server.url, force=True, progress=False, log=quiet)
        assert server.hits("NLMCXR_png.tgz") == 1, "valid archives must not be downloaded again, even with --force"
    cohort = load_dataset("iu_xray", root=root, image_size=32)
    assert len(cohort) == 12


def test_an_interrupted_prepare_leaves_nothing_a_loader_would_accept(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    with _serve_iu(tmp_path) as server:
        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt
        monkeypatch.setattr(iu_xray, "write_card", interrupted)
        with pytest.raises(KeyboardInterrupt):
            iu_xray.download_and_prepare(data_dir, mirror=server.url, progress=False, log=quiet)
        assert not (data_dir / "iu_xray").exists()
        assert not list(data_dir.glob(".iu_xray.tmp-*")), "the temporary folder is removed"
        with pytest.raises(DatasetNotAvailableError, match="prepare_iu_xray.py"):
            load_dataset("iu_xray", root=data_dir / "iu_xray")
        # a killed run (no chance to clean up) leaves a hidden temp folder: ignored, then removed
        dead = data_dir / ".iu_xray.tmp-killed"
        (dead / "ecgen-radiology").mkdir(parents=True)
        (dead / "ecgen-radiology" / "1.xml").write_text("<eCitation>")
        monkeypatch.undo()
        monkeypatch.setenv("MEDMM_DATA", str(data_dir))
        with pytest.raises(DatasetNotAvailableError):
            load_dataset("iu_xray")
        iu_xray.download_and_prepare(data_dir, mirror=server.url, progress=False, log=quiet)
        assert not dead.exists()
        assert server.hits("NLMCXR_png.tgz") == 1
    assert len(load_dataset("iu_xray", image_size=16)) == 12


def test_an_interrupted_force_prepare_keeps_the_previous_complete_version(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    with _serve_iu(tmp_path) as server:
        root = iu_xray.download_and_prepare(data_dir, mirror=server.url, progress=False, log=quiet)
        before = (root / "MANIFEST.json").read_text()

        def crash(archive, into, progress):
            (into / "ecgen-radiology").mkdir()
            raise OSError("disk full")
        monkeypatch.setattr(iu_xray, "_safe_extract", crash)
        with pytest.raises(OSError, match="disk full"):
            iu_xray.download_and_prepare(data_dir, mirror=server.url, force=True, progress=False, log=quiet)
    assert (root / "MANIFEST.json").read_text() == before
    assert len(load_dataset("iu_xray", root=root, image_size=16)) == 12


def test_unsafe_archive_members_are_refused(tmp_path):
    import tarfile

    evil = tmp_path / "evil.tgz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    (tmp_path / "into").mkdir()
    with pytest.raises(ValueError, match="unsafe"):
        iu_xray._safe_extract(evil, tmp_path / "into", progress=False)
    assert not (tmp_path / "outside.txt").exists()


# ==============================================================================================
# ChestMNIST
# ==============================================================================================

def test_chestmnist_labels_map_onto_the_course_findings():
    nih = np.zeros((4, 14), np.uint8)
    nih[1, [4, 5]] = 1                      # mass + nodule -> Lung Lesion
    nih[2, 3] = 1                           # infiltration only: no course column, and not No Finding
    nih[3, [0, 1, 2, 7, 8, 9]] = 1
    out = chestmnist.map_labels(nih)
    assert out[0, F["No Finding"]] == 1 and out[0].sum() == 1
    assert out[1, F["Lung Lesion"]] == 1 and out[1].sum() == 1
    assert out[2].sum() == 0
    for name in ("Atelectasis", "Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation", "Edema"):
        assert out[3, F[name]] == 1
    assert out[:, F["Support Devices"]].sum() == 0 and out[:, F["Fracture"]].sum() == 0
    assert "Fracture" not in available_findings("chestmnist")
    assert "Support Devices" not in available_findings("chestmnist")


def _prepare_chestmnist(tmp_path, size, data_dir=None):
    data = fx.medmnist_npz_bytes(size)
    data_dir = data_dir or tmp_path / "data"
    with fx.FixtureServer({chestmnist.file_name(size): data}) as server:
        root = chestmnist.download_and_prepare(data_dir, size=size, mirror=server.url, md5=_md5(data),
                                               progress=False, log=quiet)
    return root, data


def test_chestmnist_prepare_and_load(tmp_path):
    root, _ = _prepare_chestmnist(tmp_path, 28)
    root, _ = _prepare_chestmnist(tmp_path, 64)             # a second size beside the first
    assert sorted(chestmnist.available_files(root)) == [28, 64]
    manifest = json.loads((root / "64px" / "MANIFEST.json").read_text())
    assert manifest["counts"] == {"train": 6, "val": 3, "test": 4} and "CC BY 4.0" in manifest["licence"]
    cohort = load_dataset("chestmnist", root=root, image_size=32)
    assert isinstance(cohort, Cohort) and len(cohort) == 13 and cohort.images.shape == (13, 1, 32, 32)
    assert cohort.reports == [""] * 13
    assert len(np.unique(cohort.patient_ids)) == 13
    split = chestmnist.official_split(cohort)
    assert [len(split[s]) for s in ("train", "val", "test")] == [6, 3, 4]
    # rows trace back to their split and index (fixture grey = 10 + k, +100 val, +150 test)
    grey = np.round(cohort.images.mean(dim=(1, 2, 3)).numpy() * 255)
    expected = [10 + k + (0, 100, 150)[s] for s, n in enumerate((6, 3, 4)) for k in range(n)]
    assert np.allclose(grey, expected, atol=1)
    assert cohort.labels[split["val"][1], F["Lung Lesion"]] == 1
    assert cohort.labels[split["test"][0], F["No Finding"]] == 1
    assert cohort.labels[split["train"][2]].sum() == 0
    # the official split survives subset(); the 64 px file was used for 32 px (shrink, never blur up)
    sub = cohort.subset(split["test"])
    assert len(chestmnist.official_split(sub)["test"]) == 4
    assert chestmnist.pick_file({28: "a", 64: "b"}, 32) == "b" and chestmnist.pick_file({28: "a"}, 64) == "a"
    few = load_dataset("chestmnist", root=root, image_size=28, n_studies=5, seed=1, splits=("train", "test"))
    assert len(few) == 5 and set(np.asarray(few.study_ids) // chestmnist.SPLIT_STRIDE) <= {0, 2}


def test_chestmnist_a_damaged_archive_is_reported_not_loaded(tmp_path):
    root, data = _prepare_chestmnist(tmp_path, 28)
    path = root / "28px" / "chestmnist.npz"
    path.unlink()                             # the prepared file is a hard link: replace, do not edit in place
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetNotAvailableError, match="not a readable ChestMNIST archive"):
        load_dataset("chestmnist", root=root, image_size=28)


def _script(name):
    sys.path.insert(0, str(ROOT / "data_scripts"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "data_scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "data_scripts"))


def test_chestmnist_script_rejects_a_file_that_does_not_match_the_published_md5(tmp_path, capsys):
    data = fx.medmnist_npz_bytes(28)
    with fx.FixtureServer({"chestmnist.npz": data}) as server:
        status = _script("prepare_chestmnist").main(["--data-dir", str(tmp_path), "--mirror", server.url,
                                                     "--size", "28", "--no-progress"])
    out = capsys.readouterr()
    assert status == 1
    assert chestmnist.PUBLISHED_MD5[28] in out.err and "synthcxr" in out.err
    assert "CC BY 4.0" in out.out                                   # the licence is printed first
    assert not (tmp_path / "chestmnist").exists()


# ==============================================================================================
# VQA-RAD
# ==============================================================================================

def test_vqa_rad_prepare_and_load(tmp_path):
    src = fx.write_vqa_rad(tmp_path / "src")
    with fx.FixtureServer({"VQA_RAD_osf.zip": fx.vqa_rad_zip_bytes(src)}) as server:
        root = vqa_rad.download_and_prepare(tmp_path / "data", mirror=f"{server.url}/VQA_RAD_osf.zip",
                                            progress=False, log=quiet)
    assert (root / vqa_rad.JSON_NAME).is_file() and (root / vqa_rad.IMAGE_DIR / "synpic54610.jpg").is_file()
    assert "CC0" in (root / "LICENSE.txt").read_text()
    with pytest.warns(RuntimeWarning, match="1 image"):
        vqa = load_dataset("vqa_rad", root=root, image_size=32)
    assert isinstance(vqa, vqa_rad.VQARad) and isinstance(vqa.cohort, Cohort)
    assert len(vqa.cohort) == 5 and len(vqa) == 9                   # synpic99999.jpg is not on disk
    assert vqa.cohort.images.shape == (5, 1, 32, 32) and vqa.cohort.reports == [""] * 5
    for q, img in enumerate(vqa.image_index):                       # every question points at its own image
        name = vqa.image_names[img]
        entry = [e for e in fx.vqa_rad_entries() if e["question"] == vqa.questions[q]][0]
        assert entry["image_name"] == name
        assert abs(float(vqa.cohort.images[img].mean()) * 255 - fx.VQA_IMAGES[name]) <= 2   # RGB -> grey
    assert vqa.answers[vqa.questions.index("How many lesions are there?")] == "2"
    assert set(vqa.answer_type) == {"CLOSED", "OPEN"} and int(vqa.closed.sum()) == 6
    assert len(vqa.official_split()["test"]) == 3
    organ = dict(zip(vqa.image_names, vqa.image_organ))
    assert organ["synpic40272.jpg"] == "ABD"
    pid = dict(zip(vqa.image_names, vqa.cohort.patient_ids))
    assert pid["synpic29265.jpg"] == pid["synpic31116.jpg"] != pid["synpic54610.jpg"]     # one MedPix case
    split = vqa.image_disjoint_split(seed=0)
    images = {k: set(vqa.image_index[v].tolist()) for k, v in split.items()}
    assert not images["train"] & images["test"] and not images["train"] & images["val"]
    assert sum(len(v) for v in split.values()) == len(vqa)
    closed = vqa.questions_subset(vqa.closed)
    assert len(closed) == 6 and (closed.answer_type == "CLOSED").all() and len(closed.cohort) == 5


# ==============================================================================================
# IXI
# ==============================================================================================

def _marker_centre(image: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(image > 0.9)
    return np.array([rows.mean(), cols.mean()])


@pytest.fixture(scope="module")
def ixi_prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ixi")
    subjects = fx.IXI_SUBJECTS
    files = {"IXI-T1.tar": fx.ixi_tar_bytes("T1", subjects[:3]),          # the 4th subject has no T1
             "IXI-T2.tar": fx.ixi_tar_bytes("T2", subjects), "IXI-PD.tar": fx.ixi_tar_bytes("PD", subjects)}
    with fx.FixtureServer(files) as server:
        root = ixi.download_and_prepare(tmp, contrasts=("T1", "T2", "PD"), size=64, slices_per_subject=3,
                                        spacing_mm=6.0, mirror=server.url, progress=False, log=quiet)
    return root


def test_ixi_pairs_t1_and_t2_slices_of_the_same_subject_and_plane(ixi_prepared):
    a = ixi.load_ixi_arrays(ixi_prepared)
    assert a["t1"].shape == a["t2"].shape == a["pd"].shape == (9, 64, 64)
    assert sorted(set(a["subject"].tolist())) == ["IXI002", "IXI012", "IXI013"]       # only subjects with both
    assert set(a["site"].tolist()) == {"Guys", "HH"}
    assert sorted(set(np.round(a["offset_mm"]).tolist())) == [-6.0, 0.0, 6.0]
    centre = np.nonzero(a["offset_mm"] == 0)[0]
    for i in centre:
        t1, t2 = a["t1"][i] / 255.0, a["t2"][i] / 255.0
        c1, c2 = _marker_centre(t1), _marker_centre(t2)
        assert np.abs(c1 - c2).max() <= 1.0, (c1, c2)          # the same plane of the same head
        assert c1[0] < 32 and c1[1] < 32, "patient's right and anterior: top-left (radiological display)"
        h1, h2 = t1 > 0.05, t2 > 0.05
        assert (h1 & h2).sum() / (h1 | h2).sum() > 0.95         # the head outlines agree
        # contrast differs as it should: the ventricles are bright on T2, dark on T1
        v = (slice(28, 36), slice(28, 36))
        assert t2[v].mean() > 0.6 and t1[v].mean() < 0.2
    manifest = json.loads((ixi_prepared / "MANIFEST.json").read_text())
    assert manifest["subjects"] == 3 and "not registered" in manifest["pairing"]
    assert "CC BY-SA 3.0" in (ixi_prepared / "LICENSE.txt").read_text()


def test_ixi_resampling_matches_nibabel_resample_from_to():
    import nibabel as nib
    from nibabel.processing import resample_from_to

    t1, t2, _ = fx.ixi_volumes("IXI002-Guys-0828")
    planes, offsets = ixi.paired_slices(t2, {"T1": t1}, n_slices=1)
    t2c = nib.as_closest_canonical(t2)
    reference = np.asarray(resample_from_to(t1, t2c, order=1, mode="constant", cval=0.0).dataobj)
    k = t2c.shape[2] // 2
    expected = np.rot90(np.clip(reference[:, :, k] / ixi._scale(np.asarray(t1.dataobj)), 0, 1))[:, ::-1]
    assert offsets.tolist() == [0.0]
    assert np.abs(planes["T1"][0] - expected).max() < 1e-4


def test_load_ixi_returns_mri_phantoms(ixi_prepared):
    mri = load_dataset("ixi", root=ixi_prepared, image_size=32)
    assert isinstance(mri, MRIPhantoms) and len(mri) == 3
    assert mri.t1.shape == mri.t2.shape == mri.brain_mask.shape == (3, 1, 32, 32)
    assert torch.isnan(mri.flair).all(), "IXI has no FLAIR: NaN, not a stand-in"
    assert not mri.has_lesion.any() and mri.lesion_mask.sum() == 0          # healthy volunteers
    assert 0.2 < float(mri.brain_mask.mean()) < 0.9
    every = load_dataset("ixi", root=ixi_prepared, image_size=32, slices="all")
    assert len(every) == 9
    assert len(load_dataset("ixi", root=ixi_prepared, image_size=32, n_studies=2)) == 2


def test_ixi_prepare_without_nibabel_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(ImportError, match="pip install nibabel"):
        ixi.download_and_prepare(tmp_path, opener=_Offline(), progress=False, log=quiet)


# ==============================================================================================
# load_dataset, the scripts, resizing
# ==============================================================================================

@pytest.mark.parametrize("name", ["iu_xray", "chestmnist", "vqa_rad", "ixi"])
def test_a_missing_real_dataset_fails_with_the_command_and_the_synthetic_default(name):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(name, image_size=32)
    message = str(err.value)
    assert name in message and f"data_scripts/prepare_{name}.py" in message
    assert 'DATASET = "synthcxr"' in message and "download_and_prepare" in message


def test_load_dataset_rejects_unknown_names_and_arguments(iu_root):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mimic")
    with pytest.raises(TypeError, match="images_per_report"):
        load_dataset("iu_xray", root=iu_root, views="frontal")
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("iu_xray", root=iu_root, image_size=4)
    assert len(load_dataset("synthcxr", n_studies=8, image_size=32, cache=False)) == 8


@pytest.mark.parametrize("name", ["iu_xray", "chestmnist", "vqa_rad", "ixi"])
def test_every_script_has_help_with_the_licence(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        _script(f"prepare_{name}").main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--data-dir" in out and "Licence:" in out and common.INFO[name].licence_url in out


def test_the_iu_xray_script_prepares_through_a_mirror(tmp_path, capsys):
    with _serve_iu(tmp_path) as server:
        status = _script("prepare_iu_xray").main(["--data-dir", str(tmp_path / "d"), "--mirror", server.url,
                                                  "--no-progress"])
    out = capsys.readouterr().out
    assert status == 0 and "CC BY-NC-ND 4.0" in out and "ready" in out
    assert (tmp_path / "d" / "iu_xray" / "MANIFEST.json").is_file()


def test_to_square_matches_torchvision_center_crop_and_resize():
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    rng = np.random.default_rng(0)
    for h, w, size in ((61, 48, 32), (48, 77, 20), (40, 40, 40), (33, 90, 64)):
        pixels = rng.integers(0, 256, (h, w), dtype=np.uint8)
        img = Image.fromarray(pixels)
        ref = TF.resize(TF.center_crop(img, [min(h, w)] * 2), [size, size], InterpolationMode.BICUBIC,
                        antialias=True)
        assert np.array_equal(common.to_square(img, size), np.asarray(ref)), (h, w, size)
    deep = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)            # a 12-bit image in 16 bits
    out = common.to_gray_uint8(deep)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
