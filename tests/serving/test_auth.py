"""Authentication of the scoring service through the real app: API keys with scopes (issue 14, item 1)."""

import json
import logging
import stat
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from homes import copy_home

from recs_pipeline.serving import auth as auth_module
from recs_pipeline.serving.app import create_app
from recs_pipeline.serving.auth import AuthConfigError, new_key, read_keys
from recs_pipeline.settings import AuthSettings, ServeSettings

PRODUCTION = "feature_store.production.yaml"


@pytest.fixture(scope="module")
def home(served_home, tmp_path_factory):
    return copy_home(served_home, tmp_path_factory.mktemp("auth") / "home")


@pytest.fixture(scope="module")
def keys(home):
    """Three keys in the home's keys file (the default path): a writer, a reader and an admin."""
    path = AuthSettings(auth="on").keys_path(home)
    return {
        "writer": new_key(path, name="shop-writer", scopes="events:write"),
        "reader": new_key(path, name="shop-reader", scopes=["recommendations:read"]),
        "admin": new_key(path, name="ops", scopes="admin"),
    }


@pytest.fixture(scope="module")
def client(home, keys):
    app = create_app(home, ServeSettings(online_timeout_ms=2000), AuthSettings(auth="on", write_limits="off"))
    with TestClient(app) as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def event(user: str = "auth-user") -> dict:
    return {"user_id": user, "item_id": "i1", "event_type": "view", "ts": datetime.now(UTC).isoformat()}


