"""Runs whose process died: found, marked failed and their DuckDB pool released.

A run that is killed (SIGKILL, out of memory, a lost machine) never writes its end: Dagster keeps it
*started* forever, and every later run waits for the ``duckdb`` pool it seems to hold. Two
mechanisms find such runs through the same test (:func:`dead_run_reason`):

- :class:`LocalRunLauncher`, the instance's run launcher (``recs_pipeline/dagster.yaml``): Dagster's
  run monitoring daemon (part of ``dagster dev``) asks it every ``poll_interval_seconds`` whether the
  worker of each started run is alive, and marks a dead one failed;
- :func:`recover_dead_runs`, called by the runner before and while it waits for the pool, so that
  ``recs run`` recovers on its own when no daemon is running.

A run's worker is the process recorded in the run's tags (runs started by ``recs``, see
:func:`worker_tags`) or in its first engine event with a ``pid`` (runs launched by the daemon
and any in-process run). A process id is only trusted if that process already existed when the
id was recorded, so a recycled id is not mistaken for the run. Runs recorded on another host are
left alone: their processes cannot be seen from here.

Only ``dagster`` and the standard library are imported here: the instance loads this module in
every Dagster process (webserver, daemon, runs).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import dagster as dg

log = logging.getLogger(__name__)

PID_TAG = "recs/pid"
HOST_TAG = "recs/host"

# Statuses of a run that has a worker process (or should have one, for NOT_STARTED runs with a pid tag).
LIVE_STATUSES = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
# A process id is recorded at a whole second at worst (/proc/stat's boot time); allow for it.
CLOCK_SLACK_SECONDS = 2.0


def worker_tags() -> dict[str, str]:
    """Tags that record this process as the worker of a run it executes in process."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


@dataclass(frozen=True)
class Worker:
    """The process that executes a run: its id, the time it was known to be that process, its host."""

    pid: int
    known_at: float
    host: str | None


def run_worker(instance: dg.DagsterInstance, record: dg.RunRecord) -> Worker | None:
    """The worker process recorded for a run, or None if none was recorded yet."""
    run = record.dagster_run
    if PID_TAG in run.tags:
        return Worker(int(run.tags[PID_TAG]), record.create_timestamp.timestamp(), run.tags.get(HOST_TAG))
    for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        data = event.engine_event_data if event is not None else None
        pid = data.metadata.get("pid") if data is not None else None
        if pid is not None:
            return Worker(int(str(pid.value)), entry.timestamp, None)
    return None


def _boot_time() -> float | None:
    try:
        with open("/proc/stat") as stat:
            for line in stat:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds), or None where /proc cannot tell."""
    boot = _boot_time()
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if boot is None:
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of /proc/PID/stat, after the name


def process_alive(pid: int, *, since: float) -> bool:
    """Whether process ``pid`` exists and already existed at ``since`` (not a recycled id)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    started = process_start_time(pid)
    if started is None:
        return True  # alive; its start time cannot be read here
    if started > since + CLOCK_SLACK_SECONDS:
        return False
    try:
        with open(f"/proc/{pid}/status") as status:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in status)
    except OSError:
        return True


def dead_run_reason(instance: dg.DagsterInstance, record: dg.RunRecord) -> str | None:
    """Why a run that is not finished has no live worker, or None if it may be running."""
    if record.dagster_run.status not in LIVE_STATUSES:
        return None
    worker = run_worker(instance, record)
    if worker is None:
        return None  # not started yet, or launched elsewhere: the start timeout of run monitoring applies
    if worker.host is not None and worker.host != socket.gethostname():
        return None
    if process_alive(worker.pid, since=worker.known_at):
        return None
    return (
        f"the process of this run (pid {worker.pid}) is gone: it was killed or crashed without recording the "
        "end of the run. Marked failed and its DuckDB pool slots freed; rerun it."
    )


def recover_dead_runs(instance: dg.DagsterInstance, *, pool: str | None = None) -> list[str]:
    """Mark failed every unfinished run whose process is gone, free the slots of every run that holds
    ``pool``'s slots and is finished; returns the ids of the runs recovered."""
    recovered = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=LIVE_STATUSES)):
        reason = dead_run_reason(instance, record)
        if reason is None:
            continue
        run = record.dagster_run
        current = instance.get_run_by_id(run.run_id)
        if current is None or current.status not in LIVE_STATUSES:
            continue  # finished or recovered by someone else meanwhile
        log.warning("run %s (%s): %s", run.run_id, run.job_name, reason)
        instance.report_run_failed(current, reason)
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        recovered.append(run.run_id)
    if pool is not None:
        info = instance.event_log_storage.get_concurrency_info(pool)
        holders = {slot.run_id for slot in info.claimed_slots} | {step.run_id for step in info.pending_steps}
        for run_id in holders:
            holder = instance.get_run_by_id(run_id)
            if holder is None or holder.is_finished:
                instance.event_log_storage.free_concurrency_slots_for_run(run_id)
                recovered.append(run_id)
    return recovered


class LocalRunLauncher(dg.DefaultRunLauncher):
    """Dagster's default launcher, plus the worker health check that run monitoring needs.

    Configured in ``recs_pipeline/dagster.yaml``; with ``run_monitoring`` enabled, the daemon marks a
    started run whose worker process is gone as failed (every ``poll_interval_seconds``), whichever
    process started it (the daemon, the UI, or ``recs run`` in process).
    """

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun):  # type: ignore[no-untyped-def]
        # The result types are not exported by dagster; this is the launcher interface of the pinned version.
        from dagster._core.launcher import CheckRunHealthResult, WorkerStatus

        record = self._instance.get_run_record_by_id(run.run_id)
        reason = dead_run_reason(self._instance, record) if record is not None else None
        if reason is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING)  # alive, or cannot be told from here
        return CheckRunHealthResult(WorkerStatus.FAILED, reason)
