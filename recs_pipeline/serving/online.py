"""One online-store read per request, with a time budget, turned into a :class:`UserContext`.

The read covers the ``realtime_v1`` feature service (user snapshot, history profile, live session)
for a single entity row. On Feast's SQLite and Redis online stores it reads the store's own tables or
keys directly (:mod:`recs_pipeline.feast.online_read`: one read transaction or one Redis pipeline,
the dictionary Feast's ``get_online_features(...).to_dict(include_event_timestamps=True)`` would
return, at a fraction of its CPU); on any other store it is Feast's call. A store that is down or
slower than the budget yields an empty context flagged ``online_ok=False``; the caller falls back
and says so in the response. :func:`parse_response` is the one parser of that dictionary.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from feast import FeatureStore

log = logging.getLogger(__name__)

FEATURE_SERVICE = "realtime_v1"
USER_VIEW = "user_features"
PROFILE_VIEW = "user_profile"
SESSION_VIEW = "user_session_features"
TS_SUFFIX = "__ts"
PROFILE_AS_OF = "as_of_unix"


@dataclass
class UserContext:
    """What the online store knows about a user right now (empty when it knows nothing or failed)."""

    user_id: str
    user_features: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, list] = field(default_factory=dict)
    session: dict[str, Any] = field(default_factory=dict)
    user_features_as_of: float | None = None  # unix seconds of the user snapshot
    profile_as_of: float | None = None
    online_ok: bool = True
    error: str | None = None

    @property
    def known(self) -> bool:
        return bool(self.user_features) or bool(self.profile.get("hist_item_ids")) or bool(self.session_items())

    def session_items(self) -> list[str]:
        return list(self.session.get("session_item_ids") or [])


def parse_response(user_id: str, values: dict[str, list[Any]]) -> UserContext:
    """Split Feast's ``to_dict(include_event_timestamps=True)`` answer (one row) by view."""
    ctx = UserContext(user_id=user_id)
    view_ts: dict[str, float] = {}
    exact_profile_as_of: float | None = None
    for key, column in values.items():
        if "__" not in key or key.endswith(TS_SUFFIX):
            continue
        view, name = key.split("__", 1)
        value = column[0]
        if value is None:
            continue
        ts = values.get(key + TS_SUFFIX, [None])[0]
        if ts:
            view_ts[view] = max(view_ts.get(view, 0.0), float(ts))
        if view == USER_VIEW:
            ctx.user_features[name] = value
        elif view == PROFILE_VIEW and name == PROFILE_AS_OF:
            exact_profile_as_of = float(value)
        elif view == PROFILE_VIEW:
            ctx.profile[name] = list(value)
        elif view == SESSION_VIEW:
            ctx.session[name] = value
    ctx.user_features_as_of = view_ts.get(USER_VIEW)
    # the profile carries its own as-of time to the microsecond; the store's timestamps are whole seconds
    ctx.profile_as_of = exact_profile_as_of if exact_profile_as_of is not None else view_ts.get(PROFILE_VIEW)
    return ctx


class OnlineReader:
    """Reads a user's online features within ``timeout_s``; never raises for a store failure.

    Where the configured online store has a direct reader (:mod:`recs_pipeline.feast.online_read`:
    Feast's SQLite or Redis store), a read goes straight to the store's tables or keys in the calling
    thread and returns what Feast's call would; the budget is enforced by the store connection itself
    (SQLite: busy timeout and statement interruption at the budget; Redis: socket timeouts, no
    retries), so there is no thread hop. Otherwise it is Feast's ``get_online_features``, run in a
    worker thread that is abandoned at the budget (Feast's call has no timeout of its own).
    """

    def __init__(self, store: FeatureStore, *, timeout_s: float, workers: int = 8) -> None:
        from recs_pipeline.feast.online_read import open_direct_reader

        self.store = store
        self.timeout_s = timeout_s
        self._service = store.get_feature_service(FEATURE_SERVICE)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        try:
            self._direct, why_not = open_direct_reader(store, self._service, timeout_s=timeout_s)
        except Exception as exc:  # never fail the service for the faster path: Feast's call still works
            log.exception("the direct online reader could not be set up")
            self._direct, why_not = None, f"{type(exc).__name__}: {exc}"
        if self._direct is not None:
            log.info("online reads of %s: %s", FEATURE_SERVICE, self._direct.describe())
        else:
            log.info("online reads of %s: Feast get_online_features in a worker thread (%s)", FEATURE_SERVICE, why_not)
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="online-read")

    @property
    def direct(self) -> bool:
        """Whether reads go straight to the store (else through Feast's call)."""
        return self._direct is not None

    def _feast_read(self, user_id: str) -> dict[str, list[Any]]:
        response = self.store.get_online_features(
            features=self._service, entity_rows=[{"user_id": user_id}], full_feature_names=True
        )
        return response.to_dict(include_event_timestamps=True)

    def _read(self, user_id: str) -> dict[str, list[Any]]:
        """Feast's ``to_dict(include_event_timestamps=True)`` for the user, without the budget's thread hop."""
        if self._direct is not None:
            return self._direct.read(user_id)
        return self._feast_read(user_id)

    def warm_up(self) -> None:
        """One read, so the first request does not pay for loading Feast's registry or opening the store."""
        try:
            self._read("__warm_up__")
        except Exception as exc:
            log.warning("online store warm-up failed (requests will fall back until it answers): %s", exc)

    def _values(self, user_id: str) -> dict[str, list[Any]]:
        if self._direct is not None:
            return self._direct.read(user_id)  # in this thread, bounded by the connection's own timeouts
        assert self._pool is not None
        future = self._pool.submit(self._feast_read, user_id)
        try:
            return future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def read(self, user_id: str) -> UserContext:
        """The user's context; ``online_ok=False`` with the error when the store failed or hit the budget.

        A failure at or past the budget is reported as a timeout. A direct read that answers after the
        budget (a starved thread, not a stuck store: those raise at the budget) is kept, with a warning.
        """
        started = time.perf_counter()
        try:
            values = self._values(user_id)
        except Exception as exc:  # the store is down, broken or slower than the budget: degrade, and say so
            elapsed = time.perf_counter() - started
            budget_ms = self.timeout_s * 1000
            if isinstance(exc, concurrent.futures.TimeoutError) and self._direct is None:
                error = f"online store timed out after {budget_ms:.0f} ms"
            elif elapsed >= self.timeout_s:  # a lock wait, socket timeout or interrupted statement at the budget
                error = f"online store timed out after {budget_ms:.0f} ms ({type(exc).__name__}: {exc})"
            else:
                error = f"online store error: {type(exc).__name__}: {exc}"
            log.warning("online read for %s failed after %.1f ms: %s", user_id, elapsed * 1000, error)
            return UserContext(user_id=user_id, online_ok=False, error=error)
        ctx = parse_response(user_id, values)
        elapsed = time.perf_counter() - started
        if elapsed > self.timeout_s:
            log.warning(
                "online read for %s took %.1f ms (budget %.0f ms)", user_id, elapsed * 1000, self.timeout_s * 1000
            )
        else:
            log.debug("online read for %s in %.2f ms", user_id, elapsed * 1000)
        return ctx

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
