"""Open-loop load test of the scoring service (``recs serve``), SQLite or Redis online store.

    uv run --frozen python benchmarks/serving_load.py --profile sqlite --events 1000000 --out /tmp/serving-sqlite.json
    uv run --frozen python benchmarks/serving_load.py --profile redis --home /tmp/bench-redis --out /tmp/serving-redis.json

The service runs as a subprocess (``python -m recs_pipeline.cli serve --workers N``, default 2
worker processes; CPU is summed over them) on a free loopback port against a prepared home: ``--home DIR`` is used as it is when it already holds a
champion, otherwise ``recs run --events N`` prepares it (kept afterwards); without ``--home`` a temp
home is prepared and deleted at the end. ``--profile redis`` selects the production profile
(``feature_store.production.yaml``: Redis online store, SQL registry on PostgreSQL) through a copy
that differs only in its Feast ``project`` (``recs_bench_<hex>``, written into the home), so the
benchmark never shares keys or registry rows with anyone else; ``--drop-home DIR`` removes such a
home with its Redis keys and registry rows.

The load generator runs in this process: asyncio (uvloop when installed) with raw keep-alive
HTTP/1.1 connections on asyncio streams (no HTTP client library: the generator must stay cheap on
two cores; its own CPU time is reported). Open loop: request ``i`` is due at ``t0 + i / rate``
whatever happened to earlier requests; it goes out on an idle connection (a new one is opened when
none is idle) and its latency is measured from the due time, so a slow server cannot slow the
generator down and hide its queueing (no coordinated omission). Bodies are kept and parsed only
after the run.

Each rate runs ``--warmup`` seconds (discarded) then ``--duration`` seconds (measured). Reported per
rate: achieved send and completion rates, errors (non-200, timeouts, connection errors), p50/p95/p99
of end-to-end latency, per-stage p50/p95/p99 of the responses' ``timings_ms``, the mean number of
ranked candidates, and CPU used by the service and by the generator. ``--search`` then looks for the
highest rate whose p99 stays within ``--p99-target-ms`` with no errors. ``--floor`` first measures the
same requests in-process without HTTP (``benchmarks/serving_floor.py``).

``--shadow-share S`` (> 0) measures each rate twice on the same service: as above, then with the
experiments file naming a shadow (the champion shadowing itself, for a share S of the users; the
service re-reads the file, no restart), reporting both side by side with the shadow's counters
(``recs_shadow_total``: scored, dropped).

``--freshness-repeats`` then posts one view for each of N brand-new users while the generator
carries ``--freshness-rate`` req/s and times POST -> the first GET that reflects it. Last,
``--feast-serve`` starts Feast's own feature server (``feast serve``, same workers) on the home and
runs the same rates against it, asking for the service's one lookup (feature service ``realtime_v1``,
one user): features only, no recommendation, for comparison side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import numpy as np
import polars as pl
import psutil
import yaml

from recs_pipeline.models.registry import ModelRegistry
from recs_pipeline.serving.auth import client_headers
from recs_pipeline.settings import FEATURE_REPO_DIR, ServeSettings, Settings

PRODUCTION_YAML = "feature_store.production.yaml"
BENCH_YAML = "bench-" + PRODUCTION_YAML  # the isolated copy, kept in the home it belongs to
PROFILES = ("sqlite", "redis")
# About 300 ranked candidates per request on the 1M-event synthetic home (mean of `candidates`: 302).
DEFAULT_LIMITS = "als=300,catpop=25,content=10,covis=50,trending=25,popular=25,recent=30,usercf=0"
STAGES = ("online", "retrieve", "filter", "rank", "total")
PERCENTILES = (50, 95, 99)


# -- homes ---------------------------------------------------------------------------------------


@dataclass
class Home:
    """A prepared home and the environment the service and ``recs`` need to use it."""

    path: Path
    profile: str
    env: dict[str, str]
    project: str | None = None  # the isolated Feast project of a redis home
    temporary: bool = False
    prepare_seconds: float | None = None

    def settings(self) -> Settings:
        """Settings of this home (exports its environment into this process first)."""
        for var in set(os.environ) - set(_clean_env()):
            del os.environ[var]
        os.environ.update(self.env)
        return Settings.from_env(self.path)


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("RECS_LANDING_DIR", "RECS_DUCKDB_PATH", "RECS_FEATURE_REPO", "RECS_FEAST_YAML", "RECS_SERVE_LIMITS"):
        env.pop(var, None)
    return env


def home_env(path: Path, profile: str) -> tuple[dict[str, str], str | None]:
    """The variables that point ``recs`` at ``path`` with ``profile``; writes the isolated yaml for redis."""
    env = {"RECS_HOME": str(path), "DAGSTER_HOME": str(path / "dagster")}
    if profile == "sqlite":
        return env, None
    yaml_path = path / BENCH_YAML
    if yaml_path.exists():
        project = yaml.safe_load(yaml_path.read_text())["project"]
    else:
        config = yaml.safe_load((FEATURE_REPO_DIR / PRODUCTION_YAML).read_text())
        project = config["project"] = f"recs_bench_{uuid.uuid4().hex[:12]}"
        path.mkdir(parents=True, exist_ok=True)
        yaml_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env["RECS_FEAST_YAML"] = str(yaml_path)
    env["RECS_ALLOW_INSECURE_STORES"] = "true"  # the machine's Redis and PostgreSQL have no passwords
    return env, project


def has_champion(path: Path) -> bool:
    return (path / "models").is_dir() and any((path / "models").rglob("*.json"))


def prepare_home(home: Path | None, profile: str, events: int, seed: int) -> Home:
    """Use ``home`` if it holds a champion, else run ``recs run --events`` there (or in a temp dir)."""
    temporary = home is None
    path = Path(tempfile.mkdtemp(prefix=f"recs-serve-{profile}-")) / "home" if home is None else home.resolve()
    if profile == "sqlite" and (path / BENCH_YAML).exists():
        raise click.UsageError(f"{path} was prepared with --profile redis")
    if profile == "redis" and has_champion(path) and not (path / BENCH_YAML).exists():
        raise click.UsageError(f"{path} was prepared with --profile sqlite")
    env, project = home_env(path, profile)
    result = Home(path, profile, env, project, temporary)
    if has_champion(path):
        return result
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "recs_pipeline.cli", "--home", str(path), "run", "--events", str(events)]
    cmd += ["--seed", str(seed)]
    print(f"preparing {profile} home {path}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    subprocess.run(cmd, env={**_clean_env(), **env}, check=True, stdout=sys.stderr)
    result.prepare_seconds = round(time.perf_counter() - started, 1)
    return result


def drop_home(home: Home) -> None:
    """Delete the home; for redis also its Feast project's Redis keys and registry rows (nobody else's)."""
    if home.project is not None:
        import redis
        import sqlalchemy

        from recs_pipeline.feast import feast_store

        settings = home.settings()
        host_port, *params = settings.redis_url.split(",")
        host, _, port = host_port.partition(":")
        client = redis.Redis(host=host, port=int(port or 6379), **dict(p.split("=", 1) for p in params))
        keys = list(client.scan_iter(match=b"*" + home.project.encode(), count=10_000))
        for i in range(0, len(keys), 10_000):
            client.delete(*keys[i : i + 10_000])
        client.close()
        store = feast_store.open_store(settings)
        store.registry.delete_project(home.project, commit=True)
        engine = sqlalchemy.create_engine(settings.registry_url)
        with engine.begin() as conn:
            conn.execute(
                sqlalchemy.text("DELETE FROM feature_view_version_history WHERE project_id = :p"), {"p": home.project}
            )
        engine.dispose()
        print(f"dropped Feast project {home.project}: {len(keys)} Redis keys and its registry rows", file=sys.stderr)
    shutil.rmtree(home.path.parent if home.temporary else home.path, ignore_errors=True)


# -- the service ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _processes(self) -> list[psutil.Process]:
        """The server process and its workers (uvicorn's, or the Feast server's)."""
        main = psutil.Process(self.proc.pid)
        return [main, *main.children(recursive=True)]

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self._processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def rss_mb(self) -> float:
        total = 0
        for p in self._processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total / 2**20

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _start_server(cmd: list[str], env: dict[str, str], log_path: Path, port: int, ready_path: str) -> Service:
    """Start ``cmd``; returns once ``ready_path`` answers 200 (or raises with the log's tail)."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    service = Service(proc, port, log_path)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}); its log:\n{log_path.read_text()[-3000:]}")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(f"{service.base}{ready_path}", timeout=2) as r,  # noqa: S310 (loopback)
        ):
            if r.status == 200:
                return service
        time.sleep(0.3)
    service.stop()
    raise RuntimeError(f"the server was not ready within 180 s; its log:\n{log_path.read_text()[-3000:]}")


