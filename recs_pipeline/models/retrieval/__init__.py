"""Candidate retrieval: ALS, co-visitation, popularity, trending and recent-items sources, and their one merge.

Every source ranks by score descending, then item id ascending. The request path and the batch path
call the same per-user cores (ALS top-n and fold-in, co-visitation from anchors, global lists, the
merge), so a user's candidates are identical wherever they are computed. Nothing here is pickled:
models are ``.npz`` (loaded with ``allow_pickle=False``), JSON and parquet.
"""

from implicit.cpu.als import AlternatingLeastSquares

from recs_pipeline.models.retrieval._common import (
    BEST_RANK,
    CANDIDATE_SCHEMA,
    DEFAULT_TYPE_WEIGHTS,
    N_SOURCES,
    NEIGHBOR_ID,
    SOURCES,
    ItemIndex,
    top_n,
)
from recs_pipeline.models.retrieval.als import ALSParams, ALSRetriever
from recs_pipeline.models.retrieval.covis import (
    ANCHOR_RELEVANCE,
    CoVisitation,
    CoVisParams,
    anchor_relevance,
    covis_top,
    select_anchors,
)
from recs_pipeline.models.retrieval.lists import CategoryPopularity, GlobalList, Popularity, Trending
from recs_pipeline.models.retrieval.merge import (
    Candidates,
    SourceHits,
    candidate_recall,
    candidates_frame,
    hits_frame,
    merge_candidates,
    merge_hits,
    withheld_mask,
)
from recs_pipeline.models.retrieval.sources import (
    ALS_FOLDED_IN,
    ALS_KNOWN,
    ALS_NONE,
    Retrieved,
    SourceSet,
    UserSignals,
    recent_hits,
    retrieve,
)

__all__ = [
    "ALS_FOLDED_IN",
    "ALS_KNOWN",
    "ALS_NONE",
    "Retrieved",
    "SourceSet",
    "UserSignals",
    "recent_hits",
    "retrieve",
    "ANCHOR_RELEVANCE",
    "BEST_RANK",
    "CANDIDATE_SCHEMA",
    "DEFAULT_TYPE_WEIGHTS",
    "N_SOURCES",
    "NEIGHBOR_ID",
    "SOURCES",
    "ALSParams",
    "ALSRetriever",
    "AlternatingLeastSquares",
    "Candidates",
    "CategoryPopularity",
    "CoVisParams",
    "CoVisitation",
    "GlobalList",
    "ItemIndex",
    "Popularity",
    "SourceHits",
    "Trending",
    "anchor_relevance",
    "candidate_recall",
    "candidates_frame",
    "hits_frame",
    "covis_top",
    "merge_candidates",
    "merge_hits",
    "select_anchors",
    "top_n",
    "withheld_mask",
]
