"""Per-fold retrieval and evaluation logic of the temporal protocol (see ``protocol.py``).

For each fold the candidate sources are fitted on history before the cutoff only, candidates are
merged with provenance, and every method (baselines and ALS + LightGBM) is ranked for the same
users and judged by the same metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypedDict

import numpy as np
import polars as pl

from recs_pipeline.data.contract import ITEM_ID, USER_ID
from recs_pipeline.models import metrics
from recs_pipeline.models import ranker_features as rf
from recs_pipeline.models.consumption import ConsumedPolicy
from recs_pipeline.models.protocol import Fold, history, labels
from recs_pipeline.models.retrieval import (
    ALSParams,
    ALSRetriever,
    CategoryPopularity,
    CoVisitation,
    CoVisParams,
    Popularity,
    SourceSet,
    Trending,
    UserSignals,
    candidate_recall,
    candidates_frame,
    hits_frame,
    merge_hits,
    retrieve,
    withheld_mask,
)

log = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = rf.SOURCES
# Sources fitted per fold (and saved in a bundle); ``recent`` reads the user's history and ``usercf``
# the ALS model's interaction matrix: neither has a fit or a file of its own.
FITTED_SOURCES: tuple[str, ...] = tuple(name for name in SOURCES if name not in ("recent", "usercf"))
# Candidates each source contributes per user before merging (a few hundred in all).
# 0 turns a source off: user-based CF adds little recall and did not help the ranker (docs/BENCHMARKS.md,
# "Quality levers"), so it is measured as a baseline but proposes no candidates by default.
DEFAULT_LIMITS: dict[str, int] = {
    "als": 100,
    "catpop": 25,
    "content": 10,
    "covis": 50,
    "trending": 25,
    "popular": 25,
    "recent": 30,
    "usercf": 0,
}
EVAL_KS: tuple[int, ...] = (10, 20, 50)
# Users ranked per fold: the train and valid folds' (what the ranker learns from and stops on) and the
# test fold's (what the evaluation reports, with intervals over the sample). Seeded samples when a
# fold has more; see ``UserSample``.
MAX_TRAIN_USERS = 5000
MAX_TEST_USERS = 10_000
# Users whose ALS scores are computed with one matrix product (see ``retrieve``).
ALS_BLOCK = 64
# Bought together: distinct items carted or bought in the same session, counted as co-visitation
# counts viewed items (:class:`CoVisitation` fitted on those two event types only; a purchase weighs
# more than a cart). It ranks no user's candidates: the item endpoints of the scoring service read it
# (``GET /items/{id}/bought-together``, ``POST /recommendations/cart``), so the evaluation does not use it.
BOUGHT_TOGETHER_WEIGHTS: Mapping[str, float] = {"add_to_cart": 1.0, "purchase": 2.0}
BOUGHT_TOGETHER_DIR = "bought_together"


def _bought_together_params() -> CoVisParams:
    return CoVisParams(type_weights=dict(BOUGHT_TOGETHER_WEIGHTS))


@dataclass(frozen=True)
class RetrievalParams:
    als: ALSParams = field(default_factory=ALSParams)
    covis: CoVisParams = field(default_factory=CoVisParams)
    popularity_days: float = 7.0
    trending_hours: float = 24.0
    # user-based CF: how many of the most similar users vote
    usercf_neighbours: int = 50
    # category popularity: items kept per category, and how many of the user's categories propose
    catpop_per_category: int = 50
    catpop_categories: int = 3
    # content: items with no interaction yet kept per category (the user's catpop_categories propose)
    content_per_category: int = 50
    # content: each favourite category's items within this price factor of the user's typical price
    # there first (retrieval.sources.CategoryLists); 0: off, newest first. Off by default: 2.0 left the
    # new-items recall and the ranker's NDCG unchanged within noise on synthetic data, nominally lower
    # (docs/BENCHMARKS.md, "The content source's price band")
    content_price_band: float = 0.0
    # the bought-together table's fit (see BOUGHT_TOGETHER_WEIGHTS); None in the recipe of a bundle
    # written before it existed, which has no such table
    bought_together: CoVisParams | None = field(default_factory=_bought_together_params)


class RetrieveKnobs(TypedDict):
    """The keyword arguments of :func:`~recs_pipeline.models.retrieval.retrieve` a recipe sets."""

    anchors: int
    neighbours: int
    categories: int
    price_band: float


def retrieve_knobs(params: RetrievalParams) -> RetrieveKnobs:
    """The parameters :func:`~recs_pipeline.models.retrieval.retrieve` takes from a recipe's retrieval
    parameters (co-visitation anchors, user-CF neighbours, favourite categories, the content source's
    price band): one mapping for the batch path, the batch scorer and the service."""
    return {
        "anchors": params.covis.anchors,
        "neighbours": params.usercf_neighbours,
        "categories": params.catpop_categories,
        "price_band": params.content_price_band,
    }


def retrieval_params_json(params: RetrievalParams) -> dict:
    """JSON-ready retrieval parameters (inverse: :func:`retrieval_params_from_json`)."""
    raw = asdict(params)
    raw["covis"]["type_weights"] = dict(params.covis.type_weights)
    if params.bought_together is not None:
        raw["bought_together"]["type_weights"] = dict(params.bought_together.type_weights)
    return raw


def retrieval_params_from_json(raw: dict) -> RetrievalParams:
    return RetrievalParams(
        als=ALSParams(**raw["als"]),
        covis=CoVisParams(**raw["covis"]),
        popularity_days=float(raw["popularity_days"]),
        trending_hours=float(raw["trending_hours"]),
        usercf_neighbours=int(raw["usercf_neighbours"]),
        catpop_per_category=int(raw["catpop_per_category"]),
        catpop_categories=int(raw["catpop_categories"]),
        content_per_category=int(raw["content_per_category"]),
        content_price_band=float(raw["content_price_band"]),
        bought_together=CoVisParams(**raw["bought_together"]) if raw.get("bought_together") else None,
    )


@dataclass
class FoldSources:
    """The fitted candidate sources of one fold, and its bought-together table (None: not fitted,
    e.g. a bundle written before it existed)."""

    als: ALSRetriever
    covis: CoVisitation
    popular: Popularity
    trending: Trending
    catpop: CategoryPopularity
    content: CategoryPopularity
    bought_together: CoVisitation | None = None

    def save(self, folder: Path, *, compress: bool = True) -> list[Path]:
        """Write every source under ``folder``; ``compress`` False leaves ALS's seen matrix uncompressed."""
        files = self.als.save(folder / "als", compress=compress)
        for name in FITTED_SOURCES:
            if name != "als":
                files += getattr(self, name).save(folder / name)
        if self.bought_together is not None:
            files += self.bought_together.save(folder / BOUGHT_TOGETHER_DIR)
        return files

    def source_set(self, *, depth: int, extra_items: np.ndarray | None = None) -> SourceSet:
        """The sources as arrays over one item index (what :func:`retrieve` works on)."""
        return SourceSet(
            als=self.als,
            covis=self.covis,
            popular=self.popular,
            trending=self.trending,
            catpop=self.catpop,
            content=self.content,
            depth=depth,
            extra_items=extra_items,
        )

    @classmethod
    def load(cls, folder: Path) -> FoldSources:
        return cls(
            als=ALSRetriever.load(folder / "als"),
            covis=CoVisitation.load(folder / "covis"),
            popular=Popularity.load(folder / "popular"),
            trending=Trending.load(folder / "trending"),
            catpop=CategoryPopularity.load(folder / "catpop"),
            content=CategoryPopularity.load(folder / "content"),
            bought_together=CoVisitation.load(folder / BOUGHT_TOGETHER_DIR)
            if (folder / BOUGHT_TOGETHER_DIR).is_dir()
            else None,
        )


