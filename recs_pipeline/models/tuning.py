"""Hyper-parameter search on the validation fold: ALS as a retriever, and the LightGBM ranker.

Each search is Optuna's seeded TPE sampler, bounded by a trial count and a time budget
(:class:`Budget`; the budget ends the search after the running trial). The first trial is always
the starting parameters, so a search keeps them unless it finds better ones on the validation fold;
the test fold is never looked at. What was tried comes back as a :class:`TuningResult` for the
manifest. With the same data, budget and seed the trials are the same, except that a time budget
can end the search earlier on a slower machine (the result records how many trials ran).

* **ALS** (:func:`tune_als`): factors, regularization and alpha; each trial fits ALS on the
  validation fold's interactions snapshot and scores the fold's users through the one retrieval
  step (:func:`~recs_pipeline.models.training.source_candidates`, consumed items excluded): the
  objective is the ALS list's NDCG@20 against the validation labels.
* **Ranker** (:func:`tune_ranker`): leaves, learning rate, minimum leaf size, feature fraction;
  each trial trains on the train fold's rows with early stopping on the validation fold's, the
  objective is the validation NDCG@20 at the stopping round (what ``train_ranker`` stops on).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import polars as pl

from recs_pipeline.models import metrics, ranking
from recs_pipeline.models.ranker_features import FEATURES
from recs_pipeline.models.retrieval import ALSParams, ALSRetriever

log = logging.getLogger(__name__)

OBJECTIVE_K = 20
# Users of the validation fold the ALS search scores per trial (a seeded sample when it has more).
ALS_SEARCH_USERS = 2000


# What a step records when no search ran (RECS_TUNE_TRIALS is 0).
NO_SEARCH: dict[str, Any] = {"trials_run": 0, "note": "no search: RECS_TUNE_TRIALS is 0"}


@dataclass(frozen=True)
class Budget:
    """How long a search may run: at most ``trials`` trials and about ``seconds`` (0 trials: no search)."""

    trials: int
    seconds: float
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trials < 0 or self.seconds <= 0:
            raise ValueError(f"a search needs trials >= 0 and seconds > 0, got {self.trials} and {self.seconds}")


@dataclass(frozen=True)
class TuningResult:
    """One search: the objective, the starting and the best parameters with their values, every trial."""

    objective: str
    start: dict[str, Any]
    start_value: float
    best: dict[str, Any]
    best_value: float
    trials: list[dict[str, Any]]
    seconds: float
    budget: Budget

    @property
    def improved(self) -> bool:
        return self.best_value > self.start_value

    def to_json(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "start": self.start,
            "start_value": round(self.start_value, 6),
            "best": self.best,
            "best_value": round(self.best_value, 6),
            "improved": self.improved,
            "trials_run": len(self.trials),
            "trials": self.trials,
            "seconds": round(self.seconds, 2),
            "budget": asdict(self.budget),
        }


def search(
    objective: Callable[[dict[str, Any]], float],
    space: Callable[[Any], dict[str, Any]],
    start: Mapping[str, Any],
    budget: Budget,
    *,
    name: str,
) -> TuningResult:
    """Maximise ``objective(params)`` over ``space(trial)`` (Optuna suggestions), ``start`` tried first."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=budget.seed))
    study.enqueue_trial(dict(start))
    trials: list[dict[str, Any]] = []
    started = time.perf_counter()

    def run(trial: Any) -> float:
        params = space(trial)
        t0 = time.perf_counter()
        value = float(objective(params))
        trials.append({"params": params, "value": round(value, 6), "seconds": round(time.perf_counter() - t0, 2)})
        log.info("%s trial %d: %s -> %.4f", name, trial.number, params, value)
        return value

    study.optimize(run, n_trials=budget.trials, timeout=budget.seconds)
    first = trials[0]
    best = max(trials, key=lambda t: t["value"])  # the first of equal values: the start wins ties
    return TuningResult(
        objective=name,
        start=dict(start),
        start_value=first["value"],
        best=best["params"],
        best_value=best["value"],
        trials=trials,
        seconds=time.perf_counter() - started,
        budget=budget,
    )


# -- ALS -------------------------------------------------------------------------------------------


def als_space(trial: Any) -> dict[str, Any]:
    return {
        "factors": trial.suggest_categorical("factors", [32, 64, 128]),
        "regularization": trial.suggest_float("regularization", 1e-3, 1.0, log=True),
        "alpha": trial.suggest_float("alpha", 0.1, 50.0, log=True),
    }


def tune_als(
    base: ALSParams,
    budget: Budget,
    *,
    rank_als: Callable[[ALSRetriever], pl.DataFrame],
    fit_als: Callable[[ALSParams], ALSRetriever],
    truth: pl.DataFrame,
    users: list[str],
) -> tuple[ALSParams, TuningResult]:
    """The ALS parameters with the best validation NDCG@20, and the search.

    ``fit_als(params)`` fits ALS on the validation fold's interactions snapshot; ``rank_als(als)``
    returns its ranked lists (``user_id``, ``item_id``, ``rank``) for ``users`` through the one
    retrieval step; ``truth`` holds the validation labels.
    """
    start = {"factors": base.factors, "regularization": base.regularization, "alpha": base.alpha}

    def objective(params: dict[str, Any]) -> float:
        ranked = rank_als(fit_als(replace(base, **params)))
        return _mean_ndcg(ranked, truth, users)

    result = search(objective, als_space, start, budget, name=f"als ndcg@{OBJECTIVE_K} (valid)")
    return replace(base, **result.best), result


def _mean_ndcg(ranked: pl.DataFrame, truth: pl.DataFrame, users: list[str]) -> float:
    per_user = metrics.ndcg_at_k(ranked, truth, users, k=OBJECTIVE_K)
    return float(per_user[f"ndcg@{OBJECTIVE_K}"].to_numpy().mean()) if per_user.height else 0.0


# -- the ranker ------------------------------------------------------------------------------------


def ranker_space(trial: Any) -> dict[str, Any]:
    return {
        "num_leaves": trial.suggest_int("num_leaves", 7, 127, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
        "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 5, 200, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.5, 1.0),
    }


def tune_ranker(
    train: pl.DataFrame,
    valid: pl.DataFrame,
    base: ranking.RankerParams,
    budget: Budget,
    *,
    features: Sequence[str] = FEATURES,
) -> tuple[ranking.RankerParams, TuningResult]:
    """The ranker parameters with the best early-stopped validation NDCG@``eval_at``, and the search.

    The datasets are built once for every trial (:func:`ranking.ranker_datasets`).
    """
    datasets = ranking.ranker_datasets(train, valid, features=features)
    start = {
        "num_leaves": base.num_leaves,
        "learning_rate": base.learning_rate,
        "min_data_in_leaf": base.min_data_in_leaf,
        "feature_fraction": base.feature_fraction,
    }

    def objective(params: dict[str, Any]) -> float:
        trained = ranking.train_ranker_on(datasets, params=replace(base, **params))
        return float(trained.curve["valid"][trained.best_iteration - 1])

    result = search(objective, ranker_space, start, budget, name=f"ranker ndcg@{base.eval_at} (valid)")
    return replace(base, **result.best), result
