"""Ingestion: exactly once per file, duplicates counted, every bad row quarantined with its reason."""

import bz2
import gzip
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from recs_pipeline.cli import main
from recs_pipeline.data import landing
from recs_pipeline.data.contract import EVENT_SCHEMA
from recs_pipeline.warehouse import db, ingest

NOW = datetime(2026, 11, 1, tzinfo=UTC)
T0 = datetime(2026, 10, 1, tzinfo=UTC)


def ev(
    i: int, user: str = "u1", item: str = "i1", kind: str = "view", minutes: int = 0, session: str | None = "s1"
) -> dict:
    return {
        "event_id": f"e{i}",
        "user_id": user,
        "item_id": item,
        "event_type": kind,
        "ts": T0 + timedelta(minutes=minutes),
        "session_id": session,
    }


def frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=EVENT_SCHEMA)


def write_text(landing_dir: Path, name: str, text: str, kind: str = "events") -> Path:
    folder = landing_dir / kind
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def ledger(con: duckdb.DuckDBPyConnection) -> dict[str, tuple]:
    rows = con.execute(
        "SELECT file_name, rows_read, loaded, quarantined, duplicates, status FROM ingest_ledger"
    ).fetchall()
    return {r[0]: r[1:] for r in rows}


def reasons(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("SELECT reason FROM quarantine ORDER BY file_name, row_no").fetchall()]


def test_good_parquet_loads_and_second_run_is_a_no_op(settings, con):
    landing.land_frame(
        frame([ev(1), ev(2, minutes=1), ev(3, kind="purchase", minutes=2)]), settings.landing_dir, "events", "a.parquet"
    )
    first = ingest.ingest_landed(con, settings.landing_dir, now=NOW)
    assert [(o.status, o.rows_read, o.loaded) for o in first] == [("ingested", 3, 3)]
    second = ingest.ingest_landed(con, settings.landing_dir, now=NOW)
    assert [o.status for o in second] == ["already_ingested"]
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 3


def test_relanded_copy_under_another_name_is_not_loaded_again(settings, con):
    path = landing.land_frame(frame([ev(1), ev(2)]), settings.landing_dir, "events", "a.parquet")
    landing.land_file(path, settings.landing_dir, "events", "copy-of-a.parquet")
    outcomes = ingest.ingest_landed(con, settings.landing_dir, now=NOW)
    assert sorted(o.status for o in outcomes) == ["already_ingested", "ingested"]
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 2


def test_duplicate_ids_within_and_across_files_are_stored_once_and_counted(settings, con):
    landing.land_frame(frame([ev(1), ev(2), ev(1)]), settings.landing_dir, "events", "a.parquet")
    ingest.ingest_landed(con, settings.landing_dir, now=NOW)
    landing.land_frame(frame([ev(2), ev(3), ev(4)]), settings.landing_dir, "events", "b.parquet")
    ingest.ingest_landed(con, settings.landing_dir, now=NOW)
    assert ledger(con) == {"a.parquet": (3, 2, 0, 1, "ingested"), "b.parquet": (3, 2, 0, 1, "ingested")}
    ids = [r[0] for r in con.execute("SELECT event_id FROM events ORDER BY event_id").fetchall()]
    assert ids == ["e1", "e2", "e3", "e4"]


def test_stored_id_hashes_only_narrow_the_check_never_decide_it(settings, con):
    """The exactly-once check compares event ids; id_hash only narrows which stored rows are read.

    A stored hash that collides with a new id's does not drop the new event; a stored row without a
    hash (inserted outside ingestion) is still compared by id.
    """
    landing.land_frame(frame([ev(1), ev(2)]), settings.landing_dir, "events", "a.parquet")
    ingest.ingest_landed(con, settings.landing_dir, now=NOW)
    con.execute("UPDATE events SET id_hash = event_id_hash('e3') WHERE event_id = 'e1'")  # a collision
    con.execute("UPDATE events SET id_hash = NULL WHERE event_id = 'e2'")
    landing.land_frame(frame([ev(2), ev(3)]), settings.landing_dir, "events", "b.parquet")
    ingest.ingest_landed(con, settings.landing_dir, now=NOW)
    assert ledger(con)["b.parquet"] == (2, 1, 0, 1, "ingested")
    ids = [r[0] for r in con.execute("SELECT event_id FROM events ORDER BY event_id").fetchall()]
    assert ids == ["e1", "e2", "e3"]