def fit_sources(
    events: pl.DataFrame, interactions: pl.DataFrame, fold: Fold, params: RetrievalParams, catalog: pl.DataFrame
) -> FoldSources:
    """Fit every source on data before ``fold.cutoff``; ``interactions`` is the snapshot stamped at the
    cutoff, ``catalog`` the item versions (each source reads those before the cutoff)."""
    hist = history(events, fold)
    return FoldSources(
        als=ALSRetriever.fit(interactions, params=params.als),
        covis=CoVisitation.fit(hist, params=params.covis),
        popular=Popularity.fit(hist, as_of=fold.cutoff, window_days=params.popularity_days),
        trending=Trending.fit(hist, as_of=fold.cutoff, recent_hours=params.trending_hours),
        catpop=_catpop(hist, catalog, fold, params),
        content=_content(hist, catalog, fold, params),
        bought_together=None
        if params.bought_together is None
        else CoVisitation.fit(hist, params=params.bought_together),
    )


def _content(hist: pl.DataFrame, catalog: pl.DataFrame, fold: Fold, params: RetrievalParams) -> CategoryPopularity:
    return CategoryPopularity.fit_new_items(hist, catalog, as_of=fold.cutoff, per_category=params.content_per_category)


def _catpop(hist: pl.DataFrame, catalog: pl.DataFrame, fold: Fold, params: RetrievalParams) -> CategoryPopularity:
    return CategoryPopularity.fit(
        hist, catalog, as_of=fold.cutoff, window_days=params.popularity_days, per_category=params.catpop_per_category
    )


