"""Tests of the synthetic event generator: contract, determinism, invariants and planted structure."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recs_pipeline.data import landing
from recs_pipeline.data.contract import (
    AVAILABLE,
    CATEGORY_ID,
    EVENT_ID,
    EVENT_SCHEMA,
    EVENT_TYPE,
    EVENT_TYPES,
    ITEM_ID,
    ITEM_SCHEMA,
    SESSION_GAP,
    SESSION_ID,
    TS,
    UPDATED_AT,
    USER_ID,
)
from recs_pipeline.data.synthetic import (
    NEIGHBOUR_RADIUS,
    SyntheticConfig,
    SyntheticSummary,
    generate_catalog,
    generate_events,
    planted_item_structure,
    write_synthetic,
)

VIEW, CART, PURCHASE, FAVORITE = EVENT_TYPES

# One medium run shared by the statistical tests (generated once per module, ~0.3 s).
BASE = SyntheticConfig(n_events=150_000, seed=11, chunk_events=40_000)


@pytest.fixture(scope="module")
def chunks() -> list[pl.DataFrame]:
    return list(generate_events(BASE))


@pytest.fixture(scope="module")
def events(chunks: list[pl.DataFrame]) -> pl.DataFrame:
    return pl.concat(chunks)


@pytest.fixture(scope="module")
def catalog() -> pl.DataFrame:
    return generate_catalog(BASE)


@pytest.fixture(scope="module")
def enriched(events: pl.DataFrame, catalog: pl.DataFrame) -> pl.DataFrame:
    return events.join(catalog, on=ITEM_ID, how="left")


# ---- invariant checks shared by the fixed run and the property test --------------------------


def assert_contract(config: SyntheticConfig, chunks: list[pl.DataFrame], catalog: pl.DataFrame) -> pl.DataFrame:
    """Assert every guaranteed invariant of one generated run; return all events."""
    assert sum(c.height for c in chunks) == config.n_events
    assert len(chunks) == config.chunk_count
    for chunk in chunks:
        assert 1 <= chunk.height <= config.chunk_events
        assert dict(chunk.schema) == EVENT_SCHEMA
        assert chunk.null_count().sum_horizontal().item() == 0
        assert chunk[TS].is_sorted()
    assert dict(catalog.schema) == ITEM_SCHEMA
    assert catalog.height == config.item_count
    assert catalog[CATEGORY_ID].n_unique() == config.category_count
    assert catalog[ITEM_ID].is_unique().all()

    ev = pl.concat(chunks)
    assert ev[EVENT_ID].is_unique().all()
    assert ev[EVENT_TYPE].is_in(EVENT_TYPES).all()
    assert ev[USER_ID].n_unique() == config.user_count  # every user has at least one event
    assert ev[TS].min() >= config.start
    assert ev[TS].max() < config.start + timedelta(days=config.days)

    # Items come from the catalog and already exist when the event happens.
    joined = ev.join(catalog, on=ITEM_ID, how="left")
    assert joined[CATEGORY_ID].null_count() == 0
    assert (joined[TS] >= joined[UPDATED_AT]).all()

    # Funnel: cart/favorite after a view, purchase after a cart, same item and same session.
    def first(kind: str) -> pl.DataFrame:
        return ev.filter(pl.col(EVENT_TYPE) == kind).group_by(SESSION_ID, ITEM_ID).agg(pl.col(TS).min().alias(kind))

    for later, earlier in ((CART, VIEW), (FAVORITE, VIEW), (PURCHASE, CART)):
        rows = ev.filter(pl.col(EVENT_TYPE) == later).join(first(earlier), on=[SESSION_ID, ITEM_ID], how="left")
        assert rows[earlier].null_count() == 0, f"{later} without a {earlier} in the session"
        assert (rows[earlier] < rows[TS]).all(), f"{later} before its {earlier}"

    # Sessions: one user each; < 30 min gaps inside, >= 30 min between; the gap rule recovers them.
    assert ev.group_by(SESSION_ID).agg(pl.col(USER_ID).n_unique())[USER_ID].max() == 1
    seq = ev.sort(USER_ID, TS, EVENT_ID).with_columns(
        gap=pl.col(TS).diff().over(USER_ID),
        same=pl.col(SESSION_ID) == pl.col(SESSION_ID).shift().over(USER_ID),
    )
    inside = seq.filter(pl.col("same"))["gap"]
    between = seq.filter(~pl.col("same"))["gap"].drop_nulls()
    if inside.len():
        assert inside.max() < SESSION_GAP
        assert inside.min() > timedelta(0)
    if between.len():
        assert between.min() >= SESSION_GAP
    recovered = seq.with_columns(
        new=(pl.col("gap").is_null() | (pl.col("gap") >= SESSION_GAP)).cum_sum(),
    )
    assert recovered.group_by("new").agg(pl.col(SESSION_ID).n_unique())[SESSION_ID].max() == 1
    assert recovered["new"].n_unique() == ev[SESSION_ID].n_unique()
    return ev


# ---- contract -----------------------------------------------------------------------------------


def test_fixed_run_satisfies_contract(chunks: list[pl.DataFrame], catalog: pl.DataFrame) -> None:
    assert_contract(BASE, chunks, catalog)
    assert len(chunks) == 4  # 150k events in chunks of <= 40k


def test_exact_total_with_uneven_chunks() -> None:
    config = SyntheticConfig(n_events=10_007, chunk_events=3_000, seed=3)
    sizes = [c.height for c in generate_events(config)]
    assert sum(sizes) == 10_007
    assert len(sizes) == 4
    assert max(sizes) <= 3_000
    assert max(sizes) - min(sizes) <= 1


def test_event_ids_are_seeded_sequence(events: pl.DataFrame) -> None:
    ids = events[EVENT_ID]
    assert ids.str.starts_with(f"s{BASE.seed}-").all()
    numbers = ids.str.strip_prefix(f"s{BASE.seed}-").cast(pl.Int64).sort()
    assert numbers.to_list() == list(range(BASE.n_events))


def test_id_formats(events: pl.DataFrame, catalog: pl.DataFrame) -> None:
    assert events[USER_ID].str.contains(r"^u\d+$").all()
    assert events[ITEM_ID].str.contains(r"^i\d+$").all()
    assert (events[SESSION_ID].str.extract(r"^(u\d+)-\d+$") == events[USER_ID]).all()
    assert catalog[CATEGORY_ID].str.contains(r"^c\d+$").all()


def test_generate_events_is_lazy() -> None:
    config = SyntheticConfig(n_events=2_000, chunk_events=500)
    stream = generate_events(config)
    assert next(stream).height == 500  # a generator: later chunks are not built yet


# ---- determinism --------------------------------------------------------------------------------


def test_same_config_gives_identical_output() -> None:
    config = SyntheticConfig(n_events=20_000, seed=5, chunk_events=8_000)
    first, second = list(generate_events(config)), list(generate_events(config))
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.equals(b)
    assert generate_catalog(config).equals(generate_catalog(config))


def test_different_seeds_differ() -> None:
    a = pl.concat(list(generate_events(SyntheticConfig(n_events=5_000, seed=1))))
    b = pl.concat(list(generate_events(SyntheticConfig(n_events=5_000, seed=2))))
    assert not a.drop(EVENT_ID).equals(b.drop(EVENT_ID))
    assert a[TS].to_list() != b[TS].to_list()
    assert not generate_catalog(SyntheticConfig(seed=1)).equals(generate_catalog(SyntheticConfig(seed=2)))


def test_chunking_does_not_change_the_catalog() -> None:
    small = SyntheticConfig(n_events=30_000, chunk_events=7_000)
    large = dataclasses.replace(small, chunk_events=1_000_000)
    assert generate_catalog(small).equals(generate_catalog(large))


# ---- planted structure --------------------------------------------------------------------------


def test_funnel_rates(events: pl.DataFrame) -> None:
    counts = dict(events[EVENT_TYPE].value_counts().iter_rows())
    assert 0.04 <= counts[CART] / counts[VIEW] <= 0.09
    assert 0.20 <= counts[PURCHASE] / counts[CART] <= 0.35
    assert 0.003 <= counts[FAVORITE] / counts[VIEW] <= 0.03


def test_item_popularity_is_skewed(events: pl.DataFrame) -> None:
    views = events.filter(pl.col(EVENT_TYPE) == VIEW).group_by(ITEM_ID).len().sort("len", descending=True)
    top = BASE.item_count // 10
    assert views["len"].head(top).sum() / views["len"].sum() > 0.40


def test_category_sizes_are_skewed(catalog: pl.DataFrame) -> None:
    sizes = catalog.group_by(CATEGORY_ID).len()["len"].sort(descending=True)
    assert sizes[0] > 5 * sizes.median()


def test_users_concentrate_in_favourite_categories(enriched: pl.DataFrame) -> None:
    per_user = (
        enriched.group_by(USER_ID, CATEGORY_ID)
        .len()
        .group_by(USER_ID)
        .agg(share=pl.col("len").max() / pl.col("len").sum(), n=pl.col("len").sum())
        .filter(pl.col("n") >= 20)
    )
    uniform = 1 / BASE.category_count
    assert per_user["share"].median() > max(0.4, 10 * uniform)


def test_sessions_focus_on_one_category(enriched: pl.DataFrame) -> None:
    per_session = (
        enriched.group_by(SESSION_ID, CATEGORY_ID)
        .len()
        .group_by(SESSION_ID)
        .agg(share=pl.col("len").max() / pl.col("len").sum(), n=pl.col("len").sum())
        .filter(pl.col("n") >= 5)
    )
    assert per_session["share"].mean() > 0.8


def test_session_lengths_are_plausible(events: pl.DataFrame) -> None:
    lengths = events.group_by(SESSION_ID).len()["len"]
    assert 4 <= lengths.mean() <= 9
    assert lengths.quantile(0.99) <= 40
    assert lengths.max() <= 150  # heavy users get more sessions, not one endless session


def test_very_heavy_users_stay_valid() -> None:
    # ~3,000 events per user in 10 days: more than the planted caps allow, so sessions get longer
    # and faster but every invariant still holds and no single session swallows a user's history.
    config = SyntheticConfig(n_events=60_000, n_users=20, days=10, seed=9, chunk_events=30_000)
    events = assert_contract(config, list(generate_events(config)), generate_catalog(config))
    per_user = (
        events.group_by(USER_ID, SESSION_ID)
        .len()
        .group_by(USER_ID)
        .agg(share=pl.col("len").max() / pl.col("len").sum(), sessions=pl.len(), n=pl.col("len").sum())
        .filter(pl.col("n") >= 1_000)
    )
    assert per_user.height >= 10
    assert per_user["sessions"].min() >= 20
    assert per_user["share"].max() < 0.25  # uniform random breaks: the longest is ~ln(S)/S
    assert per_user["share"].median() < 0.1


def test_sessions_re_view_items(events: pl.DataFrame) -> None:
    views = events.filter(pl.col(EVENT_TYPE) == VIEW)
    distinct = views.select(SESSION_ID, ITEM_ID).unique().height
    assert distinct < 0.78 * views.height  # ~0.85 from popularity alone, ~0.70 with planted re-views


def test_planted_structure_matches_catalog(catalog: pl.DataFrame) -> None:
    truth = planted_item_structure(BASE)
    assert truth.select(ITEM_ID, CATEGORY_ID).equals(catalog.select(ITEM_ID, CATEGORY_ID))
    per_category = truth.group_by(CATEGORY_ID).agg(
        n=pl.len(),
        ranks=pl.col("popularity_rank").n_unique(),
        top=pl.col("popularity_rank").max(),
        positions=pl.col("similarity_position").n_unique(),
    )
    assert (per_category["ranks"] == per_category["n"]).all()  # ranks are a permutation per category
    assert (per_category["top"] == per_category["n"] - 1).all()
    assert (per_category["positions"] == per_category["n"]).all()
    assert truth["consumable"].any()


def test_views_follow_planted_popularity_rank(events: pl.DataFrame) -> None:
    truth = planted_item_structure(BASE)
    views = events.filter(pl.col(EVENT_TYPE) == VIEW).join(truth, on=ITEM_ID)
    top_ranked = (views["popularity_rank"] == 0).mean()
    # The rank-0 items are one per category (~1% of items) but get a large share of views.
    assert top_ranked > 10 * BASE.category_count / BASE.item_count


def test_sessions_co_view_similar_items(events: pl.DataFrame) -> None:
    truth = planted_item_structure(BASE)
    sizes = truth.group_by(CATEGORY_ID).len()
    views = events.filter(pl.col(EVENT_TYPE) == VIEW).join(truth, on=ITEM_ID).join(sizes, on=CATEGORY_ID)
    anchor = (
        views.sort(TS)
        .group_by(SESSION_ID)
        .agg(
            pl.col(ITEM_ID).first().alias("anchor"),
            pl.col(CATEGORY_ID).first().alias("anchor_category"),
            pl.col("similarity_position").first().alias("anchor_position"),
        )
    )
    pairs = views.join(anchor, on=SESSION_ID).filter(pl.col(ITEM_ID) != pl.col("anchor"))
    offset = (pl.col("similarity_position") - pl.col("anchor_position")).abs()
    distance = pl.min_horizontal(offset, pl.col("len") - offset)  # the similarity line is cyclic
    near = pairs.filter(pl.col(CATEGORY_ID) == pl.col("anchor_category")).filter(distance <= NEIGHBOUR_RADIUS)
    assert near.height / pairs.height > 0.25  # ~0.04 without the planted neighbour views


def test_repeat_purchases_of_consumables(events: pl.DataFrame) -> None:
    truth = planted_item_structure(BASE)
    repeats = (
        events.filter(pl.col(EVENT_TYPE) == PURCHASE)
        .join(truth.filter(pl.col("consumable")), on=ITEM_ID)
        .group_by(USER_ID, ITEM_ID)
        .agg(pl.col(SESSION_ID).n_unique().alias("sessions"))
    )
    # ~5% / ~3% of users with planted staples; < 1% / < 0.6% happen by chance without them.
    assert repeats.filter(pl.col("sessions") >= 2)[USER_ID].n_unique() >= 0.03 * BASE.user_count
    assert repeats.filter(pl.col("sessions") >= 3)[USER_ID].n_unique() >= 0.015 * BASE.user_count


def test_user_activity_is_heavy_tailed(events: pl.DataFrame) -> None:
    per_user = events.group_by(USER_ID).len()["len"].sort(descending=True)
    assert per_user.max() > 10 * per_user.median()
    assert per_user.head(per_user.len() // 10).sum() / per_user.sum() > 0.3


def test_users_arrive_over_time(events: pl.DataFrame) -> None:
    first_seen = events.group_by(USER_ID).agg(pl.col(TS).min())[TS]
    tenth, half = (BASE.start + timedelta(days=BASE.days * f) for f in (0.1, 0.5))
    assert (first_seen < tenth).mean() > 0.2  # a block of users present from the start
    assert (first_seen >= half).mean() > 0.15  # and a steady stream of newcomers


def test_new_items_arrive_and_get_traffic(catalog: pl.DataFrame, enriched: pl.DataFrame) -> None:
    new = catalog[UPDATED_AT] > BASE.start
    assert 0.05 < new.mean() < 0.2
    assert (enriched[UPDATED_AT] > BASE.start).sum() > 0.01 * BASE.n_events


def test_catalog_prices_and_availability(catalog: pl.DataFrame) -> None:
    assert (catalog["price"] > 0).all()
    assert catalog["price"].quantile(0.95) > 4 * catalog["price"].quantile(0.05)  # log-normal spread
    assert 0.02 <= 1 - catalog[AVAILABLE].mean() <= 0.07


def test_evening_peak(events: pl.DataFrame) -> None:
    hours = events.group_by(pl.col(TS).dt.hour().alias("h")).len()
    by_hour = dict(hours.iter_rows())
    assert sum(by_hour[h] for h in (19, 20, 21)) > 4 * sum(by_hour[h] for h in (2, 3, 4))


# ---- sizes and validation -----------------------------------------------------------------------


def test_derived_sizes() -> None:
    small = SyntheticConfig(n_events=10_000)
    assert 200 <= small.user_count <= 1_000
    assert 200 <= small.item_count <= 1_000
    assert 5 <= small.category_count <= small.item_count
    huge = SyntheticConfig(n_events=50_000_000)
    assert huge.item_count <= 2_000_000
    assert 500_000 <= huge.user_count <= 1_000_000
    assert huge.chunk_count == 50
    assert SyntheticConfig(n_events=3).user_count == 3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_events": 0}, "n_events"),
        ({"days": 0}, "days"),
        ({"seed": -1}, "seed"),
        ({"chunk_events": 0}, "chunk_events"),
        ({"start": datetime(2026, 9, 1)}, "timezone-aware"),
        ({"n_events": 10, "n_users": 11}, "n_users"),
        ({"n_items": 10, "n_categories": 11}, "n_categories"),
        ({"n_events": 100, "chunk_events": 10, "n_users": 5}, "number of chunks"),
        ({"n_items": 0}, "n_items"),
        ({"n_events": 1.5}, "int"),
    ],
)
def test_invalid_config(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**changes)  # type: ignore[arg-type]


# ---- property test over small configs ------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_events=st.integers(1, 3_000),
    chunks=st.integers(1, 6),
    seed=st.integers(0, 2**32),
    days=st.integers(1, 5),
    minute=st.integers(0, 24 * 60 - 1),
    n_items=st.none() | st.integers(1, 400),
)
def test_invariants_hold_for_small_configs(
    n_events: int, chunks: int, seed: int, days: int, minute: int, n_items: int | None
) -> None:
    config = SyntheticConfig(
        n_events=n_events,
        seed=seed,
        days=days,
        start=datetime(2026, 3, 1, tzinfo=UTC) + timedelta(minutes=minute),
        chunk_events=-(-n_events // chunks),
        n_items=n_items,
        n_categories=None if n_items is None else min(n_items, 7),
    )
    assert_contract(config, list(generate_events(config)), generate_catalog(config))


# ---- landing ------------------------------------------------------------------------------------


def test_write_synthetic_lands_atomically(tmp_path: Path) -> None:
    config = SyntheticConfig(n_events=12_000, seed=4, chunk_events=5_000)
    progress: list[int] = []
    summary = write_synthetic(config, tmp_path, progress=progress.append)

    assert isinstance(summary, SyntheticSummary)
    assert progress == [4_000, 4_000, 4_000]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]
    assert [p.name for p in landing.landed_files(tmp_path, "items")] == ["catalog-4.parquet"]
    event_files = sorted(p.name for p in landing.landed_files(tmp_path, "events"))
    assert event_files == [f"synthetic-4-{c:05d}.parquet" for c in range(3)]
    assert summary.files[0] == tmp_path / "items" / "catalog-4.parquet"
    assert sorted(p.name for p in summary.files[1:]) == event_files

    landed = pl.concat([pl.read_parquet(p) for p in summary.files[1:]])
    items = pl.read_parquet(summary.files[0])
    assert landed.equals(pl.concat(list(generate_events(config))))
    assert items.equals(generate_catalog(config))
    assert summary.n_events == landed.height == 12_000
    assert summary.n_users == landed[USER_ID].n_unique()
    assert summary.n_items == items.height
    assert summary.n_categories == items[CATEGORY_ID].n_unique()
    assert summary.first_ts == landed[TS].min()
    assert summary.last_ts == landed[TS].max()

    again = write_synthetic(config, tmp_path)  # re-running replaces the same files
    assert again == summary
    assert len(landing.landed_files(tmp_path, "events")) == 3
