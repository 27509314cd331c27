"""The scoring service and collector over HTTP (FastAPI's TestClient), on a real served home:
real model registry, real Feast SQLite online store, real landing zone."""

import re
import shutil
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from fastapi.testclient import TestClient
from homes import copy_home, register_copy_of_champion

from recs_pipeline.data.landing import landed_files
from recs_pipeline.models import ranker_features as rf
from recs_pipeline.models.registry import ModelRegistry
from recs_pipeline.serving.app import create_app
from recs_pipeline.serving.journal import journal_files
from recs_pipeline.settings import ServeSettings


@pytest.fixture(scope="module")
def client(served_home):
    app = create_app(served_home, ServeSettings(online_timeout_ms=2000, reload_seconds=0.2))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def known_user(served_home) -> str:
    """A user with history in the newest profile snapshot and a vector in the model."""
    profiles = pl.read_parquet(served_home.features_dir / "user_profile.parquet")
    newest = profiles.filter(pl.col("event_timestamp") == pl.col("event_timestamp").max())
    return newest.sort([pl.col("hist_item_ids").list.len(), "user_id"], descending=[True, False])["user_id"][0]


@pytest.fixture(scope="module")
def user_with_new_items(served_home) -> str:
    """A user with history whose items lie mostly in categories that have new (never-seen) items: the
    content source matches users to new items by favourite categories, so it has something to propose."""
    champion = ModelRegistry(served_home.models_dir).champion()
    assert champion is not None
    content = pl.read_parquet(champion.path / "content" / "category_popularity.parquet")
    categories = pl.read_parquet(champion.path / "content" / "item_categories.parquet")
    in_new = categories.filter(pl.col("category_id").is_in(content["category_id"].unique().implode()))["item_id"]
    profiles = pl.read_parquet(served_home.features_dir / "user_profile.parquet")
    newest = profiles.filter(pl.col("event_timestamp") == pl.col("event_timestamp").max())
    scored = newest.select(
        "user_id",
        pl.col("hist_item_ids").list.len().alias("n"),
        pl.col("hist_item_ids").list.eval(pl.element().is_in(in_new.implode())).list.mean().alias("share"),
    ).filter(pl.col("n") >= 5)
    return scored.sort(["share", "n", "user_id"], descending=[True, True, False])["user_id"][0]


def _now_iso(offset_s: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset_s)).isoformat()


def test_health_ready_and_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/recommendations/{user_id}", "/events"}
    assert client.get("/docs").status_code == 200


def test_known_user_gets_k_ranked_explained_items(client, served_home, known_user):
    champion = ModelRegistry(served_home.models_dir).champion().version
    body = client.get(f"/recommendations/{known_user}", params={"k": 20}).json()
    assert body["model_version"] == champion
    assert body["fallback"] is False, body["fallback_reasons"]
    items = body["items"]
    assert len(items) == 20
    assert len({i["item_id"] for i in items}) == 20
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    for item in items:
        assert item["source"] in item["sources"] and set(item["sources"]) <= set(rf.SOURCES)
        assert item["reason"]
    # personal sources, not just the global lists, for a user the model knows
    assert any({"als", "covis"} & set(i["sources"]) for i in items)
    assert set(body["timings_ms"]) == {"online", "retrieve", "filter", "rank", "total"}

    explained = client.get(f"/recommendations/{known_user}", params={"k": 5, "explain": "true"}).json()
    for item in explained["items"]:
        assert 1 <= len(item["contributions"]) <= 3
        assert all(c["feature"] and isinstance(c["contribution"], float) for c in item["contributions"])


def test_category_filter_returns_only_that_category(client, known_user):
    first = client.get(f"/recommendations/{known_user}").json()["items"][0]
    category = first["category_id"]
    body = client.get(f"/recommendations/{known_user}", params={"category": category, "k": 10}).json()
    assert body["items"] and all(i["category_id"] == category for i in body["items"])


def test_unknown_user_gets_popular_items_flagged(client):
    body = client.get("/recommendations/never-seen-anywhere", params={"k": 10}).json()
    assert len(body["items"]) == 10
    assert body["fallback"] is True and "no_personal_signal" in body["fallback_reasons"]
    assert all(set(i["sources"]) <= {"trending", "popular"} for i in body["items"])


@pytest.mark.parametrize(
    ("path", "params", "where"),
    [
        ("/recommendations/u1", {"k": 0}, "query.k"),
        ("/recommendations/u1", {"k": 101}, "query.k"),
        ("/recommendations/u1", {"k": "twenty"}, "query.k"),
        ("/recommendations/u1", {"explain": "maybe"}, "query.explain"),
        ("/recommendations/" + "x" * 300, {}, "path.user_id"),
    ],
)
def test_bad_input_is_a_422_that_says_what_is_wrong(client, path, params, where):
    response = client.get(path, params=params)
    assert response.status_code == 422
    problems = response.json()["problems"]
    assert any(p["where"] == where and p["problem"] for p in problems), problems


