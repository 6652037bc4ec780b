"""Nothing lost, nothing leaked, nothing silently wrong (issue 23).

One named test per finding: patient-level splits for every real dataset, two processes
preparing one dataset or training one cached model, full disks, verified model caches and
downloads, file modes, and the inputs that used to pass in silence (objectives, text models,
zero-shot, patient_split, the pretraining command line, fit). Every test runs in seconds; the
two concurrency tests start two Python processes each.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fixtures_real as fx
from medmm_lite import profile
from medmm_lite.data import load_dataset, patient_split
from medmm_lite.data.real import ChecksumError, RemoteFile, chestmnist, common, fetch, iu_xray, ixi
from medmm_lite.data.real.download import RECORD_NAME
from medmm_lite.hub import load_or_train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def private_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDMM_DATA", str(tmp_path / "medmm"))
    monkeypatch.delenv("MEDMM_NO_CACHE", raising=False)
    return tmp_path / "medmm"


def quiet(*_):
    pass


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


class _SlowFiles(dict):
    """A fixture server's files, each request held back a little: two clients overlap."""

    def __getitem__(self, name):
        time.sleep(0.3)
        return super().__getitem__(name)


# ==============================================================================================
# 1. patient-level splits, for every real dataset
# ==============================================================================================

def _prepared_chestmnist(tmp_path, counts=(12, 4, 8)):
    data = fx.medmnist_npz_bytes(28, counts=counts)
    with fx.FixtureServer({chestmnist.file_name(28): data}) as server:
        return chestmnist.download_and_prepare(tmp_path / "data", size=28, mirror=server.url, md5=_md5(data),
                                               progress=False, log=quiet)


def test_prepare_data_uses_chestmnist_official_patient_split(tmp_path):
    """ChestMNIST gives every image its own patient id: only NIH's official split is by patient.
    prepare_data used patient_split, which put official-test images in train and back."""
    from medmm_lite.data import prepare_data

    root = _prepared_chestmnist(tmp_path)
    data = prepare_data(profile("smoke"), dataset="chestmnist", root=root)
    official = chestmnist.official_split(data.cohort)
    for name in ("train", "val", "test"):
        assert sorted(data.splits[name].tolist()) == sorted(official[name].tolist()), name
    code = np.asarray(data.cohort.study_ids) // chestmnist.SPLIT_STRIDE     # the row's official split
    for k, name in enumerate(("train", "val", "test")):
        assert set(code[data.splits[name]].tolist()) == {k}, f"an official non-{name} image in {name}"


def test_patient_split_warns_on_a_chestmnist_cohort(tmp_path):
    cohort = load_dataset("chestmnist", root=_prepared_chestmnist(tmp_path), image_size=28)
    with pytest.warns(RuntimeWarning, match="official_split"):
        patient_split(cohort)


def test_no_patient_crosses_splits_iu_xray(tmp_path, private_data_dir):
    from medmm_lite.data import prepare_data

    fx.write_iu_xray(private_data_dir / "iu_xray")
    data = prepare_data(profile("smoke"), dataset="iu_xray")
    owner = {}
    for name, idx in data.splits.items():
        for p in np.asarray(data.cohort.patient_ids)[idx]:
            assert owner.setdefault(int(p), name) == name, f"report {p} in two splits"
    assert len(data.cohort) == sum(len(v) for v in data.splits.values())
    assert sum(data.cohort.patient_ids == 1) == sum(data.cohort.patient_ids == 6) == 2   # two views each, one side


def test_no_case_crosses_splits_vqa_rad(tmp_path):
    with pytest.warns(RuntimeWarning, match="not on disk"):          # the fixture names one missing image
        vqa = load_dataset("vqa_rad", root=fx.write_vqa_rad(tmp_path / "vqa"), image_size=16)
    split = vqa.image_disjoint_split(seed=0)
    cases = {name: set(vqa.cohort.patient_ids[vqa.image_index[idx]].tolist()) for name, idx in split.items()}
    assert not (cases["train"] & cases["val"]) and not (cases["train"] & cases["test"])
    assert not (cases["val"] & cases["test"])


