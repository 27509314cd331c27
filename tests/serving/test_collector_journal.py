"""The collector's journals: few landed files whatever the post rate, nothing acknowledged ever lost.

Fast tests drive :class:`EventJournal` on a temp landing zone; a writer process is SIGKILLed for real
(its flock dies with it); the integration test posts through the service's collector (Feast's SQLite
store) from many threads and ingests the landed files into a warehouse: every accepted event once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from stores import open_profile

from recs_pipeline.data import landing
from recs_pipeline.serving import journal as journal_module
from recs_pipeline.serving.journal import EventJournal, journal_files, land_journals, seal_orphans
from recs_pipeline.warehouse import db, ingest

ROOT = Path(__file__).resolve().parents[2]


def rows(tag: str, n: int) -> str:
    return "".join(json.dumps({"event_id": f"{tag}-{i}", "user_id": "u"}) + "\n" for i in range(n))


def landed_ids(landing_dir: Path) -> list[str]:
    return [
        json.loads(line)["event_id"]
        for path in landing.landed_files(landing_dir, "events")
        for line in path.read_text().splitlines()
    ]


def test_concurrent_appends_land_as_one_file_with_every_row_once(tmp_path):
    journal = EventJournal(tmp_path, flush_seconds=3600)

    def append(n: int) -> str:
        return journal.append(rows(f"p{n}", 3), 3)

    with ThreadPoolExecutor(8) as pool:
        names = set(pool.map(append, range(200)))
    assert landing.landed_files(tmp_path, "events") == []  # durable in the journal, not landed yet
    [open_journal] = journal_files(tmp_path)
    assert names == {open_journal.name}
    assert len(open_journal.read_text().splitlines()) == 600
    journal.close()  # seals
    assert [p.name for p in landing.landed_files(tmp_path, "events")] == [open_journal.name]
    assert sorted(landed_ids(tmp_path)) == sorted(f"p{n}-{i}" for n in range(200) for i in range(3))
    assert journal_files(tmp_path) == []
    with pytest.raises(RuntimeError, match="closed"):
        journal.append(rows("late", 1), 1)


def test_the_timer_seals_a_journal_once_it_is_flush_seconds_old(tmp_path):
    journal = EventJournal(tmp_path, flush_seconds=0.3)
    try:
        first = journal.append(rows("a", 2), 2)
        deadline = time.monotonic() + 5
        while not landing.landed_files(tmp_path, "events"):
            assert time.monotonic() < deadline, "the journal was not sealed by its timer"
            time.sleep(0.05)
        assert [p.name for p in landing.landed_files(tmp_path, "events")] == [first]
        second = journal.append(rows("b", 1), 1)  # a new journal, a new name
        assert second != first and [p.name for p in journal_files(tmp_path)] == [second]
    finally:
        journal.close()
    assert sorted(landed_ids(tmp_path)) == ["a-0", "a-1", "b-0"]


def test_a_row_cap_and_flush_seconds_zero_seal_at_once(tmp_path):
    capped = EventJournal(tmp_path / "capped", flush_seconds=3600, max_rows=5)
    names = [capped.append(rows(f"c{n}", 2), 2) for n in range(6)]  # 2, 4, 6 rows: sealed; then again
    assert len(landing.landed_files(tmp_path / "capped", "events")) == 2
    assert names[0] == names[1] == names[2] != names[3]
    capped.close()
    each = EventJournal(tmp_path / "each", flush_seconds=0)
    names = [each.append(rows(f"e{n}", 1), 1) for n in range(3)]
    assert sorted(p.name for p in landing.landed_files(tmp_path / "each", "events")) == sorted(names)
    assert len(set(names)) == 3 and journal_files(tmp_path / "each") == []
    each.close()


def test_a_live_journal_is_never_taken_by_a_sweep_and_land_journals_waits_for_it(tmp_path):
    live = EventJournal(tmp_path, flush_seconds=0.5)
    try:
        name = live.append(rows("live", 2), 2)
        assert seal_orphans(tmp_path) == []  # held by its writer (same process, other descriptor)
        assert [p.name for p in journal_files(tmp_path)] == [name]
        started = time.monotonic()
        assert land_journals(tmp_path, timeout_s=5) == 1
        assert time.monotonic() - started < 2
        assert [p.name for p in landing.landed_files(tmp_path, "events")] == [name]
        live.append(rows("again", 1), 1)
        with pytest.raises(TimeoutError, match="still open"):
            land_journals(tmp_path, timeout_s=0.05)
    finally:
        live.close()


def test_an_orphan_loses_its_torn_tail_and_lands(tmp_path, caplog):
    folder = journal_module.journal_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "api-orphan.jsonl").write_text(rows("o", 3) + '{"event_id": "torn", "us')
    (folder / "api-torn-only.jsonl").write_text('{"event_id": "x"')  # its one write was torn: removed
    landed = seal_orphans(tmp_path)
    assert sorted(p.name for p in landed) == ["api-orphan.jsonl"]
    assert sorted(landed_ids(tmp_path)) == ["o-0", "o-1", "o-2"]
    assert journal_files(tmp_path) == []
    assert "api-orphan.jsonl: cut 24 bytes" in caplog.text and "never acknowledged" in caplog.text


def test_an_orphan_keeps_a_malformed_line_and_everything_after_it(tmp_path):
    folder = journal_module.journal_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "api-bad-line.jsonl").write_text(rows("k", 1) + "not json\n" + rows("z", 1))
    (landed,) = seal_orphans(tmp_path)
    # ingestion quarantines the bad line with its reason; the rows after it are not lost
    assert landed.read_text().splitlines()[1:] == ["not json", json.dumps({"event_id": "z-0", "user_id": "u"})]


WRITER = """
import json, os, sys, time
from recs_pipeline.serving.journal import EventJournal

