"""ALS (implicit, CPU) retrieval: fit, one user vector (known or folded in), top-n by one BLAS call.

The serving path and the batch path call the same per-user methods (:meth:`ALSRetriever.vector`,
:meth:`ALSRetriever.fold_in_vector`, :meth:`ALSRetriever.top`), so a user's candidates and scores
are identical wherever they are computed.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares  # the CPU class directly: never a GPU model

from recs_pipeline.data.contract import ITEM_ID, USER_ID
from recs_pipeline.models.retrieval._common import (
    ALS_FACTORS_FILE,
    ALS_IDS_FILE,
    ALS_SEEN_FILE,
    CANDIDATE_SCHEMA,
    SCORE,
    WEIGHT,
    check_n,
    ids_array,
    lookup,
    one_blas_thread,
    require_columns,
    top_n,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ALSParams:
    """Hyper-parameters of the implicit-feedback ALS model.

    Parameters
    ----------
    factors : int
        Latent dimension.
    regularization : float
        L2 regularisation of the factors.
    alpha : float
        Confidence scaling: a pair with interaction weight ``w`` gets confidence
        ``C = 1 + alpha * w`` (unobserved pairs have confidence 1 and preference 0).
    iterations : int
        ALS sweeps.
    seed : int
        Seed of the factor initialisation (``random_state``); fits with equal data, params and
        seed are identical.
    threads : int
        Threads for fitting and batch recommendation (BLAS itself is pinned to one thread).
    warm_iterations : int
        ALS sweeps of a fit that starts from an earlier fit's factors (``ALSRetriever.fit``'s
        ``warm_start``: the protocol's later folds, whose data extends the earlier fold's).
    """

    factors: int = 64
    regularization: float = 0.01
    alpha: float = 1.0
    iterations: int = 15
    seed: int = 0
    threads: int = 2
    warm_iterations: int = 5

    def __post_init__(self) -> None:
        for name in ("factors", "iterations", "threads", "warm_iterations"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ALSParams.{name} must be > 0, got {getattr(self, name)}")
        if self.regularization < 0:
            raise ValueError(f"ALSParams.regularization must be >= 0, got {self.regularization}")
        if self.alpha <= 0:
            raise ValueError(f"ALSParams.alpha must be > 0, got {self.alpha}")


def _codes(frame: pl.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(frame[column], return_inverse=True)`` for string ids: the sorted distinct ids (polars
    sorts by UTF-8 bytes, which is code-point order, numpy's) and each row's position among them, by a
    hash join (about 2.5x faster than numpy's sort of every row's string at 10M events)."""
    distinct = frame.select(pl.col(column).unique().sort()).with_row_index("_code")
    codes = frame.select(column).join(distinct, on=column, how="left", maintain_order="left")["_code"]
    return ids_array(distinct[column].to_list()), codes.cast(pl.Int64).to_numpy()


def _new_model(params: ALSParams) -> AlternatingLeastSquares:
    # implicit treats the stored matrix value as the confidence c_ui itself (p_ui = 1 for stored
    # entries) and multiplies it by its own ``alpha``; we pass ``1 + alpha * w`` and keep its alpha at 1.
    with one_blas_thread():  # also silences implicit's BLAS-threads warning on construction
        return AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            alpha=1.0,
            iterations=params.iterations,
            random_state=params.seed,
            num_threads=params.threads,
        )


