"""One online-store read per request, with a time budget, turned into a :class:`UserContext`.

The read goes through the ``realtime_v1`` feature service (user snapshot, history profile, live
session) for a single entity row, so Feast does one lookup per view. A store that is down or
slower than the budget yields an empty context flagged ``online_ok=False``; the caller falls back
and says so in the response.
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
    """Reads a user's online features within ``timeout_s``; never raises for a store failure."""

    def __init__(self, store: FeatureStore, *, timeout_s: float, workers: int = 8) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self._service = store.get_feature_service(FEATURE_SERVICE)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="online-read")

    def _read(self, user_id: str) -> dict[str, list[Any]]:
        response = self.store.get_online_features(
            features=self._service, entity_rows=[{"user_id": user_id}], full_feature_names=True
        )
        return response.to_dict(include_event_timestamps=True)

    def warm_up(self) -> None:
        """One untimed read, so the first request does not pay for loading Feast's registry."""
        try:
            self._read("__warm_up__")
        except Exception as exc:
            log.warning("online store warm-up failed (requests will fall back until it answers): %s", exc)

    def read(self, user_id: str) -> UserContext:
        started = time.perf_counter()
        future = self._pool.submit(self._read, user_id)
        try:
            values = future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            log.warning("online read for %s exceeded %.0f ms", user_id, self.timeout_s * 1000)
            return UserContext(
                user_id=user_id, online_ok=False, error=f"online store timed out after {self.timeout_s * 1000:.0f} ms"
            )
        except Exception as exc:  # the store is down or broken: degrade, and say so
            log.warning("online read for %s failed: %s", user_id, exc)
            return UserContext(
                user_id=user_id, online_ok=False, error=f"online store error: {type(exc).__name__}: {exc}"
            )
        ctx = parse_response(user_id, values)
        log.debug("online read for %s in %.2f ms", user_id, (time.perf_counter() - started) * 1000)
        return ctx

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
