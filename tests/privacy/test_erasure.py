"""Erasure of one user (issue 14 item 4): after ``forget_user`` no file, table, bundle or online row
of the home holds the user's id, the other users are intact and the champion still verifies and serves.

The home is a copy of the session's served home (trained, promoted), searched for the id by
``privacy_search.places_holding`` (every file's bytes with boundaries, parquet values whole). Before the erasure the user
also gets a live session and an exposure through the real service, ingested like the sensor would.
"""

import json
from datetime import UTC, datetime

import polars as pl
import pytest
from fastapi.testclient import TestClient
from homes import copy_home, register_copy_of_champion
from privacy_search import places_holding

from recs_pipeline.data import landing
from recs_pipeline.feast.feast_store import open_store
from recs_pipeline.models.registry import ModelIntegrityError, ModelRegistry
from recs_pipeline.privacy.erasure import ErasureReport, forget_command, forget_user
from recs_pipeline.serving.app import create_app
from recs_pipeline.serving.collector import Collector
from recs_pipeline.serving.journal import journal_dir, journal_files
from recs_pipeline.settings import ServeSettings
from recs_pipeline.warehouse import db, ingest

USER_TABLES = ("events", "exposures", "user_features", "user_category_features", "interactions", "user_profile")


ORPHAN = "api-20261202T000000000000Z-1-deadbeef.jsonl"


def table_counts(settings, user: str) -> dict[str, tuple[int, int]]:
    """(rows of ``user``, rows of everyone else) per user-keyed table."""
    with db.connect(settings.duckdb_path, read_only=True) as con:
        return {
            t: con.execute(
                f"SELECT count(*) FILTER (user_id = $u), count(*) FILTER (user_id <> $u) FROM {t}", {"u": user}
            ).fetchone()
            for t in USER_TABLES
        }


def online_row(settings, user: str) -> dict:
    store = open_store(settings)
    features = ["user_features:views_30d", "user_profile:hist_item_ids", "user_session_features:session_item_ids"]
    return store.get_online_features(features=features, entity_rows=[{"user_id": user}]).to_dict()


@pytest.fixture(scope="module")
def erased(served_home, tmp_path_factory):
    """A copy of the served home where the most active user also has a live session and an exposure,
    then was erased; with that user and the counts before."""
    settings = copy_home(served_home, tmp_path_factory.mktemp("erasure") / "home")
    with db.connect(settings.duckdb_path, read_only=True) as con:
        user, other = (
            r[0]
            for r in con.execute(
                "SELECT user_id FROM events GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 2"
            ).fetchall()
        )
    # the service's collector (POST /events): a landed events file and the live session row
    collector = Collector.serving(open_store(settings), settings.landing_dir, wait_seconds=2.0)
    view = {"user_id": user, "item_id": "i1", "event_type": "view", "ts": datetime.now(UTC).isoformat()}
    assert collector.collect([view]).pushed_users == 1
    collector.close()
    # a producer's file holding only the user's rows too: erased, it is as empty as the collector's
    # (the same new content hash for two landed files)
    landing.land_frame(
        pl.DataFrame([{**view, "item_id": "i2", "event_id": "producer-only-user"}]),
        settings.landing_dir,
        "events",
        "producer-only-user.jsonl",
    )
    with TestClient(create_app(settings, ServeSettings(online_timeout_ms=2000))) as client:  # exposures landed
        assert client.get(f"/recommendations/{user}", params={"k": 5}).status_code == 200
        assert client.get(f"/recommendations/{other}", params={"k": 5}).status_code == 200
    with db.connect(settings.duckdb_path) as con:  # what the landing sensor's run does
        ingest.ingest_landed(con, settings.landing_dir, now=datetime.now(UTC))
    assert online_row(settings, user)["session_item_ids"] == [["i1"]]  # the live session exists
    before = table_counts(settings, user)
    assert before["events"][0] > 0 and before["exposures"][0] >= 1 and before["interactions"][0] > 0
    # a worker that died with events in its open journal (serving/journal.py): landed by the erasure
    journals = journal_dir(settings.landing_dir)
    journals.mkdir(parents=True, exist_ok=True)
    (journals / ORPHAN).write_text(
        "".join(
            json.dumps({"event_id": f"orphan-{who}", "user_id": who, "item_id": "i2", "event_type": "view", "ts": ts})
            + "\n"
            for who, ts in ((user, datetime.now(UTC).isoformat()), (other, datetime.now(UTC).isoformat()))
        )
    )
    assert places_holding(settings.home, user)  # the search finds the user before the erasure
    # a kept version changed outside the pipeline: never re-signed, but the erasure goes past it
    registry = ModelRegistry(settings.models_dir)
    tampered = register_copy_of_champion(registry)
    (tampered.path / "ranker.txt").write_text("tampered")
    report = forget_user(settings, user)
    return settings, user, other, before, report, tampered.version


