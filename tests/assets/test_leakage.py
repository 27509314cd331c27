"""Leakage tests of the ranking training set: what a training row at cutoff T may know.

One small synthetic pipeline home (ingest, two daily feature partitions, Feast apply, the split
and the feature partitions of the three fold cutoffs) is shared by every test. The expected values
come from ``leakage_oracle`` (plain polars on the raw landed files), never from ``sql/``.

Tests that plant rows in DuckDB undo them (and rebuild the snapshots) before returning, so the
shared home is the same for every test.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from feast import FeatureStore
from homes import copy_home
from leakage_oracle import ALL_COLUMNS, catalog_at, expected_rows, mismatches
from polars.testing import assert_frame_equal

from recs_pipeline.feast import feast_store
from recs_pipeline.models import ranker_features, ranking
from recs_pipeline.models.protocol import Fold, TemporalSplit, history, labels
from recs_pipeline.models.workspace import interactions_at
from recs_pipeline.runner import PipelineRunner
from recs_pipeline.settings import Settings
from recs_pipeline.warehouse import db, features

PLANT = "leakage-test"  # file_hash of planted events / catalog versions
PLANT_CREATED = datetime(2100, 1, 1, tzinfo=UTC)  # created_timestamp of planted feature rows (wins ties)
ABSURD = 1_000_000
US = timedelta(microseconds=1)
DAY = timedelta(days=1)
# Rebuilt snapshots may differ in the last bit of float sums (summation order); exact otherwise.
FLOAT_REL = 1e-12


@dataclass(frozen=True)
class Home:
    settings: Settings
    split: TemporalSplit
    store: FeatureStore
    events: pl.DataFrame  # raw landed events
    catalog: pl.DataFrame  # raw landed catalog versions


@pytest.fixture(scope="module")
def home(feature_pipeline, tmp_path_factory: pytest.TempPathFactory) -> Home:
    """A copy of the session's feature home (ingest, two daily snapshots, Feast) plus the retrain's
    split and its folds' feature partitions."""
    settings = copy_home(feature_pipeline.settings, tmp_path_factory.mktemp("leakage") / "home")
    split = PipelineRunner(settings, instance=feature_pipeline.instance).prepare_retrain()
    events = pl.read_parquet(settings.landing_dir / "events" / "*.parquet")
    catalog = pl.read_parquet(settings.landing_dir / "items" / "*.parquet")
    return Home(settings, split, feast_store.open_store(settings), events, catalog)


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def training_rows(h: Home, pairs: pl.DataFrame, t: datetime) -> pl.DataFrame:
    """The feature part of a ranking row exactly as ``ranking_dataset`` builds it."""
    rows = ranking.fetch_features(h.store, pairs, as_of=t)
    rows = ranking.add_history_features(rows, interactions_at(h.settings.features_dir, t), as_of=t)
    return rows.sort("user_id", "item_id")


def rebuild(settings: Settings, cutoffs: list[datetime]) -> None:
    """Rebuild and export the snapshots at ``cutoffs`` the way the feature assets' partitions do."""
    with db.connect(settings.duckdb_path) as con:
        for cutoff in cutoffs:
            for table in features.FEATURE_TABLES:
                features.build_snapshot(
                    con, table, as_of=cutoff, created=datetime.now(UTC), replaces_after=cutoff - DAY
                )
        for table in features.FEATURE_TABLES:
            features.export_table(con, table, settings.features_dir)


def event(user: str, item: str, kind: str, ts: datetime, n: int) -> dict:
    return {
        "event_id": f"{PLANT}-{n}",
        "user_id": user,
        "item_id": item,
        "event_type": kind,
        "ts": ts,
        "session_id": f"{PLANT}-{user}",
    }