def start_service(
    home: Home, *, limits: str | None, workers: int = 2, extra_env: dict[str, str] | None = None
) -> Service:
    """``recs serve --workers N`` on a free loopback port; returns once ``/readyz`` answers 200.

    With several workers, ``/readyz`` answers from whichever worker accepts the connection; each
    loads the champion at start-up before it accepts any.
    """
    port = free_port()
    env = {**_clean_env(), **home.env, **(extra_env or {})}
    if limits:
        env["RECS_SERVE_LIMITS"] = limits
    cmd = [sys.executable, "-m", "recs_pipeline.cli", "--home", str(home.path), "serve"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    return _start_server(cmd, env, home.path / f"serve-{port}.log", port, "/readyz")


def start_feast_server(home: Home, *, workers: int) -> Service:
    """Feast's own feature server (``feast serve``, through ``recs feast`` for the home's settings)."""
    port = free_port()
    env = {**_clean_env(), **home.env}
    cmd = [sys.executable, "-m", "recs_pipeline.cli", "--home", str(home.path), "feast", "serve"]
    cmd += ["-h", "127.0.0.1", "-p", str(port), "-w", str(workers), "--no-access-log", "--max-requests", "0"]
    return _start_server(cmd, env, home.path / f"feast-serve-{port}.log", port, "/health")


@functools.cache
def _key_lines() -> str:
    """The raw requests' API-key header (``RECS_API_KEY``, when set), read once."""
    return "".join(f"{name}: {value}\r\n" for name, value in client_headers().items())


def recs_request(user_id: str, host: str, k: int) -> bytes:
    key = _key_lines()
    return f"GET /recommendations/{quote(user_id, safe='')}?k={k} HTTP/1.1\r\nHost: {host}\r\n{key}\r\n".encode()


def feast_request(user_id: str, host: str) -> bytes:
    """Feast's feature server: the service's one lookup (feature service realtime_v1, one entity row)."""
    body = json.dumps(
        {"feature_service": "realtime_v1", "entities": {"user_id": [user_id]}, "full_feature_names": True}
    ).encode()
    head = (
        f"POST /get-online-features HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# -- users ---------------------------------------------------------------------------------------


def request_users(settings: Settings, *, n: int, unknown_share: float, seed: int) -> list[str]:
    """``n`` user ids in request order: known users (user_features) drawn at random, some unknown ids."""
    known = pl.read_parquet(settings.features_dir / "user_features.parquet", columns=["user_id"])["user_id"]
    known_ids = known.unique().sort().to_list()
    rng = np.random.default_rng(seed)
    unknown = rng.random(n) < unknown_share
    picks = rng.integers(0, len(known_ids), n)
    return [f"bench-unknown-{i}" if unknown[i] else known_ids[picks[i]] for i in range(n)]


# -- the open-loop generator ---------------------------------------------------------------------


@dataclass
class Sample:
    due: float  # scheduled send time (time.perf_counter)
    user_id: str
    latency: float | None = None  # seconds from the due time to the last byte of the response
    lateness: float = 0.0  # how late the generator actually sent it
    status: int | None = None
    error: str | None = None
    body: bytes = b""


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# uvicorn closes a keep-alive connection idle for 5 s (--timeout-keep-alive): never reuse one idle this long,
# or a request could race the server's close and fail through no fault of the service.
MAX_IDLE_S = 3.0


class ConnectionPool:
    """Keep-alive HTTP/1.1 connections; a new one whenever none is idle (up to ``limit``)."""

    def __init__(self, port: int, limit: int) -> None:
        self.port, self.limit = port, limit
        self.idle: deque[tuple[Conn, float]] = deque()  # (connection, idle since), most recent last
        self.open = 0
        self.peak = 0
        self._released = asyncio.Condition()

    async def get(self) -> Conn:
        while True:
            while self.idle:
                conn, since = self.idle.pop()
                if time.perf_counter() - since < MAX_IDLE_S and not conn[0].at_eof():
                    return conn
                self._drop(conn)
            if self.open < self.limit:
                self.open += 1
                self.peak = max(self.peak, self.open)
                try:
                    return await asyncio.open_connection("127.0.0.1", self.port, limit=2**20)
                except BaseException:
                    self.open -= 1
                    raise
            async with self._released:
                await self._released.wait()

    def _drop(self, conn: Conn) -> None:
        self.open -= 1
        conn[1].close()

    async def put(self, conn: Conn, *, broken: bool) -> None:
        if broken:
            self._drop(conn)
        else:
            self.idle.append((conn, time.perf_counter()))
        async with self._released:
            self._released.notify()

    def close(self) -> None:
        while self.idle:
            self._drop(self.idle.pop()[0])


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"transfer-encoding":
            raise RuntimeError("chunked responses are not supported by this generator")
    if length is None:
        raise RuntimeError("response without Content-Length")
    return status, await reader.readexactly(length)


async def _open_loop(
    port: int, paths: list[tuple[str, bytes]], rate: float, *, timeout: float, max_conns: int, abort_backlog_s: float
) -> tuple[list[Sample], dict[str, Any]]:
    loop = asyncio.get_running_loop()
    clock = time.perf_counter  # uvloop's loop.time() has millisecond resolution
    pool = ConnectionPool(port, max_conns)
    samples: list[Sample] = []
    tasks: set[asyncio.Task] = set()
    outstanding = 0
    aborted = None

    async def one(sample: Sample, request: bytes) -> None:
        nonlocal outstanding
        conn = None
        try:
            conn = await asyncio.wait_for(pool.get(), timeout)
            sent = clock()
            sample.lateness = sent - sample.due
            conn[1].write(request)
            sample.status, sample.body = await asyncio.wait_for(_read_response(conn[0]), timeout)
            sample.latency = clock() - min(sample.due, sent)  # a timer that fires early does not flatter
            await pool.put(conn, broken=False)
        except Exception as exc:  # a timeout or a broken connection is an error of this request
            sample.error = f"{type(exc).__name__}: {exc}"[:200]
            if conn is not None:
                await pool.put(conn, broken=True)
        finally:
            outstanding -= 1

    t0 = clock() + 0.05
    for i, (user_id, request) in enumerate(paths):
        due = t0 + i / rate
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        if outstanding > rate * abort_backlog_s:  # already more than abort_backlog_s behind: overloaded
            aborted = f"stopped after {i} of {len(paths)} requests: {outstanding} outstanding"
            break
        sample = Sample(due, user_id)
        samples.append(sample)
        outstanding += 1
        task = loop.create_task(one(sample, request))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    sent_end = clock()
    if tasks:
        await asyncio.wait(list(tasks))
    pool.close()
    info = {"t0": t0, "sent_end": sent_end, "drained": clock(), "peak_connections": pool.peak, "aborted": aborted}
    return samples, info


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # plain asyncio works too, with a little more CPU per request
        return asyncio.new_event_loop()


def _pct(values: list[float] | np.ndarray, scale: float = 1.0) -> dict[str, float | None]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {f"p{p}": None for p in PERCENTILES}
    return {f"p{p}": round(float(np.percentile(arr, p)) * scale, 3) for p in PERCENTILES}


def summarise_read_backs(rows: list[dict[str, Any]], *, reflected_key: str) -> dict[str, Any]:
    """The figures of ``freshness_post.post_then_read_back`` rows: POST statuses and latency, the
    POST-to-reflecting-GET times (under ``reflected_key``), how often the very next GET reflected it."""
    reflected = [r["reflected_s"] for r in rows if r["reflected_s"] is not None]
    return {
        "repeats": len(rows),
        "post_statuses": {str(st): sum(r["status"] == st for r in rows) for st in {r["status"] for r in rows}},
        "post_ms": _pct([r["post_s"] for r in rows], 1000),
        reflected_key: _pct(reflected, 1000),
        "next_get_reflects_share": (
            round(sum(r["gets"] == 1 and r["reflected_s"] is not None for r in rows) / len(rows), 3) if rows else None
        ),
        "not_reflected_within_5s": len(rows) - len(reflected),
    }


def summarise(samples: list[Sample], info: dict[str, Any], rate: float, warmup: float) -> dict[str, Any]:
    """Figures of the measured window (requests due at least ``warmup`` s after the start)."""
    start = info["t0"] + warmup
    measured = [s for s in samples if s.due >= start]
    window = (measured[-1].due - measured[0].due + 1 / rate) if measured else 0.0
    ok, stages, candidates, cand_known, cand_unknown, reasons = [], {s: [] for s in STAGES}, [], [], [], {}
    outside = []
    errors: dict[str, int] = {}
    for s in measured:
        if s.error is not None or s.status != 200:
            key = s.error.split(":")[0] if s.error else f"HTTP {s.status}"
            errors[key] = errors.get(key, 0) + 1
            continue
        ok.append(s.latency)
        body = json.loads(s.body)
        if "timings_ms" not in body:  # Feast's feature server: features only
            continue
        for stage in STAGES:
            stages[stage].append(body["timings_ms"][stage])
        candidates.append(body["candidates"])
        (cand_unknown if s.user_id.startswith("bench-unknown-") else cand_known).append(body["candidates"])
        for reason in body["fallback_reasons"]:
            reasons[reason] = reasons.get(reason, 0) + 1
        outside.append(s.latency * 1000 - body["timings_ms"]["total"])
    completed_at = [s.due + s.latency for s in measured if s.latency is not None]
    return {
        "target_rate": rate,
        "measured_seconds": round(window, 2),
        "requests": len(measured),
        "sent_rate": round(len(measured) / window, 1) if window else None,
        "completed_rate": (
            round(len(ok) / (max(completed_at) - measured[0].due), 1) if completed_at and len(ok) > 1 else None
        ),
        "ok": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "aborted": info["aborted"],
        "latency_ms": {
            **_pct(ok, 1000),
            "mean": round(float(np.mean(ok)) * 1000, 3) if ok else None,
            "max": round(max(ok) * 1000, 3) if ok else None,
        },
        "stage_ms": {stage: _pct(v) for stage, v in stages.items()},
        "outside_handler_ms": _pct(outside),
        "send_lateness_ms": _pct([s.lateness for s in measured], 1000),
        "candidates_mean": round(float(np.mean(candidates)), 1) if candidates else None,
        "candidates_mean_known_users": round(float(np.mean(cand_known)), 1) if cand_known else None,
        "candidates_mean_unknown_users": round(float(np.mean(cand_unknown)), 1) if cand_unknown else None,
        "fallback_reasons": reasons,
        # answers that fell back because the online read failed or ran out of its budget
        "online_fallback_share": round(reasons.get("online_store_unavailable", 0) / len(ok), 5) if ok else None,
        "peak_connections": info["peak_connections"],
    }


def run_rate(
    service: Service,
    users: list[str],
    rate: float,
    *,
    duration: float,
    warmup: float,
    k: int,
    offset: int = 0,
    timeout: float = 10.0,
    max_conns: int = 2000,
    abort_backlog_s: float = 3.0,
    feast: bool = False,
) -> dict[str, Any]:
    """One open-loop run at ``rate`` req/s; figures of the measured window plus CPU used.

    ``feast``: the requests are Feast feature-server lookups of the same users instead.
    """
    n = int(round(rate * (warmup + duration)))
    chosen = [users[(offset + i) % len(users)] for i in range(n)]
    host = f"127.0.0.1:{service.port}"
    paths = [(u, feast_request(u, host) if feast else recs_request(u, host, k)) for u in chosen]
    me = psutil.Process()
    gen0, srv0, wall0, machine0 = sum(me.cpu_times()[:2]), service.cpu_seconds(), time.perf_counter(), cpu_jiffies()
    loop = _new_loop()
    try:
        samples, info = loop.run_until_complete(
            _open_loop(service.port, paths, rate, timeout=timeout, max_conns=max_conns, abort_backlog_s=abort_backlog_s)
        )
    finally:
        loop.close()
    wall = time.perf_counter() - wall0
    result = summarise(samples, info, rate, warmup)
    busy, steal = busy_cores(machine0, cpu_jiffies())
    result["service_cpu_cores"] = round((service.cpu_seconds() - srv0) / wall, 2)
    result["generator_cpu_cores"] = round((sum(me.cpu_times()[:2]) - gen0) / wall, 2)
    # everything else on the machine during the run (other people's work), and the hypervisor's steal
    result["other_cpu_cores"] = round(busy - result["service_cpu_cores"] - result["generator_cpu_cores"], 2)
    result["steal_cores"] = round(steal, 2)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def passes(r: dict[str, Any], p99_target_ms: float) -> bool:
    p99 = r["latency_ms"]["p99"]
    return (
        not r["aborted"]
        and r["errors"] == 0
        and p99 is not None
        and p99 <= p99_target_ms
        and r["completed_rate"] is not None
        and r["completed_rate"] >= 0.95 * r["target_rate"]
    )


def search_max_rate(
    service: Service,
    users: list[str],
    *,
    start: float,
    p99_target_ms: float,
    duration: float,
    warmup: float,
    k: int,
    resolution: float = 10.0,
    log: Any = print,
) -> dict[str, Any]:
    """Raise the rate by 25 % while it passes, then bisect to ``resolution`` req/s."""
    steps = []

    def attempt(rate: float) -> bool:
        r = run_rate(service, users, rate, duration=duration, warmup=warmup, k=k, offset=len(steps) * 7919)
        ok = passes(r, p99_target_ms)
        steps.append(
            {
                "rate": rate,
                "passed": ok,
                **{x: r[x] for x in ("completed_rate", "errors", "error_kinds", "aborted")},
                "latency_ms": r["latency_ms"],
                "candidates_mean": r["candidates_mean"],
                "service_cpu_cores": r["service_cpu_cores"],
                "other_cpu_cores": r["other_cpu_cores"],
            }
        )
        log(
            f"  search {rate:.0f} req/s: p99 {r['latency_ms']['p99']} ms, errors {r['errors']}, "
            f"others {r['other_cpu_cores']} cores, "
            f"{'pass' if ok else 'fail'}{' (' + r['aborted'] + ')' if r['aborted'] else ''}"
        )
        time.sleep(2)  # let a backlog drain before the next step
        return ok

    def up(r: float) -> float:
        return max(r + resolution, round(r * 1.25 / resolution) * resolution)

    def down(r: float) -> float:
        return min(r - resolution, round(r * 0.8 / resolution) * resolution)

    good, bad = None, None
    rate = start
    while bad is None:
        if attempt(rate):
            good, rate = rate, up(rate)
        else:
            bad = rate
            if good is None:  # the start fails: walk down instead
                rate = down(rate)
                while rate >= resolution and not attempt(rate):
                    bad, rate = rate, down(rate)
                good = rate if rate >= resolution else None
    while good is not None and bad - good > resolution:
        mid = round((good + bad) / 2 / resolution) * resolution
        if mid in (good, bad):
            break
        if attempt(mid):
            good = mid
        else:
            bad = mid
    return {"max_sustainable_rate": good, "first_failing_rate": bad, "p99_target_ms": p99_target_ms, "steps": steps}


def freshness_under_load(
    service: Service,
    settings: Settings,
    users: list[str],
    *,
    rate: float,
    repeats: int,
    k: int,
    seed: int,
    log: Any = print,
) -> dict[str, Any]:
    """``POST /events`` then ``GET`` for brand-new users while the open loop carries ``rate`` req/s.

    Each repeat posts one view of an item whose view alone makes the champion recommend its
    co-visitation neighbours (``freshness_post.anchor_items``), then GETs until the answer is
    personal for it. Reported: the POST's latency, the time from the POST's start to the end of
    the first GET that reflects the event, and how often the very next GET already does.
    """
    import httpx
    from freshness_post import anchor_items, post_then_read_back

    items = anchor_items(settings, repeats, seed)
    run = uuid.uuid4().hex[:8]
    rows: list[dict[str, Any]] = []
    start_after, spacing = 3.0, 0.3

    def probe() -> None:
        time.sleep(start_after)
        with httpx.Client(base_url=service.base, timeout=10.0, headers=client_headers()) as client:
            for i, item in enumerate(items):
                rows.append(post_then_read_back(client, client, f"fresh-{run}-{i}", item, k=k))
                time.sleep(spacing)

    prober = threading.Thread(target=probe, name="freshness-probe")
    prober.start()
    load = run_rate(
        service, users, rate, duration=start_after + repeats * (spacing + 0.1) + 3.0, warmup=0.0, k=k, offset=31337
    )
    prober.join()
    result = {
        "rate": rate,
        **summarise_read_backs(rows, reflected_key="post_to_reflecting_get_ms"),
        "target_p95_ms": 50.0,
        "load": {x: load[x] for x in ("completed_rate", "errors", "latency_ms", "online_fallback_share")},
    }
    log(json.dumps(result))
    return result


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30),
        "python": platform.python_version(),
    }


