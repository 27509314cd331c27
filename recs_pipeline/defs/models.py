"""Model assets: temporal folds, candidate sources, ranking rows, LightGBM, evaluation, gated promotion.

Thin adapters: the logic is in :mod:`recs_pipeline.models`, every working file goes through
:class:`~recs_pipeline.models.workspace.RetrainWorkspace`, and the registered version is written by
:func:`~recs_pipeline.models.bundle.write_bundle` with the recipe the steps recorded. Only
``temporal_split`` opens DuckDB (in the pool, to export the events); every other step reads that
parquet, the feature assets' exports of the folds' partitions and Feast's offline store. How a
retrain's runs are chained: see ``retrain_chain``.
"""

import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import polars as pl

from recs_pipeline.data.contract import (
    CATEGORY_ID,
    EVENT_TYPE,
    ITEM_ID,
    NEGATIVE_EVENT_TYPES,
    PRICE,
    SESSION_ID,
    TS,
    UPDATED_AT,
    USER_ID,
)
from recs_pipeline.defs.partitions import sync_day_partitions
from recs_pipeline.defs.resources import PipelineResource
from recs_pipeline.feast import feast_store
from recs_pipeline.models import metrics, ranking, reports, training, tuning
from recs_pipeline.models.bundle import Recipe, evaluated_ranker_dir, rescore_blocker, write_bundle
from recs_pipeline.models.consumption import ConsumedPolicy, choose_policy
from recs_pipeline.models.evaluation import (
    DISCOVERY,
    RECENT,
    REPEAT_AWARE,
    evaluate_fold,
    touched_pairs,
)
from recs_pipeline.models.protocol import REFIT, Fold, TemporalSplit, window_end
from recs_pipeline.models.registry import ModelRegistry, ModelVersion, sha256_file, should_promote
from recs_pipeline.models.retrieval import ALSParams, ALSRetriever
from recs_pipeline.models.retrieval.lists import catalog_as_of
from recs_pipeline.models.workspace import (
    RetrainWorkspace,
    fold_interactions,
    hidden_at,
    interactions_at,
    missing_fold_snapshots,
)
from recs_pipeline.settings import DUCKDB_POOL, Settings
from recs_pipeline.warehouse import features
from recs_pipeline.warehouse.features import Weighting

GROUP = "models"
GATE_METRIC = "ndcg@20"
SNAPSHOT_DAYS = "snapshot_days"  # temporal_split's metadata: the fold snapshot days (feature partitions)
# The methods the evaluation reports beside the ranker: every source's own list and the repeat-aware
# baseline (the user's own recent items).
BASELINES = ("popular", "catpop", "content", "trending", "covis", "als", "usercf", RECENT)
# The ones the promotion gate requires beating: all but user-based CF, which is off as a candidate
# source by default and measured only (on the small test homes it beats a ranker that cannot use it),
# and the content source, which proposes only items nobody touched yet (its job: the new-items rows).
GATE_BASELINES = tuple(name for name in BASELINES if name not in ("usercf", "content"))
CHAMPION_METHOD = "als+lightgbm"
# Depth of every method's list in the evaluation (its largest K).
EVAL_DEPTH = max(training.EVAL_KS)
# Depth of each source's saved list: deeper than EVAL_DEPTH, so that the discovery protocol, which drops
# the items each user touched before the cutoff, still has EVAL_DEPTH items wherever the source has them.
BASELINE_DEPTH = 100


def _workspace(s: Settings) -> RetrainWorkspace:
    return RetrainWorkspace(s.training_dir)


class SplitConfig(dg.Config):
    """Where the folds' cutoffs fall: quantiles of event time, or explicit dates (YYYY-MM-DD) that win if all set."""

    train_quantile: float = 0.7
    valid_quantile: float = 0.8
    test_quantile: float = 0.9
    t1: str | None = None
    t2: str | None = None
    t3: str | None = None


