"""The item endpoints through the HTTP API: similar items, bought together, a cart's recommendations.

One copy of the served home per module (the tests land item updates in it); its champion was
trained by today's code, so it holds the bought-together table. The last test registers a copy of
the champion without it, as a bundle written before the table existed.
"""

import json
import shutil
import time
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from fastapi.testclient import TestClient
from homes import copy_home
from prometheus_client.parser import text_string_to_metric_families

from recs_pipeline.data.contract import EVENT_TYPE, ITEM_ID, SESSION_ID
from recs_pipeline.models.bundle import Bundle
from recs_pipeline.models.protocol import history
from recs_pipeline.models.registry import ModelRegistry
from recs_pipeline.models.training import BOUGHT_TOGETHER_DIR, BOUGHT_TOGETHER_WEIGHTS
from recs_pipeline.models.workspace import RetrainWorkspace
from recs_pipeline.serving.app import create_app
from recs_pipeline.serving.recommender import signals_of
from recs_pipeline.serving.watched_file import CHECK_SECONDS
from recs_pipeline.settings import ServeSettings

pytestmark = pytest.mark.integration

SIMILAR_SOURCES = {"covis", "als", "content"}


@pytest.fixture(scope="module")
def home(served_home, tmp_path_factory):
    return copy_home(served_home, tmp_path_factory.mktemp("items") / "home")


@pytest.fixture(scope="module")
def client(home):
    with TestClient(create_app(home, ServeSettings(online_timeout_ms=2000))) as c:
        yield c


@pytest.fixture(scope="module")
def bundle(client) -> Bundle:
    return client.app.state.holder.recommender.model


@pytest.fixture(scope="module")
def co_carted(home) -> dict[str, dict[str, float]]:
    """From the training events the served sources were fitted on: per item, every item carted or bought
    in one of its sessions (where it was carted or bought too) and the summed weight of that item's
    strongest such event per session (what the bought-together table counts)."""
    ws = RetrainWorkspace(home.training_dir)
    events = history(ws.events(), ws.split().refit)
    weights = pl.DataFrame({EVENT_TYPE: list(BOUGHT_TOGETHER_WEIGHTS), "w": list(BOUGHT_TOGETHER_WEIGHTS.values())})
    per_session = (
        events.join(weights, on=EVENT_TYPE)
        .group_by(SESSION_ID, ITEM_ID)
        .agg(pl.col("w").max())
        .filter(pl.col(SESSION_ID).is_not_null())
    )
    pairs = (
        per_session.join(per_session, on=SESSION_ID, suffix="_other")
        .filter(pl.col(ITEM_ID) != pl.col(f"{ITEM_ID}_other"))
        .group_by(ITEM_ID, f"{ITEM_ID}_other")
        .agg(pl.col("w_other").sum())
    )
    out: dict[str, dict[str, float]] = {}
    for item, other, weight in pairs.iter_rows():
        out.setdefault(item, {})[other] = weight
    return out


def _similar(client, item_id: str, k: int = 20) -> dict:
    response = client.get(f"/items/{item_id}/similar", params={"k": k})
    assert response.status_code == 200, response.text
    return response.json()


def _covis_neighbours(bundle: Bundle, item_id: str) -> set[str]:
    row = bundle.sources.covis[int(bundle.index.positions([item_id])[0])]
    return set(bundle.index.ids[row.indices[row.data > 0]].tolist())


def _popular(bundle: Bundle, n: int) -> list[str]:
    return [str(i) for i in bundle.index.ids[bundle.sources.popular_items[:n]]]


def test_similar_items_are_co_viewed_or_of_the_items_category_never_itself(client, bundle):
    for item_id in _popular(bundle, 5):
        answer = _similar(client, item_id)
        items = answer["items"]
        ids = [i["item_id"] for i in items]
        assert len(ids) == 20 and len(set(ids)) == 20 and item_id not in ids
        assert answer["model_version"] == bundle.version and answer["fallback"] is False
        scores = [i["score"] for i in items]
        assert scores == sorted(scores, reverse=True) and scores[-1] > 0
        category = bundle.category_of(int(bundle.index.positions([item_id])[0]))
        co_viewed = _covis_neighbours(bundle, item_id)
        for item in items:
            assert item["sources"] and set(item["sources"]) <= SIMILAR_SOURCES, item
            if "content" in item["sources"]:
                assert item["category_id"] == category, item
            if "covis" in item["sources"]:
                assert item["item_id"] in co_viewed, item
            assert item["reason"].endswith(f" {item_id}") or item["reason"].startswith(f"like {item_id}:"), item
        related = sum(i["category_id"] == category or i["item_id"] in co_viewed for i in items)
        assert related >= 16, (item_id, related)  # mostly the item's category or co-viewed with it
        available = client.app.state.holder.recommender.available()
        assert available[bundle.index.positions(ids)].all()


