"""Day partitions that follow the data: any era works end to end, and the partitions are the data's days."""

import json
from datetime import UTC, date, datetime
from urllib.parse import parse_qs, urlsplit

import dagster as dg
import pytest
from click.testing import CliRunner

from recs_pipeline.cli import main
from recs_pipeline.data.synthetic import SyntheticConfig, write_synthetic
from recs_pipeline.definitions import defs
from recs_pipeline.defs.ingest import newest_day_link
from recs_pipeline.defs.partitions import (
    CODE_LOCATION,
    FEATURES_GROUP,
    day_range,
    key_changes,
    materialize_day_url,
    sync_day_partitions,
)
from recs_pipeline.models.workspace import missing_fold_snapshots
from recs_pipeline.runner import PipelineRunner
from recs_pipeline.settings import DAY_PARTITIONS, REPO_ROOT, Settings
from recs_pipeline.warehouse import db, features


def test_day_range_includes_both_ends():
    assert day_range(date(1997, 12, 30), date(1998, 1, 2)) == ["1997-12-30", "1997-12-31", "1998-01-01", "1998-01-02"]
    assert day_range(date(1998, 1, 2), date(1998, 1, 1)) == []


def test_materialize_day_url_is_the_feature_group_page_with_the_day_in_its_query_string():
    """The UI's launch dialogs read ``?partition=`` as their initial selection (they preselect nothing else)."""
    url = materialize_day_url(date(1998, 1, 23))
    assert url == "/locations/recs_pipeline/asset-groups/features?partition=1998-01-23"
    assert materialize_day_url("1998-01-23") == url
    # the group and location it names are the feature assets' and the workspace's
    assert defs.resolve_assets_def("user_features").group_names_by_key[dg.AssetKey("user_features")] == FEATURES_GROUP
    assert f"location_name: {CODE_LOCATION}\n" in (REPO_ROOT / "workspace.yaml").read_text()


def test_key_changes_append_in_order_and_reorder_only_for_earlier_data():
    days = day_range(date(2026, 10, 1), date(2026, 10, 3))
    assert key_changes([], date(2026, 10, 1), date(2026, 10, 3)).add == days
    # later data: appended, nothing removed
    later = key_changes(days, date(2026, 10, 2), date(2026, 10, 5))
    assert (later.remove, later.add) == ([], ["2026-10-04", "2026-10-05"])
    # nothing new: nothing to do
    same = key_changes(days, date(2026, 10, 1), date(2026, 10, 2))
    assert (same.remove, same.add) == ([], [])
    # older data: the later keys go after the new ones (a dynamic partition's place is its insertion order)
    older = key_changes(days, date(2026, 9, 30), date(2026, 10, 1))
    assert (older.remove, older.add) == (days, ["2026-09-30", *days])
    with pytest.raises(ValueError, match="'x', which is not a day"):
        key_changes(["x"], date(2026, 10, 1), date(2026, 10, 1))


def test_sync_keeps_the_instance_keys_sorted_and_the_asset_partitions_equal_to_them():
    partitions_def = defs.resolve_assets_def("user_features").partitions_def
    assert isinstance(partitions_def, dg.DynamicPartitionsDefinition) and partitions_def.name == DAY_PARTITIONS
    with dg.DagsterInstance.ephemeral() as instance:
        sync_day_partitions(instance, date(1998, 1, 2), date(1998, 1, 4))
        # older data lands later: the events asset passes the oldest and newest stored days
        changes = sync_day_partitions(instance, date(1997, 12, 30), date(1998, 1, 4))
        assert changes.remove == ["1998-01-02", "1998-01-03", "1998-01-04"]
        keys = instance.get_dynamic_partitions(DAY_PARTITIONS)
        assert keys == day_range(date(1997, 12, 30), date(1998, 1, 4))  # in date order, the newest last
        assert partitions_def.get_partition_keys(dynamic_partitions_store=instance) == keys


def test_more_snapshot_days_than_the_data_has_is_a_clear_error(settings):
    runner = PipelineRunner(settings, instance=dg.DagsterInstance.ephemeral())
    newest = dg.AssetMaterialization("events", metadata={"newest_ts": "1998-01-23T22:01:50+00:00"})
    runner.instance.report_runless_asset_event(newest)
    sync_day_partitions(runner.instance, date(1997, 12, 10), date(1998, 1, 23))  # as the events asset does
    assert runner.snapshot_days(45)[0] == "1997-12-10"
    with pytest.raises(
        ValueError, match=r"no feature partition for 1997-12-09: .* 1997-12-10 \.\. 1998-01-23 \(45 days\)"
    ):
        runner.snapshot_days(46)


@pytest.mark.integration  # `recs run` in a subprocess
def test_recs_run_and_a_retrain_split_on_events_from_the_1990s(tmp_path, monkeypatch):
    """Events from 1997-12-10 to 1998-01-23 (across a new year) through `recs run` (ingest, the newest
    day's snapshot, Feast and the online store), then a retrain's split and its folds' snapshot days:
    the feature assets have one partition per day of the data, the newest last.

    (Training itself is left out to keep the test short: it reads the fold snapshots built here.)
    """
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    settings = Settings.from_env(tmp_path / "home")
    settings.ensure_dirs()
    summary = write_synthetic(
        SyntheticConfig(n_events=3_000, seed=11, start=datetime(1997, 12, 10, tzinfo=UTC), days=45),
        settings.landing_dir,
    )
    result = CliRunner().invoke(
        main, ["--home", str(settings.home), "run", "--no-land", "--no-models"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output[-3000:]
    report = json.loads(result.stdout[result.stdout.index("{") :])
    with db.connect(settings.duckdb_path) as con:
        first, last, stored = con.execute("SELECT min(ts), max(ts), count(*) FROM events").fetchone()
        online_stamp = con.execute("SELECT max(event_timestamp) FROM user_features").fetchone()[0]
    assert stored == summary.n_events and first.year == 1997 and last.year == 1998
    days = day_range(first.date(), last.date())
    assert report["snapshot_days"] == days[-1:] == ["1998-01-23"]
    assert online_stamp.year == 1998

    runner = PipelineRunner(settings)  # the retrain's first steps, as `recs run` takes them
    split = runner.prepare_retrain()
    assert set(split.snapshot_days()) < set(days)
    keys = defs.resolve_assets_def("user_features").partitions_def.get_partition_keys(
        dynamic_partitions_store=runner.instance
    )
    assert keys == days  # what the UI lists: the 45 days of the data, the newest last
    # the events asset's link opens the features' Materialize dialog with the newest stored event's day chosen
    link = newest_day_link(runner.instance)
    assert link is not None and urlsplit(link).path == f"/locations/{CODE_LOCATION}/asset-groups/{FEATURES_GROUP}"
    assert parse_qs(urlsplit(link).query) == {"partition": [last.date().isoformat()]} == {"partition": days[-1:]}
    materialized = runner.instance.get_materialized_partitions(dg.AssetKey("user_features"))
    assert materialized == {days[-1], *split.snapshot_days()}
    assert not missing_fold_snapshots(settings.features_dir, split, features.FEATURE_TABLES)