def refusals(client: TestClient, admin: str, status: int, reason: str) -> float:
    text = client.get("/metrics", headers=bearer(admin)).text
    for line in text.splitlines():
        if line.startswith(f'recs_auth_refusals_total{{reason="{reason}",status="{status}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_default_follows_the_feast_profile(home):
    embedded = AuthSettings(auth="auto")
    assert embedded.enabled(home) is False
    assert embedded.enabled(home.model_copy(update={"feast_yaml": PRODUCTION})) is True
    assert AuthSettings(auth="off").enabled(home.model_copy(update={"feast_yaml": PRODUCTION})) is False
    assert AuthSettings(auth="on").enabled(home) is True
    # auto + embedded: the app answers without a key (existing clients, tests and the demo)
    with TestClient(create_app(home, ServeSettings(online_timeout_ms=2000), embedded)) as open_client:
        assert open_client.get("/recommendations/u1").status_code == 200
        spec = open_client.get("/openapi.json").json()
        assert "securitySchemes" not in spec.get("components", {})
        assert not {"401", "403", "429"} & spec["paths"]["/events"]["post"]["responses"].keys()


def test_production_profile_without_keys_does_not_start(home, tmp_path):
    production = home.model_copy(update={"feast_yaml": PRODUCTION})
    empty = tmp_path / "keys.json"
    with pytest.raises(AuthConfigError, match="holds no API key") as raised:
        create_app(production, ServeSettings(), AuthSettings(api_keys_file=empty))
    assert "new-key" in str(raised.value) and str(empty) in str(raised.value)


def test_no_key_or_an_unknown_key_is_a_401(client, keys):
    before = refusals(client, keys["admin"], 401, "missing")
    missing = client.get("/recommendations/u1")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "an API key is required" in missing.json()["detail"]
    assert refusals(client, keys["admin"], 401, "missing") == before + 1
    unknown = client.post("/events", json={"events": [event()]}, headers=bearer("recs_not-a-key"))
    assert unknown.status_code == 401 and "not valid" in unknown.json()["detail"]
    assert "recs_not-a-key" not in unknown.text
    assert client.get("/metrics").status_code == 401


def test_a_missing_scope_is_a_403_naming_it(client, keys):
    before = refusals(client, keys["admin"], 403, "scope:events:write")
    posted = client.post("/events", json={"events": [event()]}, headers=bearer(keys["reader"]))
    assert posted.status_code == 403
    assert "'shop-reader' lacks the scope 'events:write'" in posted.json()["detail"]
    assert refusals(client, keys["admin"], 403, "scope:events:write") == before + 1
    read = client.get("/recommendations/u1", headers=bearer(keys["writer"]))
    assert read.status_code == 403 and "'recommendations:read'" in read.json()["detail"]
    assert client.get("/items/i1/similar", headers=bearer(keys["writer"])).status_code == 403
    cart = client.post("/recommendations/cart", json={"item_ids": ["i1"]}, headers=bearer(keys["writer"]))
    assert cart.status_code == 403
    items = client.post("/items", json={"items": [{"item_id": "i1"}]}, headers=bearer(keys["reader"]))
    assert items.status_code == 403
    assert client.get("/metrics", headers=bearer(keys["reader"])).status_code == 403


def test_the_right_scope_passes(client, keys, home):
    posted = client.post("/events", json={"events": [event()]}, headers=bearer(keys["writer"]))
    assert posted.status_code == 202 and posted.json()["accepted"] == 1, posted.text
    assert client.get("/recommendations/u1", headers=bearer(keys["reader"])).status_code == 200
    # X-API-Key works too
    assert client.get("/recommendations/u1", headers={"X-API-Key": keys["reader"]}).status_code == 200
    # admin implies every scope
    assert client.post("/events", json={"events": [event()]}, headers=bearer(keys["admin"])).status_code == 202
    assert client.get("/recommendations/u1", headers=bearer(keys["admin"])).status_code == 200
    assert client.get("/metrics", headers=bearer(keys["admin"])).status_code == 200


def test_operations_and_docs_stay_open(client):
    for path in ("/healthz", "/readyz", "/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_openapi_declares_the_key_schemes(client):
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert (schemes["HTTPBearer"]["type"], schemes["HTTPBearer"]["scheme"]) == ("http", "bearer")
    assert schemes["APIKeyHeader"]["name"] == "X-API-Key"
    assert {"HTTPBearer": []} in spec["paths"]["/events"]["post"]["security"]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert {"401", "403"} <= spec["paths"]["/events"]["post"]["responses"].keys()
    assert {"401", "403"} <= spec["paths"]["/items/{item_id}/similar"]["get"]["responses"].keys()


def test_keys_are_never_logged_nor_echoed(client, keys, caplog):
    caplog.set_level(logging.DEBUG)
    answers = [
        client.post("/events", json={"events": [event()]}, headers=bearer(keys["writer"])),
        client.post("/events", json={"events": [{"user_id": 1}]}, headers=bearer(keys["writer"])),  # a 422
        client.get("/recommendations/u1", headers=bearer(keys["writer"])),  # a 403
        client.get("/recommendations/u1", headers={"X-API-Key": keys["reader"]}),
    ]
    assert [a.status_code for a in answers] == [202, 422, 403, 200]
    secrets = [keys["writer"], keys["reader"], keys["writer"].removeprefix("recs_")]
    for text in [caplog.text, *(a.text for a in answers), *(json.dumps(dict(a.headers)) for a in answers)]:
        assert not any(s in text for s in secrets)
    # the access log names the key
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "recs_pipeline.access"]
    assert {"shop-writer", "shop-reader"} <= {line.get("key") for line in access}


def test_new_key_stores_only_a_hash(tmp_path, capsys):
    path = tmp_path / "secrets" / "keys.json"
    args = ["new-key", "--name", "shop", "--scopes", "events:write,recommendations:read", "--file", str(path)]
    assert auth_module.main(args) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("recs_") and len(key) > 40
    assert key not in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (stored,) = read_keys(path)
    assert stored.name == "shop" and stored.scopes == {"events:write", "recommendations:read"}
    # a duplicate name or an unknown scope: refused, the file unchanged
    assert auth_module.main(["new-key", "--name", "shop", "--scopes", "admin", "--file", str(path)]) == 2
    assert auth_module.main(["new-key", "--name", "x", "--scopes", "events:delete", "--file", str(path)]) == 2
    assert len(read_keys(path)) == 1
