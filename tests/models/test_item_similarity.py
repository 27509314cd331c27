"""The item lists' ranking logic on small hand-built arrays whose right answers are known."""

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from recs_pipeline.models import item_similarity as sim
from recs_pipeline.models import ranker_features as rf
from recs_pipeline.models.item_similarity import (
    ItemNeighbours,
    Proposal,
    Ranked,
    als_neighbours,
    content_neighbours,
    fuse,
    matrix_row,
    price_bands,
    reason,
)

N = 8
ALL = np.ones(N, dtype=bool)


def ranked(*items: int) -> Ranked:
    return Ranked(np.asarray(items, dtype=np.int64), np.arange(len(items), 0, -1, dtype=np.float64))


def test_fusion_sums_reciprocal_ranks_and_agreement_beats_one_lists_head():
    lists = [
        Proposal(sim.COVIS, 0, ranked(5, 3, 4)),
        Proposal(sim.ALS, 0, ranked(3, 6)),
        Proposal(sim.CONTENT, 0, ranked(7)),
    ]
    found = fuse(lists, 10, rrf_k=60)
    assert [r.item for r in found] == [3, 5, 7, 6, 4]
    by_item = {r.item: r for r in found}
    assert by_item[3].score == pytest.approx(1 / 62 + 1 / 61)
    assert by_item[5].score == pytest.approx(1 / 61)
    assert by_item[3].sources == (sim.COVIS, sim.ALS)
    # credited to the list that ranked it best: ALS ranked 3 first, co-visitation second
    assert (by_item[3].source, by_item[6].source, by_item[4].source) == (sim.ALS, sim.ALS, sim.COVIS)
    # equal scores (5 and 7 are both first of one list) fall to the smaller position
    assert [r.item for r in fuse(lists, 3)] == [3, 5, 7]
    assert fuse(lists, 0) == [] and fuse([Proposal(sim.COVIS, 0, Ranked.empty())], 5) == []


def test_fusion_credits_the_anchor_whose_list_ranked_the_item_best():
    lists = [
        Proposal(sim.BOUGHT_TOGETHER, 1, ranked(4, 2)),
        Proposal(sim.BOUGHT_TOGETHER, 6, ranked(2)),
        Proposal(sim.COVIS, 1, ranked(2)),
    ]
    two = next(r for r in fuse(lists, 5) if r.item == 2)
    # ranked first by 6's bought-together list and by 1's co-visitation: the tie goes to SOURCE_ORDER
    assert (two.source, two.anchor, two.sources) == (sim.BOUGHT_TOGETHER, 6, (sim.BOUGHT_TOGETHER, sim.COVIS))
    assert reason(two, np.asarray([f"i{j}" for j in range(N)])) == "bought together with i6"


def test_a_matrix_row_keeps_allowed_positive_columns_by_value_then_position():
    matrix = sp.csr_matrix(
        (np.asarray([2.0, 5.0, 2.0, 0.0, 9.0]), (np.zeros(5, dtype=int), np.asarray([4, 1, 2, 3, 6]))), shape=(N, N)
    )
    allowed = ALL.copy()
    allowed[6] = False
    row = matrix_row(matrix, 0, allowed, depth=10)
    assert row.items.tolist() == [1, 2, 4] and row.scores.tolist() == [5.0, 2.0, 2.0]
    assert matrix_row(matrix, 0, allowed, depth=2).items.tolist() == [1, 2]
    assert len(matrix_row(matrix, 5, allowed, depth=10)) == 0