journal = EventJournal(sys.argv[1], flush_seconds=3600)
torn = sys.argv[2] == "torn"
n = 0
while True:
    ids = [f"b{n}-{i}" for i in range(50)]
    name = journal.append("".join(json.dumps({"event_id": e, "pad": "x" * 200}) + "\\n" for e in ids), len(ids))
    print(json.dumps({"name": name, "ids": ids}), flush=True)  # acknowledged
    n += 1
    if torn and n == 5:  # the start of a sixth append, then killed before it completes
        os.write(journal._current.fd, b'{"event_id": "b5-0", "pa')
        print("torn", flush=True)
        time.sleep(60)
"""


@pytest.mark.parametrize("mode", ["torn", "busy"])
def test_a_sigkilled_writer_loses_nothing_acknowledged(tmp_path, mode):
    """A real process appends until SIGKILL: at a known torn write, or anywhere while appending."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path), mode], stdout=subprocess.PIPE, text=True, env=env
    )
    acked: list[str] = []
    names = set()
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.strip() == "torn":
                break
            record = json.loads(line)
            acked += record["ids"]
            names.add(record["name"])
            if mode == "busy" and len(acked) >= 40 * 50:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=20)
    for line in proc.stdout:  # acknowledged before the kill, still in the pipe
        if line.strip() != "torn":
            record = json.loads(line)
            acked += record["ids"]
            names.add(record["name"])
    assert proc.returncode == -signal.SIGKILL
    [left] = journal_files(tmp_path)
    assert names == {left.name} and landing.landed_files(tmp_path, "events") == []
    if mode == "torn":
        assert left.read_bytes().endswith(b'"pa')
    # the next writer to start lands it, cut after its last complete line
    EventJournal(tmp_path, flush_seconds=3600).close()
    assert journal_files(tmp_path) == []
    ids = landed_ids(tmp_path)
    assert len(ids) == len(set(ids))
    assert set(acked) <= set(ids)
    assert len(ids) - len(acked) <= 50  # at most the batch in flight when killed (complete, never acknowledged)
    if mode == "torn":
        assert ids == acked


# -- through the collector, into the warehouse --------------------------------------------------------


@pytest.mark.integration
def test_concurrent_posts_make_few_files_and_every_accepted_event_is_ingested_once(tmp_path):
    from recs_pipeline.serving.collector import Collector

    with open_profile("sqlite", tmp_path) as profile:
        settings = profile.settings
        collector = Collector.serving(profile.store, settings.landing_dir, wait_seconds=10.0, flush_seconds=0.5)
        start = datetime.now(UTC) - timedelta(minutes=5)

        def post(n: int) -> list[str]:
            batch = [
                {
                    "user_id": f"u{n % 7}",
                    "item_id": f"i{n}-{j}",
                    "event_type": "view",
                    "ts": (start + timedelta(seconds=n, milliseconds=j)).isoformat(),
                }
                for j in range(3)
            ] + [{"user_id": "u1", "item_id": "i", "event_type": "teleport", "ts": start.isoformat()}]
            result = collector.collect(batch)
            assert result.accepted == 3 and len(result.rejected) == 1 and result.push_error is None, result
            return result.event_ids

        posts = 120
        with ThreadPoolExecutor(8) as pool:
            accepted = [e for ids in pool.map(post, range(posts)) for e in ids]
        time.sleep(0.2)
        collector.close()
        files = landing.landed_files(settings.landing_dir, "events")
        # one journal at a time per collector: files are bounded by the elapsed time, not the posts
        assert 1 <= len(files) < posts / 4, [p.name for p in files]
        assert journal_files(settings.landing_dir) == []
        with db.connect(settings.duckdb_path) as con:
            outcomes = ingest.ingest_landed(con, settings.landing_dir, now=datetime.now(UTC), kinds=("events",))
            assert {o.status for o in outcomes} == {"ingested"}
            assert sum(o.loaded for o in outcomes) == len(accepted) == 3 * posts
            assert sum(o.duplicates + o.quarantined for o in outcomes) == 0
            stored = {r[0] for r in con.execute("SELECT event_id FROM events").fetchall()}
            assert stored == set(accepted)
            again = ingest.ingest_landed(con, settings.landing_dir, now=datetime.now(UTC), kinds=("events",))
            assert {o.status for o in again} == {"already_ingested"}


@pytest.mark.integration
def test_two_collectors_in_one_process_keep_separate_journals(tmp_path):
    from recs_pipeline.serving.collector import Collector

    with open_profile("sqlite", tmp_path) as profile:
        settings = profile.settings
        a, b = (
            Collector.serving(profile.store, settings.landing_dir, wait_seconds=10.0, flush_seconds=3600)
            for _ in range(2)
        )
        now = datetime.now(UTC).isoformat()
        first = a.collect([{"user_id": "ua", "item_id": "i1", "event_type": "view", "ts": now}])
        second = b.collect([{"user_id": "ub", "item_id": "i2", "event_type": "view", "ts": now}])
        assert first.landed_file != second.landed_file
        assert len(journal_files(settings.landing_dir)) == 2
        a.close()
        assert [p.name for p in landing.landed_files(settings.landing_dir, "events")] == [first.landed_file]
        b.close()
        assert len(landing.landed_files(settings.landing_dir, "events")) == 2
