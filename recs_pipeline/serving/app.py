"""The scoring service and event collector (FastAPI).

``GET /recommendations/{user_id}`` retrieves, filters and ranks with the champion model;
``POST /events`` validates, lands and pushes session features; ``/healthz``, ``/readyz`` and
``/metrics`` (Prometheus) for operations; OpenAPI docs at ``/docs`` and ``/redoc`` (assets served
locally). Request and response bodies are the models of :mod:`recs_pipeline.serving.api`.

With authentication on (``RECS_AUTH``) every route but the probes and the docs needs an API key with
its scope (:mod:`recs_pipeline.serving.auth`); writes are rate-limited per key and per user
(:mod:`recs_pipeline.serving.limits`) and a ``POST /events`` answers within ``RECS_SERVE_WRITE_BUDGET_MS``.

``recs serve --workers N`` runs N worker processes (uvicorn), each built by
:func:`create_app_from_env` from the settings in its environment; each has its own model holder and
champion watcher, and ``/metrics`` sums every worker's values (prometheus_client's multi-process
mode, see :mod:`recs_pipeline.serving.observability`).

With a pseudonym key (``RECS_PSEUDONYM_KEY``, docs/PRIVACY.md) every user id a request names is mapped
to its pseudonym (:mod:`recs_pipeline.privacy.pseudonyms`) before the online store is read (both
``GET /recommendations/{user_id}`` and the cart's ``user_id``, through :class:`PseudonymousReader`),
before experiment assignment, rate-limit buckets, session locks and pushes and log lines; answers echo
the id the caller sent. What lands (the events journal, the exposure log) keeps the raw id, as every
producer's files do: ingestion pseudonymises it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recs_pipeline.feast import feast_store
from recs_pipeline.models.bundle import Bundle
from recs_pipeline.models.registry import SIGNATURE_FIELD, ModelRegistry
from recs_pipeline.privacy import pseudonyms as pseudonyms_module
from recs_pipeline.privacy.erasure import ErasureReport, forget_user
from recs_pipeline.privacy.pseudonyms import Pseudonyms
from recs_pipeline.serving.api import (
    MAX_BODY_BYTES,
    MAX_EXCLUDE,
    MAX_K,
    ErrorBody,
    EventsAccepted,
    EventsIn,
    Health,
    ItemsAccepted,
    ItemsIn,
    NotLiveItem,
    Problem,
    Readiness,
    Recommendations,
    RejectedItem,
    Unavailable,
    raw_text_problems,
    rejected_event,
    safe_text,
    text_problems,
)
from recs_pipeline.serving.auth import ADMIN, EVENTS_WRITE, RECOMMENDATIONS_READ, Authenticator, AuthError, Principal
from recs_pipeline.serving.catalog import LiveCatalog, land_items
from recs_pipeline.serving.collector import Collector, with_event_ids
from recs_pipeline.serving.experiments import POPULAR, ExperimentsFile
from recs_pipeline.serving.exposures import ExposureLog, exposure_record, new_request_id
from recs_pipeline.serving.item_routes import item_routes
from recs_pipeline.serving.limits import Bucket, LimitsUnavailable, WriteLimiter
from recs_pipeline.serving.observability import Metrics, RequestContext
from recs_pipeline.serving.online import OnlineReader, UserContext
from recs_pipeline.serving.recommender import Recommender, ServeOptions
from recs_pipeline.serving.rules import RulesFile
from recs_pipeline.serving.shadow import ShadowRequest, ShadowScorer
from recs_pipeline.settings import MAX_DIVERSITY, AuthSettings, ServeSettings, Settings
from recs_pipeline.warehouse.ingest import MAX_ID_LENGTH

log = logging.getLogger(__name__)

STAGES = ("online", "retrieve", "filter", "rank", "total")
# Model versions an experiment's variants may pin, kept loaded per worker beside the champion.
VARIANT_MODELS = 4
# A variant's or the shadow's version that failed to load is tried again after this long.
RETRY_LOAD_SECONDS = 30.0
# Threads per worker that land events and update sessions (POST /events), apart from the request threads.
COLLECT_THREADS = 4
# Swagger UI and ReDoc, shipped by the fastapi-offline package: /docs and /redoc need no CDN.
DOCS_ASSETS = resources.files("fastapi_offline") / "static"
DOCS_ASSETS_URL = "/docs-assets"


class ApiError(Exception):
    """An answer other than 2xx, with the service's body: ``detail`` (and ``problems`` for a 4xx)."""

    def __init__(
        self,
        status: int,
        detail: str,
        problems: list[Problem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.problems, self.headers = status, detail, problems, headers

    def response(self) -> JSONResponse:
        if self.problems is None and self.status >= 500:
            content = Unavailable(detail=self.detail).model_dump()
            return JSONResponse(status_code=self.status, content=content, headers=self.headers)
        body = ErrorBody(detail=self.detail, problems=self.problems or [])
        return JSONResponse(status_code=self.status, content=body.model_dump(), headers=self.headers)


class ModelHolder:
    """The served model; swapped atomically when the registry's champion changes.

    A request takes the current reference once and uses it to the end, so a reload never
    disturbs a request in flight.

    A champion that fails verification (a tampered file, a bad or missing signature) or loading is
    never served. The model served before stays; at start-up, with nothing served yet, the newest
    previous champion that verifies is served instead (:meth:`ModelRegistry.previous_champions`).
    Either way :attr:`fallback` says so (``/readyz``, ``recs_model_fallback``) until the champion
    loads (a new promotion, or its files restored) or the served version becomes the champion again.
    A failed champion is tried again when its folder changes, else every ``RETRY_LOAD_SECONDS``.
    """

    # an absolute path in a message (shown over HTTP without it: the full message is logged)
    _PATH = re.compile(r"(?<![\w.:/~-])/[^\s'\",;()]+")

    def __init__(self, registry: ModelRegistry, metrics: Metrics) -> None:
        self.registry = registry
        self.metrics = metrics
        self.recommender: Recommender | None = None
        self.error: str | None = None
        # while the champion cannot be served: {"champion", "serving", "reason"} (None otherwise)
        self.fallback: dict[str, str] | None = None
        self._refused: tuple[str, tuple[tuple[str, int, int, int], ...], float] | None = None
        # the served version's manifest signature: a new one under the same version means its files were
        # rewritten in place (an erasure, registry.rewrite_files), and the version is loaded again
        self._served_signature: object = None
        self._variants: dict[str, Recommender] = {}
        self._failed: dict[str, float] = {}  # version -> when it last failed to load (monotonic)
        self._loading: dict[str, threading.Lock] = {}  # version -> held while it loads
        self.catalog: LiveCatalog | None = None  # set by the app's start-up, before the first load
        self._lock = threading.Lock()

    @property
    def version(self) -> str | None:
        return self.recommender.model.version if self.recommender else None

    def _no_champion(self, registered: int) -> str:
        """Why there is nothing to serve: no model trained yet, or ``registered`` trained models that
        the promotion gate refused (each stays registered)."""
        if registered == 0:
            return f"no champion model in {self.registry.root}: run `recs run` (or the retrain_job) first"
        return (
            f"no champion model in {self.registry.root}: {registered} model version(s) are registered but the "
            "promotion gate refused every one (it must beat every baseline on validation; see the verdict of "
            "`recs run`, reports/evaluation.md and `recs models`)"
        )

    def serving(self) -> Recommender | None:
        """The champion's recommender for a request, after the live catalog took in item updates landed
        since the last request (one stat when none); None while no model is loaded (see :attr:`error`)."""
        if self.catalog is not None:
            self.catalog.refresh()
        return self.recommender

    def for_version(self, version: str) -> Recommender | None:
        """A recommender of a registered, verified version (an experiment's variant or the shadow),
        loaded once and kept (the newest ``VARIANT_MODELS``); None when it cannot be loaded (the
        reason is logged, and the load is not tried again for ``RETRY_LOAD_SECONDS``)."""
        with self._lock:
            if self.recommender is not None and self.recommender.model.version == version:
                return self.recommender
            cached = self._variants.get(version)
            if cached is not None:
                self._variants[version] = self._variants.pop(version)  # least recently used goes first
                return cached
            if time.monotonic() - self._failed.get(version, -math.inf) < RETRY_LOAD_SECONDS:
                return None
            loading = self._loading.setdefault(version, threading.Lock())
        # outside the holder's lock (the champion's requests need none of it), one load per version:
        # the other requests for it wait for that load instead of loading the bundle again
        with loading:
            with self._lock:
                cached = self._variants.get(version)
                if cached is not None or time.monotonic() - self._failed.get(version, -math.inf) < RETRY_LOAD_SECONDS:
                    return cached
            try:
                recommender = Recommender(Bundle(self.registry.verify(version)), self.catalog)
            except Exception:
                log.exception("model version %s (experiment variant or shadow) failed to load", version)
                with self._lock:
                    self._failed[version] = time.monotonic()
                return None
            with self._lock:
                self._variants[version] = recommender
                self._failed.pop(version, None)
                while len(self._variants) > VARIANT_MODELS:
                    self._variants.pop(next(iter(self._variants)))
                return recommender

    def refresh(self) -> bool:
        """Load the champion if it differs from the served one; True when a new model went live
        (the champion, or at start-up a previous champion standing in for it)."""
        with self._lock:
            try:
                champion = self.registry.champion()
                registered = len(self.registry.versions()) if champion is None else 0
            except Exception as exc:
                self.error = f"registry unreadable: {self._public(exc)}"
                log.exception("model registry unreadable")
                self.metrics.reloads.labels("error").inc()
                return False
            if champion is None:
                self.error = self._no_champion(registered)
                return False
            rewritten = champion.version == self.version and (
                champion.manifest.get(SIGNATURE_FIELD) != self._served_signature
            )
            if champion.version == self.version and not rewritten:
                if self.fallback is not None:  # e.g. rolled back to the version standing in
                    self._set_fallback(None)
                    self.error = None
                return False
            if self._still_refused(champion.version):
                return False
            try:
                verified = self.registry.verify(champion.version)
                model = Bundle(verified)
            except Exception as exc:  # never serve it: keep (or find) a verified model, say why
                return self._refuse(champion.version, exc)
            self._swap(model, verified.manifest.get(SIGNATURE_FIELD))
            if rewritten:  # an erasure rewrites every kept version: variants load theirs again too
                log.info("model %s was rewritten in place (its manifest re-signed): loaded again", champion.version)
                self._variants.clear()
            self._refused = None
            self._set_fallback(None)
            return True

    def _swap(self, model: Bundle, signature: object) -> None:
        old = self.version
        self.recommender = Recommender(model, self.catalog)
        self._served_signature = signature
        self.error = None
        if old:  # 0 = no longer served (a series is not removed: multi-process mode cannot remove one)
            self.metrics.model.labels(old).set(0)
        self.metrics.model.labels(model.version).set(1)
        self.metrics.reloads.labels("loaded").inc()
        log.info("serving model %s (was %s)", model.version, old)

    def _refuse(self, champion: str, exc: Exception) -> bool:
        """The champion failed to verify or load: keep the served model or, with none, serve the newest
        previous champion that verifies; True when that one went live."""
        first = self._refused is None or self._refused[0] != champion
        log.error("champion %s failed to load: %s", champion, exc, exc_info=first)
        self.metrics.reloads.labels("error").inc()
        self._refused = (champion, self._folder_state(champion), time.monotonic())
        reason = self._public(exc)
        self.error = f"champion {champion} failed to load: {reason}"
        if self.recommender is not None:
            self._set_fallback({"champion": champion, "serving": str(self.version), "reason": reason})
            return False
        for version in self.registry.previous_champions():
            try:
                verified = self.registry.verify(version)
                model = Bundle(verified)
            except Exception as previous:
                log.error("previous champion %s cannot stand in for %s: %s", version, champion, previous)
                continue
            self._swap(model, verified.manifest.get(SIGNATURE_FIELD))
            self.error = f"champion {champion} failed to load: {reason}"
            self._set_fallback({"champion": champion, "serving": version, "reason": reason})
            log.warning("serving previous champion %s instead of champion %s", version, champion)
            return True
        self.error = f"{self.error}; no previous champion verifies either"
        return False

    def _set_fallback(self, fallback: dict[str, str] | None) -> None:
        self.fallback = fallback
        self.metrics.model_fallback.set(0 if fallback is None else 1)

    def _still_refused(self, champion: str) -> bool:
        """True while ``champion`` is the one that last failed, its folder unchanged, for under
        ``RETRY_LOAD_SECONDS`` (re-verifying a bundle hashes every file)."""
        if self._refused is None or self._refused[0] != champion:
            return False
        _, state, when = self._refused
        return time.monotonic() - when < RETRY_LOAD_SECONDS and self._folder_state(champion) == state

    def _folder_state(self, version: str) -> tuple[tuple[str, int, int, int], ...]:
        """Name, size, modification time and inode of every file of a version (no hashing)."""
        folder = self.registry.versions_dir / version
        state = []
        for dirpath, _, filenames in os.walk(folder):
            for name in filenames:
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except OSError:  # removed meanwhile: its absence is the state
                    continue
                state.append((path, st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(sorted(state))

    @classmethod
    def _public(cls, exc: Exception) -> str:
        """An error's message for HTTP bodies: absolute paths replaced by ``<path>``."""
        return cls._PATH.sub("<path>", str(exc))


class BodyTooLarge(Exception):
    """The request body grew past the limit while it was read."""


def _too_large() -> JSONResponse:
    return ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes").response()


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is a 413 with the service's body.

    Refused from ``Content-Length`` before anything is read; a body sent without one is counted as
    it is read and stopped at the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", ())).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _too_large()(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        await self.app(scope, limited, send)


def _text_of_url(request: Request) -> None:
    """A dependency: 422 when the URL's percent-encoded user id or query values are not UTF-8."""
    problems = raw_text_problems(request.scope.get("raw_path"), request.scope.get("query_string", b""), "user_id")
    if problems:
        raise ApiError(422, "invalid request", problems)


# with authentication on (RECS_AUTH; docs/SECURITY.md)
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No API key, or an unknown one (`WWW-Authenticate: Bearer`)"},
    403: {"model": ErrorBody, "description": "The API key lacks the scope this endpoint needs (`detail` names it)"},
}
WRITE_LIMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorBody,
        "description": "A write rate limit (per API key, or per user_id counting the batch's events) is exceeded: "
        "nothing of the batch was landed; `detail` says which limit, `Retry-After` when to try again (seconds)",
    },
}
RECOMMENDATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorBody, "description": "A parameter is invalid; `problems` names it (`query.k`, `path.user_id`)"},
    503: {"model": Unavailable, "description": "No model is loaded yet (run `recs run`)"},
}
ITEMS_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": f"The body is larger than {MAX_BODY_BYTES} bytes"},
    422: {
        "model": ErrorBody,
        "description": "The body is not a batch of 1 to 1000 item objects, a text is not valid Unicode, or no update "
        "in it is valid (`problems` lists each with ingestion's reason); nothing was landed",
    },
}
EVENTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": f"The body is larger than {MAX_BODY_BYTES} bytes"},
    503: {
        "model": ErrorBody,
        "description": "The valid events are landed (ingestion will load them) but a live session could not be "
        "updated in time (`problems`: where = `session`). Sending the same batch again is safe: its events keep "
        "their ids and ingestion loads each id once.",
    },
    422: {
        "model": ErrorBody,
        "description": "The batch is refused and nothing is landed: the body is not a batch of 1 to 1000 event "
        "objects, a string is not valid Unicode or a number not finite (`problems` names each field), or no event "
        "is valid (`problems` gives each event's reason, `where` = `body.events.<index>`)",
    },
}


