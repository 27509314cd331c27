"""The champion model as the scoring service holds it in memory: retrieval, ranker and item features.

Loaded once per model version from the registry (hashes verified) into plain numpy arrays and
dicts, so that a request does no file I/O and no dataframe work: an ALS dot product, a few dict
lookups, one LightGBM call.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl

from recs_pipeline.data.contract import AVAILABLE, CATEGORY_ID, ITEM_ID, PRICE
from recs_pipeline.models.registry import ModelRegistry, ModelVersion
from recs_pipeline.models.retrieval import ALSRetriever, CoVisitation, Popularity, Trending

log = logging.getLogger(__name__)

ITEM_PREFIX = "item_features__"
# Global lists are kept this deep (deeper than any source limit, for category-filtered requests).
GLOBAL_DEPTH = 500


@dataclass(frozen=True)
class GlobalList:
    """A ranked global list (popular or trending): ids, scores, ranks from 1."""

    item_ids: list[str]
    scores: np.ndarray

    @classmethod
    def from_frame(cls, top: pl.DataFrame) -> GlobalList:
        return cls(item_ids=top[ITEM_ID].to_list(), scores=top["score"].to_numpy().astype(np.float64))


class ServingModel:
    """Everything one model version needs to answer a request, in memory.

    Attributes
    ----------
    version : str
        The registry version served.
    features : list[str]
        The ranker's input columns, in training order.
    """

    def __init__(self, mv: ModelVersion) -> None:
        started = time.perf_counter()
        folder = Path(mv.path)
        self.version = mv.version
        self.manifest = mv.manifest
        self.als = ALSRetriever.load(folder / "als")
        self.als_user_pos = {u: i for i, u in enumerate(self.als.user_ids.tolist())}
        self.als_item_pos = {it: i for i, it in enumerate(self.als.item_ids.tolist())}
        self.als_item_ids = self.als.item_ids.tolist()
        self.item_factors = self.als.item_factors
        self.user_factors = self.als.user_factors
        # Y^T Y + lambda I of implicit's least-squares user step, once per model (fold-in reuses it)
        factors64 = self.item_factors.astype(np.float64)
        self.yty_reg = factors64.T @ factors64 + self.als.params.regularization * np.eye(factors64.shape[1])
        self.covis = _neighbour_map(CoVisitation.load(folder / "covis").neighbors())
        self.popular = GlobalList.from_frame(Popularity.load(folder / "popular").top(GLOBAL_DEPTH))
        self.trending = GlobalList.from_frame(Trending.load(folder / "trending").top(GLOBAL_DEPTH))
        meta = json.loads((folder / "ranker.json").read_text())
        self.features: list[str] = meta["features"]
        self.booster = lgb.Booster(model_file=str(folder / "ranker.txt"))  # predict() pins num_threads=1
        self._load_items(pl.read_parquet(folder / "item_snapshot.parquet"))
        log.info("loaded model %s in %.2fs", self.version, time.perf_counter() - started)

    def _load_items(self, snapshot: pl.DataFrame) -> None:
        """Item features as a matrix (rows by item, columns = the ranker's item features) plus lookups."""
        self.item_row = {it: i for i, it in enumerate(snapshot[ITEM_ID].to_list())}
        self.item_feature_names = [f for f in self.features if f.startswith(ITEM_PREFIX)]
        columns = [f.removeprefix(ITEM_PREFIX) for f in self.item_feature_names]
        self.item_matrix = (
            snapshot.select([pl.col(c).cast(pl.Float64) for c in columns]).to_numpy()
            if columns
            else np.empty((snapshot.height, 0))
        )
        self.item_category = (
            snapshot[CATEGORY_ID].to_list() if CATEGORY_ID in snapshot.columns else [None] * snapshot.height
        )
        self.item_price = (
            snapshot[PRICE].cast(pl.Float64).to_numpy()
            if PRICE in snapshot.columns
            else np.full(snapshot.height, np.nan)
        )
        self.item_available = (
            snapshot[AVAILABLE].fill_null(True).to_list() if AVAILABLE in snapshot.columns else [True] * snapshot.height
        )
        self.categories = frozenset(c for c in self.item_category if c is not None)
        # per category, the popular list's items in that category (fallback for filtered requests)
        self.popular_by_category: dict[str, list[str]] = {}
        for item in self.popular.item_ids:
            row = self.item_row.get(item)
            if row is not None and self.item_category[row] is not None:
                self.popular_by_category.setdefault(self.item_category[row], []).append(item)

    def category_of(self, item_id: str) -> str | None:
        row = self.item_row.get(item_id)
        return None if row is None else self.item_category[row]

    def is_available(self, item_id: str) -> bool:
        row = self.item_row.get(item_id)
        return True if row is None else bool(self.item_available[row])

    @classmethod
    def load_champion(cls, registry: ModelRegistry) -> ServingModel:
        """The verified champion (raises ``NoChampionError`` / ``ModelIntegrityError``)."""
        return cls(registry.load_champion())


def _neighbour_map(neighbors: pl.DataFrame) -> dict[str, tuple[list[str], np.ndarray]]:
    """item -> (neighbour ids, co-visitation scores), strongest first."""
    grouped = neighbors.sort(["item_id", "rank"]).group_by("item_id", maintain_order=True).agg("neighbor_id", "score")
    return {
        item: (list(nbrs), np.asarray(scores, dtype=np.float64))
        for item, nbrs, scores in zip(grouped["item_id"], grouped["neighbor_id"], grouped["score"], strict=True)
    }