def test_stored_id_hashes_are_recomputed_when_hash_changes(settings):
    """A warehouse whose hashes came from another hash() (a DuckDB upgrade) gets them recomputed on
    open, so a re-landed event is still found; so does one from before the column (no record)."""
    landing.land_frame(frame([ev(1), ev(2)]), settings.landing_dir, "events", "a.parquet")
    with db.connect(settings.duckdb_path) as con:
        ingest.ingest_landed(con, settings.landing_dir, now=NOW)
        con.execute("UPDATE events SET id_hash = id_hash + 1")  # what another hash() would have stored
        con.execute("UPDATE event_id_hash_check SET probe = probe + 1")
    with db.connect(settings.duckdb_path) as con:
        hashes = con.execute("SELECT count(*) FROM events WHERE id_hash = event_id_hash(event_id)").fetchone()
        assert hashes == (2,)
        con.execute("UPDATE events SET id_hash = NULL")
        con.execute("DELETE FROM event_id_hash_check")
    with db.connect(settings.duckdb_path) as con:
        landing.land_frame(frame([ev(1), ev(2), ev(3)]), settings.landing_dir, "events", "b.parquet")
        ingest.ingest_landed(con, settings.landing_dir, now=NOW)
        assert ledger(con)["b.parquet"] == (3, 1, 0, 2, "ingested")
        assert con.execute("SELECT count(*) FROM events WHERE id_hash = event_id_hash(event_id)").fetchone() == (3,)


BAD_CSV = """event_id,user_id,item_id,event_type,ts,session_id
1,u1,i1,view,2026-10-01T00:00:00Z,s1
,u1,i1,view,2026-10-01T00:00:00Z,s1
3,,i1,view,2026-10-01T00:00:00Z,s1
4,u1,,view,2026-10-01T00:00:00Z,s1
5,u1,i1,teleport,2026-10-01T00:00:00Z,s1
6,u1,i1,view,yesterday,s1
7,u1,i1,view,1969-12-31T23:59:59Z,s1
8,u1,i1,view,2030-01-01T00:00:00Z,s1
9,u1,i1,view,,s1
10,u1,i1,purchase,2026-10-01 00:05:00,s1
11,u1,i1,view,2026-10-01T00:00:00Z,s1,extra
12,u1,i1,vi"""


def test_every_bad_csv_row_is_quarantined_with_its_reason(settings, con):
    write_text(settings.landing_dir, "bad.csv", BAD_CSV)
    [outcome] = ingest.ingest_landed(con, settings.landing_dir, now=NOW)
    assert (outcome.rows_read, outcome.loaded, outcome.quarantined, outcome.duplicates) == (12, 2, 10, 0)
    got = reasons(con)
    assert got[:8] == [
        "missing event_id",
        "missing user_id",
        "missing item_id",
        "unknown event_type: teleport",
        "unparseable ts: yesterday",
        "pre-epoch ts: 1969-12-31T23:59:59Z",
        "far-future ts: 2030-01-01T00:00:00Z",
        "missing ts",
    ]
    assert got[8].startswith("unparseable row at line 12: Expected Number of Columns: 6 Found: 7")
    assert got[9].startswith("unparseable row at line 13")
    raw = json.loads(con.execute("SELECT raw FROM quarantine WHERE reason LIKE 'unknown%'").fetchone()[0])
    assert raw["event_type"] == "teleport" and raw["event_id"] == "5"


BAD_JSONL = (
    "\n".join(
        json.dumps(x)
        for x in [
            {"event_id": "1", "user_id": "u1", "item_id": "i1", "event_type": "view", "ts": "2026-10-01T00:00:00Z"},
            {"event_id": 2, "user_id": 7, "item_id": "i1", "event_type": "view", "ts": "2026-10-01T00:00:01Z"},
            {
                "event_id": "3",
                "user_id": {"nested": 1},
                "item_id": "i1",
                "event_type": "view",
                "ts": "2026-10-01T00:00:00Z",
            },
            {"event_id": "4", "user_id": "u1", "item_id": "i1", "event_type": "view", "ts": 1696118400},
            {
                "event_id": "5",
                "user_id": "u1",
                "item_id": "i1",
                "event_type": "view",
                "ts": "2026-10-01T00:00:00Z",
                "session_id": ["x"],
            },
            {
                "event_id": "6" * 300,
                "user_id": "u1",
                "item_id": "i1",
                "event_type": "view",
                "ts": "2026-10-01T00:00:00Z",
            },
        ]
    )
    + "\n[1, 2]\n"
    + '{"event_id": "9", "user_id": "u1", "ite'
)