class PseudonymousReader(OnlineReader):
    """The online reader for raw user ids: each is read under its pseudonym (the id itself without a key)."""

    def __init__(self, store: Any, *, timeout_s: float, pseudonyms: Pseudonyms) -> None:
        super().__init__(store, timeout_s=timeout_s)
        self.pseudonyms = pseudonyms

    def read(self, user_id: str) -> UserContext:
        return super().read(self.pseudonyms.of(user_id))


def create_app(settings: Settings, serve: ServeSettings | None = None, auth: AuthSettings | None = None) -> FastAPI:
    """The service for the pipeline at ``settings`` (model registry, feature store, landing zone).

    Raises
    ------
    AuthConfigError
        When authentication is on (``auth``, by default from the environment) and no key is configured.
    """
    serve = serve or ServeSettings.from_env()
    auth = auth or AuthSettings.from_env()
    pseudonyms = pseudonyms_module.from_env()
    metrics = Metrics(serve.metrics_dir)
    authenticator = Authenticator.from_settings(
        settings, auth, on_refused=lambda status, reason: metrics.auth_refused.labels(str(status), reason).inc()
    )
    limiter = (
        WriteLimiter(
            auth.limits_path(settings),
            per_key=Bucket(auth.write_rate_per_key, auth.write_burst_per_key),
            per_user=Bucket(auth.write_rate_per_user, auth.write_burst_per_user),
            timeout_s=min(1.0, auth.write_budget_ms / 1000.0),
        )
        if auth.limits_enabled(settings)
        else None
    )
    write_budget_s = auth.write_budget_ms / 1000.0
    # OpenAPI lists 401/403 and 429 only where they can be answered
    auth_responses = AUTH_RESPONSES if authenticator.enabled else {}
    limit_responses = WRITE_LIMIT_RESPONSES if limiter is not None else {}
    read_scope = Depends(authenticator.require(RECOMMENDATIONS_READ))
    write_scope = Depends(authenticator.require(EVENTS_WRITE))  # sets request.state.principal
    holder = ModelHolder(ModelRegistry(settings.models_dir), metrics)
    state: dict[str, Any] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(serve.reload_seconds):
            holder.refresh()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics.worker_started()
        store = feast_store.open_store(settings)
        # takes raw ids (this route's and the cart's), reads their pseudonyms
        state["reader"] = PseudonymousReader(store, timeout_s=serve.online_timeout_ms / 1000.0, pseudonyms=pseudonyms)
        state["collector"] = Collector.serving(
            store,
            settings.landing_dir,
            wait_seconds=serve.session_wait_ms / 1000.0,
            flush_seconds=serve.collector_flush_seconds,
            pseudonyms=pseudonyms,
        )
        # posts wait on session locks and store writes in threads of their own, never in the ones reads use
        state["collect_pool"] = ThreadPoolExecutor(max_workers=COLLECT_THREADS, thread_name_prefix="collect")
        state["experiments"] = ExperimentsFile(settings.experiments_file)
        state["rules"] = RulesFile(settings.rules_file)
        holder.catalog = LiveCatalog(settings.landing_dir)
        state["exposures"] = (
            ExposureLog(
                settings.landing_dir,
                capacity=serve.exposure_queue,
                flush_seconds=serve.exposure_flush_seconds,
                count=lambda outcome, n: metrics.exposures.labels(outcome).inc(n),
            )
            if serve.exposure_log
            else None
        )
        # a shadow model's lists are only worth scoring when they are logged
        state["shadow"] = (
            ShadowScorer(
                holder.for_version,
                state["exposures"].log,
                capacity=serve.shadow_queue,
                count=lambda outcome: metrics.shadow.labels(outcome).inc(),
                observe=metrics.shadow_seconds.observe,
            )
            if state["exposures"] is not None
            else None
        )
        state["reader"].warm_up()
        holder.refresh()
        # one watcher per app, so one per worker process: every worker reloads the champion itself
        watcher = threading.Thread(target=watch, name="champion-watch", daemon=True)
        watcher.start()
        yield
        stop.set()
        state["collect_pool"].shutdown(wait=True)
        if state["shadow"] is not None:
            state["shadow"].close()  # its lists go to the exposure log, closed next
        if state["exposures"] is not None:
            state["exposures"].close()
        state["collector"].close()
        state["reader"].close()
        metrics.worker_stopped()

    app = FastAPI(
        title="recs_pipeline scoring service",
        description="Real-time top-K recommendations and the event collector. Every response carries "
        "`X-Request-ID` (the client's when it is 1 to 128 visible ASCII characters, else a generated one).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.holder = holder
    app.state.metrics = metrics
    app.state.parts = state  # the lifespan's parts (tests wait on the shadow scorer)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(RequestContext, metrics=metrics)  # outermost: sees (and counts, logs) every answer
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=str(DOCS_ASSETS)), name="docs-assets")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> JSONResponse:
        return ApiError(exc.status, exc.detail, [], headers=exc.headers).response()

    async def take_write_tokens(
        key: str, users: Counter[str] | None, cost: int, shown: Mapping[str, str] | None = None
    ) -> None:
        """Take the write's tokens (:mod:`recs_pipeline.serving.limits`); 429 (or 503) when refused.
        ``shown``: each user bucket's id (a pseudonym) -> the id the caller sent, for the 429's text."""
        if limiter is None:
            return
        loop = asyncio.get_running_loop()
        try:  # the default pool, not the collect pool: a stuck store cannot delay the verdict
            refusal = await loop.run_in_executor(None, lambda: limiter.take(key, users, cost=cost, shown=shown))
        except LimitsUnavailable as exc:
            log.error("write limits unavailable: %s", exc)
            raise ApiError(503, f"the write limits cannot be checked now: nothing was landed; {exc}") from None
        if refusal is not None:
            metrics.write_limited.labels(refusal.limit).inc()
            where = "authorization" if refusal.limit == "key" else "body.events"
            raise ApiError(
                429,
                refusal.detail,
                [Problem(where=where, problem=refusal.detail)],
                {"Retry-After": str(refusal.retry_after)},
            )

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            Problem(
                where=safe_text(".".join(str(p) for p in e.get("loc", ()))), problem=safe_text(str(e.get("msg", "")))
            )
            for e in exc.errors()
        ]
        return ApiError(422, "invalid request", problems).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and isinstance(exc.__cause__, BodyTooLarge):  # a body without Content-Length
            return _too_large()
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI answers a body that is not UTF-8 with a bare 400; it is an invalid request body
            problem = Problem(where="body", problem=f"not valid UTF-8 (byte {exc.__cause__.start})")
            return ApiError(422, "invalid request", [problem]).response()
        body = ErrorBody(detail=safe_text(str(exc.detail)))
        return JSONResponse(status_code=exc.status_code, content=body.model_dump(), headers=exc.headers)

    def under_root(request: Request, path: str) -> str:
        return f"{request.scope.get('root_path', '')}{path}"

    def asset(request: Request, name: str) -> str:
        return under_root(request, f"{DOCS_ASSETS_URL}/{name}")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=under_root(request, str(app.openapi_url)),
            title=f"{app.title} - Swagger UI",
            swagger_js_url=asset(request, "swagger-ui-bundle.js"),
            swagger_css_url=asset(request, "swagger-ui.css"),
            swagger_favicon_url=asset(request, "favicon.png"),
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=under_root(request, str(app.openapi_url)),
            title=f"{app.title} - ReDoc",
            redoc_js_url=asset(request, "redoc.standalone.js"),
            redoc_favicon_url=asset(request, "favicon.png"),
            with_google_fonts=False,
        )

    @app.get("/healthz", summary="The process is alive", response_model=Health)
    def healthz() -> Health:
        return Health()

    @app.get(
        "/readyz",
        summary="This worker has a model loaded and can serve requests",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "No model is loaded yet; `reason` says why"}},
    )
    def readyz() -> Response:
        if holder.recommender is None:
            body = Readiness(ready=False, reason=holder.error, worker_pid=os.getpid())
            return JSONResponse(status_code=503, content=body.model_dump())
        body = Readiness(
            ready=True,
            model_version=holder.version,
            last_reload_error=holder.error,
            experiments_error=state["experiments"].error,
            rules_error=state["rules"].error,
            fallback=holder.fallback,
            worker_pid=os.getpid(),
        )
        return JSONResponse(body.model_dump())

    @app.get(
        "/metrics",
        summary="Prometheus metrics (summed over every worker process)",
        response_class=Response,
        dependencies=[Depends(authenticator.require(ADMIN))],
        responses={
            **auth_responses,
            200: {
                "description": "Prometheus text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
        },
    )
    def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.delete(
        "/users/{user_id}",
        summary="Erase a user from every store (admin)",
        response_model=ErasureReport,
        dependencies=[Depends(authenticator.require(ADMIN))],
        responses={
            **auth_responses,
            422: {"model": ErrorBody, "description": "The id is empty or too long; `problems` names `path.user_id`"},
        },
    )
    async def forget(user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH)]) -> ErasureReport:
        """What `recs forget USER_ID` does (docs/PRIVACY.md): the user's rows leave the landed files, the
        warehouse, every parquet file of the home, the ALS files of every kept model version (re-signed)
        and the online store, live session included. The answer counts what was removed where; the id is
        not repeated. This worker serves the rewritten champion before answering, the others within
        `RECS_SERVE_RELOAD_SECONDS`. An id nobody used answers 200 with zero counts."""
        report = await asyncio.get_running_loop().run_in_executor(None, forget_user, settings, user_id)
        await asyncio.get_running_loop().run_in_executor(None, holder.refresh)
        log.info("erased a user on request: %d rows removed", report.total)
        return report

    @app.get(
        "/recommendations/{user_id}",
        summary="Top-K items for a user, ranked by the champion model",
        response_model=Recommendations,
        responses={**auth_responses, **RECOMMENDATION_RESPONSES},
        dependencies=[read_scope, Depends(_text_of_url)],
    )
    def recommendations(
        user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH)],
        k: Annotated[int, Query(ge=1, le=MAX_K, description="How many items")] = 20,
        category: Annotated[
            str | None, Query(min_length=1, max_length=MAX_ID_LENGTH, description="Only items of this category")
        ] = None,
        explain: Annotated[bool, Query(description="Add the ranker's top feature contributions")] = False,
        diversity: Annotated[
            float | None,
            Query(
                ge=0,
                le=MAX_DIVERSITY,
                description="Strength of the category re-rank: 0 = the ranker's order; 0.1 = a second item of a "
                "category must score a tenth of the score range above the best new category; above 1 = every "
                "category once before any twice. Default: the experiment variant's, else RECS_SERVE_DIVERSITY.",
            ),
        ] = None,
        explore: Annotated[
            int | None,
            Query(
                ge=0,
                le=MAX_K,
                description="Exploration slots: the list's last places go to new items of the user's favourite "
                "categories (source `explore`). Default: the experiment variant's, else RECS_SERVE_EXPLORE_SLOTS.",
            ),
        ] = None,
        exclude: Annotated[
            list[str] | None,
            Query(
                description=f"Item ids to leave out of this answer (repeat the parameter, at most {MAX_EXCLUDE}), "
                "e.g. what the page already shows. With `explain=true` each one a source proposed is listed "
                "under `dropped` with reason `excluded` (items the user hid with a `hide` event: `hidden`).",
            ),
        ] = None,
        rotate: Annotated[
            int | None,
            Query(
                ge=0,
                le=1000,
                description="No-repeat rotation: leave out items shown to this user at least this many times in "
                "the last 24 hours with no event of theirs with the item since (reason `shown_recently`; the "
                "exposure log, online within seconds of an answer). 0 = off. Default: RECS_SERVE_ROTATE_AFTER.",
            ),
        ] = None,
    ) -> Response:
        started = time.perf_counter()
        recommender = holder.serving()
        if recommender is None:
            metrics.requests.labels("not_ready").inc()
            raise ApiError(503, f"no model is loaded yet: {holder.error}")
        if category is not None and category not in recommender.model.categories:
            metrics.requests.labels("bad_request").inc()
            detail = f"unknown category {category!r}: not in the served item catalog"
            raise ApiError(422, detail, [Problem(where="query.category", problem=detail)])
        excluded = frozenset(exclude or ())
        if len(excluded) > MAX_EXCLUDE or any(not 0 < len(i) <= MAX_ID_LENGTH for i in excluded):
            metrics.requests.labels("bad_request").inc()
            detail = f"exclude takes at most {MAX_EXCLUDE} item ids of 1 to {MAX_ID_LENGTH} characters"
            raise ApiError(422, detail, [Problem(where="query.exclude", problem=detail)])
        served_at = datetime.now(UTC)
        stored_id = pseudonyms.of(user_id)  # the id every store and model knows; user_id is only echoed and landed
        experiment = state["experiments"].active(served_at)
        variant = experiment.assign(stored_id) if experiment is not None else None
        variant_fallback = None
        if variant is not None and variant.model_version is not None:
            pinned = holder.for_version(variant.model_version)
            if pinned is None:
                variant_fallback = "variant_model_unavailable"
            else:
                recommender = pinned
        t = time.perf_counter()
        ctx: UserContext = state["reader"].read(user_id)  # read under stored_id
        online_ms = (time.perf_counter() - t) * 1000
        limits = (variant.limits if variant is not None else None) or serve.candidate_limits
        if diversity is None:
            diversity = variant.diversity if variant is not None and variant.diversity is not None else serve.diversity
        if explore is None:
            explore = variant.explore if variant is not None and variant.explore is not None else serve.explore_slots
        rules = state["rules"].active(served_at)
        options = ServeOptions(
            k=k,
            category=category,
            explain=explain,
            diversity=diversity,
            rules=rules,
            explore=explore,
            limits=limits or None,
            exclude=excluded,
            rotate_after=serve.rotate_after if rotate is None else rotate,
        )
        if variant is not None and variant.strategy == POPULAR:
            result = recommender.recommend_popular(ctx, options, online_ms=online_ms)
        else:
            result = recommender.recommend(ctx, options, online_ms=online_ms)
        if variant_fallback is not None:
            result.fallbacks.append(variant_fallback)
        total = time.perf_counter() - started
        for stage, seconds in {**result.stages, "total": total}.items():
            metrics.stage.labels(stage).observe(seconds)
        for reason in result.fallbacks:
            metrics.fallbacks.labels(reason).inc()
        for reason, n in result.dropped.items():
            metrics.dropped.labels("blocked" if reason.startswith("blocked:") else reason).inc(n)
        for (rule, action), n in result.rule_hits.items():
            metrics.rule_items.labels(rule, action).inc(n)
        if ctx.user_features_as_of:
            metrics.feature_age.observe(max(time.time() - ctx.user_features_as_of, 0.0))
        metrics.requests.labels("ok").inc()
        request_id = new_request_id()
        if state["exposures"] is not None:
            state["exposures"].log(
                exposure_record(
                    request_id=request_id,
                    user_id=user_id,
                    served_at=served_at,
                    model_version=result.model_version,
                    items=result.items,
                    experiment=experiment.name if experiment is not None else None,
                    variant=variant.name if variant is not None else None,
                )
            )
        shadow = state["experiments"].shadow_for(stored_id, served_at)
        if shadow is not None and state["shadow"] is not None:
            shadow_limits = shadow.limits or serve.candidate_limits
            state["shadow"].submit(
                ShadowRequest(
                    shadow=shadow,
                    served_request_id=request_id,
                    user_id=user_id,  # for its exposure record: landed raw, like the served one
                    served_at=served_at,
                    ctx=ctx,
                    options=ServeOptions(
                        k=k,
                        category=category,
                        diversity=diversity,  # the served answer's options: only the model differs
                        explore=explore,
                        rules=rules,
                        limits=shadow_limits or None,
                        exclude=excluded,
                        rotate_after=options.rotate_after,
                    ),
                )
            )
        body = Recommendations(
            request_id=request_id,
            user_id=user_id,
            model_version=result.model_version,
            experiment=experiment.name if experiment is not None else None,
            variant=variant.name if variant is not None else None,
            k=k,
            category=category,
            diversity=diversity,
            explore=explore,
            items=result.items,
            fallback=bool(result.fallbacks),
            fallback_reasons=result.fallbacks,
            online_error=ctx.error,
            candidates=result.candidates,
            dropped=result.dropped_items if explain else None,
            timings_ms={s: round(v * 1000, 3) for s, v in {**result.stages, "total": total}.items()},
        )
        # validated above, serialised by pydantic: FastAPI's own re-validation and encoding of the
        # returned value cost 0.35 ms a request against 0.02 ms (measured), a tenth of the compute
        return Response(body.model_dump_json(), media_type="application/json")

    @app.post(
        "/events",
        summary="Collect a batch of events: validate, land, push session features",
        status_code=202,
        response_model=EventsAccepted,
        responses={**auth_responses, **limit_responses, **EVENTS_RESPONSES},
        dependencies=[write_scope],
    )
    async def collect(body: EventsIn, request: Request) -> EventsAccepted:
        """Each event is checked with ingestion's rules. The valid ones are landed and their users' sessions
        pushed (202), the others listed by index with ingestion's reason; when none is valid the answer is a
        422 and nothing is landed. A string that is not valid Unicode (a lone surrogate such as `"\\ud800"`)
        or a number that is not finite refuses the whole batch (422 naming each field): the body is not
        valid JSON text, not an event ingestion would quarantine."""
        events = [e.model_dump(exclude_unset=True) for e in body.events]
        problems = [p for i, event in enumerate(events) for p in text_problems(event, f"body.events.{i}")]
        if problems:
            metrics.events.labels("rejected").inc(len(events))
            raise ApiError(422, "invalid request: the batch is refused, nothing was landed", problems)
        started = time.monotonic()
        # each event's user bucket (its pseudonym), and the id the caller sent for a 429's text
        keyed = [(pseudonyms.of(e["user_id"]), e["user_id"]) for e in events if e.get("user_id") not in (None, "")]
        users = Counter(bucket for bucket, _ in keyed)
        sent = dict(keyed)
        try:
            await take_write_tokens(_key_of(request), users, len(events), shown=sent)
        except ApiError as exc:
            if exc.status == 429:
                metrics.events.labels("rate_limited").inc(len(events))
            raise
        loop = asyncio.get_running_loop()
        rows = with_event_ids(events)  # the ids are known even if the budget runs out
        pending = loop.run_in_executor(state["collect_pool"], state["collector"].collect, rows)
        try:
            # shielded: past the budget the collector goes on (landing, then the session), the client is answered
            result = await asyncio.wait_for(
                asyncio.shield(pending), max(write_budget_s - (time.monotonic() - started), 0)
            )
        except TimeoutError:
            pending.add_done_callback(_log_late_collect)
            metrics.events.labels("late").inc(len(events))
            ids = ", ".join(str(r["event_id"]) for r in rows)
            raise ApiError(
                503,
                f"the collector did not finish within RECS_SERVE_WRITE_BUDGET_MS ({auth.write_budget_ms:g} ms): the "
                f"valid events of the batch (ids {ids}) are landed or being landed, their live sessions may not be "
                "updated; sending the same batch again is safe (ingestion loads each id once)",
                [Problem(where="session", problem="the write budget ran out")],
            ) from None
        metrics.events.labels("accepted").inc(result.accepted)
        metrics.events.labels("rejected").inc(len(result.rejected))
        rejected = [rejected_event(r["index"], r["reason"], events[r["index"]], MAX_ID_LENGTH) for r in result.rejected]
        if not result.accepted:
            problems = [Problem(where=r.where, problem=r.reason) for r in rejected]
            raise ApiError(422, "no event in the batch is valid: nothing was landed", problems)
        if result.push_error is not None:
            raise ApiError(
                503,
                f"{result.accepted} events are stored (landing as {result.landed_file}; ids {', '.join(result.event_ids)}) "
                "but the live session was not updated; sending the same batch again is safe",
                [Problem(where="session", problem=result.push_error)],
            )
        return EventsAccepted(
            accepted=result.accepted,
            rejected=rejected,
            landed_file=result.landed_file,
            sessions_pushed=result.pushed_users,
            event_ids=result.event_ids,
        )

    @app.post(
        "/items",
        summary="Update the catalog: validate, land, apply to what is served",
        status_code=202,
        response_model=ItemsAccepted,
        responses={**auth_responses, **limit_responses, **ITEMS_RESPONSES},
        dependencies=[write_scope],
    )
    async def update_items(body: ItemsIn, request: Request) -> ItemsAccepted:
        """Each update is checked with ingestion's rules; the valid ones are landed (ingestion loads them into
        the warehouse) and, once this answers 202, every worker filters with them: an item marked unavailable
        is no longer recommended. Updates the served model cannot apply (an item it has never seen, an update
        no newer than its item snapshot or than one already applied) are listed in `not_live` with the reason.
        When no update is valid the answer is a 422 and nothing is landed."""
        rows = [i.model_dump(exclude_unset=True) for i in body.items]
        problems = [p for i, row in enumerate(rows) for p in text_problems(row, f"body.items.{i}")]
        if problems:
            raise ApiError(422, "invalid request: the batch is refused, nothing was landed", problems)
        await take_write_tokens(_key_of(request), None, len(rows))
        loop = asyncio.get_running_loop()
        landed = await loop.run_in_executor(state["collect_pool"], land_items, rows, settings.landing_dir)
        rejected = [RejectedItem(index=i, reason=reason) for i, reason in landed.rejected]
        if landed.landed_file is None:
            problems = [Problem(where=f"body.items.{i}", problem=reason) for i, reason in landed.rejected]
            raise ApiError(422, "no item update in the batch is valid: nothing was landed", problems)
        catalog = holder.catalog
        if catalog is None:
            raise ApiError(503, "the service is starting: the catalog is not loaded yet")
        await loop.run_in_executor(state["collect_pool"], catalog.refresh)
        not_live = [
            NotLiveItem(index=i, item_id=item, reason=reason)
            for i, item, stamp in landed.accepted
            if (reason := _not_live(holder.recommender, catalog, item, stamp)) is not None
        ]
        return ItemsAccepted(
            accepted=len(landed.accepted),
            rejected=rejected,
            landed_file=landed.landed_file,
            live=len(landed.accepted) - len(not_live),
            not_live=not_live,
        )

    # the item endpoints (serving/item_routes.py), each needing the recommendations:read scope
    app.include_router(item_routes(holder, state), dependencies=[read_scope], responses=auth_responses)
    return app


