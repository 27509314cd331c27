"""Metrics, request ids and access logs of the scoring service.

* :class:`Metrics`: the service's Prometheus metrics, on the app's own registry. Under ``recs serve``
  (several worker processes) prometheus_client runs in its multi-process mode: every process writes
  its values to files in ``PROMETHEUS_MULTIPROC_DIR`` and :func:`exposition` sums them over the
  workers (``MultiProcessCollector``). Without that directory the app's own registry is served.
* :class:`RequestContext`: an ASGI middleware giving every request an id (the client's
  ``X-Request-ID`` when it is valid, else a generated one), echoed in the response header, counting
  and timing the request per route template, and writing one JSON access-log line per request
  (logger ``recs_pipeline.access``): never the body, never the raw path (ids in paths stay out of logs),
  never an API key (the key's name, ``key``, once the request is authenticated).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recs_pipeline.serving.api import REQUEST_ID_HEADER, valid_request_id

access_log = logging.getLogger("recs_pipeline.access")
log = logging.getLogger(__name__)

PREFIX = "recs_"
UNMATCHED_ROUTE = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LIVE_FILE = re.compile(r"gauge_live\w*_(\d+)\.db")


def values_in_files() -> bool:
    """True when prometheus_client keeps metric values in per-process files (its multi-process mode).

    prometheus_client decides once, when it is first imported, from ``PROMETHEUS_MULTIPROC_DIR``.
    Feast's metrics module sets that variable in ``os.environ`` (to a temp dir) when it is imported, so
    the variable can be present in a process whose values are kept in memory: it alone does not say.
    """
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class Metrics:
    """The service's Prometheus metrics (own registry, so several apps can live in one process).

    ``multiproc_dir``: the directory every worker of one ``recs serve`` writes its values to; when set
    (and prometheus_client is in its multi-process mode) ``/metrics`` sums the values of all workers.
    """

    def __init__(self, multiproc_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        if multiproc_dir is not None and not values_in_files():
            log.warning(
                "PROMETHEUS_MULTIPROC_DIR=%s was set after prometheus_client was imported: "
                "serving this process's metrics only",
                multiproc_dir,
            )
            multiproc_dir = None
        self.multiproc_dir = multiproc_dir
        buckets = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)
        reg = self.registry
        self.stage = Histogram(
            "recs_stage_seconds", "Latency per request stage", ["stage"], buckets=buckets, registry=reg
        )
        self.requests = Counter("recs_requests_total", "Recommendation requests", ["outcome"], registry=reg)
        self.fallbacks = Counter("recs_fallbacks_total", "Responses that fell back", ["reason"], registry=reg)
        # one series per live worker (label pid in multi-process mode): 1 = served now, 0 = served before
        self.model = Gauge(
            "recs_model_info",
            "Model versions per worker: 1 = served now, 0 = served before",
            ["version"],
            registry=reg,
            multiprocess_mode="liveall",
        )
        # 1 while the champion failed verification (or loading) and another version serves: max over live workers
        self.model_fallback = Gauge(
            "recs_model_fallback",
            "1 when a worker serves another version than the champion, which failed verification or loading "
            "(/readyz fallback says which and why)",
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.feature_age = Histogram(
            "recs_feature_age_seconds",
            "Age of the user's snapshot features at request time",
            buckets=(1, 10, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400),
            registry=reg,
        )
        self.events = Counter("recs_events_total", "Events received by the collector", ["outcome"], registry=reg)
        self.reloads = Counter("recs_model_reloads_total", "Champion reloads", ["outcome"], registry=reg)
        self.exposures = Counter(
            "recs_exposures_total",
            "Served lists logged, landed and dropped (queue full or landing failed)",
            ["outcome"],
            registry=reg,
        )
        self.dropped = Counter(
            "recs_dropped_candidates_total",
            "Candidates removed before ranking: unavailable, outside_category, blocked (by a rule)",
            ["reason"],
            registry=reg,
        )
        self.rule_items = Counter(
            "recs_rule_items_total",
            "Items a merchandising rule pinned, boosted or blocked",
            ["rule", "action"],
            registry=reg,
        )
        self.shadow = Counter(
            "recs_shadow_total",
            "Answered requests scored by the shadow model (scored), or not: queue full (dropped), the model "
            "cannot be loaded (unavailable), scoring raised (failed)",
            ["outcome"],
            registry=reg,
        )
        self.shadow_seconds = Histogram(
            "recs_shadow_seconds",
            "Shadow scoring time per request (off the request path)",
            buckets=buckets,
            registry=reg,
        )
        # refusals by status (401, 403) and reason (missing, unknown, scope:<scope>): never key material
        self.auth_refused = Counter(
            "recs_auth_refusals_total",
            "Requests refused by authentication: 401 (reason missing or unknown key) or 403 (reason scope:<scope>)",
            ["status", "reason"],
            registry=reg,
        )
        self.write_limited = Counter(
            "recs_write_limited_total",
            "Writes refused with a 429 by a rate limit: limit = key (per API key) or user (per user_id)",
            ["limit"],
            registry=reg,
        )
        self.http_requests = Counter(
            "recs_http_requests_total",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=reg,
        )
        self.http_seconds = Histogram(
            "recs_http_request_seconds",
            "HTTP request latency by route template and method (to the end of the response body)",
            ["route", "method"],
            buckets=buckets,
            registry=reg,
        )

    def exposition(self) -> bytes:
        """The Prometheus text: summed over every worker's files in multi-process mode, else this registry."""
        if self.multiproc_dir is None:
            return generate_latest(self.registry)
        return generate_latest(_Prefixed(MultiProcessCollector(None, path=str(self.multiproc_dir)), PREFIX))

    def worker_started(self) -> None:
        """Forget the per-worker gauges of workers that are gone (a worker that crashed could not)."""
        if self.multiproc_dir is None:
            return
        for path in self.multiproc_dir.glob("gauge_live*.db"):
            match = _LIVE_FILE.fullmatch(path.name)
            if match and not _alive(int(match.group(1))):
                mark_process_dead(int(match.group(1)), str(self.multiproc_dir))

    def worker_stopped(self) -> None:
        """Remove this worker's per-worker gauges (its counters and histograms stay in the sums)."""
        if self.multiproc_dir is not None:
            mark_process_dead(os.getpid(), str(self.multiproc_dir))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Prefixed:
    """The metrics of ``collector`` whose names start with ``prefix``.

    In multi-process mode every metric written in the directory is read, including Feast's own
    (its metrics module defines some at import); ``/metrics`` shows the service's.
    """

    def __init__(self, collector: MultiProcessCollector, prefix: str) -> None:
        self.collector, self.prefix = collector, prefix

    def collect(self) -> Iterable[Metric]:
        return (m for m in self.collector.collect() if m.name.startswith(self.prefix))


