"""The scoring service and event collector (FastAPI).

``GET /recommendations/{user_id}`` retrieves, filters and ranks with the champion model;
``POST /events`` validates, lands and pushes session features; ``/healthz``, ``/readyz`` and
``/metrics`` (Prometheus) for operations; OpenAPI docs at ``/docs``. Start it with
``recs serve --host H --port P``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Body, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field

from recs_pipeline.feast import feast_store
from recs_pipeline.models.bundle import Bundle
from recs_pipeline.models.registry import ModelRegistry
from recs_pipeline.serving.collector import Collector
from recs_pipeline.serving.online import OnlineReader, UserContext
from recs_pipeline.serving.recommender import Recommender, ServeOptions
from recs_pipeline.settings import ServeSettings, Settings
from recs_pipeline.warehouse.ingest import MAX_ID_LENGTH

log = logging.getLogger(__name__)

MAX_K = 100
MAX_BATCH = 1000
STAGES = ("online", "retrieve", "filter", "rank", "total")


class Metrics:
    """The service's Prometheus metrics (own registry, so several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        buckets = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)
        self.stage = Histogram(
            "recs_stage_seconds", "Latency per request stage", ["stage"], buckets=buckets, registry=self.registry
        )
        self.requests = Counter("recs_requests_total", "Recommendation requests", ["outcome"], registry=self.registry)
        self.fallbacks = Counter("recs_fallbacks_total", "Responses that fell back", ["reason"], registry=self.registry)
        self.model = Gauge(
            "recs_model_info", "Model versions: 1 = served now, 0 = served before", ["version"], registry=self.registry
        )
        self.feature_age = Histogram(
            "recs_feature_age_seconds",
            "Age of the user's snapshot features at request time",
            buckets=(1, 10, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400),
            registry=self.registry,
        )
        self.events = Counter(
            "recs_events_total", "Events received by the collector", ["outcome"], registry=self.registry
        )
        self.reloads = Counter("recs_model_reloads_total", "Champion reloads", ["outcome"], registry=self.registry)


class ModelHolder:
    """The served model; swapped atomically when the registry's champion changes.

    A request takes the current reference once and uses it to the end, so a reload never
    disturbs a request in flight.
    """

    def __init__(self, registry: ModelRegistry, metrics: Metrics) -> None:
        self.registry = registry
        self.metrics = metrics
        self.recommender: Recommender | None = None
        self.error: str | None = None
        self._lock = threading.Lock()

    @property
    def version(self) -> str | None:
        return self.recommender.model.version if self.recommender else None

    def refresh(self) -> bool:
        """Load the champion if it differs from the served one; True when a new model went live."""
        with self._lock:
            try:
                champion = self.registry.champion()
            except Exception as exc:
                self.error = f"registry unreadable: {exc}"
                self.metrics.reloads.labels("error").inc()
                return False
            if champion is None:
                self.error = f"no champion model in {self.registry.root}: run `recs run` (or the retrain_job) first"
                return False
            if champion.version == self.version:
                return False
            try:
                model = Bundle(self.registry.verify(champion.version))
            except Exception as exc:  # keep serving the old model; report why the new one is not live
                self.error = f"champion {champion.version} failed to load: {exc}"
                log.exception("champion %s failed to load", champion.version)
                self.metrics.reloads.labels("error").inc()
                return False
            old = self.version
            self.recommender = Recommender(model)
            self.error = None
            if old:  # 0 = no longer served (feast puts prometheus_client in multi-process mode: no label removal)
                self.metrics.model.labels(old).set(0)
            self.metrics.model.labels(model.version).set(1)
            self.metrics.reloads.labels("loaded").inc()
            log.info("serving model %s (was %s)", model.version, old)
            return True


class EventsIn(BaseModel):
    """A batch of events in the ingestion contract (event_id is derived when omitted)."""

    events: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_BATCH,
        description="Each: user_id, item_id, event_type (view|add_to_cart|purchase|favorite), ts (ISO-8601), "
        "optional event_id and session_id.",
        examples=[[{"user_id": "u1", "item_id": "i42", "event_type": "view", "ts": "2026-11-22T10:00:00Z"}]],
    )


