"""User-based collaborative filtering: items of the users whose histories are most like the user's.

Built from the ALS model's user x item confidence matrix (``ALSRetriever.seen``: the interactions
snapshot the model was fitted on, ``1 + alpha * weight``), so it needs no fit and no file of its own.
Each training user's row is L2-normalised once. For a user with history ``q`` (decayed interaction
weights over items, the ALS fold-in input, normalised), the similarity to every training user is the
cosine ``M q``; the ``neighbours`` most similar users (the user's own row excluded when the model
knows them) vote for their items with their similarity, ``score(i) = sum_j sim_j * M[j, i]``, and
the best ``n`` items not excluded are proposed. One sparse product per user over the columns of the
user's items, the same on the request path and in training's batches.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recs_pipeline.models.retrieval._common import top_n


class UserNeighbours:
    """The normalised user x item matrix of a fitted ALS model, for :meth:`top`."""

    def __init__(self, seen: sp.csr_matrix) -> None:
        rows = seen.astype(np.float64).tocsr()
        norms = np.sqrt(np.asarray(rows.multiply(rows).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        self.rows = sp.diags(1.0 / norms) @ rows  # CSR: a neighbour's items
        self.rows = self.rows.tocsr()
        self.columns = self.rows.tocsc()  # CSC: the users of an item

    def top(
        self,
        items: np.ndarray,
        weights: np.ndarray,
        n: int,
        *,
        neighbours: int,
        own_row: int = -1,
        exclude: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best items (positions in the model's item order, scores) for a history.

        ``items`` and ``weights``: the user's history (item positions, weights > 0 count); ``own_row``:
        the user's row in the matrix (-1 when the model does not know them), never a neighbour of
        themselves; ``exclude``: item positions never proposed.
        """
        keep = weights > 0
        if n <= 0 or not keep.any():
            return np.empty(0, dtype=np.int64), np.empty(0)
        cols, inverse = np.unique(items[keep], return_inverse=True)
        summed = np.bincount(inverse, weights=weights[keep]).astype(np.float64)
        q = summed / np.linalg.norm(summed)
        sims = np.asarray(self.columns[:, cols] @ q).ravel()
        if 0 <= own_row < len(sims):
            sims[own_row] = 0.0
        candidates = np.flatnonzero(sims > 0)
        if not len(candidates):
            return np.empty(0, dtype=np.int64), np.empty(0)
        if len(candidates) > neighbours:
            # the most similar users; ties to the smaller row (the smaller user id)
            order = np.lexsort((candidates, -sims[candidates]))
            candidates = candidates[order[:neighbours]]
        scores = np.asarray(self.rows[candidates].T @ sims[candidates]).ravel()
        scores[scores <= 0] = -np.inf  # items no neighbour has
        if exclude is not None and len(exclude):
            scores[exclude] = -np.inf
        best = top_n(scores, n)
        return best, scores[best]
