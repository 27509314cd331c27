"""The model bundle: one module writes a model version and loads it for serving.

A bundle is a registry version folder (hashes, gate and rollback are the registry's) holding the
candidate sources, the ranker, the item block served with it, and a manifest whose ``recipe``
records everything the service and the online refresh need to reproduce training: event weights
and half-life, retrieval parameters, candidate limits per source, the ranker's feature list and
order, the feature service. Nothing about a served model is left to a code default.

Layout::

    als/ covis/ popular/ trending/   candidate sources (npz, json, parquet; no pickles), fitted on all the data
    bought_together/                 items carted or bought in the same session (the item endpoints'; absent
                                     from bundles written before it: they are served, those endpoints answer
                                     from co-visitation instead)
    ranker.txt ranker.json           LightGBM text model and its feature list: the served ranker
    evaluated/ranker.txt ranker.json the ranker the evaluation judged (the promotion gate re-scores it
                                     on a later challenger's validation window)
    item_snapshot.parquet            item features, category and availability at the newest snapshot
    manifest.json                    written by the registry: recipe, windows, fingerprint, metrics, sha256s
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from recs_pipeline.data.contract import AVAILABLE, CATEGORY_ID, ITEM_ID
from recs_pipeline.models import ranker_features as rf
from recs_pipeline.models.consumption import ConsumedPolicy
from recs_pipeline.models.ranking import FEATURE_SERVICE, CompiledRanker, TrainedRanker, save_ranker
from recs_pipeline.models.registry import ModelRegistry, ModelVersion
from recs_pipeline.models.retrieval import ItemIndex
from recs_pipeline.models.retrieval.sources import SourceSet
from recs_pipeline.models.training import (
    SOURCES,
    FoldSources,
    RetrievalParams,
    retrieval_params_from_json,
    retrieval_params_json,
)
from recs_pipeline.warehouse.features import Weighting

log = logging.getLogger(__name__)

# 2: records the consumed-items policy; 3: the ``recent`` source (its limit and ranker features); 4: the
# ``content`` source (new items: its lists, limit and ranker features); 5: the content source's price band
# (each item's price kept with its lists, ``content_price_band`` among the retrieval parameters); 6: hide
# events (the ``user_category_features__hides_30d`` ranker feature, hidden items withheld in retrieval)
RECIPE_FORMAT = 6
ITEM_SNAPSHOT_FILE = "item_snapshot.parquet"
SNAPSHOT_TIME = "event_timestamp"  # the feature snapshots' time column (feature_repo/data_sources.py)
RANKER_MODEL_FILE = "ranker.txt"
RANKER_FILES = (RANKER_MODEL_FILE, "ranker.json")
EVALUATED_RANKER_DIR = "evaluated"
# Global lists are kept this deep (deeper than any source limit, for category-filtered requests).
GLOBAL_DEPTH = 500


class BundleError(ValueError):
    """A bundle's manifest does not describe a model this code can serve."""