class ALSRetriever:
    """Collaborative-filtering retrieval with implicit's CPU ALS.

    Users and items are mapped to contiguous indices in sorted id order. implicit indexes users by
    position and would silently answer for another user given a wrong index, so every lookup goes
    through a membership check and unknown ids produce no rows.

    Use :meth:`fit` or :meth:`load` to build one.
    """

    def __init__(
        self,
        *,
        params: ALSParams,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        model: AlternatingLeastSquares,
        seen: sp.csr_matrix,
    ) -> None:
        self.params = params
        self.user_ids = user_ids
        self.item_ids = item_ids
        self.model = model
        self.seen = seen

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        interactions: pl.DataFrame,
        *,
        params: ALSParams | None = None,
        warm_start: ALSRetriever | None = None,
    ) -> ALSRetriever:
        """Fit ALS on weighted (user, item) interactions.

        Parameters
        ----------
        interactions : pl.DataFrame
            ``user_id``, ``item_id``, ``weight`` (> 0). Repeated pairs are summed.
        params : ALSParams, optional
            Hyper-parameters; defaults to ``ALSParams()``.
        warm_start : ALSRetriever, optional
            An earlier fit (same ``factors``) whose factors start the users and items it knows;
            the others start as a cold fit would (seeded uniform values in [0, 0.01)). The fit
            then runs ``params.warm_iterations`` sweeps instead of ``params.iterations``: the
            protocol's folds extend each other's data, so a later fold starts near its solution.

        Returns
        -------
        ALSRetriever
            The fitted retriever, holding the id maps and the user x item confidence CSR
            (used to filter already-seen items).
        """
        params = params or ALSParams()
        require_columns(interactions, [USER_ID, ITEM_ID, WEIGHT], "interactions")
        if interactions.height == 0:
            raise ValueError("interactions is empty")
        if warm_start is not None and warm_start.params.factors != params.factors:
            raise ValueError(
                f"warm_start has {warm_start.params.factors} factors, the fit {params.factors}: start cold instead"
            )
        pairs = interactions.select(
            pl.col(USER_ID).cast(pl.String), pl.col(ITEM_ID).cast(pl.String), pl.col(WEIGHT).cast(pl.Float64)
        )
        if pairs.null_count().sum_horizontal().item() > 0:
            raise ValueError("interactions contains nulls")
        weights = pairs[WEIGHT].to_numpy()
        if not np.isfinite(weights).all() or weights.min() <= 0:
            raise ValueError("interaction weights must be finite and > 0")
        pairs = pairs.group_by([USER_ID, ITEM_ID]).agg(pl.col(WEIGHT).sum())
        if pairs.height < interactions.height:
            log.warning("summed %d repeated (user, item) rows", interactions.height - pairs.height)

        user_ids, u = _codes(pairs, USER_ID)
        item_ids, i = _codes(pairs, ITEM_ID)
        confidence = (1.0 + params.alpha * pairs[WEIGHT].to_numpy()).astype(np.float32)
        user_items = sp.csr_matrix((confidence, (u, i)), shape=(len(user_ids), len(item_ids)), dtype=np.float32)
        user_items.sort_indices()

        model = _new_model(params)
        if warm_start is not None:
            # implicit's own initialisation (users, then items), then the rows the earlier fit knows
            rng = np.random.default_rng(params.seed)
            model.user_factors = rng.random((len(user_ids), params.factors), dtype=np.float32) * 0.01
            model.item_factors = rng.random((len(item_ids), params.factors), dtype=np.float32) * 0.01
            for ids, mine, theirs, earlier in (
                (user_ids, model.user_factors, warm_start.user_ids, warm_start.user_factors),
                (item_ids, model.item_factors, warm_start.item_ids, warm_start.item_factors),
            ):
                pos, known = lookup(theirs, ids)
                mine[known] = earlier[pos[known]]
            model.iterations = params.warm_iterations
        with one_blas_thread():
            model.fit(user_items, show_progress=False)
        log.info(
            "fitted ALS on %d pairs: %d users x %d items, %d factors, %d iterations%s",
            user_items.nnz,
            len(user_ids),
            len(item_ids),
            params.factors,
            model.iterations,
            " from an earlier fit" if warm_start is not None else "",
        )
        return cls(params=params, user_ids=user_ids, item_ids=item_ids, model=model, seen=user_items)

    @property
    def user_factors(self) -> np.ndarray:
        """User factor matrix (float32, rows in ``user_ids`` order)."""
        return np.asarray(self.model.user_factors)

    @property
    def item_factors(self) -> np.ndarray:
        """Item factor matrix (float32, rows in ``item_ids`` order)."""
        return np.asarray(self.model.item_factors)

    # -- recommendation ------------------------------------------------------------------------

    # -- one user: the shared core ------------------------------------------------------------

    @property
    def yty_reg(self) -> np.ndarray:
        """``Y^T Y + lambda I`` of the least-squares user step (float64), computed once per model."""
        cached = getattr(self, "_yty_reg", None)
        if cached is None:
            y = self.item_factors.astype(np.float64)
            cached = self._yty_reg = y.T @ y + self.params.regularization * np.eye(y.shape[1])
        return cached

    def user_position(self, user_id: str) -> int:
        """Row of ``user_id`` in the user factors, or -1 when the model has not seen the user."""
        pos, known = lookup(self.user_ids, [user_id])
        return int(pos[0]) if known[0] else -1

    def fold_in_vector(self, item_pos: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
        """A user vector solved from the fixed item factors: implicit's exact least-squares user step.

        ``(Y^T Y + lambda I + Y_u^T (C_u - I) Y_u) x = Y_u^T C_u p_u`` with confidence
        ``C = 1 + alpha * weight`` on the user's items (``item_pos``: positions in ``item_ids``;
        repeated positions are summed). Returns None when no item has a positive weight.
        """
        item_pos = np.asarray(item_pos, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float64)
        keep = weights > 0
        if not keep.any():
            return None
        if not np.isfinite(weights[keep]).all():
            raise ValueError("fold-in weights must be finite")
        cols, inverse = np.unique(item_pos[keep], return_inverse=True)
        summed = np.bincount(inverse, weights=weights[keep])
        confidence = 1.0 + self.params.alpha * summed
        y = self.item_factors[cols].astype(np.float64)
        a = self.yty_reg + y.T @ ((confidence - 1.0)[:, None] * y)
        return np.linalg.solve(a, y.T @ confidence).astype(np.float32)

    def top(self, vector: np.ndarray, n: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best items for one user vector: (positions in ``item_ids``, float32 scores).

        One float32 matrix-vector product; ties fall to the smaller item id. ``exclude`` holds
        positions that must not be returned.
        """
        scores = self.item_factors @ vector
        if exclude is not None and len(exclude):
            scores[exclude] = -np.inf
        best = top_n(scores, n)
        return best, scores[best]

    def top_many(
        self,
        vectors: Sequence[np.ndarray | None],
        n: int,
        *,
        exclude: Sequence[np.ndarray | None] | None = None,
        block: int = 1,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`top` for many user vectors (None: no vector, no items); ``exclude[i]`` as in :meth:`top`.

        ``block`` 1 scores each user with :meth:`top` (the request path's matrix-vector product).
        A larger ``block`` scores that many users with one float32 matrix product, several times
        faster on a large catalog (one pass over the item factors per block instead of per user);
        its scores equal the matrix-vector ones to float32 rounding (BLAS sums in another order),
        so only items whose scores tie within rounding can be ordered differently.
        """
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        out: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))] * len(
            vectors
        )
        given = {r: v for r, v in enumerate(vectors) if v is not None}
        rows = list(given)
        skip = [None] * len(vectors) if exclude is None else list(exclude)
        if block == 1:
            for r, vector in given.items():
                out[r] = self.top(vector, n, exclude=skip[r])
            return out
        items_t = self.item_factors.T
        buffer = np.empty((block, items_t.shape[1]), dtype=np.float32)
        for start in range(0, len(rows), block):
            chunk = rows[start : start + block]
            scores = buffer[: len(chunk)]
            np.matmul(np.stack([given[r] for r in chunk]).astype(np.float32, copy=False), items_t, out=scores)
            for i, r in enumerate(chunk):
                row = scores[i]
                excluded = skip[r]
                if excluded is not None and len(excluded):
                    row[excluded] = -np.inf
                best = top_n(row, n)
                out[r] = (best, row[best].copy())
        return out

    # -- many users (frames) --------------------------------------------------------------------

    def _frame(self, users: list[str], hits: list[tuple[np.ndarray, np.ndarray]]) -> pl.DataFrame:
        if not users:
            return pl.DataFrame(schema=CANDIDATE_SCHEMA)
        lengths = [len(p) for p, _ in hits]
        positions = np.concatenate([p for p, _ in hits]).astype(np.int64)
        return pl.DataFrame(
            {
                USER_ID: [u for u, k in zip(users, lengths, strict=True) for _ in range(k)],
                ITEM_ID: self.item_ids[positions],
                SCORE: np.concatenate([s for _, s in hits]).astype(np.float64),
                "rank": np.concatenate([np.arange(1, n + 1, dtype=np.int32) for n in lengths]),
            },
            schema=CANDIDATE_SCHEMA,
        )

    def recommend(self, user_ids: Sequence[str], *, n: int, filter_seen: bool = False) -> pl.DataFrame:
        """Top-``n`` items for known users, one :meth:`top` call per user.

        Parameters
        ----------
        user_ids : Sequence[str]
            Users to recommend for; duplicates are answered once. Unknown users produce no rows
            (their count is logged): implicit indexes users by position, so an unknown id is
            never turned into an index.
        n : int
            Candidates per user.
        filter_seen : bool
            Exclude items the user interacted with in the training data.

        Returns
        -------
        pl.DataFrame
            Candidates ``user_id``, ``item_id``, ``score`` (user . item), ``rank``, sorted by user.
        """
        check_n(n)
        requested = sorted(dict.fromkeys(str(u) for u in user_ids))
        pos, known = lookup(self.user_ids, requested)
        if (~known).any():
            log.info("ALS recommend: %d of %d users unknown to the model; no candidates", (~known).sum(), len(known))
        users, hits = [], []
        factors = self.user_factors
        with one_blas_thread():
            for user, p in zip(np.asarray(requested)[known].tolist(), pos[known].tolist(), strict=True):
                exclude = self.seen.indices[self.seen.indptr[p] : self.seen.indptr[p + 1]] if filter_seen else None
                users.append(user)
                hits.append(self.top(factors[p], n, exclude=exclude))
        return self._frame(users, hits)

    def fold_in(
        self,
        items_by_user: Mapping[str, Sequence[tuple[str, float]]],
        *,
        n: int,
        filter_seen: bool = False,
    ) -> pl.DataFrame:
        """Recommend for users the model has not seen, from their (item, weight) pairs (:meth:`fold_in_vector`).

        Items unknown to the model are ignored; users with no known item get no rows. The user ids
        need not be known to the model (they are never used as indices).

        Parameters
        ----------
        items_by_user : Mapping[str, Sequence[tuple[str, float]]]
            ``{user_id: [(item_id, weight > 0), ...]}``; repeated items are summed.
        n : int
            Candidates per user.
        filter_seen : bool
            Exclude the input items themselves.

        Returns
        -------
        pl.DataFrame
            Candidates ``user_id``, ``item_id``, ``score``, ``rank``.
        """
        check_n(n)
        users, hits = [], []
        with one_blas_thread():
            for user in sorted(items_by_user):
                pairs = items_by_user[user]
                weights = np.asarray([float(w) for _, w in pairs], dtype=np.float64)
                if any(not (w > 0 and math.isfinite(w)) for w in weights):
                    raise ValueError("fold_in weights must be finite and > 0")
                pos, known = lookup(self.item_ids, [str(i) for i, _ in pairs])
                vector = self.fold_in_vector(pos[known], weights[known]) if known.any() else None
                if vector is None:
                    continue
                users.append(str(user))
                hits.append(self.top(vector, n, exclude=pos[known] if filter_seen else None))
        if len(users) < len(items_by_user):
            log.info(
                "ALS fold_in: %d of %d users have no known item", len(items_by_user) - len(users), len(items_by_user)
            )
        return self._frame(users, hits)

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """ALS score ``user . item`` per (user, item) pair, e.g. as a ranking feature.

        Parameters
        ----------
        user_ids, item_ids : Sequence[str]
            Aligned pairs (same length).

        Returns
        -------
        np.ndarray
            float64 scores; NaN where the user or the item is unknown to the model.
        """
        if len(user_ids) != len(item_ids):
            raise ValueError(f"user_ids and item_ids differ in length: {len(user_ids)} != {len(item_ids)}")
        upos, uknown = lookup(self.user_ids, user_ids)
        ipos, iknown = lookup(self.item_ids, item_ids)
        both = uknown & iknown
        out = np.full(len(upos), np.nan, dtype=np.float64)
        u = self.user_factors[upos[both]].astype(np.float64)
        v = self.item_factors[ipos[both]].astype(np.float64)
        out[both] = np.einsum("ij,ij->i", u, v)
        return out

    # -- persistence ---------------------------------------------------------------------------

    def save(self, folder: Path, *, compress: bool = True) -> list[Path]:
        """Write ``als_factors.npz`` (float32 factors), ``als_ids.json`` (ids, params) and ``als_seen.npz``
        (zlib-compressed unless ``compress`` is False: a retrain's working copies skip it, it took 16 s
        of three folds at 10M events).

        Returns
        -------
        list[Path]
            The written files.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        factors_path = folder / ALS_FACTORS_FILE
        ids_path = folder / ALS_IDS_FILE
        seen_path = folder / ALS_SEEN_FILE
        np.savez(
            factors_path,
            user_factors=np.ascontiguousarray(self.user_factors, dtype=np.float32),
            item_factors=np.ascontiguousarray(self.item_factors, dtype=np.float32),
        )
        ids_path.write_text(
            json.dumps(
                {"user_ids": self.user_ids.tolist(), "item_ids": self.item_ids.tolist(), "params": asdict(self.params)}
            )
        )
        sp.save_npz(seen_path, self.seen, compressed=compress)
        return [factors_path, ids_path, seen_path]

    @classmethod
    def load(cls, folder: Path) -> ALSRetriever:
        """Restore a retriever written by :meth:`save`; it recommends identically."""
        folder = Path(folder)
        meta: dict[str, Any] = json.loads((folder / ALS_IDS_FILE).read_text())
        params = ALSParams(**meta["params"])
        with np.load(folder / ALS_FACTORS_FILE, allow_pickle=False) as arrays:
            user_factors = np.ascontiguousarray(arrays["user_factors"], dtype=np.float32)
            item_factors = np.ascontiguousarray(arrays["item_factors"], dtype=np.float32)
        seen = sp.load_npz(folder / ALS_SEEN_FILE).tocsr().astype(np.float32)
        user_ids = ids_array(meta["user_ids"])
        item_ids = ids_array(meta["item_ids"])
        if user_factors.shape != (len(user_ids), params.factors) or item_factors.shape != (
            len(item_ids),
            params.factors,
        ):
            raise ValueError(
                f"ALS files disagree: factors {user_factors.shape}/{item_factors.shape}, "
                f"{len(user_ids)} users, {len(item_ids)} items, {params.factors} factors"
            )
        if seen.shape != (len(user_ids), len(item_ids)):
            raise ValueError(f"als_seen.npz has shape {seen.shape}, expected {(len(user_ids), len(item_ids))}")
        model = _new_model(params)
        model.user_factors = user_factors
        model.item_factors = item_factors
        return cls(params=params, user_ids=user_ids, item_ids=item_ids, model=model, seen=seen)