def test_an_item_marked_unavailable_disappears_from_every_item_endpoint(client, bundle):
    item_id = _popular(bundle, 10)[7]
    gone = _similar(client, item_id)["items"][0]["item_id"]
    cart = client.post("/recommendations/cart", json={"item_ids": [item_id], "k": 50}).json()["items"]
    assert gone in [i["item_id"] for i in cart]
    update = {
        "items": [
            {
                "item_id": gone,
                "category_id": bundle.category_of(int(bundle.index.positions([gone])[0])),
                "available": False,
                "updated_at": datetime.now(UTC).isoformat(),
            }
        ]
    }
    landed = client.post("/items", json=update)
    assert landed.status_code == 202 and landed.json()["live"] == 1, landed.text
    after = [i["item_id"] for i in _similar(client, item_id)["items"]]
    assert gone not in after and len(after) == 20
    assert gone not in [i["item_id"] for i in client.get(f"/items/{item_id}/bought-together").json()["items"]]
    cart_after = client.post("/recommendations/cart", json={"item_ids": [item_id], "k": 50}).json()["items"]
    assert gone not in [i["item_id"] for i in cart_after] and len(cart_after) == 50


def test_bought_together_returns_the_items_carted_or_bought_with_it(client, bundle, co_carted):
    assert bundle.bought_together is not None and bundle.bought_together.nnz > 0
    available = client.app.state.holder.recommender.available()
    # the items with the most co-carted partners (each has fewer than the table's 50 per item)
    known = [i for i in co_carted if bundle.index.positions([i])[0] >= 0 and 5 <= len(co_carted[i]) <= 50]
    for item_id in sorted(known, key=lambda i: (-len(co_carted[i]), i))[:3]:
        answer = client.get(f"/items/{item_id}/bought-together", params={"k": 100})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        bought = [i for i in body["items"] if i["sources"] == ["bought_together"]]
        expected = {
            other: weight
            for other, weight in co_carted[item_id].items()
            if bundle.index.positions([other])[0] >= 0 and available[bundle.index.positions([other])[0]]
        }
        # every partner found in the events, with the weight the events give, strongest first
        assert {i["item_id"]: i["score"] for i in bought} == pytest.approx(expected)
        assert [i["score"] for i in bought] == sorted(expected.values(), reverse=True)
        assert all(i["reason"] == f"bought together with {item_id}" for i in bought)
        # then co-visitation neighbours (k is larger than the partners), flagged
        rest = body["items"][len(bought) :]
        assert rest and all(i["sources"] == ["covis"] for i in rest)
        assert body["fallback_reasons"] == ["filled_with_covis"] and body["fallback"] is True
        assert item_id not in [i["item_id"] for i in body["items"]]
    few = client.get(f"/items/{known[0]}/bought-together", params={"k": 2}).json()
    assert len(few["items"]) == 2 and few["fallback_reasons"] == []


