"""Sensor, freshness run and periodic schedule: detection without DuckDB, a run that brings new users online.

One small pipeline home (synthetic events -> DuckDB -> snapshot -> Feast online) is shared by the
run tests; the sensor tests use empty homes that have no DuckDB file at all.
"""

import time
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import duckdb
import polars as pl
import pytest
from homes import copy_home

from recs_pipeline.data import landing
from recs_pipeline.data.contract import EVENT_SCHEMA
from recs_pipeline.definitions import defs
from recs_pipeline.defs import realtime
from recs_pipeline.defs.partitions import sync_day_partitions
from recs_pipeline.defs.resources import PipelineResource
from recs_pipeline.feast import feast_store, refresh
from recs_pipeline.settings import DUCKDB_POOL, Settings
from recs_pipeline.warehouse import db, features

NEW_USER = "u-realtime-new"
COLUMNS = ["views_1h", "views_30d", "carts_30d", "distinct_items_30d", "seconds_since_last_event", "top_category_id"]


def events_frame(rows: list[tuple[str, str, str, str, datetime]]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {"event_id": e, "user_id": u, "item_id": i, "event_type": t, "ts": ts, "session_id": None}
            for e, u, i, t, ts in rows
        ],
        schema=EVENT_SCHEMA,
    )


def evaluate(sensor_context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    return realtime.landing_sensor(sensor_context)


def sensor_context(instance: dg.DagsterInstance, settings: Settings, cursor: str | None) -> dg.SensorEvaluationContext:
    return dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"pipeline": PipelineResource(home=str(settings.home))}
    )


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as instance:
        yield instance


# --------------------------------------------------------------------------------------------
# Definitions
# --------------------------------------------------------------------------------------------


