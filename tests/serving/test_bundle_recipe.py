"""A bundle trained with non-default settings is served with them, never with code defaults.

The session's served home is trained with non-default event weights and half-life (settings) and
non-default candidate limits (run config); see ``SERVED_WEIGHTS`` / ``SERVED_LIMITS`` in conftest.
"""

import numpy as np
import pytest

from recs_pipeline.defs.models import CandidateConfig
from recs_pipeline.models import ranker_features as rf
from recs_pipeline.models.bundle import Bundle, BundleError, Recipe, read_recipe, served_recipe
from recs_pipeline.models.registry import ModelRegistry
from recs_pipeline.serving.online import UserContext
from recs_pipeline.serving.recommender import Recommender, ServeOptions, merge_history
from recs_pipeline.settings import Settings
from recs_pipeline.warehouse.features import Weighting

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bundle(served_home) -> Bundle:
    return Bundle.load_champion(ModelRegistry(served_home.models_dir))


def test_the_manifest_records_the_non_default_training_settings(bundle, served_training):
    weights, limits = served_training
    recipe = bundle.recipe
    expected = Weighting(
        view=float(weights["RECS_WEIGHT_VIEW"]),
        add_to_cart=float(weights["RECS_WEIGHT_ADD_TO_CART"]),
        purchase=float(weights["RECS_WEIGHT_PURCHASE"]),
        favorite=float(weights["RECS_WEIGHT_FAVORITE"]),
        half_life_days=float(weights["RECS_HALF_LIFE_DAYS"]),
    )
    assert recipe.weighting == expected
    assert expected != Weighting.from_settings(Settings.from_env())  # not what this process would default to
    assert recipe.limits == limits
    assert limits != {k: getattr(CandidateConfig(), k) for k in limits}
    assert recipe.features == rf.FEATURES
    assert recipe.feature_service == "ranker_v1"
    assert recipe.consumed.event_types == ("purchase", "add_to_cart") and recipe.consumed.window_days == 20.0
    assert recipe.consumed.chosen_by == "settings" and set(recipe.consumed.repeat_shares) == {
        "view",
        "add_to_cart",
        "purchase",
    }
    assert Recipe.from_json(recipe.to_json()) == recipe  # the manifest round trip


def test_the_service_retrieves_with_the_bundles_limits(bundle, served_home):
    recommender = Recommender(bundle)
    user = str(bundle.sources.als.user_ids[0])  # known to ALS: it proposes exactly its limit
    history, _ = merge_history(UserContext(user_id=user), bundle.recipe.weighting)
    cands, _, _ = recommender.candidates(user, history, 0.0, ServeOptions().limits or bundle.recipe.limits)
    proposed = (~np.isnan(cands.ranks)).sum(axis=0)
    per_source = dict(zip(cands.sources, proposed.tolist(), strict=True))
    assert per_source["als"] == bundle.recipe.limits["als"]
    for name, limit in bundle.recipe.limits.items():
        assert per_source[name] <= limit, name
    # the online refresh computes features with the served recipe too
    assert served_recipe(ModelRegistry(served_home.models_dir)) == bundle.recipe


def test_session_events_are_weighted_with_the_bundles_weights(bundle):
    weighting = bundle.recipe.weighting
    ctx = UserContext(
        user_id="someone-new",
        session={
            "session_item_ids": ["a", "b", "a"],
            "session_event_types": ["view", "add_to_cart", "purchase"],
            "session_event_unix": [1000.0, 1000.0, 1000.0 + weighting.half_life_days * 86400],
        },
    )
    history, reference = merge_history(ctx, weighting)
    assert reference == 1000.0 + weighting.half_life_days * 86400
    assert history["a"].weight == pytest.approx(weighting.view * 0.5 + weighting.purchase)
    assert history["b"].weight == pytest.approx(weighting.add_to_cart * 0.5)


def test_a_version_without_a_recipe_is_refused(tmp_path):
    registry = ModelRegistry(tmp_path / "models")
    staged = registry.stage()
    (staged / "ranker.txt").write_text("not used")
    manifest = {"windows": {}, "data_fingerprint": "x", "feature_service": "ranker_v1", "parameters": {}, "metrics": {}}
    mv = registry.register(staged, manifest=manifest)
    with pytest.raises(BundleError, match="no recipe"):
        read_recipe(mv)


def test_the_service_never_proposes_what_the_bundles_policy_calls_consumed(bundle):
    """Items the user carted or bought within the policy's 20 days are never served; an item only
    viewed is a candidate like any other, and so is one carted 21 days ago."""
    recommender = Recommender(bundle)
    popular = [str(i) for i in bundle.index.ids[bundle.sources.popular_items[:6]]]
    now = 2_000_000_000.0
    day = 86400.0
    ctx = UserContext(
        user_id="someone-new",
        session={
            "session_item_ids": popular[:4],
            "session_event_types": ["add_to_cart", "purchase", "view", "add_to_cart"],
            "session_event_unix": [now, now, now, now - 21 * day],
        },
    )
    history, reference = merge_history(ctx, bundle.recipe.weighting)
    cands, _, consumed = recommender.candidates(ctx.user_id, history, reference, bundle.recipe.limits)
    ids = bundle.index.ids
    assert sorted(ids[consumed].tolist()) == sorted(popular[:2])
    proposed = set(ids[cands.item].tolist())
    assert not proposed & set(popular[:2])
    assert set(popular[2:6]) <= proposed  # the popular list (limit 20) moves up past the consumed two
    # the session's unconsumed items are candidates at once, from the recent source, newest first
    recent = cands.ranks[:, cands.sources.index("recent")]
    mine = np.flatnonzero(~np.isnan(recent))
    assert [ids[cands.item[r]] for r in mine[np.argsort(recent[mine])]] == [popular[2], popular[3]]
    served = [item["item_id"] for item in recommender.recommend(ctx, ServeOptions(k=50)).items]
    assert len(served) == 50 and not set(served) & set(popular[:2])