def test_a_carts_recommendations_exclude_the_cart_and_report_unknown_ids(client, bundle, co_carted):
    # an item, the item carted with it most often and another co-carted one: each proposes the others
    first = next(i for i in sorted(co_carted) if len(co_carted[i]) >= 2 and bundle.index.positions([i])[0] >= 0)
    partners_of_first = sorted(co_carted[first], key=lambda i: (-co_carted[first][i], i))
    cart = [first, *partners_of_first[:2]]
    response = client.post("/recommendations/cart", json={"item_ids": [*cart, "never-seen", cart[0]], "k": 30})
    assert response.status_code == 200, response.text
    body = response.json()
    ids = [i["item_id"] for i in body["items"]]
    assert len(ids) == 30 and len(set(ids)) == 30 and not set(cart) & set(ids)
    assert body["unknown_item_ids"] == ["never-seen"] and body["fallback"] is False
    partners = set().union(*(co_carted[i] for i in cart))
    assert set(ids) & partners  # the cart's bought-together items are among them
    for item in body["items"]:
        assert any(item["reason"].endswith(f" {c}") or item["reason"].startswith(f"like {c}:") for c in cart), item
    for empty in ([], ["nope", "nada"]):
        fallback = client.post("/recommendations/cart", json={"item_ids": empty, "k": 5}).json()
        assert fallback["fallback_reasons"] == ["no_known_cart_items"]
        assert [i["sources"] for i in fallback["items"]] == [["popular"]] * 5
        assert fallback["unknown_item_ids"] == empty
    top = _popular(bundle, 1)[0]
    answer = client.post("/recommendations/cart", json={"item_ids": [top], "k": 5}).json()
    assert top not in [i["item_id"] for i in answer["items"]]


def test_a_shoppers_consumed_items_are_left_out_of_their_carts_recommendations(client, bundle, home):
    recommender = client.app.state.holder.recommender
    reader = client.app.state.parts["reader"]
    profiles = pl.read_parquet(home.features_dir / "user_profile.parquet")
    users = profiles.sort(pl.col("hist_item_ids").list.len(), descending=True)["user_id"].unique(maintain_order=True)
    found = None
    for user in users.to_list()[:200]:
        history, reference = recommender.history(reader.read(user))
        consumed = signals_of(user, history).consumed(recommender.recipe.consumed, bundle.index, reference=reference)
        consumed_ids = set(bundle.index.ids[consumed.indices].tolist())
        for item_id in consumed_ids:
            for neighbour in sorted(_covis_neighbours(bundle, item_id) - consumed_ids)[:3]:
                plain = client.post("/recommendations/cart", json={"item_ids": [neighbour], "k": 50}).json()
                shown = consumed_ids & {i["item_id"] for i in plain["items"]}
                if shown:
                    found = (user, neighbour, shown)
                    break
            if found:
                break
        if found:
            break
    assert found is not None, "no shopper's consumed item is recommended for a cart of its co-viewed item"
    user, neighbour, shown = found
    mine = client.post("/recommendations/cart", json={"item_ids": [neighbour], "k": 50, "user_id": user}).json()
    assert mine["user_id"] == user and mine["online_error"] is None
    assert not shown & {i["item_id"] for i in mine["items"]} and len(mine["items"]) == 50


