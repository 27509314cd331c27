"""Concurrent posts for one user never lose a session event: across threads, collectors and processes.

Each test posts 200 single-event batches for one user, in 4 rounds of 50 (a session keeps its newest
``MAX_SESSION_EVENTS`` = 50 events, and every round's events are newer than the round before), so
after each round the stored session must hold exactly that round's 50 events: any lost update shows.
Runs on the embedded SQLite store and on Redis (the production profile), real servers.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from stores import Profile, open_profile

from recs_pipeline.serving.collector import Collector
from recs_pipeline.serving.session import MAX_SESSION_EVENTS
from recs_pipeline.serving.session_locks import FileStripeLocks, RedisLocks, session_locks_for

pytestmark = pytest.mark.integration  # real stores (feast apply, Redis, PostgreSQL)

ROUNDS = 4
PER_ROUND = MAX_SESSION_EVENTS  # 200 posts in all
THREADS = 16


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def profile(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Profile]:
    with open_profile(request.param, tmp_path_factory.mktemp(f"sessions_{request.param}")) as opened:
        yield opened


def _serving_collector(store, landing_dir) -> Collector:
    """The collector the service runs (its locks and budgeted session read), with a budget generous
    enough for a busy test machine."""
    return Collector.serving(store, landing_dir, wait_seconds=10.0)


def _round_events(user: str, round_no: int, start: datetime) -> list[dict]:
    """The round's events, one second apart, after the previous round's (all within one session)."""
    base = start + timedelta(seconds=round_no * PER_ROUND)
    return [
        {
            "user_id": user,
            "item_id": f"r{round_no}-i{j:02d}",
            "event_type": "view",
            "ts": (base + timedelta(seconds=j)).isoformat(),
        }
        for j in range(PER_ROUND)
    ]


def _check_round(collector: Collector, user: str, events: list[dict]) -> None:
    session = collector.stored_session(user)
    assert session["session_item_ids"] == [e["item_id"] for e in events], "a concurrent post was lost"


def _post_all(collectors: list[Collector], events: list[dict]) -> None:
    """Every event in its own POST-sized batch, from many threads, spread over ``collectors``."""
    shuffled = random.Random(7).sample(events, len(events))

    def post(n: int) -> None:
        result = collectors[n % len(collectors)].collect([shuffled[n]])
        assert result.accepted == 1 and result.pushed_users == 1 and result.push_error is None, result

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(post, range(len(shuffled))))


def test_the_store_picks_a_cross_process_lock(profile: Profile) -> None:
    locks = session_locks_for(profile.store)
    expected = FileStripeLocks if profile.name == "sqlite" else RedisLocks
    assert isinstance(locks.cross_process, expected)


def test_concurrent_posts_from_threads_of_two_collectors_lose_nothing(profile: Profile) -> None:
    from recs_pipeline.feast import feast_store

    # two collectors with stores of their own, as two apps in one process would have
    collectors = [
        _serving_collector(feast_store.open_store(profile.settings), profile.settings.landing_dir) for _ in range(2)
    ]
    user = f"u-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    for round_no in range(ROUNDS):
        events = _round_events(user, round_no, start)
        _post_all(collectors, events)
        _check_round(collectors[0], user, events)


# -- two processes ----------------------------------------------------------------------------------

_WORKER: dict[tuple[str, str], Collector] = {}


@pytest.fixture(scope="module")
def worker_processes() -> Iterator[ProcessPoolExecutor]:
    """Two fresh processes (spawned, as `recs serve` workers are), shared by both store profiles."""
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def _post_in_worker(home: str, feast_yaml: str, events: list[dict]) -> int:
    """In a worker process: post ``events`` through its own collector of the home (Feast store and
    collector of its own, as a `recs serve` worker has); returns the process id."""
    if (home, feast_yaml) not in _WORKER:
        os.environ["RECS_HOME"] = home
        os.environ["RECS_FEAST_YAML"] = feast_yaml
        os.environ["RECS_ALLOW_INSECURE_STORES"] = "true"  # the machine's Redis and PostgreSQL have no passwords
        from recs_pipeline.feast import feast_store
        from recs_pipeline.settings import Settings

        settings = Settings.from_env()
        _WORKER[home, feast_yaml] = _serving_collector(feast_store.open_store(settings), settings.landing_dir)
    _post_all([_WORKER[home, feast_yaml]], events)
    return os.getpid()


def test_concurrent_posts_from_two_processes_lose_nothing(profile: Profile, worker_processes) -> None:
    settings = profile.settings
    user = f"u-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    checker = _serving_collector(profile.store, settings.landing_dir)
    target = (str(settings.home), settings.feast_yaml)
    pids = set()
    for round_no in range(ROUNDS):
        events = _round_events(user, round_no, start)
        halves = [events[0::2], events[1::2]]
        pids |= set(worker_processes.map(_post_in_worker, *zip(*[(*target, half) for half in halves], strict=True)))
        _check_round(checker, user, events)
    assert len(pids) == 2, "both worker processes posted"


def test_concurrent_posts_for_many_users_all_reach_their_sessions(profile: Profile) -> None:
    """Different users' updates run side by side (threads of two collectors): each push succeeds and
    every user's session holds exactly its events."""
    from recs_pipeline.feast import feast_store

    collectors = [
        _serving_collector(feast_store.open_store(profile.settings), profile.settings.landing_dir) for _ in range(2)
    ]
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    users = [f"u-{uuid.uuid4().hex[:8]}" for _ in range(8)]
    per_user = {u: _round_events(u, 0, start)[:25] for u in users}
    _post_all(collectors, [e for events in per_user.values() for e in events])
    for user, events in per_user.items():
        _check_round(collectors[1], user, events)
