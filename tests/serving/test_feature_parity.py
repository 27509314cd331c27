"""No training/serving skew.

* Feature parity: for the same users, time and candidates, the ranker matrix the service assembles
  from the online store (profile, snapshot, bundle item block) equals the one training assembles
  from Feast's offline rows and the interactions snapshot, for every feature of the contract,
  source scores and ranks included.
* Outcome parity: the service's ranked list equals the batch scorer's list for the same inputs,
  item for item.
"""

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from recs_pipeline.feast import feast_store
from recs_pipeline.models import ranker_features as rf
from recs_pipeline.models import ranking
from recs_pipeline.models.bundle import Bundle
from recs_pipeline.models.registry import ModelRegistry
from recs_pipeline.models.retrieval import candidates_frame
from recs_pipeline.models.scoring import score_users
from recs_pipeline.models.workspace import interactions_at
from recs_pipeline.serving.online import OnlineReader
from recs_pipeline.serving.recommender import Recommender, ServeOptions, merge_history
from recs_pipeline.warehouse.features import PROFILE_MAX_ITEMS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def setup(served_home):
    bundle = Bundle.load_champion(ModelRegistry(served_home.models_dir))
    store = feast_store.open_store(served_home)
    profiles = pl.read_parquet(served_home.features_dir / "user_profile.parquet")
    as_of = profiles["event_timestamp"].max()
    profiles = profiles.filter(pl.col("event_timestamp") == as_of)
    # users whose whole history fits the profile (it keeps the PROFILE_MAX_ITEMS most recent items;
    # older ones, already decayed, serve without history features: a documented approximation)
    complete = profiles.filter(pl.col("hist_item_ids").list.len() < PROFILE_MAX_ITEMS)
    users = complete.sort(pl.col("hist_item_ids").list.len(), descending=True)["user_id"].head(12).to_list()
    interactions = interactions_at(served_home.features_dir, as_of)
    reader = OnlineReader(store, timeout_s=10.0)
    return bundle, store, profiles, as_of, users, interactions, reader


def test_served_features_equal_training_rows_for_every_feature(setup):
    bundle, store, _, as_of, users, interactions, reader = setup
    recommender = Recommender(bundle)
    served, trained, history_rows = [], [], 0
    for user in users[:6]:
        ctx = reader.read(user)
        assert ctx.online_ok and ctx.profile_as_of == as_of.timestamp()
        history, reference = merge_history(ctx, bundle.recipe.weighting)
        cands, _, _ = recommender.candidates(user, history, reference, bundle.recipe.limits)
        served.append(recommender.features(ctx, cands, history, reference))
        history_rows += sum(str(bundle.index.ids[i]) in history for i in cands.item)
        # the same candidates through the training path: Feast offline rows + interactions snapshot
        frame = candidates_frame(cands, user_ids=np.asarray([user], dtype=object), item_ids=bundle.index.ids)
        rows = ranking.fetch_features(store, frame, as_of=as_of)
        rows = ranking.add_history_features(rows, interactions.filter(pl.col("user_id") == user), as_of=as_of)
        # candidates_frame sorts rows by best rank; put them back in the service's (item index) order
        order = {item: r for r, item in enumerate(bundle.index.ids[cands.item].tolist())}
        rows = rows.with_columns(_order=pl.col("item_id").replace_strict(order)).sort("_order").drop("_order")
        trained.append(rf.assemble(rf.inputs_from_rows(rows)))
    served_m, trained_m = np.vstack(served), np.vstack(trained)
    assert served_m.shape == trained_m.shape and served_m.shape[1] == len(rf.FEATURES)
    assert history_rows >= 10, "too few candidates the users touched: history features barely compared"
    for j, feature in enumerate(rf.FEATURES):
        np.testing.assert_array_equal(served_m[:, j], trained_m[:, j], err_msg=feature)
        assert np.isfinite(served_m[:, j]).any(), f"{feature} is missing for every compared row"


def test_service_ranks_exactly_like_the_batch_scorer(setup):
    """Outcome parity: the same users at the same time get the same items in the same order."""
    bundle, store, _, as_of, users, interactions, reader = setup
    recommender = Recommender(bundle)
    options = ServeOptions(k=20)
    batch = score_users(
        bundle,
        store,
        users,
        as_of=as_of,
        interactions=interactions,
        k=options.k,
    )
    compared = 0
    for user in users:
        ranked, _, _, _ = recommender.rank(reader.read(user), options)
        assert not ranked.filled
        served_items = bundle.index.ids[ranked.items].tolist()
        mine = batch.filter(pl.col("user_id") == user).sort("rank")
        assert served_items == mine["item_id"].to_list(), user
        np.testing.assert_allclose(ranked.scores, mine["score"].to_numpy(), rtol=0, atol=1e-12)
        compared += len(served_items)
    assert compared == options.k * len(users)


def test_history_features_see_session_events_newer_than_the_profile(setup):
    """Events pushed after the snapshot add to the item's history exactly once, with the recipe's weights."""
    bundle, _, profiles, as_of, _, _, reader = setup
    row = profiles.sort(pl.col("hist_item_ids").list.len(), descending=True).row(0, named=True)
    ctx = reader.read(row["user_id"])
    item = row["hist_item_ids"][0]
    weighting = bundle.recipe.weighting
    before, _ = merge_history(ctx, weighting)
    t = (as_of + timedelta(minutes=5)).timestamp()
    ctx.session = {
        "session_item_ids": [item, item],
        "session_event_types": ["view", "purchase"],
        # the first event predates the snapshot (already counted in it): ignored
        "session_event_unix": [(as_of - timedelta(minutes=5)).timestamp(), t],
    }
    after, reference = merge_history(ctx, weighting)
    assert reference == pytest.approx(t)
    assert after[item].views == before[item].views
    assert after[item].purchases == before[item].purchases + 1
    assert after[item].last_purchase_unix == pytest.approx(t)
    assert after[item].weight == pytest.approx(before[item].weight + weighting.purchase)


def test_the_contract_reads_exactly_the_ranker_feature_service(setup):
    """The contract's Feast blocks are the applied ``ranker_v1`` service's features, in its order."""
    _, store, *_ = setup
    service = store.get_feature_service(ranking.FEATURE_SERVICE)
    views = {p.name: [f.name for f in p.features] for p in service.feature_view_projections}
    strings = {rf.USER_VIEW: [rf.USER_TOP_CATEGORY], rf.ITEM_VIEW: [rf.ITEM_CATEGORY], rf.CATEGORY_VIEW: []}
    expected = {rf.USER_VIEW: rf.USER_FEATURES, rf.ITEM_VIEW: rf.ITEM_FEATURES, rf.CATEGORY_VIEW: rf.CATEGORY_FEATURES}
    assert set(views) == set(expected)
    for view, names in views.items():
        assert set(strings[view]) <= set(names), view
        assert [n for n in names if n not in strings[view]] == list(expected[view]), view
