"""Erasure through the service (issue 14 item 4): ``DELETE /users/{user_id}`` needs the admin scope,
answers the per-store counts, and the worker that answered stops serving the erased user's ALS factors
at once (the champion's files were rewritten under the same version: it is loaded again).

What the erasure removes and the search of every store are tests/privacy/test_erasure.py's; this file
checks the HTTP route, its scope and the served model."""

import pytest
from fastapi.testclient import TestClient
from homes import copy_home

from recs_pipeline.models.registry import SIGNATURE_FIELD, ModelRegistry
from recs_pipeline.serving.app import create_app
from recs_pipeline.serving.auth import new_key
from recs_pipeline.settings import AuthSettings, ServeSettings
from recs_pipeline.warehouse import db

pytestmark = pytest.mark.integration  # a copy of the served home, rewritten


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def home(served_home, tmp_path_factory):
    return copy_home(served_home, tmp_path_factory.mktemp("admin-erasure") / "home")


def test_delete_user_needs_admin_and_the_served_model_forgets_the_user_at_once(home):
    path = AuthSettings(auth="on").keys_path(home)
    reader = new_key(path, name="shop", scopes="recommendations:read")
    admin = new_key(path, name="ops", scopes="admin")
    with db.connect(home.duckdb_path, read_only=True) as con:
        (user,) = con.execute(
            "SELECT user_id FROM events GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1"
        ).fetchone()
    registry = ModelRegistry(home.models_dir)
    champion = registry.champion()
    assert champion is not None
    app = create_app(home, ServeSettings(online_timeout_ms=2000, exposure_log=False), AuthSettings(auth="on"))
    with TestClient(app) as client:
        before = client.get(f"/recommendations/{user}", headers=bearer(reader)).json()
        assert "no_personal_signal" not in before["fallback_reasons"]  # ALS factors and an online profile

        assert client.delete(f"/users/{user}").status_code == 401
        refused = client.delete(f"/users/{user}", headers=bearer(reader))
        assert refused.status_code == 403 and "admin" in refused.json()["detail"]
        assert client.get(f"/recommendations/{user}", headers=bearer(reader)).json()["items"]  # nothing erased

        answer = client.delete(f"/users/{user}", headers=bearer(admin))
        assert answer.status_code == 200, answer.text
        report = answer.json()
        assert report["warehouse_rows"]["events"] > 0
        assert report["model_versions"][champion.version] == 1  # its one row of ALS user factors
        assert sum(report["online_rows"].values()) > 0
        assert user not in answer.text  # counts only, the id is not repeated

        # same version, re-signed manifest: this worker already serves the rewritten files
        rewritten = registry.champion()
        assert rewritten is not None and rewritten.version == champion.version
        assert rewritten.manifest[SIGNATURE_FIELD] != champion.manifest[SIGNATURE_FIELD]
        assert app.state.holder.version == champion.version
        after = client.get(f"/recommendations/{user}", headers=bearer(reader)).json()
        assert "no_personal_signal" in after["fallback_reasons"]  # no factors, no profile, no session

        again = client.delete(f"/users/{user}", headers=bearer(admin)).json()
        assert again["warehouse_rows"].get("events", 0) == 0 and not again["model_versions"]
