"""Pseudonymous user ids (issue 14 item 3): with ``RECS_PSEUDONYM_KEY`` no store outside the landing zone,
no log line and no model holds a raw user id, while serving, sessions and erasure keep working by raw id.

Unit tests of the mapping and of ingestion's use of it first; then one small home built through the
pipeline with the key on (module-scoped, the key set for the whole module), served through the real
app, and erased by raw id.
"""

import json
import logging
from datetime import UTC, datetime

import duckdb
import polars as pl
import pytest
from fastapi.testclient import TestClient
from homes import LOCATION_VARIABLES, SERVED_WEIGHTS, build_trained_home
from privacy_search import id_pattern, places_holding

from recs_pipeline.data import landing
from recs_pipeline.data.synthetic import SyntheticConfig
from recs_pipeline.feast.feast_store import open_store
from recs_pipeline.models.registry import ModelRegistry
from recs_pipeline.privacy import pseudonyms
from recs_pipeline.privacy.pseudonyms import HEX_CHARS, PREFIX, Pseudonyms
from recs_pipeline.serving.app import create_app
from recs_pipeline.settings import ServeSettings, Settings, SettingsError
from recs_pipeline.warehouse import db, ingest

KEY = "pseudonym-test-key-0123456789abcdef-0123"
OTHER_KEY = "another-pseudonym-key-0123456789abcdef-99"
NOW = datetime(2026, 10, 15, tzinfo=UTC)


# -- the mapping ----------------------------------------------------------------------------------


def test_a_pseudonym_is_deterministic_keyed_and_128_bits() -> None:
    keyed = Pseudonyms(KEY.encode())
    p = keyed.of("u103")
    assert p == Pseudonyms(KEY.encode()).of("u103")  # another instance, same key: same pseudonym
    assert p.startswith(PREFIX) and len(p) == len(PREFIX) + HEX_CHARS == len(PREFIX) + 32
    int(p[len(PREFIX) :], 16)  # hex
    assert p != keyed.of("u1030") and p != Pseudonyms(OTHER_KEY.encode()).of("u103")
    assert "u103" not in p
    assert keyed.of(103) == keyed.of("103")  # numbers are taken as text, as ingestion reads them
    assert keyed.of_optional(None) is None and keyed.of_optional("") == ""


def test_without_a_key_every_form_is_the_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECS_PSEUDONYM_KEY", raising=False)
    monkeypatch.delenv("RECS_PSEUDONYM_KEY_FILE", raising=False)
    assert not pseudonyms.from_env().enabled
    assert pseudonyms.pseudonym("u103") == "u103"
    frame = pl.DataFrame({"user_id": ["u1", None, "u2"]})
    assert frame.select(Pseudonyms().expr("user_id")).equals(frame)
    con = duckdb.connect()
    Pseudonyms().register(con)
    assert con.execute("SELECT pseudonym('u1'), pseudonym(NULL)").fetchone() == ("u1", None)
    # a macro, not a Python function: the disabled path costs nothing
    assert con.execute(
        "SELECT count(*) FROM duckdb_functions() WHERE function_name = 'pseudonym' AND function_type = 'macro'"
    ).fetchone() == (1,)


def test_the_sql_and_polars_forms_equal_the_python_one() -> None:
    keyed = Pseudonyms(KEY.encode())
    ids = [f"u{i}" for i in range(3000)] + [None, "ü-ñ", "12"]
    con = duckdb.connect()
    Pseudonyms().register(con)
    keyed.register(con)  # replaces the macro on the same connection
    got = con.execute("SELECT pseudonym(x) FROM (SELECT unnest($ids) AS x)", {"ids": ids}).fetchall()
    assert [g for (g,) in got] == [keyed.of_optional(i) for i in ids]
    series = pl.DataFrame({"u": ids}).select(keyed.expr("u"))["u"].to_list()
    assert series == [keyed.of_optional(i) for i in ids]


