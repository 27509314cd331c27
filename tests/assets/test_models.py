"""The model assets end to end on a small generated data set: train, evaluate, gate, promote, refuse, roll back."""

import json
import re

import dagster as dg
import pytest
from homes import copy_home, retrain_like_served

from recs_pipeline.definitions import defs
from recs_pipeline.defs.models import BASELINES, RETRAIN_TAG
from recs_pipeline.defs.resources import PipelineResource
from recs_pipeline.models.registry import ModelIntegrityError, ModelRegistry
from recs_pipeline.models.workspace import RetrainWorkspace, missing_fold_snapshots
from recs_pipeline.runner import PipelineRunner
from recs_pipeline.settings import Settings
from recs_pipeline.warehouse import features

METHODS = {"popular", "catpop", "content", "trending", "covis", "als", "usercf", "als+lightgbm"}


@pytest.fixture(scope="module")
def trained(served_pipeline):
    """The session's served home (40k generated events, trained once); these tests add versions to
    its registry but leave its first champion as the champion."""
    settings, promoted, verdict = served_pipeline
    return settings, PipelineRunner(settings, instance=dg.DagsterInstance.ephemeral()), promoted, verdict


def test_first_retrain_trains_evaluates_and_promotes(trained):
    settings, _, promoted, verdict = trained
    assert promoted, verdict
    assert "beats" in verdict and "no champion" in verdict
    # user-based CF is measured (reported) but not gating: it is off as a candidate source by default
    assert "baseline usercf" not in verdict and "baseline recent" in verdict
    champion = ModelRegistry(settings.models_dir).load_champion()
    manifest = champion.manifest
    for field in (
        "version",
        "created",
        "windows",
        "data_fingerprint",
        "feature_service",
        "parameters",
        "metrics",
        "files",
        "code_version",
    ):
        assert field in manifest, field
    assert manifest["feature_service"] == "ranker_v1"
    assert set(manifest["windows"]) == {"train", "valid", "test", "refit"}
    # served: sources and ranker refitted on every event, after the evaluation judged the recipe
    refit_from = manifest["windows"]["refit"]["history_before"]
    assert manifest["served_sources_trained_before"] == refit_from == manifest["windows"]["test"]["labels_until"]
    files = set(manifest["files"])
    assert {
        "ranker.txt",
        "evaluated/ranker.txt",
        "evaluated/ranker.json",
        "item_snapshot.parquet",
        "als/als_factors.npz",
        "als/als_ids.json",
        "covis/covis.parquet",
    } <= files
    assert not any(f.endswith((".pkl", ".pickle")) for f in files)


def test_evaluation_report_has_every_method_with_intervals(trained):
    settings, *_ = trained
    report = json.loads((settings.reports_dir / "evaluation.json").read_text())
    assert set(report) >= METHODS | {"recent"}
    assert report["users"] > 50 and set(report["windows"]) == {"train", "valid", "test", "refit"}
    for method in METHODS:
        for k in (10, 20, 50):
            for metric in ("ndcg", "recall", "precision", "map", "hitrate", "coverage", "novelty"):
                name = f"{metric}@{k}"
                low, high = report[method][f"{name}_ci"]
                assert low <= report[method][name] <= high, (method, name)
        assert 0 <= report[method]["mrr"] <= 1
    # the learned ranker beats popularity on this data (its planted structure is personal)
    assert report["als+lightgbm"]["ndcg@20"] > report["popular"]["ndcg@20"]
    assert (settings.reports_dir / "evaluation.md").read_text().count("|") > 20
    assert (settings.reports_dir / "evaluation.png").stat().st_size > 1000