def _key_of(request: Request) -> str:
    """The name of the request's API key (set by the scope dependency)."""
    principal: Principal = request.state.principal
    return principal.name


def _log_late_collect(future: Any) -> None:
    """A collect answered 503 past the budget finished: log how (its outcome reached no client)."""
    exc = future.exception()
    if exc is not None:
        log.error("a collect past the write budget failed", exc_info=exc)
    else:
        result = future.result()
        log.warning(
            "a collect past the write budget finished: %s events landed as %s, session push error: %s",
            result.accepted,
            result.landed_file,
            result.push_error,
        )


def _not_live(recommender: Recommender | None, catalog: LiveCatalog, item_id: str, updated_us: int) -> str | None:
    """Why an accepted item update (``updated_at`` in microseconds) is not in force for the served
    model (None when it is)."""
    if recommender is None:
        return "no model is served yet"
    model = recommender.model
    if model.index.positions([item_id])[0] < 0:
        return "the served model has never seen this item: it can be recommended after the next training"
    newest = catalog.newest_update(item_id)
    if newest is not None and newest > updated_us:
        when = datetime.fromtimestamp(newest / 1e6, UTC).isoformat()
        return f"a newer update of the item is in force (updated_at {when})"
    return None


def create_app_from_env() -> FastAPI:
    """The app of one ``recs serve`` worker process: settings from its environment.

    uvicorn calls this factory in every worker (``recs_pipeline.serving.app:create_app_from_env``);
    ``recs serve`` puts its resolved options (``--home`` as ``RECS_HOME``) and the shared metrics
    directory (``PROMETHEUS_MULTIPROC_DIR``) in the environment the workers inherit.
    """
    return create_app(Settings.from_env(), ServeSettings.from_env())
