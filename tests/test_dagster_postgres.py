"""Dagster's own storage on PostgreSQL (issue 15 item 1): ``recs_pipeline/dagster.production.yaml``.

Against the machine's PostgreSQL (127.0.0.1:5432, trust auth), in a database created for the test and
dropped after it: ``open_instance`` writes the production instance file when it is chosen (over the
SQLite one), real ingest runs of the pipeline are recorded in Postgres's ``runs`` table, a real
``dagster-daemon`` records a ``landing_sensor`` tick in its schedule storage (``job_ticks``), and so
does a ``periodic_materialization`` tick.

The schedule's tick is evaluated against the instance (it reads the ingested days from it) and
recorded with ``create_tick``, as the daemon would: the daemon ticks a schedule only at its cron time,
up to an hour away.
"""

from __future__ import annotations

import os
import subprocess
import sys
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
from processes import stop_group

from recs_pipeline.data.synthetic import SyntheticConfig, write_synthetic
from recs_pipeline.defs.realtime import periodic_materialization
from recs_pipeline.runner import INSTANCE_TEMPLATES, PipelineRunner, open_instance
from recs_pipeline.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
DAGSTER_DAEMON = Path(sys.executable).with_name("dagster-daemon")
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


def _ticks(database: str, name: str) -> list[tuple[str, ...]]:
    """The statuses of the ticks of the sensor or schedule ``name`` in the ``job_ticks`` table."""
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}") as conn:
        # the serialised TickData keeps its fields' old names (instigator_name is stored as job_name)
        query = "SELECT status FROM job_ticks WHERE tick_body::json->>'job_name' = %s ORDER BY id"
        return conn.execute(query, (name,)).fetchall()


def _finished(ticks: list[tuple[str, ...]]) -> bool:
    return any(status != "STARTED" for (status,) in ticks)


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

    # (b) the landing sensor, ticked by a real daemon on this instance (an empty landing folder: it skips)
    live_landing = tmp_path / "live-landing"
    live_landing.mkdir()
    env = {**os.environ, "RECS_HOME": str(settings.home), "RECS_LANDING_DIR": str(live_landing)}
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        daemon = subprocess.Popen(
            [str(DAGSTER_DAEMON), "run", "-w", "workspace.yaml"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        # a tick's row is written as STARTED before the sensor runs: wait for one that has finished
        while not _finished(sensor_ticks := _ticks(database, "landing_sensor")):
            assert daemon.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no finished sensor tick within 90 s:\n" + log.read_text()[-3000:]
            time.sleep(1)
    finally:
        stop_group(daemon, timeout=30)
    assert "Sensor landing_sensor skipped: no new files" in log.read_text()
    assert ("SKIPPED",) in sensor_ticks

    # (c) the hourly schedule, whose evaluation reads the ingested days from this instance
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime.now(UTC)) as context:
        requests = periodic_materialization(context)
    assert isinstance(requests, list) and requests, requests  # not skipped: the ingest run is visible
    _record_tick(instance, "periodic_materialization", InstigatorType.SCHEDULE, run_requests=requests)

    assert _ticks(database, "periodic_materialization") == [("SUCCESS",)]
    stored = instance.get_ticks("recs_pipeline:periodic_materialization", "periodic_materialization")
    assert [len(t.tick_data.run_requests or []) for t in stored] == [len(requests)]

    # Unset, the choice stays with the home: a production file is kept, never swapped back to SQLite.
    monkeypatch.delenv("RECS_DAGSTER_YAML")
    settings = Settings.from_env(tmp_path / "home")
    again = open_instance(settings)  # the duckdb pool exists already: opening again must not fail on it
    assert type(again.run_storage).__name__ == "PostgresRunStorage"
    PipelineRunner(settings, instance=again).materialize("ingest")
    assert [run.status for run in again.get_runs()] == [dg.DagsterRunStatus.SUCCESS] * 2