def test_evaluation_report_has_both_protocols_with_differences_and_segments(trained):
    settings, *_ = trained
    report = json.loads((settings.reports_dir / "evaluation.json").read_text())
    assert "recent" in report  # the repeat-aware baseline is in the top-level (repeat-aware test) table
    for fold in ("test", "valid"):
        repeat, discovery = report["protocols"][fold]["repeat_aware"], report["protocols"][fold]["discovery"]
        assert set(repeat["methods"]) == METHODS | {"recent"} and set(discovery["methods"]) == METHODS
        assert 0 < discovery["users"] <= repeat["users"]
        for protocol in (repeat, discovery):
            best = protocol["best_baseline"]
            assert best in BASELINES and best in protocol["methods"]
            for method, result in protocol["methods"].items():
                assert result["users"] == protocol["users"], method
                low, high = result["precision@20_ci"]
                assert 0 <= low <= result["precision@20"] <= high <= 1, method
                for measure in ("ild@20", "category_coverage@20"):  # the lists' diversity
                    low, high = result[f"{measure}_ci"]
                    assert 0 <= low <= result[measure] <= high <= 1, (method, measure)
            assert set(protocol["differences"]) == set(protocol["methods"]) - {best}
            for method, diff in protocol["differences"].items():
                for metric in ("ndcg@20", "recall@20"):
                    low, high = diff[f"{metric}_ci"]
                    assert low <= diff[metric] <= high, (fold, method, metric)
            assert set(protocol["segments"]) == {
                "unknown_users",
                "new_users",
                "returning_users",
                "cold_items",
                "new_items",
            }
            for name, segment in protocol["segments"].items():
                assert segment["users"] <= protocol["users"], name
                assert set(segment["methods"]) == (set(protocol["methods"]) if segment["users"] else set()), name
    assert report["protocols"]["test"]["repeat_aware"]["users"] == report["users"]
    assert report["protocols"]["test"]["repeat_aware"]["methods"]["als+lightgbm"] == report["als+lightgbm"]
    md = (settings.reports_dir / "evaluation.md").read_text()
    assert "Repeat-aware protocol" in md and "Discovery protocol" in md and "best baseline" in md


def test_an_equal_challenger_is_refused_and_the_champion_stays(trained):
    settings, runner, *_ = trained
    registry = ModelRegistry(settings.models_dir)
    before, versions = registry.champion().version, len(registry.versions())
    promoted, verdict = retrain_like_served(runner)  # same data, settings, seeds: the same score; ties do not promote
    assert not promoted, verdict
    assert "does not beat champion" in verdict
    # the champion's evaluated ranker was scored again on this retrain's validation rows
    assert f"champion {before} re-scored on this validation window" in verdict
    assert registry.champion().version == before
    assert len(registry.versions()) == versions + 1  # registered, not promoted


def test_rollback_job_restores_the_previous_champion_and_tampering_is_refused(trained):
    settings, runner, *_ = trained
    registry = ModelRegistry(settings.models_dir)
    first = registry.champion().version
    challenger = registry.challengers()[-1].version
    registry.promote(challenger, reason="test: promote by hand")
    result = defs.resolve_job_def("rollback_job").execute_in_process(
        instance=runner.instance,
        resources=runner.resources,
        run_config={"ops": {"rollback_champion": {"config": {"reason": "test rollback"}}}},
    )
    assert result.success
    assert registry.champion().version == first
    assert registry.history()[-1]["action"] == "rollback"
    (registry.get(challenger).path / "ranker.txt").write_text("tampered")
    with pytest.raises(ModelIntegrityError, match="ranker.txt"):
        registry.promote(challenger, reason="must be refused")
    assert registry.champion().version == first


def test_nightly_schedule_starts_the_retrain_chain_and_train_job_holds_the_rest():
    schedule = defs.resolve_schedule_def("nightly_retrain")
    assert schedule.cron_schedule == "0 3 * * *"
    assert schedule.job_name == "retrain_job"

    def keys(job: str) -> set[str]:
        return {k.to_user_string() for k in defs.resolve_job_def(job).asset_layer.selected_asset_keys}

    assert keys("retrain_job") == {"temporal_split"}
    assert keys("train_job") == {
        "candidate_sources",
        "candidates",
        "ranking_dataset",
        "ranker",
        "evaluation",
        "model_version",
        "champion",
    }
    assert keys("features_job") == set(features.FEATURE_TABLES)


