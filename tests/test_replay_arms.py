"""benchmarks/served_replay.py's freshness arms: when an event becomes visible (pure rules, no service)."""

import importlib.util
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import click
import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "served_replay.py"


def _load():
    spec = importlib.util.spec_from_file_location("served_replay", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("served_replay", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return sys.modules["served_replay"]


replay = _load()


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_pushes_sensor_and_none():
    ts = t("2026-10-26 09:59:55.5")
    assert replay.visible_at("pushes", ts) == ts
    assert replay.SENSOR_LATENCY_S == 10.0
    assert replay.visible_at("sensor", ts) == t("2026-10-26 10:00:05.5")
    assert replay.visible_at("none", ts) is None


@pytest.mark.parametrize(
    ("ts", "hourly", "nightly"),
    [
        # exactly on the hour / at midnight: visible at that instant (at or after)
        ("2026-10-26 10:00:00", "2026-10-26 10:00:00", "2026-10-27 00:00:00"),
        ("2026-10-26 00:00:00", "2026-10-26 00:00:00", "2026-10-26 00:00:00"),
        # a microsecond later: the next boundary
        ("2026-10-26 10:00:00.000001", "2026-10-26 11:00:00", "2026-10-27 00:00:00"),
        ("2026-10-26 00:00:00.000001", "2026-10-26 01:00:00", "2026-10-27 00:00:00"),
        ("2026-10-26 10:59:59.999999", "2026-10-26 11:00:00", "2026-10-27 00:00:00"),
        # the last hour of a day, of a month, of a year
        ("2026-10-26 23:30:00", "2026-10-27 00:00:00", "2026-10-27 00:00:00"),
        ("2026-10-31 23:00:01", "2026-11-01 00:00:00", "2026-11-01 00:00:00"),
        ("2026-12-31 23:59:59", "2027-01-01 00:00:00", "2027-01-01 00:00:00"),
    ],
)
def test_hourly_and_nightly_boundaries(ts, hourly, nightly):
    assert replay.visible_at("hourly", t(ts)) == t(hourly)
    assert replay.visible_at("nightly", t(ts)) == t(nightly)


def test_boundaries_are_utc_whatever_the_time_zone():
    # 01:30 at UTC+2 is 23:30 UTC the day before: the UTC hour and the UTC midnight, not the local ones
    ts = datetime(2026, 10, 26, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert replay.visible_at("hourly", ts) == t("2026-10-26 00:00:00")
    assert replay.visible_at("nightly", ts) == t("2026-10-26 00:00:00")
    # on a local half hour that is a UTC full hour (UTC+05:30): visible at once
    ts = datetime(2026, 10, 26, 5, 30, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert replay.visible_at("hourly", ts) == ts == t("2026-10-26 00:00:00")


def test_rules_refuse_a_naive_time_and_an_unknown_arm():
    with pytest.raises(ValueError, match="timezone-aware"):
        replay.visible_at("hourly", datetime(2026, 10, 26, 10))
    with pytest.raises(ValueError, match="unknown arm"):
        replay.visible_at("weekly", t("2026-10-26 10:00:00"))


def test_every_rule_is_non_decreasing_and_never_early():
    """What replay_user relies on: of a user's time-ordered events the visible ones are a prefix, and an
    arm later in ``ARMS`` order (hourly, nightly) never shows an event before an earlier one (pushes) does."""
    rng = np.random.default_rng(0)
    start = t("2026-10-26 00:00:00")
    offsets = np.sort(rng.integers(0, 3 * 86_400_000_000, size=2000))
    times = [start + timedelta(microseconds=int(o)) for o in offsets]
    times += [start + timedelta(hours=h) for h in range(0, 72, 7)]  # exact hours and midnights too
    times.sort()
    for arm in ("pushes", "sensor", "hourly", "nightly"):
        seen = [replay.visible_at(arm, ts) for ts in times]
        assert all(ts <= at for ts, at in zip(times, seen, strict=True))
        assert all(a <= b for a, b in zip(seen, seen[1:], strict=False))
    for ts in times:
        hourly, nightly = replay.visible_at("hourly", ts), replay.visible_at("nightly", ts)
        assert hourly <= nightly and nightly - ts < timedelta(days=1) and hourly - ts < timedelta(hours=1)


def test_session_kept_is_the_trailing_run_within_the_gap():
    gap = replay.SESSION_GAP.total_seconds()
    assert replay.session_kept([]) == 0
    assert replay.session_kept([0.0]) == 1
    assert replay.session_kept([0.0, gap, 2 * gap]) == 3  # gaps of exactly 30 min stay in the session
    assert replay.session_kept([0.0, gap + 1, gap + 2]) == 2
    assert replay.session_kept([float(i) for i in range(120)]) == replay.MAX_SESSION_EVENTS


def test_parse_arms():
    assert replay.parse_arms("pushes,sensor,hourly,nightly,none") == replay.ARMS
    assert replay.parse_arms(" hourly, none ,pushes") == ("pushes", "hourly", "none")
    for bad, message in (("pushes,hourly", "must include none"), ("none,weekly", "unknown"), ("none,none", "twice")):
        with pytest.raises(click.BadParameter, match=message):
            replay.parse_arms(bad)
