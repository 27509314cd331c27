"""A served home: small generated data, features online, a trained and promoted champion."""

import dagster as dg
import pytest

from recs_pipeline.lib.synthetic import SyntheticConfig, write_synthetic
from recs_pipeline.runner import PipelineRunner
from recs_pipeline.settings import Settings


@pytest.fixture(scope="session")
def served_home(tmp_path_factory):
    """Settings of a home where `recs run` has run: features in the online store and a champion model.

    The synthetic data's last day is recent relative to its own start (2026-09-01 + 30 days);
    the service never compares it with the wall clock except for freshly posted events.
    """
    settings = Settings.from_env(tmp_path_factory.mktemp("served") / "home")
    settings.ensure_dirs()
    write_synthetic(SyntheticConfig(n_events=40_000, seed=4, days=30), settings.landing_dir)
    runner = PipelineRunner(settings, instance=dg.DagsterInstance.ephemeral())
    runner.materialize("ingest")
    runner.materialize("features", partition=runner.snapshot_days(1)[0])
    runner.materialize("feast")
    promoted, verdict = runner.retrain()
    assert promoted, verdict
    return settings
