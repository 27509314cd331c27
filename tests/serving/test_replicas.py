"""Two `recs serve` replicas (separate processes, separate ports) on one Redis online store and one home.

The home is a copy of the served home switched to the production profile (Redis online store, SQL
registry on PostgreSQL) on a Feast project of its own, its newest snapshots materialised into Redis;
both replicas use that home, so they share its models folder, landing zone, API keys file and
write-limits file, as replicas on one host do. Checked, against the real
processes and the machine's Redis:

- a user's events posted to one replica are in the very next answer of the other (session in Redis);
- posts for one user split over both replicas lose no event (the per-user Redis session lock), and
  each accepted event lands once in the shared landing zone;
- a champion promoted with the registry goes live in both within seconds (each watches the folder);
- an item marked unavailable through one is left out by the other at once (the shared landing zone);
- a key added to the keys file works on both; the per-user write limit is one bucket for both
  (one SQLite file on the host), not one per replica.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from homes import LOCATION_VARIABLES, copy_home, register_copy_of_champion
from processes import stop_group
from stores import clean_up_production, isolated_production_yaml, redis_client, require_servers

from recs_pipeline.data import landing
from recs_pipeline.feast import feast_store, online_parity
from recs_pipeline.models.registry import ModelRegistry
from recs_pipeline.serving.auth import new_key
from recs_pipeline.serving.session import MAX_SESSION_EVENTS
from recs_pipeline.settings import Settings
from recs_pipeline.warehouse import db

pytestmark = pytest.mark.integration  # two `recs serve` processes, Redis and PostgreSQL

STARTUP_S = 120  # each replica imports Feast, opens Redis and loads the model
RELOAD_S = 0.5
USER_BURST = 250  # RECS_SERVE_WRITE_BURST_PER_USER of both replicas: room for the 200-post test
ROUNDS = 4
LANDING_S = 30  # the replicas' journals land every RECS_SERVE_COLLECTOR_FLUSH_SECONDS (2 s by default)


@dataclass
class Replicas:
    settings: Settings  # the shared home, production profile
    urls: list[str]
    headers: dict[str, str]
    logs: list[Path]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_home(served_home: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, dict]]:
    """A copy of the served home on the production profile (a Feast project of its own, its snapshots
    in Redis); the Redis keys and registry rows are deleted afterwards. Yields the settings and the
    variables that point a process at it."""
    tmp = tmp_path_factory.mktemp("replicas")
    project = f"recs_test_{uuid.uuid4().hex[:16]}"
    env = {
        "RECS_FEAST_YAML": str(isolated_production_yaml(tmp, project)),
        "RECS_ALLOW_INSECURE_STORES": "true",  # the machine's Redis and PostgreSQL have no passwords
    }
    with pytest.MonkeyPatch.context() as mp:  # only while the home is built: other modules never see it
        for var in LOCATION_VARIABLES:
            mp.delenv(var, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        settings = copy_home(served_home, tmp / "home")
        require_servers(settings)
        feast_store.apply_repo(settings)
        store = feast_store.open_store(settings)
        assert store.project == project
        try:
            with db.connect(settings.duckdb_path) as con:
                snapshots = online_parity.newest_snapshots(con)
            for view, as_of in snapshots.items():
                feast_store.materialize_snapshot(store, as_of, views=[view])
            yield settings, env
        finally:
            client = redis_client(settings.redis_url)
            locks = list(client.scan_iter(match=f"{project}:*".encode()))  # session locks: none may be left
            client.close()
            clean_up_production(settings, store, project)
            assert not locks, f"session locks left in Redis: {locks[:5]}"


@pytest.fixture(scope="module")
def replicas(redis_home: tuple[Settings, dict], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """Two `recs serve --workers 1` processes on the shared home, each on its own port."""
    settings, profile_env = redis_home
    tmp = tmp_path_factory.mktemp("replica-logs")
    key = new_key(settings.home / "secrets" / "api_keys.json", name="shop", scopes="events:write,recommendations:read")
    env = {k: v for k, v in os.environ.items() if k not in LOCATION_VARIABLES and k != "RECS_HOME"}
    env |= profile_env | {
        "RECS_SERVE_RELOAD_SECONDS": str(RELOAD_S),
        "RECS_SERVE_ONLINE_TIMEOUT_MS": "2000",  # a busy test machine: never fall back for a slow read
        "RECS_SERVE_SESSION_WAIT_MS": "10000",
        "RECS_SERVE_WRITE_BURST_PER_USER": str(USER_BURST),
        "TMPDIR": str(tmp),  # where each `recs serve` makes its metrics directory
    }
    procs, urls, logs = [], [], []
    try:
        for name in ("a", "b"):
            port = _free_port()
            log = tmp / f"serve-{name}.log"
            cmd = [sys.executable, "-m", "recs_pipeline.cli", "--home", str(settings.home), "serve"]
            cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
            with log.open("w") as out:
                procs.append(
                    subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                )
            urls.append(f"http://127.0.0.1:{port}")
            logs.append(log)
        deadline = time.monotonic() + STARTUP_S
        for proc, url, log in zip(procs, urls, logs, strict=True):
            while not _ready(url):
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, f"{url} not ready: {log.read_text()[-3000:]}"
                time.sleep(0.3)
        yield Replicas(settings, urls, {"Authorization": f"Bearer {key}"}, logs)
    finally:
        with ThreadPoolExecutor(2) as pool:  # both shut down gracefully at the same time
            list(pool.map(stop_group, procs))


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _recommend(replicas: Replicas, which: int, user: str, **params) -> dict:
    r = httpx.get(f"{replicas.urls[which]}/recommendations/{user}", params=params, headers=replicas.headers, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["online_error"] is None, body["online_error"]
    return body


def _post(replicas: Replicas, which: int, events: list[dict], headers: dict[str, str] | None = None) -> httpx.Response:
    with httpx.Client(base_url=replicas.urls[which], timeout=30) as client:  # a new connection per post
        return client.post("/events", json={"events": events}, headers=headers or replicas.headers)


def _events(user: str, items: list[str], event_type: str, start: datetime) -> list[dict]:
    return [
        {"user_id": user, "item_id": item, "event_type": event_type, "ts": (start + timedelta(seconds=j)).isoformat()}
        for j, item in enumerate(items)
    ]


def test_both_replicas_serve_the_champion_from_redis(replicas: Replicas) -> None:
    champion = ModelRegistry(replicas.settings.models_dir).champion().version
    pids = set()
    for url in replicas.urls:
        ready = httpx.get(f"{url}/readyz", timeout=10).json()
        assert ready["model_version"] == champion
        pids.add(ready["worker_pid"])
    assert len(pids) == 2
    # both read the one Redis project (the served home's SQLite store is still in the copy, unused)
    project = feast_store.open_store(replicas.settings).project
    for log in replicas.logs:
        assert f"direct Redis read of 127.0.0.1:6379 project {project!r}" in log.read_text()


def test_events_posted_to_one_replica_show_in_the_next_answer_of_the_other(replicas: Replicas) -> None:
    """A new user: B answers with popular items and no personal signal. The user views two items and
    hides B's top three through A; B's very next answer is personal and leaves the hidden items out,
    listing them as dropped with reason `hidden` (explain=true)."""
    user = f"fresh-{uuid.uuid4().hex[:8]}"
    before = _recommend(replicas, 1, user, k=10, explain="true")
    assert "no_personal_signal" in before["fallback_reasons"]
    hidden = [item["item_id"] for item in before["items"][:3]]
    viewed = [item["item_id"] for item in before["items"][5:7]]
    now = datetime.now(UTC) - timedelta(seconds=30)
    posted = _post(replicas, 0, _events(user, viewed, "view", now) + _events(user, hidden, "hide", now))
    assert posted.status_code == 202 and posted.json()["sessions_pushed"] == 1, posted.text

    after = _recommend(replicas, 1, user, k=10, explain="true")
    assert "no_personal_signal" not in after["fallback_reasons"], after["fallback_reasons"]
    assert not set(hidden) & {item["item_id"] for item in after["items"]}
    assert {d["item_id"] for d in after["dropped"] if d["reason"] == "hidden"} == set(hidden)
    # and A, which took the post, answers the same
    assert [i["item_id"] for i in _recommend(replicas, 0, user, k=10)["items"]] == [
        i["item_id"] for i in after["items"]
    ]


def test_concurrent_posts_for_one_user_split_over_both_replicas_lose_nothing(replicas: Replicas) -> None:
    """200 posts of one event each for one user, 16 at a time, alternating replicas, in 4 rounds of 50:
    after each round the stored session (read straight from Redis) holds exactly that round's events
    (a session keeps its newest 50), so any lost update shows. And every accepted event lands once in
    the shared landing zone (each replica's worker journals its posts and lands them every
    RECS_SERVE_COLLECTOR_FLUSH_SECONDS)."""
    from recs_pipeline.serving.online import OnlineReader

    reader = OnlineReader(feast_store.open_store(replicas.settings), timeout_s=5.0)
    user = f"u-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    accepted: list[str] = []
    try:
        for round_no in range(ROUNDS):
            items = [f"r{round_no}-i{j:02d}" for j in range(MAX_SESSION_EVENTS)]
            events = _events(user, items, "view", start + timedelta(seconds=MAX_SESSION_EVENTS * round_no))
            shuffled = random.Random(round_no).sample(events, len(events))
            with ThreadPoolExecutor(16) as pool:  # post n goes to replica n % 2
                answers = list(pool.map(lambda n, e: _post(replicas, n % 2, [e]), range(len(shuffled)), shuffled))
            refused = [a.text for a in answers if a.status_code != 202]
            assert not refused, refused
            accepted += [event_id for a in answers for event_id in a.json()["event_ids"]]
            session = reader.read(user).session
            assert session["session_item_ids"] == items, "a concurrent post was lost"
    finally:
        reader.close()
    assert len(set(accepted)) == ROUNDS * MAX_SESSION_EVENTS
    deadline = time.monotonic() + LANDING_S
    while (landed := _landed(replicas.settings, set(accepted))).total() < len(accepted):
        assert time.monotonic() < deadline, f"{landed.total()} of {len(accepted)} accepted events landed"
        time.sleep(0.5)
    assert set(landed) == set(accepted) and set(landed.values()) == {1}, "an event landed twice"


def _landed(settings: Settings, ids: set[str]) -> Counter[str]:
    """How often each of ``ids`` is in the landing zone's landed event files (JSON lines)."""
    found: Counter[str] = Counter()
    for path in landing.landed_files(settings.landing_dir, "events"):
        if path.suffix == ".jsonl":
            found.update(e for line in path.read_text().splitlines() if (e := json.loads(line)["event_id"]) in ids)
    return found


