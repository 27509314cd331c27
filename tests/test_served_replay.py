"""benchmarks/served_replay.py on the OTTO sample: the replay's JSON, and nothing of the test window in the replay home."""

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import duckdb
import pytest
from homes import check_sample_home

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "served_replay.py"


@pytest.mark.integration
@pytest.mark.timeout(300)  # ~50 s alone; two `recs run`s and a service, slower beside the other worker
def test_served_replay_on_the_otto_sample(shared_data, tmp_path):
    env = {**os.environ, "RECS_SHARED_DATA": str(shared_data)}
    for var in ("RECS_HOME", "RECS_LANDING_DIR", "RECS_DUCKDB_PATH", "RECS_FEAST_YAML", "RECS_SERVE_LIMITS"):
        env.pop(var, None)
    out = tmp_path / "replay.json"
    args = [sys.executable, str(SCRIPT), "--source", "otto", "--users", "0", "--home", str(tmp_path / "work")]
    # the OTTO sample's replay home is too small for its challenger to pass the gate: serve it anyway
    args += ["--bootstrap", "50", "--serve-challenger", "--out", str(out)]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=290)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout) == result

    # the full home is `recs run --source otto` on the whole sample (the CLI test's check for OTTO)
    check_sample_home(tmp_path / "work" / "full", "otto")

    t3 = datetime.fromisoformat(result["split"]["t3"])
    leak = result["replay_home"]["as_of_t3"]
    assert datetime.fromisoformat(leak["served_sources_trained_before"]) <= t3
    with duckdb.connect(str(tmp_path / "work" / "replay" / "recs.duckdb"), read_only=True) as db:
        late, newest = db.execute("SELECT count(*) FILTER (WHERE ts >= ?), max(ts) FROM events", [t3]).fetchone()
    assert late == 0 and newest < t3

    users, events = result["users_replayed"], result["test_window_events_replayed"]
    assert users == result["users_in_batch_table"] > 0
    assert result["requests"] == {**result["requests"], "get": 2 * events, "post": events}
    assert result["served"]["first_lists_differing_between_passes"] == 0
    assert result["served"]["off_lists_differing_from_first"] == 0
    cutoff = result["at_cutoff"]
    assert cutoff["truth_equals_batch_truth"]
    for table in ("served", "batch_same_users", "batch_rows_served_ranker"):
        assert cutoff[table]["users"] == users
        ndcg = cutoff[table]["ndcg@20"]
        assert 0 <= ndcg["ci_low"] <= ndcg["value"] <= ndcg["ci_high"] <= 1
    assert set(cutoff["served_minus_batch_paired"]) == {"ndcg@20", "recall@20", "hitrate@20"}
    nxt = result["next_event"]
    assert nxt["requests_per_pass"] == events and nxt["users"] == users
    for arm in ("pushes_on", "pushes_off", "on_minus_off_paired"):
        assert nxt[arm]["ndcg@20"]["ci_low"] <= nxt[arm]["ndcg@20"]["value"] <= nxt[arm]["ndcg@20"]["ci_high"]
    assert len(result["load_average"]["start"]) == 3 and result["seconds"] > 0
