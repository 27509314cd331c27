"""The live catalog: landed item updates applied to the served availability, newest first, with
ingestion's rules; POST /items's landing of a batch."""

import json
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient
from homes import copy_home

from recs_pipeline.data import landing
from recs_pipeline.data.contract import ITEM_SCHEMA
from recs_pipeline.models.retrieval import ItemIndex
from recs_pipeline.runner import PipelineRunner
from recs_pipeline.serving.app import create_app
from recs_pipeline.serving.catalog import LiveCatalog, land_items
from recs_pipeline.settings import ServeSettings
from recs_pipeline.warehouse import db

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
INDEX = ItemIndex([f"i{k}" for k in range(5)])
BASE = np.ones(len(INDEX), dtype=bool)


def item(item_id: str, available: bool, minutes: float, category: str = "c1") -> dict:
    return {
        "item_id": item_id,
        "category_id": category,
        "price": 5.0,
        "available": available,
        "updated_at": (AS_OF + timedelta(minutes=minutes)).isoformat(),
    }


def land_jsonl(landing_dir, name: str, rows: list) -> None:
    with landing.landing_writer(landing_dir, "items", name) as tmp:
        tmp.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def mask(catalog: LiveCatalog, version: str = "v1") -> list[bool]:
    return catalog.available(version, INDEX.positions, BASE, AS_OF.timestamp()).tolist()


def test_updates_newer_than_the_snapshot_apply_and_the_newest_wins(tmp_path):
    catalog = LiveCatalog(tmp_path)  # no items folder yet
    assert mask(catalog) == [True] * 5 and catalog.refresh() is False
    land_jsonl(tmp_path, "a.jsonl", [item("i1", False, 10), item("i2", False, -10), item("i3", False, 10)])
    assert catalog.refresh() is True
    # i2's update is older than the snapshot (the snapshot already knows it); unknown ids are left out
    assert mask(catalog) == [True, False, True, False, True]
    frame = pl.DataFrame(
        [
            ("i1", "c1", 5.0, True, AS_OF + timedelta(minutes=20)),  # newer: back in stock
            ("i3", "c1", 5.0, True, AS_OF + timedelta(minutes=5)),  # older than the applied one: ignored
            ("i9", "c1", 5.0, False, AS_OF + timedelta(minutes=5)),  # not in the model's index
        ],
        schema=ITEM_SCHEMA,
        orient="row",
    )
    landing.land_frame(frame, tmp_path, "items", "b.parquet")
    assert catalog.refresh() is True and catalog.refresh() is False
    assert mask(catalog) == [True, True, True, False, True]
    assert catalog.newest_update("i3") == int((AS_OF + timedelta(minutes=10)).timestamp()) * 1_000_000
    assert catalog.newest_update("i4") is None
    # a bundle whose snapshot is newer than every update: nothing of them applies
    late = catalog.available("v2", INDEX.positions, BASE, (AS_OF + timedelta(days=1)).timestamp())
    assert late.tolist() == [True] * 5


def test_an_update_landed_after_the_model_was_built_applies_whatever_its_time(tmp_path):
    """A snapshot's time follows the events (one stamped ahead pushes it forward): a file landed after
    the bundle was built is news to it, even when its rows are stamped before the snapshot."""
    catalog = LiveCatalog(tmp_path)
    built = time.time() - 5
    land_jsonl(tmp_path, "late.jsonl", [item("i2", False, -10)])
    catalog.refresh()
    as_of = AS_OF.timestamp()
    assert catalog.available("v1", INDEX.positions, BASE, as_of, built).tolist() == [True, True, False, True, True]
    # a bundle built after the file landed had the chance to hold it: the snapshot decides
    later = catalog.available("v2", INDEX.positions, BASE, as_of, time.time() + 5)
    assert later.tolist() == [True] * 5


