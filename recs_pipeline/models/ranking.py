"""The ranking stage: training rows (candidates + point-in-time features + graded labels) and LightGBM lambdarank.

Features come from Feast's offline store through the model's FeatureService
(``get_historical_features`` at the fold's cutoff), so training sees exactly what a snapshot
stamped at the cutoff holds: only events strictly before it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from recs_pipeline.data.contract import CATEGORY_ID, ITEM_ID, USER_ID
from recs_pipeline.models import ranker_features

if TYPE_CHECKING:  # LightGBM and pandas take seconds to import: loaded by the functions that use them
    import lightgbm as lgb
    from feast import FeatureStore

log = logging.getLogger(__name__)

LABEL = "relevance"
FEATURE_SERVICE = "ranker_v1"
# Key used in the entity frame for items without a category (Feast joins on strings).
NO_CATEGORY = "__none__"


def fetch_features(
    store: FeatureStore,
    pairs: pl.DataFrame,
    *,
    as_of: datetime,
    service: str = FEATURE_SERVICE,
    chunk_rows: int = 250_000,
) -> pl.DataFrame:
    """Point-in-time features of (user_id, item_id) pairs as of ``as_of`` through a Feast FeatureService.

    Returns ``pairs`` with one column per feature, named ``<view>__<feature>``. The item's category
    (needed as the key of user x category features) is itself read point in time from
    ``item_features``. Feast's offline join runs on at most ``chunk_rows`` entity rows at a time
    (whole users per chunk), which bounds its memory on large folds.
    """
    import pandas as pd

    if pairs.is_empty():
        raise ValueError("no (user, item) pairs to fetch features for")
    items = pairs.select(ITEM_ID).unique().to_pandas()
    items["event_timestamp"] = pd.Timestamp(as_of)
    categories = store.get_historical_features(entity_df=items, features=["item_features:category_id"]).to_df()
    category_map = pl.from_pandas(categories[[ITEM_ID, CATEGORY_ID]]).with_columns(
        pl.col(CATEGORY_ID).fill_null(NO_CATEGORY)
    )
    entity = (
        pairs.select(USER_ID, ITEM_ID)
        .join(category_map, on=ITEM_ID, how="left")
        .with_columns(pl.col(CATEGORY_ID).fill_null(NO_CATEGORY))
        .sort(USER_ID, ITEM_ID)
    )
    feature_service = store.get_feature_service(service)
    parts = []
    for chunk in _user_chunks(entity, chunk_rows):
        entity_df = chunk.to_pandas()
        entity_df["event_timestamp"] = pd.Timestamp(as_of)
        df = store.get_historical_features(
            entity_df=entity_df, features=feature_service, full_feature_names=True
        ).to_df()
        part = pl.from_pandas(df.drop(columns=["event_timestamp"]))
        # pandas turns an integer column with a missing value into float: make every numeric feature
        # Float64 so each chunk (and each fold) has the same schema
        parts.append(
            part.with_columns(
                pl.col(c).cast(pl.Float64) for c, t in part.schema.items() if "__" in c and t.is_numeric()
            )
        )
    return pairs.join(pl.concat(parts, how="vertical_relaxed"), on=[USER_ID, ITEM_ID], how="left")


def _user_chunks(entity: pl.DataFrame, chunk_rows: int) -> list[pl.DataFrame]:
    """Consecutive slices of ``entity`` (sorted by user) of about ``chunk_rows`` rows, never splitting a user."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    sizes = entity.group_by(USER_ID, maintain_order=True).len()["len"].to_list()
    chunks, start, rows = [], 0, 0
    for size in sizes:
        if rows and rows + size > chunk_rows:
            chunks.append(entity.slice(start, rows))
            start, rows = start + rows, 0
        rows += size
    chunks.append(entity.slice(start, rows))
    return chunks


