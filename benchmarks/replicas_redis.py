"""Several `recs serve` replicas on one Redis online store: GET and POST load, split over the replicas.

    uv run --frozen python benchmarks/replicas_redis.py --home /tmp/bench-redis --out /tmp/replicas-redis.json
    uv run --frozen python benchmarks/serving_load.py --profile redis --home /tmp/bench-redis --drop-home --out /dev/null

The home is a production-profile home as ``serving_load.py --profile redis`` prepares it (``--home DIR``
is used as it is when it holds a champion, else ``recs run --events N`` prepares it there; without
``--home`` a temp home is prepared and dropped at the end with its Feast project's Redis keys and
registry rows). Every layout in ``--layouts`` (``RxW``: R replicas of ``recs serve --workers W``, each
on its own loopback port, all on that one home: one Redis project, one models folder, one landing
zone, one keys file, one write-limits file) is started in turn and measured at each of ``--rates``.

The load comes from this process, a separate client: ``serving_load.py``'s open-loop generator
(asyncio, raw keep-alive HTTP/1.1, latency from each request's due time), one loop per replica at
``rate / R`` req/s, so the replicas share the rate as behind a round-robin balancer. A share
``--post-share`` of each replica's requests are ``POST /events`` of one view each (a known item, for
a user of the same request sequence, stamped when the run is built); the others are ``GET
/recommendations/{user}?k=K`` with ``serving_load.py``'s users (10 % unknown) and its candidate limits.
Reported per rate: throughput, p50/p95/p99 latency and errors of each kind of request (GET answers 200,
POST answers 202; a 429 or a timeout is an error), GET figures per replica, CPU used by the replicas, by
this generator and by Redis (its ``INFO`` CPU counters) and the Redis commands a second.

With more than one replica, ``--cross-repeats`` then posts one view for each of N brand-new users to
replica 1 and polls ``GET`` on replica 2 until the answer is personal for the posted item (items as
``freshness_post.py`` picks them), while the generator carries ``--cross-rate`` req/s: a session
written by one replica, read by another through Redis.

The service needs an API key on this profile: ``RECS_API_KEY`` when set, else a key ``bench-replicas-<hex>``
(events:write, recommendations:read) is added to the home's keys file for the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import polars as pl
import psutil
import redis
from serving_load import (
    Sample,
    Service,
    _key_lines,
    _new_loop,
    _open_loop,
    _pct,
    busy_cores,
    cpu_jiffies,
    drop_home,
    machine,
    prepare_home,
    recs_request,
    request_users,
    start_service,
    summarise,
    summarise_read_backs,
    wait_quiet,
)

from recs_pipeline.serving.auth import AuthSettings, client_headers, new_key
from recs_pipeline.settings import Settings

# serving_load.py's candidate limits (about 300 ranked candidates) with the content source, which the
# service now requires to be named (RECS_SERVE_LIMITS names every source)
LIMITS = "als=300,catpop=25,content=10,covis=50,trending=25,popular=25,recent=30,usercf=0"


def parse_layouts(text: str) -> list[tuple[int, int]]:
    """``"1x2,2x1"`` -> [(1, 2), (2, 1)]: replicas x workers per replica."""
    layouts = []
    for part in text.split(","):
        replicas, _, workers = part.strip().lower().partition("x")
        if not (replicas.isdigit() and workers.isdigit()) or int(replicas) < 1 or int(workers) < 1:
            raise click.BadParameter(f"{part!r} is not REPLICASxWORKERS (for example 2x1)", param_hint="--layouts")
        layouts.append((int(replicas), int(workers)))
    return layouts


def ensure_key(settings: Settings) -> None:
    """``RECS_API_KEY`` for this process (the generator's header) and the replicas' keys file."""
    if os.environ.get("RECS_API_KEY"):
        return
    path = AuthSettings.from_env().keys_path(settings)
    name = f"bench-replicas-{uuid.uuid4().hex[:8]}"  # a key is shown once: each run makes its own
    os.environ["RECS_API_KEY"] = new_key(path, name=name, scopes="events:write,recommendations:read")


def redis_of(settings: Settings) -> redis.Redis:
    """A client of the home's Redis (Feast's ``host:port[,password=...,db=N]`` connection string)."""
    host_port, *params = settings.redis_url.split(",")
    host, _, port = host_port.partition(":")
    kwargs: dict[str, Any] = dict(p.split("=", 1) for p in params)
    if "db" in kwargs:
        kwargs["db"] = int(kwargs["db"])
    return redis.Redis(host=host, port=int(port or 6379), socket_connect_timeout=3, **kwargs)


def redis_counters(client: redis.Redis) -> tuple[float, int]:
    """(CPU seconds the Redis server used, commands it processed) since it started."""
    cpu = client.info("cpu")
    stats = client.info("stats")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), int(stats["total_commands_processed"])


def post_request(user_id: str, item_id: str, ts: str, host: str) -> bytes:
    body = json.dumps({"events": [{"user_id": user_id, "item_id": item_id, "event_type": "view", "ts": ts}]})
    head = (
        f"POST /events HTTP/1.1\r\nHost: {host}\r\n{_key_lines()}Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body.encode()


def known_items(settings: Settings) -> list[str]:
    return pl.read_parquet(settings.features_dir / "item_features.parquet", columns=["item_id"])["item_id"].to_list()


def is_post(i: int, share: float) -> bool:
    """Whether request ``i`` of a stream is a POST: evenly spread, ``share`` of them."""
    return int((i + 1) * share) > int(i * share)


def build_streams(
    services: list[Service],
    users: list[str],
    items: list[str],
    rate: float,
    *,
    duration: float,
    warmup: float,
    k: int,
    post_share: float,
    offset: int,
) -> tuple[list[list[tuple[str, bytes]]], list[list[bool]]]:
    """Each replica's requests in order, and which of them are POSTs."""
    n = int(round(rate / len(services) * (warmup + duration)))
    ts = datetime.now(UTC).isoformat()
    streams, posts = [], []
    for s, service in enumerate(services):
        host = f"127.0.0.1:{service.port}"
        stream, kinds = [], []
        for i in range(n):
            j = offset + i * len(services) + s  # the replicas take turns along the user sequence
            user = users[j % len(users)]
            post = is_post(i, post_share)
            if post:
                stream.append((user, post_request(user, items[(j * 7919) % len(items)], ts, host)))
            else:
                stream.append((user, recs_request(user, host, k)))
            kinds.append(post)
        streams.append(stream)
        posts.append(kinds)
    return streams, posts


