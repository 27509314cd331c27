"""Batch scoring with a bundle, step for step what the service does per request.

:func:`score_users` answers many users at a point in time from offline data (the interactions
snapshot and Feast's point-in-time rows): the same retrieval, merge, filters, ranker-feature
contract and ranker as the scoring service, whose inputs come from the online store instead. The
outcome-parity test holds the two to the same ranked lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import numpy as np
import polars as pl
from feast import FeatureStore

from recs_pipeline.data.contract import ITEM_ID, USER_ID
from recs_pipeline.models import ranking
from recs_pipeline.models.bundle import Bundle
from recs_pipeline.models.retrieval import UserSignals, candidates_frame, merge_hits, retrieve, withheld_mask
from recs_pipeline.models.training import retrieve_knobs


def keep_mask(
    items: np.ndarray,
    *,
    available: np.ndarray,
    categories: np.ndarray,
    category: str | None,
) -> np.ndarray:
    """Which candidates survive the serving filters (one rule for the service and the batch scorer).

    An item is dropped when it is unavailable or outside the requested ``category``. (Consumed items
    never become candidates: retrieval excludes them, see :mod:`recs_pipeline.models.consumption`.)
    """
    keep = available[items].copy()
    if category is not None:
        keep &= categories[items] == category
    return keep


def score_users(
    bundle: Bundle,
    store: FeatureStore,
    users: Sequence[str],
    *,
    as_of: datetime,
    interactions: pl.DataFrame,
    k: int,
    category: str | None = None,
    hidden: Mapping[str, Sequence[str]] | None = None,
) -> pl.DataFrame:
    """Top-``k`` lists (``user_id``, ``item_id``, ``score``, ``rank``) of ``users`` as of ``as_of``.

    ``interactions`` is the interactions snapshot stamped at ``as_of``; features are read point in
    time through Feast at ``as_of``; ``hidden``: user -> the items they hid, as of ``as_of``
    (:func:`~recs_pipeline.models.workspace.hidden_at`), dropped as the service drops them. Users
    with no candidate get no rows.
    """
    users = list(users)
    recipe = bundle.recipe
    signals = UserSignals.from_interactions(users, interactions)
    consumed = signals.consumed(recipe.consumed, bundle.index, reference=as_of.timestamp())
    found = retrieve(bundle.sources, signals, n=recipe.limits, **retrieve_knobs(recipe.retrieval), exclude=consumed)
    cands = merge_hits(found.hits, n_items=len(bundle.index))
    keep = keep_mask(cands.item, available=bundle.items.available, categories=bundle.items.category, category=category)
    if hidden:
        keep &= ~withheld_mask(cands.row, cands.item, hidden, user_ids=users, index=bundle.index)
    cands = cands.take(keep)
    if not len(cands):
        return pl.DataFrame(schema={USER_ID: pl.String, ITEM_ID: pl.String, "score": pl.Float64, "rank": pl.Int64})
    frame = candidates_frame(cands, user_ids=np.asarray(users, dtype=object), item_ids=bundle.index.ids)
    rows = pl.concat(ranking.build_rows(store, frame, interactions=interactions, truth=None, as_of=as_of))
    scores = ranking.score(bundle.scorer, rows)
    return ranking.rank_top_k(rows, scores, k=k)
