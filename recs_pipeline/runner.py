"""Run the pipeline's assets in process against a persistent Dagster instance.

Used by ``recs run`` (scripts, cron, benchmarks) and by the tests; the same runs appear in the
Dagster UI because they are recorded in the instance at ``Settings.dagster_home`` (``$DAGSTER_HOME``
or ``<home>/dagster``), which is opened explicitly: nothing here sets the environment.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg

from recs_pipeline.definitions import defs
from recs_pipeline.defs.ingest import newest_event_day
from recs_pipeline.defs.models import GROUP as MODELS
from recs_pipeline.defs.models import model_assets, retrain_job, temporal_split, train_job
from recs_pipeline.defs.resources import PipelineResource
from recs_pipeline.models.protocol import TemporalSplit
from recs_pipeline.models.workspace import RetrainWorkspace
from recs_pipeline.settings import DUCKDB_POOL, Settings

log = logging.getLogger(__name__)

INSTANCE_TEMPLATE = Path(__file__).with_name("dagster.yaml")


def open_instance(settings: Settings) -> dg.DagsterInstance:
    """The persistent Dagster instance at ``settings.dagster_home``, given the pool limits if it has no dagster.yaml.

    The ``duckdb`` pool's slots are created here, one process at a time (a lock file in the
    instance's folder). Dagster otherwise creates them lazily, at a run's first pooled step, and two
    runs starting together on a new instance could both create them (seen once: two runs, one
    DuckDB file lock conflict).
    """
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(INSTANCE_TEMPLATE, home / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(home))
    with open(home / ".pools.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        instance.event_log_storage.initialize_concurrency_limit_to_default(DUCKDB_POOL)
    return instance


class PipelineRunner:
    """Materialise groups of assets with the pipeline resource pointed at ``settings.home``."""

    def __init__(self, settings: Settings, instance: dg.DagsterInstance | None = None) -> None:
        self.settings = settings
        self.instance = instance if instance is not None else open_instance(settings)
        self.resources = {"pipeline": PipelineResource(home=str(settings.home))}
        self.assets = [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)]

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
        including a failed blocking check)."""
        return dg.materialize(
            self.assets,
            selection=selection or dg.AssetSelection.groups(group),
            partition_key=partition,
            resources=self.resources,
            instance=self.instance,
            run_config=run_config,
            tags={"recs/group": group},
            raise_on_error=raise_on_error,
        )

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
        raise RuntimeError(
            f"retraining failed in steps {sorted(failed)} (see the run {result.run_id} in the Dagster UI)"
        )

    def prepare_retrain(self, run_config: dict[str, Any] | None = None) -> TemporalSplit:
        """The retrain's first two steps: the split (``retrain_job``), then the features group for each
        fold's snapshot day (``features_job``); returns the split."""
        split_key = temporal_split.key.to_user_string()
        ops = self._model_ops(run_config)
        split_ops = {"ops": {split_key: ops[split_key]}} if split_key in ops else None
        self.materialize(MODELS, selection=retrain_job.selection, run_config=split_ops)
        split = RetrainWorkspace(self.settings.training_dir).split()
        for day in split.snapshot_days():
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
        return [(last - timedelta(days=i)).isoformat() for i in reversed(range(count))]
