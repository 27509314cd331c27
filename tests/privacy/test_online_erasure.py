"""Erasure in the online store of both profiles (embedded SQLite, production Redis on an isolated Feast
project): every row of a view keyed by the user goes, composite keys (user x category) included, and
a user whose id the erased one is a prefix of keeps every row."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from feast.infra.key_encoding_utils import deserialize_entity_key
from feast.types import Array, Bool, Float64, Int64, String
from stores import Profile, open_profile, redis_client

from recs_pipeline.privacy.erasure import forget_user

FILLERS: list[tuple[Any, Any]] = [
    (Array(String), ["i1"]),
    (Array(Float64), [1.0]),
    (Array(Int64), [1]),
    (String, "x"),
    (Int64, 1),
    (Float64, 1.0),
    (Bool, False),
]
ERASED, KEPT = "u1", "u12"  # the erased id is a prefix of the kept one

pytestmark = pytest.mark.integration  # feast apply on two profiles: about 15 s


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def profile(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Profile]:
    with open_profile(request.param, tmp_path_factory.mktemp(f"erase_{request.param}")) as opened:
        yield opened


def write(profile: Profile, view: str, keys: list[dict[str, str]]) -> None:
    fv = profile.store.get_feature_view(view)
    ts = datetime.now(UTC) - timedelta(minutes=5)
    rows = []
    for key in keys:
        row: dict[str, Any] = {**key, "event_timestamp": ts, "created_timestamp": ts}
        for f in fv.features:
            row[f.name] = next(v for t, v in FILLERS if f.dtype == t)
        rows.append(row)
    profile.store.write_to_online_store(view, pd.DataFrame(rows))


def read(profile: Profile, user: str) -> dict[str, Any]:
    got = profile.store.get_online_features(
        features=["user_features:views_30d", "user_profile:hist_item_ids", "user_session_features:session_id"],
        entity_rows=[{"user_id": user}],
    ).to_dict()
    categories = profile.store.get_online_features(
        features=["user_category_features:affinity_30d"],
        entity_rows=[{"user_id": user, "category_id": c} for c in ("c1", "c2")],
    ).to_dict()
    return {
        "views_30d": got["views_30d"][0],
        "hist_item_ids": got["hist_item_ids"][0],
        "session_id": got["session_id"][0],
        "affinity_30d": categories["affinity_30d"],
    }


def test_every_online_row_of_the_user_goes_and_no_other(profile: Profile):
    users = [{"user_id": u} for u in (ERASED, KEPT)]
    for view in ("user_features", "user_profile", "user_session_features"):
        write(profile, view, users)
    write(profile, "user_category_features", [{**u, "category_id": c} for u in users for c in ("c1", "c2")])
    full = {"views_30d": 1, "hist_item_ids": ["i1"], "session_id": "x", "affinity_30d": [1.0, 1.0]}
    assert read(profile, ERASED) == full and read(profile, KEPT) == full

    report = forget_user(profile.settings, ERASED)

    assert read(profile, ERASED) == {
        "views_30d": None,
        "hist_item_ids": None,
        "session_id": None,
        "affinity_30d": [None, None],
    }
    assert read(profile, KEPT) == full
    if profile.name == "sqlite":
        assert report.online_rows == {
            "user_features": 1,
            "user_profile": 1,
            "user_session_features": 1,
            "user_category_features": 2,
        }
    else:  # one hash per entity key holds the user's three views; two (user, category) keys
        assert report.online_rows["user_category_features"] == 2 and report.online_rows["user_profile"] == 1
        project = profile.store.project.encode()
        client = redis_client(profile.settings.redis_url)
        names = [
            deserialize_entity_key(k[: -len(project)], 3).entity_values for k in client.scan_iter(match=b"*" + project)
        ]
        assert names and all(ERASED not in {v.string_val for v in values} for values in names)
