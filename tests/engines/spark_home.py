"""A small synthetic warehouse for the engine-parity tests, and frame comparison with a float tolerance.

Synthetic shoppers (``recs_pipeline.data.synthetic``) plus what they lack: hide events (some lifted by a
later view), catalog versions that change price and category mid-window (one exactly at an as-of time,
so not yet valid then), served lists in the exposure log (many in the shown-items window of each as-of
time, one a shadow list, one at an as-of time), and a user whose events sit exactly on every window
boundary of the last as-of time.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import polars as pl

from recs_pipeline.data.synthetic import SyntheticConfig, generate_catalog, generate_events
from recs_pipeline.warehouse.features import FEATURE_TABLES, PROFILE_SHOWN_HOURS, Weighting, build_snapshot

CONFIG = SyntheticConfig(
    n_events=4_000, seed=11, start=datetime(2026, 9, 1, tzinfo=UTC), days=24, n_users=80, n_items=120
)
AS_OFS = (datetime(2026, 9, 14, tzinfo=UTC), datetime(2026, 9, 24, 13, 30, 15, 250_000, tzinfo=UTC))
CREATED = datetime(2026, 9, 25, 3, tzinfo=UTC)
# Not the defaults, so a weight that does not reach the engine shows.
WEIGHTING = Weighting(view=1.0, add_to_cart=5.0, purchase=10.0, favorite=2.0, half_life_days=7.0)
FILE_HASH = "engine-parity"
INGESTED = datetime(2026, 10, 1, tzinfo=UTC)


def _events() -> pl.DataFrame:
    events = pl.concat(list(generate_events(CONFIG)))
    rng = np.random.default_rng(5)
    views = events.filter(pl.col("event_type") == "view")
    picked = views[np.sort(rng.choice(views.height, size=60, replace=False)).tolist()]
    hides = picked.with_columns(
        ("h" + pl.col("event_id")).alias("event_id"),
        pl.lit("hide").alias("event_type"),
        (pl.col("ts") + timedelta(minutes=3)).alias("ts"),
    )
    # every third hidden item is viewed again a day later: the hide is lifted
    lifted = hides[::3].with_columns(
        ("l" + pl.col("event_id")).alias("event_id"),
        pl.lit("view").alias("event_type"),
        (pl.col("ts") + timedelta(days=1)).alias("ts"),
    )
    last = AS_OFS[-1]
    edges = [
        ("view", timedelta(0)),  # at as_of: not yet
        ("view", timedelta(hours=1)),  # exactly on the 1 h edge: inside
        ("add_to_cart", timedelta(hours=24)),
        ("purchase", timedelta(days=7)),
        ("favorite", timedelta(days=30)),  # exactly on the 30-day edge: inside
        ("view", timedelta(days=30, microseconds=1)),  # just outside
        ("hide", timedelta(minutes=5)),
    ]
    boundary = pl.DataFrame(
        {
            "event_id": [f"b{n}" for n in range(len(edges))],
            "user_id": "u_edge",
            "item_id": ["i1", "i2", "i2", "i2", "i3", "i4", "i5"],
            "event_type": [t for t, _ in edges],
            "ts": [last - age for _, age in edges],
            "session_id": [f"se{n}" for n in range(len(edges))],
        },
        schema=events.schema,
    )
    return pl.concat([events, hides, lifted, boundary])


def _item_versions() -> pl.DataFrame:
    catalog = generate_catalog(CONFIG)
    changed = catalog.head(20).with_columns(
        (pl.col("price") * 1.5).alias("price"),
        pl.when(pl.int_range(pl.len()) % 4 == 0)
        .then(pl.lit("c0"))
        .otherwise(pl.col("category_id"))
        .alias("category_id"),
        (pl.col("updated_at") + timedelta(days=5)).alias("updated_at"),
    )
    at_as_of = catalog.slice(20, 3).with_columns(pl.lit(AS_OFS[0]).alias("updated_at"), pl.lit(999.0).alias("price"))
    return pl.concat([catalog, changed, at_as_of])


def _exposures(events: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Served lists 30 s before sampled views: some anywhere in the window, and 20 in the
    ``PROFILE_SHOWN_HOURS`` before each as-of time (what user_profile's shown items read). The first is
    served exactly at the last as-of time (not yet shown then); one inside the last window is a shadow list."""
    rng = np.random.default_rng(9)
    items = sorted(events["item_id"].unique().to_list())
    views = events.filter(pl.col("event_type") == "view").with_row_index("row")
    recent = [
        views.filter(pl.col("ts").is_between(as_of - timedelta(hours=PROFILE_SHOWN_HOURS), as_of, closed="left"))
        .sample(n=20, seed=n)
        .with_columns(pl.lit(n, pl.Int64).alias("window"))
        for n, as_of in enumerate(AS_OFS)
    ]
    anywhere = views.sample(n=110, seed=3).with_columns(pl.lit(None, pl.Int64).alias("window"))
    anchors = pl.concat([anywhere, *recent]).unique("row", keep="last").sort("ts", "row")
    shadow = anchors.filter(pl.col("window") == len(AS_OFS) - 1)["row"][0]
    heads, rows = [], []
    for n, (row, user, ts) in enumerate(anchors.select("row", "user_id", "ts").iter_rows()):
        request = f"r{n}"
        shown_at = AS_OFS[-1] if n == 0 else ts - timedelta(seconds=30)
        shadow_of = f"r{n - 1}" if row == shadow else None
        heads.append((request, user, shown_at, "m1", None, None, 4, FILE_HASH, INGESTED, shadow_of))
        for position, item in enumerate(rng.choice(items, size=4, replace=False).tolist(), start=1):
            rows.append((request, position, item, 1.0 / position, "als"))
    exposures = pl.DataFrame(
        heads,
        schema={
            "request_id": pl.String,
            "user_id": pl.String,
            "ts": pl.Datetime("us", "UTC"),
            "model_version": pl.String,
            "experiment": pl.String,
            "variant": pl.String,
            "n_items": pl.Int32,
            "file_hash": pl.String,
            "ingested_at": pl.Datetime("us", "UTC"),
            "shadow_of": pl.String,
        },
        orient="row",
    )
    exposure_items = pl.DataFrame(
        rows,
        schema={
            "request_id": pl.String,
            "position": pl.Int32,
            "item_id": pl.String,
            "score": pl.Float64,
            "source": pl.String,
        },
        orient="row",
    )
    return exposures, exposure_items


