"""The feature repo on Feast's Spark offline store and Spark compute engine gives what the DuckDB path gives.

One small home (tests/engines/spark_home.py: two feature snapshots built by the pipeline's DuckDB SQL,
exported to parquet as the pipeline exports them) and two Feast stores over the same parquet files:

- the project's own (``feature_repo/`` applied with ``feast apply``, DuckDB offline store, snapshots
  written to the SQLite online store by the pipeline's bulk path, ``materialize_snapshot``);
- the same views with ``SparkSource`` s on Feast's Spark offline store and Spark compute engine
  (``recs_pipeline.engines.feast_spark``), materialised by Feast's ``materialize`` on Spark into an
  SQLite online store of their own.

The ranker's point-in-time training rows (``ranking.build_rows``, which reads Feast's
``get_historical_features`` through the ranker's feature service) and every online value must be equal.
One local Spark session for the module.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from spark_home import AS_OFS, assert_same_table, build_duckdb_snapshots, fill_warehouse

from recs_pipeline.data.contract import ITEM_ID, USER_ID
from recs_pipeline.engines.feast_spark import open_spark_store, spark_repo_config
from recs_pipeline.engines.spark import SMALL_DATA_CONF, local_conf, local_session
from recs_pipeline.feast.feast_store import SNAPSHOT_VIEWS, apply_repo, materialize_snapshot, open_store
from recs_pipeline.models import ranking
from recs_pipeline.models.ranker_features import SOURCES
from recs_pipeline.settings import Settings
from recs_pipeline.warehouse import db
from recs_pipeline.warehouse.features import FEATURE_KEYS, FEATURE_TABLES, export_table

pytestmark = pytest.mark.integration

# Training cutoffs: the last snapshot's time, and a time between the two snapshots (the first one is
# the newest a point-in-time join may use there).
CUTOFFS = (AS_OFS[-1], AS_OFS[0] + timedelta(days=3, hours=5))
GRADES = {"view": 1, "add_to_cart": 2, "favorite": 2, "purchase": 3}


@dataclass
class Home:
    settings: Settings
    folder: Path
    interactions: pl.DataFrame
    events: pl.DataFrame
    snapshots: dict[str, pl.DataFrame]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    folder = tmp_path_factory.mktemp("feast-spark")
    settings = Settings.from_env(folder / "home")
    settings.ensure_dirs()
    with db.connect(folder / "warehouse.duckdb") as con:
        fill_warehouse(con)
        build_duckdb_snapshots(con)
        for table in FEATURE_TABLES:
            export_table(con, table, settings.features_dir)
        interactions = con.sql("SELECT * FROM interactions").pl()
        events = con.sql("SELECT user_id, item_id, event_type, ts FROM events").pl()
        snapshots = {t: con.sql(f"SELECT * FROM {t}").pl() for t in SNAPSHOT_VIEWS}  # noqa: S608 (fixed names)
    apply_repo(settings, force=True)
    duck = open_store(settings)
    for as_of in AS_OFS:
        materialize_snapshot(duck, as_of)
    return Home(settings, folder, interactions, events, snapshots)


@pytest.fixture(scope="module")
def spark(home: Home) -> Iterator[object]:
    session = local_session(scratch_dir=home.folder / "spark", shuffle_partitions=1, extra=SMALL_DATA_CONF)
    yield session
    session.stop()


@pytest.fixture(scope="module")
def stores(home: Home, spark: object):
    """(the DuckDB path's store, the Spark store); the Spark store's snapshots materialised on Spark."""
    duck = open_store(home.settings)
    config = spark_repo_config(
        home.settings,
        registry=home.folder / "spark-feast" / "registry.db",
        online_path=home.folder / "spark-feast" / "online_store.db",
        spark_conf={**local_conf(scratch_dir=home.folder / "spark", shuffle_partitions=1), **SMALL_DATA_CONF},
    )
    store = open_spark_store(duck, config)
    for as_of in AS_OFS:
        # not the bulk path (that reads FileSources with DuckDB): Feast's materialize, on the Spark engine
        assert materialize_snapshot(store, as_of) == dict.fromkeys(SNAPSHOT_VIEWS)
    return duck, store


def test_the_spark_store_runs_on_spark(home, stores):
    from feast.infra.compute_engines.spark.compute import SparkComputeEngine
    from feast.infra.offline_stores.contrib.spark_offline_store.spark import SparkOfflineStore
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

    duck, store = stores
    provider = store._get_provider()
    assert isinstance(provider.offline_store, SparkOfflineStore)
    assert isinstance(provider.batch_engine, SparkComputeEngine)
    for view in store.list_feature_views():
        assert isinstance(view.batch_source, SparkSource), view.name
        assert view.batch_source.path == duck.get_feature_view(view.name).batch_source.path
        assert Path(view.batch_source.path).parent == home.settings.features_dir
    assert {s.name for s in store.list_feature_services()} == {s.name for s in duck.list_feature_services()}


def _candidates(home: Home, as_of: datetime) -> pl.DataFrame:
    """Each user's items before ``as_of`` and as many random others, with made-up source scores and ranks
    (the candidate stage is not what differs between the engines)."""
    rng = np.random.default_rng(int(as_of.timestamp()))
    seen = home.interactions.filter(pl.col("event_timestamp") == AS_OFS[0]).select(USER_ID, ITEM_ID)
    users = seen[USER_ID].unique().sort()
    items = home.events[ITEM_ID].unique().sort()
    others = pl.DataFrame(
        {USER_ID: users.to_list() * 6, ITEM_ID: rng.choice(items.to_numpy(), size=users.len() * 6).tolist()}
    )
    pairs = pl.concat([seen, others]).unique().sort(USER_ID, ITEM_ID)
    n = pairs.height
    return pairs.with_columns(
        *(pl.Series(f"{s}_score", rng.random(n)) for s in SOURCES),
        *(pl.Series(f"{s}_rank", rng.integers(1, 200, n).astype(np.float64)) for s in SOURCES),
    )


def _truth(home: Home, as_of: datetime) -> pl.DataFrame:
    """Graded relevance from the three days after ``as_of`` (the label window)."""
    return (
        home.events.filter(pl.col("ts") >= as_of, pl.col("ts") < as_of + timedelta(days=3))
        .with_columns(pl.col("event_type").replace_strict(GRADES, default=0).alias(ranking.LABEL))
        .group_by(USER_ID, ITEM_ID)
        .agg(pl.col(ranking.LABEL).max().cast(pl.Float64))
    )


@pytest.mark.parametrize("cutoff", CUTOFFS, ids=["at-last-snapshot", "between-snapshots"])
def test_training_rows_are_the_duckdb_paths(home, stores, cutoff):
    duck, store = stores
    candidates = _candidates(home, cutoff)
    snapshot = max(t for t in AS_OFS if t <= cutoff)
    interactions = home.interactions.filter(pl.col("event_timestamp") == snapshot)
    truth = _truth(home, cutoff)

    def rows(feature_store) -> pl.DataFrame:
        return pl.concat(
            ranking.build_rows(feature_store, candidates, interactions=interactions, truth=truth, as_of=cutoff)
        )

    expected, actual = rows(duck), rows(store)
    assert expected.height == candidates.height
    assert (expected[ranking.LABEL] > 0).sum() > 10
    assert_same_table(expected, actual, (USER_ID, ITEM_ID))

    # the raw point-in-time rows too (every feature of the service, not only what the ranker derives)
    raw_expected = ranking.fetch_features(duck, candidates, as_of=cutoff)
    raw_actual = ranking.fetch_features(store, candidates, as_of=cutoff)
    assert_same_table(raw_expected, raw_actual.select(raw_expected.columns), (USER_ID, ITEM_ID))
    # the joins found the snapshot: most item rows have features, and values come from the right snapshot
    assert raw_expected["item_features__views_30d"].null_count() < raw_expected.height / 10
    item_views = home.snapshots["item_features"].filter(pl.col("event_timestamp") == snapshot)
    joined = raw_actual.join(item_views.select(ITEM_ID, "views_30d"), on=ITEM_ID)
    assert (joined["item_features__views_30d"] == joined["views_30d"].cast(pl.Float64)).all()


@pytest.mark.parametrize("view", SNAPSHOT_VIEWS)
def test_online_values_are_the_duckdb_paths(home, stores, view):
    duck, store = stores
    keys = FEATURE_KEYS[view]
    snapshots = home.snapshots[view]
    entity_rows = snapshots.select(keys).unique().sort(keys).to_dicts()
    features = [f.name for f in duck.get_feature_view(view).features]
    expected = pl.DataFrame(duck.get_online_features([f"{view}:{f}" for f in features], entity_rows).to_dict())
    actual = pl.DataFrame(store.get_online_features([f"{view}:{f}" for f in features], entity_rows).to_dict())
    assert expected.height == len(entity_rows) > 50
    # every entity has its newest snapshot's values online (no entity of these tables leaves a later one)
    assert expected.select(features).null_count().sum_horizontal().item() < expected.height * len(features)
    assert_same_table(expected, actual.select(expected.columns), keys)