@contextmanager
def planted(
    settings: Settings, cutoffs: list[datetime], *, events: list[dict] = (), items: list[dict] = ()
) -> Iterator[None]:
    """Insert events / catalog versions into DuckDB, rebuild ``cutoffs``; undo both on exit."""
    now = datetime.now(UTC)
    try:
        with db.connect(settings.duckdb_path) as con:
            for e in events:
                con.execute(
                    "INSERT INTO events (event_id, user_id, item_id, event_type, ts, session_id, file_hash, ingested_at) VALUES ($event_id, $user_id, $item_id, $event_type, $ts, $session_id, $h, $now)",
                    {**e, "h": PLANT, "now": now},
                ).fetchall()
            for i in items:
                con.execute(
                    "INSERT INTO item_versions VALUES ($item_id, $category_id, $price, $available, $updated_at, $h, $now)",
                    {**i, "h": PLANT, "now": now},
                ).fetchall()
            stored = con.execute(
                "SELECT (SELECT count(*) FROM events WHERE file_hash = $h), "
                "(SELECT count(*) FROM item_versions WHERE file_hash = $h)",
                {"h": PLANT},
            ).fetchall()[0]
        assert stored == (len(events), len(items))
        rebuild(settings, cutoffs)
        yield
    finally:
        with db.connect(settings.duckdb_path) as con:
            con.execute("DELETE FROM events WHERE file_hash = $h", {"h": PLANT}).fetchall()
            con.execute("DELETE FROM item_versions WHERE file_hash = $h", {"h": PLANT}).fetchall()
        rebuild(settings, cutoffs)


@contextmanager
def planted_feature_row(
    settings: Settings, table: str, key: dict, source_stamp: datetime, stamp: datetime, values: dict
) -> Iterator[None]:
    """Copy ``table``'s row ``key`` at ``source_stamp`` to ``stamp`` with ``values`` replaced; re-export; undo on exit."""
    where = " AND ".join(f"{k} = ${k}" for k in key)
    replace = ", ".join(f"${k} AS {k}" for k in values)
    try:
        with db.connect(settings.duckdb_path) as con:
            con.execute(
                f"INSERT INTO {table} SELECT * REPLACE ({replace}, $stamp AS event_timestamp, $created AS created_timestamp) "
                f"FROM {table} WHERE {where} AND event_timestamp = $source",
                {**key, **values, "stamp": stamp, "created": PLANT_CREATED, "source": source_stamp},
            ).fetchall()
            n = con.execute(
                f"SELECT count(*) FROM {table} WHERE created_timestamp = $c", {"c": PLANT_CREATED}
            ).fetchall()[0][0]
            assert n == 1, f"planted {n} rows in {table}"
            features.export_table(con, table, settings.features_dir)
        yield
    finally:
        with db.connect(settings.duckdb_path) as con:
            con.execute(f"DELETE FROM {table} WHERE created_timestamp = $c", {"c": PLANT_CREATED}).fetchall()
            features.export_table(con, table, settings.features_dir)


@dataclass(frozen=True)
class Sample:
    pairs: pl.DataFrame
    just_before: list[str]  # users whose last event is the closest before T
    right_after: list[str]  # users with history whose next event is the closest at/after T
    new_users: list[str]  # users first seen at/after T
    new_items: list[str]  # items entering the catalog at/after T
    gap_before: timedelta  # T - newest event before T among sampled users
    gap_after: timedelta  # earliest event at/after T - T among sampled users with history