@dg.asset(
    group_name=GROUP,
    pool=DUCKDB_POOL,
    kinds={"duckdb", "parquet"},
    deps=["events"],
    description="Fixes the temporal split (fold cutoffs at midnights) and exports the events for training. "
    "Each fold's features are the feature assets' own daily partition for the day before its cutoff "
    "(`snapshot_days` in the metadata); the retrain chain materialises them before training.",
)
def temporal_split(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, config: SplitConfig
) -> dg.MaterializeResult:
    s = pipeline.settings
    ws = _workspace(s)
    ws.root.mkdir(parents=True, exist_ok=True)
    weighting = Weighting.from_settings(s)
    with pipeline.warehouse() as con:
        # behaviour only: hide events are negative feedback, which training reads from the profile
        # snapshots (workspace.hidden_at), never as interest, sessions or labels
        con.sql(
            f"SELECT {USER_ID}, {ITEM_ID}, {EVENT_TYPE}, {TS}, {SESSION_ID} FROM events "  # noqa: S608
            f"WHERE NOT list_contains($negative::VARCHAR[], {EVENT_TYPE}) ORDER BY {TS}",
            params={"negative": list(NEGATIVE_EVENT_TYPES)},
        ).write_parquet(str(ws.events_path))
        # every catalog version: the sources read each item's category as it was before their cutoff
        con.sql(
            f"SELECT {ITEM_ID}, {CATEGORY_ID}, {PRICE}, {UPDATED_AT} FROM item_versions "  # noqa: S608
            f"ORDER BY {ITEM_ID}, {UPDATED_AT}"
        ).write_parquet(str(ws.catalog_path))
    times = pl.read_parquet(ws.events_path, columns=[TS])[TS]
    if config.t1 and config.t2 and config.t3:
        split = TemporalSplit.from_dates(config.t1, config.t2, config.t3, end=window_end(times))
    else:
        split = TemporalSplit.from_fractions(
            times, train=config.train_quantile, valid=config.valid_quantile, test=config.test_quantile
        )
    ws.save_split(split)
    # the folds' snapshot days are feature partitions even in a Dagster instance that never ran ingest
    sync_day_partitions(
        context.instance,
        date.fromisoformat(split.snapshot_days()[0]),
        (split.end - timedelta(microseconds=1)).date(),
    )
    # the fold snapshots are built by the feature assets with the settings' weighting: recorded for the bundle
    ws.record_params("weighting", asdict(weighting))
    return dg.MaterializeResult(
        metadata={
            "windows": split.windows(),
            "events": times.len(),
            SNAPSHOT_DAYS: dg.MetadataValue.json(split.snapshot_days()),
            "weighting": weighting.params(),
        }
    )


class ALSConfig(dg.Config):
    """ALS hyper-parameters (implicit, CPU only, BLAS pinned to one thread); defaults from ``ALSParams``."""

    factors: int = ALSParams.factors
    regularization: float = ALSParams.regularization
    alpha: float = ALSParams.alpha
    iterations: int = ALSParams.iterations
    seed: int = ALSParams.seed
    threads: int = ALSParams.threads
    warm_iterations: int = ALSParams.warm_iterations


@dg.asset(
    group_name=GROUP,
    deps=[temporal_split, *features.FEATURE_TABLES],
    kinds={"implicit"},
    description="Candidate sources fitted once per fold on history before its cutoff, and once more on all the "
    "data (the refit that is served): ALS (implicit; later folds start from the previous fold's factors), "
    "co-visitation (each session's pairs counted once for all folds), popularity, trending.",
)
def candidate_sources(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, config: ALSConfig
) -> dg.MaterializeResult:
    s = pipeline.settings
    ws = _workspace(s)
    split, events = ws.split(), ws.events()
    missing = missing_fold_snapshots(s.features_dir, split, features.FEATURE_TABLES)
    if missing:
        raise dg.Failure(
            "the folds' feature snapshots are missing: "
            + "; ".join(f"partition {day} of {', '.join(tables)}" for day, tables in sorted(missing.items()))
            + ". Materialise those partitions of the features group, or retrain through `retrain_job` "
            "(the retrain_chain sensor builds them first) or `recs run`."
        )
    params = training.RetrievalParams(als=ALSParams(**config.model_dump()))
    meta: dict = {}
    tuned: dict = tuning.NO_SEARCH
    if s.tune_trials:
        als, search = _tune_als(s, ws, split, events, params)
        params = replace(params, als=als)
        tuned = search.to_json()
        context.log.info(
            f"ALS search: {len(search.trials)} trials in {search.seconds:.0f} s, valid ndcg@20 "
            f"{search.start_value:.4f} -> {search.best_value:.4f} with {search.best}"
        )
    ws.record_params("tuning_als", tuned)
    meta["tuning_als"] = dg.MetadataValue.json(tuned)
    started = time.perf_counter()
    folds = training.fit_fold_sources(
        events,
        lambda fold: fold_interactions(s.features_dir, fold).select(USER_ID, ITEM_ID, "weight"),
        split.fitted_folds(),
        params,
        ws.catalog(),
    )
    for fold, sources in folds:
        ws.save_sources(fold.name, sources)
        meta[f"{fold.name}/fitted_after_seconds"] = round(time.perf_counter() - started, 2)
        meta[f"{fold.name}/interactions"] = int(sources.als.seen.nnz)
        context.log.info(
            f"{fold.name}: sources fitted on {sources.als.seen.nnz} (user, item) pairs before {fold.cutoff}"
        )
    ws.record_params("retrieval", training.retrieval_params_json(params))
    return dg.MaterializeResult(metadata={**meta, "als_params": config.model_dump()})


