"""In-process latency of the item endpoints (issue 13): similar items, bought together, a cart.

    .venv/bin/python -m recs_pipeline.cli --home /tmp/bench/home1m run --events 1000000   # once
    .venv/bin/python benchmarks/item_endpoints.py --home /tmp/bench/home1m --out /tmp/items-1m.json

Through the service's own app (``create_app``, its middleware, routes and JSON) with FastAPI's
``TestClient``, one request at a time, no network: per endpoint, p50/p95/p99/mean milliseconds of
the whole call and of the route's own ``timings_ms.total``. Requests follow a seeded sequence:
item ids drawn from the model's item index, half weighted by popularity (what shoppers look at) and
half uniformly; carts of 1 to 5 such items, a tenth with an unknown id, a quarter with a known
user's id (one online-store read). The load average before and after is recorded: the machine is
shared.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import polars as pl
from fastapi.testclient import TestClient

from recs_pipeline.serving.app import create_app
from recs_pipeline.serving.auth import client_headers
from recs_pipeline.settings import ServeSettings, Settings


def _pct(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values)
    return {
        "p50": round(float(np.percentile(arr, 50)), 3),
        "p95": round(float(np.percentile(arr, 95)), 3),
        "p99": round(float(np.percentile(arr, 99)), 3),
        "mean": round(float(arr.mean()), 3),
    }


def request_items(index_ids: np.ndarray, popular: np.ndarray, *, n: int, seed: int) -> list[str]:
    """``n`` item ids: half from the popular list (weighted by rank, 1 / rank), half uniform over the index."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(popular) + 1)
    from_popular = popular[rng.choice(len(popular), n, p=weights / weights.sum())]
    uniform = rng.integers(0, len(index_ids), n)
    pick = rng.random(n) < 0.5
    return [str(index_ids[from_popular[i]] if pick[i] else index_ids[uniform[i]]) for i in range(n)]


def carts(items: list[str], users: list[str], *, n: int, k: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed + 1)
    out = []
    for j in range(n):
        size = int(rng.integers(1, 6))
        cart = [items[int(i)] for i in rng.integers(0, len(items), size)]
        if rng.random() < 0.1:
            cart.append(f"bench-unknown-{j}")
        body: dict[str, Any] = {"item_ids": cart, "k": k}
        if rng.random() < 0.25:
            body["user_id"] = users[int(rng.integers(0, len(users)))]
        out.append(body)
    return out


def measure(settings: Settings, *, n: int, k: int, seed: int, warmup: int) -> dict[str, Any]:
    serve = ServeSettings(online_timeout_ms=2000, reload_seconds=3600, metrics_dir=None, exposure_log=False)
    with TestClient(create_app(settings, serve), headers=client_headers()) as client:
        model = client.app.state.holder.recommender.model
        items = request_items(model.index.ids, model.sources.popular_items, n=n + warmup, seed=seed)
        users = pl.read_parquet(settings.features_dir / "user_features.parquet", columns=["user_id"])["user_id"]
        bodies = carts(items, users.unique().sort().to_list(), n=n + warmup, k=k, seed=seed)
        calls = {
            "similar": lambda j: client.get(f"/items/{items[j]}/similar", params={"k": k}),
            "bought_together": lambda j: client.get(f"/items/{items[j]}/bought-together", params={"k": k}),
            "cart": lambda j: client.post("/recommendations/cart", json=bodies[j]),
        }
        result: dict[str, Any] = {
            "model_version": model.version,
            "item_catalog": len(model.index),
            "bought_together_pairs": None if model.bought_together is None else int(model.bought_together.nnz),
            "endpoints": {},
        }
        for name, call in calls.items():
            for j in range(warmup):
                assert call(j).status_code == 200
            wall, route, fallbacks, lengths = [], [], 0, []
            for j in range(warmup, warmup + n):
                t0 = time.perf_counter()
                response = call(j)
                wall.append((time.perf_counter() - t0) * 1000)
                assert response.status_code == 200, response.text
                body = response.json()
                route.append(body["timings_ms"]["total"])
                fallbacks += bool(body["fallback"])
                lengths.append(len(body["items"]))
            result["endpoints"][name] = {
                "requests": n,
                "call_ms": _pct(wall),
                "route_ms": _pct(route),
                "fallback_share": round(fallbacks / n, 3),
                "items_mean": round(float(np.mean(lengths)), 1),
            }
    return result


@click.command()
@click.option("--home", type=click.Path(file_okay=False, exists=True, path_type=Path), required=True)
@click.option("--requests", "n", type=int, default=2000, show_default=True, help="Measured requests per endpoint.")
@click.option("--warmup", type=int, default=200, show_default=True)
@click.option("--k", type=int, default=20, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def main(home: Path, n: int, warmup: int, k: int, seed: int, out: Path) -> None:
    """Measure the item endpoints in-process on a prepared home (`recs run` done)."""
    from serving_load import machine

    load_before = os.getloadavg()
    started = time.perf_counter()
    measured = measure(Settings.from_env(home.resolve()), n=n, k=k, seed=seed, warmup=warmup)
    result = {
        "home": str(home),
        "k": k,
        "seed": seed,
        "machine": machine(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "seconds": round(time.perf_counter() - started, 1),
        **measured,
    }
    text = json.dumps(result, indent=2)
    out.write_text(text + "\n")
    print(text)
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
