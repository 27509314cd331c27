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
from test_replay_arms import replay as served_replay

from recs_pipeline.models.workspace import RetrainWorkspace

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "served_replay.py"
# three of the five freshness arms: each arm is a service start (~10 s here); sensor and nightly share
# replay_user's code with hourly, and their rules are tests/test_replay_arms.py's
ARMS = ("none", "pushes", "hourly")


def expected_posts(work: Path, arm: str) -> tuple[int, int, int]:
    """(events posted in ``arm``, test-window events, users) recomputed from the full home: of a user's events
    in time order, those visible by the time of the user's last event (the last GET) but that last one."""
    ws = RetrainWorkspace(work / "full" / "training")
    fold = ws.split().folds["test"]
    users = sorted(ws.truth("test")["user_id"].unique().to_list())
    with duckdb.connect(str(work / "full" / "recs.duckdb"), read_only=True) as db:
        db.execute("SET TimeZone = 'UTC'")
        rows = db.execute(
            "SELECT user_id, list(ts ORDER BY ts, event_id) FROM events WHERE ts >= ? AND ts < ? "
            "AND user_id IN (SELECT unnest(?)) GROUP BY user_id",
            [fold.cutoff, fold.label_end, users],
        ).fetchall()
    posted = 0
    for _, times in rows:
        seen = [served_replay.visible_at(arm, ts) for ts in times[:-1]]
        posted += sum(at is not None and at <= times[-1] for at in seen)
    return posted, sum(len(times) for _, times in rows), len(rows)


@pytest.mark.integration
@pytest.mark.timeout(300)  # two `recs run`s and a service start per arm, slower beside the other worker
def test_served_replay_on_the_otto_sample(shared_data, tmp_path):
    env = {**os.environ, "RECS_SHARED_DATA": str(shared_data)}
    for var in ("RECS_HOME", "RECS_LANDING_DIR", "RECS_DUCKDB_PATH", "RECS_FEAST_YAML", "RECS_SERVE_LIMITS"):
        env.pop(var, None)
    out = tmp_path / "replay.json"
    args = [sys.executable, str(SCRIPT), "--source", "otto", "--users", "0", "--home", str(tmp_path / "work")]
    # the OTTO sample's replay home is too small for its challenger to pass the gate: serve it anyway
    args += ["--bootstrap", "50", "--serve-challenger", "--arms", ",".join(ARMS), "--out", str(out)]
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
    assert result["arms"] == ["pushes", "hourly", "none"]  # in ARMS order
    requests, served = result["requests"], result["served"]
    assert set(requests) == set(ARMS) and set(served) == {*ARMS, "model_versions", "none_lists_differing_from_first"}
    posted = {arm: requests[arm]["events_posted"] for arm in ARMS}  # the POST answers' ``accepted``, summed
    for arm in ARMS:
        assert requests[arm]["get"] == events
        assert (posted[arm], events, users) == expected_posts(tmp_path / "work", arm)
        # before a user's first post a request is the none arm's request: the same list
        assert served[arm]["unposted_lists_differing_from_none"] == 0
        if posted[arm] == 0:
            assert served[arm]["lists_differing_from_none"] == 0
    # every event but a user's last (no GET follows it) is pushed, one POST each; the delays post fewer
    assert posted["pushes"] == requests["pushes"]["post"] == events - users
    assert posted["pushes"] >= posted["hourly"] >= posted["none"] == requests["none"]["post"] == 0
    assert served["none_lists_differing_from_first"] == 0 and served["none"]["lists_differing_from_none"] == 0
    assert served["pushes"]["lists_differing_from_none"] > 0
    cutoff = result["at_cutoff"]
    assert cutoff["truth_equals_batch_truth"]
    for table in ("served", "batch_same_users", "batch_rows_served_ranker"):
        assert cutoff[table]["users"] == users
        ndcg = cutoff[table]["ndcg@20"]
        assert 0 <= ndcg["ci_low"] <= ndcg["value"] <= ndcg["ci_high"] <= 1
    assert set(cutoff["served_minus_batch_paired"]) == {"ndcg@20", "recall@20", "hitrate@20"}

    nxt = result["next_event"]
    assert nxt["requests_per_arm"] == events and nxt["users"] == users
    assert set(nxt["arms"]) == set(ARMS)
    for name, arm in nxt["arms"].items():
        assert arm["events_posted"] == posted[name]
        assert 0 <= arm["mean_of_them_in_the_live_session"] <= arm["mean_events_posted_before_a_request"]
        assert set(arm["mean"]) == {"ndcg@20", "recall@20", "hitrate@20", "ndcg@10", "recall@10"}
        for value in arm["mean"].values():
            assert 0 <= value["ci_low"] <= value["value"] <= value["ci_high"] <= 1
        # without nightly in the run, the comparisons are against none alone
        comparisons = {k for k in arm if k.startswith(("minus_", "relative_to_"))}
        assert comparisons == (set() if name == "none" else {"minus_none_paired", "relative_to_none"})
        for key in comparisons - {"relative_to_none"}:
            for value in arm[key].values():
                assert -1 <= value["ci_low"] <= value["value"] <= value["ci_high"] <= 1
        kinds = arm["by_next_event_kind"]
        assert sum(k["requests"] for k in kinds.values()) == events
        assert 0 <= arm["previous_event_item_in_list"] <= 1
    # an arm's lists equal to none's give none's figures: zero difference
    if served["hourly"]["lists_differing_from_none"] == 0:
        assert nxt["arms"]["hourly"]["minus_none_paired"]["ndcg@20"]["value"] == 0
    assert len(result["load_average"]["start"]) == 3 and result["seconds"] > 0