def test_definitions_register_the_realtime_pieces():
    job = defs.resolve_job_def("freshness_job")
    assert job.executor_def.name == "in_process"
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == {
        "catalog_items",
        "events",
        "exposures",  # what was shown feeds the profile's shown items (no-repeat rotation)
        "online_refresh",
    }
    assert job.run_tags.get("dagster/priority") == realtime.FRESHNESS_PRIORITY
    sensor = defs.resolve_sensor_def("landing_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == realtime.SENSOR_INTERVAL_SECONDS
    schedule = defs.resolve_schedule_def("periodic_materialization")
    assert schedule.job_name == "pipeline_job" and schedule.description
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    node = defs.resolve_asset_graph().get(dg.AssetKey("online_refresh"))
    assert node.group_name == "realtime" and node.description
    assert realtime.online_refresh.op.pool == DUCKDB_POOL
    assert {c.name for c in realtime.online_refresh.check_specs} == {realtime.FRESHNESS_CHECK}


# --------------------------------------------------------------------------------------------
# The sensor: detection from names, sizes and landing times
# --------------------------------------------------------------------------------------------


def test_sensor_requests_one_run_per_batch_then_skips_without_opening_duckdb(settings, instance, monkeypatch):
    def no_duckdb(*args, **kwargs):
        raise AssertionError("the sensor opened DuckDB")

    monkeypatch.setattr(duckdb, "connect", no_duckdb)
    frame = events_frame([("e1", "u1", "i1", "view", datetime(2026, 11, 1, tzinfo=UTC))])
    landing.land_frame(frame, settings.landing_dir, "events", "a.parquet")
    landing.land_frame(frame, settings.landing_dir, "events", "b.jsonl")
    first = evaluate(sensor_context(instance, settings, None))
    again = evaluate(sensor_context(instance, settings, None))
    assert isinstance(first, dg.SensorResult) and len(first.run_requests) == 1
    request = first.run_requests[0]
    assert request.run_key == again.run_requests[0].run_key  # derived from the files, stable
    config = request.run_config["ops"]["online_refresh"]["config"]
    assert sorted(config["files"]) == ["events/a.parquet", "events/b.jsonl"]
    landed = min(p.stat().st_ctime for p in (settings.landing_dir / "events").iterdir())
    assert config["oldest_landed_at"] == pytest.approx(landed, abs=1e-3)
    assert request.tags["recs/trigger"] == "landing_sensor"

    skipped = evaluate(sensor_context(instance, settings, first.cursor))
    assert isinstance(skipped, dg.SkipReason) and "2 landed" in skipped.skip_message

    landing.land_frame(frame, settings.landing_dir, "items", "c.csv")
    third = evaluate(sensor_context(instance, settings, first.cursor))
    assert [r.run_config["ops"]["online_refresh"]["config"]["files"] for r in third.run_requests] == [["items/c.csv"]]
    assert third.run_requests[0].run_key != request.run_key
    assert (
        refresh.LandingCursor.decode(third.cursor).high_water_ns
        > refresh.LandingCursor.decode(first.cursor).high_water_ns
    )
    assert not settings.duckdb_path.exists()


def test_sensor_skips_an_empty_landing_zone(settings, instance):
    result = evaluate(sensor_context(instance, settings, None))
    assert isinstance(result, dg.SkipReason)


# --------------------------------------------------------------------------------------------
# The schedule: today's partition, i.e. the newest ingested event's day
# --------------------------------------------------------------------------------------------


def test_schedule_requests_the_newest_ingested_day_never_after_the_tick():
    tick = datetime(2026, 11, 22, 11, 5, tzinfo=UTC)
    partitions_def = defs.resolve_job_def("pipeline_job").partitions_def
    cases = [  # each reported materialization of `events` becomes the latest one
        ("2026-10-30T23:00:00+00:00", "2026-10-30"),  # historical data: its newest day has the events
        ("2026-11-22T10:59:00+00:00", "2026-11-22"),  # live data: today
        ("2026-11-23T00:30:00+00:00", "2026-11-22"),  # an event ahead of the clock: not its day yet
    ]
    with (
        dg.instance_for_test() as instance,  # its own: the history of `events` is the input
        # closed before the instance: the context opens its own copy of it, which sets Dagster's current
        # defs-state storage until closed (a stale one breaks later definition loads in this process)
        dg.build_schedule_context(instance=instance, scheduled_execution_time=tick) as context,
    ):
        skipped = realtime.periodic_materialization(context)  # nothing ingested: no day partition yet
        assert isinstance(skipped, dg.SkipReason) and "no events ingested" in str(skipped.skip_message)
        for newest, expected in cases:
            event = dg.AssetMaterialization("events", metadata={"newest_ts": newest})
            instance.report_runless_asset_event(event)
            # what the `events` asset does after ingesting data from 2026-10-01 to `newest`
            sync_day_partitions(instance, date(2026, 10, 1), datetime.fromisoformat(newest).date())
            requests = realtime.periodic_materialization(context)
            assert isinstance(requests, list) and {r.partition_key for r in requests} == {expected}, newest
            assert expected in partitions_def.get_partition_keys(dynamic_partitions_store=instance)


def test_schedule_queues_pipeline_job_in_stages_that_freshness_runs_overtake():
    """One run per stage, in pipeline order, together exactly pipeline_job's assets; freshness runs have priority."""
    tick = datetime(2026, 11, 22, 11, 5, tzinfo=UTC)
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization("events", metadata={"newest_ts": tick.isoformat()}))
        sync_day_partitions(instance, date(2026, 11, 21), date(2026, 11, 22))
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=tick) as context:
            requests = realtime.periodic_materialization(context)
    assert [r.tags["recs/stage"] for r in requests] == ["ingest", "features", "feast", "experiments"]
    assert len({r.run_key for r in requests}) == 4  # one run per stage and tick
    stages = [{k.to_user_string() for k in r.asset_selection} for r in requests]
    assert stages[0] == {"catalog_items", "events", "exposures"}
    assert stages[2] == {"feast_registry", "online_features"} and stages[3] == {
        "experiment_metrics",
        "shadow_comparison",
    }
    job = defs.resolve_job_def("pipeline_job")
    assert set().union(*stages) == {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    assert sum(map(len, stages)) == len(job.asset_layer.selected_asset_keys)  # no asset in two stages
    # the run queue dequeues higher priorities first (first in, first out within one)
    assert all("dagster/priority" not in r.tags for r in requests)
    assert int(defs.resolve_job_def("freshness_job").run_tags["dagster/priority"]) > 0


# --------------------------------------------------------------------------------------------
# The run: ingest the batch, refresh its users and items online, record freshness
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def online_home(tmp_path_factory, instance, feature_pipeline):
    """A copy of the session's feature home: events ingested, daily snapshots, Feast applied and online."""
    home = tmp_path_factory.mktemp("realtime") / "home"
    with pytest.MonkeyPatch.context() as mp:
        for var in ("RECS_LANDING_DIR", "RECS_DUCKDB_PATH", "RECS_FEATURE_REPO", "RECS_FEAST_YAML"):
            mp.delenv(var, raising=False)
        mp.setenv("RECS_HOME", str(home))  # the registered resource reads it, as in the daemon
        mp.setenv("RECS_FEATURES_DIR", str(home / "features"))
        settings = copy_home(feature_pipeline.settings, home)
        summary = feature_pipeline.summary
        # the sensor has seen the history: the next batch is what the tests land
        cursor = evaluate(sensor_context(instance, settings, None)).cursor
        yield settings, instance, summary, cursor


def land_and_sense(settings, instance, cursor, name, rows) -> tuple[dg.RunRequest, str]:
    landing.land_frame(events_frame(rows), settings.landing_dir, "events", name)
    result = evaluate(sensor_context(instance, settings, cursor))
    assert isinstance(result, dg.SensorResult) and len(result.run_requests) == 1
    return result.run_requests[0], result.cursor


def freshness_check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (check,) = [e for e in result.get_asset_check_evaluations() if e.check_name == realtime.FRESHNESS_CHECK]
    return check


def online_user(settings, users: list[str]) -> list[tuple]:
    values = feast_store.online_features(
        feast_store.open_store(settings), "user_features", [{"user_id": u} for u in users], COLUMNS
    )
    return list(zip(*(values[c] for c in COLUMNS), strict=True))


def test_freshness_run_brings_a_new_user_online_and_records_freshness(online_home):
    settings, instance, summary, cursor = online_home
    with db.connect(settings.duckdb_path) as con:
        old_user, bystander, item_a, item_b = con.execute(
            "SELECT (SELECT min(user_id) FROM events), (SELECT max(user_id) FROM events), "
            "(SELECT min(item_id) FROM items), (SELECT max(item_id) FROM items)"
        ).fetchone()
    bystander_before = online_user(settings, [bystander])
    assert online_user(settings, [NEW_USER])[0][0] is None  # not online yet
    t = summary.last_ts + timedelta(minutes=1)
    request, _ = land_and_sense(
        settings,
        instance,
        cursor,
        "live-1.parquet",
        [
            ("live-1", NEW_USER, item_a, "view", t),
            ("live-2", NEW_USER, item_b, "view", t + timedelta(seconds=5)),
            ("live-3", old_user, item_b, "add_to_cart", t + timedelta(seconds=9)),
        ],
    )

    result = defs.resolve_job_def("freshness_job").execute_in_process(
        run_config=request.run_config, instance=instance, tags=request.tags
    )

    assert result.success
    md = {k: v.value for k, v in result.asset_materializations_for_node("online_refresh")[0].metadata.items()}
    assert (md["files"], md["events"], md["affected_users"], md["affected_items"]) == (1, 3, 2, 2)
    assert md["rows/user_features"] == 2 and md["rows/user_profile"] == 2
    assert 0 < md["landed_to_start_seconds"] < md["freshness_seconds"] < 120
    check = freshness_check(result)
    assert check.passed == (md["freshness_seconds"] <= realtime.FRESHNESS_TARGET_SECONDS)
    assert check.metadata["freshness_seconds"].value == md["freshness_seconds"]

    # online now: exactly what a full snapshot at the same time says; the bystander is untouched
    as_of = datetime.fromisoformat(md["as_of"])
    with db.connect(settings.duckdb_path) as con:
        for table in features.FEATURE_TABLES:
            features.build_snapshot(con, table, as_of=as_of, created=datetime.now(UTC))
        users = sorted([NEW_USER, old_user])
        expected = con.execute(
            f"SELECT {', '.join(COLUMNS)} FROM user_features WHERE event_timestamp = $t "  # noqa: S608
            "AND list_contains($u, user_id) ORDER BY user_id",
            {"t": as_of, "u": users},
        ).fetchall()
    assert online_user(settings, users) == expected
    assert online_user(settings, [NEW_USER])[0][:2] == (2, 2)
    assert online_user(settings, [bystander]) == bystander_before


def test_a_slow_run_fails_the_freshness_check_without_failing_the_run(online_home):
    settings, instance, summary, _ = online_home
    cursor = evaluate(sensor_context(instance, settings, None)).cursor  # everything so far seen
    time.sleep(0.05)
    with db.connect(settings.duckdb_path) as con:
        item = con.execute("SELECT min(item_id) FROM items").fetchone()[0]
    t = summary.last_ts + timedelta(minutes=3)
    request, _ = land_and_sense(settings, instance, cursor, "live-2.jsonl", [("live-9", "u-slow", item, "view", t)])
    run_config = request.run_config
    run_config["ops"]["online_refresh"]["config"]["freshness_target_seconds"] = 0.0

    result = defs.resolve_job_def("freshness_job").execute_in_process(run_config=run_config, instance=instance)

    assert result.success
    check = freshness_check(result)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["target_seconds"].value == 0.0
