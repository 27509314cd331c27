"""The Dagster project: what ``recs_pipeline.defs`` registers, and that ``dg`` loads it from the repo root.

``recs_pipeline/definitions.py`` lists nothing by hand: Dagster's ``load_from_defs_folder`` finds every
module-level asset, check, job, schedule and sensor in ``defs/``. The snapshot below is what it must
find; a definition added, renamed or dropped changes it on purpose, here, in review.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recs_pipeline.definitions import defs

REPO_ROOT = Path(__file__).resolve().parents[1]
DG = Path(sys.executable).with_name("dg")

EXPECTED = {
    "assets": {
        "candidate_sources": "models",
        "candidates": "models",
        "catalog_items": "ingest",
        "champion": "models",
        "evaluation": "models",
        "events": "ingest",
        "experiment_metrics": "experiments",
        "exposures": "ingest",
        "feast_registry": "feast",
        "interactions": "features",
        "item_features": "features",
        "model_version": "models",
        "online_features": "feast",
        "online_refresh": "realtime",
        "ranker": "models",
        "ranking_dataset": "models",
        "retention": "privacy",
        "shadow_comparison": "experiments",
        "temporal_split": "models",
        "user_category_features": "features",
        "user_features": "features",
        "user_profile": "features",
    },
    "checks": [
        "events:event_id_unique",
        "events:ledger_conserves_rows",
        "events:quarantine_rate",
        "experiment_metrics:guardrail",
        "exposures:ledger_conserves_rows",
        "interactions:fresh",
        "interactions:keys_unique",
        "interactions:null_rates",
        "item_features:fresh",
        "item_features:keys_unique",
        "item_features:null_rates",
        "model_version:beats_champion_and_baselines",
        "online_features:online_matches_duckdb",
        "online_refresh:freshness_within_target",
        "user_category_features:fresh",
        "user_category_features:keys_unique",
        "user_category_features:null_rates",
        "user_features:fresh",
        "user_features:keys_unique",
        "user_features:null_rates",
        "user_profile:fresh",
        "user_profile:keys_unique",
        "user_profile:null_rates",
    ],
    "jobs": [
        "features_job",
        "freshness_job",
        "pipeline_job",
        "retention_job",
        "retrain_job",
        "rollback_job",
        "train_job",
    ],
    "schedules": {
        "daily_retention": "retention_job",
        "nightly_retrain": "retrain_job",
        "periodic_materialization": "pipeline_job",
    },
    "sensors": ["landing_sensor", "retrain_chain"],
    "resources": ["pipeline"],
}


def _snapshot() -> dict:
    graph = defs.resolve_asset_graph()
    repo = defs.get_repository_def()
    return {
        "assets": {k.to_user_string(): graph.get(k).group_name for k in sorted(graph.get_all_asset_keys())},
        "checks": sorted(f"{c.asset_key.to_user_string()}:{c.name}" for c in graph.asset_check_keys),
        "jobs": sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")),
        "schedules": {s.name: s.job_name for s in repo.schedule_defs},
        "sensors": sorted(s.name for s in repo.sensor_defs),
        "resources": sorted(defs.resources or {}),
    }


def test_defs_folder_registers_the_expected_graph():
    assert _snapshot() == EXPECTED


def test_every_asset_and_job_is_bound_to_the_pipeline_resource():
    repo = defs.get_repository_def()
    for job in repo.get_all_jobs():
        assert "pipeline" in job.resource_defs, job.name


def test_every_job_runs_in_process():
    """One process per run, whether launched by the daemon, the UI or ``recs run`` (not one per step)."""
    repo = defs.get_repository_def()
    assert {job.name: job.executor_def.name for job in repo.get_all_jobs()} == {
        job.name: "in_process" for job in repo.get_all_jobs()
    }
    assert "__ASSET_JOB" in {job.name for job in repo.get_all_jobs()}  # launches from the asset graph too


@pytest.mark.integration
def test_the_code_location_does_not_import_the_heavy_libraries():
    """``import recs_pipeline.definitions`` is what the webserver, the daemon and every run do first: Feast,
    LightGBM, pandas and pyarrow (about 6 CPU-s together) are imported by the steps that use them."""
    heavy = ("feast", "lightgbm", "pandas", "pyarrow", "sklearn", "matplotlib", "lleaves")
    code = f"import sys, recs_pipeline.definitions; print(sorted(set({heavy!r}) & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "[]"


def _dg(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir(exist_ok=True)
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "RECS_HOME": str(tmp_path / "home")}
    return subprocess.run(
        [str(DG), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.integration
def test_dg_check_defs_passes_from_the_repo_root(tmp_path):
    proc = _dg("check", "defs", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All definitions loaded successfully" in proc.stdout + proc.stderr


@pytest.mark.integration
def test_dg_list_defs_lists_the_expected_definitions(tmp_path):
    proc = _dg("list", "defs", "--json", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = json.loads(proc.stdout)
    assert {a["asset_key"]: a["group_name"] for a in listed["assets"]} == EXPECTED["assets"]
    assert sorted(f"{c['asset_key']}:{c['name']}" for c in listed["asset_checks"]) == EXPECTED["checks"]
    assert sorted(j["name"] for j in listed["jobs"] if not j["name"].startswith("__")) == EXPECTED["jobs"]
    assert sorted(s["name"] for s in listed["schedules"]) == sorted(EXPECTED["schedules"])
    assert sorted(s["name"] for s in listed["sensors"]) == EXPECTED["sensors"]
    assert sorted(r["name"] for r in listed["resources"]) == EXPECTED["resources"]
