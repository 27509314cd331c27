"""Dead runs are recovered: real `recs run` processes (and a freshness run) killed while they hold the
DuckDB pool or train, a run waiting for the pool that sleeps and stops on SIGTERM, then a run that
recovers them all and ingests every landed event exactly once.

Kill points are events, not timers: a run stops itself inside a file's ingestion transaction (as
tests/assets/test_robustness.py does), or the test kills a run when its event log shows a step started.
"""

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from recs_pipeline.data import landing
from recs_pipeline.data.synthetic import SyntheticConfig, generate_events, write_synthetic
from recs_pipeline.settings import Settings
from recs_pipeline.warehouse import db

pytestmark = pytest.mark.integration  # subprocesses of `recs run` and of a freshness run

LIVE = (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)

# `recs run` (the real command line) with a kill point: "<when>:<sql name>:<n>:<STOP|KILL>" sends the
# signal to itself before/after the n-th run of sql/<name>.sql.
RECS_WITH_KILL_POINT = textwrap.dedent("""
    import os, signal, sys
    from recs_pipeline import cli
    from recs_pipeline.warehouse import ingest
    when, name, nth, sig = sys.argv[1].split(":")
    seen = 0
    run_sql = ingest.run_sql
    def run_sql_with_kill_point(con, sql_name, **params):
        global seen
        if (when, name) == ("before", sql_name):
            seen += 1
            if seen == int(nth):
                os.kill(os.getpid(), getattr(signal, "SIG" + sig))
        result = run_sql(con, sql_name, **params)
        if (when, name) == ("after", sql_name):
            seen += 1
            if seen == int(nth):
                os.kill(os.getpid(), getattr(signal, "SIG" + sig))
        return result
    ingest.run_sql = run_sql_with_kill_point
    cli.main(sys.argv[2:])
""")

# What the daemon does for a batch of landed files: the landing sensor's run request, executed as
# freshness_job (in process, as the daemon's run worker executes it).
FRESHNESS_RUN = textwrap.dedent("""
    import dagster as dg
    from recs_pipeline.definitions import defs
    from recs_pipeline.defs.realtime import landing_sensor
    from recs_pipeline.defs.resources import PipelineResource
    instance = dg.DagsterInstance.get()
    resources = {"pipeline": PipelineResource()}
    result = landing_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    request = result.run_requests[0]
    defs.resolve_job_def("freshness_job").execute_in_process(
        run_config=request.run_config, instance=instance, tags=request.tags
    )
""")


# What `recs run` does after the online store: the runner's retrain (split, folds' features, training).
RETRAIN = textwrap.dedent("""
    from recs_pipeline.runner import PipelineRunner
    from recs_pipeline.settings import Settings
    PipelineRunner(Settings.from_env()).retrain()
""")
INGEST = textwrap.dedent("""
    from recs_pipeline.runner import PipelineRunner
    from recs_pipeline.settings import Settings
    PipelineRunner(Settings.from_env()).materialize("ingest")
""")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _lines(stream) -> queue.Queue:
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    return lines


def _wait_for_line(lines: queue.Queue, text: str, timeout: float) -> str:
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"no {text!r} within {timeout} s; the process wrote:\n{''.join(seen)[-3000:]}")


