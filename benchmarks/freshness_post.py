"""Event-to-recommendation freshness through the service: POST a view, poll until it shows.

    uv run --frozen python benchmarks/freshness_post.py --profile sqlite --events 1000000 --out /tmp/fresh-sqlite.json
    uv run --frozen python benchmarks/freshness_post.py --profile redis --home /tmp/bench-redis --out /tmp/fresh-redis.json

Homes and the service subprocess as in ``serving_load.py``. Each repeat takes a brand-new user id
and an item that has co-visitation neighbours in the champion (its ``covis/covis.parquet``) and
whose single view does bring one of them into the top 20 (checked first with the service's own
recommender in-process: the ranker decides, so not every such item qualifies), then, from one
start time ``t0``:

* the main thread sends ``POST /events`` (one view stamped now) and, once the 202 arrives, polls
  ``GET /recommendations/{user}`` until the answer is personal: ``no_personal_signal`` is not among
  the fallback reasons and some item's reason is ``viewed together with <item>``;
* a second thread polls the online store directly (its own Feast ``FeatureStore``, as any other
  reader would: ``get_online_features`` of ``user_session_features``) every ``--poll-ms`` from
  ``t0`` until the session's items contain the item.

Reported: p50/p95/max of the time to the 202, to the first answer without ``no_personal_signal``, to
personal recommendations as defined above and to the item being in the online session features,
with the number of GET polls needed. Target p95 <= 1 s.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import httpx
import numpy as np
import polars as pl

from recs_pipeline.feast import feast_store
from recs_pipeline.models.bundle import Bundle
from recs_pipeline.models.registry import ModelRegistry
from recs_pipeline.serving.auth import client_headers
from recs_pipeline.serving.online import UserContext
from recs_pipeline.serving.recommender import Recommender, ServeOptions

SESSION_VIEW = "user_session_features"


def anchor_items(settings: Any, n: int, seed: int) -> list[str]:
    """``n`` items whose single view makes the champion recommend "viewed together with <item>".

    Drawn at random among items with co-visitation neighbours, each checked by running the
    service's own recommender on a session holding just that view (the ranker decides whether
    any neighbour reaches the top 20, so not every item qualifies).
    """
    champion = ModelRegistry(settings.models_dir).load_champion()
    recommender = Recommender(Bundle(champion))
    covis = pl.read_parquet(Path(champion.path) / "covis" / "covis.parquet", columns=["item_id"])
    items = covis["item_id"].unique().sort().to_list()
    if not items:
        raise RuntimeError(f"the champion {champion.version} has no co-visitation neighbours")
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for i in rng.permutation(len(items)):
        item = items[i]
        session = {"session_item_ids": [item], "session_event_types": ["view"], "session_event_unix": [time.time()]}
        result = recommender.recommend(UserContext(user_id="probe", session=session), ServeOptions(k=20))
        if is_personal({"fallback_reasons": result.fallbacks, "items": result.items}, item):
            chosen.append(item)
            if len(chosen) == n:
                return chosen
    raise RuntimeError(f"only {len(chosen)} items of {champion.version} give a co-visitation reason, {n} wanted")


def _pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    arr = np.asarray(values) * 1000
    return {
        "p50": round(float(np.percentile(arr, 50)), 2),
        "p95": round(float(np.percentile(arr, 95)), 2),
        "max": round(float(arr.max()), 2),
    }


def is_personal(body: dict[str, Any], item: str) -> bool:
    return "no_personal_signal" not in body["fallback_reasons"] and any(
        it["reason"] == f"viewed together with {item}" for it in body["items"]
    )


def post_then_read_back(
    writer: httpx.Client, reader: httpx.Client, user: str, item: str, *, k: int, give_up_s: float = 5.0
) -> dict[str, Any]:
    """POST one view of ``item`` by ``user`` to ``writer``, then GET ``reader``'s answer until it is
    personal for the item (:func:`is_personal`), for at most ``give_up_s``: the POST's status and
    seconds, the seconds from the POST's start to the reflecting GET's end (None: not within
    ``give_up_s``) and the GETs it took. ``writer`` and ``reader`` may be one client."""
    event = {"user_id": user, "item_id": item, "event_type": "view", "ts": datetime.now(UTC).isoformat()}
    t0 = time.perf_counter()
    posted = writer.post("/events", json={"events": [event]})
    row: dict[str, Any] = {"status": posted.status_code, "post_s": time.perf_counter() - t0, "reflected_s": None}
    row["gets"] = 0
    while posted.status_code == 202 and time.perf_counter() - t0 < give_up_s:
        got = reader.get(f"/recommendations/{quote(user, safe='')}", params={"k": k})
        row["gets"] += 1
        if got.status_code == 200 and is_personal(got.json(), item):
            row["reflected_s"] = time.perf_counter() - t0
            break
    return row


def one_repeat(
    client: httpx.Client, store: Any, user: str, item: str, *, timeout_s: float, poll_s: float
) -> dict[str, Any]:
    """One POST and the two polls; seconds from ``t0`` (None when not seen within ``timeout_s``)."""
    seen_online: list[float | None] = [None]
    online_polls = [0]
    stop = threading.Event()
    t0 = time.perf_counter()

    def poll_store() -> None:
        while not stop.is_set() and time.perf_counter() - t0 < timeout_s:
            values = store.get_online_features(
                features=[f"{SESSION_VIEW}:session_item_ids"], entity_rows=[{"user_id": user}]
            ).to_dict()
            online_polls[0] += 1
            if item in (values["session_item_ids"][0] or []):
                seen_online[0] = time.perf_counter() - t0
                return
            time.sleep(poll_s)

    poller = threading.Thread(target=poll_store, daemon=True)
    poller.start()
    event = {
        "user_id": user,
        "item_id": item,
        "event_type": "view",
        "ts": datetime.now(UTC).isoformat(),
        "session_id": f"{user}-s1",
    }
    response = client.post("/events", json={"events": [event]})
    posted = time.perf_counter() - t0
    if response.status_code != 202:
        stop.set()
        raise RuntimeError(f"POST /events answered {response.status_code}: {response.text}")
    personal, signal, polls, last = None, None, 0, None
    while time.perf_counter() - t0 < timeout_s:
        r = client.get(f"/recommendations/{user}", params={"k": 20})
        polls += 1
        last = r.json()
        if r.status_code == 200 and signal is None and "no_personal_signal" not in last["fallback_reasons"]:
            signal = time.perf_counter() - t0
        if r.status_code == 200 and is_personal(last, item):
            personal = time.perf_counter() - t0
            break
        time.sleep(poll_s)
    poller.join(timeout_s)
    stop.set()
    return {
        "user": user,
        "item": item,
        "post_s": posted,
        "personal_s": personal,
        "personal_signal_s": signal,
        "get_polls": polls,
        "online_s": seen_online[0],
        "online_polls": online_polls[0],
        "last_fallback_reasons": None if personal else (last or {}).get("fallback_reasons"),
    }


@click.command()
@click.option("--profile", type=click.Choice(("sqlite", "redis")), default="sqlite", show_default=True)
@click.option(
    "--home", type=click.Path(file_okay=False, path_type=Path), help="Prepared home (prepared here if empty)."
)
@click.option("--events", type=int, default=1_000_000, show_default=True, help="Synthetic events when preparing.")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--repeats", type=int, default=50, show_default=True)
@click.option("--timeout", "timeout_s", type=float, default=10.0, show_default=True, help="Give up a repeat after.")
@click.option("--poll-ms", type=float, default=2.0, show_default=True, help="Pause between polls.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def main(
    profile: str,
    home: Path | None,
    events: int,
    seed: int,
    repeats: int,
    timeout_s: float,
    poll_ms: float,
    out: Path,
) -> None:
    """Time from POST /events to personal recommendations and to the online session features."""
    from serving_load import drop_home, machine, prepare_home, start_service

    prepared = prepare_home(home, profile, events, seed)
    try:
        settings = prepared.settings()
        items = anchor_items(settings, repeats, seed)
        store = feast_store.open_store(settings)
        store.get_online_features(features=[f"{SESSION_VIEW}:session_item_ids"], entity_rows=[{"user_id": "warm"}])
        service = start_service(prepared, limits=None)
        run = uuid.uuid4().hex[:8]
        rows = []
        try:
            with httpx.Client(base_url=service.base, timeout=timeout_s, headers=client_headers()) as client:
                client.get("/recommendations/warm-up", params={"k": 20})
                for i, item in enumerate(items):
                    rows.append(
                        one_repeat(client, store, f"fresh-{run}-{i}", item, timeout_s=timeout_s, poll_s=poll_ms / 1000)
                    )
        finally:
            service.stop()
        failed = [r for r in rows if r["personal_s"] is None or r["online_s"] is None]
        personal = [r["personal_s"] for r in rows if r["personal_s"] is not None]
        result = {
            "profile": profile,
            "home": str(prepared.path),
            "repeats": len(rows),
            "machine": machine(),
            "post_202_ms": _pct([r["post_s"] for r in rows]),
            "to_personal_recommendations_ms": _pct(personal),
            "to_no_fallback_ms": _pct([r["personal_signal_s"] for r in rows if r["personal_signal_s"] is not None]),
            "to_online_session_features_ms": _pct([r["online_s"] for r in rows if r["online_s"] is not None]),
            "get_polls_median": float(np.median([r["get_polls"] for r in rows])),
            "not_seen_within_timeout": len(failed),
            "failures": failed[:5],
            "target_p95_ms": 1000,
            "target_met": not failed and float(np.percentile(personal, 95)) <= 1.0,
        }
    finally:
        if prepared.temporary:
            drop_home(prepared)
    text = json.dumps(result, indent=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
