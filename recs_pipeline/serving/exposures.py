"""The exposure log: every list the service answers, landed for ingestion, never in a request's way.

A request hands its exposure (:func:`exposure_record`, the contract of docs/CONTRACT.md) to
:meth:`ExposureLog.log`, which only puts it on a bounded in-memory queue: when the queue is full the
exposure is dropped and counted, so logging can never slow or fail a request. One background
thread per worker process drains the queue into JSON-lines files landed atomically in
``landing/exposures/`` (:func:`~recs_pipeline.data.landing.landing_writer`), one file per flush
(every ``flush_seconds``, or sooner when ``batch`` exposures wait); ingestion then loads each
request id exactly once. What was logged, landed and dropped is counted (``recs_exposures_total``).
Exposures still queued when the process stops are landed by :meth:`ExposureLog.close`; a process
killed outright loses at most its queue (the drop counter cannot see those).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recs_pipeline.data import contract, landing

log = logging.getLogger(__name__)

KIND = "exposures"


def new_request_id() -> str:
    """A unique id for one answered request: the key of its exposure and of the events attributed to it."""
    return uuid.uuid4().hex


def exposure_record(
    *,
    request_id: str,
    user_id: str,
    served_at: datetime,
    model_version: str,
    items: Sequence[dict[str, Any]],
    experiment: str | None = None,
    variant: str | None = None,
    shadow_of: str | None = None,
) -> dict[str, Any]:
    """One exposure in the contract's shape; ``items`` are the answer's items, best first.
    ``shadow_of``: on a shadow list (never shown), the served request's id."""
    record = {
        contract.REQUEST_ID: request_id,
        contract.USER_ID: user_id,
        contract.TS: served_at.astimezone(UTC).isoformat(),
        contract.MODEL_VERSION: model_version,
        contract.EXPERIMENT: experiment,
        contract.VARIANT: variant,
        contract.ITEMS: [
            {
                contract.ITEM_ID: item["item_id"],
                contract.POSITION: position,
                contract.SCORE: item.get("score"),
                contract.SOURCE: item.get("source"),
            }
            for position, item in enumerate(items, start=1)
        ],
    }
    if shadow_of is not None:
        record[contract.SHADOW_OF] = shadow_of
    return record


class ExposureLog:
    """A bounded queue of exposures and the thread that lands them (see the module docstring).

    Parameters
    ----------
    landing_dir
        The landing zone; files go to ``<landing_dir>/exposures/``.
    capacity
        Exposures the queue holds at most; more are dropped (and counted).
    flush_seconds
        How often the queue is landed.
    batch
        Exposures per landed file at most (a full batch is landed at once).
    count
        ``count(outcome, n)``: called with ``'logged'``, ``'dropped'`` and ``'landed'`` (a metrics hook).
    """

    def __init__(
        self,
        landing_dir: Path,
        *,
        capacity: int = 10_000,
        flush_seconds: float = 2.0,
        batch: int = 5_000,
        count: Callable[[str, int], None] | None = None,
    ) -> None:
        if capacity < 1 or batch < 1 or flush_seconds <= 0:
            raise ValueError("the exposure log needs capacity >= 1, batch >= 1 and flush_seconds > 0")
        self.landing_dir = Path(landing_dir)
        self.flush_seconds = flush_seconds
        self.batch = batch
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=capacity)
        self._count = count or (lambda outcome, n: None)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="exposure-log", daemon=True)
        self._thread.start()

    def log(self, exposure: dict[str, Any]) -> bool:
        """Queue one exposure without waiting; False (and counted as dropped) when the queue is full."""
        try:
            self._queue.put_nowait(exposure)
        except queue.Full:
            self._count("dropped", 1)
            return False
        self._count("logged", 1)
        if self._queue.qsize() >= self.batch:
            self._wake.set()
        return True

    def close(self) -> None:
        """Land what is queued and stop the thread."""
        self._stop.set()
        self._wake.set()
        self._thread.join()

    def flush(self) -> int:
        """Land every queued exposure now (in files of at most ``batch``); how many were landed."""
        landed = 0
        while True:
            chunk = self._take(self.batch)
            if not chunk:
                return landed
            landed += self._land(chunk)

    def _take(self, n: int) -> list[dict[str, Any]]:
        chunk: list[dict[str, Any]] = []
        while len(chunk) < n:
            try:
                chunk.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return chunk

    def _land(self, chunk: list[dict[str, Any]]) -> int:
        name = f"exposures-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        try:
            with landing.landing_writer(self.landing_dir, KIND, name) as tmp:
                tmp.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in chunk))
        except Exception:  # a full disk, a removed folder: the chunk is lost, counted and logged
            log.exception("landing %d exposures failed; they are dropped", len(chunk))
            self._count("dropped", len(chunk))
            return 0
        self._count("landed", len(chunk))
        return len(chunk)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()
        self.flush()