def cpu_jiffies() -> tuple[int, int, int]:
    """(busy, total, steal) jiffies of all CPUs since boot, from /proc/stat."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return total - idle - iowait, total, steal


def busy_cores(before: tuple[int, int, int], after: tuple[int, int, int]) -> tuple[float, float]:
    """Cores busy (all processes) and cores stolen by the hypervisor between two :func:`cpu_jiffies`."""
    cores = os.cpu_count() or 1
    total = max(after[1] - before[1], 1)
    return cores * (after[0] - before[0]) / total, cores * (after[2] - before[2]) / total


def wait_quiet(max_busy_cores: float, max_wait_s: float, log: Any = print) -> dict[str, Any]:
    """Wait (up to ``max_wait_s``) until other work keeps fewer than ``max_busy_cores`` busy (5 s samples).

    The load average is no guide here: this VM idles at about 1.3. Returns what was seen last.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        before = cpu_jiffies()
        time.sleep(5)
        busy, steal = busy_cores(before, cpu_jiffies())
        if busy <= max_busy_cores or time.monotonic() > deadline:
            return {
                "busy_cores": round(busy, 2),
                "steal_cores": round(steal, 2),
                "load_average": [round(x, 2) for x in os.getloadavg()],
                "waited_out": busy > max_busy_cores,
            }
        log(f"  waiting for a quiet machine: {busy:.2f} cores busy > {max_busy_cores}")


