"""Popularity lists: popularity and trending (the same ranked list for every user) and popularity per category."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from recs_pipeline.data.contract import CATEGORY_ID, EVENT_TYPE, ITEM_ID, PRICE, TS, UPDATED_AT, USER_ID
from recs_pipeline.models.retrieval._common import (
    CANDIDATE_SCHEMA,
    CATEGORY_POPULARITY_FILE,
    DEFAULT_TYPE_WEIGHTS,
    ITEM_CATEGORIES_FILE,
    POPULARITY_FILE,
    RANK,
    SCORE,
    TRENDING_FILE,
    WEIGHT,
    check_as_of,
    check_n,
    check_type_weights,
    rank_items,
    require_columns,
    weighted_events,
)


def _window_scores(
    events: pl.DataFrame, start: datetime, end: datetime, type_weights: Mapping[str, float]
) -> pl.DataFrame:
    """Per item: weighted event count ``w`` and raw count ``c`` of events with ``start <= ts < end``."""
    window = events.select(ITEM_ID, EVENT_TYPE, TS).filter((pl.col(TS) >= start) & (pl.col(TS) < end))
    return (
        weighted_events(window, type_weights)
        .group_by(ITEM_ID)
        .agg(pl.col(WEIGHT).sum().alias("w"), pl.len().cast(pl.Float64).alias("c"))
        .with_columns(pl.col(ITEM_ID).cast(pl.String))
    )


class GlobalList:
    """A global ranked (item_id, score) list, recommended identically to every user."""

    FILE: str = ""

    def __init__(self, scores: pl.DataFrame, *, as_of: datetime | None = None) -> None:
        self._scores = rank_items(scores.select(pl.col(ITEM_ID).cast(pl.String), pl.col(SCORE).cast(pl.Float64)))
        self.as_of = as_of

    @property
    def size(self) -> int:
        """How many items the list ranks."""
        return self._scores.height

    def top(self, n: int) -> pl.DataFrame:
        """The ``n`` best items: ``item_id``, ``score``, ``rank``."""
        check_n(n)
        return self._scores.head(n)

    def recommend(self, user_ids: Sequence[str], *, n: int) -> pl.DataFrame:
        """The same top-``n`` list for every (distinct) user: candidates ``user_id``, ``item_id``, ``score``, ``rank``."""
        users = pl.DataFrame({USER_ID: list(dict.fromkeys(str(u) for u in user_ids))}, schema={USER_ID: pl.String()})
        return (
            users.join(self.top(n), how="cross")
            .sort([USER_ID, RANK])
            .select(list(CANDIDATE_SCHEMA))
            .cast(CANDIDATE_SCHEMA)  # type: ignore[arg-type]
        )

    def save(self, folder: Path) -> list[Path]:
        """Write the scored list (``item_id``, ``score``, ``rank``) to parquet."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.FILE
        self._scores.write_parquet(path)
        return [path]

    @classmethod
    def _read(cls, folder: Path) -> pl.DataFrame:
        frame = pl.read_parquet(Path(folder) / cls.FILE)
        require_columns(frame, [ITEM_ID, SCORE], cls.FILE)
        return frame


class Popularity(GlobalList):
    """Most popular items: weighted event counts in ``[as_of - window_days, as_of)``.

    Only events strictly before ``as_of`` count, so the list never sees the moment it serves.
    """

    FILE = POPULARITY_FILE

    @classmethod
    def fit(
        cls,
        events: pl.DataFrame,
        *,
        as_of: datetime,
        window_days: float = 7,
        type_weights: Mapping[str, float] = DEFAULT_TYPE_WEIGHTS,
    ) -> Popularity:
        """Score items by type-weighted event count over the window before ``as_of``."""
        check_as_of(as_of)
        check_type_weights(type_weights)
        if window_days <= 0:
            raise ValueError(f"window_days must be > 0, got {window_days}")
        require_columns(events, [ITEM_ID, EVENT_TYPE, TS], "events")
        counts = _window_scores(events, as_of - timedelta(days=window_days), as_of, type_weights)
        return cls(counts.select(ITEM_ID, pl.col("w").alias(SCORE)), as_of=as_of)

    @classmethod
    def load(cls, folder: Path) -> Popularity:
        """Restore from ``popularity.parquet``."""
        return cls(cls._read(folder))