def test_rows_ingestion_would_quarantine_are_not_applied_and_an_unreadable_file_is_reported(tmp_path):
    catalog = LiveCatalog(tmp_path)
    bad = [
        {**item("i1", False, 10), "available": "maybe"},
        {**item("i2", False, 10), "updated_at": "yesterday"},
        {k: v for k, v in item("i3", False, 10).items() if k != "category_id"},
        "not json",
        item("i4", False, 10),
    ]
    land_jsonl(tmp_path, "mixed.jsonl", bad)
    (tmp_path / "items" / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    (tmp_path / "items" / "notes.txt").write_text("hello")
    catalog.refresh()
    assert mask(catalog) == [True, True, True, True, False]
    assert set(catalog.errors) == {"broken.parquet", "notes.txt"}


def test_a_file_renamed_in_right_after_a_look_is_seen_at_the_next(tmp_path):
    """The look happens between the temporary file's creation and its rename, usually within one tick
    of the folder's modification time: the rename may leave that time unchanged."""
    catalog = LiveCatalog(tmp_path)
    for k in range(5):
        with landing.landing_writer(tmp_path, "items", f"f{k}.jsonl") as tmp:
            tmp.write_text(json.dumps(item(f"i{k}", False, 10 + k)) + "\n")
            assert catalog.refresh() is False  # only the hidden temporary file so far
        assert catalog.refresh() is True and mask(catalog)[k] is False, k


def test_land_items_lands_the_valid_updates_as_posted_and_lists_the_others(tmp_path):
    now = datetime.now(UTC)
    rows = [
        item("i1", False, 10),
        {**item("i2", True, 10), "price": -1},
        {**item("i5", True, 10), "price": "inf"},
        {"item_id": "i3", "category_id": 7, "available": "false", "updated_at": now.isoformat()},
        {**item("i4", True, 10), "updated_at": (now + timedelta(days=3)).isoformat()},
    ]
    landed = land_items(rows, tmp_path, now=now)
    assert [i for i, _ in landed.rejected] == [1, 2, 4]
    assert "bad price" in landed.rejected[0][1] and "bad price: inf" in landed.rejected[1][1]
    assert "far-future" in landed.rejected[2][1]
    assert [(i, item_id) for i, item_id, _ in landed.accepted] == [(0, "i1"), (3, "i3")]
    assert landed.accepted[1][2] == int(now.timestamp()) * 1_000_000 + now.microsecond
    [path] = landing.landed_files(tmp_path, "items")
    assert path.name == landed.landed_file
    catalog = LiveCatalog(tmp_path)
    assert mask(catalog) == [True, False, True, False, True]  # "false" as text, as ingestion reads it
    nothing = land_items([{"item_id": "x"}], tmp_path, now=now)
    assert nothing.landed_file is None and nothing.rejected[0][1] == "missing category_id"


def _top_items(client, user: str, k: int = 20) -> list[str]:
    answer = client.get(f"/recommendations/{user}", params={"k": k})
    assert answer.status_code == 200, answer.text
    return [i["item_id"] for i in answer.json()["items"]]


@pytest.mark.integration
def test_an_item_marked_unavailable_is_not_served_once_the_update_is_acknowledged(served_home, tmp_path):
    home = copy_home(served_home, tmp_path / "home")
    profiles = pl.read_parquet(home.features_dir / "user_profile.parquet")
    user = profiles.sort(pl.col("hist_item_ids").list.len(), descending=True)["user_id"][0]
    now = datetime.now(UTC)
    app = create_app(home, ServeSettings(online_timeout_ms=2000))
    with TestClient(app) as client:
        shown = _top_items(client, user)
        gone = shown[:3]
        body = {
            "items": [
                *({"item_id": i, "category_id": "c", "available": False, "updated_at": now.isoformat()} for i in gone),
                {"item_id": "never-seen", "category_id": "c", "available": True, "updated_at": now.isoformat()},
                {"item_id": shown[5], "category_id": "c", "available": False, "updated_at": "2000-01-01T00:00:00Z"},
                {"item_id": shown[6], "available": False, "updated_at": now.isoformat()},
            ]
        }
        answer = client.post("/items", json=body)
        assert answer.status_code == 202, answer.text
        result = answer.json()
        # the update stamped 2000 is older than the catalog row landed with the data: the newest wins
        assert (result["accepted"], result["live"]) == (5, 3)
        assert result["rejected"] == [{"index": 5, "reason": "missing category_id"}]
        reasons = {n["item_id"]: n["reason"] for n in result["not_live"]}
        assert "never seen" in reasons["never-seen"] and "a newer update" in reasons[shown[5]]
        after = _top_items(client, user)
        assert not set(gone) & set(after) and shown[5] in after and len(after) == 20
        # an item file landed by a producer (not through the API) counts from the next request on
        frame = pl.DataFrame([(after[0], "c", None, False, datetime.now(UTC))], schema=ITEM_SCHEMA, orient="row")
        landing.land_frame(frame, home.landing_dir, "items", "producer.parquet")
        assert after[0] not in _top_items(client, user)
        # back in stock
        back = {
            "items": [
                {
                    "item_id": gone[0],
                    "category_id": "c",
                    "available": True,
                    "updated_at": (now + timedelta(seconds=1)).isoformat(),
                }
            ]
        }
        restocked = client.post("/items", json=back).json()
        assert restocked["live"] == 1, restocked["not_live"]
        assert gone[0] in _top_items(client, user, k=40)
        refused = client.post("/items", json={"items": [{"item_id": "x"}]})
        assert refused.status_code == 422 and refused.json()["problems"][0]["where"] == "body.items.0"
    # ingestion loads what the API landed, with the same rules
    runner = PipelineRunner(home, instance=dg.DagsterInstance.ephemeral())
    runner.materialize("ingest")
    with db.connect(home.duckdb_path) as con:
        stored = dict(
            con.execute(
                "SELECT item_id, available FROM items WHERE item_id IN (SELECT unnest(?))", [[*gone, "never-seen"]]
            ).fetchall()
        )
    assert stored == {gone[0]: True, gone[1]: False, gone[2]: False, "never-seen": True}