def test_unknown_items_and_bad_parameters_are_client_errors(client):
    for path in ("/items/never-seen/similar", "/items/never-seen/bought-together"):
        response = client.get(path)
        assert response.status_code == 404
        body = response.json()
        assert "unknown item 'never-seen'" in body["detail"] and body["problems"][0]["where"] == "path.item_id"
    item_id = client.app.state.holder.recommender.model.index.ids[0]
    for k in (0, 101, "many"):
        response = client.get(f"/items/{item_id}/similar", params={"k": k})
        assert response.status_code == 422 and response.json()["problems"][0]["where"] == "query.k"
    assert client.get("/items/%ED%A0%80/similar").json()["problems"][0]["where"] == "path.item_id"
    bad_bodies = [
        ({"item_ids": "i1"}, "body.item_ids"),
        ({"item_ids": ["i1"], "k": 0}, "body.k"),
        ({"item_ids": ["i1"], "colour": "red"}, "body.colour"),
        ({"item_ids": [f"i{j}" for j in range(101)]}, "body.item_ids"),
        ({"item_ids": ["i1"], "user_id": "u" * 257}, "body.user_id"),
        ({}, "body.item_ids"),
    ]
    for body, where in bad_bodies:
        response = client.post("/recommendations/cart", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["problems"][0]["where"] == where, response.text
    surrogate = b'{"item_ids": ["\\ud800"]}'
    response = client.post("/recommendations/cart", content=surrogate, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["problems"][0]["where"] == "body.item_ids.0"


def test_openapi_documents_every_status_and_metrics_count_the_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/items/{item_id}/similar", "/items/{item_id}/bought-together"):
        assert set(paths[path]["get"]["responses"]) == {"200", "404", "422", "503"}
    assert set(paths["/recommendations/cart"]["post"]["responses"]) == {"200", "422", "503"}
    client.get("/items/never-seen/similar")
    item_id = _popular(client.app.state.holder.recommender.model, 1)[0]
    for path in ("similar", "bought-together"):
        assert client.get(f"/items/{item_id}/{path}", params={"k": 100}).status_code == 200
    assert client.post("/recommendations/cart", json={"item_ids": []}).json()["fallback_reasons"] == [
        "no_known_cart_items"
    ]
    samples = [
        (s.name, s.labels)
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
        if s.value > 0
    ]
    for route, method in (
        ("/items/{item_id}/similar", "GET"),
        ("/items/{item_id}/bought-together", "GET"),
        ("/recommendations/cart", "POST"),
    ):
        labels = {"route": route, "method": method}
        assert ("recs_http_requests_total", {**labels, "status": "200"}) in samples, route
        assert ("recs_http_request_seconds_count", labels) in samples, route
    assert ("recs_http_requests_total", {"route": "/items/{item_id}/similar", "method": "GET", "status": "404"}) in (
        samples
    )
    # the answers that fell back, by reason (100 items: more than the item was carted with)
    for reason in ("filled_with_covis", "no_known_cart_items"):
        assert ("recs_fallbacks_total", {"reason": reason}) in samples, reason


def test_block_rules_apply_to_the_item_endpoints(client, bundle, home):
    item_id = _popular(bundle, 3)[2]
    first = _similar(client, item_id)["items"][0]["item_id"]
    category = bundle.category_of(int(bundle.index.positions([item_id])[0]))
    now = datetime.now(UTC)
    window = {"start": (now - timedelta(days=1)).isoformat(), "end": (now + timedelta(days=1)).isoformat()}
    rules = [
        {"name": "recall", "action": "block", "items": [first], **window},
        {"name": "season", "action": "block", "category": category, **window},
    ]
    home.rules_file.write_text(json.dumps({"rules": rules}))
    try:
        time.sleep(CHECK_SECONDS + 0.1)
        ruled = _similar(client, item_id)["items"]
        assert ruled and first not in [i["item_id"] for i in ruled]
        assert category not in {i["category_id"] for i in ruled}
        cart = client.post("/recommendations/cart", json={"item_ids": [item_id]}).json()["items"]
        assert cart and category not in {i["category_id"] for i in cart}
    finally:
        home.rules_file.write_text(json.dumps({"rules": []}))
        time.sleep(CHECK_SECONDS + 0.1)
    assert category in {i["category_id"] for i in _similar(client, item_id)["items"]}


def test_a_bundle_from_before_the_bought_together_table_still_serves(served_home, tmp_path):
    home = copy_home(served_home, tmp_path / "home")
    registry = ModelRegistry(home.models_dir)
    old = registry.champion()
    staged = registry.stage()
    shutil.copytree(
        old.path, staged, dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.json", BOUGHT_TOGETHER_DIR)
    )
    stored = json.loads((old.path / "manifest.json").read_text())
    manifest = {k: v for k, v in stored.items() if k not in ("version", "created", "files", "code_version")}
    del manifest["recipe"]["retrieval"]["bought_together"]  # what the code before the table recorded
    registry.promote(registry.register(staged, manifest=manifest).version, reason="a bundle from before the table")
    with TestClient(create_app(home, ServeSettings(online_timeout_ms=2000))) as c:
        bundle = c.app.state.holder.recommender.model
        assert bundle.bought_together is None and bundle.recipe.retrieval.bought_together is None
        item_id = _popular(bundle, 1)[0]
        body = c.get(f"/items/{item_id}/bought-together", params={"k": 10}).json()
        assert body["fallback_reasons"] == ["no_bought_together_matrix"] and body["fallback"] is True
        assert [i["sources"] for i in body["items"]] == [["covis"]] * 10
        assert {i["item_id"] for i in body["items"]} <= _covis_neighbours(bundle, item_id)
        cart = c.post("/recommendations/cart", json={"item_ids": [item_id]}).json()
        assert "no_bought_together_matrix" in cart["fallback_reasons"] and len(cart["items"]) == 20
        assert len(_similar(c, item_id)["items"]) == 20
        assert c.get(f"/recommendations/{item_id}").status_code == 200  # the user endpoint is unaffected