def test_unknown_category_is_a_422(client):
    response = client.get("/recommendations/u1", params={"category": "no-such-category"})
    assert response.status_code == 422
    assert "unknown category" in response.json()["detail"]
    assert [p["where"] for p in response.json()["problems"]] == ["query.category"]


def test_events_are_validated_landed_and_pushed(client, served_home):
    before = set(landed_files(served_home.landing_dir, "events"))
    events = [
        {"user_id": "collector-user", "item_id": "i1", "event_type": "view", "ts": _now_iso(-5)},
        {"user_id": "collector-user", "item_id": "i2", "event_type": "teleport", "ts": _now_iso()},
        {"user_id": "collector-user", "item_id": "i3", "event_type": "view", "ts": "not a time"},
        {"user_id": "collector-user", "event_type": "view", "ts": _now_iso()},
        {"user_id": "collector-user", "item_id": "i4", "event_type": "add_to_cart", "ts": _now_iso()},
    ]
    response = client.post("/events", json={"events": events})
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2 and body["sessions_pushed"] == 1
    reasons = {r["index"]: r["reason"] for r in body["rejected"]}
    assert reasons.keys() == {1, 2, 3}
    assert reasons[1].startswith("unknown event_type") and reasons[2].startswith("unparseable ts")
    assert reasons[3] == "missing item_id"
    wheres = {r["index"]: r["where"] for r in body["rejected"]}
    assert wheres == {1: "body.events.1.event_type", 2: "body.events.2.ts", 3: "body.events.3.item_id"}
    # stored at once in the worker's journal (or landed already), landed under the answered name
    # within the flush interval
    landed_path = served_home.landing_dir / "events" / body["landed_file"]
    assert body["landed_file"] in [p.name for p in journal_files(served_home.landing_dir)] or landed_path.exists()
    deadline = time.monotonic() + ServeSettings().collector_flush_seconds + 10
    while not landed_path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    new = set(landed_files(served_home.landing_dir, "events")) - before
    assert body["landed_file"] in [p.name for p in new]
    landed = pl.read_ndjson(landed_path)
    landed = landed.filter(pl.col("event_id").is_in(body["event_ids"]))
    assert landed["item_id"].to_list() == ["i1", "i4"]
    assert landed["event_id"].to_list() == body["event_ids"]


def test_a_batch_with_only_bad_events_is_a_422_and_lands_nothing(client, served_home):
    before = set(landed_files(served_home.landing_dir, "events"))
    response = client.post("/events", json={"events": [{"user_id": "u", "item_id": "i", "event_type": "x"}]})
    assert response.status_code == 422
    assert response.json() == {
        "detail": "no event in the batch is valid: nothing was landed",
        "problems": [{"where": "body.events.0.ts", "problem": "missing ts"}],
    }
    assert set(landed_files(served_home.landing_dir, "events")) == before
    assert client.post("/events", json={"events": []}).status_code == 422
    assert client.post("/events", json={"nothing": 1}).status_code == 422


def test_posted_events_change_the_next_recommendation(client, served_home):
    """A brand-new user: popular at first, then personal from the session pushed by POST /events,
    and an item bought in the session is no longer recommended."""
    user = "fresh-session-user"
    cold = client.get(f"/recommendations/{user}").json()
    assert "no_personal_signal" in cold["fallback_reasons"]
    anchor = _covis_item(served_home)
    views = [{"user_id": user, "item_id": anchor, "event_type": "view", "ts": _now_iso(-30)}]
    assert client.post("/events", json={"events": views}).status_code == 202
    warm = client.get(f"/recommendations/{user}", params={"k": 100}).json()
    assert "no_personal_signal" not in warm["fallback_reasons"]
    assert any(i["reason"] == f"viewed together with {anchor}" for i in warm["items"])
    bought = warm["items"][0]["item_id"]
    purchase = [{"user_id": user, "item_id": bought, "event_type": "purchase", "ts": _now_iso(-1)}]
    assert client.post("/events", json={"events": purchase}).status_code == 202
    after = client.get(f"/recommendations/{user}", params={"k": 100}).json()
    assert bought not in {i["item_id"] for i in after["items"]}


def _covis_item(settings) -> str:
    """An item with co-visitation neighbours in the champion model."""
    champion = ModelRegistry(settings.models_dir).champion()
    neighbours = pl.read_parquet(champion.path / "covis" / "covis.parquet")
    return neighbours.group_by("item_id").len().sort("len", descending=True)["item_id"][0]