def sample_pairs(events: pl.DataFrame, catalog: pl.DataFrame, t: datetime, *, seed: int = 0) -> Sample:
    past, future = events.filter(pl.col("ts") < t), events.filter(pl.col("ts") >= t)
    last = (
        past.group_by("user_id").agg(pl.col("ts").max().alias("last")).sort("last", "user_id", descending=[True, False])
    )
    nxt = future.group_by("user_id").agg(pl.col("ts").min().alias("next")).sort("next", "user_id")
    known = set(last["user_id"])
    just_before = last.head(6)["user_id"].to_list()
    right_after_rows = nxt.filter(pl.col("user_id").is_in(known)).head(6)
    right_after = right_after_rows["user_id"].to_list()
    new_users = nxt.filter(~pl.col("user_id").is_in(known)).head(2)["user_id"].to_list()
    others = last.filter(~pl.col("user_id").is_in(just_before + right_after)).sample(12, seed=seed)["user_id"].to_list()
    users = just_before + right_after + new_users + others

    hot = (
        past.group_by("item_id").agg(pl.col("ts").max().alias("last")).sort("last", "item_id", descending=[True, False])
    )
    next_items = future.group_by("item_id").agg(pl.col("ts").min().alias("n")).sort("n", "item_id")
    new_items = catalog.filter(pl.col("updated_at") >= t).sort("updated_at", "item_id").head(2)["item_id"].to_list()
    pool = (
        hot.head(5)["item_id"].to_list()
        + next_items.head(3)["item_id"].to_list()
        + new_items
        + catalog.sample(6, seed=seed)["item_id"].to_list()
    )
    own = past.sort("ts").group_by("user_id").agg(pl.col("item_id").last().alias("item_id"))
    cross = pl.DataFrame({"user_id": users, "item_id": [pool[k % len(pool)] for k in range(len(users))]})
    cross2 = pl.DataFrame({"user_id": users, "item_id": [pool[(k * 7 + 3) % len(pool)] for k in range(len(users))]})
    pairs = pl.concat([own.filter(pl.col("user_id").is_in(users)), cross, cross2]).unique().sort("user_id", "item_id")
    return Sample(
        pairs=pairs,
        just_before=just_before,
        right_after=right_after,
        new_users=new_users,
        new_items=new_items,
        gap_before=t - last["last"][0],
        gap_after=right_after_rows["next"][0] - t,
    )


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=FLOAT_REL, abs_tol=0.0)
    return a == b


def assert_same_rows(got: pl.DataFrame, want: pl.DataFrame) -> None:
    """Cell-for-cell equality of two training-row frames, listing every differing cell.

    Integers, strings and booleans must be equal; floats within ``FLOAT_REL`` (a rebuilt snapshot
    may sum the same doubles in another order: affinity_share_30d moves by ~1 ulp).
    """
    assert got.columns == want.columns
    assert got.schema == want.schema
    assert got.select("user_id", "item_id").rows() == want.select("user_id", "item_id").rows()
    diffs = [
        f"{u}/{i} {col}: {a!r} != {b!r}"
        for col in got.columns
        for (u, i), a, b in zip(
            got.select("user_id", "item_id").rows(), got[col].to_list(), want[col].to_list(), strict=True
        )
        if not _same(a, b)
    ]
    assert not diffs, "\n".join(diffs[:40])


def _value(rows: pl.DataFrame, user: str, item: str, col: str):
    return rows.filter((pl.col("user_id") == user) & (pl.col("item_id") == item))[col].item()


# ------------------------------------------------------------------------------------------------
# 1. Feast's training rows equal the independent as-of oracle
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fold", ["train", "valid", "test"])
def test_feast_rows_match_the_independent_as_of_oracle(home: Home, fold: str):
    t = home.split.folds[fold].cutoff
    assert t == datetime(t.year, t.month, t.day, tzinfo=UTC)
    s = sample_pairs(home.events, home.catalog, t)
    # the sample really probes the boundary
    assert s.gap_before <= timedelta(hours=1), s.gap_before
    assert s.gap_after <= timedelta(hours=3), s.gap_after

    actual = training_rows(home, s.pairs, t)
    expected = expected_rows(home.events, home.catalog, s.pairs, t)
    assert actual.height == expected.height == s.pairs.height
    bad = mismatches(actual, expected)
    assert not bad, "\n".join(bad[:40])

    # the sample is not vacuous: most columns carry values, and boundary users are present
    for col in ALL_COLUMNS:
        assert expected[col].drop_nulls().len() > 0, col
    assert expected.filter(pl.col("user_features__views_24h") > 0).height > 0
    assert expected.filter(pl.col("user_category_features__events_30d") > 0).height > 0
    assert expected.filter(pl.col("ui_views") > 0).height > 0
    assert set(s.just_before) | set(s.right_after) <= set(actual["user_id"])
    for user in s.new_users:  # first seen at/after T: no user features at all
        assert actual.filter(pl.col("user_id") == user)["user_features__views_30d"].null_count() == len(
            actual.filter(pl.col("user_id") == user)
        )


