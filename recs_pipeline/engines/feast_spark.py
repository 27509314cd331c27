"""The project's feature repo on Feast's Spark offline store and Spark compute engine.

The feature views, entities and feature services stay defined once, in ``feature_repo/``. This module
takes them as ``feast apply`` registered them (the registry of the selected profile,
:func:`recs_pipeline.feast.feast_store.apply_repo`) and registers copies whose batch sources are
``SparkSource`` s over the very files the ``FileSource`` s name (Feast's Spark offline store reads
nothing else), in a registry of their own, with a configuration that has

- ``offline_store: {type: spark}``: ``get_historical_features`` (the ranker's point-in-time training
  rows, :func:`recs_pipeline.models.ranking.fetch_features`) is a Spark SQL job;
- ``batch_engine: {type: spark.engine}``: ``materialize`` reads, filters and de-duplicates on Spark
  and each Spark task writes its rows to the online store (Feast's ``online_write_batch``).

The online store is the profile's own (the embedded SQLite store or Redis), at another path when
given. docs/SCALE_OUT.md shows the ``feature_store.yaml`` a cluster would use;
``tests/engines/test_feast_spark.py`` checks that both paths give the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recs_pipeline.feast.feast_store import repo_config
from recs_pipeline.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView, RepoConfig
    from feast.data_source import DataSource
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

OFFLINE_STORE = "spark"
BATCH_ENGINE = "spark.engine"


def spark_source(source: DataSource) -> SparkSource:
    """A ``SparkSource`` reading what the ``FileSource`` ``source`` reads (same name, path, columns).

    Raises
    ------
    ValueError
        When ``source`` is not a parquet ``FileSource``.
    """
    from feast import FileSource
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

    if not isinstance(source, FileSource):
        raise ValueError(f"data source {source.name!r} is a {type(source).__name__}, not a FileSource")
    if not source.path.endswith(".parquet"):
        raise ValueError(f"data source {source.name!r} reads {source.path!r}, not a parquet file")
    return SparkSource(
        name=source.name,
        path=source.path,
        file_format="parquet",
        timestamp_field=source.timestamp_field,
        created_timestamp_column=source.created_timestamp_column or None,
        field_mapping=dict(source.field_mapping),
        description=source.description,
        tags=dict(source.tags),
        owner=source.owner,
    )


def _on_spark(view: FeatureView) -> tuple[FeatureView, list[DataSource]]:
    """A copy of ``view`` reading its batch source through Spark (a push source keeps pushing, its
    offline log read through Spark), and the copy's data sources."""
    from feast import PushSource

    if view.batch_source is None:
        raise ValueError(f"feature view {view.name!r} has no batch source")
    copy = view.__copy__()
    batch = spark_source(view.batch_source)
    copy.batch_source = batch
    sources: list[DataSource] = [batch]
    if isinstance(view.stream_source, PushSource):
        push = PushSource(
            name=view.stream_source.name,
            batch_source=batch,
            description=view.stream_source.description,
            tags=dict(view.stream_source.tags),
            owner=view.stream_source.owner,
        )
        copy.stream_source = push
        sources.append(push)
    elif view.stream_source is not None:
        raise ValueError(f"feature view {view.name!r} has a {type(view.stream_source).__name__} stream source")
    return copy, sources


def spark_objects(applied: FeatureStore) -> list[Any]:
    """The applied repo's entities, feature views (sources on Spark) and feature services, to apply to
    a store configured by :func:`spark_repo_config`."""
    objects: list[Any] = [*applied.list_entities()]
    for view in applied.list_feature_views():
        copy, sources = _on_spark(view)
        objects += [copy, *sources]
    objects += applied.list_feature_services()
    return objects


def spark_repo_config(
    settings: Settings,
    *,
    registry: Path,
    spark_conf: Mapping[str, str],
    online_path: Path | None = None,
) -> RepoConfig:
    """The selected profile's configuration with the Spark offline store and compute engine, a file
    registry at ``registry``, and (the embedded profile) the SQLite online store at ``online_path``.

    ``spark_conf`` is the session's settings (``local_conf`` here; a cluster's own on a cluster); Feast
    uses a running session when there is one.
    """
    from feast import RepoConfig

    base = repo_config(settings)
    online = base.online_store.model_dump()
    if online_path is not None:
        if "path" not in online:
            raise ValueError(f"the online store {online.get('type')!r} has no path to replace")
        online["path"] = str(online_path)
    conf = {str(k): str(v) for k, v in spark_conf.items()}
    config = RepoConfig(
        project=base.project,
        provider=base.provider,
        registry={"registry_type": "file", "path": str(registry)},
        online_store=online,
        offline_store={"type": OFFLINE_STORE, "spark_conf": conf},
        batch_engine={"type": BATCH_ENGINE, "spark_conf": conf},
        entity_key_serialization_version=base.entity_key_serialization_version,
        auth={"type": "no_auth"},
    )
    config.repo_path = settings.feature_repo
    return config


def open_spark_store(applied: FeatureStore, config: RepoConfig) -> FeatureStore:
    """A ``FeatureStore`` on ``config`` (:func:`spark_repo_config`) with the applied repo's objects
    (:func:`spark_objects`) applied to its registry (creating its online tables)."""
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(config.repo_path), config=config)
    store.apply(spark_objects(applied))
    return store
