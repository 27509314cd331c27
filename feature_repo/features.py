"""Feature views over the sources in data_sources.py."""

from datetime import timedelta

from data_sources import (
    item_features_source,
    user_category_features_source,
    user_features_source,
    user_profile_source,
    user_session_push_source,
)
from entities import category, item, user
from feast import FeatureView, Field
from feast.types import Array, Bool, Float64, Int64, String

# Snapshots are daily; a value older than this is treated as missing.
SNAPSHOT_TTL = timedelta(days=30)


def _ints(*names: str) -> list[Field]:
    return [Field(name=n, dtype=Int64) for n in names]


user_features = FeatureView(
    name="user_features",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[
        *_ints(
            "views_1h", "views_24h", "views_7d", "views_30d",
            "carts_1h", "carts_24h", "carts_7d", "carts_30d",
            "purchases_1h", "purchases_24h", "purchases_7d", "purchases_30d",
            "favorites_30d", "distinct_items_30d", "sessions_30d",
        ),
        Field(name="cart_rate_30d", dtype=Float64),
        Field(name="purchase_rate_30d", dtype=Float64),
        Field(name="seconds_since_last_event", dtype=Float64),
        Field(name="top_category_id", dtype=String),
        Field(name="top_category_share", dtype=Float64),
        Field(name="avg_price_30d", dtype=Float64),
    ],
    source=user_features_source,
    online=True,
    description="User activity as of the snapshot time.",
)

item_features = FeatureView(
    name="item_features",
    entities=[item],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="category_id", dtype=String),
        Field(name="price", dtype=Float64),
        Field(name="available", dtype=Bool),
        *_ints(
            "views_1h", "views_24h", "views_7d", "views_30d",
            "carts_24h", "carts_7d", "carts_30d",
            "purchases_24h", "purchases_7d", "purchases_30d",
            "distinct_users_7d",
        ),
        Field(name="cart_rate_30d", dtype=Float64),
        Field(name="purchase_rate_30d", dtype=Float64),
        Field(name="trend_24h_vs_7d", dtype=Float64),
        Field(name="seconds_since_last_event", dtype=Float64),
    ],
    source=item_features_source,
    online=True,
    description="Item popularity, conversion, trend and catalog row as of the snapshot time.",
)

user_category_features = FeatureView(
    name="user_category_features",
    entities=[user, category],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="affinity_30d", dtype=Float64),
        Field(name="affinity_share_30d", dtype=Float64),
        *_ints("events_30d", "purchases_30d", "hides_30d"),
    ],
    source=user_category_features_source,
    online=True,
    description="Decayed, event-type weighted affinity of a user for a category, and the user's hides of its items.",
)

user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="hist_item_ids", dtype=Array(String)),
        Field(name="hist_weights", dtype=Array(Float64)),
        Field(name="hist_views", dtype=Array(Int64)),
        Field(name="hist_carts", dtype=Array(Int64)),
        Field(name="hist_purchases", dtype=Array(Int64)),
        Field(name="hist_last_unix", dtype=Array(Float64)),
        Field(name="hist_last_purchase_unix", dtype=Array(Float64)),
        Field(name="cat_ids", dtype=Array(String)),
        Field(name="cat_affinity_30d", dtype=Array(Float64)),
        Field(name="cat_affinity_share_30d", dtype=Array(Float64)),
        Field(name="cat_events_30d", dtype=Array(Int64)),
        Field(name="cat_purchases_30d", dtype=Array(Int64)),
        Field(name="cat_hides_30d", dtype=Array(Int64)),
        # items the user hid (negative feedback), most recent first: never recommended to them
        Field(name="hidden_item_ids", dtype=Array(String)),
        # items the service showed the user in the last 24 h, and how often since their last event with
        # each (the exposure log): no-repeat rotation
        Field(name="shown_item_ids", dtype=Array(String)),
        Field(name="shown_counts", dtype=Array(Int64)),
        Field(name="as_of_unix", dtype=Float64),
    ],
    source=user_profile_source,
    online=True,
    description="Recent item history, category affinities and hidden items of a user as aligned arrays "
    "(one online read per request).",
)

user_session_features = FeatureView(
    name="user_session_features",
    entities=[user],
    ttl=timedelta(hours=1),
    schema=[
        Field(name="session_id", dtype=String),
        # the session's most recent events, oldest first, position-aligned
        Field(name="session_item_ids", dtype=Array(String)),
        Field(name="session_event_types", dtype=Array(String)),
        Field(name="session_event_unix", dtype=Array(Float64)),
        *_ints("session_views", "session_carts", "session_purchases"),
        # when the row was written (unix seconds, whole microseconds): strictly increasing per user, so
        # the next writer can stamp its row later than this one (see serving/session.py)
        Field(name="pushed_unix", dtype=Float64),
        Field(name="last_event_unix", dtype=Int64),
    ],
    source=user_session_push_source,
    online=True,
    description="The user's current session, pushed in real time by the event collector.",
)