def _prepared_ixi(root: Path, subjects=("IXI002", "IXI012", "IXI013", "IXI035"), slices=3) -> Path:
    """IXI as the prepare script leaves it (the slices file and its card), without the NIfTI step."""
    n = len(subjects) * slices
    rng = np.random.default_rng(0)
    arrays = {"t1": rng.integers(0, 255, (n, 32, 32), dtype=np.uint8),
              "t2": rng.integers(0, 255, (n, 32, 32), dtype=np.uint8),
              "foreground": np.ones((n, 32, 32), np.uint8),
              "subject": np.repeat(np.array(subjects), slices), "site": np.repeat(np.array(["Guys"]), n),
              "offset_mm": np.tile(np.array([-5.0, 0.0, 5.0], np.float32)[:slices], len(subjects))}
    root.mkdir(parents=True)
    with open(root / ixi.SLICES_FILE, "wb") as f:
        np.savez(f, **arrays)
    common.write_card(root, "ixi", {})
    return root


def test_no_subject_crosses_splits_ixi(tmp_path):
    root = _prepared_ixi(tmp_path / "ixi")
    every = load_dataset("ixi", root=root, image_size=16, slices="all")
    subjects = ixi.subject_ids(root, slices="all")
    assert len(subjects) == len(every) == 12
    split = ixi.subject_split(subjects, seed=0)
    sides = {name: set(subjects[idx].tolist()) for name, idx in split.items()}
    assert not (sides["train"] & sides["val"]) and not (sides["train"] & sides["test"])
    assert not (sides["val"] & sides["test"]) and all(sides.values())
    assert sorted(np.concatenate(list(split.values())).tolist()) == list(range(12))
    centre = ixi.subject_ids(root)                       # one row per subject: rows are subjects
    assert len(centre) == len(set(centre.tolist())) == len(load_dataset("ixi", root=root, image_size=16))


# ==============================================================================================
# 2. two processes at once
# ==============================================================================================

def test_atomic_directory_never_removes_a_live_runs_folder(tmp_path):
    """Before: every .NAME.tmp-* folder was deleted, a live run's too (half a dataset published)."""
    from medmm_lite.utils import HOST

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".iu_xray.tmp-{HOST}-{sleeper.pid}-abcd1234"
        (live / "ecgen-radiology").mkdir(parents=True)
        with common.atomic_directory(tmp_path / "iu_xray") as tmp:
            (tmp / "MANIFEST.json").write_text("{}")
        assert live.exists(), "another live process's folder was deleted"
    finally:
        sleeper.kill()
        sleeper.wait()
    dead_pid = sleeper.pid
    with common.atomic_directory(tmp_path / "iu_xray") as tmp:
        (tmp / "MANIFEST.json").write_text("{}")
    assert not live.exists(), f"the folder of the dead process {dead_pid} is left behind"


PREPARE_WORKER = textwrap.dedent("""\
    import sys, time
    from pathlib import Path
    from medmm_lite.data.real import iu_xray
    data_dir, url, gate, me = sys.argv[1:5]
    Path(gate, me).touch()
    while len(list(Path(gate).iterdir())) < 2:      # start together
        time.sleep(0.01)
    iu_xray.download_and_prepare(data_dir, mirror=url, progress=False, log=lambda m: print(m, flush=True))
""")


