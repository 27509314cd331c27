"""Feature services: one per model version, so a model names exactly what it was trained on."""

from feast import FeatureService
from features import item_features, user_category_features, user_features, user_profile, user_session_features

ranker_v1 = FeatureService(
    name="ranker_v1",
    features=[user_features, item_features, user_category_features],
    description="Features of the LightGBM ranker, version 1 (point-in-time snapshots).",
)

realtime_v1 = FeatureService(
    name="realtime_v1",
    features=[user_features, user_profile, user_session_features],
    description="What the scoring service reads per request, in one online lookup: user snapshot, history profile, live session.",
)