def _kill_when_step_starts(proc: subprocess.Popen, instance: dg.DagsterInstance, job: str, step: str) -> dg.DagsterRun:
    """SIGKILL ``proc`` as soon as a run of ``job`` it executes has started ``step``; returns that run."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        for record in instance.get_run_records(filters=dg.RunsFilter(job_name=job)):
            run = record.dagster_run
            if run.is_finished:
                continue
            starts = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
            if any(entry.step_key == step for entry in starts):
                proc.kill()
                proc.wait()
                return run
        time.sleep(0.05)
    raise AssertionError(f"{job} never started {step} (exit {proc.poll()})")


def _run(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    return run


def _failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    failures = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    return " ".join(entry.dagster_event.message or "" for entry in failures if entry.dagster_event)


def test_killed_runs_release_the_pool_and_the_next_run_ingests_every_event_once(tmp_path):
    settings = Settings.from_env(tmp_path / "home")
    settings.ensure_dirs()
    write_synthetic(SyntheticConfig(n_events=6_000, seed=5, days=10, chunk_events=2_000), settings.landing_dir)
    dagster_home = tmp_path / "dagster"
    env = {**os.environ, "RECS_HOME": str(settings.home), "DAGSTER_HOME": str(dagster_home)}
    recs = [sys.executable, "-m", "recs_pipeline.cli"]

    # 1. A run stops itself inside the second file's ingestion transaction: it holds the pool (and
    #    DuckDB's file lock) and its process is alive.
    holder = subprocess.Popen([sys.executable, "-c", RECS_WITH_KILL_POINT, "after:insert_events:2:STOP", "run",
                               "--no-land", "--no-models"], env=env)  # fmt: skip
    _, status = os.waitpid(holder.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the holder did not stop at its kill point (status {status})"
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    [held] = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    assert held.job_name == "pipeline_job"  # the named job, not __ephemeral_asset_job__
    assert instance.run_launcher.check_run_worker_health(held).status.value == "RUNNING"

    # 2. Another run waits for the pool, sleeping, and stops cleanly on SIGTERM.
    waiter = subprocess.Popen([*recs, "run", "--no-land", "--no-models"], env=env, stderr=subprocess.PIPE, text=True)
    _wait_for_line(_lines(waiter.stderr), f"waiting for the duckdb pool, held by run {held.run_id}", timeout=90)
    before = _cpu_seconds(waiter.pid)
    time.sleep(2.0)
    assert _cpu_seconds(waiter.pid) - before < 0.2, "a run waiting for the pool must sleep, not spin"
    waiter.send_signal(signal.SIGTERM)
    assert waiter.wait(timeout=15) != 0
    assert not instance.get_runs(filters=dg.RunsFilter(tags={"recs/pid": str(waiter.pid)}))  # it never started one

    # 3. The holder is killed: run monitoring's health check (the instance's launcher) sees it dead.
    holder.kill()
    holder.wait()
    assert instance.run_launcher.check_run_worker_health(held).status.value == "FAILED"

    # 4. A freshness run for a newly landed file (it ingests every file not ingested yet), killed once its
    #    ingest is done and it refreshes online. Not a `recs` process: its pid is found in its engine events.
    extra = next(iter(generate_events(SyntheticConfig(n_events=500, seed=6, days=10, chunk_events=500))))
    landing.land_frame(extra, settings.landing_dir, "events", "late.parquet")
    fresh = subprocess.Popen([sys.executable, "-c", FRESHNESS_RUN], env=env)
    fresh_run = _kill_when_step_starts(fresh, instance, "freshness_job", "online_refresh")

    # 5. The next `recs run` recovers both dead runs and succeeds.
    final = subprocess.run([*recs, "run", "--no-land", "--no-models"], env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-3000:]
    for run_id in (held.run_id, fresh_run.run_id):
        assert _run(instance, run_id).status == dg.DagsterRunStatus.FAILURE
        assert "is gone" in _failure_message(instance, run_id)

    # 6. The models part of `recs run` (the runner's retrain: split and folds' features in the pool, then
    #    training) is killed as training starts; the next run of the runner marks it failed and succeeds.
    trainer = subprocess.Popen([sys.executable, "-c", RETRAIN], env=env)
    train_run = _kill_when_step_starts(trainer, instance, "train_job", "candidate_sources")
    assert _run(instance, train_run.run_id).status == dg.DagsterRunStatus.STARTED
    subprocess.run([sys.executable, "-c", INGEST], env=env, check=True)
    assert _run(instance, train_run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert "is gone" in _failure_message(instance, train_run.run_id)
    assert not instance.get_runs(filters=dg.RunsFilter(statuses=list(LIVE)))  # nothing left running
    assert not instance.event_log_storage.get_concurrency_info("duckdb").claimed_slots

    # I(data): every landed event stored exactly once; one ledger row per landed file, its counts adding up.
    events_dir = settings.landing_dir / "events"
    landed = pl.concat([pl.read_parquet(f).select("event_id") for f in sorted(events_dir.glob("*.parquet"))])
    with db.connect(settings.duckdb_path) as con:
        stored, distinct = con.execute("SELECT count(*), count(DISTINCT event_id) FROM events").fetchone()
        ledger = con.execute(
            "SELECT file_name, count(*), sum(rows_read), sum(loaded + quarantined + duplicates), sum(loaded) "
            "FROM ingest_ledger WHERE kind = 'events' GROUP BY file_name"
        ).fetchall()
    assert stored == distinct == landed["event_id"].n_unique()
    assert sorted(row[0] for row in ledger) == sorted(f.name for f in events_dir.glob("*.parquet"))
    assert all(count == 1 and read == accounted for _, count, read, accounted, _ in ledger)
    assert sum(row[4] for row in ledger) == stored