def test_als_neighbours_are_positive_cosines_without_the_item_and_the_refused():
    factors = np.asarray([[1, 0], [0, 1], [2, 0.2], [-1, 0], [1, 1], [0, 0]], dtype=np.float32)
    unit = factors / np.maximum(np.linalg.norm(factors, axis=1, keepdims=True), 1e-12)
    als_to_index = np.asarray([7, 6, 5, 4, 3, 2], dtype=np.int64)  # ALS rows -> index positions
    found, of_one = als_neighbours(unit, np.asarray([0, 1]), als_to_index, ALL, depth=10)
    # row 2 (cosine 0.995), row 4 (0.707); row 1 (0), row 3 (-1) and the zero row 5 are not similar
    assert found.items.tolist() == [5, 3]
    assert found.scores == pytest.approx([2 / np.hypot(2, 0.2), 1 / np.sqrt(2)])
    # row 1 (0, 1): row 4 (0.707), then row 2 (0.0995)
    assert of_one.items.tolist() == [3, 5]
    allowed = ALL.copy()
    allowed[5] = False
    assert [r.items.tolist() for r in als_neighbours(unit, np.asarray([0]), als_to_index, allowed, depth=10)] == [[3]]
    assert als_neighbours(unit, np.asarray([], dtype=np.int64), als_to_index, ALL, depth=10) == []


def test_price_bands_are_factors_of_two():
    bands = price_bands(np.asarray([10.0, 15.9, 16.0, 1.0, 0.0, np.nan, -3.0]))
    assert bands[:4].tolist() == [3.0, 3.0, 4.0, 0.0]
    assert np.isnan(bands[4:]).all()


def test_content_neighbours_nearest_band_then_most_viewed_unpriced_last():
    members = np.asarray([0, 1, 2, 3, 4, 5], dtype=np.int64)
    bands = np.asarray([3.0, 3.0, 5.0, 4.0, 3.0, np.nan, 3.0, 3.0])
    views = np.asarray([0.0, 5.0, 100.0, 1.0, 9.0, 50.0, 0.0, 0.0])
    found = content_neighbours(members, 0, bands, views, ALL, depth=10)
    assert found.items.tolist() == [4, 1, 3, 2, 5]
    assert found.scores.tolist() == [1.0, 1.0, 0.5, pytest.approx(1 / 3), 0.0]
    allowed = ALL.copy()
    allowed[4] = False
    assert content_neighbours(members, 0, bands, views, allowed, depth=2).items.tolist() == [1, 3]
    # an item without a price: its category by views
    assert content_neighbours(members, 5, bands, views, ALL, depth=10).items.tolist() == [2, 4, 1, 3, 0]


def fake_bundle(*, bought: bool) -> SimpleNamespace:
    """Eight items: 0-3 in category a, 4-7 in b; co-visitation 0 -> 1, 4, 2; bought together 0 -> 5;
    ALS factors that put 3 next to 0; the popular list 7, 6, 5, ..."""

    def matrix(entries: dict[tuple[int, int], float]) -> sp.csr_matrix:
        rows, cols = zip(*entries, strict=True)
        return sp.csr_matrix((list(entries.values()), (rows, cols)), shape=(N, N))

    features = np.full((N, len(rf.ITEM_FEATURES)), np.nan)
    features[:, rf.ITEM_FEATURES.index("price")] = [10, 11, 40, 12, 10, 10, 10, 10]
    features[:, rf.ITEM_FEATURES.index("views_30d")] = [1, 2, 3, 4, 5, 6, 7, 8]
    factors = np.asarray([[1, 0], [0, 1], [0, 1], [1, 0.1], [0, 1], [0, 1], [0, 1], [0, 1]], dtype=np.float32)
    sources = SimpleNamespace(
        covis=matrix({(0, 1): 3.0, (0, 4): 2.0, (0, 2): 1.0, (5, 6): 1.0}),
        als=SimpleNamespace(item_factors=factors),
        als_to_index=np.arange(N),
        index_to_als=np.arange(N),
        popular_items=np.asarray([7, 6, 5, 4, 3, 2, 1, 0]),
        popular_scores=np.arange(N, 0, -1, dtype=np.float64),
    )
    items = SimpleNamespace(category=np.asarray(["a"] * 4 + ["b"] * 4, dtype=object), features=features)
    return SimpleNamespace(
        index=np.arange(N),
        sources=sources,
        items=items,
        bought_together=matrix({(0, 5): 2.0, (5, 0): 2.0}) if bought else None,
    )