class Trending(GlobalList):
    """Items whose recent activity is high relative to their own baseline.

    With ``R`` the type-weighted count and ``r`` the raw event count in the recent window
    ``[as_of - recent_hours, as_of)``, and ``B`` the type-weighted count in the baseline window
    ``[as_of - recent_hours - baseline_days, as_of - recent_hours)``::

        recent_daily   = R / (recent_hours / 24)
        baseline_daily = B / baseline_days
        score = (recent_daily + 1) / (baseline_daily + 1) * log1p(r)

    The ratio rewards acceleration (the +1 smooths items new to the baseline); ``log1p(r)``
    keeps one or two stray events from topping the list. Only items with recent activity are
    listed, and only events strictly before ``as_of`` count.
    """

    FILE = TRENDING_FILE

    @classmethod
    def fit(
        cls,
        events: pl.DataFrame,
        *,
        as_of: datetime,
        recent_hours: float = 24,
        baseline_days: float = 7,
        type_weights: Mapping[str, float] = DEFAULT_TYPE_WEIGHTS,
    ) -> Trending:
        """Score items by recent-vs-baseline activity (formula in the class docstring)."""
        check_as_of(as_of)
        check_type_weights(type_weights)
        if recent_hours <= 0 or baseline_days <= 0:
            raise ValueError("recent_hours and baseline_days must be > 0")
        require_columns(events, [ITEM_ID, EVENT_TYPE, TS], "events")
        split = as_of - timedelta(hours=recent_hours)
        recent = _window_scores(events, split, as_of, type_weights)
        baseline = _window_scores(events, split - timedelta(days=baseline_days), split, type_weights)
        scores = (
            recent.join(baseline.select(ITEM_ID, pl.col("w").alias("b")), on=ITEM_ID, how="left")
            .with_columns(pl.col("b").fill_null(0.0))
            .select(
                ITEM_ID,
                (
                    (pl.col("w") / (recent_hours / 24.0) + 1.0)
                    / (pl.col("b") / baseline_days + 1.0)
                    * pl.col("c").log1p()
                ).alias(SCORE),
            )
        )
        return cls(scores, as_of=as_of)

    @classmethod
    def load(cls, folder: Path) -> Trending:
        """Restore from ``trending.parquet``."""
        return cls(cls._read(folder))