def test_retrain_chain_builds_the_fold_partitions_before_training(feature_pipeline, tmp_path):
    """The daemon's path: retrain_job's split -> one features_job run per fold day -> train_job, each
    launched by the retrain_chain sensor; train_job refuses to start on folds without their features."""
    settings = copy_home(feature_pipeline.settings, tmp_path / "home")
    instance = dg.DagsterInstance.ephemeral()
    resources = {"pipeline": PipelineResource(home=str(settings.home))}
    chain = defs.resolve_sensor_def("retrain_chain")

    def after(result: dg.ExecuteInProcessResult):
        assert result.success
        return chain(
            dg.build_run_status_sensor_context(
                sensor_name="retrain_chain",
                dagster_instance=instance,
                dagster_run=result.dagster_run,
                dagster_event=result.get_run_success_event(),
            )
        )

    requests = after(defs.resolve_job_def("retrain_job").execute_in_process(instance=instance, resources=resources))
    days = RetrainWorkspace(settings.training_dir).split().snapshot_days()
    # the three folds' days, which the home does not have yet, and the refit's: the newest day, which it has
    folds = days[:3]
    assert len(set(days)) == 4 and not set(folds) & set(feature_pipeline.days) and days[3] == feature_pipeline.days[-1]
    assert [(r.job_name, r.partition_key) for r in requests] == [("features_job", d) for d in days]

    early = defs.resolve_job_def("train_job").execute_in_process(
        instance=instance, resources=resources, raise_on_error=False
    )
    assert not early.success
    failure = next(e for e in early.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message
    assert all(re.search(f"partition {d} of [^;]*interactions", message) for d in folds), message

    features_job = defs.resolve_job_def("features_job")
    for n, request in enumerate(requests):
        step = after(
            features_job.execute_in_process(
                instance=instance, resources=resources, partition_key=request.partition_key, tags=request.tags
            )
        )
        if n < len(requests) - 1:
            assert isinstance(step, dg.SkipReason) and "waiting for feature partitions" in str(step.skip_message)
    assert [(r.job_name, r.run_key) for r in step] == [("train_job", f"{requests[0].tags[RETRAIN_TAG]}/train")]
    assert not missing_fold_snapshots(
        settings.features_dir, RetrainWorkspace(settings.training_dir).split(), features.FEATURE_TABLES
    )


def test_tuning_searches_als_and_the_ranker_on_the_validation_fold(trained, tmp_path):
    """With RECS_TUNE_TRIALS set, candidate_sources and ranker search their parameters (start first),
    train with the best, and record every trial; without it the record says no search ran."""
    settings, *_ = trained
    untuned = RetrainWorkspace(settings.training_dir)
    assert untuned.params("tuning_als")["trials_run"] == 0 and untuned.params("tuning_ranker")["trials_run"] == 0
    champion = ModelRegistry(settings.models_dir).champion()
    assert champion.manifest["parameters"]["tuning"]["ranker"]["trials_run"] == 0

    home = copy_home(settings, tmp_path / "home").home
    with pytest.MonkeyPatch.context() as mp:  # the runs' resources read the settings from the environment
        mp.setenv("RECS_TUNE_TRIALS", "2")
        mp.setenv("RECS_TUNE_SECONDS", "60")
        tuned_settings = Settings.from_env(home)
        runner = PipelineRunner(tuned_settings, instance=dg.DagsterInstance.ephemeral())
        runner.materialize("models", selection=dg.AssetSelection.assets("candidate_sources"))
        ws = RetrainWorkspace(tuned_settings.training_dir)
        als = ws.params("tuning_als")
        assert als["trials_run"] == 2 and als["trials"][0]["params"] == als["start"]
        assert als["best_value"] == max(t["value"] for t in als["trials"])
        fitted = ws.params("retrieval")["als"]
        assert {k: fitted[k] for k in als["best"]} == als["best"]  # every fold's ALS fitted with the best
        runner.materialize("models", selection=dg.AssetSelection.assets("ranker"))
        ranker = ws.params("tuning_ranker")
        assert ranker["trials_run"] == 2 and ranker["start"] == {
            "num_leaves": 31,
            "learning_rate": 0.05,
            "min_data_in_leaf": 50,
            "feature_fraction": 0.9,
        }
        assert {k: ws.params("ranker")[k] for k in ranker["best"]} == ranker["best"]
