"""Crash safety and concurrency: kill ingestion at any point and rerun; two runs at once queue on DuckDB."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest

from recs_pipeline.data import landing
from recs_pipeline.data.synthetic import SyntheticConfig, generate_events
from recs_pipeline.runner import INSTANCE_TEMPLATE
from recs_pipeline.settings import Settings
from recs_pipeline.warehouse import db
from recs_pipeline.warehouse.features import FEATURE_TABLES

pytestmark = pytest.mark.integration  # subprocesses of ingestion and of Dagster runs

INGEST_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from datetime import UTC, datetime
    from pathlib import Path
    from recs_pipeline.warehouse import ingest, db
    home = Path(sys.argv[1])
    # Optional kill point "<when>:<name>:<n>": SIGKILL this process before/after the n-th
    # run of sql/<name>.sql, or after the n-th file committed ("after:commit:<n>").
    when, name, nth = (sys.argv[2].split(":") if len(sys.argv) > 2 else ("", "", "0"))
    seen = 0
    def kill_if_due(point_when, point_name):
        global seen
        if (point_when, point_name) == (when, name):
            seen += 1
            if seen == int(nth):
                os.kill(os.getpid(), signal.SIGKILL)
    run_sql = ingest.run_sql
    def run_sql_with_kill_point(con, sql_name, **params):
        kill_if_due("before", sql_name)
        result = run_sql(con, sql_name, **params)
        kill_if_due("after", sql_name)
        return result
    ingest.run_sql = run_sql_with_kill_point
    with db.connect(home / "w.duckdb") as con:
        ingest.ingest_landed(
            con, home / "landing", now=datetime(2026, 11, 1, tzinfo=UTC),
            progress=lambda outcome: kill_if_due("after", "commit"),
        )
""")

# Where each interrupted run is SIGKILLed, counted within that run (files already ingested are
# skipped, so every run starts on the next file): before a file is read, between its statements
# inside the transaction, after its ledger row but before COMMIT, and between two committed files.
KILL_POINTS = (
    "before:stage_parquet:1",
    "after:insert_events:2",
    "after:record_ledger:3",
    "after:commit:2",
    "before:fresh_events:4",
    "before:record_ledger:6",
    "after:quarantine_rows:3",
    # exposures load after every events file: these kill the runs that reach them
    "after:insert_exposure_items:1",
    "before:insert_exposures:2",
    "after:fresh_exposures:3",
)


def _land_chunks(landing_dir: Path, *, copies: bool) -> None:
    for n, chunk in enumerate(generate_events(SyntheticConfig(n_events=60_000, seed=11, chunk_events=4_000))):
        landing.land_frame(chunk, landing_dir, "events", f"chunk-{n:03d}.parquet")
        if copies and n % 5 == 0:  # overlapping re-sends: half of this chunk again in another file
            landing.land_frame(chunk.head(2_000), landing_dir, "events", f"resend-{n:03d}.parquet")
    # served lists: six files of 300, each re-sending 100 request ids of the one before, one bad row each
    for f in range(6):
        rows = [
            json.dumps(
                {
                    "request_id": f"r{r}",
                    "user_id": f"u{r % 97}",
                    "ts": "2026-10-20T12:00:00+00:00",
                    "model_version": "v0001",
                    "items": [{"item_id": f"i{(r + p) % 500}", "position": p + 1, "score": 1.0} for p in range(5)],
                }
            )
            for r in range(200 * f, 200 * f + 300)
        ]
        with landing.landing_writer(landing_dir, "exposures", f"served-{f}.jsonl") as tmp:
            tmp.write_text("\n".join([*rows, '{"request_id": "bad"}']) + "\n")


def _table(home: Path) -> tuple[list, list, list]:
    with db.connect(home / "w.duckdb") as con:
        events = con.execute(
            "SELECT event_id, user_id, item_id, event_type, ts, session_id FROM events ORDER BY event_id"
        ).fetchall()
        ledger = con.execute(
            "SELECT file_name, rows_read, loaded, quarantined, duplicates FROM ingest_ledger ORDER BY file_name"
        ).fetchall()
        served = con.execute(
            "SELECT request_id, user_id, n_items, (SELECT count(*) FROM exposure_items AS i "
            "WHERE i.request_id = x.request_id) FROM exposures AS x ORDER BY request_id"
        ).fetchall()
    return events, ledger, served


def test_killing_ingestion_at_any_point_then_rerunning_loses_and_duplicates_nothing(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for home in (clean, killed):
        _land_chunks(home / "landing", copies=True)
    subprocess.run([sys.executable, "-c", INGEST_SCRIPT, str(clean)], check=True)

    for point in KILL_POINTS:
        proc = subprocess.run([sys.executable, "-c", INGEST_SCRIPT, str(killed), point], check=False)
        assert proc.returncode == -signal.SIGKILL, f"ingestion was not killed at {point} (exit {proc.returncode})"
    subprocess.run([sys.executable, "-c", INGEST_SCRIPT, str(killed)], check=True)

    clean_events, clean_ledger, clean_served = _table(clean)
    killed_events, killed_ledger, killed_served = _table(killed)
    assert len(clean_events) == 60_000
    assert killed_events == clean_events
    assert killed_ledger == clean_ledger
    # exposures too: each request id once, with all its items, whatever was killed where
    assert len(clean_served) == 1_300 and all(n == items == 5 for _, _, n, items in clean_served)
    assert killed_served == clean_served


POOL_SCRIPT = textwrap.dedent("""
    import sys
    from recs_pipeline.runner import PipelineRunner
    from recs_pipeline.settings import Settings
    runner = PipelineRunner(Settings.from_env(sys.argv[1]))
    runner.materialize("ingest")
    for day in runner.snapshot_days(1):
        runner.materialize("features", partition=day)
""")


def test_two_runs_at_once_queue_on_the_duckdb_pool_instead_of_failing(tmp_path, monkeypatch):
    settings = Settings.from_env(tmp_path / "home")
    settings.ensure_dirs()
    for n, chunk in enumerate(generate_events(SyntheticConfig(n_events=30_000, seed=5, days=10, chunk_events=10_000))):
        landing.land_frame(chunk, settings.landing_dir, "events", f"c{n}.parquet")
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(INSTANCE_TEMPLATE.read_text())
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    instance = dg.DagsterInstance.get()  # create the instance's storage once, as `dagster dev` would
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", POOL_SCRIPT, str(settings.home)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)

    # the pooled steps of all runs never overlapped in time
    spans = []
    for record in instance.get_run_records():
        starts, ends = {}, {}
        for entry in instance.all_logs(record.dagster_run.run_id):
            event = entry.dagster_event
            if event is None or event.step_key is None:
                continue
            if event.event_type_value == "STEP_START":
                starts[event.step_key] = entry.timestamp
            elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
                ends[event.step_key] = entry.timestamp
        spans += [(starts[k], ends[k], record.dagster_run.run_id, k) for k in starts]
    assert len(spans) == 2 * (3 + len(FEATURE_TABLES))  # per run: catalog_items, events, exposures, a step per table
    spans.sort()
    for (_s1, e1, r1, k1), (s2, _e2, r2, k2) in zip(spans, spans[1:], strict=False):
        assert e1 <= s2, f"{r1}:{k1} overlapped {r2}:{k2}"
    with db.connect(settings.duckdb_path) as con:
        assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 30_000