def shadow_counts(service: Service) -> dict[str, float]:
    """``recs_shadow_total`` by outcome, summed over the service's workers."""
    request = urllib.request.Request(f"{service.base}/metrics", headers=client_headers())  # noqa: S310 (loopback)
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback http)
        text = response.read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("recs_shadow_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            counts[outcome] = counts.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def rate_with_shadow(
    service: Service,
    settings: Settings,
    users: list[str],
    rate: float,
    share: float,
    log: Any,
    *,
    max_busy_cores: float,
    max_wait: float,
    **run: Any,
) -> dict[str, Any]:
    """One rate again with the champion shadowing itself for ``share`` of the users."""
    champion = ModelRegistry(settings.models_dir).champion()
    assert champion is not None
    now = datetime.now(UTC)
    shadow = {
        "name": "bench-shadow",
        "model_version": champion.version,
        "share": share,
        "start": (now - timedelta(hours=1)).isoformat(),
        "end": (now + timedelta(days=1)).isoformat(),
    }
    settings.experiments_file.write_text(json.dumps({"experiments": [], "shadow": shadow}))
    try:
        time.sleep(1.0)  # every worker looks at the file every 0.25 s
        before = shadow_counts(service)
        load = wait_quiet(max_busy_cores, max_wait, log)
        log(f"rate {rate:.0f} req/s with a shadow for {share:.0%} of users (machine before: {load})")
        r = run_rate(service, users, rate, **run)
        time.sleep(2.0)  # the shadow queue drains
        after = shadow_counts(service)
    finally:
        settings.experiments_file.unlink()
    r["machine_before"] = load
    r["shadow_share"] = share
    r["shadow_counts"] = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    log(json.dumps({x: r[x] for x in ("target_rate", "completed_rate", "errors", "latency_ms", "shadow_counts")}))
    return r


