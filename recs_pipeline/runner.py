"""Run the pipeline's jobs in process against a persistent Dagster instance.

Used by ``recs run`` (scripts, cron, benchmarks) and by the tests; the same runs appear in the
Dagster UI, under the named jobs (``pipeline_job``, ``features_job``, ``retrain_job``,
``train_job``), because they are recorded in the instance at ``Settings.dagster_home``
(``$DAGSTER_HOME`` or ``<home>/dagster``), which is opened explicitly: nothing here sets the
environment.

A run with a step in the ``duckdb`` pool waits, sleeping, until no other run holds the pool
(``granularity: run`` in ``dagster.yaml``) before it starts; while it waits, runs whose process is
gone are marked failed and release the pool (:mod:`recs_pipeline.run_health`).
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args

import dagster as dg

from recs_pipeline.definitions import defs
from recs_pipeline.defs.ingest import newest_event_day
from recs_pipeline.defs.jobs import pipeline_job
from recs_pipeline.defs.models import GROUP as MODELS
from recs_pipeline.defs.models import features_job, model_assets, retrain_job, temporal_split, train_job
from recs_pipeline.defs.partitions import require_days
from recs_pipeline.defs.realtime import freshness_job
from recs_pipeline.defs.resources import PipelineResource
from recs_pipeline.models.protocol import TemporalSplit
from recs_pipeline.models.workspace import RetrainWorkspace, missing_fold_snapshots
from recs_pipeline.run_health import recover_dead_runs, worker_tags
from recs_pipeline.settings import DUCKDB_POOL, DagsterInstanceFile, Settings
from recs_pipeline.warehouse.features import FEATURE_TABLES

log = logging.getLogger(__name__)

# The shipped instance files (Settings.dagster_yaml), each known by its first line.
INSTANCE_TEMPLATES = {name: Path(__file__).with_name(name) for name in get_args(DagsterInstanceFile)}
INSTANCE_TEMPLATE = INSTANCE_TEMPLATES["dagster.yaml"]  # the embedded profile's (SQLite)
TEMPLATE_HEADERS = {name: path.read_text().splitlines()[0] for name, path in INSTANCE_TEMPLATES.items()}
# The named jobs a selection is run as, smallest first: the first one that contains it runs it.
JOBS = (features_job, retrain_job, train_job, pipeline_job, freshness_job)
POOL_POLL_SECONDS = 1.0  # how often a run waiting for the pool looks again (it sleeps in between)
PROGRESS_POLL_SECONDS = 0.5
ACTIVE_STATUSES = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
STEP_EVENTS = {
    dg.DagsterEventType.STEP_START: "started",
    dg.DagsterEventType.STEP_SUCCESS: "succeeded",
    dg.DagsterEventType.STEP_FAILURE: "failed",
    dg.DagsterEventType.STEP_SKIPPED: "skipped",
}


def open_instance(settings: Settings) -> dg.DagsterInstance:
    """The persistent Dagster instance at ``settings.dagster_home``, with the shipped settings.

    The instance file ``settings.dagster_yaml`` names (``RECS_DAGSTER_YAML``) is copied there as
    ``dagster.yaml`` if absent, or if a different shipped file is there (the old one kept as
    ``dagster.yaml.old``). Unset, a new home gets ``dagster.yaml`` (SQLite) and a shipped file already
    there (known by its first line) is kept in its profile: a home that the deploy files set up on
    PostgreSQL stays there. Either way an older copy of a shipped file is replaced by the current one,
    so an existing home gets new settings such as run monitoring; a file of your own is left alone.

    The ``duckdb`` pool's slots are created here, one process at a time (a lock file in the
    instance's folder). Dagster otherwise creates them lazily, and two runs starting together on a
    new instance could both create them (seen once: two runs, one DuckDB file lock conflict).
    """
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    with open(home / ".pools.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = target.read_text() if target.exists() else None
        shipped = next((n for n, h in TEMPLATE_HEADERS.items() if current and current.startswith(h + "\n")), None)
        chosen = settings.dagster_yaml or shipped or "dagster.yaml"
        template = INSTANCE_TEMPLATES[chosen]
        if current is None:
            shutil.copyfile(template, target)
        elif shipped is not None and current != template.read_text():
            shutil.copyfile(target, home / "dagster.yaml.old")
            shutil.copyfile(template, target)
            log.warning("wrote the shipped %s to %s (the previous copy is dagster.yaml.old)", chosen, target)
        instance = dg.DagsterInstance.from_config(str(home))
        # Only when missing or changed, as Dagster does: on PostgreSQL, initialising an existing pool
        # fails in the pinned version (its insert-then-update runs in one aborted transaction).
        storage = instance.event_log_storage
        pool = next((p for p in storage.get_pool_limits() if p.name == DUCKDB_POOL), None)
        if pool is None or (pool.from_default and pool.limit != instance.global_op_concurrency_default_limit):
            storage.initialize_concurrency_limit_to_default(DUCKDB_POOL)
    return instance


@dataclass(frozen=True)
class Progress:
    """What a run is doing, for a progress display.

    ``state`` is ``waiting`` (for the pool; ``detail`` says who holds it), ``started``,
    ``running`` (repeated while a step runs), ``succeeded``, ``failed`` or ``skipped`` (a step:
    ``step`` is its key), or ``finished`` (the run). ``seconds`` is the time since the step (or
    the wait, or the run) started.
    """

    job: str  # the job's name, and the partition if it has one
    state: str
    step: str | None = None
    seconds: float = 0.0
    detail: str = ""


ProgressCallback = Callable[[Progress], None]


class PipelineRunner:
    """Run groups of assets, as the named jobs that contain them, with the pipeline resource pointed at
    ``settings.home``.

    ``log_level`` is the level of Dagster's console log of each run (its event log is stored in the
    instance whatever the level); ``progress`` is called from a helper thread with each step's
    progress.
    """

    def __init__(
        self,
        settings: Settings,
        instance: dg.DagsterInstance | None = None,
        *,
        log_level: str = "WARNING",
        progress: ProgressCallback | None = None,
    ) -> None:
        self.settings = settings
        self.instance = instance if instance is not None else open_instance(settings)
        self.resources = {"pipeline": PipelineResource(home=str(settings.home))}
        self.assets = [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)]
        # The code location's assets, checks and named jobs, with this runner's resources.
        self.defs = dg.Definitions(
            assets=defs.assets, asset_checks=defs.asset_checks, jobs=list(JOBS), resources=self.resources
        )
        self.log_level = log_level
        self.progress = progress

    def job_for(self, selection: dg.AssetSelection) -> tuple[str, list[dg.AssetKey] | None]:
        """The named job that runs ``selection``, and the asset keys to select in it (None: all of them)."""
        keys = selection.resolve(self.assets)
        for job in JOBS:
            job_keys = job.selection.resolve(self.assets)
            if keys <= job_keys:
                return job.name, None if keys == job_keys else sorted(keys)
        raise ValueError(f"no job of the pipeline contains {sorted(k.to_user_string() for k in keys)}")

    def materialize(
        self,
        group: str,
        *,
        partition: str | None = None,
        run_config: dict[str, Any] | None = None,
        raise_on_error: bool = True,
        selection: dg.AssetSelection | None = None,
    ) -> dg.ExecuteInProcessResult:
        """Materialise every asset of ``group``, or ``selection`` within it (by default raises on failure,
        including a failed blocking check), as a run of the named job that contains them.

        A run with a step in the ``duckdb`` pool first waits until the pool is free.
        """
        selection = selection or dg.AssetSelection.groups(group)
        job_name, keys = self.job_for(selection)
        job = self.defs.resolve_job_def(job_name)
        selected = set(keys) if keys is not None else selection.resolve(self.assets)
        pooled = any(a.op.pool == DUCKDB_POOL for a in self.assets if set(a.keys) & selected)
        config = {**(run_config or {}), "loggers": {"console": {"config": {"log_level": self.log_level}}}}
        run_id = str(uuid.uuid4())
        label = f"{job_name} {partition}" if partition else job_name
        with self._pool(label) if pooled else nullcontext(), self._watch(label, run_id):
            return job.execute_in_process(
                run_config=config,
                instance=self.instance,
                partition_key=partition,
                raise_on_error=raise_on_error,
                asset_selection=keys,
                run_id=run_id,
                tags={"recs/group": group, **worker_tags()},
            )

    def pool_holders(self) -> list[dg.DagsterRun]:
        """Runs in progress that hold the ``duckdb`` pool."""
        records = self.instance.get_run_records(filters=dg.RunsFilter(statuses=ACTIVE_STATUSES))
        return [
            r.dagster_run
            for r in records
            if r.dagster_run.run_op_concurrency and DUCKDB_POOL in (r.dagster_run.run_op_concurrency.all_pools or [])
        ]

    @contextmanager
    def _pool(self, job_name: str) -> Iterator[None]:
        """Hold the ``duckdb`` pool for a run: wait (sleeping) for the other runners of this instance (a
        lock file) and for runs in progress that hold it, failing those whose process is gone."""
        if self.instance.is_ephemeral:
            yield
            return
        started = time.monotonic()
        waiting_for = None
        with open(Path(self.instance.root_directory) / ".duckdb-pool.lock", "w") as lock:
            while True:
                recover_dead_runs(self.instance, pool=DUCKDB_POOL)
                runs = self.pool_holders()
                limit = max(self.instance.event_log_storage.get_concurrency_info(DUCKDB_POOL).slot_count, 1)
                if len(runs) < limit:
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        pass  # another runner of this instance is starting its run
                    else:
                        if len(self.pool_holders()) < limit:
                            break
                        fcntl.flock(lock, fcntl.LOCK_UN)
                holders = ", ".join(f"run {r.run_id} ({r.job_name})" for r in runs) or "another `recs` process"
                if holders != waiting_for:
                    log.info("%s waits for the %s pool, held by %s", job_name, DUCKDB_POOL, holders)
                    waiting_for = holders
                self._report(Progress(job_name, "waiting", seconds=time.monotonic() - started, detail=holders))
                time.sleep(POOL_POLL_SECONDS)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _report(self, progress: Progress) -> None:
        if self.progress is not None:
            self.progress(progress)

    @contextmanager
    def _watch(self, job_name: str, run_id: str) -> Iterator[None]:
        """Report the steps of run ``run_id`` while it runs (a thread reading the instance's event log)."""
        if self.progress is None:
            yield
            return
        stop = threading.Event()
        thread = threading.Thread(target=self._follow, args=(job_name, run_id, stop), daemon=True)
        started = time.monotonic()
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self._report(Progress(job_name, "finished", seconds=time.monotonic() - started))

    def _follow(self, job_name: str, run_id: str, stop: threading.Event) -> None:
        instance = self.instance
        if not instance.is_ephemeral:  # a connection of its own for this thread
            instance = dg.DagsterInstance.from_config(str(self.instance.root_directory))
        cursor = None
        running: dict[str, float] = {}
        while True:
            done = stop.wait(PROGRESS_POLL_SECONDS)  # read once more after the run ended
            records = instance.get_records_for_run(run_id, cursor=cursor, of_type=set(STEP_EVENTS))
            cursor = records.cursor
            for record in records.records:
                event = record.event_log_entry.dagster_event
                if event is None or event.step_key is None:
                    continue
                state = STEP_EVENTS[event.event_type]
                begun = running.pop(event.step_key, record.timestamp)
                if state == "started":
                    running[event.step_key] = record.timestamp
                self._report(Progress(job_name, state, event.step_key, record.timestamp - begun))
            for step, begun in running.items():
                self._report(Progress(job_name, "running", step, time.time() - begun))
            if done:
                return

    def retrain(self, run_config: dict[str, Any] | None = None) -> tuple[bool, str]:
        """Retrain in three steps, as the daemon's ``retrain_chain`` does: the split, the features group
        for each fold's snapshot day, then training; returns (promoted, verdict of the promotion gate).

        ``run_config`` sets the model assets' config (e.g. ``{"ops": {"candidates": {"config": {"als": 60}}}}``);
        each step gets the part for its own assets.

        A challenger refused by the blocking gate is not an error of the pipeline: the run stops
        before ``champion`` (Dagster marks it failed), and this returns ``(False, verdict)``.
        Any other failure raises.
        """
        ops = self._model_ops(run_config)
        self.prepare_retrain({"ops": ops})
        result = self.materialize(
            MODELS,
            selection=train_job.selection,
            run_config={"ops": {k: v for k, v in ops.items() if k != temporal_split.key.to_user_string()}},
            raise_on_error=False,
        )
        gate = [e for e in result.get_asset_check_evaluations() if e.check_name == "beats_champion_and_baselines"]
        verdict = str(gate[0].metadata["verdict"].value) if gate else "the gate was not reached"
        if result.success:
            return True, verdict
        failed = {e.step_key or "" for e in result.all_events if e.is_step_failure}
        if failed == {"model_version"} and gate and not gate[0].passed:
            log.warning("challenger not promoted: %s", verdict)
            return False, verdict
        errors = [
            f"{e.step_key}: {e.step_failure_data.error.message.strip()}"
            for e in result.all_events
            if e.is_step_failure and e.step_failure_data.error is not None
        ]
        raise RuntimeError(
            f"retraining failed in steps {sorted(failed)} (see the run {result.run_id} of train_job in the Dagster "
            "UI)" + "".join(f"\n  {error}" for error in errors)
        )

    def prepare_retrain(self, run_config: dict[str, Any] | None = None) -> TemporalSplit:
        """The retrain's first two steps: the split (``retrain_job``), then the features group for each
        fold's snapshot day (``features_job``); returns the split."""
        split_key = temporal_split.key.to_user_string()
        ops = self._model_ops(run_config)
        split_ops = {"ops": {split_key: ops[split_key]}} if split_key in ops else None
        self.materialize(MODELS, selection=retrain_job.selection, run_config=split_ops)
        split = RetrainWorkspace(self.settings.training_dir).split()
        # the refit's day (the newest) is built again only if its snapshot does not reach the split's
        # end yet: `recs run` has just built it
        have_refit = split.refit.snapshot_day not in missing_fold_snapshots(
            self.settings.features_dir, split, FEATURE_TABLES
        )
        for day in split.snapshot_days():
            if not (have_refit and day == split.refit.snapshot_day):
                self.materialize("features", partition=day)
        return split

    @staticmethod
    def _model_ops(run_config: dict[str, Any] | None) -> dict[str, Any]:
        """The per-asset config of ``run_config``, refused if it names anything but model assets."""
        ops = dict((run_config or {}).get("ops", {}))
        unknown = set(ops) - {a.key.to_user_string() for a in model_assets}
        if unknown or set(run_config or {}) - {"ops"}:
            raise ValueError(f"run_config may only set the model assets' ops; unknown: {sorted(unknown)}")
        return ops

    def snapshot_days(self, count: int) -> list[str]:
        """The ``count`` days ending with the newest event's day, oldest first.

        Read from the ``events`` asset's latest materialisation, not from DuckDB: only assets in
        the pool open the DuckDB file.
        """
        if count < 1:
            raise ValueError(f"snapshots must be >= 1, got {count}")
        last = newest_event_day(self.instance)
        if last is None:
            raise RuntimeError("no events were ingested: nothing to build features from (check the quarantine table)")
        days = [(last - timedelta(days=i)).isoformat() for i in reversed(range(count))]
        require_days(self.instance, days)  # e.g. more snapshots than the data has days
        return days