def fit_fold_sources(
    events: pl.DataFrame,
    interactions: Callable[[Fold], pl.DataFrame],
    folds: Sequence[Fold],
    params: RetrievalParams,
    catalog: pl.DataFrame,
) -> Iterator[tuple[Fold, FoldSources]]:
    """Every fold's sources, each fitted once on data before its cutoff, sharing work between folds.

    Folds come in cutoff order and each one's data extends the one before: co-visitation counts each
    session's pairs once for all folds (:meth:`CoVisitation.fit_folds`), and ALS starts from the
    previous fold's factors (``ALSParams.warm_iterations`` sweeps; the first fold runs
    ``ALSParams.iterations`` from a seeded start). ``interactions(fold)`` is the snapshot stamped at
    the fold's cutoff. The bought-together tables are fitted like co-visitation, on carts and
    purchases. Yields each fold's sources as soon as they are fitted.
    """
    ordered = sorted(folds, key=lambda f: f.cutoff)
    cutoffs = [f.cutoff for f in ordered]
    covis = CoVisitation.fit_folds(events, cutoffs, params=params.covis)
    bought: list[CoVisitation | None] = (
        [None] * len(ordered)
        if params.bought_together is None
        else list(CoVisitation.fit_folds(events, cutoffs, params=params.bought_together))
    )
    previous: ALSRetriever | None = None
    for fold, fold_covis, fold_bought in zip(ordered, covis, bought, strict=True):
        hist = history(events, fold)
        pairs = interactions(fold)
        started = time.perf_counter()
        als = ALSRetriever.fit(pairs, params=params.als, warm_start=previous)
        log.info("%s: ALS fitted in %.1f s", fold.name, time.perf_counter() - started)
        previous = als
        yield (
            fold,
            FoldSources(
                als=als,
                covis=fold_covis,
                popular=Popularity.fit(hist, as_of=fold.cutoff, window_days=params.popularity_days),
                trending=Trending.fit(hist, as_of=fold.cutoff, recent_hours=params.trending_hours),
                catpop=_catpop(hist, catalog, fold, params),
                content=_content(hist, catalog, fold, params),
                bought_together=fold_bought,
            ),
        )


