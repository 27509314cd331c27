"""Exposure ingestion: the scoring service's served lists, exactly once per file and per request id,
every bad row quarantined with its reason, a crash mid-file losing and duplicating nothing."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from recs_pipeline.data import contract, landing
from recs_pipeline.warehouse import ingest

NOW = datetime(2026, 11, 1, tzinfo=UTC)
T0 = datetime(2026, 10, 1, tzinfo=UTC)


def exposure(request: str, user: str = "u1", n: int = 3, **over) -> dict:
    body = {
        "request_id": request,
        "user_id": user,
        "ts": (T0 + timedelta(minutes=1)).isoformat(),
        "model_version": "v0001",
        "experiment": None,
        "variant": None,
        "items": [{"item_id": f"i{p}", "position": p, "score": 1.0 / p, "source": "als"} for p in range(1, n + 1)],
    }
    return {**body, **over}


def land(landing_dir: Path, name: str, rows: list) -> Path:
    text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"
    with landing.landing_writer(landing_dir, "exposures", name) as tmp:
        tmp.write_text(text)
    return landing_dir / "exposures" / name


def counts(con) -> tuple:
    return con.execute(
        "SELECT (SELECT count(*) FROM exposures), (SELECT count(*) FROM exposure_items), "
        "(SELECT count(*) FROM ingest_ledger WHERE kind = 'exposures')"
    ).fetchone()


def test_exposures_load_with_their_items_once(settings, con):
    land(settings.landing_dir, "a.jsonl", [exposure("r1"), exposure("r2", user="u2", n=2, experiment="e", variant="b")])
    [outcome] = ingest.ingest_landed(con, settings.landing_dir, now=NOW, kinds=("exposures",))
    assert (outcome.status, outcome.rows_read, outcome.loaded, outcome.quarantined) == ("ingested", 2, 2, 0)
    assert counts(con) == (2, 5, 1)
    rows = con.execute(
        "SELECT request_id, user_id, model_version, experiment, variant, n_items FROM exposures ORDER BY 1"
    ).fetchall()
    assert rows == [("r1", "u1", "v0001", None, None, 3), ("r2", "u2", "v0001", "e", "b", 2)]
    items = con.execute(
        "SELECT position, item_id, score, source FROM exposure_items WHERE request_id = 'r1' ORDER BY 1"
    )
    assert items.fetchall() == [(1, "i1", 1.0, "als"), (2, "i2", 0.5, "als"), (3, "i3", 1 / 3, "als")]
    # the same file again, and a copy under another name: nothing more
    ingest.ingest_landed(con, settings.landing_dir, now=NOW, kinds=("exposures",))
    landing.land_file(settings.landing_dir / "exposures" / "a.jsonl", settings.landing_dir, "exposures", "copy.jsonl")
    [again, copy] = ingest.ingest_landed(con, settings.landing_dir, now=NOW, kinds=("exposures",))
    assert {again.status, copy.status} == {"already_ingested"}
    assert counts(con) == (2, 5, 1)


def test_a_shadow_list_keeps_the_request_it_shadows(settings, con):
    land(
        settings.landing_dir,
        "a.jsonl",
        [exposure("r1"), exposure("s1", experiment="c", variant="shadow", shadow_of="r1")],
    )
    [outcome] = ingest.ingest_landed(con, settings.landing_dir, now=NOW, kinds=("exposures",))
    assert (outcome.loaded, outcome.quarantined) == (2, 0)
    rows = con.execute("SELECT request_id, shadow_of, experiment FROM exposures ORDER BY 1").fetchall()
    assert rows == [("r1", None, None), ("s1", "r1", "c")]


def test_a_request_id_seen_before_is_a_counted_duplicate(settings, con):
    land(settings.landing_dir, "a.jsonl", [exposure("r1"), exposure("r1")])
    land(settings.landing_dir, "b.jsonl", [exposure("r1", n=5), exposure("r3")])
    first, second = ingest.ingest_landed(con, settings.landing_dir, now=NOW, kinds=("exposures",))
    assert (first.loaded, first.duplicates) == (1, 1)
    assert (second.loaded, second.duplicates) == (1, 1)
    assert counts(con)[:2] == (2, 6)  # r1 keeps its first list (3 items), r3 has 3


BAD = [
    ("not json", "not valid JSON"),
    (exposure("", user="u"), "missing request_id"),
    ({k: v for k, v in exposure("x1").items() if k != "user_id"}, "missing user_id"),
    (exposure("x2", ts=None), "missing ts"),
    (exposure("x3", model_version=""), "missing model_version"),
    ({k: v for k, v in exposure("x4").items() if k != "items"}, "missing items"),
    (exposure("x5", items=[]), "items is empty"),
    (exposure("x6", items={"item_id": "a"}), "wrong type: items"),
    (exposure("x7", items=[{"item_id": "a"}]), "bad item"),
    (exposure("x8", items=[{"item_id": "", "position": 1}]), "bad item"),
    (exposure("x9", items=[{"item_id": "a", "position": 0}]), "bad item"),
    (exposure("x10", items=[{"item_id": "a", "position": 1, "score": "high"}]), "bad item"),
    (exposure("x11", items=[{"item_id": "a", "position": 1}, {"item_id": "b", "position": 1}]), "repeat a position"),
    (exposure("x12", n=contract.MAX_EXPOSURE_ITEMS + 1), f"more than {contract.MAX_EXPOSURE_ITEMS} items"),
    (exposure("x13", experiment="e"), "experiment and variant must be given together"),
    (exposure("x14", request_id=7), "wrong type: request_id"),
    (exposure("x15", ts="yesterday"), "unparseable ts"),
    (exposure("x16", ts=(NOW + timedelta(days=3)).isoformat()), "far-future ts"),
    (exposure("x17", user="u" * 300), "id longer than"),
    (exposure("x18", shadow_of=5), "wrong type: shadow_of"),
    (exposure("x19", shadow_of=""), "shadow_of is empty"),
    (exposure("x20", shadow_of="x20"), "shadow_of names the list itself"),
    (exposure("x21", shadow_of="s" * 300), "id longer than"),
]


def test_every_bad_exposure_is_quarantined_with_its_reason(settings, con):
    land(settings.landing_dir, "bad.jsonl", [exposure("good"), *(row for row, _ in BAD)])
    [outcome] = ingest.ingest_landed(con, settings.landing_dir, now=NOW, kinds=("exposures",))
    assert (outcome.rows_read, outcome.loaded, outcome.quarantined) == (len(BAD) + 1, 1, len(BAD))
    found = [r[0] for r in con.execute("SELECT reason FROM quarantine ORDER BY row_no").fetchall()]
    assert len(found) == len(BAD)
    for (_, expected), reason in zip(BAD, found, strict=True):
        assert expected in reason, (expected, reason)
    assert counts(con)[:2] == (1, 3)


def test_a_crash_mid_file_loses_and_duplicates_nothing(settings, con, monkeypatch):
    land(settings.landing_dir, "a.jsonl", [exposure("r1"), exposure("r2")])
    original = ingest.run_sql

    def failing(c, name, **params):
        if name == "insert_exposures":  # after the items were inserted, before the exposures
            raise RuntimeError("killed mid-file")
        return original(c, name, **params)

    monkeypatch.setattr(ingest, "run_sql", failing)
    with pytest.raises(RuntimeError, match="killed"):
        ingest.ingest_landed(con, settings.landing_dir, now=NOW, kinds=("exposures",))
    assert counts(con) == (0, 0, 0)
    monkeypatch.setattr(ingest, "run_sql", original)
    [outcome] = ingest.ingest_landed(con, settings.landing_dir, now=NOW, kinds=("exposures",))
    assert outcome.loaded == 2 and counts(con) == (2, 6, 1)


def test_the_landing_sensor_watches_exposures_and_ingestion_reads_them(settings, con):
    land(settings.landing_dir, "a.jsonl", [exposure("r1")])  # the profile's shown items come from them
    assert [f.kind for f in landing.scan_landing(settings.landing_dir, landing.FEATURE_KINDS)] == ["exposures"]
    assert [f.kind for f in landing.scan_landing(settings.landing_dir)] == ["exposures"]
    [outcome] = ingest.ingest_landed(con, settings.landing_dir, now=NOW)  # every kind by default
    assert outcome.kind == "exposures" and outcome.loaded == 1


def test_events_may_carry_the_request_id_of_a_served_list(settings, con):
    rows = [
        {
            "event_id": "e1",
            "user_id": "u1",
            "item_id": "i1",
            "event_type": "view",
            "ts": T0.isoformat(),
            "request_id": "r1",
        },
        {"event_id": "e2", "user_id": "u1", "item_id": "i2", "event_type": "view", "ts": T0.isoformat()},
        {
            "event_id": "e3",
            "user_id": "u1",
            "item_id": "i3",
            "event_type": "view",
            "ts": T0.isoformat(),
            "request_id": 5,
        },
        {
            "event_id": "e4",
            "user_id": "u1",
            "item_id": "i4",
            "event_type": "view",
            "ts": T0.isoformat(),
            "request_id": "r" * 300,
        },
    ]
    with landing.landing_writer(settings.landing_dir, "events", "e.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    [outcome] = ingest.ingest_landed(con, settings.landing_dir, now=NOW, kinds=("events",))
    assert (outcome.loaded, outcome.quarantined) == (2, 2)
    stored = con.execute("SELECT event_id, request_id FROM events ORDER BY event_id").fetchall()
    assert stored == [("e1", "r1"), ("e2", None)]
    reasons = [r[0] for r in con.execute("SELECT reason FROM quarantine ORDER BY row_no").fetchall()]
    assert reasons == ["wrong type: request_id is UBIGINT", "id longer than 256 characters"]
    # the API's check agrees with ingestion
    assert ingest.check_events(rows, now=NOW) == [None, None, *reasons]
