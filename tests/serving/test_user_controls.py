"""User controls through the service: a request's exclude list and the user's hide events (negative
feedback), each dropped item's reason under ``explain`` and its count in ``/metrics``."""

import re
from datetime import UTC, datetime

import polars as pl
import pytest
from fastapi.testclient import TestClient
from homes import copy_home

from recs_pipeline.data.landing import landed_files
from recs_pipeline.serving.api import MAX_EXCLUDE
from recs_pipeline.serving.app import create_app
from recs_pipeline.settings import ServeSettings
from recs_pipeline.warehouse import db


def dropped_count(metrics: str, reason: str) -> float:
    found = re.search(rf'^recs_dropped_candidates_total{{reason="{reason}"}} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.integration
def test_exclude_and_hide_withhold_items_with_their_reasons(served_home, tmp_path):
    home = copy_home(served_home, tmp_path / "home")
    profiles = pl.read_parquet(home.features_dir / "user_profile.parquet")
    user = profiles.sort(pl.col("hist_item_ids").list.len(), descending=True)["user_id"][0]
    with TestClient(create_app(home, ServeSettings(online_timeout_ms=2000))) as client:

        def answer(**params) -> dict:
            r = client.get(f"/recommendations/{user}", params={"k": 10, "explain": "true", **params})
            assert r.status_code == 200, r.text
            return r.json()

        def ids(body: dict) -> list[str]:
            return [i["item_id"] for i in body["items"]]

        plain = ids(answer())
        assert len(plain) == 10

        # the request's exclude list: both gone, each listed with its reason, counted
        excluded = answer(exclude=plain[:2])
        assert not set(plain[:2]) & set(ids(excluded))
        assert ids(excluded)[:8] == plain[2:]  # the rest keep their order
        assert {"item_id": plain[0], "reason": "excluded"} in excluded["dropped"]
        assert {"item_id": plain[1], "reason": "excluded"} in excluded["dropped"]
        assert dropped_count(client.get("/metrics").text, "excluded") >= 2

        # a hide event: withheld from the next answer on, with the reason
        now = datetime.now(UTC).isoformat()
        hide = {"user_id": user, "item_id": plain[2], "event_type": "hide", "ts": now}
        posted = client.post("/events", json={"events": [hide]})
        assert posted.status_code == 202 and posted.json()["accepted"] == 1, posted.text
        hidden = answer()
        assert plain[2] not in ids(hidden)
        assert {"item_id": plain[2], "reason": "hidden"} in hidden["dropped"]
        assert dropped_count(client.get("/metrics").text, "hidden") >= 1
        # ...and never comes back through the popular top-up, even when everything else is excluded
        deep = ids(answer(k=100))
        assert plain[2] not in deep
        # a later view of the item lifts the hide
        view = {"user_id": user, "item_id": plain[2], "event_type": "view", "ts": datetime.now(UTC).isoformat()}
        assert client.post("/events", json={"events": [view]}).status_code == 202
        lifted = answer(k=100)
        assert {"item_id": plain[2], "reason": "hidden"} not in (lifted["dropped"] or [])

        # a hide of an item the model never saw is taken (it lands for ingestion) and changes nothing
        unknown = {"user_id": user, "item_id": "no-such-item", "event_type": "hide", "ts": now}
        assert client.post("/events", json={"events": [unknown]}).status_code == 202

        # too many excluded ids: 422 with the reason
        too_many = client.get(f"/recommendations/{user}", params={"exclude": [f"x{n}" for n in range(MAX_EXCLUDE + 1)]})
        assert too_many.status_code == 422
        assert too_many.json()["problems"][0]["where"] == "query.exclude"


def _exposed_users(home) -> list[str]:
    """Users in the home's exposures: landed files (JSON lines) and the warehouse's table."""
    users = [
        u for path in landed_files(home.landing_dir, "exposures") for u in pl.read_ndjson(path)["user_id"].to_list()
    ]
    with db.connect(home.duckdb_path, read_only=True) as con:
        users += [u for (u,) in con.execute("SELECT DISTINCT user_id FROM exposures").fetchall()]
    return users


def _refresh_from_landing(home) -> None:
    """What the daemon does with newly landed files: the landing sensor's run (ingest, then the
    affected users' features online), executed in process on ``home``."""
    import dagster as dg

    from recs_pipeline.definitions import defs
    from recs_pipeline.defs.realtime import landing_sensor
    from recs_pipeline.defs.resources import PipelineResource

    resources = {"pipeline": PipelineResource(home=str(home.home))}
    with dg.instance_for_test() as instance:
        result = landing_sensor(dg.build_sensor_context(instance=instance, cursor=None, resources=resources))
        assert isinstance(result, dg.SensorResult) and result.run_requests
        for request in result.run_requests:
            run = defs.resolve_job_def("freshness_job").execute_in_process(
                run_config=request.run_config, instance=instance, tags=request.tags, resources=resources
            )
            assert run.success


@pytest.mark.integration
def test_rotation_leaves_out_what_was_shown_repeatedly_once_the_exposures_are_online(
    served_home, tmp_path, monkeypatch
):
    home = copy_home(served_home, tmp_path / "home")
    monkeypatch.setenv("RECS_HOME", str(home.home))
    # a user nothing else has been shown to: other test files request the shared served home's busiest
    # users, and their exposures (landed or ingested) would count towards this test's rotation
    shown_before = set(_exposed_users(home))
    profiles = pl.read_parquet(home.features_dir / "user_profile.parquet").filter(
        ~pl.col("user_id").is_in(list(shown_before))
    )
    user = profiles.sort([pl.col("hist_item_ids").list.len(), "user_id"], descending=[True, False])["user_id"][0]
    serve = ServeSettings(online_timeout_ms=2000, exposure_flush_seconds=0.2)

    def answer(client: TestClient, **params) -> dict:
        r = client.get(f"/recommendations/{user}", params={"k": 5, "explain": "true", **params})
        assert r.status_code == 200, r.text
        return r.json()

    with TestClient(create_app(home, serve)) as client:
        shown = [i["item_id"] for i in answer(client)["items"]]
        for _ in range(2):
            answer(client)
        # nothing online about these answers yet: rotation has nothing to go by
        assert [i["item_id"] for i in answer(client, rotate=3)["items"]] == shown
    # the app's exit landed its queued exposures; the sensor's run puts them in the user's profile
    _refresh_from_landing(home)
    with TestClient(create_app(home, serve)) as client:
        rotated = answer(client, rotate=4)  # shown 4 times by now
        assert not set(shown) & {i["item_id"] for i in rotated["items"]}
        for item in shown:
            assert {"item_id": item, "reason": "shown_recently"} in rotated["dropped"]
        # not shown 5 times: nothing rotated, the same list as without rotation
        kept = answer(client, rotate=5)
        assert [i["item_id"] for i in kept["items"]] == [i["item_id"] for i in answer(client, rotate=0)["items"]]
        assert not [d for d in kept["dropped"] if d["reason"] == "shown_recently"]
        assert 'recs_dropped_candidates_total{reason="shown_recently"}' in client.get("/metrics").text
        # an event with a shown item brings it back at once (the live session)
        view = {"user_id": user, "item_id": shown[0], "event_type": "view", "ts": datetime.now(UTC).isoformat()}
        assert client.post("/events", json={"events": [view]}).status_code == 202
        back = answer(client, rotate=4)
        assert {"item_id": shown[0], "reason": "shown_recently"} not in back["dropped"]