def test_the_erased_user_is_in_no_file_table_bundle_or_online_row(erased):
    settings, user, _, before, report, _ = erased
    assert isinstance(report, ErasureReport)
    assert all("does not verify" in why for why in report.skipped)  # only tampered versions (below)
    assert report.warehouse_rows["events"] == before["events"][0]
    assert report.warehouse_rows["exposures"] == before["exposures"][0]
    assert report.online_rows["user_session_features"] == 1 and report.online_rows["user_profile"] == 1
    assert report.model_versions  # the champion's ALS knew the user
    assert places_holding(settings.home, user) == []
    assert {t: n for t, (n, _) in table_counts(settings, user).items() if n} == {}
    with db.connect(settings.duckdb_path, read_only=True) as con:
        quarantined = con.execute("SELECT count(*) FROM quarantine WHERE contains(raw, $u)", {"u": user}).fetchone()
        assert quarantined == (0,)
    row = online_row(settings, user)
    assert row["views_30d"] == [None] and row["hist_item_ids"] == [None] and row["session_item_ids"] == [None]


def test_other_users_are_intact_and_the_ledger_still_adds_up(erased):
    settings, user, other, before, _, _ = erased
    after = table_counts(settings, user)
    assert {t: n for t, (_, n) in after.items()} == {t: n for t, (_, n) in before.items()}
    assert online_row(settings, other)["hist_item_ids"][0]
    with db.connect(settings.duckdb_path) as con:
        unbalanced, loaded, stored = con.execute(
            "SELECT count(*) FILTER (rows_read <> loaded + quarantined + duplicates), sum(loaded), "
            "(SELECT count(*) FROM events) FROM ingest_ledger WHERE kind = 'events'"
        ).fetchone()
        assert unbalanced == 0 and loaded == stored
        # a rewritten file is ledgered under its new hash: ingestion never loads it again
        outcomes = ingest.ingest_landed(con, settings.landing_dir, now=datetime.now(UTC))
        assert {o.status for o in outcomes if o.file_name != ORPHAN} == {"already_ingested"}
        # the dead worker's journal, landed by the erasure without the user's row: the other's is loaded
        (orphan,) = [o for o in outcomes if o.file_name == ORPHAN]
        assert (orphan.status, orphan.rows_read, orphan.loaded) == ("ingested", 1, 1)
        assert journal_files(settings.landing_dir) == []
        assert con.execute("SELECT count(*) FROM ingest_ledger WHERE status = 'erased'").fetchone()[0] >= 1


def test_the_champion_still_verifies_and_serves(erased):
    settings, user, other, _, _, _ = erased
    registry = ModelRegistry(settings.models_dir)
    champion = registry.verify(registry.champion().version)
    assert champion.manifest["rewritten"][-1]["reason"] == "erasure of a user"
    with TestClient(create_app(settings, ServeSettings(online_timeout_ms=2000, exposure_log=False))) as client:
        for who in (other, user):  # the erased user is a stranger now: still answered (popular items)
            answer = client.get(f"/recommendations/{who}", params={"k": 5})
            assert answer.status_code == 200 and len(answer.json()["items"]) == 5
            assert answer.json()["model_version"] == champion.version


def test_erasing_again_finds_nothing_and_an_empty_id_is_refused(erased):
    settings, user, _, _, _, _ = erased
    assert forget_command(settings, user)[0] == "removed 0 rows in all"
    with pytest.raises(ValueError, match="user_id"):
        forget_user(settings, " ")


def test_a_tampered_version_loses_the_user_unsigned_and_the_report_says_so(erased):
    settings, user, _, _, report, tampered = erased
    assert any(f"model version {tampered} does not verify" in why for why in report.skipped), report.skipped
    assert report.model_versions[tampered] == 1  # its ALS rows were removed all the same
    with pytest.raises(ModelIntegrityError, match="was modified"):
        ModelRegistry(settings.models_dir).verify(tampered)  # still refused: not signed again
