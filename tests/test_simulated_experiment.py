"""A simulated experiment through the real service: shoppers with the generator's tastes answer the
lists; the analysis must find that the ranker beats popularity (right sign, interval excluding zero),
and an A/A pair (the control against an identical variant) must not find a difference. The champion
shadows every answer meanwhile: where the ranker served, its shadow lists are the served ones."""

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from fastapi.testclient import TestClient
from homes import copy_home

from recs_pipeline.data import landing
from recs_pipeline.models.registry import ModelRegistry
from recs_pipeline.runner import PipelineRunner
from recs_pipeline.serving.app import create_app
from recs_pipeline.settings import ServeSettings
from recs_pipeline.simulation import ShopperModel, simulate

pytestmark = pytest.mark.integration
USERS = 150
HOLD_WAREHOUSE = (
    "import sys, time, duckdb; c = duckdb.connect(sys.argv[1]); print('holding', flush=True); time.sleep(60)"
)
REQUESTS = 2


def run_experiment(served_home, tmp_path, name: str, variants: list[dict]) -> tuple[dict, dict]:
    home = copy_home(served_home, tmp_path / name)
    for path in landing.landed_files(home.landing_dir, "exposures"):  # other tests' lists, landed in the session home
        path.unlink()
    now = datetime.now(UTC)
    spec = {
        "name": name,
        "start": (now - timedelta(hours=1)).isoformat(),
        "end": (now + timedelta(hours=1)).isoformat(),
    }
    champion = ModelRegistry(home.models_dir).champion().version
    shadow = {**spec, "name": "champion-shadow", "model_version": champion, "share": 1.0}
    home.experiments_file.write_text(json.dumps({"experiments": [{**spec, "variants": variants}], "shadow": shadow}))
    # a pipeline run holding the warehouse (another process with DuckDB's write lock) does not stop it
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WAREHOUSE, str(home.duckdb_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        model = ShopperModel.from_features(home.features_dir)
    finally:
        holder.kill()
        holder.wait()
    users = sorted(model.tastes)[:USERS]
    app = create_app(home, ServeSettings(online_timeout_ms=2000, exposure_flush_seconds=60))
    with TestClient(app) as client:
        done = simulate(client, "", model, users, requests_per_user=REQUESTS, seed=7)
    assert done.requests == USERS * REQUESTS and done.events_posted > 0
    runner = PipelineRunner(home, instance=dg.DagsterInstance.ephemeral())
    runner.materialize("ingest")  # the exposures (landed at shutdown) and the posted events
    config = {"ops": {"experiment_metrics": {"config": {"min_exposures": 80, "n_bootstrap": 500}}}}
    runner.materialize("experiments", run_config=config)
    report = json.loads((home.reports_dir / "experiments.json").read_text())
    result = report["experiments"][name]
    assert sum(v["exposures"] for v in result["variants"].values()) == USERS * REQUESTS
    shadows = json.loads((home.reports_dir / "shadow.json").read_text())["shadows"]["champion-shadow"]
    return result, shadows


def test_the_ranker_beats_popularity_and_an_a_a_pair_finds_nothing(served_home, tmp_path):
    """One experiment of three equal arms: the control and an identical copy of it (the A/A pair) and
    popularity (the A/B pair), each judged against the control on the same traffic."""
    result, shadows = run_experiment(
        served_home,
        tmp_path,
        "ranker-vs-popular",
        [
            {"name": "ranked", "share": 1 / 3, "control": True},
            {"name": "ranked-again", "share": 1 / 3},
            {"name": "popular", "share": 1 / 3, "strategy": "popular"},
        ],
    )
    assert result["ready"]
    diff = result["differences"]["popular"]
    assert diff["verdict"] == "worse" and diff["ctr"]["ci_high"] < 0, diff["ctr"]
    assert result["variants"]["ranked"]["ctr"]["value"] > result["variants"]["popular"]["ctr"]["value"]
    same = result["differences"]["ranked-again"]
    assert same["verdict"] == "no detectable difference" and same["ctr"]["ci_low"] < 0 < same["ctr"]["ci_high"]
    # the shadow (the champion, unserved) against each arm's served lists
    assert sum(entry["answers"] for entry in shadows.values()) == USERS * REQUESTS
    for arm in ("ranked", "ranked-again"):
        entry = shadows[f"ranker-vs-popular/{arm}"]
        assert entry["overlap"] == 1.0 and entry["ctr"]["served"] == entry["ctr"]["shadow"] > 0
        assert entry["ctr"]["difference"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert shadows["ranker-vs-popular/popular"]["overlap"] < 0.5
