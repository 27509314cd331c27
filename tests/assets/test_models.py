"""The model assets end to end on a small generated data set: train, evaluate, gate, promote, refuse, roll back."""

import json

import dagster as dg
import pytest
from homes import retrain_like_served

from recs_pipeline.definitions import defs
from recs_pipeline.models.registry import ModelIntegrityError, ModelRegistry
from recs_pipeline.runner import PipelineRunner

METHODS = {"popular", "trending", "covis", "als", "als+lightgbm"}


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
    assert set(manifest["windows"]) == {"train", "valid", "test"}
    files = set(manifest["files"])
    assert {
        "ranker.txt",
        "item_snapshot.parquet",
        "als/als_factors.npz",
        "als/als_ids.json",
        "covis/covis.parquet",
    } <= files
    assert not any(f.endswith((".pkl", ".pickle")) for f in files)


def test_evaluation_report_has_every_method_with_intervals(trained):
    settings, *_ = trained
    report = json.loads((settings.reports_dir / "evaluation.json").read_text())
    assert set(report) >= METHODS
    assert report["users"] > 50 and set(report["windows"]) == {"train", "valid", "test"}
    for method in METHODS:
        for k in (10, 20, 50):
            for metric in ("ndcg", "recall", "map", "hitrate", "coverage", "novelty"):
                name = f"{metric}@{k}"
                low, high = report[method][f"{name}_ci"]
                assert low <= report[method][name] <= high, (method, name)
        assert 0 <= report[method]["mrr"] <= 1
    # the learned ranker beats popularity on this data (its planted structure is personal)
    assert report["als+lightgbm"]["ndcg@20"] > report["popular"]["ndcg@20"]
    assert (settings.reports_dir / "evaluation.md").read_text().count("|") > 20
    assert (settings.reports_dir / "evaluation.png").stat().st_size > 1000


def test_an_equal_challenger_is_refused_and_the_champion_stays(trained):
    settings, runner, *_ = trained
    registry = ModelRegistry(settings.models_dir)
    before, versions = registry.champion().version, len(registry.versions())
    promoted, verdict = retrain_like_served(runner)  # same data, settings, seeds: the same score; ties do not promote
    assert not promoted
    assert "does not beat champion" in verdict
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


def test_nightly_schedule_retrains_the_models_group():
    schedule = defs.resolve_schedule_def("nightly_retrain")
    assert schedule.cron_schedule == "0 3 * * *"
    assert schedule.job_name == "retrain_job"
    keys = {k.to_user_string() for k in defs.resolve_job_def("retrain_job").asset_layer.selected_asset_keys}
    assert keys == {
        "training_snapshot",
        "candidate_sources",
        "candidates",
        "ranking_dataset",
        "ranker",
        "evaluation",
        "model_version",
        "champion",
    }
