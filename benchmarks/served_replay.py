"""Evaluate what is served: replay the test window through the real service (``recs serve``).

    uv run --frozen python benchmarks/served_replay.py                       # 200k synthetic events, seed 7
    uv run --frozen python benchmarks/served_replay.py --source otto --users 0
    uv run --frozen python benchmarks/served_replay.py --home /tmp/replay --out /tmp/served-replay.json

The offline evaluation ranks with batch code at each fold's cutoff; this judges the serving path
(online read, session merge of posted events, ALS fold-in, consumed-items filter, popular fill-up,
the compiled ranker) through HTTP:

1. **Full home** (``<home>/full``): ``recs run`` on all the data gives the split (``training/split.json``:
   t1 < t2 < t3 < end) and the batch evaluation (``reports/evaluation.json``).
2. **Replay home "as of t3"** (``<home>/replay``): the full home's ingested events with ``ts < t3`` and
   item versions with ``updated_at < t3`` (read from its DuckDB with their event ids and sessions, so
   the event contract is kept) are landed through ``recs_pipeline.data.landing.land_frame``, then
   ``recs run --no-land`` there: the champion is the refit on everything before t3 and the online
   store holds the features as of then. When the promotion gate refuses that challenger (no champion:
   nothing would have been served; the small real samples), the command stops, or with
   ``--serve-challenger`` promotes it through the registry and reports ``promoted_by_replay``. Before anything is replayed the script asserts that nothing
   at or after t3 reached it (its DuckDB's newest event and item version, the served bundle's
   ``served_sources_trained_before``, the landing zone). Its online store is saved once
   (``online_store.pristine.db``) and restored before every arm's pass, so ``--home`` can be reused.
3. **Replay** through ``recs serve --workers 1`` (a subprocess, its process group stopped at the end,
   also on errors) with httpx, for the users of the batch test table (test fold truth: history before
   t3 and events in [t3, end); a seeded sample of ``--users`` of them), each user's test-window events in
   event-time order (users side by side on ``--concurrency`` connections; a user's requests in order).
   One pass per *freshness arm* (``--arms``), each on a fresh service over the pristine online store.
   An arm is a rule for when an event becomes visible to the service, ``visible_at(ts)``: at the time
   ``t_i`` of the user's event i, ``GET /recommendations/{user}?k=20``, and before it ``POST /events``
   (one body, oldest first) every earlier event of the user not posted yet whose ``visible_at <= t_i``
   (each with its event id, session id and its own, old, event time). The arms:

   - ``pushes``: ``visible_at = ts`` (session pushes: the previous event is posted before the next GET,
     the requests of the former pass *on*, which posted each event right after the GET before it,
     without that pass's last POST after a user's last GET, which no list could see: the same lists);
   - ``sensor``: ``ts + SENSOR_LATENCY_S`` (10 s, the sensor-triggered refresh's measured p95);
   - ``hourly``: the next full hour (UTC) at or after ``ts``;
   - ``nightly``: the next UTC midnight at or after ``ts``;
   - ``none``: never (the features as of the cutoff t3 only; the former pass *off*). Always replayed.

   What the refresh arms emulate, honestly: they deliver the events through the same session path
   (``POST /events``) with the arm's delay, so they emulate the history part of a refresh (the
   recommendation merges the live session with the profile), and less of it than a real refresh: the
   live session holds the trailing run of a user's events with gaps of at most 30 min (at most 50,
   ``serving.session``), so the events of an earlier session drop out of it, where a real refresh would
   have written them into the profile (reported per arm: the mean number of posted events and of those
   the session holds). In no arm are the user counters a real refresh also recomputes (``views_1h``
   etc. in ``user_features``), the profile, the item features or the model updated: all stay as of t3.
   ``POST /events`` refuses only far-future times (``sql/validate_events.sql``); a past time is
   accepted and placed in the session by event time, and the recommendation measures ages from the
   profile's snapshot time and the newest session event, not the wall clock
   (``recommender.merge_history``), so the replay needs no clock tricks.
4. **Metrics** with ``recs_pipeline.models.metrics``: (a) *at the cutoff*: each user's first list of the
   ``none`` arm against the whole test-window truth (``protocol.labels``), side by side with the batch report's
   repeat-aware ``als+lightgbm`` row and with the batch lists re-scored for the same users (the
   evaluated ranker on the test fold's rows, as the ``evaluation`` asset ranks), plus their paired
   difference, split in two by a third list (the batch rows ranked by the *served* ranker): the
   ranker's part (refit vs evaluated ranker) and the serving path's part (refitted sources, online
   profile, fold-in, filters, fill-up); (b) *next event*: each list against the item of the event that
   follows it, per user averaged over the user's requests, per arm, with ``metrics.paired_difference``
   over users of every arm against ``none`` and against ``nightly`` and the relative changes, split by
   whether the next event repeats an item the user touched before, and how often the item of the
   previous event is in the list.

Prints one JSON object (and writes it to ``--out``). Record results in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import duckdb
import httpx
import numpy as np
import polars as pl

from recs_pipeline.data import landing
from recs_pipeline.data.contract import (
    EVENT_COLUMNS,
    EVENT_TYPE,
    ITEM_COLUMNS,
    ITEM_ID,
    SESSION_GAP,
    TS,
    UPDATED_AT,
    USER_ID,
)
from recs_pipeline.models import metrics, ranking
from recs_pipeline.models.protocol import RELEVANCE, TemporalSplit, history, labels
from recs_pipeline.models.registry import ModelRegistry
from recs_pipeline.models.training import item_popularity
from recs_pipeline.models.workspace import RetrainWorkspace
from recs_pipeline.serving.auth import client_headers
from recs_pipeline.serving.session import MAX_SESSION_EVENTS
from recs_pipeline.settings import Settings

K = 20
KS = (10, 20)
METHOD = "als+lightgbm"
TABLE_METRICS = ("ndcg@20", "recall@20", "precision@20", "hitrate@20", "ndcg@10", "recall@10")
NEXT_METRICS = ("ndcg@20", "recall@20", "hitrate@20", "ndcg@10", "recall@10")
SOURCES = ("synthetic", "taobao", "retailrocket", "otto")
PRISTINE = "online_store.pristine.db"
REPLAY_INFO = "replay.json"  # what preparing the replay home did (landed rows, gate verdict), for reuse
KEY_SEP = "\x1f"  # user id + request number: one "user" per request for the next-event metrics
RECS_PATH_VARS = ("RECS_LANDING_DIR", "RECS_DUCKDB_PATH", "RECS_FEATURE_REPO", "RECS_FEAST_YAML", "RECS_SERVE_LIMITS")


# -- homes ---------------------------------------------------------------------------------------


def home_env(path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RECS_PATH_VARS}
    return {**env, "RECS_HOME": str(path), "DAGSTER_HOME": str(path / "dagster")}


def recs(path: Path, *args: str) -> dict[str, Any]:
    """``recs --home PATH ARGS`` as a subprocess; its JSON summary (exits with the tail of stderr on failure)."""
    cmd = [sys.executable, "-m", "recs_pipeline.cli", "--home", str(path), *args]
    proc = subprocess.run(cmd, env=home_env(path), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[3:])} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout[proc.stdout.index("{") :])


def champion_of(path: Path) -> str | None:
    """The home's champion version (None without one), from its registry."""
    if not (path / "models" / "registry.json").exists():
        return None
    champion = ModelRegistry(Settings.from_env(path).models_dir).champion()
    return None if champion is None else champion.version


