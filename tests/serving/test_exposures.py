"""The exposure log: every answered list is landed for ingestion, never at a request's expense."""

import json
import re
import threading
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from homes import copy_home

from recs_pipeline.data import landing
from recs_pipeline.serving.app import create_app
from recs_pipeline.serving.exposures import ExposureLog, exposure_record, new_request_id
from recs_pipeline.settings import ServeSettings
from recs_pipeline.warehouse import db, ingest

SERVED = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
ITEMS = [{"item_id": "a", "score": 0.9, "source": "als"}, {"item_id": "b", "score": 0.4, "source": "recent"}]


def record(request_id: str | None = None) -> dict:
    return exposure_record(
        request_id=request_id or new_request_id(),
        user_id="u1",
        served_at=SERVED,
        model_version="v0001",
        items=ITEMS,
    )


class Counts:
    def __init__(self) -> None:
        self.by: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, outcome: str, n: int) -> None:
        with self.lock:
            self.by[outcome] = self.by.get(outcome, 0) + n


def landed_rows(landing_dir) -> list[dict]:
    return [json.loads(line) for path in landing.landed_files(landing_dir, "exposures") for line in path.open()]


def test_queued_exposures_are_landed_in_files_ingestion_loads(settings):
    counts = Counts()
    exposures = ExposureLog(settings.landing_dir, flush_seconds=60, batch=3, count=counts)
    ids = [new_request_id() for _ in range(7)]
    for request_id in ids:
        assert exposures.log(record(request_id))
    exposures.close()  # lands what is queued
    assert counts.by == {"logged": 7, "landed": 7}
    assert len(landing.landed_files(settings.landing_dir, "exposures")) == 3  # batches of at most 3
    rows = landed_rows(settings.landing_dir)
    assert sorted(r["request_id"] for r in rows) == sorted(ids)
    assert rows[0]["items"] == [
        {"item_id": "a", "position": 1, "score": 0.9, "source": "als"},
        {"item_id": "b", "position": 2, "score": 0.4, "source": "recent"},
    ]
    with db.connect(settings.duckdb_path) as con:
        outcomes = ingest.ingest_landed(con, settings.landing_dir, now=datetime.now(UTC), kinds=("exposures",))
        assert sum(o.loaded for o in outcomes) == 7 and sum(o.quarantined for o in outcomes) == 0
        assert con.execute("SELECT count(*) FROM exposure_items").fetchone() == (14,)


def test_a_full_queue_drops_and_counts_instead_of_waiting(settings):
    counts = Counts()
    exposures = ExposureLog(settings.landing_dir, capacity=2, flush_seconds=60, batch=100, count=counts)
    results = [exposures.log(record()) for _ in range(5)]
    assert results == [True, True, False, False, False]
    exposures.close()
    assert counts.by == {"logged": 2, "dropped": 3, "landed": 2}


def test_a_landing_failure_is_counted_and_does_not_stop_the_log(settings, tmp_path):
    counts = Counts()
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the landing zone should be")
    exposures = ExposureLog(blocked, flush_seconds=60, count=counts)
    assert exposures.log(record())
    assert exposures.flush() == 0
    assert exposures.log(record())  # still taking exposures
    exposures.close()
    assert counts.by == {"logged": 2, "dropped": 2}


def test_the_background_thread_lands_without_being_asked(settings):
    exposures = ExposureLog(settings.landing_dir, flush_seconds=0.05)
    exposures.log(record("r-timer"))
    for _ in range(100):
        if landed_rows(settings.landing_dir):
            break
        threading.Event().wait(0.05)
    assert [r["request_id"] for r in landed_rows(settings.landing_dir)] == ["r-timer"]
    exposures.close()


def test_a_bad_configuration_is_refused(settings):
    with pytest.raises(ValueError, match="capacity"):
        ExposureLog(settings.landing_dir, capacity=0)


def logged(metrics: str) -> float:
    found = re.search(r'^recs_exposures_total\{outcome="logged"\} ([0-9.e+]+)$', metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.integration
def test_every_answer_has_a_request_id_and_its_exposure_is_landed(served_home, tmp_path):
    home = copy_home(served_home, tmp_path / "home")
    for path in landing.landed_files(home.landing_dir, "exposures"):
        path.unlink()
    app = create_app(home, ServeSettings(online_timeout_ms=2000, exposure_flush_seconds=60))
    with TestClient(app) as client:
        before = logged(client.get("/metrics").text)  # apps of one process share metric values
        answers = [client.get(f"/recommendations/user-{i}", params={"k": 5}).json() for i in range(3)]
        after = logged(client.get("/metrics").text)
    assert len({a["request_id"] for a in answers}) == 3
    assert after - before == 3
    rows = {r["request_id"]: r for r in landed_rows(home.landing_dir)}  # landed at shutdown
    assert set(rows) == {a["request_id"] for a in answers}
    for answer in answers:
        row = rows[answer["request_id"]]
        assert row["user_id"] == answer["user_id"] and row["model_version"] == answer["model_version"]
        assert [(i["item_id"], i["position"], i["score"], i["source"]) for i in row["items"]] == [
            (item["item_id"], p, item["score"], item["source"]) for p, item in enumerate(answer["items"], start=1)
        ]


@pytest.mark.integration
def test_no_exposures_when_the_log_is_off(served_home, tmp_path):
    home = copy_home(served_home, tmp_path / "home")
    before = len(landing.landed_files(home.landing_dir, "exposures"))
    app = create_app(home, ServeSettings(online_timeout_ms=2000, exposure_log=False))
    with TestClient(app) as client:
        assert client.get("/recommendations/someone", params={"k": 3}).json()["request_id"]
    assert len(landing.landed_files(home.landing_dir, "exposures")) == before
