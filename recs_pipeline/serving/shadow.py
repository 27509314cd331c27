"""Shadow scoring: a challenger ranks a sample of live requests after they are answered, never served.

The request handler answers with the served model, then hands the same inputs (the user's online
context, ``k``, category and the served request's id) to :meth:`ShadowScorer.submit`, which only
puts them on a bounded queue: when the queue is full the request is not shadow-scored and the drop
is counted, so a slow or broken challenger can never slow or fail an answer. One background thread
per worker process (at a lower CPU priority than the request threads) loads the challenger once
(:meth:`~recs_pipeline.serving.app.ModelHolder.for_version`), scores each request with it and logs
the list in the exposure log with ``shadow_of`` naming the served request. The
``shadow_comparison`` asset then pairs both lists with what the user did next
(``sql/shadow_outcomes.sql``, :func:`~recs_pipeline.models.online_metrics.compare_shadows`).

Counted in ``recs_shadow_total{outcome}``: ``scored``, ``dropped`` (queue full),
``unavailable`` (the challenger cannot be loaded) and ``failed`` (it raised; logged).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from recs_pipeline.serving.experiments import Shadow
from recs_pipeline.serving.exposures import exposure_record, new_request_id
from recs_pipeline.serving.online import UserContext
from recs_pipeline.serving.recommender import Recommender, ServeOptions

log = logging.getLogger(__name__)

SHADOW_VARIANT = "shadow"  # the exposure's variant; its experiment is the shadow's name
# How much lower the shadow thread's CPU priority is than the request threads' (Linux nice steps).
NICENESS = 10


@dataclass(frozen=True)
class ShadowRequest:
    """What a served request hands over: the inputs the served list was ranked from (the same online
    context, ``k`` and category) and the shadow's own candidate limits in ``options``."""

    shadow: Shadow
    served_request_id: str
    user_id: str
    served_at: datetime
    ctx: UserContext
    options: ServeOptions


class ShadowScorer:
    """A bounded queue of served requests and the thread that scores them with the shadow model.

    Parameters
    ----------
    recommender_for
        ``recommender_for(version)``: the challenger's recommender, or None when it cannot be loaded.
    log_exposure
        Takes the shadow list's exposure record (the service's exposure log).
    capacity
        Requests waiting at most; more are dropped (and counted).
    count
        ``count(outcome)``: a metrics hook (``scored``, ``dropped``, ``unavailable``, ``failed``).
    observe
        ``observe(seconds)``: how long scoring one request took.
    """

    def __init__(
        self,
        recommender_for: Callable[[str], Recommender | None],
        log_exposure: Callable[[dict[str, Any]], Any],
        *,
        capacity: int = 1_000,
        count: Callable[[str], None] | None = None,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("the shadow queue needs capacity >= 1")
        self._recommender_for = recommender_for
        self._log_exposure = log_exposure
        self._count = count or (lambda outcome: None)
        self._observe = observe or (lambda seconds: None)
        self._queue: queue.Queue[ShadowRequest | None] = queue.Queue(maxsize=capacity)
        self._thread = threading.Thread(target=self._run, name="shadow-scoring", daemon=True)
        self._thread.start()

    def submit(self, request: ShadowRequest) -> bool:
        """Queue one served request without waiting; False (and counted as dropped) when the queue is full."""
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            self._count("dropped")
            return False
        return True

    def join(self) -> None:
        """Wait until every queued request is scored (tests, shutdown)."""
        self._queue.join()

    def close(self) -> None:
        """Score what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        try:  # Linux: a thread's own nice value; the request threads keep theirs
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)
        except (AttributeError, OSError):
            log.debug("shadow scoring runs at the request threads' priority")
        while True:
            request = self._queue.get()
            try:
                if request is None:
                    return
                self._score(request)
            finally:
                self._queue.task_done()

    def _score(self, request: ShadowRequest) -> None:
        shadow = request.shadow
        recommender = self._recommender_for(shadow.model_version)
        if recommender is None:
            self._count("unavailable")
            return
        started = time.perf_counter()
        try:
            result = recommender.recommend(request.ctx, request.options)
        except Exception:
            log.exception("shadow %s failed to score request %s", shadow.name, request.served_request_id)
            self._count("failed")
            return
        self._observe(time.perf_counter() - started)
        self._log_exposure(
            exposure_record(
                request_id=new_request_id(),
                user_id=request.user_id,
                served_at=request.served_at,
                model_version=result.model_version,
                items=result.items,
                experiment=shadow.name,
                variant=SHADOW_VARIANT,
                shadow_of=request.served_request_id,
            )
        )
        self._count("scored")
