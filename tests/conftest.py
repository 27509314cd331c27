"""Shared fixtures: a pipeline home on a temp dir, the real samples, a warehouse connection."""

import os
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from recs_pipeline.lib import warehouse
from recs_pipeline.settings import Settings, shared_data_dir


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose every path is under a fresh temp dir."""
    for var in ("RECS_LANDING_DIR", "RECS_DUCKDB_PATH", "RECS_FEATURE_REPO", "RECS_FEAST_YAML", "DAGSTER_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RECS_HOME", str(tmp_path / "home"))
    s = Settings.from_env()
    s.ensure_dirs()
    return s


@pytest.fixture
def con(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    with warehouse.connect(settings.duckdb_path) as c:
        yield c


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; skipped when absent on a developer's machine, a failure in CI."""
    path = shared_data_dir()
    if not path.is_dir():
        message = f"the real data samples are not at {path} (set RECS_SHARED_DATA to their folder)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