def test_oracle_catches_a_shifted_cutoff(home: Home):
    """The comparison is sharp: Feast's rows at T disagree with the oracle evaluated one hour later."""
    t = home.split.folds["valid"].cutoff
    s = sample_pairs(home.events, home.catalog, t)
    actual = training_rows(home, s.pairs, t)
    shifted = expected_rows(home.events, home.catalog, s.pairs, t + timedelta(hours=1))
    assert mismatches(actual, shifted)


# ------------------------------------------------------------------------------------------------
# 2. Values planted at or after the cutoff never change a training row
# ------------------------------------------------------------------------------------------------


def test_events_and_catalog_versions_at_or_after_the_cutoff_never_change_a_training_row(home: Home):
    t = home.split.folds["valid"].cutoff
    s = sample_pairs(home.events, home.catalog, t)
    before = training_rows(home, s.pairs, t)
    interactions_before = interactions_at(home.settings.features_dir, t)

    new_user = "u-planted-new"
    targets = s.pairs.filter(pl.col("user_id").is_in(s.just_before[:2] + s.right_after[:2] + s.new_users[:1])).rows()
    targets += [(new_user, s.pairs["item_id"][0])]
    offsets = [timedelta(0), US, timedelta(seconds=1), timedelta(hours=1), timedelta(days=1)]
    kinds = ["view", "add_to_cart", "purchase", "favorite", "view"]
    planted_events = [
        event(u, i, kind, t + off, n * 10 + k)
        for n, (u, i) in enumerate(targets)
        for k, (off, kind) in enumerate(zip(offsets, kinds, strict=True))
    ]
    item = s.pairs["item_id"][0]
    versions = [
        {"item_id": item, "category_id": "c-planted", "price": 9999.0, "available": False, "updated_at": t},
        {"item_id": item, "category_id": "c-planted", "price": 8888.0, "available": False, "updated_at": t + US},
    ]
    with planted(home.settings, [t], events=planted_events, items=versions):
        after = training_rows(home, s.pairs.vstack(pl.DataFrame({"user_id": [new_user], "item_id": [item]})), t)
        assert_same_rows(after.filter(pl.col("user_id") != new_user), before)
        assert after.filter(pl.col("user_id") == new_user)["user_features__views_30d"].item() is None
        assert_frame_equal(
            interactions_at(home.settings.features_dir, t).drop("created_timestamp").sort("user_id", "item_id"),
            interactions_before.drop("created_timestamp").sort("user_id", "item_id"),
            check_exact=False,
            rel_tol=FLOAT_REL,
            abs_tol=0.0,
        )
    assert_same_rows(training_rows(home, s.pairs, t), before)


