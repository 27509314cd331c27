"""A/B experiments of the scoring service: defined in a file, users bucketed deterministically.

The file (``RECS_EXPERIMENTS_FILE``, default ``<home>/experiments.json``) holds a list of experiments::

    {"experiments": [
        {"name": "ranker-vs-popular", "start": "2026-12-01T00:00:00Z", "end": "2026-12-15T00:00:00Z",
         "variants": [
            {"name": "control", "share": 0.5, "control": true},
            {"name": "popular", "share": 0.5, "strategy": "popular"}]}]}

Each variant has a traffic ``share`` (the shares sum to 1), exactly one is the ``control``, and each
may name a registered ``model_version`` (default: the champion), candidate ``limits`` (every source,
as ``RECS_SERVE_LIMITS``), a ``diversity`` strength (the category re-rank, models/diversity.py) and a
``strategy``: ``ranked`` (the default: retrieve and rank) or
``popular`` (the bundle's popular list: a non-personal control). An experiment runs from ``start``
(inclusive) to ``end`` (exclusive); two experiments may not run at the same time (one decides each
answer). A user's variant is a pure function of the experiment's name and the user id
(:func:`bucket`: sha256, so it is sticky across requests, processes and restarts, and independent
across experiments); a request outside every experiment's window is served as usual.

The same file may name one **shadow**: a challenger that scores a sampled ``share`` of live requests
(users bucketed as above, by the shadow's name) beside the served answer, without being served::

    "shadow": {"name": "als-256-shadow", "model_version": "v0007", "share": 0.5,
               "start": "2026-12-01T00:00:00Z", "end": "2026-12-08T00:00:00Z"}

It may also give ``limits`` (as a variant's). Its lists are logged as exposures that name the
served request (``shadow_of``) and compared offline with what was served (the ``shadow_comparison``
asset); scoring happens after the answer, off the request's path (:mod:`recs_pipeline.serving.shadow`).

The service re-reads the file when it changes (:class:`ExperimentsFile`): switching an experiment
on or off needs no restart. A file that is unreadable or invalid is refused as a whole with the
reason (kept in :attr:`ExperimentsFile.error`, shown by ``/readyz``) and the last valid definition
stays in force.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from recs_pipeline.models.ranker_features import SOURCES
from recs_pipeline.serving.watched_file import CHECK_SECONDS, WatchedFile
from recs_pipeline.settings import MAX_DIVERSITY

log = logging.getLogger(__name__)

STRATEGIES = ("ranked", "popular")
RANKED, POPULAR = STRATEGIES
SHARE_TOLERANCE = 1e-6


class ExperimentError(ValueError):
    """The experiments file is invalid; the message says where and why."""


@dataclass(frozen=True)
class Variant:
    name: str
    share: float
    control: bool = False
    model_version: str | None = None
    limits: dict[str, int] | None = None
    strategy: str = RANKED
    diversity: float | None = None  # the category re-rank's strength (None: the service's default)
    explore: int | None = None  # exploration slots for new items (None: the service's default)


@dataclass(frozen=True)
class Shadow:
    """A challenger scoring ``share`` of the requests beside the served answer (never served)."""

    name: str
    model_version: str
    share: float
    start: datetime
    end: datetime
    limits: dict[str, int] | None = None

    def samples(self, user_id: str, at: datetime) -> bool:
        """Whether the user's requests at ``at`` are shadow-scored (sticky per user, like a variant)."""
        return self.start <= at < self.end and bucket(self.name, user_id) < self.share


@dataclass(frozen=True)
class Experiment:
    name: str
    start: datetime
    end: datetime
    variants: tuple[Variant, ...]

    def active(self, at: datetime) -> bool:
        return self.start <= at < self.end

    def assign(self, user_id: str) -> Variant:
        """The user's variant: the one whose cumulative share interval holds the user's bucket."""
        point = bucket(self.name, user_id)
        cumulative = 0.0
        for variant in self.variants:
            cumulative += variant.share
            if point < cumulative:
                return variant
        return self.variants[-1]  # shares sum to 1 within rounding


