"""No training/serving skew: the ranker's inputs assembled by the service from the online store
equal the rows training builds through Feast's offline store for the same user, item and time."""

import math
from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from recs_pipeline.feast import feast_store
from recs_pipeline.models import ranking
from recs_pipeline.models.registry import ModelRegistry
from recs_pipeline.serving.model import ServingModel
from recs_pipeline.serving.online import OnlineReader
from recs_pipeline.serving.recommender import Candidate, Recommender, merge_history
from recs_pipeline.warehouse.features import PROFILE_MAX_ITEMS

SOURCE_COLUMNS = {f"{s}_{x}" for s in ("als", "covis", "popular", "trending") for x in ("score", "rank")} | {
    "n_sources",
    "best_rank",
}
# Feast returns online timestamps in whole seconds: the age of an interaction may differ by < 1 s.
TOLERANCE = {"ui_seconds_since_last": 1.0}


@pytest.fixture(scope="module")
def setup(served_home):
    model = ServingModel.load_champion(ModelRegistry(served_home.models_dir))
    store = feast_store.open_store(served_home)
    profiles = pl.read_parquet(served_home.features_dir / "user_profile.parquet")
    as_of = profiles["event_timestamp"].max()
    return model, store, profiles.filter(pl.col("event_timestamp") == as_of), as_of


def test_served_features_equal_training_rows(setup, served_home):
    model, store, profiles, as_of = setup
    # users whose whole history fits the profile (it keeps the PROFILE_MAX_ITEMS most recent items;
    # older ones, already decayed, serve without history features: a documented approximation)
    complete = profiles.filter(pl.col("hist_item_ids").list.len() < PROFILE_MAX_ITEMS)
    users = complete.sort(pl.col("hist_item_ids").list.len(), descending=True)["user_id"].head(5).to_list()
    reader = OnlineReader(store, timeout_s=10.0)
    interactions = (
        pl.scan_parquet(served_home.features_dir / "interactions.parquet")
        .filter(pl.col("event_timestamp") == as_of)
        .collect()
    )
    recommender = Recommender(model)
    compared = 0
    for user in users:
        ctx = reader.read(user)
        assert ctx.online_ok and ctx.profile_as_of == math.floor(as_of.timestamp())
        history, reference = merge_history(ctx)
        # items the user touched (history features set) and popular ones (mostly not touched)
        items = list(dict.fromkeys([*list(history)[:10], *model.popular.item_ids[:10]]))
        cands = {i: Candidate(i, {"popular": 0.0}, {"popular": 1}) for i in items}  # sources are not compared
        served = recommender.features(ctx, items, cands, history, reference)

        pairs = pl.DataFrame({"user_id": [user] * len(items), "item_id": items})
        rows = ranking.fetch_features(store, pairs, as_of=as_of)
        rows = ranking.add_history_features(rows, interactions.filter(pl.col("user_id") == user), as_of=as_of)
        rows = ranking.add_candidate_features(rows)
        trained = {r["item_id"]: r for r in rows.iter_rows(named=True)}
        for r, item in enumerate(items):
            for j, feature in enumerate(model.features):
                if feature in SOURCE_COLUMNS:
                    continue
                expected = trained[item][feature]
                got = served[r, j]
                compared += 1
                if expected is None or (isinstance(expected, float) and math.isnan(expected)):
                    assert np.isnan(got), (user, item, feature, expected, got)
                else:
                    assert got == pytest.approx(float(expected), rel=1e-9, abs=TOLERANCE.get(feature, 1e-9)), (
                        user,
                        item,
                        feature,
                    )
    assert compared > 500


def test_history_features_see_session_events_newer_than_the_profile(setup):
    """Events pushed after the snapshot add to the item's history exactly once."""
    model, store, profiles, as_of = setup
    row = profiles.sort(pl.col("hist_item_ids").list.len(), descending=True).row(0, named=True)
    reader = OnlineReader(store, timeout_s=10.0)
    ctx = reader.read(row["user_id"])
    item = row["hist_item_ids"][0]
    before, _ = merge_history(ctx)
    t = (as_of + timedelta(minutes=5)).timestamp()
    ctx.session = {
        "session_item_ids": [item, item],
        "session_event_types": ["view", "purchase"],
        # the first event predates the snapshot (already counted in it): ignored
        "session_event_unix": [(as_of - timedelta(minutes=5)).timestamp(), t],
    }
    after, reference = merge_history(ctx)
    assert reference == pytest.approx(t)
    assert after[item].views == before[item].views
    assert after[item].purchases == before[item].purchases + 1
    assert after[item].last_purchase_unix == pytest.approx(t)
