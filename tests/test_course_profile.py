"""``make course PROFILE=...`` runs every lesson in the chosen profile (nothing is executed here)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tools import lessons as L


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    calls = []

    def fake_execute(lesson, output, *, profile, parameters=None, results=None, **kw):
        calls.append({"lesson": lesson.stem, "profile": profile, "parameters": parameters})

    monkeypatch.setattr(L, "ROOT", tmp_path)
    monkeypatch.setattr(L, "BUILD", tmp_path / "build")
    monkeypatch.setattr(L, "lessons", lambda: [L.NOTEBOOKS / "00_welcome_and_data.py", L.NOTEBOOKS / "01_building_blocks.py"])
    monkeypatch.setattr(L, "execute", fake_execute)
    return calls


@pytest.mark.parametrize("profile", ["smoke", "cpu", "gpu"])
def test_course_passes_a_named_profile_to_every_lesson(recorded, profile):
    assert L.main(["course", "--profile", profile]) == 0
    assert [c["profile"] for c in recorded] == [profile, profile]
    assert all(not c["parameters"] for c in recorded), "the profile goes in via MEDMM_PROFILE, not as a parameter"


def test_course_defaults_to_auto(recorded):
    assert L.main(["course"]) == 0
    assert [c["profile"] for c in recorded] == [None, None], "auto: each notebook chooses ($MEDMM_PROFILE, CUDA, cpu)"


def test_course_rejects_unknown_profiles(recorded):
    with pytest.raises(SystemExit):
        L.main(["course", "--profile", "laptop"])


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("profile", ["auto", "cpu"])
def test_make_course_forwards_PROFILE(profile):
    args = ["make", "-n", "course"] + ([f"PROFILE={profile}"] if profile != "auto" else [])
    dry_run = subprocess.run(args, cwd=L.ROOT, capture_output=True, text=True, check=True).stdout
    assert f"-m tools.lessons course --profile {profile}" in dry_run