def source_candidates(
    sources: FoldSources,
    interactions: pl.DataFrame,
    users: list[str],
    *,
    n: dict[str, int],
    retrieval: RetrievalParams,
    consumed: ConsumedPolicy,
    as_of: datetime,
    limits: Mapping[str, int] | None = None,
    hidden: Mapping[str, Sequence[str]] | None = None,
) -> tuple[dict[str, pl.DataFrame], pl.DataFrame]:
    """Each source's ranked candidates for ``users`` (at most ``n[source]`` per user, never an item the
    user consumed before ``as_of``) through the one retrieval step the service uses, and their merge.
    ``hidden`` (user -> the items they hid, the profile snapshot's ``hidden_item_ids`` at ``as_of``,
    :func:`~recs_pipeline.models.workspace.hidden_at`) are taken out of the merge and of each
    source's list, as the service drops them (:func:`~recs_pipeline.models.retrieval.withheld_mask`).

    ``interactions`` is the snapshot stamped at the fold's cutoff ``as_of``. The merge is
    :func:`~recs_pipeline.models.retrieval.merge_hits` on the retrieval's arrays with ``limits``
    (the frame form :func:`~recs_pipeline.models.retrieval.merge_candidates` of the per-source
    frames gives the same rows; this skips turning ids into strings and back).
    """
    source_set = sources.source_set(depth=max(n.values()))
    signals = UserSignals.from_interactions(users, interactions)
    exclude = signals.consumed(consumed, source_set.index, reference=as_of.timestamp())
    found = retrieve(source_set, signals, n=n, **retrieve_knobs(retrieval), exclude=exclude, als_block=ALS_BLOCK)
    user_ids = np.asarray(users, dtype=object)
    merged = merge_hits(found.hits, n_items=max(len(source_set.index), 1), limits=limits)
    hits = found.hits
    if hidden:
        index = source_set.index
        merged = merged.take(~withheld_mask(merged.row, merged.item, hidden, user_ids=users, index=index))
        hits = {
            name: h.take(~withheld_mask(h.row, h.item, hidden, user_ids=users, index=index)) for name, h in hits.items()
        }
    per_source = {name: hits_frame(h, user_ids=users, item_ids=source_set.index.ids) for name, h in hits.items()}
    return per_source, candidates_frame(merged, user_ids=user_ids, item_ids=source_set.index.ids)


def evaluation_users(events: pl.DataFrame, fold: Fold) -> tuple[list[str], pl.DataFrame]:
    """Users with an event in the label window and history before it, and their graded labels."""
    truth = labels(events, fold)
    return sorted(truth[USER_ID].unique().to_list()), truth


def sample_users(users: list[str], *, max_users: int | None, seed: int) -> list[str]:
    """A seeded sample of at most ``max_users`` (all of them when None)."""
    if max_users is None or len(users) <= max_users:
        return users
    return sorted(pl.Series(users).sample(max_users, seed=seed).to_list())


@dataclass(frozen=True)
class UserSample:
    """The users a fold ranks: everyone with labels, or a seeded sample of them.

    ``population`` is how many users the fold has; ``users`` the (sorted) users ranked. An
    evaluation over a sample estimates the fold's figures for every user; its bootstrap
    intervals resample the sampled users, so they describe the sample's uncertainty (which
    covers drawing it, as the sample is random and the population large).
    """

    users: list[str]
    population: int
    seed: int
    max_users: int | None

    @property
    def sampled(self) -> bool:
        return len(self.users) < self.population

    @classmethod
    def draw(cls, users: list[str], *, max_users: int | None, seed: int) -> UserSample:
        return cls(sample_users(users, max_users=max_users, seed=seed), len(users), seed, max_users)

    def to_json(self) -> dict:
        return {"users": len(self.users), "population": self.population, "seed": self.seed, "max_users": self.max_users}


def item_popularity(events: pl.DataFrame, fold: Fold) -> pl.DataFrame:
    """Interactions per item before the cutoff (for novelty)."""
    return history(events, fold).group_by(ITEM_ID).len("count")


def judge(
    rankings: dict[str, pl.DataFrame],
    truth: pl.DataFrame,
    users: list[str],
    *,
    popularity: pl.DataFrame,
    n_catalog_items: int,
    n_bootstrap: int = 500,
    seed: int = 0,
) -> dict[str, dict]:
    """Every method's metrics on the same users and truth."""
    return {
        name: metrics.evaluate(
            ranked.select(USER_ID, ITEM_ID, "rank"),
            truth,
            users,
            ks=EVAL_KS,
            item_popularity=popularity,
            n_catalog_items=n_catalog_items,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
        for name, ranked in rankings.items()
    }


def recall(candidates: pl.DataFrame, truth: pl.DataFrame, *, k: int | None) -> float:
    """Share of (user, relevant item) pairs found among the user's candidates (top ``k`` ranks, or all)."""
    return candidate_recall(candidates, truth.select(USER_ID, ITEM_ID), k=k)
