"""Shared fixtures: a pipeline home on a temp dir, the real samples, a warehouse connection, and the
session's two pipeline homes (``feature_pipeline``: features and Feast; ``served_pipeline``: trained
and promoted), built once and copied (:func:`copy_home`) where a test mutates one.

Lanes: every test that uses a pipeline-home fixture is marked ``integration`` here; tests that start
servers or subprocesses mark themselves. ``./scripts/test --fast`` runs the rest.
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from homes import LOCATION_VARIABLES, SERVED_LIMITS, SERVED_WEIGHTS, build_trained_home

from recs_pipeline.data.synthetic import SyntheticConfig, SyntheticSummary, write_synthetic
from recs_pipeline.runner import PipelineRunner
from recs_pipeline.settings import Settings, shared_data_dir
from recs_pipeline.warehouse import db

# Bootstrap resamples of the pipeline's evaluation (the default is 500): the tests check that every
# interval is computed and contains its estimate, not its width; the promotion gate uses point
# estimates. Set before any Settings are read; subprocesses inherit it.
os.environ.setdefault("RECS_EVAL_BOOTSTRAP", "50")

# Fixtures that build (or copy) a pipeline home: a test using any of them is in the integration lane.
# (``online_home`` is tests/assets/test_realtime.py's own small home.)
HOME_FIXTURES = frozenset({"served_pipeline", "served_home", "feature_pipeline", "online_home"})


# The longest test files, run first: the two workers take whole files in collection order, and the
# suite ends when its last file does, so the long ones must not be handed out last.
RUN_FIRST = (
    "tests/test_cli.py",
    "tests/assets/test_crash_recovery.py",
    "tests/test_ui_launch.py",
    "tests/assets/test_day_partitions.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HOME_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
    # stable: RUN_FIRST in its order, then the rest unchanged
    first = {path: i for i, path in enumerate(RUN_FIRST)}
    items.sort(key=lambda item: first.get(item.nodeid.split("::")[0], len(first)))


@dataclass(frozen=True)
class FeaturePipeline:
    """A home through ingest, two daily feature snapshots and Feast (no models), with its runs."""

    settings: Settings
    summary: SyntheticSummary
    days: list[str]
    instance: dg.DagsterInstance
    ingest: dg.ExecuteInProcessResult
    feature_runs: list[dg.ExecuteInProcessResult]
    feast: dg.ExecuteInProcessResult


@pytest.fixture(scope="session")
def feature_pipeline(tmp_path_factory: pytest.TempPathFactory) -> FeaturePipeline:
    """20k generated events over 20 days through every asset but the models; built once per session.

    Read-only: tests that change it use ``copy_home(feature_pipeline.settings, tmp)``.
    """
    settings = Settings.from_env(tmp_path_factory.mktemp("features") / "home")
    settings.ensure_dirs()
    summary = write_synthetic(SyntheticConfig(n_events=20_000, seed=3, days=20), settings.landing_dir)
    runner = PipelineRunner(settings, instance=dg.DagsterInstance.ephemeral())
    ingest = runner.materialize("ingest")
    days = runner.snapshot_days(2)
    feature_runs = [runner.materialize("features", partition=d) for d in days]
    feast = runner.materialize("feast")
    return FeaturePipeline(settings, summary, days, runner.instance, ingest, feature_runs, feast)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose every path is under a fresh temp dir."""
    for var in LOCATION_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RECS_HOME", str(tmp_path / "home"))
    s = Settings.from_env()
    s.ensure_dirs()
    return s


@pytest.fixture
def con(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    with db.connect(settings.duckdb_path) as c:
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


@pytest.fixture(scope="session")
def served_pipeline(tmp_path_factory) -> tuple[Settings, bool, str]:
    """A home where `recs run` has run: features in the online store and a trained, promoted model.

    Returns the settings and the first retrain's (promoted, verdict). Shared by the model tests
    (which only add versions and leave the first champion in place) and the serving tests. The
    synthetic data's days are 2026-09-01 + 30; the service compares them with the wall clock only
    for freshly posted events.
    """
    home = tmp_path_factory.mktemp("served") / "home"
    with pytest.MonkeyPatch.context() as mp:  # the deployment's settings while the home is built
        for name, value in SERVED_WEIGHTS.items():
            mp.setenv(name, value)
        settings = Settings.from_env(home)
        _, promoted, verdict = build_trained_home(settings, SyntheticConfig(n_events=40_000, seed=4, days=30))
    return Settings.from_env(home), promoted, verdict


@pytest.fixture(scope="session")
def served_training() -> tuple[dict[str, str], dict[str, int]]:
    """The non-default event weights (environment) and candidate limits the served home was trained with."""
    return dict(SERVED_WEIGHTS), dict(SERVED_LIMITS)


@pytest.fixture(scope="session")
def served_home(served_pipeline) -> Settings:
    settings, promoted, verdict = served_pipeline
    assert promoted, verdict
    return settings