def test_a_promoted_champion_goes_live_in_both_replicas(replicas: Replicas) -> None:
    registry = ModelRegistry(replicas.settings.models_dir)
    new = register_copy_of_champion(registry, reason="test: hot reload in both replicas")
    promoted_at = time.monotonic()
    live: dict[str, float] = {}
    while len(live) < 2:
        waited = time.monotonic() - promoted_at
        assert waited < 30, f"replicas on {new.version}: {sorted(live)}"
        for url in replicas.urls:
            if url not in live and httpx.get(f"{url}/readyz", timeout=10).json()["model_version"] == new.version:
                live[url] = waited
        time.sleep(0.1)
    for which in (0, 1):
        assert _recommend(replicas, which, "someone", k=3)["model_version"] == new.version


def test_an_item_marked_unavailable_through_one_replica_is_not_served_by_the_other(replicas: Replicas) -> None:
    """POST /items to A lands in the shared landing zone; B's next answer (it reads the folder before
    each request) leaves the items out, with no restart and no reload."""
    user = f"shopper-{uuid.uuid4().hex[:8]}"
    shown = [item["item_id"] for item in _recommend(replicas, 1, user, k=20)["items"]]
    gone = shown[:3]
    now = datetime.now(UTC).isoformat()
    body = {"items": [{"item_id": i, "category_id": "c", "available": False, "updated_at": now} for i in gone]}
    answer = httpx.post(f"{replicas.urls[0]}/items", json=body, headers=replicas.headers, timeout=30)
    assert answer.status_code == 202 and answer.json()["live"] == 3, answer.text
    after = [item["item_id"] for item in _recommend(replicas, 1, user, k=20)["items"]]
    assert len(after) == 20 and not set(gone) & set(after), (gone, after)


def test_keys_and_per_user_write_limits_are_shared_by_the_replicas_on_one_host(replicas: Replicas) -> None:
    """A key added to the keys file after both started works on both. The per-user bucket (burst
    USER_BURST) is one row in the home's write-limits SQLite file: 100 + 100 events for one user
    through A then B are taken, the next 100 are refused (429) by either replica; per-replica buckets
    would have taken 200 more."""
    key = new_key(replicas.settings.home / "secrets" / "api_keys.json", name="late", scopes="events:write")
    headers = {"Authorization": f"Bearer {key}"}
    user = f"limited-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC) - timedelta(minutes=10)
    batches = [_events(user, [f"i{n}-{j}" for j in range(100)], "view", start + timedelta(seconds=n)) for n in range(4)]
    assert _post(replicas, 0, batches[0], headers).status_code == 202
    assert _post(replicas, 1, batches[1], headers).status_code == 202
    for which, batch in ((0, batches[2]), (1, batches[3])):
        refused = _post(replicas, which, batch, headers)
        assert refused.status_code == 429, refused.text
        assert "per-user write limit" in refused.json()["detail"] and int(refused.headers["Retry-After"]) >= 1