def test_similar_items_fuse_the_three_sources_never_the_item_or_a_refused_one():
    nb = ItemNeighbours(fake_bundle(bought=True))
    found = nb.similar(0, ALL, 10)
    items = [r.item for r in found]
    assert 0 not in items
    # 3: first of ALS and of content (band 3, most viewed); 1: first of co-visitation, second of content;
    # 2: third of both; 4: second of co-visitation only. 5-7: neither co-viewed, ALS-similar nor of category a
    assert items == [3, 1, 2, 4]
    assert [r.score for r in found] == pytest.approx([2 / 61, 1 / 61 + 1 / 62, 2 / 63, 1 / 62])
    assert {r.item: r.sources for r in found}[3] == (sim.ALS, sim.CONTENT)
    allowed = ALL.copy()
    allowed[1] = False
    assert 1 not in [r.item for r in nb.similar(0, allowed, 10)]
    assert allowed[1] == np.False_ and allowed[0]  # the caller's mask is not changed


def test_bought_together_is_topped_up_from_covisitation_and_flags_a_bundle_without_the_matrix():
    found, fallbacks = ItemNeighbours(fake_bundle(bought=True)).bought_together(0, ALL, 3)
    assert [(r.item, r.source) for r in found] == [(5, sim.BOUGHT_TOGETHER), (1, sim.COVIS), (4, sim.COVIS)]
    assert fallbacks == [sim.FILLED_WITH_COVIS]
    found, fallbacks = ItemNeighbours(fake_bundle(bought=True)).bought_together(0, ALL, 1)
    assert [r.item for r in found] == [5] and fallbacks == []
    old, fallbacks = ItemNeighbours(fake_bundle(bought=False)).bought_together(0, ALL, 3)
    assert [r.item for r in old] == [1, 4, 2] and fallbacks == [sim.NO_BOUGHT_TOGETHER_MATRIX]
    allowed = ALL.copy()
    allowed[5] = False
    found, _ = ItemNeighbours(fake_bundle(bought=True)).bought_together(0, allowed, 3)
    assert 5 not in [r.item for r in found]


def test_a_cart_excludes_its_items_and_falls_back_to_popular():
    nb = ItemNeighbours(fake_bundle(bought=True))
    found, fallbacks = nb.cart([0, 5], ALL, 3)
    items = [r.item for r in found]
    assert not {0, 5} & set(items) and len(items) == 3 and fallbacks == []
    assert items[0] == 1  # co-viewed with 0, first of its list, and ALS-similar to 5 as well
    found, fallbacks = nb.cart([0], ALL, 8)
    assert 0 not in [r.item for r in found] and fallbacks == [sim.FILLED_WITH_POPULAR]
    assert found[-1].source == sim.POPULAR and found[-1].sources == (sim.POPULAR,)
    empty, fallbacks = nb.cart([], ALL, 3)
    assert [r.item for r in empty] == [7, 6, 5] and fallbacks == [sim.NO_KNOWN_CART_ITEMS]
    assert reason(empty[0], np.asarray([f"i{j}" for j in range(N)])) == "popular right now"
    allowed = ALL.copy()
    allowed[7] = False
    assert [r.item for r in nb.cart([], allowed, 2)[0]] == [6, 5]
    _, fallbacks = ItemNeighbours(fake_bundle(bought=False)).cart([0], ALL, 3)
    assert fallbacks == [sim.NO_BOUGHT_TOGETHER_MATRIX]


def test_the_recipe_records_the_bought_together_fit_and_an_old_recipe_has_none():
    from recs_pipeline.models.training import (
        BOUGHT_TOGETHER_WEIGHTS,
        RetrievalParams,
        retrieval_params_from_json,
        retrieval_params_json,
    )

    params = RetrievalParams()
    raw = retrieval_params_json(params)
    assert raw["bought_together"]["type_weights"] == dict(BOUGHT_TOGETHER_WEIGHTS)
    assert retrieval_params_from_json(raw) == params
    del raw["bought_together"]  # a recipe written before the table existed
    assert retrieval_params_from_json(raw).bought_together is None