def test_the_key_comes_from_the_variable_or_a_file_never_both(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("RECS_PSEUDONYM_KEY_FILE", raising=False)
    monkeypatch.setenv("RECS_PSEUDONYM_KEY", KEY)
    assert pseudonyms.pseudonym("u1") == Pseudonyms(KEY.encode()).of("u1")
    key_file = tmp_path / "pseudonym.key"
    key_file.write_text(OTHER_KEY + "\n")
    key_file.chmod(0o600)
    monkeypatch.setenv("RECS_PSEUDONYM_KEY_FILE", str(key_file))
    with pytest.raises(SettingsError, match="both RECS_PSEUDONYM_KEY and RECS_PSEUDONYM_KEY_FILE"):
        pseudonyms.from_env()
    monkeypatch.delenv("RECS_PSEUDONYM_KEY")
    assert pseudonyms.pseudonym("u1") == Pseudonyms(OTHER_KEY.encode()).of("u1")
    monkeypatch.delenv("RECS_PSEUDONYM_KEY_FILE")
    monkeypatch.setenv("RECS_PSEUDONYM_KEY", "short-secret")
    with pytest.raises(SettingsError, match="at least 32 characters") as refused:
        pseudonyms.from_env()
    assert "short-secret" not in str(refused.value)


# -- ingestion ------------------------------------------------------------------------------------


def _land_mixed(landing_dir) -> None:
    """Events of u7 (one in a producer's session ``u7-s1``, one without), a rejected one, a line that is
    not JSON, and an exposure of u7."""
    events = landing_dir / "events"
    events.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "event_id": "e1",
            "user_id": "u7",
            "item_id": "i1",
            "event_type": "view",
            "ts": "2026-10-01T10:00:00Z",
            "session_id": "u7-s1",
        },
        {"event_id": "e2", "user_id": "u7", "item_id": "i2", "event_type": "view", "ts": "2026-10-02T10:00:00Z"},
        {
            "event_id": "e3",
            "user_id": "u7",
            "item_id": "i2",
            "event_type": "stare",
            "ts": "2026-10-02T10:00:01Z",
            "session_id": "u7-s2",
        },
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows) + "not json, user u7 said\n"
    (events / "mixed.jsonl").write_text(text)
    exposure = {
        "request_id": "r1",
        "user_id": "u7",
        "ts": "2026-10-02T10:00:02Z",
        "model_version": "v1",
        "items": [{"item_id": "i1", "position": 1}],
    }
    landing.land_frame(pl.DataFrame([exposure]), landing_dir, "exposures", "served.jsonl")


def _stored(con) -> dict:
    return {
        "events": con.execute("SELECT event_id, user_id, session_id FROM events ORDER BY event_id").fetchall(),
        "exposures": con.execute("SELECT request_id, user_id FROM exposures").fetchall(),
        "quarantine": con.execute("SELECT row_no, raw FROM quarantine ORDER BY row_no").fetchall(),
    }


def test_ingestion_stores_pseudonyms_of_users_and_producer_sessions(tmp_path) -> None:
    keyed = Pseudonyms(KEY.encode())
    _land_mixed(tmp_path / "landing")
    with db.connect(tmp_path / "keyed.duckdb") as con:
        outcomes = ingest.ingest_landed(con, tmp_path / "landing", now=NOW, pseudonyms=keyed)
        stored = _stored(con)
    assert [(o.kind, o.loaded, o.quarantined) for o in outcomes] == [("events", 2, 2), ("exposures", 1, 0)]
    p = keyed.of("u7")
    e2_start_ms = int(datetime(2026, 10, 2, 10, tzinfo=UTC).timestamp() * 1000)
    assert stored["events"] == [("e1", p, keyed.of("u7-s1")), ("e2", p, f"{p}-{e2_start_ms}")]
    assert stored["exposures"] == [("r1", p)]
    (rejected_no, rejected), (line_no, line) = stored["quarantine"]
    assert json.loads(rejected) == {
        "event_id": "e3",
        "user_id": p,
        "item_id": "i2",
        "event_type": "stare",
        "ts": "2026-10-02T10:00:01Z",
        "session_id": keyed.of("u7-s2"),
    }
    assert (rejected_no, line_no, line) == (3, 4, None)  # a line that did not parse keeps no text
    assert not any(id_pattern("u7").search(str(v).encode()) for v in stored.values())
    # the landed files are what the producer sent
    assert "u7" in (tmp_path / "landing" / "events" / "mixed.jsonl").read_text()


def test_ingestion_without_a_key_stores_what_was_landed(tmp_path) -> None:
    _land_mixed(tmp_path / "landing")
    with db.connect(tmp_path / "plain.duckdb") as con:
        ingest.ingest_landed(con, tmp_path / "landing", now=NOW, pseudonyms=Pseudonyms())
        stored = _stored(con)
    e2_start_ms = int(datetime(2026, 10, 2, 10, tzinfo=UTC).timestamp() * 1000)
    assert stored["events"] == [("e1", "u7", "u7-s1"), ("e2", "u7", f"u7-{e2_start_ms}")]
    assert stored["exposures"] == [("r1", "u7")]
    raws = [raw for _, raw in stored["quarantine"]]
    text = (tmp_path / "landing" / "events" / "mixed.jsonl").read_text().splitlines()
    assert raws == [text[2], text[3]]  # byte for byte as landed


# -- a home with the key on -----------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("httpx"):  # the test client's own request lines name the URL it calls
            return
        self.lines.append(record.getMessage() + (self.format(record) if record.exc_info else ""))