@pytest.mark.parametrize(
    ("table", "values", "column"),
    [
        ("user_features", {"views_24h": ABSURD, "seconds_since_last_event": -1.0}, "user_features__views_24h"),
        ("item_features", {"views_7d": ABSURD, "price": -1.0}, "item_features__views_7d"),
        ("user_category_features", {"events_30d": ABSURD}, "user_category_features__events_30d"),
    ],
)
def test_feature_row_stamped_after_the_cutoff_is_ignored(home: Home, table: str, values: dict, column: str):
    t = home.split.folds["valid"].cutoff
    s = sample_pairs(home.events, home.catalog, t)
    before = training_rows(home, s.pairs, t)
    row = before.filter(pl.col("user_category_features__events_30d") > 0).row(0, named=True)
    key = {
        "user_features": {"user_id": row["user_id"]},
        "item_features": {"item_id": row["item_id"]},
        "user_category_features": {"user_id": row["user_id"], "category_id": row["category_id"]},
    }[table]
    pair = pl.DataFrame({"user_id": [row["user_id"]], "item_id": [row["item_id"]]})
    for stamp in (t + US, t + timedelta(hours=1)):
        with planted_feature_row(home.settings, table, key, t, stamp, values):
            assert_same_rows(training_rows(home, s.pairs, t), before)
            # positive control: Feast does serve the planted row from its own timestamp on
            seen = ranking.fetch_features(home.store, pair, as_of=stamp)
            assert seen[column].item() == ABSURD
    assert_same_rows(training_rows(home, s.pairs, t), before)


@pytest.mark.parametrize(
    ("table", "values", "column"),
    [
        ("user_features", {"views_24h": ABSURD}, "user_features__views_24h"),
        ("item_features", {"views_7d": ABSURD}, "item_features__views_7d"),
        ("user_category_features", {"events_30d": ABSURD}, "user_category_features__events_30d"),
    ],
)
def test_previous_day_row_is_superseded_by_the_cutoff_snapshot(home: Home, table: str, values: dict, column: str):
    """A row stamped T - 1 day (the previous daily snapshot, created last of all) loses to the snapshot at T."""
    t = home.split.folds["valid"].cutoff
    prev = t - DAY
    assert prev == home.split.folds["train"].cutoff  # a real snapshot exists at T - 1 day in this home
    s = sample_pairs(home.events, home.catalog, t)
    before = training_rows(home, s.pairs, t)
    row = (
        before.filter(pl.col("user_category_features__events_30d") > 0)
        .sort("user_features__views_30d")
        .row(0, named=True)
    )
    key = {
        "user_features": {"user_id": row["user_id"]},
        "item_features": {"item_id": row["item_id"]},
        "user_category_features": {"user_id": row["user_id"], "category_id": row["category_id"]},
    }[table]
    pair = pl.DataFrame({"user_id": [row["user_id"]], "item_id": [row["item_id"]]})
    with planted_feature_row(home.settings, table, key, prev, prev, values):
        assert_same_rows(training_rows(home, s.pairs, t), before)
        # positive control: just before T the previous day's (planted) row is the one served
        assert ranking.fetch_features(home.store, pair, as_of=t - US)[column].item() == ABSURD


# ------------------------------------------------------------------------------------------------
# 3. Positive control: an event just before the cutoff does change the row
# ------------------------------------------------------------------------------------------------


def test_event_one_second_before_the_cutoff_changes_the_row_as_the_oracle_says(home: Home):
    t = home.split.folds["valid"].cutoff
    s = sample_pairs(home.events, home.catalog, t)
    before = training_rows(home, s.pairs, t)
    # a pair with user x category history, so every feature family moves
    row = before.filter(pl.col("ui_views") > 0).row(0, named=True)
    user, item = row["user_id"], row["item_id"]
    plant = [event(user, item, "view", t - timedelta(seconds=1), 0)]
    version = {"item_id": item, "category_id": row["category_id"], "price": 123.25, "available": True,
               "updated_at": t - timedelta(seconds=1)}  # fmt: skip
    with planted(home.settings, [t], events=plant, items=[version]):
        after = training_rows(home, s.pairs, t)
        for col in ("user_features__views_1h", "user_features__views_24h", "item_features__views_24h",
                    "user_category_features__events_30d", "ui_views"):  # fmt: skip
            assert _value(after, user, item, col) == _value(before, user, item, col) + 1, col
        assert _value(after, user, item, "user_features__seconds_since_last_event") == pytest.approx(1.0, abs=1e-6)
        assert _value(after, user, item, "ui_seconds_since_last") == pytest.approx(1.0, abs=1e-6)
        assert _value(after, user, item, "item_features__price") == 123.25
        # and the whole sample still equals the oracle run on the raw data plus the plant
        events = pl.concat([home.events, pl.DataFrame(plant, schema=home.events.schema)])
        catalog = pl.concat([home.catalog, pl.DataFrame([version], schema=home.catalog.schema)])
        bad = mismatches(after, expected_rows(events, catalog, s.pairs, t))
        assert not bad, "\n".join(bad[:40])
    assert_same_rows(training_rows(home, s.pairs, t), before)