class RequestContext:
    """ASGI middleware: request id, per-route HTTP metrics and one JSON access-log line per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = _header(scope, REQUEST_ID_HEADER)
        request_id = given if given is not None and valid_request_id(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500  # an exception before the response started is a 500 (ServerErrorMiddleware sends it)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = _route_template(scope)
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            self.metrics.http_requests.labels(route, method, str(status)).inc()
            self.metrics.http_seconds.labels(route, method).observe(seconds)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    json.dumps(
                        {
                            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                            "request_id": request_id,
                            "method": method,
                            "route": route,
                            "status": status,
                            "duration_ms": round(seconds * 1000, 3),
                            "pid": os.getpid(),
                            **_key_name(scope),
                            **(
                                {"client_request_id_rejected": True}
                                if given is not None and given != request_id
                                else {}
                            ),
                        }
                    )
                )


def _key_name(scope: Scope) -> dict[str, str]:
    """``{"key": <name>}`` of the request's API key once authenticated (its name, never the key)."""
    principal = scope.get("state", {}).get("principal")
    name = getattr(principal, "name", None)
    return {"key": name} if isinstance(name, str) else {}


def _header(scope: Scope, name: str) -> str | None:
    key = name.lower().encode("latin-1")
    for k, v in scope.get("headers", ()):
        if k.lower() == key:
            return bytes(v).decode("latin-1")
    return None


def _route_template(scope: Scope) -> str:
    """The matched route's template (``/recommendations/{user_id}``): bounded label values, no ids."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    return UNMATCHED_ROUTE


class JsonLineFormatter(logging.Formatter):
    """Log records as one JSON object a line; access-log records (already JSON) are written as they are."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == access_log.name:
            return record.getMessage()
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def log_config(level: str = "INFO") -> dict[str, Any]:
    """``logging.config.dictConfig`` for ``recs serve`` (applied in every worker by uvicorn).

    JSON lines on stderr: the access log (``recs_pipeline.access``), the service's own logs and
    uvicorn's errors. uvicorn's own access log is off (the service writes its own).
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonLineFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": {
            "recs_pipeline": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }
