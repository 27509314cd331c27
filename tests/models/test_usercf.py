"""User-based collaborative filtering on a matrix whose neighbours are known."""

import numpy as np
import scipy.sparse as sp

from recs_pipeline.models.retrieval.usercf import UserNeighbours


def matrix(rows: list[dict[int, float]], n_items: int) -> sp.csr_matrix:
    data, r, c = [], [], []
    for i, row in enumerate(rows):
        for item, value in row.items():
            r.append(i)
            c.append(item)
            data.append(value)
    return sp.csr_matrix((data, (r, c)), shape=(len(rows), n_items))


# users 0-2 like items 0-3, users 3-5 like items 4-7; item 8 only user 2 has, item 9 only user 5
SEEN = matrix(
    [
        {0: 1, 1: 1, 2: 1},
        {0: 1, 1: 1, 3: 1},
        {1: 1, 2: 1, 3: 1, 8: 1},
        {4: 1, 5: 1, 6: 1},
        {4: 1, 5: 1, 7: 1},
        {5: 1, 6: 1, 7: 1, 9: 1},
    ],
    10,
)


def test_a_history_gets_the_items_of_the_users_who_share_it():
    neighbours = UserNeighbours(SEEN)
    items, scores = neighbours.top(np.array([0, 1]), np.array([1.0, 1.0]), 10, neighbours=10)
    assert set(items.tolist()) == {0, 1, 2, 3, 8}  # only group A's items
    assert (np.diff(scores) <= 0).all() and (scores > 0).all()
    assert items[0] in (0, 1)  # the items every neighbour shares come first


def test_the_users_own_row_is_not_their_neighbour_and_excluded_items_never_come_back():
    neighbours = UserNeighbours(SEEN)
    # user 2 (row 2) asks with their own history: item 8 only they have cannot come back through themselves
    items, _ = neighbours.top(np.array([1, 2, 3, 8]), np.ones(4), 10, neighbours=10, own_row=2)
    assert 8 not in items.tolist()
    items, _ = neighbours.top(np.array([1, 2, 3]), np.ones(3), 10, neighbours=10, exclude=np.array([0, 1]))
    assert not {0, 1} & set(items.tolist())


def test_only_the_closest_neighbours_vote():
    neighbours = UserNeighbours(SEEN)
    # history {5, 6, 7}: user 5 matches it best (3 shared items), then 3 and 4 (2 each)
    items, _ = neighbours.top(np.array([5, 6, 7]), np.ones(3), 10, neighbours=1)
    assert set(items.tolist()) == {5, 6, 7, 9}  # user 5's items only


def test_no_history_no_items():
    neighbours = UserNeighbours(SEEN)
    items, scores = neighbours.top(np.array([], dtype=np.int64), np.array([]), 10, neighbours=5)
    assert len(items) == 0 and len(scores) == 0
    items, _ = neighbours.top(np.array([0]), np.array([0.0]), 10, neighbours=5)  # zero weight counts nothing
    assert len(items) == 0