def test_jsonl_rows_with_bad_json_and_wrong_types_are_quarantined(settings, con):
    write_text(settings.landing_dir, "batch.jsonl", BAD_JSONL)
    [outcome] = ingest.ingest_landed(con, settings.landing_dir, now=NOW)
    assert (outcome.rows_read, outcome.loaded, outcome.quarantined) == (8, 2, 6)
    assert reasons(con) == [
        "wrong type: user_id is OBJECT",
        "wrong type: ts is UBIGINT (expected an ISO-8601 timestamp string)",
        "wrong type: session_id is ARRAY",
        "id longer than 256 characters",
        "unparseable row: not a JSON object",
        "unparseable row: not valid JSON",
    ]
    # numeric ids are accepted as strings
    assert con.execute("SELECT user_id FROM events WHERE event_id = '2'").fetchone()[0] == "7"


def test_wrong_columns_quarantine_the_whole_file_with_the_reason(settings, con):
    write_text(settings.landing_dir, "wrong.csv", "id,who,what\n1,u1,i1\n2,u2,i2\n")
    [outcome] = ingest.ingest_landed(con, settings.landing_dir, now=NOW)
    assert (outcome.rows_read, outcome.loaded, outcome.quarantined) == (2, 0, 2)
    assert set(reasons(con)) == {
        "wrong columns: missing event_id, user_id, item_id, event_type, ts (found id, who, what)"
    }