def fill_warehouse(con: duckdb.DuckDBPyConnection) -> None:
    """Insert the synthetic events, catalog versions and exposure log (a warehouse with the schema applied)."""
    events = _events().with_columns(pl.lit(FILE_HASH).alias("file_hash"), pl.lit(INGESTED).alias("ingested_at"))
    versions = _item_versions().with_columns(
        pl.lit(FILE_HASH).alias("file_hash"), pl.lit(INGESTED).alias("ingested_at")
    )
    exposures, exposure_items = _exposures(events)
    for table, frame in [
        ("events", events),
        ("item_versions", versions),
        ("exposures", exposures),
        ("exposure_items", exposure_items),
    ]:
        con.register("frame", frame.to_arrow())
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM frame")
        con.unregister("frame")


def build_duckdb_snapshots(con: duckdb.DuckDBPyConnection, weighting: Weighting = WEIGHTING) -> None:
    """Every feature table's snapshot at every as-of time, through the pipeline's own DuckDB path."""
    for as_of in AS_OFS:
        for table in FEATURE_TABLES:
            build_snapshot(con, table, as_of=as_of, created=CREATED, weighting=weighting)


def duckdb_rows(con: duckdb.DuckDBPyConnection, table: str, as_of: datetime) -> pl.DataFrame:
    return con.sql(f"SELECT * FROM {table} WHERE event_timestamp = $as_of", params={"as_of": as_of}).pl()


def _close(a: object, b: object, rel: float) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rel, abs_tol=rel)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, rel) for x, y in zip(a, b, strict=True))
    return a == b


def assert_same_table(
    expected: pl.DataFrame, actual: pl.DataFrame, keys: tuple[str, ...], *, rel: float = 1e-9
) -> None:
    """Same columns in the same order with the same types, the same rows by ``keys``, and equal values
    (floats, also inside lists, to ``rel``, NaN equal to NaN only; timestamps compared in UTC)."""

    def utc(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(
            pl.col(c).dt.convert_time_zone("UTC") for c, t in frame.schema.items() if isinstance(t, pl.Datetime)
        )

    expected, actual = utc(expected), utc(actual)
    assert expected.columns == actual.columns
    assert dict(expected.schema) == dict(actual.schema), {
        c: (expected.schema[c], actual.schema[c]) for c in expected.columns if expected.schema[c] != actual.schema[c]
    }
    assert expected.height == actual.height, (expected.height, actual.height)
    assert expected.select(keys).is_duplicated().sum() == 0
    left, right = expected.sort(keys), actual.sort(keys)
    assert left.select(keys).equals(right.select(keys)), "the engines' rows have different keys"
    for column in expected.columns:
        bad = [
            (key, a, b)
            for key, a, b in zip(left.select(keys).rows(), left[column].to_list(), right[column].to_list(), strict=True)
            if not _close(a, b, rel)
        ]
        assert not bad, f"{column}: {len(bad)} rows differ, e.g. {bad[:3]}"
