"""One temporal protocol for every model and baseline.

Three consecutive label windows follow the history:

    history ............ | train labels | valid labels | test labels |
                         t1             t2             t3            end   refit

A fold is (cutoff, label window): models and features for fold ``train`` see only events before
``t1`` and learn from labels in ``[t1, t2)``; ``valid`` sees events before ``t2`` and is used for
early stopping and the promotion gate; ``test`` sees events before ``t3`` and gives the reported
figures. Cutoffs are midnights (UTC) so the feature snapshot of the day before each cutoff (the
daily partition, stamped at the cutoff) is exactly "as of the cutoff".

What is served is fitted once more after the evaluation, on everything: the ``refit`` fold's cutoff
is the end of the data and it has no label window; it reads the newest day's partition, stamped at
the end of the data (or later, when events arrived after the split). The evaluation judges the recipe on the three folds; the refit applies the same recipe
to all the data, so the served sources know the newest days the folds held back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl

from recs_pipeline.data.contract import EVENT_TYPE, ITEM_ID, TS, USER_ID

FOLDS: tuple[str, ...] = ("train", "valid", "test")
REFIT = "refit"  # the served model's fold: all the data, no labels

# Graded relevance of an item in a label window: the strongest event the user had with it.
RELEVANCE: dict[str, float] = {"purchase": 3.0, "add_to_cart": 2.0, "favorite": 1.0, "view": 1.0}


def _midnight(ts: datetime) -> datetime:
    return datetime(ts.year, ts.month, ts.day, tzinfo=UTC)


def _as_datetime(value: object, what: str) -> datetime:
    """An aggregate of an event-time column (max, min, quantile) as the datetime it must be."""
    if not isinstance(value, datetime):
        raise TypeError(f"{what} is {value!r}, not a datetime: event times must be a non-empty Datetime column")
    return value


def window_end(event_times: pl.Series) -> datetime:
    """The exclusive end of the data: one microsecond after the last event time."""
    return _as_datetime(event_times.max(), "the last event time") + timedelta(microseconds=1)


@dataclass(frozen=True)
class Fold:
    name: str
    cutoff: datetime
    label_end: datetime

    @property
    def snapshot_day(self) -> str:
        """The daily feature partition whose snapshot is stamped at this cutoff (a midnight ends the
        day before it; the refit's cutoff, the end of the data, ends its own day so far)."""
        return (self.cutoff - timedelta(microseconds=1)).date().isoformat()

    def snapshot_stamp(self, stamps: Iterable[datetime]) -> datetime | None:
        """Which of a feature table's snapshot ``stamps`` this fold reads, or None if none fits: the
        one at its cutoff; the refit reads the newest of its day at or after its cutoff (a partition
        of a day still running is re-stamped when newer events are ingested)."""
        if self.name != REFIT:
            return self.cutoff if self.cutoff in set(stamps) else None
        day_end = _midnight(self.cutoff - timedelta(microseconds=1)) + timedelta(days=1)
        return max((t for t in stamps if self.cutoff <= t <= day_end), default=None)


@dataclass(frozen=True)
class TemporalSplit:
    """The three cutoffs and the end of the test window (exclusive)."""

    t1: datetime
    t2: datetime
    t3: datetime
    end: datetime

    def __post_init__(self) -> None:
        if not (self.t1 < self.t2 < self.t3 < self.end):
            raise ValueError(f"cutoffs must increase: t1 {self.t1} < t2 {self.t2} < t3 {self.t3} < end {self.end}")
        for t in (self.t1, self.t2, self.t3):
            if t != _midnight(t):
                raise ValueError(f"cutoff {t.isoformat()} is not a UTC midnight")

    @property
    def folds(self) -> dict[str, Fold]:
        """The evaluation's folds, each with a label window."""
        return {
            "train": Fold("train", self.t1, self.t2),
            "valid": Fold("valid", self.t2, self.t3),
            "test": Fold("test", self.t3, self.end),
        }

    @property
    def refit(self) -> Fold:
        """What the served model is fitted on: every event (cut at the end of the data); its label
        window is empty."""
        return Fold(REFIT, self.end, self.end)

    def fitted_folds(self) -> list[Fold]:
        """Every fold candidate sources are fitted for, in cutoff order: the evaluation's, then the refit."""
        return [*self.folds.values(), self.refit]

    def snapshot_days(self) -> list[str]:
        """The daily feature partitions the folds and the refit read (one per cutoff), oldest first."""
        return [f.snapshot_day for f in self.fitted_folds()]

    def windows(self) -> dict[str, dict[str, str]]:
        """JSON-ready windows for manifests and reports (the refit's: history only)."""
        windows = {
            f.name: {
                "history_before": f.cutoff.isoformat(),
                "labels_from": f.cutoff.isoformat(),
                "labels_until": f.label_end.isoformat(),
            }
            for f in self.folds.values()
        }
        windows[REFIT] = {"history_before": self.refit.cutoff.isoformat()}
        return windows

    @classmethod
    def from_dates(cls, t1: str, t2: str, t3: str, *, end: datetime) -> TemporalSplit:
        def parse(text: str) -> datetime:
            ts = datetime.fromisoformat(text)
            return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)

        return cls(parse(t1), parse(t2), parse(t3), end)

    @classmethod
    def from_fractions(
        cls, event_times: pl.Series, *, train: float = 0.7, valid: float = 0.8, test: float = 0.9
    ) -> TemporalSplit:
        """Cutoffs at the given quantiles of event time, rounded down to midnight, one day apart at least.

        Quantiles of events (not of the time span) keep windows meaningful when a data set has a
        long sparse tail (the Taobao sample has a few rows weeks before its main nine days).
        """
        if not 0 < train < valid < test < 1:
            raise ValueError(f"fractions must satisfy 0 < train < valid < test < 1, got {train}, {valid}, {test}")
        if event_times.len() == 0:
            raise ValueError("no events to split")
        first = _as_datetime(event_times.min(), "the first event time")
        last = _as_datetime(event_times.max(), "the last event time")
        cut = [
            _midnight(_as_datetime(event_times.quantile(q, interpolation="lower"), f"the {q} quantile of event time"))
            for q in (train, valid, test)
        ]
        for i in (1, 2):  # at least one day per label window
            cut[i] = max(cut[i], cut[i - 1] + timedelta(days=1))
        end = window_end(event_times)
        if cut[0] <= first:
            raise ValueError(f"no history before the first cutoff {cut[0].isoformat()}: use a larger train fraction")
        if cut[2] >= end:
            raise ValueError(f"the data ({first} .. {last}) is too short for three daily label windows")
        return cls(cut[0], cut[1], cut[2], end)


def history(events: pl.DataFrame, fold: Fold) -> pl.DataFrame:
    """Events strictly before the fold's cutoff."""
    return events.filter(pl.col(TS) < fold.cutoff)


def labels(events: pl.DataFrame, fold: Fold) -> pl.DataFrame:
    """(user_id, item_id, relevance) from the fold's label window, for users with history before it."""
    window = events.filter((pl.col(TS) >= fold.cutoff) & (pl.col(TS) < fold.label_end))
    known = history(events, fold).select(USER_ID).unique()
    return (
        window.with_columns(
            relevance=pl.col(EVENT_TYPE).replace_strict(RELEVANCE, default=0.0, return_dtype=pl.Float64)
        )
        .group_by(USER_ID, ITEM_ID)
        .agg(pl.col("relevance").max())
        .filter(pl.col("relevance") > 0)
        .join(known, on=USER_ID, how="semi")
        .sort(USER_ID, ITEM_ID)
    )
