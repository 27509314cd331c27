"""Simulated shoppers who answer served lists: traffic for experiments, with outcomes that have a known cause.

Each shopper's tastes are the planted ones as the generator realised them: the shares of the
categories of the shopper's own events over the 30 days of their newest feature snapshot
(``user_category_features``; the synthetic generator draws every user's events from one to three
favourite categories; docs/SYNTHETIC_DATA.md). Shown an answered list, a
shopper views each item with probability ``click_base * taste(category of the item) * 1/sqrt(position)``;
a viewed item is carted with ``p_cart`` and a carted one bought with ``p_purchase``. So a list of items
from the shopper's categories is clicked more than a list of globally popular ones, and nothing about
the service under test is hard-coded in the shopper.

:func:`simulate` drives a running service over HTTP (``GET /recommendations``, then ``POST /events``
with each response's ``request_id`` and the shopper's events), exactly as a client would; ``recs
simulate`` runs it against ``recs serve``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import polars as pl

from recs_pipeline.data.contract import CATEGORY_ID, ITEM_ID, USER_ID


@dataclass(frozen=True)
class ShopperModel:
    """Per shopper, category -> taste share; per item, its category; and the response probabilities."""

    tastes: dict[str, dict[str, float]]
    category_of: dict[str, str]
    click_base: float = 0.5
    p_cart: float = 0.3
    p_purchase: float = 0.3

    @classmethod
    def from_features(cls, features_dir: Path, **probabilities: float) -> ShopperModel:
        """Tastes from the exported feature snapshots (never the DuckDB file, which a pipeline run may
        hold): each shopper's newest ``user_category_features`` rows, the share of their events over
        the 30 days before it per category; each item's category from its newest ``item_features``."""
        features = Path(features_dir)
        if not (features / "user_category_features.parquet").exists():
            raise FileNotFoundError(f"no feature snapshots in {features}: run `recs run` first")
        affinity = (
            pl.scan_parquet(features / "user_category_features.parquet")
            .filter(pl.col("event_timestamp") == pl.col("event_timestamp").max().over(USER_ID))
            .select(
                USER_ID, CATEGORY_ID, (pl.col("events_30d") / pl.col("events_30d").sum().over(USER_ID)).alias("share")
            )
            .collect()
        )
        tastes: dict[str, dict[str, float]] = {}
        for user, category, share in affinity.iter_rows():
            tastes.setdefault(user, {})[category] = float(share)
        items = (
            pl.scan_parquet(features / "item_features.parquet")
            .filter(pl.col("event_timestamp") == pl.col("event_timestamp").max().over(ITEM_ID))
            .select(ITEM_ID, CATEGORY_ID)
            .collect()
        )
        return cls(tastes, dict(items.iter_rows()), **probabilities)

    def respond(self, user: str, items: Sequence[str], rng: np.random.Generator) -> list[tuple[str, str]]:
        """The shopper's (item, event type) answers to one list, in order."""
        taste = self.tastes.get(user, {})
        events = []
        for position, item in enumerate(items, start=1):
            p = self.click_base * taste.get(self.category_of.get(item, ""), 0.0) / np.sqrt(position)
            if rng.random() < p:
                events.append((item, "view"))
                if rng.random() < self.p_cart:
                    events.append((item, "add_to_cart"))
                    if rng.random() < self.p_purchase:
                        events.append((item, "purchase"))
        return events


@dataclass
class SimulationResult:
    requests: int = 0
    events_posted: int = 0
    by_variant: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "events_posted": self.events_posted, "by_variant": self.by_variant}


def simulate(
    client: httpx.Client,
    base_url: str,
    model: ShopperModel,
    users: Sequence[str],
    *,
    requests_per_user: int = 3,
    k: int = 10,
    seed: int = 0,
    headers: Mapping[str, str] | None = None,
) -> SimulationResult:
    """Each of ``users`` asks for ``requests_per_user`` lists and answers each; returns what was done.

    ``client`` is an ``httpx.Client`` (FastAPI's ``TestClient`` is one), ``base_url`` the service's
    address ("" for a ``TestClient``).

    Events are posted with the list's ``request_id``, stamped with the wall clock when posted (each
    at least a millisecond after the one before, so after the list was served); any answer other than
    200 / 202 raises. ``headers`` go with every request; by default the API key of ``RECS_API_KEY``
    (``Authorization: Bearer``) when it is set, for a service with authentication on.
    """
    if headers is None:
        from recs_pipeline.serving.auth import client_headers

        headers = client_headers()
    rng = np.random.default_rng(seed)
    clock = datetime.now(UTC)
    result = SimulationResult()
    for user in users:
        for _ in range(requests_per_user):
            answer = client.get(f"{base_url}/recommendations/{quote(user, safe='')}", params={"k": k}, headers=headers)
            if answer.status_code != 200:
                raise RuntimeError(f"GET /recommendations/{user} answered {answer.status_code}: {answer.text[:300]}")
            body = answer.json()
            result.requests += 1
            counts = result.by_variant.setdefault(str(body.get("variant")), {"requests": 0, "events": 0})
            counts["requests"] += 1
            shown = [item["item_id"] for item in body["items"]]
            responses = model.respond(user, shown, rng)
            if not responses:
                continue
            events = []
            for item, event_type in responses:
                clock = max(datetime.now(UTC), clock + timedelta(milliseconds=1))
                events.append(
                    {
                        "user_id": user,
                        "item_id": item,
                        "event_type": event_type,
                        "ts": clock.isoformat(),
                        "request_id": body["request_id"],
                    }
                )
            posted = client.post(f"{base_url}/events", json={"events": events}, headers=headers)
            if posted.status_code != 202:
                raise RuntimeError(f"POST /events for {user} answered {posted.status_code}: {posted.text[:300]}")
            result.events_posted += len(events)
            counts["events"] += len(events)
    return result