def test_metrics_are_prometheus_text(client, known_user):
    client.get(f"/recommendations/{known_user}")
    text = client.get("/metrics").text
    assert 'recs_stage_seconds_bucket{le="0.005",stage="rank"}' in text
    assert re.search(r'^recs_model_info\{[^}]*version="[^"]+"[^}]*\} 1\.0$', text, re.MULTILINE), text
    assert "recs_requests_total" in text and "recs_feature_age_seconds" in text


def test_online_store_down_degrades_to_a_flagged_answer(served_home, known_user):
    """The online store's file is not a database: every read fails; answers are flagged, never 5xx."""
    online_db = served_home.feast_dir / "online_store.db"
    kept = online_db.with_suffix(".kept")
    online_db.replace(kept)
    online_db.write_bytes(b"this is not a database" * 100)
    try:
        app = create_app(served_home, ServeSettings(online_timeout_ms=2000, reload_seconds=60))
        with TestClient(app) as c:
            response = c.get(f"/recommendations/{known_user}")
    finally:
        kept.replace(online_db)
    assert response.status_code == 200
    body = response.json()
    assert "online_store_unavailable" in body["fallback_reasons"]
    assert "online store error" in body["online_error"]
    assert len(body["items"]) == 20
    # the model still knows the user: personal (ALS) results, not only popular ones
    assert any("als" in i["sources"] for i in body["items"])


def test_a_locked_store_costs_a_request_at_most_its_budget_and_freezes_nothing(served_home, known_user, tmp_path):
    """Another process holds the SQLite online store exclusively (even WAL readers are shut out):
    a read is abandoned at its budget and the answer falls back; a post waiting on the store is
    answered 503 (its events landed, retry safe) and holds up nothing else meanwhile."""
    home = copy_home(served_home, tmp_path / "home")
    locker = sqlite3.connect(home.feast_dir / "online_store.db", isolation_level=None)
    locker.execute("PRAGMA locking_mode=EXCLUSIVE")
    locker.execute("BEGIN EXCLUSIVE")
    try:
        app = create_app(home, ServeSettings(online_timeout_ms=200, reload_seconds=60, session_wait_ms=500))
        with TestClient(app) as c:
            posted: dict = {}

            def post() -> None:
                started = time.perf_counter()
                event = {"user_id": "stuck-user", "item_id": "i1", "event_type": "view", "ts": _now_iso()}
                posted["response"] = c.post("/events", json={"events": [event]})
                posted["seconds"] = time.perf_counter() - started

            poster = threading.Thread(target=post)
            poster.start()
            answers = []
            while poster.is_alive() or not answers:
                started = time.perf_counter()
                response = c.get(f"/recommendations/{known_user}")
                answers.append((response, time.perf_counter() - started))
                assert c.get("/healthz").status_code == 200
            poster.join()
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert len(answers) >= 3, "the post held up the reads"
    for response, seconds in answers:
        assert response.status_code == 200 and seconds < 1.5
        body = response.json()
        assert "online_store_unavailable" in body["fallback_reasons"]
        assert "timed out after 200 ms" in body["online_error"]
        assert 200 <= body["timings_ms"]["online"] < 1000
        assert len(body["items"]) == 20
    response = posted["response"]
    assert response.status_code == 503 and posted["seconds"] < 10
    body = response.json()
    assert "are stored" in body["detail"] and "again is safe" in body["detail"]
    assert [p["where"] for p in body["problems"]] == ["session"]
    assert (
        len(list(landed_files(home.landing_dir, "events")))
        == len(list(landed_files(served_home.landing_dir, "events"))) + 1
    )


def test_a_new_champion_is_served_without_restart_or_dropped_requests(client, served_home, known_user):
    registry = ModelRegistry(served_home.models_dir)
    new = register_copy_of_champion(registry)
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            statuses.append(client.get(f"/recommendations/{known_user}", params={"k": 5}).status_code)

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        registry.promote(new.version, reason="test hot reload")
        for _ in range(100):
            served = {client.get(f"/recommendations/{known_user}").json()["model_version"]}
            if served == {new.version}:
                break
            threading.Event().wait(0.1)
    finally:
        stop.set()
        worker.join()
        registry.rollback(reason="test cleanup")
    assert served == {new.version}
    assert statuses and set(statuses) == {200}