def _consumed_policy(s: Settings, events: pl.DataFrame, split: TemporalSplit) -> ConsumedPolicy:
    """The consumed-items policy: the settings', or chosen from the train fold (before valid and test)."""
    return choose_policy(
        events, split.folds["train"], event_types=s.consumed_event_types, window_days=s.consumed_window_days
    )


def _tune_als(
    s: Settings, ws: RetrainWorkspace, split: TemporalSplit, events: pl.DataFrame, params: training.RetrievalParams
) -> tuple[ALSParams, tuning.TuningResult]:
    """ALS parameters searched on the validation fold: each trial's ALS list for a seeded sample of
    the fold's users, through the one retrieval step, judged on the fold's labels."""
    valid = split.folds["valid"]
    snapshot = fold_interactions(s.features_dir, valid)
    pairs = snapshot.select(USER_ID, ITEM_ID, "weight")
    population, truth = training.evaluation_users(events, valid)
    users = training.sample_users(population, max_users=tuning.ALS_SEARCH_USERS, seed=0)
    truth = truth.filter(pl.col(USER_ID).is_in(users))
    fixed = training.fit_sources(events, pairs, valid, params, ws.catalog())  # co-visitation and the lists, once
    policy = _consumed_policy(s, events, split)
    limits = {name: 1 for name in training.SOURCES} | {"als": tuning.OBJECTIVE_K}
    hidden = hidden_at(s.features_dir, valid.cutoff)

    def rank_als(als: ALSRetriever) -> pl.DataFrame:
        per_source, _ = training.source_candidates(
            replace(fixed, als=als),
            snapshot,
            users,
            n=limits,
            retrieval=params,
            consumed=policy,
            as_of=valid.cutoff,
            hidden=hidden,
        )
        return per_source["als"]

    return tuning.tune_als(
        params.als,
        tuning.Budget(s.tune_trials, s.tune_seconds),
        # the start's ALS is the one fit_sources just fitted (seeded: a refit would be identical)
        fit_als=lambda als_params: (
            fixed.als if als_params == params.als else ALSRetriever.fit(pairs, params=als_params)
        ),
        rank_als=rank_als,
        truth=truth,
        users=users,
    )


class CandidateConfig(dg.Config):
    """Candidates per source, and how many users each fold ranks: the train and valid folds' users
    (what the ranker learns and stops on) and the test fold's (what the evaluation reports), each a
    seeded sample when the fold has more; ``None`` takes every user."""

    als: int = training.DEFAULT_LIMITS["als"]
    covis: int = training.DEFAULT_LIMITS["covis"]
    trending: int = training.DEFAULT_LIMITS["trending"]
    popular: int = training.DEFAULT_LIMITS["popular"]
    recent: int = training.DEFAULT_LIMITS["recent"]
    usercf: int = training.DEFAULT_LIMITS["usercf"]
    catpop: int = training.DEFAULT_LIMITS["catpop"]
    content: int = training.DEFAULT_LIMITS["content"]
    max_train_users: int | None = training.MAX_TRAIN_USERS
    max_test_users: int | None = training.MAX_TEST_USERS
    seed: int = 0


