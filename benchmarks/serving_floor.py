"""The compute floor of a recommendation request: the service's own code in-process, no HTTP.

    uv run --frozen python benchmarks/serving_floor.py --home /tmp/bench-sqlite --out /tmp/floor-sqlite.json
    uv run --frozen python benchmarks/serving_floor.py --profile redis --home /tmp/bench-redis --out /tmp/floor-redis.json

For the same user sequence as ``serving_load.py`` (known users from the home's user features, 10 %
unknown ids, same seed): ``OnlineReader.read`` + ``Recommender.recommend`` one request at a time,
exactly as the request handler calls them (the read in the reader's thread pool with its timeout),
and then ``Recommender.recommend`` alone on the contexts read before. p50/p95/p99 of each, and the
mean number of ranked candidates. ``serving_load.py --floor`` runs this before its load test and
reports served p50 / floor p50.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from recs_pipeline.feast import feast_store
from recs_pipeline.models.bundle import Bundle
from recs_pipeline.models.registry import ModelRegistry
from recs_pipeline.serving.online import OnlineReader
from recs_pipeline.serving.recommender import Recommender, ServeOptions
from recs_pipeline.settings import ServeSettings, Settings


def _pct(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values) * 1000
    return {
        "p50": round(float(np.percentile(arr, 50)), 3),
        "p95": round(float(np.percentile(arr, 95)), 3),
        "p99": round(float(np.percentile(arr, 99)), 3),
        "mean": round(float(arr.mean()), 3),
    }


def measure_floor(
    settings: Settings, users: list[str], *, limits: dict[str, int], k: int, warmup: int = 200
) -> dict[str, Any]:
    """Per-request seconds of read + recommend and of recommend alone, for ``users`` in order."""
    serve = ServeSettings.from_env()
    store = feast_store.open_store(settings)
    reader = OnlineReader(store, timeout_s=serve.online_timeout_ms / 1000.0)
    reader.warm_up()
    recommender = Recommender(Bundle(ModelRegistry(settings.models_dir).load_champion()))
    options = ServeOptions(k=k, limits=limits)
    for user in users[:warmup]:
        recommender.recommend(reader.read(user), options)

    read_total, read_only, contexts, candidates = [], [], [], []
    for user in users:
        t0 = time.perf_counter()
        ctx = reader.read(user)
        t1 = time.perf_counter()
        result = recommender.recommend(ctx, options, online_ms=(t1 - t0) * 1000)
        t2 = time.perf_counter()
        read_total.append(t2 - t0)
        read_only.append(t1 - t0)
        contexts.append(ctx)
        candidates.append(result.candidates)
    recommend_only = []
    for ctx in contexts:
        t0 = time.perf_counter()
        recommender.recommend(ctx, options)
        recommend_only.append(time.perf_counter() - t0)
    reader.close()
    failed = sum(not c.online_ok for c in contexts)
    return {
        "requests": len(users),
        "read_and_recommend_ms": _pct(read_total),
        "online_read_ms": _pct(read_only),
        "recommend_only_ms": _pct(recommend_only),
        "candidates_mean": round(float(np.mean(candidates)), 1),
        "online_read_failures": failed,
        "model_version": recommender.model.version,
        "item_catalog": len(recommender.model.index),
        "als_items": len(recommender.model.sources.als.item_ids),
    }


@click.command()
@click.option("--profile", type=click.Choice(("sqlite", "redis")), default="sqlite", show_default=True)
@click.option(
    "--home", type=click.Path(file_okay=False, path_type=Path), help="Prepared home (prepared here if empty)."
)
@click.option("--events", type=int, default=1_000_000, show_default=True, help="Synthetic events when preparing.")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--requests", "n", type=int, default=3000, show_default=True)
@click.option("--unknown-share", type=float, default=0.1, show_default=True)
@click.option("--limits", default=None, help="Candidates per source (default: serving_load.py's).")
@click.option("--k", type=int, default=20, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def main(
    profile: str,
    home: Path | None,
    events: int,
    seed: int,
    n: int,
    unknown_share: float,
    limits: str | None,
    k: int,
    out: Path,
) -> None:
    """Measure the in-process floor of the recommendation request."""
    from serving_load import DEFAULT_LIMITS, drop_home, machine, prepare_home, request_users

    prepared = prepare_home(home, profile, events, seed)
    try:
        settings = prepared.settings()
        users = request_users(settings, n=20_000, unknown_share=unknown_share, seed=seed)[:n]
        result = {
            "profile": profile,
            "home": str(prepared.path),
            "limits": limits or DEFAULT_LIMITS,
            "k": k,
            "machine": machine(),
            **measure_floor(settings, users, limits=ServeSettings.parse_limits(limits or DEFAULT_LIMITS), k=k),
        }
    finally:
        if prepared.temporary:
            drop_home(prepared)
    text = json.dumps(result, indent=2)
    out.write_text(text + "\n")
    print(text)
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