def bucket(experiment: str, user_id: str) -> float:
    """A user's point in [0, 1) for one experiment: the first 8 bytes of sha256(experiment, user) / 2^64."""
    digest = hashlib.sha256(f"{experiment}\x1f{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def parse(raw: Any) -> tuple[Experiment, ...]:
    """Experiments from the file's JSON (raises :class:`ExperimentError` naming the problem)."""
    return parse_file(raw)[0]


def parse_file(raw: Any) -> tuple[tuple[Experiment, ...], Shadow | None]:
    """The experiments and the shadow (None when the file names none) of the file's JSON."""
    if not isinstance(raw, dict) or not isinstance(raw.get("experiments"), list):
        raise ExperimentError('the file must be an object {"experiments": [...]} (and optionally "shadow": {...})')
    unknown = set(raw) - {"experiments", "shadow"}
    if unknown:
        raise ExperimentError(f"unknown top-level fields {sorted(unknown)}")
    experiments = tuple(_experiment(e, f"experiments[{i}]") for i, e in enumerate(raw["experiments"]))
    names = [e.name for e in experiments]
    if len(set(names)) != len(names):
        raise ExperimentError(f"experiment names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
    ordered = sorted(experiments, key=lambda e: e.start)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.start < a.end:
            raise ExperimentError(f"experiments {a.name!r} and {b.name!r} overlap in time; one decides each answer")
    shadow = None if raw.get("shadow") is None else _shadow(raw["shadow"], "shadow")
    if shadow is not None and shadow.name in names:
        raise ExperimentError(f"shadow.name: {shadow.name!r} is also an experiment's name")
    return experiments, shadow


def _shadow(raw: Any, where: str) -> Shadow:
    if not isinstance(raw, dict):
        raise ExperimentError(f"{where}: must be an object")
    unknown = set(raw) - {"name", "model_version", "share", "start", "end", "limits"}
    if unknown:
        raise ExperimentError(f"{where}: unknown fields {sorted(unknown)}")
    name = parse_name(raw.get("name"), where)
    version = raw.get("model_version")
    if not isinstance(version, str) or not version:
        raise ExperimentError(f"{where}.model_version: a registered version's name is required")
    start, end = parse_window(raw, where)
    return Shadow(name, version, _share(raw.get("share"), where), start, end, _limits(raw.get("limits"), where))


def parse_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ExperimentError(f"{where}.name: a non-empty string is required")
    return value.strip()


def _share(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not 0 < value <= 1:
        raise ExperimentError(f"{where}.share: a number in (0, 1] is required")
    return float(value)


def parse_window(raw: dict, where: str) -> tuple[datetime, datetime]:
    start, end = (_time(raw.get(k), f"{where}.{k}") for k in ("start", "end"))
    if end <= start:
        raise ExperimentError(f"{where}: end {end.isoformat()} is not after start {start.isoformat()}")
    return start, end


def _limits(limits: Any, where: str) -> dict[str, int] | None:
    if limits is None:
        return None
    if not isinstance(limits, dict) or set(limits) != set(SOURCES):
        raise ExperimentError(f"{where}.limits: an object giving every source {', '.join(SOURCES)} a count")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in limits.values()):
        raise ExperimentError(f"{where}.limits: counts must be integers >= 0 (0 turns a source off)")
    if not any(limits.values()):
        raise ExperimentError(f"{where}.limits: every source is off")
    return dict(limits)


def _experiment(raw: Any, where: str) -> Experiment:
    if not isinstance(raw, dict):
        raise ExperimentError(f"{where}: must be an object")
    name = parse_name(raw.get("name"), where)
    start, end = parse_window(raw, where)
    variants = raw.get("variants")
    if not isinstance(variants, list) or len(variants) < 2:
        raise ExperimentError(f"{where}.variants: at least two variants are required")
    parsed = tuple(_variant(v, f"{where}.variants[{j}]") for j, v in enumerate(variants))
    names = [v.name for v in parsed]
    if len(set(names)) != len(names):
        raise ExperimentError(f"{where}.variants: names repeat")
    if sum(v.control for v in parsed) != 1:
        raise ExperimentError(f'{where}.variants: exactly one variant must be the control ("control": true)')
    total = sum(v.share for v in parsed)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise ExperimentError(f"{where}.variants: shares sum to {total:g}, not 1")
    return Experiment(name, start, end, parsed)


def _variant(raw: Any, where: str) -> Variant:
    if not isinstance(raw, dict):
        raise ExperimentError(f"{where}: must be an object")
    unknown = set(raw) - {"name", "share", "control", "model_version", "limits", "strategy", "diversity", "explore"}
    if unknown:
        raise ExperimentError(f"{where}: unknown fields {sorted(unknown)}")
    name, share = parse_name(raw.get("name"), where), _share(raw.get("share"), where)
    control = raw.get("control", False)
    if not isinstance(control, bool):
        raise ExperimentError(f"{where}.control: true or false")
    version = raw.get("model_version")
    if version is not None and (not isinstance(version, str) or not version):
        raise ExperimentError(f"{where}.model_version: a registered version's name")
    strategy = raw.get("strategy", RANKED)
    if strategy not in STRATEGIES:
        raise ExperimentError(f"{where}.strategy: one of {', '.join(STRATEGIES)}")
    diversity = raw.get("diversity")
    if diversity is not None and (
        isinstance(diversity, bool)
        or not isinstance(diversity, int | float)
        or not math.isfinite(diversity)
        or not 0 <= diversity <= MAX_DIVERSITY
    ):
        raise ExperimentError(f"{where}.diversity: a number in [0, {MAX_DIVERSITY:g}] is required")
    explore = raw.get("explore")
    if explore is not None and (isinstance(explore, bool) or not isinstance(explore, int) or not 0 <= explore <= 100):
        raise ExperimentError(f"{where}.explore: an integer in [0, 100] (exploration slots) is required")
    return Variant(
        name,
        share,
        control,
        version,
        _limits(raw.get("limits"), where),
        strategy,
        None if diversity is None else float(diversity),
        explore,
    )


def _time(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise ExperimentError(f"{where}: an ISO-8601 time with an offset is required")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ExperimentError(f"{where}: {value!r} is not an ISO-8601 time") from None
    if parsed.tzinfo is None:
        raise ExperimentError(f"{where}: {value!r} has no UTC offset")
    return parsed


class ExperimentsFile:
    """The experiments and the shadow in force, re-read when the file changes (a
    :class:`~recs_pipeline.serving.watched_file.WatchedFile`: a missing file means none, an invalid
    one is refused with the reason in :attr:`error` and the last valid definition stays in force)."""

    def __init__(self, path: Path, *, check_seconds: float = CHECK_SECONDS) -> None:
        self._file: WatchedFile[tuple[tuple[Experiment, ...], Shadow | None]] = WatchedFile(
            path, parse_file, ((), None), what="experiments file", check_seconds=check_seconds
        )

    @property
    def path(self) -> Path:
        return self._file.path

    @property
    def error(self) -> str | None:
        return self._file.error

    @property
    def experiments(self) -> tuple[Experiment, ...]:
        return self._file.value[0]

    @property
    def shadow(self) -> Shadow | None:
        return self._file.value[1]

    def active(self, at: datetime) -> Experiment | None:
        """The experiment running at ``at`` (None when none is)."""
        experiments, _ = self._file.current()
        return next((e for e in experiments if e.active(at)), None)

    def shadow_for(self, user_id: str, at: datetime) -> Shadow | None:
        """The shadow scoring this user's request at ``at`` (None when none does); call after :meth:`active`."""
        shadow = self.shadow
        return shadow if shadow is not None and shadow.samples(user_id, at) else None

    def reload(self) -> None:
        self._file.reload()