def test_two_processes_preparing_one_dataset_end_with_one_complete_dataset(tmp_path):
    source = fx.write_iu_xray(tmp_path / "src")
    worker, gate, data_dir = tmp_path / "prepare_worker.py", tmp_path / "gate", tmp_path / "data"
    worker.write_text(PREPARE_WORKER)
    gate.mkdir()
    with fx.FixtureServer(fx.iu_archives(source, tmp_path)) as server:
        server.files = _SlowFiles(server.files)
        runs = [subprocess.Popen([sys.executable, str(worker), str(data_dir), server.url, str(gate), str(k)],
                                 env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for k in range(2)]
        outputs = [r.communicate(timeout=240)[0] for r in runs]
        assert [r.returncode for r in runs] == [0, 0], outputs
        assert server.hits("NLMCXR_png.tgz") == server.hits("NLMCXR_reports.tgz") == 1, server.requests
    manifest = common.read_manifest(data_dir / "iu_xray")
    assert manifest is not None and manifest["counts"] == iu_xray.scan(source).summary()
    assert len(load_dataset("iu_xray", root=data_dir / "iu_xray", image_size=16)) == 12
    assert not list(data_dir.glob(".iu_xray.tmp-*")) and not list(data_dir.rglob("*.part"))


TRAIN_WORKER = textwrap.dedent("""\
    import json, sys, time
    from pathlib import Path
    import torch
    from torch import nn
    from medmm_lite.hub import load_or_train
    gate, me = sys.argv[1:3]

    def train(model):
        time.sleep(0.5)                             # long enough for the other process to arrive
        with torch.no_grad():
            model.weight.fill_(float(me))
            model.bias.fill_(float(me))
        return {"trained_by": int(me)}

    Path(gate, me).touch()
    while len(list(Path(gate).iterdir())) < 2:
        time.sleep(0.01)
    model, info = load_or_train("race", train, build_fn=lambda: nn.Linear(3, 2), key={"k": 1})
    print(json.dumps({"cached": info["cached"], "weight": model.weight[0, 0].item(), "history": info["history"],
                      "path": info["path"]}))
""")


def test_two_processes_training_one_cached_key_end_with_one_verified_model(tmp_path, private_data_dir):
    """Before: both trained, and the cache could end with one's weights and the other's info.json."""
    from safetensors.torch import load_file

    worker, gate = tmp_path / "train_worker.py", tmp_path / "gate"
    worker.write_text(TRAIN_WORKER)
    gate.mkdir()
    runs = [subprocess.Popen([sys.executable, str(worker), str(gate), str(k + 1)], env=_env(), cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(2)]
    results = []
    for r in runs:
        out, err = r.communicate(timeout=240)
        assert r.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["cached"] for r in results) == [False, True], results        # one trained, one loaded
    trainer = next(r for r in results if not r["cached"])["history"]["trained_by"]
    assert all(r["weight"] == trainer and r["history"] == {"trained_by": trainer} for r in results)
    weights = Path(results[0]["path"])
    info = json.loads((weights.parent / "info.json").read_text())
    assert info["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert info["history"] == {"trained_by": trainer}
    assert torch.all(load_file(weights)["weight"] == trainer)


# ==============================================================================================
# 3. full disks
# ==============================================================================================

def _trainer(calls: list):
    def train(model):
        calls.append(1)
        with torch.no_grad():
            model.weight.fill_(0.25)
        return {"loss": 0.5}
    return train


def test_load_or_train_keeps_the_model_when_the_disk_is_full(private_data_dir, monkeypatch):
    from medmm_lite import hub

    def full_disk(model, path, metadata=None):
        Path(path).write_bytes(b"\0" * 100)            # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hub, "save_model", full_disk)
    calls = []
    with pytest.warns(RuntimeWarning, match="could not cache it.*no space left") as record:
        model, info = load_or_train("toy", _trainer(calls), build_fn=lambda: nn.Linear(4, 2))
    assert calls == [1] and torch.all(model.weight == 0.25), "the trained model is returned"
    assert info["cached"] is False and info["path"] is None and info["history"] == {"loss": 0.5}
    assert str(private_data_dir) not in str(record[0].message), "no machine paths in the message"
    leftovers = [p for p in (private_data_dir / "models").rglob("*") if p.is_file() and ".locks" not in p.parts]
    assert leftovers == [], "nothing half-written is left in the cache"


def test_a_checkpoint_save_on_a_full_disk_says_no_space_left(tmp_path, monkeypatch):
    from medmm_lite.utils import atomic_save

    def save(tmp):
        Path(tmp).write_bytes(b"x" * 3 * 2**20)                # what got written before the disk filled
        if Path("/dev/full").exists():
            torch.save({"w": torch.zeros(1000)}, "/dev/full")  # torch's own error for a full disk
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**10, 10**10, 0))
    target = tmp_path / "checkpoints" / "clip.pt"
    with pytest.raises(OSError, match=r"no space left on .*checkpoints \(needed ~3 MB, 0 MB free\)") as err:
        atomic_save(save, target)
    assert err.value.errno == errno.ENOSPC
    assert list(target.parent.iterdir()) == [], "the partial file is removed"