def add_history_features(rows: pl.DataFrame, interactions: pl.DataFrame, *, as_of: datetime) -> pl.DataFrame:
    """The user's own past with the candidate item, from the interactions snapshot stamped at ``as_of``.

    Repeat interactions dominate e-commerce sessions, so the decayed weight, per-type counts and the
    time since the last interaction with this very item are strong ranking signals. The snapshot
    holds only events strictly before ``as_of``.
    """
    past = interactions.select(
        USER_ID,
        ITEM_ID,
        pl.col("weight").alias("ui_weight"),
        pl.col("views").alias("ui_views"),
        pl.col("carts").alias("ui_carts"),
        pl.col("purchases").alias("ui_purchases"),
        # unix seconds minus unix seconds, as the service computes it from the online profile
        (pl.lit(as_of.timestamp()) - pl.col("last_ts").dt.epoch("us").cast(pl.Float64) / 1e6).alias(
            "ui_seconds_since_last"
        ),
    )
    return rows.join(past, on=[USER_ID, ITEM_ID], how="left")


def attach_labels(rows: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    """Graded relevance per row (0 when the user did not touch the item in the label window), sorted by user."""
    return (
        rows.join(labels.select(USER_ID, ITEM_ID, LABEL), on=[USER_ID, ITEM_ID], how="left")
        .with_columns(pl.col(LABEL).fill_null(0.0))
        .sort(USER_ID, ITEM_ID)
    )


def build_rows(
    store: FeatureStore,
    candidates: pl.DataFrame,
    *,
    interactions: pl.DataFrame,
    truth: pl.DataFrame | None,
    as_of: datetime,
    chunk_rows: int = 500_000,
) -> Iterator[pl.DataFrame]:
    """Finished ranking rows, a chunk of whole users at a time: keys, label, and the ranker's features.

    Features are computed by the one contract (:mod:`recs_pipeline.models.ranker_features`) from
    Feast's point-in-time rows, the user's history with the item and the candidates' source scores.
    ``truth`` None leaves the label out (scoring rather than training). Chunking bounds memory on
    large folds: a caller writes each chunk out before the next is built.
    """
    ordered = candidates.sort(USER_ID)
    for chunk in _user_chunks(ordered, chunk_rows):
        users = chunk.select(USER_ID).unique()
        rows = fetch_features(store, chunk, as_of=as_of)
        rows = add_history_features(rows, interactions.join(users, on=USER_ID, how="semi"), as_of=as_of)
        matrix = ranker_features.assemble(ranker_features.inputs_from_rows(rows))
        out = pl.concat([rows.select(USER_ID, ITEM_ID), ranker_features.feature_frame(matrix)], how="horizontal")
        if truth is None:
            yield out.sort(USER_ID, ITEM_ID)
        else:
            yield attach_labels(out, truth.join(users, on=USER_ID, how="semi"))


@dataclass(frozen=True)
class RankerParams:
    """LightGBM lambdarank settings (see LightGBM's docs for each)."""

    num_leaves: int = 31
    learning_rate: float = 0.05
    num_boost_round: int = 400
    min_data_in_leaf: int = 50
    feature_fraction: float = 0.9
    early_stopping_rounds: int = 30
    eval_at: int = 20
    seed: int = 0
    threads: int = 2

    def lgb_params(self) -> dict[str, Any]:
        return {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [self.eval_at],
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "label_gain": [0, 1, 3, 7],  # 2^rel - 1 for relevance 0..3
            "seed": self.seed,
            "deterministic": True,
            "num_threads": self.threads,
            "verbosity": -1,
        }


@dataclass(frozen=True)
class TrainedRanker:
    booster: lgb.Booster
    features: list[str]
    best_iteration: int
    curve: dict[str, list[float]]
    importance: dict[str, float]


def _dataset(rows: pl.DataFrame, features: Sequence[str]) -> lgb.Dataset:
    """Rows must be sorted by user; groups are each user's contiguous rows. Users without a positive are dropped."""
    import lightgbm as lgb

    positive_users = rows.filter(pl.col(LABEL) > 0).select(USER_ID).unique()
    kept = rows.join(positive_users, on=USER_ID, how="semi").sort(USER_ID, ITEM_ID)
    if kept.is_empty():
        raise ValueError("no user has a relevant candidate: the ranker has nothing to learn (retrieval recall is 0)")
    groups = kept.group_by(USER_ID, maintain_order=True).len()["len"].to_numpy()
    x = kept.select(features).to_numpy().astype(np.float32, copy=False)
    # no pre-filtering of features by min_data_in_leaf, so one dataset serves every leaf size a
    # hyper-parameter search tries (LightGBM refuses to change it on a constructed dataset)
    return lgb.Dataset(
        x,
        label=kept[LABEL].cast(pl.Int32).to_numpy(),
        group=groups,
        feature_name=list(features),
        free_raw_data=False,
        params={"feature_pre_filter": False},
    )


@dataclass(frozen=True)
class RankerDatasets:
    """The train and validation folds' LightGBM datasets (built once, trained on many times)."""

    train: lgb.Dataset
    valid: lgb.Dataset
    features: list[str]


def ranker_datasets(
    train: pl.DataFrame, valid: pl.DataFrame, *, features: Sequence[str] = ranker_features.FEATURES
) -> RankerDatasets:
    train_set = _dataset(train, features)
    valid_set = _dataset(valid, features)
    valid_set.reference = train_set
    return RankerDatasets(train_set, valid_set, list(features))


def train_ranker(
    train: pl.DataFrame,
    valid: pl.DataFrame,
    *,
    features: Sequence[str] = ranker_features.FEATURES,
    params: RankerParams = RankerParams(),
) -> TrainedRanker:
    """Fit lambdarank on ``train`` with early stopping on ``valid`` NDCG@``eval_at`` (float32 features)."""
    return train_ranker_on(ranker_datasets(train, valid, features=features), params=params)


def train_ranker_on(datasets: RankerDatasets, *, params: RankerParams = RankerParams()) -> TrainedRanker:
    """:func:`train_ranker` on datasets already built."""
    import lightgbm as lgb

    curve: dict[str, Any] = {}
    booster = lgb.train(
        params.lgb_params(),
        datasets.train,
        num_boost_round=params.num_boost_round,
        valid_sets=[datasets.train, datasets.valid],
        valid_names=["train", "valid"],
        callbacks=[lgb.early_stopping(params.early_stopping_rounds, verbose=False), lgb.record_evaluation(curve)],
    )
    key = f"ndcg@{params.eval_at}"
    return TrainedRanker(
        booster=booster,
        features=datasets.features,
        best_iteration=int(booster.best_iteration or booster.current_iteration()),
        curve={"train": list(curve["train"][key]), "valid": list(curve["valid"][key])},
        importance=_importance(booster, datasets.features),
    )


def _importance(booster: lgb.Booster, features: Sequence[str]) -> dict[str, float]:
    """Total gain per feature, largest first."""
    gains = booster.feature_importance(importance_type="gain")
    return dict(sorted(zip(features, map(float, gains), strict=True), key=lambda kv: -kv[1]))


def refit_ranker(
    rows: pl.DataFrame,
    *,
    rounds: int,
    features: Sequence[str] = ranker_features.FEATURES,
    params: RankerParams = RankerParams(),
) -> TrainedRanker:
    """Fit lambdarank on ``rows`` (every fold's) for exactly ``rounds`` rounds: the evaluated ranker's
    hyper-parameters and early-stopped round count, on more and newer labels (what is served).

    There is no held-out fold left to stop on; the curve records the training NDCG only.
    """
    import lightgbm as lgb

    if rounds < 1:
        raise ValueError(f"rounds must be positive, got {rounds}")
    train_set = _dataset(rows, features)
    curve: dict[str, Any] = {}
    booster = lgb.train(
        params.lgb_params(),
        train_set,
        num_boost_round=rounds,
        valid_sets=[train_set],
        valid_names=["train"],
        callbacks=[lgb.record_evaluation(curve)],
    )
    return TrainedRanker(
        booster=booster,
        features=list(features),
        best_iteration=rounds,
        curve={"train": list(curve["train"][f"ndcg@{params.eval_at}"])},
        importance=_importance(booster, features),
    )


class CompiledRanker:
    """The ranker's scoring function compiled to machine code (lleaves, through LLVM).

    Every path that scores (the evaluation, the batch scorer, the service) scores through this, so
    they agree to the bit. On a 100-tree, 58-feature model and 300 rows it took 0.038 ms against
    0.70 ms for LightGBM's own ``predict`` with one thread, equal to 2e-15 (benchmarks/BENCHMARKS.md,
    issue 9). Compiling takes 1-2 s, once per load. LightGBM itself still trains the model and
    explains scores (``pred_contrib``).
    """

    def __init__(self, model_file: Path) -> None:
        self.model_file = Path(model_file)
        self._model = _compiled(hashlib.sha256(self.model_file.read_bytes()).hexdigest(), str(model_file))
        self.n_features = int(self._model.num_feature())

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Scores of the rows of a float feature matrix (columns in the model's feature order), one thread."""
        if matrix.ndim != 2 or matrix.shape[1] != self.n_features:
            raise ValueError(
                f"the ranker takes {self.n_features} feature columns, got a matrix of shape {matrix.shape}"
            )
        return np.asarray(self._model.predict(np.asarray(matrix, dtype=np.float64), n_jobs=1), dtype=np.float64)


@functools.lru_cache(maxsize=4)
def _compiled(sha256: str, model_file: str) -> Any:
    """The compiled model of a ranker file's content (a process reloading the same model compiles it once)."""
    import lleaves

    model = lleaves.Model(model_file=model_file)
    model.compile()
    return model


def predict(ranker: CompiledRanker, matrix: np.ndarray) -> np.ndarray:
    """Ranker scores for the rows of a feature matrix (a saved model holds only its best iteration)."""
    if not len(matrix):
        return np.empty(0)
    return ranker.predict(matrix)


def score(ranker: CompiledRanker, rows: pl.DataFrame, features: Sequence[str] = ranker_features.FEATURES) -> np.ndarray:
    """Ranker scores for ``rows`` from their float32 ``features`` columns."""
    return predict(ranker, ranker_features.matrix_of(rows, features))


def rank_top_k(rows: pl.DataFrame, scores: np.ndarray, *, k: int) -> pl.DataFrame:
    """(user_id, item_id, score, rank) of the top ``k`` rows per user by score."""
    return (
        rows.select(USER_ID, ITEM_ID)
        .with_columns(score=pl.Series(scores))
        .sort([USER_ID, "score", ITEM_ID], descending=[False, True, False])
        .with_columns(rank=pl.int_range(1, pl.len() + 1).over(USER_ID))
        .filter(pl.col("rank") <= k)
    )


def save_ranker(ranker: TrainedRanker, folder: Path) -> list[Path]:
    """The model as LightGBM text (no pickle) plus its feature list."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "ranker.txt"
    ranker.booster.save_model(str(model), num_iteration=ranker.best_iteration)
    meta = folder / "ranker.json"
    meta.write_text(json.dumps({"features": ranker.features, "best_iteration": ranker.best_iteration}, indent=2))
    return [model, meta]


def load_booster(folder: Path) -> lgb.Booster:
    """The ranker saved by :func:`save_ranker` (LightGBM text format)."""
    import lightgbm as lgb

    return lgb.Booster(model_file=str(folder / "ranker.txt"))


def load_scorer(folder: Path) -> CompiledRanker:
    """The ranker saved by :func:`save_ranker`, compiled for scoring."""
    return CompiledRanker(folder / "ranker.txt")