@dg.asset(
    group_name=GROUP,
    deps=[candidate_sources],
    kinds={"polars"},
    description="Merged candidates per user and fold with provenance, per-source scores and ranks; recall@K per "
    "source and merged. Each fold's users are a seeded sample when it has more than the config's cap.",
)
def candidates(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, config: CandidateConfig
) -> dg.MaterializeResult:
    s = pipeline.settings
    ws = _workspace(s)
    split, events = ws.split(), ws.events()
    limits = {k: getattr(config, k) for k in training.SOURCES}
    retrieval = training.retrieval_params_from_json(ws.params("retrieval"))
    policy = _consumed_policy(s, events, split)
    context.log.info(f"consumed items: {policy.to_json()}")
    meta: dict = {"consumed": dg.MetadataValue.json(policy.to_json())}
    # deep enough for the evaluation's lists too (after the discovery protocol drops touched items),
    # so sources are queried once per fold
    depth = {name: max(limit, BASELINE_DEPTH) for name, limit in limits.items()}
    for fold in split.folds.values():
        population, truth = training.evaluation_users(events, fold)
        cap = config.max_test_users if fold.name == "test" else config.max_train_users
        sample = training.UserSample.draw(population, max_users=cap, seed=config.seed)
        users = sample.users
        if sample.sampled:
            truth = truth.filter(pl.col(USER_ID).is_in(users))
        per_source, merged = training.source_candidates(
            ws.sources(fold.name),
            interactions_at(s.features_dir, fold.cutoff),
            users,
            n=depth,
            retrieval=retrieval,
            consumed=policy,
            as_of=fold.cutoff,
            limits=limits,
            hidden=hidden_at(s.features_dir, fold.cutoff),
        )
        ws.save_candidates(fold.name, per_source=per_source, merged=merged, truth=truth, sample=sample)
        for name, cands in per_source.items():
            k = limits[name] or BASELINE_DEPTH  # a source that is off: its baseline list's recall
            meta[f"{fold.name}/recall/{name}@{k}"] = round(training.recall(cands, truth, k=k), 4)
        meta[f"{fold.name}/recall/merged"] = round(training.recall(merged, truth, k=None), 4)
        meta[f"{fold.name}/users"] = len(users)
        meta[f"{fold.name}/users_in_fold"] = sample.population
        meta[f"{fold.name}/candidates_per_user"] = round(merged.height / max(len(users), 1), 1)
    ws.record_params("limits", limits)
    ws.record_params("consumed", policy.to_json())
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    group_name=GROUP,
    deps=[candidates, "feast_registry"],
    kinds={"feast", "polars"},
    description="Ranking rows per fold: candidates with point-in-time features from Feast's FeatureService ranker_v1 at the cutoff and graded labels from the label window.",
)
def ranking_dataset(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    s = pipeline.settings
    ws = _workspace(s)
    store = feast_store.open_store(s)
    meta: dict = {}
    for fold in ws.split().folds.values():
        started = time.perf_counter()
        chunks = ranking.build_rows(
            store,
            ws.candidates(fold.name),
            interactions=interactions_at(s.features_dir, fold.cutoff),
            truth=ws.truth(fold.name),
            as_of=fold.cutoff,
        )
        rows = positives = 0
        for chunk in ws.write_rows(fold.name, chunks):
            rows += chunk.height
            positives += int((chunk[ranking.LABEL] > 0).sum())
        meta[f"{fold.name}/rows"] = rows
        meta[f"{fold.name}/positives"] = positives
        meta[f"{fold.name}/seconds"] = round(time.perf_counter() - started, 2)
    return dg.MaterializeResult(metadata={**meta, "feature_service": ranking.FEATURE_SERVICE})


class RankerConfig(dg.Config):
    """LightGBM lambdarank settings exposed in the launchpad; defaults from ``ranking.RankerParams``."""

    num_leaves: int = ranking.RankerParams.num_leaves
    learning_rate: float = ranking.RankerParams.learning_rate
    num_boost_round: int = ranking.RankerParams.num_boost_round
    min_data_in_leaf: int = ranking.RankerParams.min_data_in_leaf
    early_stopping_rounds: int = ranking.RankerParams.early_stopping_rounds
    seed: int = ranking.RankerParams.seed
    threads: int = ranking.RankerParams.threads


@dg.asset(
    group_name=GROUP,
    deps=[ranking_dataset],
    kinds={"lightgbm"},
    description="LightGBM lambdarank on the train fold's rows (groups per user), early stopping on the valid fold's "
    "NDCG@20: the ranker the evaluation judges. Then the served ranker: the same settings and round count on "
    "every fold's rows (train, valid, test), so it learns from the newest labels too.",
)
def ranker(context: dg.AssetExecutionContext, pipeline: PipelineResource, config: RankerConfig) -> dg.MaterializeResult:
    s = pipeline.settings
    ws = _workspace(s)
    params = ranking.RankerParams(**config.model_dump())
    tuned: dict = tuning.NO_SEARCH
    if s.tune_trials:
        params, search = tuning.tune_ranker(
            ws.rows("train"), ws.rows("valid"), params, tuning.Budget(s.tune_trials, s.tune_seconds)
        )
        tuned = search.to_json()
        context.log.info(
            f"ranker search: {len(search.trials)} trials in {search.seconds:.0f} s, valid ndcg@20 "
            f"{search.start_value:.4f} -> {search.best_value:.4f} with {search.best}"
        )
    ws.record_params("tuning_ranker", tuned)
    started = time.perf_counter()
    trained = ranking.train_ranker(ws.rows("train"), ws.rows("valid"), params=params)
    seconds = time.perf_counter() - started
    ranking.save_ranker(trained, ws.ranker_dir)
    started = time.perf_counter()
    every_fold = pl.concat([ws.rows(fold) for fold in ("train", "valid", "test")], how="vertical_relaxed")
    refitted = ranking.refit_ranker(every_fold, rounds=trained.best_iteration, params=params)
    ranking.save_ranker(refitted, ws.refit_ranker_dir)
    refit_seconds = time.perf_counter() - started
    ws.record_params("ranker", {**asdict(params), "best_iteration": trained.best_iteration})
    top = list(trained.importance.items())[:15]
    return dg.MaterializeResult(
        metadata={
            "tuning_ranker": dg.MetadataValue.json(tuned),
            "best_iteration": trained.best_iteration,
            "valid_ndcg@20": round(float(trained.curve["valid"][trained.best_iteration - 1]), 4),
            "train_seconds": round(seconds, 2),
            "refit_seconds": round(refit_seconds, 2),
            "refit_rows": every_fold.height,
            "features": len(trained.features),
            "importance": dg.MetadataValue.md(
                "| feature | gain |\n|---|---|\n" + "\n".join(f"| {k} | {v:.1f} |" for k, v in top)
            ),
            "training_curve": dg.MetadataValue.md(reports.curve_markdown(trained.curve)),
            "params": asdict(params),
        }
    )


def _method_rankings(ws: RetrainWorkspace, fold: Fold) -> tuple[dict[str, pl.DataFrame], pl.DataFrame, list[str]]:
    """Every method's ranked lists for the fold's users, as deep as the method gives them, plus the
    fold's truth and users.

    The baselines are the per-source lists saved by ``candidates`` (``BASELINE_DEPTH`` deep; ``recent``
    is each user's own items before the cutoff, most recent first, without the consumed ones);
    ALS + LightGBM is every ranking row in the ranker's order. The evaluation takes each list's top
    ``EVAL_DEPTH`` (repeat-aware) or drops the touched items first (discovery).
    """
    truth, users = _judged(ws, fold.name)
    ranked = _ranked_by(ws, fold.name, ws.ranker_dir, k=None).select(USER_ID, ITEM_ID, "rank")
    rankings = {name: ws.per_source(fold.name, name) for name in BASELINES}
    rankings[CHAMPION_METHOD] = ranked
    return rankings, truth, users


@dg.asset(
    group_name=GROUP,
    deps=[ranker],
    kinds={"polars"},
    description="One temporal evaluation of every method on the same users (a seeded sample of the test window's "
    "users when it has more than candidates' max_test_users), under two protocols: repeat-aware (every label "
    "counts; the `recent` baseline) and discovery (only items the user never touched before the cutoff count, "
    "and every method drops them). Recall, Precision, NDCG, MAP, HitRate@K, MRR, coverage, novelty with bootstrap "
    "intervals over the evaluated users, intra-list diversity and category coverage of the top 20, paired "
    "differences against the best baseline, per-segment tables "
    "(new / returning users, cold items); reports/evaluation.{json,md,png}.",
)
def evaluation(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    s = pipeline.settings
    ws = _workspace(s)
    split, events = ws.split(), ws.events()
    catalog = ws.catalog()
    protocols, results, counts = {}, {}, {}
    for fold_name in ("valid", "test"):
        fold = split.folds[fold_name]
        rankings, truth, users = _method_rankings(ws, fold)
        popularity = training.item_popularity(events, fold)
        protocols[fold_name] = evaluate_fold(
            rankings,
            truth,
            users,
            touched=touched_pairs(events, fold, users=users),
            popularity=popularity,
            n_catalog_items=popularity.height,
            baselines=BASELINES,
            n_bootstrap=s.eval_bootstrap,
            item_categories=catalog_as_of(catalog, fold.cutoff),  # what the fold's model knew
        )
        results[fold_name] = protocols[fold_name][REPEAT_AWARE]["methods"]
        counts[fold_name] = len(users)
        context.log.info(
            f"{fold_name}: {len(users)} users repeat-aware, {protocols[fold_name][DISCOVERY]['users']} in discovery"
        )
    samples = {f: ws.user_sample(f) for f in ("valid", "test")}
    paths = reports.write_evaluation(
        s.reports_dir,
        test=results["test"],
        valid=results["valid"],
        windows=split.windows(),
        users=counts["test"],
        population=samples["test"]["population"],
        dataset=str(s.home),
        protocols=protocols,
    )
    # the repeat-aware tables per fold (what the gate reads), plus the discovery ones
    ws.save_evaluation(
        {
            **{f: {m: reports.flatten(r) for m, r in res.items()} for f, res in results.items()},
            DISCOVERY: {
                f: {m: reports.flatten(r) for m, r in p[DISCOVERY]["methods"].items()} for f, p in protocols.items()
            },
        }
    )
    md = paths["markdown"].read_text()
    discovery = protocols["test"][DISCOVERY]
    return dg.MaterializeResult(
        metadata={
            "test_users": counts["test"],
            "test_users_in_window": samples["test"]["population"],
            "test_discovery_users": discovery["users"],
            "valid_users": counts["valid"],
            "valid_users_in_window": samples["valid"]["population"],
            "valid_discovery_users": protocols["valid"][DISCOVERY]["users"],
            "report": dg.MetadataValue.md(md),
            "chart": dg.MetadataValue.md(reports.bars_markdown(results["test"])),
            "plot": dg.MetadataValue.path(str(paths["plot"])),
            "json": dg.MetadataValue.path(str(paths["json"])),
            **{f"test/{m}/ndcg@20": round(r["ndcg@20"]["value"], 4) for m, r in results["test"].items()},
            **{f"valid/{m}/ndcg@20": round(r["ndcg@20"]["value"], 4) for m, r in results["valid"].items()},
            **{f"test/discovery/{m}/ndcg@20": round(r["ndcg@20"]["value"], 4) for m, r in discovery["methods"].items()},
        }
    )


@dg.asset(
    group_name=GROUP,
    deps=[evaluation],
    kinds={"registry"},
    check_specs=[
        dg.AssetCheckSpec(
            "beats_champion_and_baselines",
            asset="model_version",
            blocking=True,
            description=f"The challenger's validation {GATE_METRIC} beats the current champion's and every baseline's.",
        )
    ],
    description="Registers the trained model as a versioned folder with a manifest (windows, data fingerprint, parameters, metrics, sha256 of every file).",
)
def model_version(
    context: dg.AssetExecutionContext, pipeline: PipelineResource
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    s = pipeline.settings
    ws = _workspace(s)
    split = ws.split()
    registry = ModelRegistry(s.models_dir)
    items = pl.scan_parquet(s.features_dir / "item_features.parquet")
    newest = items.select(pl.col("event_timestamp").max()).collect().item()
    evaluation_results = ws.evaluation()
    valid = {m: r[GATE_METRIC] for m, r in evaluation_results["valid"].items()}
    recipe = Recipe(
        weighting=Weighting(**ws.params("weighting")),
        retrieval=training.retrieval_params_from_json(ws.params("retrieval")),
        limits={k: int(v) for k, v in ws.params("limits").items()},
        consumed=ConsumedPolicy.from_json(ws.params("consumed")),
    )
    version = write_bundle(  # served: the refit on all the data; kept for the gate: the evaluated ranker
        registry,
        sources=ws.sources(REFIT),
        ranker=ws.refit_ranker_dir,
        evaluated_ranker=ws.ranker_dir,
        item_snapshot=items.filter(pl.col("event_timestamp") == newest).collect(),
        recipe=recipe,
        manifest={
            "windows": split.windows(),
            "data_fingerprint": sha256_file(ws.events_path),
            "parameters": {
                "ranker": ws.params("ranker"),
                "tuning": {"als": ws.params("tuning_als"), "ranker": ws.params("tuning_ranker")},
            },
            "metrics": {
                "valid": evaluation_results["valid"][CHAMPION_METHOD],
                "test": evaluation_results["test"][CHAMPION_METHOD],
                "valid_baselines": {m: valid[m] for m in BASELINES},
            },
            "served_sources_trained_before": split.refit.cutoff.isoformat(),
        },
    )
    champion = registry.champion()
    challenger_valid, champion_valid, champion_note = valid[CHAMPION_METHOD], None, ""
    if champion is not None:
        challenger_valid, champion_valid, champion_note = _gate_figures(champion, ws, split, challenger_valid)
    passed, verdict = should_promote(
        {GATE_METRIC: challenger_valid},
        champion_metrics={GATE_METRIC: champion_valid} if champion_valid is not None else None,
        baseline_metrics={m: {GATE_METRIC: valid[m]} for m in GATE_BASELINES},
        metric=GATE_METRIC,
    )
    verdict = f"{verdict}; {champion_note}" if champion_note else verdict
    ws.save_challenger(version=version.version, passed=passed, verdict=verdict)
    yield dg.MaterializeResult(
        metadata={
            "version": version.version,
            "path": dg.MetadataValue.path(str(version.path)),
            "files": len(version.files),
            "valid_ndcg@20": valid[CHAMPION_METHOD],
        }
    )
    yield dg.AssetCheckResult(
        check_name="beats_champion_and_baselines",
        passed=passed,
        metadata={"verdict": verdict, "version": version.version, "champion": champion.version if champion else "none"},
    )


def _ranker_metric(ws: RetrainWorkspace, fold_name: str, ranker_dir: Path) -> float:
    """The gate's metric of the ranker in ``ranker_dir`` on a fold's ranking rows, over the same users
    and truth the evaluation judges there."""
    truth, users = _judged(ws, fold_name)
    k = int(GATE_METRIC.split("@")[1])
    per_user = metrics.ndcg_at_k(_ranked_by(ws, fold_name, ranker_dir), truth, users, k=k)
    return float(per_user[GATE_METRIC].to_numpy().mean())


def _judged(ws: RetrainWorkspace, fold_name: str) -> tuple[pl.DataFrame, list[str]]:
    """A fold's truth and the users the evaluation (and the gate) judge: every user with a label."""
    truth = ws.truth(fold_name)
    return truth, sorted(truth[USER_ID].unique().to_list())


def _ranked_by(ws: RetrainWorkspace, fold_name: str, ranker_dir: Path, k: int | None = EVAL_DEPTH) -> pl.DataFrame:
    """Top-``k`` lists (``None``: every row ranked) of a fold's users by the ranker in ``ranker_dir``
    (the service's compiled scorer) over the fold's ranking rows."""
    scorer = ranking.load_scorer(ranker_dir)
    return pl.concat(  # parts hold whole users, so each part's top k is final
        ranking.rank_top_k(part, ranking.score(scorer, part), k=part.height if k is None else k)
        for part in map(pl.read_parquet, ws.row_parts(fold_name))
    )


def _gate_figures(
    champion: ModelVersion, ws: RetrainWorkspace, split: TemporalSplit, challenger_valid: float
) -> tuple[float, float, str]:
    """The challenger's and the champion's gate metric for this retrain, and how they were obtained.

    When the champion's evaluated ranker learnt nothing from this retrain's validation window, both
    rankers score its validation rows through the same code (the same users, candidates and truth;
    equal rankers get equal figures); otherwise the champion's figure is the one recorded on its own
    window, next to the challenger's from the evaluation.
    """
    blocker = rescore_blocker(champion, labels_from=split.t2)
    if blocker is None:
        return (
            _ranker_metric(ws, "valid", ws.ranker_dir),
            _ranker_metric(ws, "valid", evaluated_ranker_dir(champion)),
            f"champion {champion.version} re-scored on this validation window",
        )
    recorded = float(champion.metrics["valid"][GATE_METRIC])
    return challenger_valid, recorded, f"champion {champion.version}: its own window's figure ({blocker})"


@dg.asset(
    group_name=GROUP,
    deps=[model_version],
    kinds={"registry"},
    description="Promotes the challenger that passed the blocking gate to champion (the scoring service serves the champion).",
)
def champion(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    s = pipeline.settings
    challenger = _workspace(s).challenger()
    if not challenger["passed"]:
        raise dg.Failure(f"challenger {challenger['version']} did not pass the gate: {challenger['verdict']}")
    promoted = ModelRegistry(s.models_dir).promote(challenger["version"], reason=challenger["verdict"])
    return dg.MaterializeResult(metadata={"champion": promoted.version, "verdict": challenger["verdict"]})


model_assets = [
    temporal_split,
    candidate_sources,
    candidates,
    ranking_dataset,
    ranker,
    evaluation,
    model_version,
    champion,
]

# A retrain is three kinds of run, each asset writing only its own tables: the split, the features
# group for each fold's snapshot day (the feature assets' own partitions), then training. In the
# daemon, `retrain_chain` launches each after the one before succeeds; `recs run` (the runner)
# runs the same three in order, in process.
retrain_job = dg.define_asset_job(
    "retrain_job",
    selection=dg.AssetSelection.assets(temporal_split),
    description="Start a retrain: fix the temporal split. The retrain_chain sensor then builds the folds' feature "
    "partitions (features_job) and trains, evaluates and promotes (train_job).",
)
features_job = dg.define_asset_job(
    "features_job",
    selection=dg.AssetSelection.groups("features"),
    description="Build one day's feature snapshots (all feature tables); launched by retrain_chain for the folds.",
)
train_job = dg.define_asset_job(
    "train_job",
    selection=dg.AssetSelection.groups(GROUP) - dg.AssetSelection.assets(temporal_split),
    description="Candidate sources, candidates, ranking rows, ranker, evaluation, gated promotion (after the split "
    "and the folds' feature partitions).",
)

retrain_schedule = dg.ScheduleDefinition(
    name="nightly_retrain",
    job=retrain_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Retrain and promote (if the gate passes) every night at 03:00 UTC (starts the retrain chain).",
)

RETRAIN_TAG = "recs/retrain"  # the run id of the split a chained run belongs to
PARTITION_TAG = "dagster/partition"  # Dagster's tag of a partitioned run's partition key


def split_snapshot_days(instance: dg.DagsterInstance, split_run_id: str) -> list[str]:
    """The fold snapshot days recorded by ``temporal_split`` in the run ``split_run_id``."""
    for record in instance.all_logs(split_run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = record.asset_materialization
        if materialization and materialization.asset_key == temporal_split.key:
            return list(materialization.metadata[SNAPSHOT_DAYS].value)  # type: ignore[arg-type]
    raise ValueError(f"run {split_run_id} did not materialise {temporal_split.key.to_user_string()}")


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[retrain_job, features_job],
    request_jobs=[features_job, train_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Chains a retrain: after retrain_job's split, one features_job run per fold snapshot day; after "
    "the last of them succeeds, train_job. Run keys make every step happen once.",
)
def retrain_chain(context: dg.RunStatusSensorContext) -> list[dg.RunRequest] | dg.SkipReason:
    run = context.dagster_run
    if run.job_name == retrain_job.name:
        days = split_snapshot_days(context.instance, run.run_id)
        return [
            dg.RunRequest(
                run_key=f"{run.run_id}/features/{day}",
                job_name=features_job.name,
                partition_key=day,
                tags={RETRAIN_TAG: run.run_id},
            )
            for day in days
        ]
    split_run_id = run.tags.get(RETRAIN_TAG)
    if split_run_id is None:
        return dg.SkipReason(f"run {run.run_id} is not part of a retrain")
    days = split_snapshot_days(context.instance, split_run_id)
    done = {
        r.tags.get(PARTITION_TAG)
        for r in context.instance.get_runs(
            filters=dg.RunsFilter(
                job_name=features_job.name,
                tags={RETRAIN_TAG: split_run_id},
                statuses=[dg.DagsterRunStatus.SUCCESS],
            )
        )
    }
    if not set(days) <= done:
        return dg.SkipReason(f"retrain {split_run_id}: waiting for feature partitions {sorted(set(days) - done)}")
    return [dg.RunRequest(run_key=f"{split_run_id}/train", job_name=train_job.name, tags={RETRAIN_TAG: split_run_id})]


class RollbackConfig(dg.Config):
    reason: str = "manual rollback"


@dg.op(description="Make the previous champion the champion again (verifying its files first).")
def rollback_champion(context: dg.OpExecutionContext, pipeline: PipelineResource, config: RollbackConfig) -> str:
    version = ModelRegistry(pipeline.settings.models_dir).rollback(reason=config.reason)
    context.log.info(f"champion is now {version.version}")
    return version.version


@dg.job(description="Roll the champion model back to the previous one.")
def rollback_job() -> None:
    rollback_champion()
