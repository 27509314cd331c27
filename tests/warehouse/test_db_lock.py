"""Opening the DuckDB file waits while another process holds its lock, and names the holder when it gives up."""

import subprocess
import sys
import time

import duckdb
import pytest

from recs_pipeline.warehouse import db

HOLD = "import sys, time, duckdb; c = duckdb.connect(sys.argv[1]); print('holding', flush=True); time.sleep(float(sys.argv[2]))"


def hold(path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    return proc


def test_a_connection_waits_for_the_lock_another_process_holds(tmp_path):
    path = tmp_path / "w.duckdb"
    with db.connect(path) as con:  # the schema exists
        con.execute("SELECT 1")
    holder = hold(path, 1.5)
    try:
        started = time.monotonic()
        with db.connect(path, lock_wait_seconds=30) as con:
            waited = time.monotonic() - started
            assert con.execute("SELECT count(*) FROM events").fetchone() == (0,)
        assert 0.5 < waited < 15  # it waited for the holder to finish, not for the whole budget
    finally:
        holder.kill()
        holder.wait()


def test_it_gives_up_after_the_budget_naming_the_lock(tmp_path):
    path = tmp_path / "w.duckdb"
    holder = hold(path, 30)
    try:
        started = time.monotonic()
        locked = pytest.raises(
            duckdb.IOException, match=r"stayed locked by another process for \d+ s.*Could not set lock"
        )
        with locked, db.connect(path, lock_wait_seconds=0.5):
            pass
        assert time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()
