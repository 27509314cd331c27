"""The temporal protocol: cutoffs, folds and the history / label windows, on events whose answers are known."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from recs_pipeline.data.contract import EVENT_TYPE, ITEM_ID, TS, USER_ID
from recs_pipeline.models import reports
from recs_pipeline.models.protocol import FOLDS, REFIT, RELEVANCE, Fold, TemporalSplit, history, labels
from recs_pipeline.models.training import UserSample, evaluation_users, sample_users

D = datetime(2024, 5, 1, tzinfo=UTC)  # a midnight
US = timedelta(microseconds=1)


def day(n: float, hours: float = 0.0) -> datetime:
    return D + timedelta(days=n, hours=hours)


def times(values: list[datetime]) -> pl.Series:
    return pl.Series(TS, values, dtype=pl.Datetime("us", "UTC"))


def events(rows: list[tuple[str, str, str, datetime]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={USER_ID: pl.String, ITEM_ID: pl.String, EVENT_TYPE: pl.String, TS: pl.Datetime("us", "UTC")},
        orient="row",
    )


# --------------------------------------------------------------------------------------------
# TemporalSplit.from_fractions
# --------------------------------------------------------------------------------------------


def test_from_fractions_cuts_at_event_quantiles_rounded_to_midnight() -> None:
    # 120 events over 10 days (30 on day 6): the 0.7 / 0.8 / 0.9 quantiles fall inside days 6, 7, 8
    # (whatever the interpolation), at hours that are not midnight.
    counts = [10] * 6 + [30, 10, 10, 10]
    ts = times([day(d, 13.5) + timedelta(minutes=7 * k) for d, n in enumerate(counts) for k in range(n)])
    split = TemporalSplit.from_fractions(ts.shuffle(seed=1))
    assert (split.t1, split.t2, split.t3) == (day(6), day(7), day(8))
    assert split.end == ts.max() + timedelta(microseconds=1) == day(9, 13.5) + timedelta(minutes=63, microseconds=1)
    for t in (split.t1, split.t2, split.t3):
        assert t.utcoffset() == timedelta(0) and (t.hour, t.minute, t.second, t.microsecond) == (0, 0, 0, 0)
    # Other fractions move the cutoffs accordingly: 0.3 / 0.55 / 0.72 of 120 events are in days 3, 6, 6 -> 3, 6, 7.
    other = TemporalSplit.from_fractions(ts, train=0.3, valid=0.55, test=0.72)
    assert (other.t1, other.t2, other.t3) == (day(3), day(6), day(7))


def test_from_fractions_uses_event_quantiles_not_the_time_span() -> None:
    # A sparse early tail (5 events a month before) must not drag the cutoffs back.
    tail = [day(-30, h) for h in range(5)]
    main = [day(d, 12) + timedelta(seconds=s) for d in range(10) for s in range(20)]
    split = TemporalSplit.from_fractions(times(tail + main))
    assert (split.t1, split.t2, split.t3) == (day(6), day(7), day(8))
    # By time span, 70% of [day -30, day 10) would be around day -2.
    assert split.t1 > day(0)


def test_from_fractions_keeps_label_windows_at_least_a_day_long() -> None:
    # Nearly everything on one day: the quantiles coincide, the cutoffs are pushed one day apart.
    ts = times([day(0, 1)] + [day(5, 1) + timedelta(minutes=m) for m in range(100)] + [day(9, 20)])
    split = TemporalSplit.from_fractions(ts)
    assert (split.t1, split.t2, split.t3) == (day(5), day(6), day(7))
    assert split.t2 - split.t1 >= timedelta(days=1) and split.t3 - split.t2 >= timedelta(days=1)
    assert split.t1 < split.t2 < split.t3 < split.end


def test_from_fractions_rejects_data_too_short_for_three_windows() -> None:
    history_day = [day(-1, 12)]  # one event before t1, so the train fold has history
    with pytest.raises(ValueError, match="too short"):  # two full days
        TemporalSplit.from_fractions(
            times(history_day + [day(0, h) for h in range(24)] + [day(1, h) for h in range(24)])
        )
    with pytest.raises(ValueError, match="no events"):
        TemporalSplit.from_fractions(times([]))
    # 30 events on day 0: t1 = day 0, the windows push t2, t3 to days 1, 2. The test window [t3, end) needs an
    # event at or after t3: one exactly at midnight of day 2 is enough, one a microsecond earlier is not.
    first_day = [day(0, 0.5) + timedelta(minutes=m) for m in range(30)]
    ok = TemporalSplit.from_fractions(times([*history_day, *first_day, day(2)]))
    assert (ok.t1, ok.t2, ok.t3, ok.end) == (day(0), day(1), day(2), day(2) + US)
    with pytest.raises(ValueError, match="too short"):
        TemporalSplit.from_fractions(times([*history_day, *first_day, day(2) - US]))
    with pytest.raises(ValueError, match="no history before the first cutoff"):
        TemporalSplit.from_fractions(times([*first_day, day(2)]))


@pytest.mark.parametrize(
    ("train", "valid", "test"),
    [
        (0.0, 0.8, 0.9),
        (0.7, 0.7, 0.9),
        (0.8, 0.7, 0.9),
        (0.7, 0.8, 1.0),
        (0.7, 0.9, 0.8),
        (-0.1, 0.5, 0.6),
        (float("nan"), 0.8, 0.9),
    ],
)
def test_from_fractions_rejects_bad_fractions(train: float, valid: float, test: float) -> None:
    ts = times([day(d, 12) for d in range(30)])
    with pytest.raises(ValueError, match="fractions"):
        TemporalSplit.from_fractions(ts, train=train, valid=valid, test=test)


# --------------------------------------------------------------------------------------------
# TemporalSplit construction and folds
# --------------------------------------------------------------------------------------------


def test_from_dates_parses_iso_dates_as_utc_midnights() -> None:
    split = TemporalSplit.from_dates("2024-05-08", "2024-05-09", "2024-05-10", end=day(12))
    assert (split.t1, split.t2, split.t3, split.end) == (day(7), day(8), day(9), day(12))
    assert split.t1.tzinfo is not None and split.t1.utcoffset() == timedelta(0)
    with pytest.raises(ValueError):
        TemporalSplit.from_dates("2024-05-08", "not a date", "2024-05-10", end=day(12))
    with pytest.raises(ValueError, match="midnight"):
        TemporalSplit.from_dates("2024-05-08T06:00", "2024-05-09", "2024-05-10", end=day(12))


def test_from_dates_respects_an_explicit_offset() -> None:
    with pytest.raises(ValueError, match="midnight"):
        TemporalSplit.from_dates("2024-05-08T00:00:00+02:00", "2024-05-09", "2024-05-10", end=day(12))


def test_split_rejects_non_midnight_or_non_increasing_cutoffs() -> None:
    TemporalSplit(day(1), day(2), day(3), day(3, 0.5))  # valid; end need not be a midnight
    with pytest.raises(ValueError, match="midnight"):
        TemporalSplit(day(1, 1), day(2), day(3), day(4))
    with pytest.raises(ValueError, match="midnight"):
        TemporalSplit(day(1), day(2) + timedelta(microseconds=1), day(3), day(4))
    with pytest.raises(ValueError, match="midnight"):
        TemporalSplit(day(1), day(2), day(3, 23), day(4))
    for bad in [(day(2), day(1), day(3), day(4)), (day(1), day(2), day(2), day(4)), (day(1), day(2), day(3), day(3)),
                (day(1), day(1), day(1), day(4))]:  # fmt: skip
        with pytest.raises(ValueError, match="increase"):
            TemporalSplit(*bad)


def test_folds_map_to_consecutive_label_windows() -> None:
    split = TemporalSplit(day(1), day(2), day(4), day(6, 3))
    folds = split.folds
    assert tuple(folds) == FOLDS == ("train", "valid", "test")
    assert folds["train"] == Fold("train", day(1), day(2))
    assert folds["valid"] == Fold("valid", day(2), day(4))
    assert folds["test"] == Fold("test", day(4), day(6, 3))
    assert [f.name for f in folds.values()] == list(FOLDS)
    assert [f.snapshot_day for f in folds.values()] == ["2024-05-01", "2024-05-02", "2024-05-04"]
    assert Fold("x", datetime(2024, 3, 1, tzinfo=UTC), day(0)).snapshot_day == "2024-02-29"


def test_the_refit_takes_every_event_and_reads_the_newest_days_snapshot() -> None:
    split = TemporalSplit(day(1), day(2), day(4), day(6, 3))  # the last event on 2024-05-07, before 03:00
    assert split.refit == Fold(REFIT, day(6, 3), day(6, 3))  # cut at the end of the data; no labels
    assert split.fitted_folds() == [*split.folds.values(), split.refit]
    assert split.snapshot_days() == ["2024-05-01", "2024-05-02", "2024-05-04", "2024-05-07"]
    # the newest day's partition is stamped at the end of the data, or later once newer events arrive
    assert split.refit.snapshot_stamp([day(4), day(6, 3)]) == day(6, 3)
    assert split.refit.snapshot_stamp([day(4), day(6, 3), day(6, 5)]) == day(6, 5)
    assert split.refit.snapshot_stamp([day(4), day(6, 2), day(7, 1)]) is None  # older, or another day's
    assert split.folds["test"].snapshot_stamp([day(4), day(6, 3)]) == day(4)  # the folds: their cutoff only
    assert split.folds["test"].snapshot_stamp([day(4, 1)]) is None
    # data ending at midnight: its last event, and so the refit's partition, is the day before
    assert TemporalSplit(day(1), day(2), day(4), day(6)).refit.snapshot_day == "2024-05-06"


def test_windows_are_json_ready() -> None:
    split = TemporalSplit(day(1), day(2), day(4), day(6, 3))
    windows = split.windows()
    assert json.loads(json.dumps(windows)) == windows
    assert windows == {
        "train": {"history_before": day(1).isoformat(), "labels_from": day(1).isoformat(), "labels_until": day(2).isoformat()},
        "valid": {"history_before": day(2).isoformat(), "labels_from": day(2).isoformat(), "labels_until": day(4).isoformat()},
        "test": {"history_before": day(4).isoformat(), "labels_from": day(4).isoformat(), "labels_until": day(6, 3).isoformat()},
        "refit": {"history_before": day(6, 3).isoformat()},
    }  # fmt: skip
    assert datetime.fromisoformat(windows["valid"]["history_before"]) == day(2)


# --------------------------------------------------------------------------------------------
# history, labels
# --------------------------------------------------------------------------------------------

FOLD = Fold("train", day(5), day(7))

EVENTS = events(
    [
        # u1: history, then several events on item a in the window (max grade wins), a cart on b, a view on c.
        ("u1", "a", "view", day(1)),
        ("u1", "a", "view", day(5)),  # exactly at the cutoff: a label, not history
        ("u1", "a", "purchase", day(6)),
        ("u1", "a", "add_to_cart", day(6, 1)),
        ("u1", "b", "add_to_cart", day(5, 3)),
        ("u1", "b", "view", day(5, 4)),
        ("u1", "c", "favorite", day(7) - US),  # last microsecond of the window
        ("u1", "d", "purchase", day(7)),  # exactly at label_end: excluded
        ("u1", "e", "purchase", day(5) - US),  # last microsecond of history
        # u2: history, only views in the window.
        ("u2", "x", "view", day(2)),
        ("u2", "y", "view", day(6)),
        # u3: no history before the cutoff -> no labels, however strong.
        ("u3", "a", "purchase", day(5, 1)),
        # u4: history but nothing in the window.
        ("u4", "a", "view", day(4)),
        ("u4", "b", "purchase", day(8)),
        # u5: an unknown event type in the window only.
        ("u5", "q", "view", day(0)),
        ("u5", "r", "share", day(6)),
    ]
)


def test_history_is_strictly_before_the_cutoff() -> None:
    past = history(EVENTS, FOLD)
    assert past[TS].max() == day(5) - US
    assert (past[TS] < FOLD.cutoff).all()
    assert sorted(past.select(USER_ID, ITEM_ID).rows()) == [
        ("u1", "a"), ("u1", "e"), ("u2", "x"), ("u4", "a"), ("u5", "q"),
    ]  # fmt: skip
    assert past.columns == EVENTS.columns


def test_labels_are_graded_maxima_within_the_window_for_known_users() -> None:
    truth = labels(EVENTS.sample(fraction=1.0, shuffle=True, seed=3), FOLD)
    assert truth.columns == [USER_ID, ITEM_ID, "relevance"]
    assert truth.rows() == [
        ("u1", "a", 3.0),  # view at the cutoff, purchase, cart: max is the purchase
        ("u1", "b", 2.0),  # cart then view
        ("u1", "c", 1.0),  # favorite, a microsecond before label_end
        ("u2", "y", 1.0),
    ]
    # Excluded: d (at label_end), e (history), u3 (no history), u4 (outside window), u5 (unknown type is no relevance).
    assert truth.schema["relevance"] == pl.Float64


def test_relevance_grades() -> None:
    assert RELEVANCE["purchase"] > RELEVANCE["add_to_cart"] > RELEVANCE["view"] == RELEVANCE["favorite"] > 0
    for event_type, grade in RELEVANCE.items():
        ev = events([("u", "h", "view", day(0)), ("u", "i", event_type, day(5, 1))])
        assert labels(ev, FOLD).rows() == [("u", "i", grade)]


def test_evaluation_users_are_users_with_labels() -> None:
    users, truth = evaluation_users(EVENTS, FOLD)
    assert users == ["u1", "u2"]
    assert truth.equals(labels(EVENTS, FOLD))


# --------------------------------------------------------------------------------------------
# sample_users
# --------------------------------------------------------------------------------------------


def test_sample_users_is_seeded_and_capped() -> None:
    users = [f"u{i:04d}" for i in range(1000)]
    a = sample_users(users, max_users=100, seed=1)
    assert a == sample_users(users, max_users=100, seed=1)
    assert len(a) == len(set(a)) == 100 and set(a) <= set(users)
    assert a == sorted(a)
    assert a != sample_users(users, max_users=100, seed=2)
    assert a != users[:100]  # a sample, not the first ones


def test_sample_users_returns_everyone_under_the_cap() -> None:
    users = ["b", "a", "c"]
    assert sample_users(users, max_users=3, seed=0) == users
    assert sample_users(users, max_users=10, seed=0) == users
    assert sample_users(users, max_users=None, seed=0) == users
    assert sorted(sample_users(users, max_users=2, seed=0)) == sample_users(users, max_users=2, seed=0)
    assert len(sample_users(users, max_users=2, seed=0)) == 2


def test_a_user_sample_records_what_it_was_drawn_from() -> None:
    users = [f"u{i:04d}" for i in range(1000)]
    sample = UserSample.draw(users, max_users=100, seed=1)
    assert sample.users == sample_users(users, max_users=100, seed=1)
    assert sample.sampled and sample.to_json() == {"users": 100, "population": 1000, "seed": 1, "max_users": 100}
    everyone = UserSample.draw(users, max_users=None, seed=1)
    assert not everyone.sampled and everyone.users == users


def test_the_evaluation_report_says_when_its_users_are_a_sample(tmp_path) -> None:
    """A sampled test window: the report states the sample size, the window's users and that the
    intervals come from the sample, in the JSON and in the Markdown."""
    cell = {"value": 0.2, "ci_low": 0.1, "ci_high": 0.3}
    result = {
        m: dict(cell) for m in ("ndcg@20", "recall@20", "map@20", "hitrate@20", "mrr", "coverage@20", "novelty@20")
    }
    windows = {"test": {"labels_from": "a", "labels_until": "b"}}
    paths = reports.write_evaluation(
        tmp_path, test={"als": result}, valid={"als": result}, windows=windows, users=500, population=4321, dataset="d"
    )
    report = json.loads(paths["json"].read_text())
    assert report["users"] == 500 and report["users_in_window"] == 4321 and report["sampled"] is True
    assert "500 users sampled" in report["intervals"] and "of the 4321" in report["intervals"]
    assert "come from the sample" in report["intervals"]
    assert report["intervals"] in paths["markdown"].read_text()
    whole = reports.write_evaluation(
        tmp_path, test={"als": result}, valid={"als": result}, windows=windows, users=500, population=500, dataset="d"
    )
    report = json.loads(whole["json"].read_text())
    assert report["sampled"] is False and report["intervals"].startswith("all 500 users")


def test_from_fractions_refuses_a_first_cutoff_without_history_before_it() -> None:
    times = pl.Series([datetime(2024, 5, 1, 0, 0, tzinfo=UTC) + timedelta(hours=h) for h in range(24 * 10)])
    with pytest.raises(ValueError, match="no history before the first cutoff"):
        TemporalSplit.from_fractions(times, train=0.01, valid=0.5, test=0.9)
