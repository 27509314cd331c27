"""An as-of feature oracle in plain polars, written independently of ``sql/`` and ``recs_pipeline.warehouse.features``.

Given the raw landed events and catalog, it computes what a training row at cutoff ``T`` may know:
only events with ``ts < T`` and the newest catalog version with ``updated_at < T``. Window
``W`` means ``T - W <= ts < T``. Column names follow ``ranking.fetch_features``
(``<view>__<feature>``) and ``ranking.add_history_features`` (``ui_*``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

H1, H24, D7, D30 = timedelta(hours=1), timedelta(hours=24), timedelta(days=7), timedelta(days=30)
TYPE_WEIGHT = {"view": 1.0, "add_to_cart": 4.0, "purchase": 8.0, "favorite": 3.0}  # features.Weighting defaults
HALF_LIFE_DAYS = 14.0

# Oracle column -> kind ("int", "float", "str"); every one is compared against Feast's row.
USER_COLUMNS = {
    "user_features__views_1h": "int",
    "user_features__views_24h": "int",
    "user_features__views_7d": "int",
    "user_features__views_30d": "int",
    "user_features__carts_30d": "int",
    "user_features__purchases_30d": "int",
    "user_features__distinct_items_30d": "int",
    "user_features__sessions_30d": "int",
    "user_features__seconds_since_last_event": "float",
}
ITEM_COLUMNS = {
    "item_features__views_24h": "int",
    "item_features__views_7d": "int",
    "item_features__purchases_30d": "int",
    "item_features__distinct_users_7d": "int",
    "item_features__seconds_since_last_event": "float",
    "item_features__price": "float",
    "item_features__category_id": "str",
    "item_features__available": "bool",
}
USER_CATEGORY_COLUMNS = {"user_category_features__events_30d": "int"}
HISTORY_COLUMNS = {
    "ui_views": "int",
    "ui_carts": "int",
    "ui_purchases": "int",
    "ui_seconds_since_last": "float",
    "ui_weight": "float",
}
ALL_COLUMNS = {**USER_COLUMNS, **ITEM_COLUMNS, **USER_CATEGORY_COLUMNS, **HISTORY_COLUMNS}


def _count(kind: str, since: datetime | None, t: datetime) -> pl.Expr:
    cond = pl.col("event_type") == kind
    if since is not None:
        cond = cond & (pl.col("ts") >= since)
    return cond.sum().cast(pl.Int64)


def catalog_at(catalog: pl.DataFrame, t: datetime) -> pl.DataFrame:
    """The newest version of each item with ``updated_at < t``."""
    return (
        catalog.filter(pl.col("updated_at") < t)
        .sort("item_id", "updated_at")
        .group_by("item_id", maintain_order=True)
        .last()
        .select("item_id", "category_id", "price", "available")
    )


def expected_rows(events: pl.DataFrame, catalog: pl.DataFrame, pairs: pl.DataFrame, t: datetime) -> pl.DataFrame:
    """One row per pair with every column of :data:`ALL_COLUMNS`; null where the pipeline has no row."""
    past = events.filter(pl.col("ts") < t)
    recent = past.filter(pl.col("ts") >= t - D30)
    cat = catalog_at(catalog, t)
    secs = lambda col: (pl.lit(t) - pl.col(col)).dt.total_microseconds() / 1e6  # noqa: E731

    users = (
        past.group_by("user_id")
        .agg(pl.col("ts").max().alias("last_ts"))
        .join(
            recent.group_by("user_id").agg(
                _count("view", t - H1, t).alias("user_features__views_1h"),
                _count("view", t - H24, t).alias("user_features__views_24h"),
                _count("view", t - D7, t).alias("user_features__views_7d"),
                _count("view", None, t).alias("user_features__views_30d"),
                _count("add_to_cart", None, t).alias("user_features__carts_30d"),
                _count("purchase", None, t).alias("user_features__purchases_30d"),
                pl.col("item_id").n_unique().cast(pl.Int64).alias("user_features__distinct_items_30d"),
                pl.col("session_id").n_unique().cast(pl.Int64).alias("user_features__sessions_30d"),
            ),
            on="user_id",
            how="left",
        )
        .with_columns(pl.col(c).fill_null(0) for c in USER_COLUMNS if c != "user_features__seconds_since_last_event")
        .with_columns(secs("last_ts").alias("user_features__seconds_since_last_event"))
        .drop("last_ts")
    )

    item_counts = (
        past.group_by("item_id")
        .agg(pl.col("ts").max().alias("last_ts"))
        .join(
            recent.group_by("item_id").agg(
                _count("view", t - H24, t).alias("item_features__views_24h"),
                _count("view", t - D7, t).alias("item_features__views_7d"),
                _count("purchase", None, t).alias("item_features__purchases_30d"),
                pl.col("user_id")
                .filter(pl.col("ts") >= t - D7)
                .n_unique()
                .cast(pl.Int64)
                .alias("item_features__distinct_users_7d"),
            ),
            on="item_id",
            how="left",
        )
    )
    known = pl.concat([cat.select("item_id"), past.select("item_id")]).unique()
    items = (
        known.join(item_counts, on="item_id", how="left")
        .join(cat, on="item_id", how="left")
        .with_columns(
            pl.col(c).fill_null(0)
            for c in (
                "item_features__views_24h",
                "item_features__views_7d",
                "item_features__purchases_30d",
                "item_features__distinct_users_7d",
            )  # fmt: skip
        )
        .with_columns(secs("last_ts").alias("item_features__seconds_since_last_event"))
        .rename(
            {
                "category_id": "item_features__category_id",
                "price": "item_features__price",
                "available": "item_features__available",
            }
        )  # fmt: skip
        .drop("last_ts")
    )

    # every (user, category) pair seen before t has a row; events_30d counts the last 30 days (0 when idle)
    user_category = (
        past.join(cat.select("item_id", "category_id"), on="item_id", how="inner")
        .group_by("user_id", "category_id")
        .agg((pl.col("ts") >= t - timedelta(days=30)).sum().cast(pl.Int64).alias("user_category_features__events_30d"))
    )

    decay = pl.lit(0.5).pow(secs("ts") / 86400.0 / HALF_LIFE_DAYS)
    history = (
        past.with_columns(w=pl.col("event_type").replace_strict(TYPE_WEIGHT, return_dtype=pl.Float64) * decay)
        .group_by("user_id", "item_id")
        .agg(
            (pl.col("event_type") == "view").sum().cast(pl.Int64).alias("ui_views"),
            (pl.col("event_type") == "add_to_cart").sum().cast(pl.Int64).alias("ui_carts"),
            (pl.col("event_type") == "purchase").sum().cast(pl.Int64).alias("ui_purchases"),
            pl.col("w").sum().alias("ui_weight"),
            pl.col("ts").max().alias("last_ts"),
        )
        .with_columns(secs("last_ts").alias("ui_seconds_since_last"))
        .drop("last_ts")
    )

    return (
        pairs.select("user_id", "item_id")
        .join(users, on="user_id", how="left")
        .join(items, on="item_id", how="left")
        .join(
            user_category,
            left_on=["user_id", "item_features__category_id"],
            right_on=["user_id", "category_id"],
            how="left",
        )
        .join(history, on=["user_id", "item_id"], how="left")
        .select("user_id", "item_id", *ALL_COLUMNS)
        .sort("user_id", "item_id")
    )


def mismatches(
    actual: pl.DataFrame,
    expected: pl.DataFrame,
    *,
    rel: float = 1e-9,
    abs_s: float = 1e-6,
    columns: dict[str, str] | None = None,
) -> list[str]:
    """Every (pair, column) where ``actual`` differs from ``expected``; integers and strings must be equal.

    Floats: ``rel`` relative tolerance; ``abs_s`` absolute slack for the seconds-since columns only
    (DuckDB's ``epoch()`` is a double of ~1.8e9 s, whose spacing is ~2.4e-7 s). ``columns``: the
    columns to compare (default :data:`ALL_COLUMNS`).
    """
    a = actual.sort("user_id", "item_id")
    e = expected.sort("user_id", "item_id")
    if a.select("user_id", "item_id").rows() != e.select("user_id", "item_id").rows():
        return ["pair sets differ"]
    out: list[str] = []
    for col, kind in (ALL_COLUMNS if columns is None else columns).items():
        rows = zip(a.select("user_id", "item_id").rows(), a[col].to_list(), e[col].to_list(), strict=True)
        for (u, i), got, want in rows:
            if want is None or got is None:
                ok = want is None and (got is None or (isinstance(got, float) and got != got))
            elif kind == "int":
                ok = float(got).is_integer() and int(got) == want
            elif kind == "float":
                slack = abs_s if "seconds" in col else 0.0
                ok = abs(float(got) - want) <= max(rel * abs(want), slack)
            else:
                ok = got == want
            if not ok:
                out.append(f"{u}/{i} {col}: got {got!r}, oracle {want!r}")
    return out
