import json

import pytest
import torch

import medmm_lite
from medmm_lite.utils import atomic_save, atomic_write_bytes


@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu"])
def test_profiles_give_consistent_sizes(name):
    p = medmm_lite.profile(name)
    assert p.name == name
    assert p.image_size % p.patch_size == 0, "ViT patches must tile the image"
    assert p.dim % p.heads == 0
    assert p.device in ("cpu", "cuda")


def test_profiles_grow():
    smoke, cpu, gpu = (medmm_lite.profile(n) for n in ("smoke", "cpu", "gpu"))
    assert smoke.n_studies < cpu.n_studies < gpu.n_studies
    assert smoke.steps < cpu.steps < gpu.steps


def test_auto_honours_environment(monkeypatch):
    monkeypatch.setenv("MEDMM_PROFILE", "smoke")
    assert medmm_lite.profile("auto").name == "smoke"
    monkeypatch.delenv("MEDMM_PROFILE")
    assert medmm_lite.profile("auto").name == ("gpu" if torch.cuda.is_available() else "cpu")


def test_unknown_profile_is_named():
    with pytest.raises(ValueError, match="PROFILE must be one of"):
        medmm_lite.profile("laptop")


def test_with_changes_one_size():
    assert medmm_lite.profile("smoke").with_(steps=7).steps == 7


def test_profile_overrides_from_the_environment_are_typed_and_checked(monkeypatch):
    monkeypatch.setenv("MEDMM_PROFILE_OVERRIDES", "n_studies=1200, amp=true,lr=0.002")
    P = medmm_lite.profile("gpu")
    assert (P.n_studies, P.amp, P.lr, P.dim) == (1200, True, 0.002, 256)
    for bad, message in (("n_study=3", "not FIELD=VALUE with a Profile field"), ("amp=maybe", "amp must be a bool"),
                         ("steps=many", "steps must be a int"), ("name=cpu", "not FIELD=VALUE")):
        monkeypatch.setenv("MEDMM_PROFILE_OVERRIDES", bad)
        with pytest.raises(ValueError, match=message):
            medmm_lite.profile("gpu")


def test_record_writes_results_file(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    monkeypatch.setenv("MEDMM_RESULTS", str(target))
    medmm_lite.record("auroc", torch.tensor(0.75))
    medmm_lite.record("r_at_10", 0.5)
    assert json.loads(target.read_text()) == {"auroc": 0.75, "r_at_10": 0.5}
    assert medmm_lite.recorded()["auroc"] == 0.75


@pytest.mark.parametrize("name, value, error", [("bad name", 1.0, ValueError), ("x", float("nan"), ValueError),
                                                 ("x", "high", TypeError)])
def test_record_rejects_bad_input(name, value, error):
    with pytest.raises(error):
        medmm_lite.record(name, value)


def test_seed_everything_repeats():
    medmm_lite.seed_everything(3)
    a = torch.randn(4)
    medmm_lite.seed_everything(3)
    assert torch.equal(a, torch.randn(4))
    with pytest.raises(ValueError):
        medmm_lite.seed_everything(-1)


def test_atomic_writes_leave_no_partial_file(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def crash(path):
        open(path, "wb").write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_save(crash, target)
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]