class CategoryPopularity:
    """Most popular items per category: :class:`Popularity`'s scores ranked within each category.

    Fitted on events before ``as_of`` and the catalog as it was then (each item's newest version
    updated before ``as_of``); keeps the ``per_category`` best items of every category, and every
    known item's category (what retrieval reads a user's favourite categories from) and, for the
    content source's lists, its price when the catalog has one (a user's price band in a category).
    """

    FILE = CATEGORY_POPULARITY_FILE
    CATEGORIES_FILE = ITEM_CATEGORIES_FILE

    def __init__(self, lists: pl.DataFrame, categories: pl.DataFrame) -> None:
        require_columns(lists, [CATEGORY_ID, ITEM_ID, SCORE], self.FILE)
        require_columns(categories, [ITEM_ID, CATEGORY_ID], self.CATEGORIES_FILE)
        self.lists = (
            lists.select(pl.col(CATEGORY_ID).cast(pl.String), pl.col(ITEM_ID).cast(pl.String), pl.col(SCORE))
            .sort([CATEGORY_ID, SCORE, ITEM_ID], descending=[False, True, False])
            .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over(CATEGORY_ID).alias(RANK))
        )
        price = [pl.col(PRICE).cast(pl.Float64)] if PRICE in categories.columns else []
        self.categories = categories.select(
            pl.col(ITEM_ID).cast(pl.String), pl.col(CATEGORY_ID).cast(pl.String), *price
        )

    @classmethod
    def fit(
        cls,
        events: pl.DataFrame,
        catalog: pl.DataFrame,
        *,
        as_of: datetime,
        window_days: float = 7,
        per_category: int = 50,
        type_weights: Mapping[str, float] = DEFAULT_TYPE_WEIGHTS,
    ) -> CategoryPopularity:
        """``catalog``: item versions (``item_id``, ``category_id``, ``updated_at``)."""
        check_n(per_category)
        require_columns(catalog, [ITEM_ID, CATEGORY_ID, UPDATED_AT], "catalog")
        popular = Popularity.fit(events, as_of=as_of, window_days=window_days, type_weights=type_weights)
        categories = catalog_as_of(catalog, as_of)
        lists = (
            popular.top(max(popular.size, 1))
            .join(categories, on=ITEM_ID, how="inner")
            .sort([CATEGORY_ID, SCORE, ITEM_ID], descending=[False, True, False])
            .filter(pl.int_range(pl.len()).over(CATEGORY_ID) < per_category)
        )
        return cls(lists.select(CATEGORY_ID, ITEM_ID, SCORE), categories)

    @classmethod
    def fit_new_items(
        cls,
        events: pl.DataFrame,
        catalog: pl.DataFrame,
        *,
        as_of: datetime,
        per_category: int = 50,
        max_interactions: int = 1,
    ) -> CategoryPopularity:
        """The content source's lists: per category, the catalog's items (as it was before ``as_of``)
        with fewer than ``max_interactions`` events before ``as_of`` (1: none at all), the newest
        catalog version first (then the item id), at most ``per_category``; scored 1 / rank. What the
        interaction-based sources cannot propose, matched to users by their favourite categories.
        When the catalog has a ``price`` column, every item's price (its newest version before
        ``as_of``) is kept with its category: retrieval's price band (:class:`~recs_pipeline.models.
        retrieval.sources.CategoryLists`) reads the user's typical price in a category from it."""
        check_n(per_category)
        require_columns(catalog, [ITEM_ID, CATEGORY_ID, UPDATED_AT], "catalog")
        before = events.filter(pl.col(TS) < as_of) if TS in events.columns else events
        counts = before.group_by(pl.col(ITEM_ID).cast(pl.String)).agg(pl.len().alias("n"))
        newest = (
            catalog.filter(pl.col(UPDATED_AT) < as_of)
            .group_by(pl.col(ITEM_ID).cast(pl.String))
            .agg(pl.col(UPDATED_AT).max().alias("listed"))
        )
        categories = catalog_as_of(catalog, as_of, price=PRICE in catalog.columns)
        cold = (
            categories.join(newest, on=ITEM_ID, how="inner")
            .join(counts, on=ITEM_ID, how="left")
            .filter(pl.col("n").fill_null(0) < max_interactions)
            .sort([CATEGORY_ID, "listed", ITEM_ID], descending=[False, True, False])
            .filter(pl.int_range(pl.len()).over(CATEGORY_ID) < per_category)
            .with_columns((1.0 / (pl.int_range(pl.len()).over(CATEGORY_ID) + 1)).alias(SCORE))
        )
        return cls(cold.select(CATEGORY_ID, ITEM_ID, SCORE), categories)

    def save(self, folder: Path) -> list[Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.lists.write_parquet(folder / self.FILE)
        self.categories.write_parquet(folder / self.CATEGORIES_FILE)
        return [folder / self.FILE, folder / self.CATEGORIES_FILE]

    @classmethod
    def load(cls, folder: Path) -> CategoryPopularity:
        return cls(pl.read_parquet(Path(folder) / cls.FILE), pl.read_parquet(Path(folder) / cls.CATEGORIES_FILE))


def catalog_as_of(catalog: pl.DataFrame, as_of: datetime, *, price: bool = False) -> pl.DataFrame:
    """Each item's category in its newest version updated strictly before ``as_of`` (the warehouse's
    ``catalog_as_of`` rule): ``item_id``, ``category_id``, and that version's ``price`` with ``price``."""
    return (
        catalog.filter(pl.col(UPDATED_AT) < as_of)
        .sort([ITEM_ID, UPDATED_AT])
        .group_by(ITEM_ID, maintain_order=True)
        .last()
        .select(
            pl.col(ITEM_ID).cast(pl.String),
            pl.col(CATEGORY_ID).cast(pl.String),
            *([pl.col(PRICE).cast(pl.Float64)] if price else []),
        )
    )
