"""The Dagster assets end to end on a temp home: ingest, daily snapshots, Feast apply and online store."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from feast import FileSource
from homes import copy_home

from recs_pipeline.definitions import defs
from recs_pipeline.feast import feast_store
from recs_pipeline.runner import INSTANCE_TEMPLATE
from recs_pipeline.settings import DUCKDB_POOL
from recs_pipeline.warehouse import db


def test_definitions_load_with_every_asset_grouped_and_described():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {
        "catalog_items",
        "events",
        "exposures",
        "experiment_metrics",
        "shadow_comparison",
        "user_features",
        "item_features",
        "user_category_features",
        "interactions",
        "user_profile",
        "feast_registry",
        "online_features",
        "online_refresh",
        "temporal_split",
        "candidate_sources",
        "candidates",
        "ranking_dataset",
        "ranker",
        "evaluation",
        "model_version",
        "champion",
        "retention",
    }
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.group_name in {"ingest", "features", "feast", "realtime", "models", "experiments", "privacy"}, key
        assert node.description, key
    assert defs.resolve_job_def("pipeline_job") is not None


def test_every_asset_that_opens_duckdb_is_in_the_single_writer_pool():
    pools = {}
    for assets_def in defs.assets:
        for key in assets_def.keys:
            pools[key.to_user_string()] = assets_def.op.pool
    duckdb_users = {
        "catalog_items",
        "events",
        "exposures",
        "experiment_metrics",
        "shadow_comparison",
        "user_features",
        "item_features",
        "user_category_features",
        "interactions",
        "user_profile",
        "online_features",
        "online_refresh",
        "temporal_split",
        "retention",
    }
    assert {k for k, p in pools.items() if p == DUCKDB_POOL} == duckdb_users
    assert "default_limit: 1" in INSTANCE_TEMPLATE.read_text()


@pytest.fixture(scope="module")
def pipeline_home(feature_pipeline):
    """The session's small synthetic run through every asset but the models (read only here)."""
    f = feature_pipeline
    return f.settings, f.summary, f.days, f.ingest, f.feature_runs, f.feast


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {f"{e.asset_key.to_user_string()}:{e.check_name}": e.passed for e in result.get_asset_check_evaluations()}


def test_ingest_assets_load_everything_and_checks_pass(pipeline_home):
    settings, summary, _, ingest, _, _ = pipeline_home
    assert ingest.success
    checks = _checks(ingest)
    assert checks == {
        "events:event_id_unique": True,
        "events:ledger_conserves_rows": True,
        "events:quarantine_rate": True,
        "exposures:ledger_conserves_rows": True,
    }
    md = ingest.asset_materializations_for_node("events")[0].metadata
    assert md["rows_loaded"].value == summary.n_events == md["table_rows"].value
    assert md["rows_quarantined"].value == 0


def test_feature_partitions_build_one_snapshot_per_day(pipeline_home):
    settings, _, days, _, feature_runs, _ = pipeline_home
    assert all(r.success for r in feature_runs)
    for run in feature_runs:
        assert all(_checks(run).values()), _checks(run)
    with db.connect(settings.duckdb_path) as con:
        stamps = [r[0] for r in con.execute("SELECT DISTINCT event_timestamp FROM user_features ORDER BY 1").fetchall()]
        latest = con.execute("SELECT max(ts) FROM events").fetchone()[0]
    assert len(stamps) == 2
    assert stamps[0] == datetime.fromisoformat(days[1]).replace(tzinfo=UTC)  # end of the first day
    assert stamps[1] == latest + timedelta(microseconds=1)  # the running day: just after the newest event
    for table in ("user_features", "item_features", "user_category_features", "interactions"):
        assert (settings.features_dir / f"{table}.parquet").stat().st_size > 0


def test_feast_round_trip_online_equals_duckdb(pipeline_home):
    settings, _, _, _, _, feast = pipeline_home
    assert feast.success
    assert _checks(feast) == {"online_features:online_matches_duckdb": True}
    md = feast.asset_materializations_for_node("online_features")[0].metadata
    assert md["mismatches"].value == 0 and md["values_compared"].value > 1000
    # independently of the check: a user's online row is the newest DuckDB snapshot, column for column
    with db.connect(settings.duckdb_path) as con:
        row = con.execute(
            "SELECT user_id, views_30d, carts_30d, purchase_rate_30d, top_category_id FROM user_features "
            "WHERE event_timestamp = (SELECT max(event_timestamp) FROM user_features) AND views_30d > 0 "
            "ORDER BY views_30d DESC, user_id LIMIT 1"
        ).fetchone()
    store = feast_store.open_store(settings)
    online = feast_store.online_features(
        store,
        "user_features",
        [{"user_id": row[0]}],
        ["views_30d", "carts_30d", "purchase_rate_30d", "top_category_id"],
    )
    assert (online["views_30d"][0], online["carts_30d"][0], online["top_category_id"][0]) == (row[1], row[2], row[4])
    assert online["purchase_rate_30d"][0] == pytest.approx(row[3], rel=1e-12)


def test_historical_features_are_point_in_time(pipeline_home):
    """get_historical_features picks the snapshot valid at each entity timestamp, never a later one."""
    settings, _, _, _, _, _ = pipeline_home
    with db.connect(settings.duckdb_path) as con:
        first, second = [
            r[0] for r in con.execute("SELECT DISTINCT event_timestamp FROM user_features ORDER BY 1").fetchall()
        ]
        user, v1, v2 = con.execute(
            "SELECT a.user_id, a.views_24h, b.views_24h FROM user_features a JOIN user_features b USING (user_id) "
            "WHERE a.event_timestamp = $f AND b.event_timestamp = $s AND a.views_24h <> b.views_24h LIMIT 1",
            {"f": first, "s": second},
        ).fetchone()
    store = feast_store.open_store(settings)
    entity_df = pd.DataFrame(
        {
            "user_id": [user, user, user],
            "event_timestamp": [first + timedelta(hours=1), second - timedelta(microseconds=1), second],
        }
    )
    hist = store.get_historical_features(entity_df=entity_df, features=["user_features:views_24h"]).to_df()
    hist = hist.sort_values("event_timestamp")
    assert list(hist["views_24h"]) == [v1, v1, v2]


def test_a_copied_home_reads_only_its_own_files(feature_pipeline, tmp_path):
    """copy_home (how tests get a home they may change): Feast's offline sources point into the copy."""
    copy = copy_home(feature_pipeline.settings, tmp_path / "home")
    store = feast_store.open_store(copy)
    sources = [fv.batch_source for fv in store.list_feature_views()] + list(store.list_data_sources())
    paths = [s.path for s in sources if isinstance(s, FileSource)]
    assert len(paths) >= len(feast_store.SNAPSHOT_VIEWS)
    assert all(Path(p).is_relative_to(copy.features_dir) for p in paths), paths
    user = store.get_online_features(features=["user_features:views_30d"], entity_rows=[{"user_id": "nobody"}])
    assert user.to_dict()["views_30d"] == [None]