@dataclass(frozen=True)
class Recipe:
    """What serving and the online refresh need to reproduce training, recorded in the manifest.

    Attributes
    ----------
    weighting : Weighting
        Event-type weights and half-life of the interaction, profile and session weights.
    retrieval : RetrievalParams
        Parameters of every candidate source (ALS, co-visitation and its anchors, global lists).
    limits : dict[str, int]
        Candidates each source contributes per user before ranking.
    features : tuple[str, ...]
        The ranker's input columns, in order.
    feature_service : str
        The Feast feature service the ranker's features were read through.
    consumed : ConsumedPolicy
        Which items count as consumed and are never retrieved again. Format 1 bundles, from before
        the policy was recorded, get purchased items whose last interaction is under 30 days old,
        the nearest to the purchased-in-30-days filter they were served with.
    """

    weighting: Weighting
    retrieval: RetrievalParams
    limits: dict[str, int]
    consumed: ConsumedPolicy
    features: tuple[str, ...] = rf.FEATURES
    feature_service: str = FEATURE_SERVICE

    def __post_init__(self) -> None:
        if (
            set(self.limits) != set(SOURCES)
            or any(v < 0 for v in self.limits.values())
            or not any(self.limits.values())
        ):
            raise BundleError(
                f"limits must give every source {SOURCES} a count (0: off), at least one positive; got {self.limits}"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RECIPE_FORMAT,
            "weighting": asdict(self.weighting),
            "retrieval": retrieval_params_json(self.retrieval),
            "limits": dict(self.limits),
            "features": list(self.features),
            "feature_service": self.feature_service,
            "consumed": self.consumed.to_json(),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Recipe:
        if raw.get("format") != RECIPE_FORMAT:
            raise BundleError(
                f"bundle recipe format {raw.get('format')!r} is not {RECIPE_FORMAT}: the model was trained by older "
                "code (its sources and ranker features differ from today's); retrain with `recs run`"
            )
        return cls(
            weighting=Weighting(**raw["weighting"]),
            retrieval=retrieval_params_from_json(raw["retrieval"]),
            limits={k: int(v) for k, v in raw["limits"].items()},
            features=tuple(raw["features"]),
            feature_service=str(raw["feature_service"]),
            consumed=ConsumedPolicy.from_json(raw["consumed"]),
        )


def write_bundle(
    registry: ModelRegistry,
    *,
    sources: FoldSources,
    ranker: TrainedRanker | Path,
    item_snapshot: pl.DataFrame,
    recipe: Recipe,
    manifest: Mapping[str, Any],
    evaluated_ranker: Path | None = None,
) -> ModelVersion:
    """Stage the bundle's files and register them as a new version (not promoted).

    ``ranker`` (the served one) is a trained ranker or a folder holding one saved by
    ``ranking.save_ranker``; ``evaluated_ranker``, a folder, is the ranker the evaluation judged when
    the served one was refitted after it. ``manifest`` carries windows, data fingerprint and metrics;
    the recipe is added here.
    """
    if tuple(recipe.features) != rf.FEATURES:
        raise BundleError("the recipe's features differ from the ranker-feature contract")
    staged = registry.stage()
    sources.save(staged)
    if isinstance(ranker, Path):
        _copy_ranker(ranker, staged)
    else:
        save_ranker(ranker, staged)
    if evaluated_ranker is not None:
        _copy_ranker(evaluated_ranker, staged / EVALUATED_RANKER_DIR)
    saved = json.loads((staged / "ranker.json").read_text())["features"]
    if tuple(saved) != recipe.features:
        raise BundleError(f"the ranker was trained on {len(saved)} features that differ from the recipe's")
    item_snapshot.write_parquet(staged / ITEM_SNAPSHOT_FILE)
    return registry.register(
        staged,
        manifest={**manifest, "feature_service": recipe.feature_service, "recipe": recipe.to_json()},
    )


def _copy_ranker(source: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in RANKER_FILES:
        (folder / name).write_bytes((source / name).read_bytes())


def evaluated_ranker_dir(mv: ModelVersion) -> Path:
    """The folder of the ranker a version's evaluation judged: ``evaluated/`` when the served ranker
    was refitted after it, else the served ranker itself (bundles from before the refit)."""
    evaluated = mv.path / EVALUATED_RANKER_DIR
    return evaluated if (evaluated / RANKER_MODEL_FILE).exists() else mv.path


def rescore_blocker(mv: ModelVersion, *, labels_from: datetime) -> str | None:
    """Why the ranker that ``mv``'s evaluation judged cannot be re-scored on labels from ``labels_from``
    on, or None when it can: it must have learnt only from labels before then, on today's features.

    (Its early stopping watched the validation window that followed its training labels, which may
    overlap a later retrain's; that chose a round count, not the trees.)
    """
    train = (mv.section("windows") or {}).get("train") or {}
    if "labels_until" not in train:
        return "its manifest records no training window"
    if datetime.fromisoformat(train["labels_until"]) > labels_from:
        return f"its ranker learnt from labels until {train['labels_until']}, after {labels_from.isoformat()}"
    features = json.loads((evaluated_ranker_dir(mv) / "ranker.json").read_text())["features"]
    if tuple(features) != rf.FEATURES:
        return "its ranker was trained on other features than today's contract"
    return None


def read_recipe(mv: ModelVersion) -> Recipe:
    """The recipe of a registered version (raises :class:`BundleError` when it has none)."""
    raw = mv.section("recipe")
    if raw is None:
        raise BundleError(f"model {mv.version} has no recipe in its manifest (registered by older code); retrain")
    return Recipe.from_json(raw)


def served_recipe(registry: ModelRegistry) -> Recipe | None:
    """The champion's recipe (what the online refresh computes features with), or None before any champion."""
    champion = registry.champion()
    return None if champion is None else read_recipe(champion)


@dataclass
class ItemBlock:
    """Item-side inputs of the ranker and the filters, one row per item-index position."""

    features: np.ndarray  # (n_items, len(ITEM_FEATURES)) float64; NaN where the snapshot lacks the item
    category: np.ndarray  # (n_items,) object, None where unknown
    available: np.ndarray  # (n_items,) bool, True where unknown
    categories: frozenset[str] = field(default_factory=frozenset)


def item_block(index: ItemIndex, snapshot: pl.DataFrame) -> ItemBlock:
    """Gather the item snapshot into index order (items outside it: NaN features, no category, available)."""
    n = len(index)
    pos = index.positions(snapshot[ITEM_ID].cast(pl.String).to_numpy())
    known = pos >= 0
    features = np.full((n, len(rf.ITEM_FEATURES)), np.nan)
    present = [c for c in rf.ITEM_FEATURES if c in snapshot.columns]
    cols = np.asarray([rf.ITEM_FEATURES.index(c) for c in present], dtype=np.intp)
    if present:
        values = snapshot.select(pl.col(c).cast(pl.Float64) for c in present).to_numpy()
        features[np.ix_(pos[known], cols)] = values[known]
    category = np.full(n, None, dtype=object)
    if CATEGORY_ID in snapshot.columns:
        category[pos[known]] = np.asarray(snapshot[CATEGORY_ID].to_list(), dtype=object)[known]
    available = np.ones(n, dtype=bool)
    if AVAILABLE in snapshot.columns:
        available[pos[known]] = snapshot[AVAILABLE].fill_null(True).to_numpy()[known]
    return ItemBlock(features, category, available, frozenset(c for c in category if c is not None))


class Bundle:
    """A verified model version in memory, in the arrays the request path works on.

    Every item has one position in :attr:`index` (sorted ids), shared by the sources
    (:class:`SourceSet`) and the item block.
    """

    def __init__(self, mv: ModelVersion) -> None:
        started = time.perf_counter()
        folder = Path(mv.path)
        self.version = mv.version
        self.manifest = mv.manifest
        self.recipe = read_recipe(mv)
        sources = FoldSources.load(folder)
        snapshot = pl.read_parquet(folder / ITEM_SNAPSHOT_FILE)
        self.sources: SourceSet = sources.source_set(
            depth=GLOBAL_DEPTH, extra_items=snapshot[ITEM_ID].cast(pl.String).to_numpy()
        )
        self.index = self.sources.index
        self.items = item_block(self.index, snapshot)
        # item x item over the index, like ``sources.covis``; None when the bundle predates the table
        self.bought_together: sp.csr_matrix | None = (
            None if sources.bought_together is None else sources.bought_together.matrix(self.index, drop_unknown=True)
        )
        # the catalog's state the snapshot holds: item updates newer than this are the live catalog's
        newest = snapshot[SNAPSHOT_TIME].max() if SNAPSHOT_TIME in snapshot.columns else None
        self.items_as_of: float = newest.timestamp() if isinstance(newest, datetime) else float("-inf")
        # when the bundle was built: item files landed after it are news to it, whatever their updated_at
        self.created_unix: float = datetime.fromisoformat(mv.created).timestamp()
        import lightgbm as lgb  # seconds to import: only when a bundle is loaded

        self.booster = lgb.Booster(model_file=str(folder / RANKER_MODEL_FILE))  # explanations (pred_contrib)
        if tuple(self.booster.feature_name()) != self.recipe.features:
            raise BundleError(f"model {mv.version}: the ranker's features differ from its recipe")
        self.scorer = CompiledRanker(folder / RANKER_MODEL_FILE)  # scores, as the evaluation computed them
        log.info("loaded bundle %s (%d items) in %.2fs", self.version, len(self.index), time.perf_counter() - started)

    @property
    def categories(self) -> frozenset[str]:
        return self.items.categories

    def category_of(self, position: int) -> str | None:
        return None if position < 0 else self.items.category[position]

    @classmethod
    def load_champion(cls, registry: ModelRegistry) -> Bundle:
        """The verified champion (raises ``NoChampionError`` / ``ModelIntegrityError`` / :class:`BundleError`)."""
        return cls(registry.load_champion())
