"""When ``feast apply`` can be skipped: the fingerprint follows every file of the repo and the settings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from recs_pipeline.feast import feast_store
from recs_pipeline.settings import FEATURE_REPO_DIR, Settings


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    repo = tmp_path / "feature_repo"
    shutil.copytree(FEATURE_REPO_DIR, repo, ignore=shutil.ignore_patterns("__pycache__"))
    for var in ("RECS_FEAST_YAML", "RECS_FEATURES_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RECS_FEATURE_REPO", str(repo))
    return Settings.from_env(tmp_path / "home")


def test_the_fingerprint_changes_with_a_repo_file_or_a_setting(settings: Settings) -> None:
    before = feast_store.repo_fingerprint(settings)
    assert feast_store.repo_fingerprint(settings) == before
    views = settings.feature_repo / "features.py"
    views.write_text(views.read_text() + "\n# a change\n")
    assert feast_store.repo_fingerprint(settings) != before
    changed = feast_store.repo_fingerprint(settings)
    moved = Settings.from_env(settings.home.parent / "elsewhere")
    assert feast_store.repo_fingerprint(moved) != changed, "another home means other source paths"


def test_only_the_embedded_profile_can_skip(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    files = feast_store._local_files(settings)
    assert files == [settings.feast_dir / "registry.db", settings.feast_dir / "online_store.db"]
    monkeypatch.setenv("RECS_FEAST_YAML", "feature_store.production.yaml")
    monkeypatch.setenv("RECS_FEAST_PROJECT", "recs_test")  # the production profile requires both
    monkeypatch.setenv("RECS_ALLOW_INSECURE_STORES", "true")
    assert feast_store._local_files(Settings.from_env(settings.home)) is None