def test_stale_tmp_files_of_a_killed_save_are_removed_at_the_next_save(tmp_path):
    from medmm_lite.utils import HOST, atomic_save

    target = tmp_path / "clip.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = tmp_path / f"clip.pt.{HOST}-{int(dead.stdout)}.k1ll3d00.tmp"       # its process is gone
    old = tmp_path / "clip.pt.a1b2c3d4.tmp"                                       # an older version's, hours old
    other = tmp_path / "other.pt.a1b2c3d4.tmp"                                    # another file's: not ours
    for path in (killed, old, other):
        path.write_bytes(b"half a checkpoint")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    live = tmp_path / f"clip.pt.{HOST}-{os.getppid()}.l1ve0000.tmp"             # a live process's
    live.write_bytes(b"being written")
    atomic_save(lambda tmp: torch.save({"w": torch.ones(2)}, tmp), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["clip.pt", other.name, live.name])


# ==============================================================================================
# 4. the model cache verifies what it loads
# ==============================================================================================

def _cached_toy(calls):
    model, info = load_or_train("toy", _trainer(calls), build_fn=lambda: nn.Linear(4, 2))
    return Path(info["path"])


def test_flipped_bytes_in_cached_weights_are_detected_and_retrained():
    calls = []
    path = _cached_toy(calls)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40                                      # one bit of the tensor data, not the header
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="cannot be used.*SHA-256"):
        _, info = load_or_train("toy", _trainer(calls), build_fn=lambda: nn.Linear(4, 2))
    assert calls == [1, 1] and info["cached"] is False
    assert load_or_train("toy", _trainer(calls), build_fn=lambda: nn.Linear(4, 2))[1]["cached"]