@click.command()
@click.option("--profile", type=click.Choice(PROFILES), default="sqlite", show_default=True)
@click.option(
    "--home", type=click.Path(file_okay=False, path_type=Path), help="Prepared home (prepared here if empty)."
)
@click.option("--events", type=int, default=1_000_000, show_default=True, help="Synthetic events when preparing.")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--rates", default="100,200", show_default=True, help="Comma-separated req/s to measure.")
@click.option("--duration", type=float, default=25.0, show_default=True, help="Measured seconds per rate.")
@click.option("--warmup", type=float, default=5.0, show_default=True, help="Discarded seconds before each rate.")
@click.option(
    "--search/--no-search", default=True, show_default=True, help="Search the max rate within --p99-target-ms."
)
@click.option("--search-duration", type=float, default=15.0, show_default=True)
@click.option("--p99-target-ms", type=float, default=50.0, show_default=True)
@click.option("--limits", default=DEFAULT_LIMITS, show_default=True, help="RECS_SERVE_LIMITS of the service.")
@click.option("--k", type=int, default=20, show_default=True)
@click.option("--users", "n_users", type=int, default=20_000, show_default=True, help="Length of the user sequence.")
@click.option("--unknown-share", type=float, default=0.1, show_default=True, help="Share of unknown user ids.")
@click.option("--workers", type=int, default=2, show_default=True, help="Worker processes of the service.")
@click.option(
    "--feast-serve/--no-feast-serve",
    default=True,
    show_default=True,
    help="Then the same rates against Feast's own feature server (features only, same workers).",
)
@click.option(
    "--shadow-share", type=float, default=0.0, show_default=True, help="Also measure each rate with a shadow; 0: skip."
)
@click.option("--freshness-repeats", type=int, default=30, show_default=True, help="POST then GET under load; 0: skip.")
@click.option("--freshness-rate", type=float, default=100.0, show_default=True, help="Load while they run.")
@click.option("--floor/--no-floor", default=True, show_default=True, help="Measure the in-process floor first.")
@click.option("--floor-requests", type=int, default=3000, show_default=True)
@click.option(
    "--max-busy-cores", type=float, default=0.3, show_default=True, help="Wait until other work uses fewer cores."
)
@click.option("--max-wait", type=float, default=300.0, show_default=True, help="Seconds to wait for that, per step.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Results JSON file.")
@click.option("--drop-home", "drop", is_flag=True, help="Only delete --home (and its redis project), then exit.")
def main(
    profile: str,
    home: Path | None,
    events: int,
    seed: int,
    rates: str,
    duration: float,
    warmup: float,
    search: bool,
    search_duration: float,
    p99_target_ms: float,
    limits: str,
    k: int,
    n_users: int,
    unknown_share: float,
    workers: int,
    feast_serve: bool,
    shadow_share: float,
    freshness_repeats: int,
    freshness_rate: float,
    floor: bool,
    floor_requests: int,
    max_busy_cores: float,
    max_wait: float,
    out: Path,
    drop: bool,
) -> None:
    """Open-loop load test of `recs serve` at each --rates, plus a max-rate search and the compute floor."""

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if drop:
        if home is None:
            raise click.UsageError("--drop-home needs --home")
        env, project = home_env(home.resolve(), profile)
        drop_home(Home(home.resolve(), profile, env, project))
        return
    prepared = prepare_home(home, profile, events, seed)
    settings = prepared.settings()
    users = request_users(settings, n=n_users, unknown_share=unknown_share, seed=seed)
    results: dict[str, Any] = {
        "profile": profile,
        "home": str(prepared.path),
        "feast_project": prepared.project,
        "prepare_seconds": prepared.prepare_seconds,
        "events": events if prepared.prepare_seconds is not None else None,
        "limits": limits,
        "k": k,
        "unknown_share": unknown_share,
        "workers": workers,
        "generator": "asyncio + uvloop, raw keep-alive HTTP/1.1 streams, open loop",
        "machine": machine(),
    }
    try:
        if floor:
            from serving_floor import measure_floor

            results["floor_machine_before"] = wait_quiet(max_busy_cores, max_wait, log)
            log(f"floor: {floor_requests} requests in-process")
            results["floor"] = measure_floor(
                settings, users[:floor_requests], limits=ServeSettings.parse_limits(limits), k=k
            )
            log(json.dumps(results["floor"]))
        service = start_service(prepared, limits=limits, workers=workers)
        try:
            results["service_rss_mb_start"] = round(service.rss_mb(), 1)
            run_rate(service, users, 50, duration=5, warmup=0, k=k, offset=999)  # first touches of every path
            results["rates"] = []
            for i, rate in enumerate(float(r) for r in rates.split(",")):
                load = wait_quiet(max_busy_cores, max_wait, log)
                log(f"rate {rate:.0f} req/s (machine before: {load})")
                r = run_rate(service, users, rate, duration=duration, warmup=warmup, k=k, offset=i * 104_729)
                r["machine_before"] = load
                r["p99_target_met"] = passes(r, p99_target_ms)
                results["rates"].append(r)
                log(json.dumps({x: r[x] for x in ("target_rate", "completed_rate", "errors", "latency_ms")}))
                if shadow_share > 0:
                    r["with_shadow"] = rate_with_shadow(
                        service,
                        settings,
                        users,
                        rate,
                        shadow_share,
                        log,
                        **{
                            "duration": duration,
                            "warmup": warmup,
                            "k": k,
                            "offset": i * 104_729,
                            "max_busy_cores": max_busy_cores,
                            "max_wait": max_wait,
                        },
                    )
            if search:
                results["search_machine_before"] = wait_quiet(max_busy_cores, max_wait, log)
                start = max((r["target_rate"] for r in results["rates"] if r["p99_target_met"]), default=100.0)
                log(f"search from {start:.0f} req/s for p99 <= {p99_target_ms} ms")
                results["search"] = search_max_rate(
                    service,
                    users,
                    start=start,
                    p99_target_ms=p99_target_ms,
                    duration=search_duration,
                    warmup=3.0,
                    k=k,
                    log=log,
                )
            if freshness_repeats:
                results["freshness_machine_before"] = wait_quiet(max_busy_cores, max_wait, log)
                log(f"freshness: {freshness_repeats} POST+GET under {freshness_rate:.0f} req/s")
                results["freshness_under_load"] = freshness_under_load(
                    service, settings, users, rate=freshness_rate, repeats=freshness_repeats, k=k, seed=seed, log=log
                )
            results["service_rss_mb_end"] = round(service.rss_mb(), 1)
        finally:
            service.stop()
        if feast_serve:  # side by side: Feast's feature server answering the service's one lookup
            feast_service = start_feast_server(prepared, workers=workers)
            try:
                run_rate(feast_service, users, 50, duration=5, warmup=0, k=k, offset=999, feast=True)
                results["feast_serve"] = []
                for i, rate in enumerate(float(r) for r in rates.split(",")):
                    load = wait_quiet(max_busy_cores, max_wait, log)
                    log(f"feast serve: rate {rate:.0f} req/s (machine before: {load})")
                    r = run_rate(
                        feast_service,
                        users,
                        rate,
                        duration=duration,
                        warmup=warmup,
                        k=k,
                        offset=i * 104_729,
                        feast=True,
                    )
                    r["machine_before"] = load
                    results["feast_serve"].append(r)
                    log(json.dumps({x: r[x] for x in ("target_rate", "completed_rate", "errors", "latency_ms")}))
            finally:
                feast_service.stop()
        if results.get("floor"):  # what HTTP, the thread hops and queueing add to the same work
            floor_p50 = results["floor"]["read_and_recommend_ms"]["p50"]
            for r in [*results.get("rates", []), *results.get("search", {}).get("steps", [])]:
                served = r["latency_ms"]["p50"]
                r["served_p50_over_floor_p50"] = None if served is None else round(served / floor_p50, 2)
    finally:
        if prepared.temporary:
            drop_home(prepared)
    text = json.dumps(results, indent=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