@pytest.fixture(scope="module")
def keyed_home(tmp_path_factory):
    """A home with RECS_PSEUDONYM_KEY set through ingest, features, Feast and a champion model (8k events);
    the key stays set for the module. Yields the settings, the most active user's raw id and its pseudonym,
    and the log lines of every ``recs_pipeline`` logger meanwhile."""
    home = tmp_path_factory.mktemp("pseudonyms") / "home"
    records = _Records()
    package = logging.getLogger("recs_pipeline")
    level = package.level
    package.setLevel(logging.DEBUG)
    package.addHandler(records)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in LOCATION_VARIABLES:
                mp.delenv(name, raising=False)
            mp.delenv("RECS_PSEUDONYM_KEY_FILE", raising=False)
            mp.setenv("RECS_PSEUDONYM_KEY", KEY)
            for name, value in SERVED_WEIGHTS.items():
                mp.setenv(name, value)
            mp.setenv("RECS_HOME", str(home))
            settings = Settings.from_env(home)
            _, promoted, _ = build_trained_home(settings, SyntheticConfig(n_events=8_000, seed=11, days=20))
            if not promoted:  # a small data set's model may not beat the baselines: it serves all the same
                registry = ModelRegistry(settings.models_dir)
                registry.promote(registry.versions()[-1].version, reason="the pseudonym test's model")
            landed = pl.read_parquet(sorted((settings.landing_dir / "events").glob("*.parquet")))
            user = landed.group_by("user_id").len().sort(["len", "user_id"], descending=[True, False])["user_id"][0]
            yield settings, user, pseudonyms.pseudonym(user), records.lines
    finally:
        package.removeHandler(records)
        package.setLevel(level)


def tables_holding(settings: Settings, user: str) -> dict[str, int]:
    """Rows per DuckDB table whose text (every column, lists and structs included) holds ``user``."""
    pattern = "(^|[^0-9A-Za-z_])" + user + "([^0-9]|$)"
    with db.connect(settings.duckdb_path, read_only=True) as con:
        tables = con.execute("SELECT schema_name, table_name FROM duckdb_tables() WHERE NOT temporary").fetchall()
        counts = {
            f"{s}.{t}": con.execute(
                f'SELECT count(*) FROM "{s}"."{t}" AS r WHERE regexp_matches(r::VARCHAR, $p)', {"p": pattern}
            ).fetchone()[0]
            for s, t in tables
        }
    return {t: n for t, n in counts.items() if n}


def online_row(settings: Settings, user: str) -> dict:
    features = ["user_features:views_30d", "user_session_features:session_item_ids", "user_session_features:session_id"]
    return open_store(settings).get_online_features(features=features, entity_rows=[{"user_id": user}]).to_dict()


@pytest.fixture(scope="module")
def served(keyed_home):
    """The user asks for recommendations (by raw id, and by its pseudonym as if it were an id) and posts an
    event through the service; then what landed is ingested (the landing sensor's run) together with a
    producer's copy of the posted event."""
    settings, user, p, _ = keyed_home
    before = {
        "raw": places_holding(settings.home, user, skip=(settings.landing_dir,)),
        "tables": tables_holding(settings, user),
        "pseudonym": places_holding(settings.home, p),
    }
    posted = {"user_id": user, "item_id": "i1", "event_type": "add_to_cart", "ts": datetime.now(UTC).isoformat()}
    with TestClient(create_app(settings, ServeSettings(online_timeout_ms=2000))) as client:
        by_raw = client.get(f"/recommendations/{user}", params={"k": 5})
        by_pseudonym = client.get(f"/recommendations/{p}", params={"k": 5})
        answer = client.post("/events", json={"events": [posted]})
        session = online_row(settings, p)
        raw_session = online_row(settings, user)
    # the journal and the exposure log land raw ids, as producers' files do
    service_files = [*settings.landing_dir.glob("events/api-*"), *settings.landing_dir.glob("exposures/*")]
    landed_raw = sorted(f"{f.parent.name}/{f.name}" for f in service_files if id_pattern(user).search(f.read_bytes()))
    copy = {**posted, "event_id": answer.json()["event_ids"][0]}
    # (with another user's event: a file of the user's rows only is left empty by the erasure, like the journal)
    visitor = {**posted, "user_id": "visitor-1", "event_id": "producer-visitor-1"}
    landing.land_frame(pl.DataFrame([copy, visitor]), settings.landing_dir, "events", "producer-copy.jsonl")
    with db.connect(settings.duckdb_path) as con:
        outcomes = ingest.ingest_landed(con, settings.landing_dir, now=datetime.now(UTC))
        stored = con.execute(
            "SELECT user_id, session_id FROM events WHERE event_id = $e", {"e": copy["event_id"]}
        ).fetchall()
        exposures = con.execute("SELECT user_id, count(*) FROM exposures GROUP BY user_id ORDER BY 1").fetchall()
    return {
        "before": before,
        "by_raw": by_raw,
        "by_pseudonym": by_pseudonym,
        "answer": answer,
        "session": session,
        "raw_session": raw_session,
        "landed_raw": landed_raw,
        "outcomes": outcomes,
        "stored": stored,
        "exposures": exposures,
    }