# ------------------------------------------------------------------------------------------------
# Staleness: a pair idle for 30 days is served as zero at T, never an older snapshot's value
# ------------------------------------------------------------------------------------------------


def test_user_category_pair_that_aged_out_is_served_as_zero_not_from_an_older_snapshot(home: Home):
    t = home.split.folds["valid"].cutoff
    prev = home.split.folds["train"].cutoff
    s = sample_pairs(home.events, home.catalog, t)
    user = s.right_after[0]
    seen_categories = set(
        catalog_at(home.catalog, t)
        .join(home.events.filter(pl.col("user_id") == user), on="item_id")["category_id"]
        .to_list()
    )
    cat = catalog_at(home.catalog, prev).filter(~pl.col("category_id").is_in(seen_categories))
    item = cat.sort("item_id")["item_id"][0]
    # inside the 30-day window of the snapshot at T - 1 day, outside the one at T
    plant = [event(user, item, "purchase", t - timedelta(days=30) - timedelta(hours=1), 0)]
    with planted(home.settings, [prev, t], events=plant):
        pair = pl.DataFrame({"user_id": [user], "item_id": [item]})
        at_prev = ranking.fetch_features(home.store, pair, as_of=prev)
        assert at_prev["user_category_features__events_30d"].item() == 1  # the plant is real
        events = pl.concat([home.events, pl.DataFrame(plant, schema=home.events.schema)])
        oracle = expected_rows(events, home.catalog, pair, t)
        assert oracle["user_category_features__events_30d"].item() == 0
        got = ranking.fetch_features(home.store, pair, as_of=t)
        assert got["user_category_features__events_30d"].item() == 0, (
            f"as of {t}: Feast served events_30d={got['user_category_features__events_30d'].item()} "
            f"from the snapshot at {prev}"
        )


# ------------------------------------------------------------------------------------------------
# 4. protocol.labels / protocol.history on hand-made frames
# ------------------------------------------------------------------------------------------------

CUT = datetime(2024, 3, 10, tzinfo=UTC)
END = datetime(2024, 3, 12, tzinfo=UTC)
FOLD = Fold("train", CUT, END)