def utc(db: duckdb.DuckDBPyConnection, query: str, params: list[Any], column: str) -> pl.DataFrame:
    """A query's result as a polars frame, ``column`` in UTC whatever the session's time zone."""
    frame = pl.from_arrow(db.sql(query, params=params).to_arrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame.with_columns(pl.col(column).dt.convert_time_zone("UTC"))


def prepare_full(path: Path, *, source: str, events: int, seed: int) -> float | None:
    """``recs run`` on all the data unless the home already has its evaluation; returns its seconds."""
    if (path / "reports" / "evaluation.json").exists() and (path / "training" / "split.json").exists():
        return None
    args = ["run", "--source", source] + (
        ["--events", str(events), "--seed", str(seed)] if source == "synthetic" else []
    )
    started = time.perf_counter()
    recs(path, *args)
    return time.perf_counter() - started


def prepare_replay(
    full: Settings, path: Path, t3: datetime, *, serve_challenger: bool
) -> tuple[float | None, dict[str, Any]]:
    """The replay home as of ``t3``: the full home's events and item versions before t3, landed, then ``recs run``.

    Returns the run's seconds (None when the prepared home is reused) and what was done (``REPLAY_INFO``).
    When the promotion gate refuses the replay home's challenger (no champion: nothing would have been
    served), ``serve_challenger`` promotes it through the registry so that the serving path can be judged
    anyway, and says so; without it the command stops.
    """
    info_path = path / REPLAY_INFO
    if champion_of(path) is not None and (path / PRISTINE).exists() and info_path.exists():
        return None, json.loads(info_path.read_text())
    if path.exists():
        shutil.rmtree(path)
    replay = Settings.from_env(path)
    with duckdb.connect(str(full.duckdb_path), read_only=True) as db:
        events = utc(db, f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE ts < ? ORDER BY ts, event_id", [t3], TS)
        items = utc(
            db,
            f"SELECT {', '.join(ITEM_COLUMNS)} FROM item_versions WHERE updated_at < ? ORDER BY updated_at, item_id",
            [t3],
            UPDATED_AT,
        )
    landing.land_frame(events, replay.landing_dir, "events", "replay-before-t3.parquet")
    landing.land_frame(items, replay.landing_dir, "items", "replay-before-t3.parquet")
    started = time.perf_counter()
    summary = recs(path, "run", "--no-land")
    seconds = time.perf_counter() - started
    info: dict[str, Any] = {
        "landed": {"events": events.height, "item_versions": items.height},
        "promotion_gate": summary.get("promotion_gate"),
        "promoted_by_replay": False,
    }
    if champion_of(path) is None:
        registry = ModelRegistry(replay.models_dir)
        refused = registry.challengers()
        if not serve_challenger or not refused:
            sys.exit(
                f"the replay home {path} has no champion: the promotion gate refused its challenger "
                f"({summary.get('promotion_gate')}), so nothing would have been served as of t3; "
                "--serve-challenger serves it anyway (reported as promoted_by_replay)"
            )
        registry.promote(refused[-1].version, reason="served_replay.py --serve-challenger: the gate refused it")
        info["promoted_by_replay"] = True
    shutil.copyfile(replay.feast_dir / "online_store.db", path / PRISTINE)
    info_path.write_text(json.dumps(info, indent=2))
    return seconds, info


def reset_replay(replay: Settings, path: Path) -> None:
    """Undo a previous replay: the pristine online store back, the posted events' landed files removed."""
    db = replay.feast_dir / "online_store.db"
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(path / PRISTINE, db)
    for landed in (replay.landing_dir / "events").glob("api-*.jsonl"):
        landed.unlink()


def assert_no_leak(replay: Settings, t3: datetime, champion: str) -> dict[str, str | None]:
    """Fail unless nothing at or after t3 is in the replay home (DuckDB, served bundle, landing zone)."""
    with duckdb.connect(str(replay.duckdb_path), read_only=True) as db:
        newest_event, newest_item = db.sql(
            "SELECT (SELECT max(ts) FROM events), (SELECT max(updated_at) FROM item_versions)"
        ).fetchall()[0]
    manifest = json.loads((replay.models_dir / "versions" / champion / "manifest.json").read_text())
    trained_before = datetime.fromisoformat(manifest["served_sources_trained_before"])
    posted = sorted(p.name for p in (replay.landing_dir / "events").glob("api-*"))
    problems = [
        f"{what} {value} is not before t3 {t3}"
        for what, value in (("newest event", newest_event), ("newest item version", newest_item))
        if value is not None and value >= t3
    ]
    if trained_before > t3:
        problems.append(f"the served sources were trained on events up to {trained_before}, after t3 {t3}")
    if posted:
        problems.append(f"posted events are in the landing zone: {posted[:3]}")
    if problems:
        raise AssertionError("the replay home is not as of t3: " + "; ".join(problems))
    return {
        "newest_event": None if newest_event is None else str(newest_event),
        "newest_item_version": None if newest_item is None else str(newest_item),
        "served_sources_trained_before": trained_before.isoformat(),
        "t3": t3.isoformat(),
    }


# -- the service ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def service(path: Path) -> Iterator[str]:
    """``recs serve --workers 1`` on a free loopback port in its own process group; yields the base URL
    once ``/healthz`` and ``/readyz`` answer 200; the group is stopped on exit, errors included."""
    port = free_port()
    cmd = [sys.executable, "-m", "recs_pipeline.cli", "--home", str(path), "serve"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log_path = path / f"serve-replay-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=home_env(path), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        ready = False
        while not ready:
            if proc.poll() is not None:
                raise RuntimeError(f"recs serve exited ({proc.returncode}); its log:\n{log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"recs serve not ready within 180 s; its log:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                ready = all(httpx.get(f"{base}{p}", timeout=2).status_code == 200 for p in ("/healthz", "/readyz"))
            time.sleep(0.3)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- the replay ----------------------------------------------------------------------------------

# The freshness arms, earliest visibility first: when an event of the test window becomes visible to the
# service (``visible_at``). ``none`` is always replayed: the cutoff figures and the comparisons need it.
ARMS = ("pushes", "sensor", "hourly", "nightly", "none")
# The sensor-triggered online refresh's measured p95 (docs/BENCHMARKS.md, "Freshness", after afc580f, quiet:
# 12 files p50 7.06 / p95 9.59 s; 20 files p50 7.62 / p95 10.13 s), rounded to 10 s.
SENSOR_LATENCY_S = 10.0
ARM_RULES = {
    "pushes": "visible at its own time (session push: posted before the user's next GET)",
    "sensor": f"visible {SENSOR_LATENCY_S:g} s after its time (the sensor refresh's measured p95)",
    "hourly": "visible at the next full hour (UTC) at or after its time",
    "nightly": "visible at the next UTC midnight at or after its time",
    "none": "never visible (the features as of the cutoff t3 only)",
}


def visible_at(arm: str, ts: datetime) -> datetime | None:
    """When an event at ``ts`` (timezone-aware) becomes visible to the service in ``arm``; None = never.

    Every rule is non-decreasing in ``ts``, so of a user's time-ordered events the visible ones are a prefix.
    """
    if ts.tzinfo is None:
        raise ValueError(f"visible_at needs a timezone-aware time, got {ts!r}")
    if arm == "none":
        return None
    if arm == "pushes":
        return ts
    if arm == "sensor":
        return ts + timedelta(seconds=SENSOR_LATENCY_S)
    at = ts.astimezone(UTC)
    if arm == "hourly":
        floor, step = at.replace(minute=0, second=0, microsecond=0), timedelta(hours=1)
    elif arm == "nightly":
        floor, step = at.replace(hour=0, minute=0, second=0, microsecond=0), timedelta(days=1)
    else:
        raise ValueError(f"unknown arm {arm!r} (one of {', '.join(ARMS)})")
    return floor if floor == at else floor + step


def session_kept(times: list[float]) -> int:
    """How many of a user's posted events (unix seconds, oldest first) the live session holds: the
    trailing run with gaps of at most ``SESSION_GAP``, at most ``MAX_SESSION_EVENTS`` (``update_session``)."""
    if not times:
        return 0
    gap, start = SESSION_GAP.total_seconds(), len(times) - 1
    while start > 0 and times[start] - times[start - 1] <= gap:
        start -= 1
    return min(len(times) - start, MAX_SESSION_EVENTS)


@dataclass
class Pass:
    """One arm's answers: per request (user, request number) the list, and what the service said."""

    arm: str
    lists: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    posted_before: dict[tuple[str, int], int] = field(default_factory=dict)  # the user's events posted by then
    in_session: dict[tuple[str, int], int] = field(default_factory=dict)  # of which the live session holds
    fallbacks: dict[str, int] = field(default_factory=dict)
    candidates: list[int] = field(default_factory=list)
    versions: set[str] = field(default_factory=set)
    posts: int = 0  # POST /events requests
    posted: int = 0  # events accepted by them (their answers' ``accepted``)
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _event(row: dict[str, Any]) -> dict[str, Any]:
    event = {c: row[c] for c in EVENT_COLUMNS if row.get(c) is not None}
    event[TS] = row[TS].isoformat()
    return event


def replay_user(client: httpx.Client, base: str, user: str, events: list[dict[str, Any]], *, out: Pass) -> None:
    """GET the user's top-k at the time of each of the user's test-window events; before each GET, POST in one
    body (oldest first) every earlier event of the user not posted yet that is visible by then in ``out.arm``.

    In ``pushes`` that is the previous event alone: the requests of the former pass *on* (GET, then POST that
    event) in the same order, without its last POST after the user's last GET, which no list could see.
    """
    url = f"{base}/recommendations/{quote(user, safe='')}"
    visible = [visible_at(out.arm, row[TS]) for row in events]
    unix = [row[TS].timestamp() for row in events]
    sent = 0  # the user's events posted so far: a prefix, every rule being non-decreasing in time
    for i, row in enumerate(events):
        due = sent
        while due < i and (at := visible[due]) is not None and at <= row[TS]:
            due += 1
        if due > sent:
            batch = [_event(e) for e in events[sent:due]]
            p = client.post(f"{base}/events", json={"events": batch})
            answer = p.json()
            if p.status_code != 202 or answer.get("accepted") != len(batch) or answer.get("sessions_pushed") != 1:
                raise RuntimeError(
                    f"POST /events ({len(batch)} events of {user}) answered {p.status_code}: {p.text[:500]}"
                )
            with out.lock:
                out.posts += 1
                out.posted += int(answer["accepted"])
            sent = due
        r = client.get(url, params={"k": K})
        if r.status_code != 200:
            raise RuntimeError(f"GET {url} answered {r.status_code}: {r.text[:500]}")
        body = r.json()
        with out.lock:
            out.lists[(user, i)] = [it["item_id"] for it in body["items"]]
            out.posted_before[(user, i)] = sent
            out.in_session[(user, i)] = session_kept(unix[:sent])
            out.candidates.append(int(body.get("candidates", 0)))
            out.versions.add(body["model_version"])
            for reason in body.get("fallback_reasons") or []:
                out.fallbacks[reason] = out.fallbacks.get(reason, 0) + 1


def run_pass(base: str, by_user: dict[str, list[dict[str, Any]]], *, arm: str, concurrency: int) -> Pass:
    out = Pass(arm)
    started = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with (
        httpx.Client(timeout=30, limits=limits, headers=client_headers()) as client,
        ThreadPoolExecutor(concurrency) as pool,
    ):
        futures = [pool.submit(replay_user, client, base, u, evs, out=out) for u, evs in by_user.items()]
        try:
            for f in futures:
                f.result()
        except BaseException:
            for f in futures:
                f.cancel()  # the users not started yet; those in flight run to their end
            raise
    out.seconds = time.perf_counter() - started
    return out


# -- metrics -------------------------------------------------------------------------------------


def ranked_frame(lists: dict[Any, list[str]]) -> pl.DataFrame:
    rows = [(str(key), item, r) for key, items in lists.items() for r, item in enumerate(items, start=1)]
    return pl.DataFrame(rows, schema={USER_ID: pl.String, ITEM_ID: pl.String, "rank": pl.Int64}, orient="row")


def compact(result: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {
        n: {k: round(v, 4) for k, v in result[n].items()} if isinstance(result[n], dict) else result[n]
        for n in names
        if n in result
    }


def mean_over_users(per_user: pl.DataFrame, names: tuple[str, ...], *, n_bootstrap: int, seed: int) -> dict[str, Any]:
    """Means of per-user values with percentile-bootstrap intervals over users (the paired bootstrap
    against zero: each resample draws users with replacement, exactly as ``metrics.evaluate`` does)."""
    zero = per_user.with_columns(pl.lit(0.0).alias(n) for n in names)
    return metrics.paired_difference(per_user, zero, metrics=names, n_bootstrap=n_bootstrap, seed=seed)


def rounded(result: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {m: {k: round(v, 4) for k, v in r.items()} for m, r in result.items()}


def agree(a: dict[str, float], b: dict[str, float]) -> bool:
    """Whether two values' intervals overlap."""
    return a["ci_low"] <= b["ci_high"] and b["ci_low"] <= a["ci_high"]


def batch_lists(ws: RetrainWorkspace, users: list[str], ranker_dir: Path) -> pl.DataFrame:
    """The top-k of ``users`` from the test fold's ranking rows scored by the ranker in ``ranker_dir``: with the
    workspace's evaluated ranker, the batch ``als+lightgbm`` lists as the ``evaluation`` asset ranks them."""
    scorer = ranking.load_scorer(ranker_dir)
    parts = []
    for path in ws.row_parts("test"):
        part = pl.read_parquet(path).filter(pl.col(USER_ID).is_in(users))
        if part.height:
            ranked = ranking.rank_top_k(part, ranking.score(scorer, part), k=K)
            parts.append(ranked.select(USER_ID, ITEM_ID, "rank"))
    return pl.concat(parts)


def next_event_truth(by_user: dict[str, list[dict[str, Any]]]) -> pl.DataFrame:
    rows = [
        (f"{u}{KEY_SEP}{i}", row[ITEM_ID], RELEVANCE.get(row[EVENT_TYPE], 1.0))
        for u, evs in by_user.items()
        for i, row in enumerate(evs)
    ]
    return pl.DataFrame(rows, schema={USER_ID: pl.String, ITEM_ID: pl.String, "relevance": pl.Float64}, orient="row")


def next_event_per_request(p: Pass, truth: pl.DataFrame) -> pl.DataFrame:
    """Per request (``user_id`` = user + request number): its list's metrics against its next event."""
    lists = {f"{u}{KEY_SEP}{i}": items for (u, i), items in p.lists.items()}
    return metrics.per_user_metrics(ranked_frame(lists), truth, truth[USER_ID], ks=KS)


def per_user_means(per_request: pl.DataFrame) -> pl.DataFrame:
    """Per user: the mean over the user's requests."""
    return (
        per_request.with_columns(pl.col(USER_ID).str.split(KEY_SEP).list.first())
        .group_by(USER_ID, maintain_order=True)
        .agg(pl.col(n).mean() for n in NEXT_METRICS)
    )


def repeats(by_user: dict[str, list[dict[str, Any]]], before: pl.DataFrame) -> pl.DataFrame:
    """Per request key: whether its next event's item is a repeat (touched by the user before t3 or
    earlier in the window)."""
    seen: dict[str, set[str]] = {}
    for u, items in before.group_by(USER_ID).agg(pl.col(ITEM_ID).unique()).iter_rows():
        seen[u] = set(items)
    rows = []
    for u, evs in by_user.items():
        touched = set(seen.get(u, ()))
        for i, row in enumerate(evs):
            rows.append((f"{u}{KEY_SEP}{i}", row[ITEM_ID] in touched))
            touched.add(row[ITEM_ID])
    return pl.DataFrame(rows, schema={USER_ID: pl.String, "repeat": pl.Boolean}, orient="row")


def by_repeat(per_request: pl.DataFrame, kinds: pl.DataFrame) -> dict[str, dict[str, float]]:
    """Per-request means of hitrate@20 and ndcg@20, split by whether the next event repeats an item."""
    split = (
        per_request.join(kinds, on=USER_ID)
        .group_by("repeat")
        .agg(pl.len().alias("requests"), pl.col("hitrate@20").mean(), pl.col("ndcg@20").mean())
    )
    return {
        ("repeat" if r["repeat"] else "new_item"): {
            "requests": r["requests"],
            "hitrate@20": round(r["hitrate@20"], 4),
            "ndcg@20": round(r["ndcg@20"], 4),
        }
        for r in split.iter_rows(named=True)
    }


def parse_arms(value: str) -> tuple[str, ...]:
    """``--arms``: a comma-separated subset of ``ARMS`` that includes ``none``, in ``ARMS`` order."""
    names = [a.strip() for a in value.split(",") if a.strip()]
    unknown = sorted(set(names) - set(ARMS))
    if unknown:
        raise click.BadParameter(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    if len(set(names)) != len(names):
        raise click.BadParameter(f"an arm is named twice in {value!r}")
    if "none" not in names:
        raise click.BadParameter("must include none: the cutoff figures and every comparison use it")
    return tuple(a for a in ARMS if a in names)


# -- the command ---------------------------------------------------------------------------------


@click.command()
@click.option("--source", type=click.Choice(SOURCES), default="synthetic", show_default=True)
@click.option("--events", type=int, default=200_000, show_default=True, help="Synthetic events.")
@click.option("--seed", type=int, default=7, show_default=True, help="Generator seed and the users' sample seed.")
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    help="Work folder (full/ and replay/ homes), reused when prepared; default a temp folder, deleted.",
)
@click.option("--users", type=int, default=300, show_default=True, help="Replayed users (seeded sample); 0 = all.")
@click.option("--concurrency", type=int, default=4, show_default=True, help="Users replayed side by side.")
@click.option("--bootstrap", type=int, default=1000, show_default=True, help="Bootstrap resamples.")
@click.option(
    "--serve-challenger",
    is_flag=True,
    help="When the gate refuses the replay home's challenger, promote it anyway to judge the serving path (reported).",
)
@click.option(
    "--arms",
    default=",".join(ARMS),
    show_default=True,
    callback=lambda ctx, param, value: parse_arms(value),
    help="Freshness arms replayed, comma-separated; none is required (the cutoff figures and comparisons use it).",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the JSON here.")
def main(
    source: str,
    events: int,
    seed: int,
    home: Path | None,
    users: int,
    concurrency: int,
    bootstrap: int,
    serve_challenger: bool,
    arms: tuple[str, ...],
    out: Path | None,
) -> None:
    started = time.perf_counter()
    load_start = os.getloadavg()
    temporary = home is None
    work = Path(tempfile.mkdtemp(prefix="recs-replay-")) if home is None else home.resolve()
    try:
        result = replay(
            work,
            source=source,
            events=events,
            seed=seed,
            cap=users,
            concurrency=concurrency,
            n_boot=bootstrap,
            serve_challenger=serve_challenger,
            arms=arms,
        )
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    result["load_average"] = {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]}
    result["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2)
    if out is not None:
        out.write_text(text + "\n")
    print(text)


def replay(
    work: Path,
    *,
    source: str,
    events: int,
    seed: int,
    cap: int,
    concurrency: int,
    n_boot: int,
    serve_challenger: bool = False,
    arms: tuple[str, ...] = ARMS,
) -> dict[str, Any]:
    """Prepare (or reuse) the homes under ``work``, replay the test window through ``recs serve``, judge it."""
    full_path, replay_path = work / "full", work / "replay"
    full_seconds = prepare_full(full_path, source=source, events=events, seed=seed)
    full = Settings.from_env(full_path)
    ws = RetrainWorkspace(full.home / "training")
    split: TemporalSplit = ws.split()
    test = split.folds["test"]
    t3 = test.cutoff
    report = json.loads((full.reports_dir / "evaluation.json").read_text())
    replay_seconds, prepared = prepare_replay(full, replay_path, t3, serve_challenger=serve_challenger)
    replay_settings = Settings.from_env(replay_path)
    champion = champion_of(replay_path)
    assert champion is not None
    reset_replay(replay_settings, replay_path)
    leak = assert_no_leak(replay_settings, t3, champion)

    # the batch test table's users, a seeded sample of them, and their test-window events in time order
    all_events = ws.events()
    truth_batch = ws.truth("test")
    table_users = sorted(truth_batch[USER_ID].unique().to_list())
    chosen = table_users
    if 0 < cap < len(table_users):
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(np.asarray(table_users), size=cap, replace=False).tolist())
    with duckdb.connect(str(full.duckdb_path), read_only=True) as db:
        window = utc(
            db,
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE ts >= ? AND ts < ? ORDER BY user_id, ts, event_id",
            [t3, test.label_end],
            TS,
        )
    window = window.filter(pl.col(USER_ID).is_in(chosen))
    by_user: dict[str, list[dict[str, Any]]] = {u: [] for u in chosen}
    for row in window.iter_rows(named=True):
        by_user[row[USER_ID]].append(row)
    missing = [u for u, evs in by_user.items() if not evs]
    if missing:
        raise AssertionError(f"{len(missing)} test-table users have no test-window event, e.g. {missing[:3]}")

    # one pass per arm, each on a fresh service over the pristine online store (a pass's pushed sessions
    # would otherwise be seen by the next pass)
    passes: dict[str, Pass] = {}
    for arm in ("none", *(a for a in arms if a != "none")):
        reset_replay(replay_settings, replay_path)
        with service(replay_path) as base:
            passes[arm] = run_pass(base, by_user, arm=arm, concurrency=concurrency)
    reset_replay(replay_settings, replay_path)
    arms = tuple(a for a in ARMS if a in passes)
    off = passes["none"]

    # (a) at the cutoff: first lists vs the whole test-window truth, against the batch figures
    truth = labels(all_events, test).filter(pl.col(USER_ID).is_in(chosen))
    same_truth = truth.sort(USER_ID, ITEM_ID).equals(
        truth_batch.filter(pl.col(USER_ID).is_in(chosen)).sort(USER_ID, ITEM_ID)
    )
    first = ranked_frame({u: off.lists[(u, 0)] for u in chosen})
    popularity = item_popularity(all_events, test)

    def judge(ranked: pl.DataFrame) -> dict[str, Any]:
        return metrics.evaluate(
            ranked,
            truth,
            chosen,
            ks=KS,
            item_popularity=popularity,
            n_catalog_items=popularity.height,
            n_bootstrap=n_boot,
            seed=seed,
        )

    def pair(a: pl.DataFrame, b: pl.DataFrame) -> dict[str, dict[str, float]]:
        return metrics.paired_difference(
            a, b, metrics=("ndcg@20", "recall@20", "hitrate@20"), n_bootstrap=n_boot, seed=seed
        )

    served = judge(first)
    batch_ranked = batch_lists(ws, chosen, ws.ranker_dir)
    batch = judge(batch_ranked)
    # the batch rows (sources fitted before t3 on the full home's folds, offline features) ranked by the served
    # (refitted) ranker: splits the gap into the ranker's part and the serving path's part
    bundle_dir = replay_settings.models_dir / "versions" / champion
    mixed_ranked = batch_lists(ws, chosen, bundle_dir)
    mixed = judge(mixed_ranked)
    per_first, per_batch, per_mixed = (
        metrics.per_user_metrics(r, truth, chosen, ks=KS) for r in (first, batch_ranked, mixed_ranked)
    )
    paired, paired_ranker, paired_path = (
        pair(per_first, per_batch),
        pair(per_mixed, per_batch),
        pair(per_first, per_mixed),
    )
    served_recipe = json.loads((bundle_dir / "manifest.json").read_text())["recipe"]
    batch_params = json.loads((ws.root / "params.json").read_text())
    overlap = (
        first.join(batch_ranked.select(USER_ID, ITEM_ID), on=[USER_ID, ITEM_ID], how="semi")
        .group_by(USER_ID)
        .len()["len"]
        .sum()
    )
    report_row = report[METHOD]
    batch_report = {
        m: {
            "value": round(report_row[m], 4),
            "ci_low": round(report_row[f"{m}_ci"][0], 4),
            "ci_high": round(report_row[f"{m}_ci"][1], 4),
        }
        for m in TABLE_METRICS
        if m in report_row
    }

    # (b) next event: each list against the next event's item, per arm, per user
    nxt = next_event_truth(by_user)
    kinds = repeats(by_user, history(all_events, test).filter(pl.col(USER_ID).is_in(chosen)))
    per_request = {a: next_event_per_request(passes[a], nxt) for a in arms}
    per_user = {a: per_user_means(per_request[a]) for a in arms}
    means = {a: mean_over_users(per_user[a], NEXT_METRICS, n_bootstrap=n_boot, seed=seed) for a in arms}
    baselines = tuple(b for b in ("none", "nightly") if b in arms)

    def minus(a: str, b: str) -> dict[str, dict[str, float]]:
        return rounded(
            metrics.paired_difference(per_user[a], per_user[b], metrics=NEXT_METRICS, n_bootstrap=n_boot, seed=seed)
        )

    def relative(a: str, b: str) -> dict[str, float | None]:
        return {
            n: round(means[a][n]["value"] / means[b][n]["value"] - 1, 4) if means[b][n]["value"] else None
            for n in NEXT_METRICS
        }

    # the item of the event before a request: is it in the request's list, and is the next event about it again?
    follow = [(u, i) for u, evs in by_user.items() for i in range(1, len(evs))]
    same_item_next = round(
        sum(by_user[u][i - 1][ITEM_ID] == by_user[u][i][ITEM_ID] for u, i in follow) / max(len(follow), 1), 4
    )
    n_requests = len(off.lists)

    next_arms = {
        a: {
            "rule": ARM_RULES[a],
            "events_posted": passes[a].posted,
            "mean_events_posted_before_a_request": round(float(np.mean(list(passes[a].posted_before.values()))), 2),
            "mean_of_them_in_the_live_session": round(float(np.mean(list(passes[a].in_session.values()))), 2),
            "mean": rounded(means[a]),
            **{f"minus_{b}_paired": minus(a, b) for b in baselines if b != a},
            **{f"relative_to_{b}": relative(a, b) for b in baselines if b != a},
            "by_next_event_kind": by_repeat(per_request[a], kinds),
            "previous_event_item_in_list": round(
                sum(by_user[u][i - 1][ITEM_ID] in passes[a].lists[(u, i)] for u, i in follow) / max(len(follow), 1),
                4,
            ),
        }
        for a in arms
    }

    return {
        "command": " ".join(["benchmarks/served_replay.py", *sys.argv[1:]]),
        "source": source,
        "events": all_events.height,
        "split": {k: getattr(split, k).isoformat() for k in ("t1", "t2", "t3", "end")},
        "replay_home": {
            **prepared,
            "champion": champion,
            "as_of_t3": leak,
            "split": json.loads((replay_settings.home / "training" / "split.json").read_text()),
            "recs_run_seconds": None if replay_seconds is None else round(replay_seconds, 1),
        },
        "full_recs_run_seconds": None if full_seconds is None else round(full_seconds, 1),
        "users_in_batch_table": len(table_users),
        "users_replayed": len(chosen),
        "test_window_events_replayed": window.height,
        "arms": list(arms),
        "requests": {
            a: {"get": len(p.lists), "post": p.posts, "events_posted": p.posted, "seconds": round(p.seconds, 1)}
            for a, p in passes.items()
        },
        "served": {
            "model_versions": sorted(set().union(*(p.versions for p in passes.values()))),
            "none_lists_differing_from_first": sum(items != off.lists[(u, 0)] for (u, _), items in off.lists.items()),
            **{
                a: {
                    "fallbacks": p.fallbacks,
                    "mean_candidates": round(float(np.mean(p.candidates)), 1),
                    "lists_differing_from_none": sum(items != off.lists[key] for key, items in p.lists.items()),
                    # before the user's first post a request is the same as in ``none``: must be 0
                    "unposted_lists_differing_from_none": sum(
                        items != off.lists[key] for key, items in p.lists.items() if p.posted_before[key] == 0
                    ),
                }
                for a, p in passes.items()
            },
        },
        "at_cutoff": {
            "truth_equals_batch_truth": same_truth,
            "served": compact(served, ("users", *TABLE_METRICS)),
            "batch_same_users": compact(batch, ("users", *TABLE_METRICS)),
            "batch_report": {"users": report.get("users"), **batch_report},
            "batch_rows_served_ranker": compact(mixed, ("users", *TABLE_METRICS)),
            "served_minus_batch_paired": rounded(paired),
            "of_which_ranker_paired": {"note": "batch rows, served ranker - batch", **rounded(paired_ranker)},
            "of_which_serving_path_paired": {"note": "served - batch rows with served ranker", **rounded(paired_path)},
            "consumed_policy": {
                "served": served_recipe["consumed"]["event_types"],
                "batch": batch_params["consumed"]["event_types"],
            },
            "limits": {"served": served_recipe["limits"], "batch": batch_params["limits"]},
            "agree_within_intervals": {
                m: {"batch_same_users": agree(served[m], batch[m]), "batch_report": agree(served[m], batch_report[m])}
                for m in ("ndcg@20", "recall@20")
            },
            "mean_overlap@20_served_batch": round(float(overlap) / len(chosen), 2),
        },
        "next_event": {
            "requests_per_arm": n_requests,
            "users": per_user["none"].height,
            "arms": next_arms,
            "repeat_share": round(kinds["repeat"].sum() / max(kinds.height, 1), 4),
            "next_event_same_item_as_previous": same_item_next,
            "note": (
                "per user, the mean over the user's requests; users weigh equally; intervals resample users. "
                "The arms other than none deliver the events through the session path (POST /events, each event "
                "with its own time) with the arm's delay: the refresh arms (sensor, hourly, nightly) emulate only the "
                "history part of a refresh, and less of it than a real refresh writes into the profile, since "
                "the live session holds only the trailing run of events with gaps of at most 30 min (at most "
                "50; mean_of_them_in_the_live_session). In no arm are the user counters a refresh recomputes "
                "(user_features: views_1h etc.), the profile, the item features or the model updated: they "
                "stay as of t3."
            ),
        },
    }


if __name__ == "__main__":
    main()