@pytest.mark.integration
def test_no_store_outside_the_landing_zone_holds_a_raw_id(keyed_home, served) -> None:
    settings, user, p, _ = keyed_home
    before = served["before"]
    assert before["raw"] == [] and before["tables"] == {}
    found = before["pseudonym"]
    assert str(settings.duckdb_path) in found, found
    assert any(f.endswith(".parquet (user_id)") for f in found), found
    assert any(f.startswith(str(settings.models_dir)) for f in found), found  # the ALS user ids
    assert places_holding(settings.landing_dir, user)  # the producer's files keep what it sent
    # after serving, posting and ingesting what the service landed: still none
    assert places_holding(settings.home, user, skip=(settings.landing_dir,)) == []
    assert tables_holding(settings, user) == {}
    assert tables_holding(settings, p)["main.events"] > 0


@pytest.mark.integration
def test_the_service_reads_and_writes_under_the_pseudonym(keyed_home, served) -> None:
    _, user, p, _ = keyed_home
    by_raw = served["by_raw"].json()
    assert served["by_raw"].status_code == 200 and by_raw["user_id"] == user  # the answer echoes the caller's id
    assert "no_personal_signal" not in by_raw["fallback_reasons"] and len(by_raw["items"]) == 5
    # a pseudonym sent as an id is mapped again: a stranger (the mapping happens once, at the edge)
    assert "no_personal_signal" in served["by_pseudonym"].json()["fallback_reasons"]
    assert served["answer"].status_code == 202 and served["answer"].json()["sessions_pushed"] == 1
    assert served["session"]["session_item_ids"][0][-1] == "i1"
    assert served["raw_session"]["session_item_ids"] == [None] and served["raw_session"]["views_30d"] == [None]
    assert served["session"]["views_30d"][0] is not None  # the batch features are keyed by the pseudonym too
    assert {f.split("/")[0] for f in served["landed_raw"]} == {"events", "exposures"}, served["landed_raw"]


@pytest.mark.integration
def test_ingestion_of_what_the_service_landed_keeps_ids_and_sessions_consistent(keyed_home, served) -> None:
    _, _, p, _ = keyed_home
    by_name = {o.file_name: o for o in served["outcomes"]}
    copy = by_name["producer-copy.jsonl"]
    journal = [o for name, o in by_name.items() if name.startswith("api-")]
    assert [(o.loaded, o.duplicates) for o in journal] == [(1, 0)]
    assert (copy.loaded, copy.duplicates) == (1, 1)  # the same raw row: one event id, loaded once
    # stored under the pseudonym, in the session the service pushed live
    assert served["stored"] == [(p, served["session"]["session_id"][0])]
    # one list for the user; the one asked for its pseudonym as an id went to a stranger, stored re-keyed
    assert (p, 1) in served["exposures"] and (pseudonyms.pseudonym(p), 1) in served["exposures"]


@pytest.mark.integration
def test_no_log_line_names_a_raw_id(keyed_home, served) -> None:
    _, user, _, lines = keyed_home
    assert lines  # the pipeline, the service and ingestion logged
    pattern = id_pattern(user)
    assert [line for line in lines if pattern.search(line.encode())] == []


@pytest.mark.integration
def test_forget_by_raw_id_leaves_neither_the_id_nor_its_pseudonym(keyed_home, served) -> None:
    settings, user, p, lines = keyed_home
    with TestClient(create_app(settings, ServeSettings(online_timeout_ms=2000, exposure_log=False))) as client:
        answer = client.delete(f"/users/{user}")
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["warehouse_rows"]["events"] > 0 and report["model_versions"] and report["landed_files"]
    assert places_holding(settings.home, user) == []
    # (the landing zone holds the string p as the raw id of the stranger who was asked for by it)
    assert places_holding(settings.home, p, skip=(settings.landing_dir,)) == []
    assert tables_holding(settings, user) == {} and tables_holding(settings, p) == {}
    row = online_row(settings, p)
    assert row["views_30d"] == [None] and row["session_item_ids"] == [None]
    assert not any(id_pattern(user).search(line.encode()) for line in lines)
