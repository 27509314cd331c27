"""End to end through the real pieces: the scoring service over HTTP (uvicorn on loopback), the
landing zone, the landing sensor and its run on a Dagster instance in a temp dir, DuckDB, Feast's
SQLite online store and the champion model.

A brand-new user posts events; the next recommendation is personal at once (session push); the
sensor's run ingests the landed file and puts the user's aggregate features online; an item the
user buys disappears from their recommendations, before and after the sensor's run.
"""

import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import httpx
import polars as pl
import pytest
import uvicorn

from recs_pipeline.definitions import defs
from recs_pipeline.defs.realtime import landing_sensor
from recs_pipeline.defs.resources import PipelineResource
from recs_pipeline.feast import feast_store
from recs_pipeline.models.registry import ModelRegistry
from recs_pipeline.serving.app import create_app
from recs_pipeline.settings import ServeSettings

pytestmark = pytest.mark.integration  # a uvicorn server on the served home

USER = "e2e-new-user"


@pytest.fixture
def service(served_home):
    """The service on a free loopback port, in a real uvicorn server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # no exposure log: its files (one per flush) would be new landed files for the sensor at any moment,
    # and this test counts the sensor's files (exposures reaching the sensor: tests/serving/test_user_controls.py)
    app = create_app(served_home, ServeSettings(online_timeout_ms=2000, reload_seconds=60, exposure_log=False))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "service did not start"
        time.sleep(0.1)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield client
    server.should_exit = True
    thread.join(timeout=30)


def _events(*rows: tuple[str, str, float]) -> dict:
    now = datetime.now(UTC)
    return {
        "events": [
            {"user_id": USER, "item_id": item, "event_type": etype, "ts": (now - timedelta(seconds=ago)).isoformat()}
            for item, etype, ago in rows
        ]
    }


def _online_user_features(settings) -> dict:
    store = feast_store.open_store(settings)
    return store.get_online_features(
        features=["user_features:views_30d", "user_features:purchases_30d", "user_profile:hist_item_ids"],
        entity_rows=[{"user_id": USER}],
    ).to_dict()


def _sensor_run(instance, settings, cursor):
    """Evaluate the landing sensor, then execute the run it requests (as the daemon would)."""
    resources = {"pipeline": PipelineResource(home=str(settings.home))}
    result = landing_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))
    assert isinstance(result, dg.SensorResult) and len(result.run_requests) == 1
    request = result.run_requests[0]
    run = defs.resolve_job_def("freshness_job").execute_in_process(
        run_config=request.run_config, instance=instance, tags=request.tags, resources=resources
    )
    assert run.success
    return run, result.cursor


def _wait_landed(home, name: str) -> None:
    """Until the worker's journal ``name`` has landed (within RECS_SERVE_COLLECTOR_FLUSH_SECONDS)."""
    landed = home.landing_dir / "events" / name
    deadline = time.monotonic() + ServeSettings().collector_flush_seconds + 10
    while not landed.exists():
        assert time.monotonic() < deadline, f"{name} did not land"
        time.sleep(0.1)


def _refresh_metadata(run) -> dict:
    events = run.get_asset_materialization_events()
    return next(e for e in events if e.asset_key == dg.AssetKey("online_refresh")).materialization.metadata


def test_posted_events_reach_recommendations_and_the_sensor_refreshes_aggregates(service, served_home, monkeypatch):
    monkeypatch.setenv("RECS_HOME", str(served_home.home))
    champion = ModelRegistry(served_home.models_dir).champion()
    neighbours = pl.read_parquet(champion.path / "covis" / "covis.parquet")
    anchor = neighbours.group_by("item_id").len().sort("len", descending=True)["item_id"][0]

    # 1. unknown user: popular items, flagged; nothing online
    cold = service.get(f"/recommendations/{USER}").json()
    assert cold["fallback_reasons"] == ["no_personal_signal"]
    assert _online_user_features(served_home)["views_30d"] == [None]

    # 2. post a session: the very next answer is personal (session pushed before the 202)
    posted = service.post("/events", json=_events((anchor, "view", 120), (anchor, "add_to_cart", 60)))
    assert posted.status_code == 202 and posted.json()["sessions_pushed"] == 1
    warm = service.get(f"/recommendations/{USER}", params={"k": 50}).json()
    assert "no_personal_signal" not in warm["fallback_reasons"]
    assert any(i["reason"] == f"viewed together with {anchor}" for i in warm["items"])
    assert {"covis", "als"} & {s for i in warm["items"] for s in i["sources"]}

    # 3. the sensor sees the landed file; its run ingests it and puts the user's aggregates online
    _wait_landed(served_home, posted.json()["landed_file"])
    with dg.instance_for_test() as instance:
        run, cursor = _sensor_run(instance, served_home, cursor=None)
        meta = _refresh_metadata(run)
        assert meta["affected_users"].value >= 1
        # the first batch holds every file landed so far (some long ago): freshness counts from the oldest
        assert meta["freshness_seconds"].value >= 0
        online = _online_user_features(served_home)
        assert online["views_30d"] == [1] and online["purchases_30d"] == [0]
        assert online["hist_item_ids"] == [[anchor]]
        # nothing new: the sensor skips
        again = landing_sensor(
            dg.build_sensor_context(
                instance=instance, cursor=cursor, resources={"pipeline": PipelineResource(home=str(served_home.home))}
            )
        )
        assert isinstance(again, dg.SkipReason)

        # 4. still personal after the refresh (profile + session, counted once)
        after_refresh = service.get(f"/recommendations/{USER}", params={"k": 50}).json()
        assert "no_personal_signal" not in after_refresh["fallback_reasons"]
        assert after_refresh["fallback"] is False

        # 5. buy the top item: it disappears at once, and stays gone after the sensor's run
        bought = after_refresh["items"][0]["item_id"]
        purchase = service.post("/events", json=_events((bought, "purchase", 1)))
        assert purchase.status_code == 202
        assert bought not in {i["item_id"] for i in service.get(f"/recommendations/{USER}").json()["items"]}
        _wait_landed(served_home, purchase.json()["landed_file"])
        run, _ = _sensor_run(instance, served_home, cursor=cursor)
        # this batch is the one file posted a moment ago
        assert _refresh_metadata(run)["files"].value == 1
        assert 0 <= _refresh_metadata(run)["freshness_seconds"].value < 120
        assert _online_user_features(served_home)["purchases_30d"] == [1]
        final = service.get(f"/recommendations/{USER}", params={"k": 50}).json()
        assert bought not in {i["item_id"] for i in final["items"]}