def summarise_posts(samples: list[Sample], start: float) -> dict[str, Any]:
    """POST figures of the measured window (requests due from ``start``): 202 is a success."""
    measured = sorted((s for s in samples if s.due >= start), key=lambda s: s.due)
    ok = [s.latency for s in measured if s.error is None and s.status == 202 and s.latency is not None]
    errors: dict[str, int] = {}
    for s in measured:
        if s.error is not None or s.status != 202:
            key = s.error.split(":")[0] if s.error else f"HTTP {s.status}"
            errors[key] = errors.get(key, 0) + 1
    completed_at = [s.due + s.latency for s in measured if s.latency is not None]
    return {
        "requests": len(measured),
        "ok": len(ok),
        "completed_rate": (
            round(len(ok) / (max(completed_at) - measured[0].due), 1) if completed_at and len(ok) > 1 else None
        ),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "latency_ms": {**_pct(ok, 1000), "max": round(max(ok) * 1000, 3) if ok else None},
    }


def run_mixed(
    services: list[Service],
    settings: Settings,
    users: list[str],
    items: list[str],
    rate: float,
    *,
    duration: float,
    warmup: float,
    k: int,
    post_share: float,
    offset: int = 0,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """One open-loop run at ``rate`` req/s in all, ``rate / R`` to each replica at the same time."""
    streams, posts = build_streams(
        services, users, items, rate, duration=duration, warmup=warmup, k=k, post_share=post_share, offset=offset
    )
    share = rate / len(services)

    async def all_replicas() -> list[tuple[list[Sample], dict[str, Any]]]:
        loops = [
            _open_loop(svc.port, stream, share, timeout=timeout, max_conns=2000, abort_backlog_s=3.0)
            for svc, stream in zip(services, streams, strict=True)
        ]
        return await asyncio.gather(*loops)

    client = redis_of(settings)
    me = psutil.Process()
    gen0, wall0, machine0 = sum(me.cpu_times()[:2]), time.perf_counter(), cpu_jiffies()
    srv0 = [svc.cpu_seconds() for svc in services]
    redis0 = redis_counters(client)
    loop = _new_loop()
    try:
        runs = loop.run_until_complete(all_replicas())
    finally:
        loop.close()
    wall = time.perf_counter() - wall0
    redis1 = redis_counters(client)
    client.close()
    busy, steal = busy_cores(machine0, cpu_jiffies())

    gets_all: list[Sample] = []
    posts_all: list[Sample] = []
    per_replica = []
    for svc, (samples, info), kinds in zip(services, runs, posts, strict=True):
        gets = [s for s, post in zip(samples, kinds, strict=False) if not post]
        sent = [s for s, post in zip(samples, kinds, strict=False) if post]
        gets_all += gets
        posts_all += sent
        replica = summarise(gets, info, share * (1 - post_share), warmup)
        per_replica.append(
            {
                "port": svc.port,
                "aborted": info["aborted"],
                "peak_connections": info["peak_connections"],
                **{x: replica[x] for x in ("requests", "completed_rate", "errors", "error_kinds", "latency_ms")},
            }
        )
    t0 = min(info["t0"] for _, info in runs)
    first = {"t0": t0, "aborted": "; ".join(i["aborted"] for _, i in runs if i["aborted"]) or None}
    first["peak_connections"] = sum(i["peak_connections"] for _, i in runs)
    get_summary = summarise(sorted(gets_all, key=lambda s: s.due), first, rate * (1 - post_share), warmup)
    service_cores = sum(svc.cpu_seconds() for svc in services) - sum(srv0)
    result = {
        "target_rate": rate,
        "post_share": post_share,
        "gets": get_summary,
        "posts": summarise_posts(posts_all, t0 + warmup),
        "per_replica_gets": per_replica,
        "service_cpu_cores": round(service_cores / wall, 2),
        "generator_cpu_cores": round((sum(me.cpu_times()[:2]) - gen0) / wall, 2),
        "redis_cpu_cores": round((redis1[0] - redis0[0]) / wall, 3),
        "redis_commands_per_s": round((redis1[1] - redis0[1]) / wall, 1),
        "steal_cores": round(steal, 2),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    result["other_cpu_cores"] = round(
        busy - result["service_cpu_cores"] - result["generator_cpu_cores"] - result["redis_cpu_cores"], 2
    )
    return result


def cross_replica_freshness(
    services: list[Service],
    settings: Settings,
    users: list[str],
    items: list[str],
    *,
    rate: float,
    repeats: int,
    k: int,
    post_share: float,
    seed: int,
    log: Any,
) -> dict[str, Any]:
    """POST a view to replica 1, GET from replica 2 until personal for it, under ``rate`` req/s of load."""
    import httpx
    from freshness_post import anchor_items, post_then_read_back

    anchors = anchor_items(settings, repeats, seed)
    run = uuid.uuid4().hex[:8]
    rows: list[dict[str, Any]] = []
    start_after, spacing = 3.0, 0.3

    def probe() -> None:
        time.sleep(start_after)
        headers = client_headers()
        with (
            httpx.Client(base_url=services[0].base, timeout=10.0, headers=headers) as writer,
            httpx.Client(base_url=services[1].base, timeout=10.0, headers=headers) as reader,
        ):
            for i, item in enumerate(anchors):
                rows.append(post_then_read_back(writer, reader, f"cross-{run}-{i}", item, k=k))
                time.sleep(spacing)

    prober = threading.Thread(target=probe, name="cross-replica-probe")
    prober.start()
    load = run_mixed(
        services,
        settings,
        users,
        items,
        rate,
        duration=start_after + repeats * (spacing + 0.1) + 3.0,
        warmup=0.0,
        k=k,
        post_share=post_share,
        offset=31337,
    )
    prober.join()
    result = {
        "rate": rate,
        **summarise_read_backs(rows, reflected_key="post_to_reflecting_get_on_other_replica_ms"),
        "load": {
            "gets": {x: load["gets"][x] for x in ("completed_rate", "errors", "latency_ms")},
            "posts": {x: load["posts"][x] for x in ("completed_rate", "errors", "latency_ms")},
        },
    }
    log(json.dumps(result))
    return result


def brief(r: dict[str, Any]) -> str:
    g, p = r["gets"], r["posts"]
    if g["aborted"]:
        return f"{r['target_rate']:.0f} req/s: overloaded, {g['aborted']}"
    return (
        f"{r['target_rate']:.0f} req/s: GET {g['completed_rate']}/s p50 {g['latency_ms']['p50']} p95 "
        f"{g['latency_ms']['p95']} p99 {g['latency_ms']['p99']} ms, errors {g['errors']}; POST "
        f"{p['completed_rate']}/s p50 {p['latency_ms']['p50']} p95 {p['latency_ms']['p95']} p99 "
        f"{p['latency_ms']['p99']} ms, errors {p['errors']} {p['error_kinds'] or ''}; service "
        f"{r['service_cpu_cores']} cores, Redis {r['redis_cpu_cores']} cores {r['redis_commands_per_s']} cmd/s"
    )


@click.command()
@click.option(
    "--home", type=click.Path(file_okay=False, path_type=Path), help="Prepared redis home (prepared here if empty)."
)
@click.option("--events", type=int, default=1_000_000, show_default=True, help="Synthetic events when preparing.")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--layouts", default="1x2,2x1", show_default=True, help="REPLICASxWORKERS, comma-separated.")
@click.option("--rates", default="100,200,300", show_default=True, help="Comma-separated req/s in all.")
@click.option("--post-share", type=float, default=0.1, show_default=True, help="Share of requests that POST.")
@click.option("--duration", type=float, default=25.0, show_default=True, help="Measured seconds per rate.")
@click.option("--warmup", type=float, default=5.0, show_default=True, help="Discarded seconds before each rate.")
@click.option("--limits", default=LIMITS, show_default=True, help="RECS_SERVE_LIMITS of the replicas.")
@click.option("--k", type=int, default=20, show_default=True)
@click.option("--users", "n_users", type=int, default=20_000, show_default=True, help="Length of the user sequence.")
@click.option("--unknown-share", type=float, default=0.1, show_default=True, help="Share of unknown user ids.")
@click.option("--cross-repeats", type=int, default=30, show_default=True, help="POST to one, GET the other; 0: skip.")
@click.option("--cross-rate", type=float, default=100.0, show_default=True, help="Load while they run.")
@click.option(
    "--max-busy-cores", type=float, default=0.3, show_default=True, help="Wait until other work uses fewer cores."
)
@click.option("--max-wait", type=float, default=120.0, show_default=True, help="Seconds to wait for that, per step.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Results JSON file.")
def main(
    home: Path | None,
    events: int,
    seed: int,
    layouts: str,
    rates: str,
    post_share: float,
    duration: float,
    warmup: float,
    limits: str,
    k: int,
    n_users: int,
    unknown_share: float,
    cross_repeats: int,
    cross_rate: float,
    max_busy_cores: float,
    max_wait: float,
    out: Path,
) -> None:
    """GET and POST load over R replicas of `recs serve` on one Redis home, for each --layouts."""

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if not 0.0 <= post_share < 1.0:
        raise click.BadParameter("must be in [0, 1)", param_hint="--post-share")
    shapes = parse_layouts(layouts)
    prepared = prepare_home(home, "redis", events, seed)
    results: dict[str, Any] = {
        "profile": "redis",
        "home": str(prepared.path),
        "feast_project": prepared.project,
        "prepare_seconds": prepared.prepare_seconds,
        "events": events if prepared.prepare_seconds is not None else None,
        "limits": limits,
        "k": k,
        "unknown_share": unknown_share,
        "post_share": post_share,
        "generator": "serving_load.py's open loop, one per replica at rate / replicas, in this process",
        "machine": machine(),
        "layouts": [],
    }
    try:
        settings = prepared.settings()
        ensure_key(settings)
        users = request_users(settings, n=n_users, unknown_share=unknown_share, seed=seed)
        items = known_items(settings)
        for replicas, workers in shapes:
            name = f"{replicas}x{workers}"
            log(f"layout {name}: {replicas} replica(s) of recs serve --workers {workers}")
            services: list[Service] = []
            layout: dict[str, Any] = {"layout": name, "replicas": replicas, "workers_per_replica": workers}
            try:
                for _ in range(replicas):
                    services.append(start_service(prepared, limits=limits, workers=workers))
                layout["ports"] = [svc.port for svc in services]
                layout["rss_mb_start"] = round(sum(svc.rss_mb() for svc in services), 1)
                run_mixed(  # first touches of every path, on every replica
                    services, settings, users, items, 50, duration=5, warmup=0, k=k, post_share=post_share, offset=999
                )
                layout["rates"] = []
                for i, rate in enumerate(float(r) for r in rates.split(",")):
                    quiet = wait_quiet(max_busy_cores, max_wait, log)
                    log(f"{name} at {rate:.0f} req/s (machine before: {quiet})")
                    r = run_mixed(
                        services,
                        settings,
                        users,
                        items,
                        rate,
                        duration=duration,
                        warmup=warmup,
                        k=k,
                        post_share=post_share,
                        offset=i * 104_729,
                    )
                    r["machine_before"] = quiet
                    layout["rates"].append(r)
                    log(f"  {brief(r)}")
                if cross_repeats and replicas > 1:
                    layout["cross_machine_before"] = wait_quiet(max_busy_cores, max_wait, log)
                    log(f"{name}: {cross_repeats} POST to replica 1, GET from replica 2, under {cross_rate:.0f} req/s")
                    layout["cross_replica_freshness"] = cross_replica_freshness(
                        services,
                        settings,
                        users,
                        items,
                        rate=cross_rate,
                        repeats=cross_repeats,
                        k=k,
                        post_share=post_share,
                        seed=seed,
                        log=log,
                    )
                layout["rss_mb_end"] = round(sum(svc.rss_mb() for svc in services), 1)
            finally:
                for svc in services:
                    svc.stop()
            results["layouts"].append(layout)
    finally:
        if prepared.temporary:
            drop_home(prepared)
    text = json.dumps(results, indent=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
