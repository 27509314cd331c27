"""Dagster's own storage on PostgreSQL (issue 15 item 1): ``recs_pipeline/dagster.production.yaml``.

Against the machine's PostgreSQL (127.0.0.1:5432, trust auth), in a database created for the test and
dropped after it: ``open_instance`` writes the production instance file when it is chosen (over the
SQLite one), a real ingest run of the pipeline is recorded in Postgres's ``runs`` table, and a
``landing_sensor`` tick and a ``periodic_materialization`` tick, each evaluated against that instance,
are stored in its schedule storage (``job_ticks``).

The ticks are evaluated with Dagster's instance-backed contexts and recorded with ``create_tick``, as
the daemon does; the daemon itself is not run (a schedule's next cron time is up to an hour away).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import yaml
from dagster._core.scheduler.instigation import InstigatorType, TickData, TickStatus  # no public tick API

from recs_pipeline.data.synthetic import SyntheticConfig, write_synthetic
from recs_pipeline.defs.realtime import landing_sensor, periodic_materialization
from recs_pipeline.defs.resources import PipelineResource
from recs_pipeline.runner import INSTANCE_TEMPLATES, PipelineRunner, open_instance
from recs_pipeline.settings import Settings

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def test_production_instance_shares_everything_but_storage() -> None:
    """The production file is the embedded one plus the storage block (one set of pools and monitoring)."""
    embedded = yaml.safe_load(INSTANCE_TEMPLATES["dagster.yaml"].read_text())
    production = yaml.safe_load(INSTANCE_TEMPLATES["dagster.production.yaml"].read_text())
    storage = production.pop("storage")
    assert production == embedded
    assert "storage" not in embedded
    connection = storage["postgres"]["postgres_db"]
    assert connection.pop("scheme") == "postgresql+psycopg2"  # not SQLAlchemy 2.1's default, psycopg 3
    assert {key: value["env"] for key, value in connection.items()} == {
        "hostname": "DAGSTER_POSTGRES_HOST",
        "port": "DAGSTER_POSTGRES_PORT",
        "username": "DAGSTER_POSTGRES_USER",
        "password": "DAGSTER_POSTGRES_PASSWORD",
        "db_name": "DAGSTER_POSTGRES_DB",
    }


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, dropped afterwards (runs never collide)."""
    name = f"recs_dagster_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _record_tick(instance: dg.DagsterInstance, name: str, kind: InstigatorType, **result: object) -> None:
    started = time.time()
    instance.create_tick(
        TickData(
            instigator_origin_id=f"recs_pipeline:{name}",
            instigator_name=name,
            instigator_type=kind,
            status=TickStatus.SUCCESS,
            timestamp=started,
            end_timestamp=time.time(),
            selector_id=name,
            run_ids=[],  # the requested runs are not launched here
            **result,  # type: ignore[arg-type]
        )
    )


@pytest.mark.integration
def test_runs_and_ticks_are_stored_in_postgres(tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RECS_LANDING_DIR", "RECS_DUCKDB_PATH", "RECS_FEATURES_DIR", "RECS_FEATURE_REPO", "RECS_FEAST_YAML"):
        monkeypatch.delenv(var, raising=False)
    for var, value in {"HOST": "127.0.0.1", "PORT": "5432", "USER": "postgres", "PASSWORD": "", "DB": database}.items():
        monkeypatch.setenv(f"DAGSTER_POSTGRES_{var}", value)
    dagster_home = tmp_path / "home" / "dagster"
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.setenv("RECS_DAGSTER_YAML", "dagster.production.yaml")
    # A home set up before, on the embedded (SQLite) instance: choosing production replaces it.
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text(INSTANCE_TEMPLATES["dagster.yaml"].read_text())
    settings = Settings.from_env(tmp_path / "home")
    settings.ensure_dirs()

    instance = open_instance(settings)
    assert (dagster_home / "dagster.yaml").read_text() == INSTANCE_TEMPLATES["dagster.production.yaml"].read_text()
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"

    # (a) a real run of the pipeline's ingest assets, recorded in Postgres
    write_synthetic(SyntheticConfig(n_events=2000, seed=5, days=2), settings.landing_dir)
    PipelineRunner(settings, instance=instance).materialize("ingest")
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}") as conn:
        runs = conn.execute("SELECT pipeline_name, status FROM runs").fetchall()
        pool = conn.execute("SELECT concurrency_key FROM concurrency_limits").fetchall()
    assert runs == [("pipeline_job", "SUCCESS")]
    assert ("duckdb",) in pool  # the pools live in the event-log storage, i.e. Postgres too

    # (b) the landing sensor, evaluated against the instance: the landed files make a run request
    resources = {"pipeline": PipelineResource(home=str(settings.home))}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        sensor_result = landing_sensor(context)
    assert isinstance(sensor_result, dg.SensorResult) and sensor_result.run_requests
    run_keys = [r.run_key for r in sensor_result.run_requests if r.run_key]
    _record_tick(instance, "landing_sensor", InstigatorType.SENSOR, run_keys=run_keys, cursor=sensor_result.cursor)

    # (c) the hourly schedule, whose evaluation reads the ingested days from this instance
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime.now(UTC)) as context:
        requests = periodic_materialization(context)
    assert isinstance(requests, list) and requests, requests  # not skipped: the ingest run is visible
    _record_tick(instance, "periodic_materialization", InstigatorType.SCHEDULE, run_requests=requests)

    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}") as conn:
        ticks = conn.execute("SELECT selector_id, type, status FROM job_ticks ORDER BY id").fetchall()
    assert ticks == [
        ("landing_sensor", "SENSOR", "SUCCESS"),
        ("periodic_materialization", "SCHEDULE", "SUCCESS"),
    ]
    stored = instance.get_ticks("recs_pipeline:landing_sensor", "landing_sensor")
    assert [t.tick_data.run_keys for t in stored] == [run_keys]

    # Unset, the choice stays with the home: a production file is kept, never swapped back to SQLite.
    monkeypatch.delenv("RECS_DAGSTER_YAML")
    settings = Settings.from_env(tmp_path / "home")
    again = open_instance(settings)  # the duckdb pool exists already: opening again must not fail on it
    assert type(again.run_storage).__name__ == "PostgresRunStorage"
    PipelineRunner(settings, instance=again).materialize("ingest")
    assert [run.status for run in again.get_runs()] == [dg.DagsterRunStatus.SUCCESS] * 2