def test_non_finite_cached_weights_are_retrained():
    from safetensors.torch import load_file, save_file

    calls = []
    path = _cached_toy(calls)
    tensors = load_file(path)
    tensors["weight"] = torch.full_like(tensors["weight"], float("nan"))
    save_file(tensors, str(path))
    info_path = path.parent / "info.json"
    info = json.loads(info_path.read_text())
    info["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()     # the hash matches: only NaN is wrong
    info_path.write_text(json.dumps(info))
    with pytest.warns(RuntimeWarning, match="not finite: parameter weight"):
        model, info = load_or_train("toy", _trainer(calls), build_fn=lambda: nn.Linear(4, 2))
    assert calls == [1, 1] and info["cached"] is False and torch.isfinite(model.weight).all()


@pytest.mark.parametrize("damage", [
    {"history": {"__history__": {"steps": 3, "loss": "x"}}},
    {"history": {"__history__": None}},
    {"train_seconds": "fast"},
    "a list",
])
def test_malformed_info_json_warns_and_retrains(damage):
    calls = []
    info_path = _cached_toy(calls).parent / "info.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps(["not", "an", "object"] if damage == "a list" else {**info, **damage}))
    with pytest.warns(RuntimeWarning, match="cannot be used"):
        _, again = load_or_train("toy", _trainer(calls), build_fn=lambda: nn.Linear(4, 2))
    assert calls == [1, 1] and again["cached"] is False


# ==============================================================================================
# 5. a changed upstream file is an error, until accepted deliberately
# ==============================================================================================

def test_a_changed_upstream_file_is_refused_until_accepted_deliberately(tmp_path):
    first, changed = b"release one " * 500, b"release two!" * 600
    with fx.FixtureServer({"reports.tgz": first}) as server:
        remote = RemoteFile(f"{server.url}/reports.tgz", "reports.tgz")   # no published checksum
        path = fetch(remote, tmp_path, dataset="iu_xray", progress=False, log=quiet, backoff=0)
        recorded = json.loads((tmp_path / RECORD_NAME).read_text())["reports.tgz"]
        path.unlink()                                                     # e.g. --delete-archives, then --force
        server.files["reports.tgz"] = changed
        with pytest.raises(ChecksumError) as err:
            fetch(remote, tmp_path, dataset="iu_xray", progress=False, log=quiet, backoff=0)
        message = str(err.value)
        assert f"{len(changed):,} bytes now, {len(first):,} bytes when first downloaded" in message
        assert "--accept-new-checksum" in message and recorded["sha256"][:16] in message
        assert json.loads((tmp_path / RECORD_NAME).read_text())["reports.tgz"] == recorded, "record untouched"
        assert not path.exists()
        hits = server.hits("reports.tgz")
        path = fetch(remote, tmp_path, dataset="iu_xray", progress=False, log=quiet, backoff=0,
                     accept_new_checksum=True)
        assert server.hits("reports.tgz") - hits <= 1          # the kept .part is used (a 416 at most)
    assert path.read_bytes() == changed
    record = json.loads((tmp_path / RECORD_NAME).read_text())["reports.tgz"]
    assert record["sha256"] == hashlib.sha256(changed).hexdigest() and "accepted deliberately" in record["source"]


@pytest.mark.parametrize("name", ["iu_xray", "vqa_rad", "ixi"])
def test_prepare_scripts_of_unpublished_sources_offer_accept_new_checksum(name, capsys):
    import importlib.util

    sys.path.insert(0, str(ROOT / "data_scripts"))
    try:
        spec = importlib.util.spec_from_file_location(f"prepare_{name}", ROOT / "data_scripts" / f"prepare_{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with pytest.raises(SystemExit):
            module.main(["--help"])
    finally:
        sys.path.remove(str(ROOT / "data_scripts"))
    assert "--accept-new-checksum" in capsys.readouterr().out


# ==============================================================================================
# 6. cache files are readable by others, as the umask allows
# ==============================================================================================

def test_cache_files_are_created_0644_respecting_umask(tmp_path):
    from medmm_lite.data import cache
    from medmm_lite.utils import atomic_save, atomic_write_bytes

    def mode(path):
        return path.stat().st_mode & 0o777

    previous = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "info.json", b"{}")
        atomic_save(lambda tmp: Path(tmp).write_bytes(b"weights"), tmp_path / "model.safetensors")
        cache.save(tmp_path / "cohort.npz", {"x": np.zeros(3)}, {"n": 3})
        with common.atomic_directory(tmp_path / "prepared") as folder:
            (folder / "MANIFEST.json").write_text("{}")
        assert [mode(tmp_path / n) for n in ("info.json", "model.safetensors", "cohort.npz")] == [0o644] * 3
        assert mode(tmp_path / "prepared") == 0o755
        os.umask(0o077)                                   # a private umask is respected
        atomic_write_bytes(tmp_path / "private.json", b"{}")
        assert mode(tmp_path / "private.json") == 0o600
    finally:
        os.umask(previous)


# ==============================================================================================
# inputs that passed in silence
# ==============================================================================================

@pytest.mark.parametrize("temperature", [-0.1, 0, 0.0, float("nan")])
def test_zero_shot_rejects_a_non_positive_temperature(temperature):
    from medmm_lite.adapt.zero_shot import zero_shot_classify

    images, pos, neg = torch.randn(5, 8), torch.randn(3, 8), torch.randn(3, 8)
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        zero_shot_classify(images, pos, neg, temperature=temperature)
    assert zero_shot_classify(images, pos, neg, temperature=0.1).shape == (5, 3)


@pytest.mark.parametrize("scale", [-1.0, 0.0, torch.tensor(-14.3)])
def test_clip_loss_rejects_a_non_positive_logit_scale(scale):
    from medmm_lite.objectives import clip_loss, distributed_clip_loss

    a, b = torch.randn(6, 4), torch.randn(6, 4)
    for loss in (clip_loss, distributed_clip_loss):
        with pytest.raises(ValueError, match="logit_scale must be > 0"):
            loss(a, b, scale)
    assert torch.isfinite(clip_loss(a, b, torch.tensor(14.3)))


def test_contrastive_temperatures_must_be_positive():
    from medmm_lite.objectives import convirt_loss, nt_xent_loss

    a, b = torch.randn(6, 4), torch.randn(6, 4)
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        nt_xent_loss(a, b, temperature=-0.1)
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        convirt_loss(a, b, temperature=0.0)


def test_mae_loss_rejects_a_negative_mask():
    from medmm_lite.objectives import mae_loss

    pred, target = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, -1.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="mask must hold finite weights >= 0.*minimum of -1"):
        mae_loss(pred, target, mask)
    assert torch.isfinite(mae_loss(pred, target, mask.clamp(min=0)))


