"""Merchandising rules: the file's checks, pin placement, and pins, boosts and blocks through the service."""

import json
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient
from homes import copy_home

from recs_pipeline.serving.app import create_app
from recs_pipeline.serving.recommender import place_pins
from recs_pipeline.serving.rules import RuleError, parse_rules
from recs_pipeline.serving.watched_file import CHECK_SECONDS
from recs_pipeline.settings import ServeSettings

NOW = datetime.now(UTC)
WINDOW = {"start": (NOW - timedelta(days=1)).isoformat(), "end": (NOW + timedelta(days=1)).isoformat()}


def rule(name: str, action: str, **over) -> dict:
    return {"name": name, "action": action, **WINDOW, **over}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"rules": [rule("p", "pin")]}, "a pin names its items"),
        ({"rules": [rule("p", "pin", items=["i1"], category="c")]}, "a pin names its items"),
        ({"rules": [rule("p", "pin", items=["i1"], position=0)]}, "position"),
        ({"rules": [rule("b", "boost", items=["i1"])]}, "weight"),
        ({"rules": [rule("b", "boost", category="c", weight=0)]}, "weight"),
        ({"rules": [rule("x", "block")]}, "names items, a category or both"),
        ({"rules": [rule("x", "block", items=["i1"], weight=1)]}, "a block has no weight"),
        ({"rules": [rule("x", "hide", items=["i1"])]}, "action"),
        ({"rules": [rule("x", "block", items=[""])]}, "items"),
        ({"rules": [rule("x", "block", items=["i1"], end=WINDOW["start"])]}, "not after start"),
        ({"rules": [rule("x", "block", items=["a"]), rule("x", "block", items=["b"])]}, "repeat"),
        ({"rules": [], "extra": 1}, "must be an object"),
    ],
)
def test_an_invalid_rules_file_is_refused_with_the_reason(raw, message):
    with pytest.raises(RuleError, match=message):
        parse_rules(raw)


def test_pins_take_their_positions_in_order_and_the_list_keeps_k():
    order = np.array([10, 11, 12, 13, 14])
    assert place_pins(order, [], 5).tolist() == [10, 11, 12, 13, 14]
    assert place_pins(order, [(20, "a", 1), (21, "a", 2)], 5).tolist() == [20, 21, 10, 11, 12]
    # a pinned row already in the list moves; a position past the end appends
    assert place_pins(order, [(13, "b", 1), (30, "c", 9)], 6).tolist() == [13, 10, 11, 12, 14, 30]


@pytest.mark.integration
def test_pins_boosts_and_blocks_through_the_service_with_their_reasons_and_counts(served_home, tmp_path):
    home = copy_home(served_home, tmp_path / "home")
    profiles = pl.read_parquet(home.features_dir / "user_profile.parquet")
    top = profiles.sort(pl.col("hist_item_ids").list.len(), descending=True).row(0, named=True)
    user, history = top["user_id"], set(top["hist_item_ids"])
    app = create_app(home, ServeSettings(online_timeout_ms=2000))
    with TestClient(app) as client:

        def answer(**params) -> dict:
            r = client.get(f"/recommendations/{user}", params={"k": 10, **params})
            assert r.status_code == 200, r.text
            return r.json()

        plain = answer()
        ids = [i["item_id"] for i in plain["items"]]
        # a category the top 10 does not show but a deeper candidate has: boosted, it must come first
        deep = answer(k=100)["items"][10:]
        shown = {i["category_id"] for i in plain["items"]}
        last_category = next(i["category_id"] for i in deep if i["category_id"] not in shown)
        # a popular item the user's list does not hold and the user never touched (a consumed item is
        # never pinned), of another category, to pin
        popular = client.get("/recommendations/nobody-at-all", params={"k": 100}).json()["items"]
        featured = next(
            i["item_id"]
            for i in popular
            if i["item_id"] not in ids and i["item_id"] not in history and i["category_id"] != last_category
        )
        rules = [
            rule("recall", "block", items=[ids[0]]),
            rule("hero", "pin", items=[featured], position=2),
            rule("winter", "boost", category=last_category, weight=5.0),
        ]
        home.rules_file.write_text(json.dumps({"rules": rules}))
        time.sleep(CHECK_SECONDS + 0.1)
        ruled = answer(explain="true")
        got = [i["item_id"] for i in ruled["items"]]
        assert ids[0] not in got
        assert {"item_id": ids[0], "reason": "blocked:recall"} in ruled["dropped"]
        pinned_here = featured in got
        if pinned_here:  # unless this user consumed it (other tests' sessions may have touched it)
            assert got.index(featured) == 1 and ruled["items"][1]["rules"] == ["hero"]
        boosted = [i for i in ruled["items"] if i["category_id"] == last_category]
        assert boosted and all(i["rules"] == ["winter"] for i in boosted)
        # a weight of 5 score ranges puts the boosted category first, bar the pin
        assert ruled["items"][0]["category_id"] == last_category and last_category not in shown
        metrics = client.get("/metrics").text
        assert 'recs_rule_items_total{action="block",rule="recall"} 1.0' in metrics
        assert f'recs_rule_items_total{{action="pin",rule="hero"}} {float(pinned_here)}' in metrics or not pinned_here
        assert 'recs_dropped_candidates_total{reason="blocked"} 1.0' in metrics
        # a pin for everyone: on a shopper with nothing consumed it is always in place
        fresh = client.get(f"/recommendations/pin-check-{time.time_ns()}", params={"k": 10}).json()["items"]
        assert fresh[1]["item_id"] == featured and fresh[1]["rules"] == ["hero"]
        assert fresh[1]["source"] in {"pinned", *fresh[1]["sources"]}
        # a bad edit is refused with the reason; the rules in force stay
        home.rules_file.write_text(json.dumps({"rules": [rule("broken", "pin")]}))
        time.sleep(CHECK_SECONDS + 0.1)
        assert ids[0] not in [i["item_id"] for i in answer()["items"]]
        assert "a pin names its items" in client.get("/readyz").json()["rules_error"]
        # rules outside their window, then no file: the plain list again
        past = {"start": (NOW - timedelta(days=3)).isoformat(), "end": (NOW - timedelta(days=2)).isoformat()}
        home.rules_file.write_text(json.dumps({"rules": [{**r, **past} for r in rules]}))
        time.sleep(CHECK_SECONDS + 0.1)
        assert [i["item_id"] for i in answer()["items"]] == ids
        home.rules_file.unlink()
        time.sleep(CHECK_SECONDS + 0.1)
        assert [i["item_id"] for i in answer()["items"]] == ids and client.get("/readyz").json()["rules_error"] is None