def _events(rows: list[tuple[str, str, str, datetime]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={"user_id": pl.String, "item_id": pl.String, "event_type": pl.String, "ts": pl.Datetime("us", "UTC")},
        orient="row",
    )


HAND = _events(
    [
        ("a", "i1", "view", CUT - US),  # history (last instant before the cutoff)
        ("a", "i1", "view", CUT),  # label window starts exactly at the cutoff
        ("a", "i2", "add_to_cart", CUT + timedelta(hours=1)),
        ("a", "i2", "view", CUT + timedelta(hours=2)),  # max relevance wins: i2 stays 2
        ("a", "i3", "purchase", END - US),  # last instant of the window
        ("a", "i4", "purchase", END),  # label_end is exclusive
        ("a", "i5", "unknown_type", CUT + timedelta(hours=3)),  # relevance 0: dropped
        ("b", "i1", "purchase", CUT + timedelta(hours=1)),  # b has no history: dropped
        ("b", "i9", "view", CUT),  # b's first event is AT the cutoff, not before it
        ("c", "i7", "favorite", CUT - timedelta(days=5)),  # history
        ("c", "i8", "favorite", CUT + timedelta(days=1)),
        ("c", "i6", "purchase", CUT - timedelta(hours=1)),  # before the window: not a label
    ]
)


def test_labels_use_only_the_label_window_and_users_with_history():
    got = labels(HAND, FOLD)
    expected = pl.DataFrame(
        {"user_id": ["a", "a", "a", "c"], "item_id": ["i1", "i2", "i3", "i8"], "relevance": [1.0, 2.0, 3.0, 1.0]}
    )
    assert_frame_equal(got, expected, check_exact=True)


def test_labels_ignore_anything_outside_the_window():
    """Adding events before the cutoff (for known users) or at/after label_end never changes the labels."""
    base = labels(HAND, FOLD)
    noise = _events(
        [
            ("a", "i9", "purchase", CUT - US),
            ("c", "i9", "purchase", END),
            ("c", "i9", "purchase", END + timedelta(days=3)),
            ("a", "i1", "purchase", CUT - timedelta(days=1)),
        ]
    )
    assert_frame_equal(labels(pl.concat([HAND, noise]), FOLD), base, check_exact=True)
    # positive control: one purchase inside the window does change them
    inside = _events([("c", "i9", "purchase", END - US)])
    assert labels(pl.concat([HAND, inside]), FOLD).height == base.height + 1


def test_history_is_strictly_before_the_cutoff():
    got = history(HAND, FOLD)
    assert got["ts"].max() == CUT - US
    assert (got["ts"] < CUT).all()
    assert sorted(got.select("user_id", "item_id").rows()) == [("a", "i1"), ("c", "i6"), ("c", "i7")]
    # the user whose first event is exactly at the cutoff has no history, so no labels
    assert "b" not in got["user_id"].to_list()
    assert "b" not in labels(HAND, FOLD)["user_id"].to_list()


def test_chunked_feast_retrieval_equals_one_call(home: Home):
    """fetch_features splits large folds by whole users; the rows must not depend on the chunk size."""
    t = home.split.folds["test"].cutoff
    pairs = sample_pairs(home.events, home.catalog, t).pairs
    whole = ranking.fetch_features(home.store, pairs, as_of=t, chunk_rows=1_000_000).sort("user_id", "item_id")
    chunked = ranking.fetch_features(home.store, pairs, as_of=t, chunk_rows=7).sort("user_id", "item_id")
    assert chunked.height == whole.height == pairs.height
    assert chunked.equals(whole)


def test_build_rows_in_chunks_equals_the_unchunked_composition(home: Home):
    """ranking_dataset builds rows per chunk of whole users; the rows must equal the one-shot composition."""
    t = home.split.folds["test"].cutoff
    # candidates as the merge makes them: here every pair proposed by one source, ranked by order
    pairs = (
        sample_pairs(home.events, home.catalog, t)
        .pairs.with_columns(
            *(pl.lit(None, pl.Float64).alias(f"{s}_{x}") for s in ranker_features.SOURCES for x in ("score", "rank")),
        )
        .with_columns(
            popular_score=pl.lit(1.0), popular_rank=pl.int_range(1, pl.len() + 1).over("user_id").cast(pl.Float64)
        )
    )
    truth = labels(home.events, home.split.folds["test"])
    interactions = interactions_at(home.settings.features_dir, t)
    whole = ranking.fetch_features(home.store, pairs, as_of=t)
    whole = ranking.add_history_features(whole, interactions, as_of=t)
    matrix = ranker_features.assemble(ranker_features.inputs_from_rows(whole))
    whole = ranking.attach_labels(
        pl.concat([whole.select("user_id", "item_id"), ranker_features.feature_frame(matrix)], how="horizontal"), truth
    )
    chunks = list(ranking.build_rows(home.store, pairs, interactions=interactions, truth=truth, as_of=t, chunk_rows=5))
    assert len(chunks) > 1
    assert_frame_equal(pl.concat(chunks).sort("user_id", "item_id"), whole.sort("user_id", "item_id"))
    assert (whole[ranking.LABEL] > 0).sum() > 0  # the sample has relevant pairs, so labels are really compared
