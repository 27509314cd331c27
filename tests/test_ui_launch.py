"""A UI launch of ``pipeline_job`` through the real webserver's GraphQL, as a fresh clone's user does it.

``dagster dev`` (webserver, daemon and code server, as ``scripts/up`` starts it, with the shipped
``dagster.yaml``) runs on a free port against a temporary home whose events are already ingested
(the day partitions exist, as after ``recs run`` or the landing sensor's first run). While another
run of the same Dagster instance holds the ``duckdb`` pool, the test launches ``pipeline_job`` for the
newest day through GraphQL (``launchPipelineExecution``, via dagster-graphql's client). Then:

* the pool is honoured across runs: the daemon reports the launched run blocked by the pool and keeps
  it queued until the holder ends, and the run starts only after the holder ended;
* the run succeeds, in one process: every step event carries the pid of the in-process executor's
  "Executing steps in process" event (the multiprocess executor started a process per step);
* that process is a fork of the code server's warm run server (recs_pipeline/warm_runs.py), not a
  fresh interpreter: its parent is ``multiprocessing``'s fork server.

The landing sensor is pointed at an empty landing zone (``RECS_LANDING_DIR``), so it launches no
run of its own during the test.
"""

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
from dagster_graphql import DagsterGraphQLClient
from processes import stop_group

from recs_pipeline.data.synthetic import SyntheticConfig, write_synthetic
from recs_pipeline.defs.ingest import newest_event_day
from recs_pipeline.runner import PipelineRunner, open_instance
from recs_pipeline.settings import DUCKDB_POOL, Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
DAGSTER = Path(sys.executable).with_name("dagster")
LOCATION = "recs_pipeline"  # workspace.yaml's location_name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(what: str, condition, timeout: float, log: Path, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    raise AssertionError(f"{what} not within {timeout} s; dagster dev's output ends with:\n{tail}")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (a local http URL)
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def ui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``dagster dev`` on a free port for a home whose events are ingested; yields (port, log, instance, day).

    The home is seeded (a few days of events ingested through the persistent instance) while the
    webserver, daemon and code server start.
    """
    for var in ("RECS_LANDING_DIR", "RECS_DUCKDB_PATH", "RECS_FEATURES_DIR", "RECS_FEATURE_REPO", "RECS_FEAST_YAML"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    settings = Settings.from_env(tmp_path / "home")
    settings.ensure_dirs()
    instance = open_instance(settings)  # the shipped dagster.yaml, the duckdb pool's slot
    port = _free_port()
    live_landing = tmp_path / "live-landing"  # empty: the landing sensor has nothing to launch
    live_landing.mkdir()
    env = {
        **os.environ,
        "RECS_HOME": str(settings.home),
        "DAGSTER_HOME": str(settings.dagster_home),
        "RECS_LANDING_DIR": str(live_landing),
    }
    log = tmp_path / "dagster-dev.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(DAGSTER), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        write_synthetic(SyntheticConfig(n_events=3000, seed=11, days=3), settings.landing_dir)
        runner = PipelineRunner(settings, instance=instance)
        runner.materialize("ingest")
        day = newest_event_day(instance)
        assert day is not None
        _wait_for("the webserver", lambda: _answers(f"http://127.0.0.1:{port}/server_info"), 120, log)
        yield port, log, instance, day.isoformat()
    finally:
        stop_group(proc, timeout=30)


def _in_process_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        if event is not None and (event.message or "").startswith("Executing steps in process"):
            return event.pid
    return None


def _parent_command(pid: int) -> str:
    """The command line of ``pid``'s parent process (read while ``pid`` runs)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        raise AssertionError(f"the run's process {pid} ended before its parent could be read") from None
    ppid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:"))
    return Path(f"/proc/{ppid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _hold_pool(instance: dg.DagsterInstance, holding: threading.Event, release: threading.Event, out: list) -> None:
    """A run of the same instance with one step in the duckdb pool, in progress until ``release`` is set."""

    @dg.asset(pool=DUCKDB_POOL)
    def pool_holder() -> None:
        holding.set()
        if not release.wait(timeout=180):
            raise TimeoutError("the test never released the pool")

    out.append(dg.materialize([pool_holder], instance=instance))


@pytest.mark.integration
def test_ui_launch_of_pipeline_job_waits_for_the_pool_then_runs_in_one_process(ui):
    port, log, instance, day = ui

    holding, release, held = threading.Event(), threading.Event(), []
    holder = threading.Thread(target=_hold_pool, args=(instance, holding, release, held), daemon=True)
    holder.start()
    try:
        assert holding.wait(timeout=60), "the pool holder's step did not start"
        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        run_id = client.submit_job_execution(
            "pipeline_job", repository_location_name=LOCATION, tags={"dagster/partition": day}
        )
        blocked = f"Run {run_id} is blocked by global concurrency limits"
        _wait_for("the daemon keeping the run queued for the duckdb pool", lambda: blocked in log.read_text(), 60, log)
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.QUEUED
    finally:
        release.set()
        holder.join(timeout=60)
    assert held and held[0].success

    run_pid = _wait_for("the run's process", lambda: _in_process_pid(instance, run_id), 120, log)
    parent = _parent_command(run_pid)  # the run takes tens of seconds: it is still running here
    assert "multiprocessing.forkserver" in parent, parent

    done = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
    status = _wait_for("pipeline_job's end", lambda: (s := client.get_run_status(run_id)) in done and s, 150, log)
    events = [e.dagster_event for e in instance.all_logs(run_id) if e.dagster_event is not None]
    failures = [e.message for e in events if e.is_failure]
    assert status == dg.DagsterRunStatus.SUCCESS, failures

    holder_record = instance.get_run_record_by_id(held[0].run_id)
    record = instance.get_run_record_by_id(run_id)
    assert record.start_time >= holder_record.end_time  # started only once the holder had let the pool go
    assert record.dagster_run.tags["dagster/partition"] == day

    in_process = [e for e in events if e.message and e.message.startswith("Executing steps in process (pid: ")]
    assert len(in_process) == 1, [e.message for e in events if e.event_type == dg.DagsterEventType.ENGINE_EVENT]
    step_pids = {e.pid for e in events if e.is_step_event}  # planned-materialisation events have no pid
    assert step_pids == {in_process[0].pid}
    succeeded = {e.step_key for e in events if e.event_type == dg.DagsterEventType.STEP_SUCCESS}
    assert {"catalog_items", "events", "user_features", "feast_registry", "online_features"} <= succeeded
