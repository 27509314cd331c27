"""`recs serve --workers 2` as a real process on a copy of the served home: both workers answer,
/metrics sums them, a new champion goes live in every worker, SIGTERM stops it cleanly."""

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import polars as pl
import pytest
from homes import copy_home, register_copy_of_champion

from recs_pipeline.models.registry import ModelRegistry

pytestmark = pytest.mark.integration  # starts `recs serve` (two worker processes)

STARTUP_S = 240  # every worker imports Feast and loads the model


@pytest.fixture(scope="module")
def server(served_home, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-workers")
    home = copy_home(served_home, tmp / "home")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "RECS_SERVE_RELOAD_SECONDS": "0.5",
        "RECS_SERVE_ONLINE_TIMEOUT_MS": "2000",
        "TMPDIR": str(tmp),  # where `recs serve` makes its metrics directory
    }
    env.pop("RECS_HOME", None)
    log = (tmp / "serve.log").open("w")
    cmd = [sys.executable, "-m", "recs_pipeline.cli", "--home", str(home.home), "serve", "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--workers", "2"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_S
    pids: set[int] = set()
    try:
        while len(pids) < 2:  # both workers loaded a model
            assert proc.poll() is None, (tmp / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the workers did not both become ready"
            try:
                r = httpx.get(f"{base}/readyz", timeout=5)
                if r.status_code == 200:
                    pids.add(r.json()["worker_pid"])
            except httpx.TransportError:
                time.sleep(0.5)
        yield {"proc": proc, "base": base, "home": home, "tmp": tmp, "log": tmp / "serve.log"}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def _readyz(base: str) -> dict:
    r = httpx.get(f"{base}/readyz", timeout=10)  # a new connection each time: any worker may take it
    assert r.status_code == 200, r.text
    return r.json()


def _metric(text: str, line_start: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    return sum(values)


def test_both_workers_answer_and_metrics_sum_over_them(server):
    base = server["base"]
    before = httpx.get(f"{base}/metrics", timeout=10).text
    readyz_200 = 'recs_http_requests_total{method="GET",route="/readyz",status="200"}'
    start = _metric(before, readyz_200)
    served_by: dict[int, int] = {}
    while len(served_by) < 2 or sum(served_by.values()) < 20:
        assert sum(served_by.values()) < 400, f"one worker answered everything: {served_by}"
        pid = _readyz(base)["worker_pid"]
        served_by[pid] = served_by.get(pid, 0) + 1
    sent = sum(served_by.values())
    # whichever worker answers /metrics, it reports the requests of both (the count may lag the last answer)
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(f"{base}/metrics", timeout=10).text
        counted = _metric(text, readyz_200) - start
        if counted >= sent or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert counted == sent, (served_by, counted)
    # the per-worker gauge: one series per live worker, each serving the champion
    champion = ModelRegistry(server["home"].models_dir).champion().version
    live = re.findall(r'recs_model_info\{pid="(\d+)",version="([^"]+)"\} 1\.0', text)
    assert {int(pid) for pid, version in live if version == champion} == set(served_by)


def test_a_new_champion_goes_live_in_every_worker(server):
    home = server["home"]
    new = register_copy_of_champion(ModelRegistry(home.models_dir), reason="test: hot reload in every worker")
    on_new: set[int] = set()
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while not (len(seen) == 2 and on_new == seen):
        assert time.monotonic() < deadline, f"workers on the new model: {on_new} of {seen}"
        body = _readyz(server["base"])
        seen.add(body["worker_pid"])
        if body["model_version"] == new.version:
            on_new.add(body["worker_pid"])
    # and a recommendation from either worker is ranked by the new champion
    for _ in range(6):
        r = httpx.get(f"{server['base']}/recommendations/someone", params={"k": 3}, timeout=10)
        assert r.status_code == 200 and r.json()["model_version"] == new.version


def test_concurrent_posts_for_one_user_through_both_workers_lose_nothing(server):
    """200 posts of one event each for one user, 16 at a time on fresh connections (so both workers
    take them), in 4 rounds of 50: after each round the stored session holds exactly that round's
    events (a session keeps its newest 50), so any lost update shows."""
    from recs_pipeline.feast import feast_store
    from recs_pipeline.serving.online import OnlineReader

    reader = OnlineReader(feast_store.open_store(server["home"]), timeout_s=5.0)
    user = f"u-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)

    def post(event: dict) -> int:
        with httpx.Client(base_url=server["base"], timeout=30) as client:  # a new connection per post
            return client.post("/events", json={"events": [event]}).status_code

    try:
        for round_no in range(4):
            base = start + timedelta(seconds=50 * round_no)
            events = [
                {
                    "user_id": user,
                    "item_id": f"r{round_no}-i{j:02d}",
                    "event_type": "view",
                    "ts": (base + timedelta(seconds=j)).isoformat(),
                }
                for j in range(50)
            ]
            with ThreadPoolExecutor(16) as pool:
                statuses = list(pool.map(post, random.Random(round_no).sample(events, len(events))))
            assert statuses == [202] * 50
            session = reader.read(user).session
            assert session["session_item_ids"] == [e["item_id"] for e in events], "a concurrent post was lost"
    finally:
        reader.close()
    workers = {
        line["pid"]
        for line in (json.loads(x) for x in server["log"].read_text().splitlines() if x.startswith("{"))
        if line.get("route") == "/events"
    }
    assert len(workers) == 2, f"the posts reached workers {workers}"


def test_an_item_marked_unavailable_through_one_worker_is_served_by_neither(server):
    base, home = server["base"], server["home"]
    profiles = pl.read_parquet(home.features_dir / "user_profile.parquet")
    users = profiles.sort(pl.col("hist_item_ids").list.len(), descending=True)["user_id"].unique(maintain_order=True)
    users = users.head(6).to_list()

    def lists() -> dict[str, list[str]]:  # a new connection each time: either worker may answer
        out = {}
        for user in users:
            r = httpx.get(f"{base}/recommendations/{user}", params={"k": 10}, timeout=10)
            assert r.status_code == 200, r.text
            out[user] = [i["item_id"] for i in r.json()["items"]]
        return out

    gone = sorted({items[0] for items in lists().values()})
    now = datetime.now(UTC).isoformat()
    body = {"items": [{"item_id": i, "category_id": "c", "available": False, "updated_at": now} for i in gone]}
    answer = httpx.post(f"{base}/items", json=body, timeout=30)
    assert answer.status_code == 202 and answer.json()["live"] == len(gone), answer.text
    pids: set[int] = set()
    rounds = 0
    while rounds < 5 or (len(pids) < 2 and rounds < 40):  # right after the 202, until both workers answered
        for items in lists().values():
            assert not set(gone) & set(items)
        pids.add(_readyz(base)["worker_pid"])
        rounds += 1
    assert len(pids) == 2, f"one worker answered {rounds} rounds of new connections"


def test_sigterm_stops_every_worker_gracefully(server):
    proc = server["proc"]
    workers = {_readyz(server["base"])["worker_pid"] for _ in range(40)}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not list(server["tmp"].glob("recs-serve-metrics-*")), "the metrics directory was not removed"
    lines = [json.loads(line) for line in server["log"].read_text().splitlines() if line.startswith("{")]
    finished = [x for x in lines if x.get("message", "").startswith("Finished server process")]
    assert len(finished) == 2  # each worker ran its shutdown (lifespan) to the end
    access = [x for x in lines if x.get("route") == "/readyz"]
    assert access and {"request_id", "method", "route", "status", "duration_ms", "pid"} <= set(access[0])
