"""Offline sources (parquet exported by the pipeline) and the push source for session features.

Paths are absolute, built from RECS_FEATURES_DIR or RECS_HOME (``recs feast`` and the pipeline pass
both to the ``feast`` CLI, from ``Settings.feast_env``); without them, ``<repo>/data`` as in the
package's default.
"""

import os
from pathlib import Path

from feast import FileSource, PushSource


def _features_dir() -> Path:
    explicit = os.environ.get("RECS_FEATURES_DIR")
    if explicit:
        return Path(explicit).resolve()
    home = os.environ.get("RECS_HOME") or Path(__file__).resolve().parents[1] / "data"
    return (Path(home) / "features").resolve()


def _parquet(table: str) -> str:
    return str(_features_dir() / f"{table}.parquet")


user_features_source = FileSource(
    name="user_features_source",
    path=_parquet("user_features"),
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description="User feature snapshots computed as of event_timestamp (sql/user_features.sql).",
)

item_features_source = FileSource(
    name="item_features_source",
    path=_parquet("item_features"),
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description="Item feature snapshots computed as of event_timestamp (sql/item_features.sql).",
)

user_category_features_source = FileSource(
    name="user_category_features_source",
    path=_parquet("user_category_features"),
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description="User x category affinity snapshots (sql/user_category_features.sql).",
)

user_profile_source = FileSource(
    name="user_profile_source",
    path=_parquet("user_profile"),
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description="Per-user recent item history and category affinities as arrays (sql/user_profile.sql).",
)

# Real-time session features are pushed by the event collector; the batch source holds their
# offline log so training can see them point in time.
user_session_batch_source = FileSource(
    name="user_session_batch_source",
    path=_parquet("user_session_features"),
    timestamp_field="event_timestamp",
    description="Offline log of pushed session features.",
)

user_session_push_source = PushSource(
    name="user_session_push_source",
    batch_source=user_session_batch_source,
    description="Session features pushed by POST /events the moment events arrive.",
)