def create_app(settings: Settings, serve: ServeSettings | None = None) -> FastAPI:
    """The service for the pipeline at ``settings`` (model registry, feature store, landing zone)."""
    serve = serve or ServeSettings.from_env()
    metrics = Metrics()
    holder = ModelHolder(ModelRegistry(settings.models_dir), metrics)
    state: dict[str, Any] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(serve.reload_seconds):
            holder.refresh()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = feast_store.open_store(settings)
        state["reader"] = OnlineReader(store, timeout_s=serve.online_timeout_ms / 1000.0)
        state["collector"] = Collector(store, settings.landing_dir)
        state["reader"].warm_up()
        holder.refresh()
        watcher = threading.Thread(target=watch, name="champion-watch", daemon=True)
        watcher.start()
        yield
        stop.set()
        state["reader"].close()

    app = FastAPI(
        title="recs_pipeline scoring service",
        description="Real-time top-K recommendations and the event collector.",
        lifespan=lifespan,
    )
    app.state.holder = holder
    app.state.metrics = metrics

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"where": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg", "")} for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": "invalid request", "problems": problems})

    @app.get("/healthz", summary="The process is alive")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="A model is loaded and requests can be served")
    def readyz() -> JSONResponse:
        if holder.recommender is None:
            return JSONResponse(status_code=503, content={"ready": False, "reason": holder.error})
        return JSONResponse({"ready": True, "model_version": holder.version, "last_reload_error": holder.error})

    @app.get("/metrics", summary="Prometheus metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/recommendations/{user_id}", summary="Top-K items for a user, ranked by the champion model")
    def recommendations(
        user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH)],
        k: Annotated[int, Query(ge=1, le=MAX_K, description="How many items")] = 20,
        category: Annotated[str | None, Query(min_length=1, max_length=MAX_ID_LENGTH)] = None,
        explain: Annotated[bool, Query(description="Add the ranker's top feature contributions")] = False,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        recommender = holder.recommender
        if recommender is None:
            metrics.requests.labels("not_ready").inc()
            raise HTTPException(status_code=503, detail=f"no model is loaded yet: {holder.error}")
        if category is not None and category not in recommender.model.categories:
            metrics.requests.labels("bad_request").inc()
            raise HTTPException(
                status_code=422, detail=f"unknown category {category!r}: not in the served item catalog"
            )
        t = time.perf_counter()
        ctx: UserContext = state["reader"].read(user_id)
        online_ms = (time.perf_counter() - t) * 1000
        options = ServeOptions(
            k=k,
            category=category,
            explain=explain,
            **({"limits": serve.candidate_limits} if serve.candidate_limits else {}),
        )
        result = recommender.recommend(ctx, options, online_ms=online_ms)
        total = time.perf_counter() - started
        for stage, seconds in {**result.stages, "total": total}.items():
            metrics.stage.labels(stage).observe(seconds)
        for reason in result.fallbacks:
            metrics.fallbacks.labels(reason).inc()
        if ctx.user_features_as_of:
            metrics.feature_age.observe(max(time.time() - ctx.user_features_as_of, 0.0))
        metrics.requests.labels("ok").inc()
        return {
            "user_id": user_id,
            "model_version": result.model_version,
            "k": k,
            "category": category,
            "items": result.items,
            "fallback": bool(result.fallbacks),
            "fallback_reasons": result.fallbacks,
            "online_error": ctx.error,
            "candidates": result.candidates,
            "timings_ms": {s: round(v * 1000, 3) for s, v in {**result.stages, "total": total}.items()},
        }

    @app.post("/events", summary="Collect a batch of events: validate, land, push session features")
    def collect(body: Annotated[EventsIn, Body()]) -> JSONResponse:
        result = state["collector"].collect(body.events)
        metrics.events.labels("accepted").inc(result.accepted)
        metrics.events.labels("rejected").inc(len(result.rejected))
        status = 202 if result.accepted else 422
        return JSONResponse(
            status_code=status,
            content={
                "accepted": result.accepted,
                "rejected": result.rejected,
                "landed_file": result.landed_file,
                "sessions_pushed": result.pushed_users,
                "push_error": result.push_error,
                "event_ids": result.event_ids,
            },
        )

    return app