def test_random_masking_on_zero_tokens_is_a_clear_error():
    from medmm_lite.objectives import random_masking

    with pytest.raises(ValueError, match="no tokens to mask"):
        random_masking(torch.zeros(2, 0, 8), 0.75)


@pytest.mark.parametrize("cls", ["TextEncoder", "TextDecoder"])
@pytest.mark.parametrize("change, message", [
    ({"max_len": 0}, "max_len must be an int >= 1"),
    ({"depth": -1}, "depth must be an int >= 0"),
    ({"heads": 0}, "heads must be an int >= 1"),
    ({"dim": 30, "heads": 4}, "dim=30 must be divisible by heads=4"),
])
def test_text_models_reject_impossible_sizes(cls, change, message):
    from medmm_lite.models import text

    sizes = {"vocab_size": 50, "dim": 16, "depth": 1, "heads": 2, "max_len": 12, **change}
    with pytest.raises(ValueError, match=message):
        getattr(text, cls)(**sizes)


def test_attention_rejects_zero_heads_instead_of_dividing_by_zero():
    from medmm_lite.models.attention import Attention

    with pytest.raises(ValueError, match="heads must be a positive int, got 0"):
        Attention(16, 0)


@pytest.mark.parametrize("bad, shown", [(-1.0, "-1.0"), (float("nan"), "nan"), (2.0, "2.0")])
def test_patient_split_rejects_uncertain_and_missing_labels(bad, shown):
    from medmm_lite.data import generate_cohort

    cohort = generate_cohort(60, image_size=32, seed=0)
    cohort.labels[7, 2] = bad
    with pytest.raises(ValueError, match=rf"study 7 has {shown} for {cohort.findings[2]}.*uncertain"):
        patient_split(cohort)


# ---------------------------------------------------------------------------- the command line
TINY = """\
n_studies = 120
image_size = 32
patch_size = 8
dim = 16
depth = 1
heads = 2
vocab_size = 120
max_text_len = 48
batch_size = 16
steps = 2
"""


def _cli(tmp_path, config: str | bytes = TINY, *extra, profile_name="smoke"):
    path = tmp_path / "run.toml"
    path.write_bytes(config if isinstance(config, bytes) else config.encode())
    return ["--objective", "clip", "--profile", profile_name, "--config", str(path), "--out", str(tmp_path / "out"),
            "--no-progress", *extra]


def _exit_2(argv, capsys) -> str:
    from medmm_lite.pretrain.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    return err


class _Started(Exception):
    """Raised where the run would start preparing data: the checks before it passed."""


def test_cli_gpu_profile_without_cuda_refuses_unless_allowed(tmp_path, capsys, monkeypatch):
    from medmm_lite.pretrain import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cli, "_prepare_data", lambda *a: (_ for _ in ()).throw(_Started()))
    err = _exit_2(_cli(tmp_path, "", profile_name="gpu"), capsys)
    assert "needs a CUDA device" in err and "--allow-cpu" in err and "--profile cpu" in err
    with pytest.raises(_Started):
        cli.main(_cli(tmp_path, "", "--allow-cpu", profile_name="gpu"))
    assert "gpu profile on the CPU" in capsys.readouterr().out


def test_cli_batch_size_larger_than_the_training_split_is_an_error(tmp_path, capsys):
    err = _exit_2(_cli(tmp_path, TINY.replace("batch_size = 16", "batch_size = 500")), capsys)
    assert "batch_size 500 is larger than the training split" in err and "lower batch_size" in err
    assert not (tmp_path / "out" / "run.json").exists()


@pytest.mark.parametrize("change, message", [
    ("batch_size = 0", "batch_size must be >= 2, got 0"),
    ("steps = -5", "steps must be >= 1, got -5"),
    ("lr = -0.001", "lr must be a finite number > 0"),
    ("image_size = 30", "image_size 30 must be a multiple of patch_size 8"),
    ("heads = 0", "heads must be >= 1, got 0"),
    ("heads = 3", "dim 16 must be divisible by heads 3"),
    ("n_studies = 0", "n_studies must be >= 3, got 0"),
    ("[objective]\nimage_to_text_weight = 2.0", "image_to_text_weight must be in \\[0, 1\\]"),
    ("[objective]\ntemperature = -0.5", "temperature must be None .*got -0.5"),
])
def test_cli_out_of_range_toml_values_exit_2_with_a_message(tmp_path, capsys, change, message):
    key = change.split("=")[0].strip()
    config = "\n".join(line for line in TINY.splitlines() if not line.startswith(key + " ")) + "\n" + change + "\n"
    err = _exit_2(_cli(tmp_path, config), capsys)
    assert "Traceback" not in err and re.search(message, err), err


def test_cli_non_utf8_toml_is_a_clear_error(tmp_path, capsys):
    err = _exit_2(_cli(tmp_path, TINY.encode() + b"# r\xe9sum\xe9 of the run (Latin-1)\n"), capsys)
    assert "is not UTF-8 text" in err and "save it again as UTF-8" in err


def test_cli_unwritable_out_fails_before_training_starts(tmp_path, capsys, monkeypatch):
    from medmm_lite.pretrain import cli

    monkeypatch.setattr(cli, "_prepare_data", lambda *a: (_ for _ in ()).throw(AssertionError("data prepared")))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    argv = _cli(tmp_path) + ["--out", str(blocker / "out")]
    err = _exit_2(argv, capsys)
    assert "is not a folder this process can write" in err and "choose another --out" in err


# ---------------------------------------------------------------------------- fit
def test_fit_with_a_nan_image_names_the_batch_not_the_learning_rate():
    from medmm_lite.train import fit

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 4, generator=g), torch.randn(32, 2, generator=g)
    x[5, 1] = float("nan")                                   # one bad pixel in sample 5
    data = torch.utils.data.TensorDataset(x, y)
    with pytest.raises(FloatingPointError) as err:
        fit(nn.Linear(4, 2), lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]), data, steps=4, batch_size=32,
            lr=1e-3, device="cpu", progress=False)
    message = str(err.value)
    # e.g. "the training loss became nan at step 1: its batch holds non-finite input (batch[0]: 1 NaN, in
    # dataset index 5), so the data, not the learning rate, is the problem; ..."
    assert "non-finite input" in message and "batch[0]" in message and "dataset index 5" in message
    assert "Lower lr" not in message, "the learning rate is not the problem"


def test_a_healthy_cache_round_trip_raises_no_warning():
    """The checks above must not make the happy path warn (hash, finiteness, info.json)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calls = []
        load_or_train("quiet", _trainer(calls), build_fn=lambda: nn.Linear(4, 2))
        load_or_train("quiet", _trainer(calls), build_fn=lambda: nn.Linear(4, 2))
    assert calls == [1]