def test_without_a_champion_the_503_says_whether_the_gate_refused_the_trained_models(served_home, tmp_path):
    home = copy_home(served_home, tmp_path / "home")
    kept = tmp_path / "kept-registry"
    shutil.move(home.models_dir, kept)  # a home whose registry is empty: nothing trained yet
    user = pl.read_parquet(home.features_dir / "user_profile.parquet")["user_id"][0]
    settings = ServeSettings(online_timeout_ms=2000, reload_seconds=60, metrics_dir=None)

    def detail() -> str:
        with TestClient(create_app(home, settings)) as c:
            response = c.get(f"/recommendations/{user}")
        assert response.status_code == 503
        return response.json()["detail"]

    assert "run `recs run`" in detail() and "refused" not in detail()
    # trained, registered, never promoted (what a gate that refuses every challenger leaves)
    registry = ModelRegistry(home.models_dir)
    # the moved registry is still signed with the home's key (secrets/ beside models/)
    register_copy_of_champion(registry, source=ModelRegistry(kept, signing_key=registry.signing_key))
    assert registry.champion() is None
    assert "1 model version(s) are registered but the promotion gate refused every one" in detail()


def test_diversity_re_ranks_the_same_candidates_toward_more_categories(client, served_home, known_user, tmp_path):
    # a copy of the home: other test files refresh the shared home's online features meanwhile
    home = copy_home(served_home, tmp_path / "home")
    with TestClient(create_app(home, ServeSettings(online_timeout_ms=2000))) as own:
        plain = own.get(f"/recommendations/{known_user}", params={"k": 20}).json()
        mixed = own.get(f"/recommendations/{known_user}", params={"k": 20, "diversity": 2.0}).json()
    assert (plain["diversity"], mixed["diversity"]) == (0.0, 2.0)
    assert plain["candidates"] == mixed["candidates"]  # the same candidates, ordered differently

    def categories(answer: dict) -> list:
        return [i["category_id"] for i in answer["items"]]

    assert len(set(categories(mixed))) > len(set(categories(plain)))
    # above 1, every category is shown once before any twice
    seen, repeated = set(), False
    for category in categories(mixed):
        if category in seen:
            repeated = True
        else:
            assert not repeated, categories(mixed)
            seen.add(category)
    assert mixed["items"][0]["item_id"] == plain["items"][0]["item_id"]  # the best item stays first
    bad = client.get(f"/recommendations/{known_user}", params={"diversity": -1})
    assert bad.status_code == 422 and bad.json()["problems"][0]["where"] == "query.diversity"


def test_the_cold_start_ladder_rung_by_rung(client):
    """Unknown user: the non-personal lists, flagged. From the first event (the live session): session
    co-visitation, the category lists and ALS folded in on the session, and the user's own recent items
    (a view does not consume); more events keep every rung personal. (Each rung's offline quality:
    the evaluation's unknown / new / returning users segments.)"""

    def sources(answer: dict) -> dict[str, int]:
        return {s: sum(s in i["sources"] for i in answer["items"]) for s in ("als", "covis", "catpop", "recent")}

    user = f"ladder-{time.time_ns()}"
    unknown = client.get(f"/recommendations/{user}", params={"k": 20}).json()
    assert unknown["fallback_reasons"] == ["no_personal_signal"]
    assert {s for i in unknown["items"] for s in i["sources"]} <= {"popular", "trending"}
    seen: list[str] = []
    rungs = []
    for item in [i["item_id"] for i in unknown["items"][:4]]:
        event = {"user_id": user, "item_id": item, "event_type": "view", "ts": _now_iso()}
        assert client.post("/events", json={"events": [event]}).status_code == 202
        seen.append(item)
        answer = client.get(f"/recommendations/{user}", params={"k": 20}).json()
        assert answer["fallback_reasons"] == []
        rungs.append(sources(answer))
    first = rungs[0]
    assert first["covis"] > 0 and first["catpop"] > 0 and first["als"] > 0  # personal from the first event
    assert all(r["als"] > 0 and r["recent"] >= 1 for r in rungs)  # the session's own items are candidates


def test_exploration_slots_give_the_last_places_to_new_items_of_the_user_s_categories(
    served_home, user_with_new_items, tmp_path
):
    # a copy of the home: other test files post events for the shared home's users meanwhile
    home = copy_home(served_home, tmp_path / "home")
    user = user_with_new_items
    with TestClient(create_app(home, ServeSettings(online_timeout_ms=2000))) as own:
        plain = own.get(f"/recommendations/{user}", params={"k": 10}).json()
        explored = own.get(f"/recommendations/{user}", params={"k": 10, "explore": 3}).json()
    assert (plain["explore"], explored["explore"]) == (0, 3)
    ids = [i["item_id"] for i in plain["items"]]
    got = explored["items"]
    assert [i["item_id"] for i in got[:7]] == ids[:7]  # the ranked places are untouched
    tail = got[7:]
    assert len(tail) == 3 and all(i["source"] == "explore" and "content" in i["sources"] for i in tail)
    assert not {i["item_id"] for i in tail} & set(ids)  # items the ranking left out
    assert all(i["source"] != "explore" for i in plain["items"])