def test_truncated_parquet_is_rejected_and_good_files_still_load(settings, con):
    good = landing.land_frame(frame([ev(1), ev(2)]), settings.landing_dir, "events", "a.parquet")
    data = good.read_bytes()
    (settings.landing_dir / "events" / "b-truncated.parquet").write_bytes(data[: len(data) // 2])
    landing.land_frame(frame([ev(3)]), settings.landing_dir, "events", "c.parquet")
    outcomes = {o.file_name: o for o in ingest.ingest_landed(con, settings.landing_dir, now=NOW)}
    assert outcomes["b-truncated.parquet"].status == "rejected"
    assert outcomes["b-truncated.parquet"].error.startswith("unreadable file:")
    assert outcomes["a.parquet"].loaded == 2 and outcomes["c.parquet"].loaded == 1
    assert reasons(con)[0].startswith("unreadable file:")
    for name, (read, loaded, quarantined, dupes, _) in ledger(con).items():
        assert read == loaded + quarantined + dupes, name


def compressed(text: str, path: Path, compression: str) -> Path:
    """Write ``text`` to ``path`` compressed: gzip by Python's gzip module, zstd by DuckDB's writer (the
    ``zstandard`` package is not installed), each line verbatim (no delimiter or quote of its own)."""
    if compression == "gzip":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        with duckdb.connect() as c:
            c.execute(
                f"COPY (SELECT unnest($lines) AS line) TO '{path}' (FORMAT csv, HEADER false, DELIMITER chr(1), "
                f"QUOTE chr(2), ESCAPE chr(2), COMPRESSION {compression})",
                {"lines": text.splitlines()},
            )
    return path


def outcome_of(home: Path, name: str, write) -> tuple[tuple, list[str], list[tuple]]:
    """Ingest one file written by ``write(path)`` into a fresh warehouse under ``home``: its counts, its
    quarantine reasons and the stored events."""
    folder = home / "landing" / "events"
    folder.mkdir(parents=True)
    write(folder / name)
    with db.connect(home / "recs.duckdb") as c:
        [o] = ingest.ingest_landed(c, home / "landing", now=NOW)
        stored = c.execute("SELECT event_id, user_id, event_type, ts FROM events ORDER BY event_id").fetchall()
        return (o.status, o.rows_read, o.loaded, o.quarantined, o.duplicates, o.error), reasons(c), stored


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
@pytest.mark.parametrize(("fmt", "text"), [("csv", BAD_CSV), ("jsonl", BAD_JSONL)])
def test_gzip_and_zstd_files_are_read_like_the_uncompressed_file(tmp_path, fmt, text, compression):
    """The same rows, the same counts, the same quarantine reasons (the bad rows' included) as the plain
    file; the name's case does not matter."""
    suffix = {"gzip": "gz", "zstd": "zst"}[compression]
    plain = outcome_of(tmp_path / "plain", f"batch.{fmt}", lambda p: p.write_text(text))
    packed = outcome_of(tmp_path / "packed", f"batch.{fmt}.{suffix}", lambda p: compressed(text, p, compression))
    upper = outcome_of(tmp_path / "upper", f"BATCH.{fmt}.{suffix}".upper(), lambda p: compressed(text, p, compression))
    assert plain[0][:3] == ("ingested", *{"csv": (12, 2), "jsonl": (8, 2)}[fmt])
    assert packed == plain == upper


def test_an_unreadable_compressed_file_is_quarantined_with_the_readers_error(settings, con):
    """Not what its name says inside, or cut short: rejected once with the reader's reason, none of its
    rows loaded; a good file still loads."""
    landing.land_frame(frame([ev(1), ev(2)]), settings.landing_dir, "events", "a.csv")
    folder = settings.landing_dir / "events"
    (folder / "fake.csv.gz").write_text(BAD_CSV)  # a plain CSV under a .gz name
    (folder / "fake.jsonl.zst").write_text(BAD_JSONL)
    whole = gzip.compress(
        BAD_CSV.encode() + b"\n".join(b"%d,u1,i1,view,2026-10-01T00:00:00Z,s1" % i for i in range(9000))
    )
    (folder / "cut.csv.gz").write_bytes(whole[: len(whole) // 2])  # a transfer cut short: good rows first
    outcomes = {o.file_name: o for o in ingest.ingest_landed(con, settings.landing_dir, now=NOW)}
    assert outcomes["a.csv"].loaded == 2
    for name, (compression, fmt) in {
        "fake.csv.gz": ("gzip", "csv"),
        "fake.jsonl.zst": ("zstd", "jsonl"),
        "cut.csv.gz": ("gzip", "csv"),
    }.items():
        o = outcomes[name]
        assert (o.status, o.rows_read, o.loaded, o.quarantined) == ("rejected", 1, 0, 1), name
        assert o.error and o.error.startswith("unreadable file: IO Error: "), o.error
        assert o.error.endswith(f" (read as {compression}-compressed {fmt}, as its name says)"), o.error
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 2  # nothing of the cut file
    assert {o.status for o in ingest.ingest_landed(con, settings.landing_dir, now=NOW)} == {"already_ingested"}


def test_any_other_file_in_the_zone_is_quarantined_with_its_reason_once(settings, con):
    """The zone takes any file (a producer may copy anything there): what ingestion cannot read gets a
    ledger row and a quarantine record saying why, is listed for the sensor, and is not retried."""
    good = landing.land_frame(frame([ev(1), ev(2)]), settings.landing_dir, "events", "a.csv")
    folder = settings.landing_dir / "events"
    (folder / "events.csv.bz2").write_bytes(bz2.compress(good.read_bytes()))
    (folder / "events.parquet.gz").write_bytes(gzip.compress(good.read_bytes()))
    (folder / "notes").write_text("no suffix at all")
    others = {
        "events.csv.bz2": "type '.csv.bz2'",
        "events.parquet.gz": "type '.parquet.gz'",
        "notes": "without a suffix",
    }
    assert {f.name for f in landing.scan_landing(settings.landing_dir)} == {"a.csv", *others}
    outcomes = {o.file_name: o for o in ingest.ingest_landed(con, settings.landing_dir, now=NOW)}
    assert outcomes["a.csv"].loaded == 2
    for name, suffix in others.items():
        assert outcomes[name].status == "rejected" and outcomes[name].quarantined == 1, name
        assert outcomes[name].error == (
            f"unreadable file: unsupported file {suffix}: ingestion reads .parquet, .csv, .jsonl, .csv.gz, "
            ".csv.zst, .jsonl.gz, .jsonl.zst (parquet is compressed inside the file, never as a whole); "
            "convert it and land it again"
        )
    assert sorted(reasons(con)) == sorted(outcomes[n].error for n in others)
    for name, (read, loaded, quarantined, dupes, _) in ledger(con).items():
        assert read == loaded + quarantined + dupes, name
    again = ingest.ingest_landed(con, settings.landing_dir, now=NOW)
    assert {o.status for o in again} == {"already_ingested"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.parquet", ("parquet", "none")),
        ("a.csv", ("csv", "none")),
        ("a.jsonl", ("jsonl", "none")),
        ("a.csv.gz", ("csv", "gzip")),
        ("A.JSONL.GZ", ("jsonl", "gzip")),
        ("a.b.csv.zst", ("csv", "zstd")),
        ("a.jsonl.zst", ("jsonl", "zstd")),
        ("a.parquet.gz", None),
        ("a.csv.bz2", None),
        ("a.gz", None),
        ("a.txt", None),
        ("csv", None),
        (".csv.gz", None),
    ],
)
def test_file_format_by_name(name, expected):
    fmt = landing.file_format(name)
    assert (None if fmt is None else (fmt.format, fmt.compression)) == expected


def test_recs_land_accepts_what_ingestion_reads_and_refuses_the_rest(settings, con, tmp_path):
    source = compressed(BAD_CSV, tmp_path / "batch.csv.zst", "zstd")
    result = CliRunner().invoke(main, ["--home", str(settings.home), "land", str(source)])
    assert result.exit_code == 0, result.output
    assert (settings.landing_dir / "events" / "batch.csv.zst").read_bytes() == source.read_bytes()
    refused = CliRunner().invoke(main, ["--home", str(settings.home), "land", str(source), "--name", "b.csv.bz2"])
    assert refused.exit_code != 0 and "unsupported file type '.csv.bz2'" in str(refused.exception)
    [outcome] = ingest.ingest_landed(con, settings.landing_dir, now=NOW)
    assert (outcome.file_name, outcome.loaded, outcome.quarantined) == ("batch.csv.zst", 2, 10)
    for name in ("batch.csv.bz2", "batch.parquet.gz", "batch"):
        with pytest.raises(ValueError, match="unsupported file .*convert it and land it again"):
            landing.land_file(source, settings.landing_dir, "events", name)
    with pytest.raises(ValueError, match="land_frame writes uncompressed files"):
        landing.land_frame(frame([ev(1)]), settings.landing_dir, "events", "a.csv.gz")
    assert sorted(p.name for p in (settings.landing_dir / "events").iterdir()) == ["batch.csv.zst"]


def test_parquet_with_wrong_ts_type_is_quarantined_per_row(settings, con):
    df = pl.DataFrame(
        {
            "event_id": ["1", "2"],
            "user_id": ["u", "u"],
            "item_id": ["i", "i"],
            "event_type": ["view", "view"],
            "ts": [1, 2],
        }
    )
    landing.land_frame(df, settings.landing_dir, "events", "ints.parquet")
    [outcome] = ingest.ingest_landed(con, settings.landing_dir, now=NOW)
    assert outcome.quarantined == 2
    assert set(reasons(con)) == {"wrong type: ts is UBIGINT (expected an ISO-8601 timestamp string)"}


def test_items_keep_versions_and_latest_wins(settings, con):
    catalog = pl.DataFrame(
        {
            "item_id": ["i1", "i1", "i2", "i3", "i1"],
            "category_id": ["c1", "c1", "c2", None, "c1"],
            "price": [10.0, 12.0, 5.0, 1.0, 10.0],
            "available": [True, False, True, True, True],
            "updated_at": [T0, T0 + timedelta(days=1), T0, T0, T0],
        }
    )
    landing.land_frame(catalog, settings.landing_dir, "items", "catalog.parquet")
    [outcome] = ingest.ingest_landed(con, settings.landing_dir, now=NOW, kinds=("items",))
    assert (outcome.rows_read, outcome.loaded, outcome.quarantined, outcome.duplicates) == (5, 3, 1, 1)
    assert reasons(con) == ["missing category_id"]
    assert con.execute("SELECT item_id, price, available FROM items ORDER BY item_id").fetchall() == [
        ("i1", 12.0, False),
        ("i2", 5.0, True),
    ]


def test_a_failure_mid_file_rolls_back_everything_of_that_file(settings, con, monkeypatch):
    landing.land_frame(frame([ev(1), ev(2)]), settings.landing_dir, "events", "a.parquet")
    original = ingest.run_sql

    def failing(c, name, **params):
        if name == "record_ledger":
            raise RuntimeError("killed before the ledger row")
        return original(c, name, **params)

    monkeypatch.setattr(ingest, "run_sql", failing)
    with pytest.raises(RuntimeError, match="killed"):
        ingest.ingest_landed(con, settings.landing_dir, now=NOW)
    assert con.execute("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM ingest_ledger)").fetchone() == (
        0,
        0,
    )
    monkeypatch.setattr(ingest, "run_sql", original)
    [outcome] = ingest.ingest_landed(con, settings.landing_dir, now=NOW)
    assert outcome.loaded == 2


# ---------------------------------------------------------------- properties (hypothesis)

event_rows = st.lists(
    st.tuples(
        st.integers(0, 30),  # event id (small range -> many duplicates)
        st.sampled_from(["view", "add_to_cart", "purchase", "favorite", "bogus"]),
        st.integers(-5, 600),  # minutes after T0 (some far negative = still valid)
        st.booleans(),  # blank user id -> quarantined
    ),
    min_size=1,
    max_size=40,
)


def land_maybe_gzipped(frame: pl.DataFrame, landing_dir: Path, name: str) -> Path:
    """``land_frame``, or for a ``.gz`` name the same file gzipped (``mtime=0``: equal rows, equal bytes)."""
    if not name.endswith(".gz"):
        return landing.land_frame(frame, landing_dir, "events", name)
    buffer = io.BytesIO()
    if name.endswith(".csv.gz"):
        frame.write_csv(buffer)
    else:
        frame.write_ndjson(buffer)
    with landing.landing_writer(landing_dir, "events", name) as tmp:
        tmp.write_bytes(gzip.compress(buffer.getvalue(), mtime=0))
    return landing_dir / "events" / name


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(event_rows, min_size=1, max_size=4),
    replays=st.lists(st.integers(0, 3), max_size=3),
    fmt=st.sampled_from(["parquet", "csv", "jsonl", "csv.gz", "jsonl.gz"]),
)
def test_ingestion_invariants_under_replays_and_duplicates(tmp_path_factory, batches, replays, fmt):
    home = tmp_path_factory.mktemp("prop")
    landing_dir = home / "landing"
    expected_good: dict[str, dict] = {}
    files = []
    for n, batch in enumerate(batches):
        rows = [
            {
                "event_id": f"e{i}",
                "user_id": "" if blank else f"u{i % 3}",
                "item_id": f"i{i % 5}",
                "event_type": kind,
                "ts": T0 + timedelta(minutes=m),
                "session_id": None,
            }
            for i, kind, m, blank in batch
        ]
        files.append(land_maybe_gzipped(pl.DataFrame(rows, schema=EVENT_SCHEMA), landing_dir, f"f{n}.{fmt}"))
        for r in rows:
            if r["user_id"] and r["event_type"] != "bogus":
                expected_good.setdefault(r["event_id"], r)
    with db.connect(home / "w.duckdb") as con:
        ingest.ingest_landed(con, landing_dir, now=NOW)
        for k in replays:  # re-land copies of earlier files under new names
            landing.land_file(files[k % len(files)], landing_dir, "events", f"replay-{k}-{len(files)}.{fmt}")
        ingest.ingest_landed(con, landing_dir, now=NOW)
        stored = {r[0]: r[1:] for r in con.execute("SELECT event_id, user_id, event_type FROM events").fetchall()}
        assert set(stored) == set(expected_good)
        assert all(stored[k] == (v["user_id"], v["event_type"]) for k, v in expected_good.items())
        rows = con.execute("SELECT rows_read, loaded, quarantined, duplicates FROM ingest_ledger").fetchall()
        assert all(read == loaded + q + d for read, loaded, q, d in rows)
        assert sum(r[1] for r in rows) == len(stored)
        # each distinct content read once: identical batches and replays are the same file again
        distinct = {ingest.file_sha256(f): len(b) for f, b in zip(files, batches, strict=True)}
        assert sum(r[0] for r in rows) == sum(distinct.values())
        # every event got a session, and one user's sessions never overlap a 30-minute gap rule
        assert con.execute("SELECT count(*) FROM events WHERE session_id IS NULL").fetchone()[0] == 0
