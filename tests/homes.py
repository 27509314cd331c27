"""Copying a pipeline home for a test that mutates it (the session builds each home once)."""

import shutil
from pathlib import Path

import dagster as dg
import pytest

from recs_pipeline.data.synthetic import SyntheticConfig, write_synthetic
from recs_pipeline.models.registry import ModelRegistry, ModelVersion
from recs_pipeline.runner import PipelineRunner
from recs_pipeline.settings import Settings

# The variables that move a home's parts elsewhere: a test home built from RECS_HOME alone clears them
# (a developer shell may set any of them).
LOCATION_VARIABLES = (
    "RECS_LANDING_DIR",
    "RECS_DUCKDB_PATH",
    "RECS_FEATURE_REPO",
    "RECS_FEAST_YAML",
    "RECS_DAGSTER_YAML",
    "DAGSTER_HOME",
)


def _serialized_view_class(record) -> type:
    """The proto class of a feature-view version record's serialized ``feature_view_proto``."""
    from feast.protos.feast.core.FeatureView_pb2 import FeatureView
    from feast.protos.feast.core.OnDemandFeatureView_pb2 import OnDemandFeatureView
    from feast.protos.feast.core.StreamFeatureView_pb2 import StreamFeatureView

    classes = {
        "feature_view": FeatureView,
        "stream_feature_view": StreamFeatureView,
        "on_demand_feature_view": OnDemandFeatureView,
    }
    return classes[record.feature_view_type]


def _replace_in_proto(message, old: str, new: str) -> None:
    """Replace the prefix ``old`` by ``new`` in every string field of a protobuf message, recursively
    (including the feature views that version records keep serialized as bytes)."""
    for field, value in message.ListFields():
        repeated = field.is_repeated
        if field.type == field.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                entries = value.values() if field.message_type.fields_by_name["value"].message_type else []
            else:
                entries = value if repeated else [value]
            for entry in entries:
                _replace_in_proto(entry, old, new)
        elif field.type == field.TYPE_STRING:
            if repeated:
                value[:] = [v.replace(old, new, 1) if v.startswith(old) else v for v in value]
            elif value.startswith(old):
                setattr(message, field.name, value.replace(old, new, 1))
        elif field.name == "feature_view_proto" and old.encode() in value:
            view = _serialized_view_class(message).FromString(value)
            _replace_in_proto(view, old, new)
            setattr(message, field.name, view.SerializeToString())


def copy_home(source: Settings, home: Path) -> Settings:
    """A copy of the pipeline home ``source`` at ``home``, for a test that mutates it.

    Everything under the home is copied (DuckDB, features, Feast's registry and online store, models,
    training files). Feast's registry stores absolute offline-source paths; they are rewritten to the
    copy's (what a ``feast apply`` in the copy would write, without a subprocess), and the copy must
    mention the original home nowhere.
    """
    from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto

    shutil.copytree(source.home, home)
    settings = Settings.from_env(home)
    registry = settings.feast_dir / "registry.db"
    proto = RegistryProto()
    proto.ParseFromString(registry.read_bytes())
    _replace_in_proto(proto, str(source.home), str(settings.home))
    data = proto.SerializeToString()
    assert str(source.home).encode() not in data, "the copied Feast registry still points at the original home"
    registry.write_bytes(data)
    return settings


# The served home is trained with non-default event weights (settings) and candidate limits (run
# config), so the serving tests also show the service takes them from the bundle, not from defaults.
SERVED_WEIGHTS = {
    "RECS_WEIGHT_VIEW": "1.0",
    "RECS_WEIGHT_ADD_TO_CART": "3.0",
    "RECS_WEIGHT_PURCHASE": "6.0",
    "RECS_WEIGHT_FAVORITE": "2.0",
    "RECS_HALF_LIFE_DAYS": "10.0",
    # and a consumed-items policy of its own (the default is chosen from the data)
    "RECS_CONSUMED_EVENT_TYPES": "purchase,add_to_cart",
    "RECS_CONSUMED_WINDOW_DAYS": "20",
}
SERVED_LIMITS = {
    "als": 80,
    "catpop": 15,
    "content": 10,
    "covis": 40,
    "trending": 15,
    "popular": 20,
    "recent": 20,
    "usercf": 30,
}


def retrain_like_served(runner: PipelineRunner) -> tuple[bool, str]:
    """Retrain with the served home's settings and limits (what its champion was trained with)."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in SERVED_WEIGHTS.items():
            mp.setenv(name, value)
        return runner.retrain(run_config={"ops": {"candidates": {"config": SERVED_LIMITS}}})


def build_trained_home(settings: Settings, events: SyntheticConfig) -> tuple[PipelineRunner, bool, str]:
    """What `recs run` does, in process: land ``events``' synthetic data at ``settings``' home, ingest,
    build the newest day's features, put them in Feast, retrain like the served home. Returns the
    runner and the retrain's (promoted, verdict). The caller sets the environment it wants first."""
    settings.ensure_dirs()
    write_synthetic(events, settings.landing_dir)
    runner = PipelineRunner(settings, instance=dg.DagsterInstance.ephemeral())
    runner.materialize("ingest")
    runner.materialize("features", partition=runner.snapshot_days(1)[0])
    runner.materialize("feast")
    promoted, verdict = retrain_like_served(runner)
    return runner, promoted, verdict


def register_copy_of_champion(
    registry: ModelRegistry, *, reason: str | None = None, source: ModelRegistry | None = None
) -> ModelVersion:
    """Register a new version with the champion's files and manifest (of ``source``, default the same
    registry); promoted when ``reason`` is given."""
    import json

    old = (source or registry).champion()
    staged = registry.stage()
    shutil.copytree(old.path, staged, dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.json"))
    stored = json.loads((old.path / "manifest.json").read_text())
    manifest = {k: v for k, v in stored.items() if k not in ("version", "created", "files", "code_version")}
    new = registry.register(staged, manifest=manifest)
    if reason is not None:
        registry.promote(new.version, reason=reason)
    return new


# Events in each real sample in ../shared/data (its README), all valid.
SAMPLE_EVENTS = {"retailrocket": 9_385, "taobao": 84_475, "otto": 862}
REPORTED_METHODS = {"popular", "trending", "covis", "als", "als+lightgbm"}


def check_sample_home(home: Path, source: str) -> None:
    """A home where `recs run --source SOURCE` ran: every event stored once and none quarantined, the
    newest snapshot has a row for every user seen before it, and the evaluation reports every method."""
    import json

    from recs_pipeline.warehouse import db

    settings = Settings.from_env(home)
    with db.connect(settings.duckdb_path) as con:
        stored, quarantined = con.execute(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM quarantine)"
        ).fetchone()
        users = con.execute("SELECT count(DISTINCT user_id) FROM events").fetchone()[0]
        snapshot_users = con.execute(
            "SELECT count(*) FROM user_features WHERE event_timestamp = (SELECT max(event_timestamp) FROM user_features)"
        ).fetchone()[0]
    assert (stored, quarantined) == (SAMPLE_EVENTS[source], 0)
    assert snapshot_users == users  # the newest snapshot has a row for every user seen before it
    report = json.loads((settings.reports_dir / "evaluation.json").read_text())
    assert set(report) >= REPORTED_METHODS and report["users"] > 0
