"""The HTTP contract of the service: the OpenAPI document, the 422 body for bad input (lone surrogates,
bytes that are not UTF-8, oversized values), request ids, access logs, per-route metrics and the
offline API docs. In process (TestClient) on a copy of the served home (events land in it)."""

import json
import logging

import pytest
from fastapi.testclient import TestClient
from homes import copy_home

from recs_pipeline.data.landing import landed_files
from recs_pipeline.serving.app import create_app
from recs_pipeline.settings import ServeSettings


@pytest.fixture(scope="module")
def home(served_home, tmp_path_factory):
    return copy_home(served_home, tmp_path_factory.mktemp("api") / "home")


@pytest.fixture(scope="module")
def client(home):
    app = create_app(home, ServeSettings(online_timeout_ms=2000, reload_seconds=60, metrics_dir=None))
    with TestClient(app) as c:
        yield c


def _ref(response: dict, status: str, media: str = "application/json") -> str:
    return response["responses"][status]["content"][media]["schema"]["$ref"].rsplit("/", 1)[-1]


def test_openapi_lists_every_status_with_its_body(client):
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    recs = paths["/recommendations/{user_id}"]["get"]
    assert set(recs["responses"]) == {"200", "422", "503"}
    assert (_ref(recs, "200"), _ref(recs, "422"), _ref(recs, "503")) == ("Recommendations", "ErrorBody", "Unavailable")
    events = paths["/events"]["post"]
    assert set(events["responses"]) == {"202", "413", "422", "503"}
    assert (_ref(events, "202"), _ref(events, "413"), _ref(events, "422"), _ref(events, "503")) == (
        "EventsAccepted",
        "ErrorBody",
        "ErrorBody",
        "ErrorBody",
    )
    assert events["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/EventsIn")
    ready = paths["/readyz"]["get"]
    assert set(ready["responses"]) == {"200", "503"}
    assert _ref(ready, "200") == _ref(ready, "503") == "Readiness"
    assert _ref(paths["/healthz"]["get"], "200") == "Health"
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    schemas = doc["components"]["schemas"]
    # FastAPI's own validation body is not what the service answers, so it is not documented
    assert "HTTPValidationError" not in schemas
    assert set(schemas["ErrorBody"]["properties"]) == {"detail", "problems"}
    assert set(schemas["Problem"]["required"]) == {"where", "problem"}
    item = schemas["RecommendedItem"]
    assert {"item_id", "score", "source", "sources", "reason", "category_id", "contributions"} <= set(
        item["properties"]
    )
    assert set(schemas["EventsAccepted"]["properties"]) == {
        "accepted",
        "rejected",
        "landed_file",
        "sessions_pushed",
        "event_ids",
    }
    assert schemas["EventsIn"]["properties"]["events"]["maxItems"] == 1000


def test_docs_and_redoc_load_their_assets_from_the_service(client):
    for page, assets in (
        ("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")),
        ("/redoc", ("redoc.standalone.js",)),
    ):
        html = client.get(page)
        assert html.status_code == 200
        assert "cdn.jsdelivr" not in html.text and "fonts.googleapis" not in html.text
        for asset in assets:
            url = f"/docs-assets/{asset}"
            assert url in html.text
            served = client.get(url)
            assert served.status_code == 200 and len(served.content) > 10_000


def _post_raw(client, body: bytes):
    return client.post("/events", content=body, headers={"content-type": "application/json"})


def _wheres(response) -> list[str]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"detail", "problems"}
    return [p["where"] for p in body["problems"]]


def test_a_lone_surrogate_refuses_the_whole_batch_naming_the_field(client, home):
    """A JSON string with a lone surrogate is not text: the batch is refused (422), nothing lands, even
    the valid event beside it; every such field is named."""
    before = set(landed_files(home.landing_dir, "events"))
    good = '{"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": "2026-09-20T10:00:00Z"}'
    for bad, where in (
        ('{"user_id": "\\ud800", "item_id": "i1", "event_type": "view", "ts": "2026-09-20T10:00:00Z"}', "user_id"),
        ('{"user_id": "u1", "item_id": "a\\udfffb", "event_type": "view", "ts": "2026-09-20T10:00:00Z"}', "item_id"),
        (
            '{"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": "2026-09-20T10:00:00Z", "x": ["\\ud800"]}',
            "x.0",
        ),
    ):
        response = _post_raw(client, f'{{"events": [{good}, {bad}]}}'.encode())
        assert _wheres(response) == [f"body.events.1.{where}"]
        assert "Unicode" in response.json()["problems"][0]["problem"]
    # a surrogate in a field name: named with the surrogate escaped
    response = _post_raw(client, f'{{"events": [{good[:-1]}, "\\ud800": 1}}]}}'.encode())
    assert response.status_code == 422 and all(w.startswith("body.events.0") for w in _wheres(response))
    assert set(landed_files(home.landing_dir, "events")) == before


def test_bytes_that_are_not_utf8_or_numbers_that_are_not_finite_are_a_422(client):
    assert _wheres(_post_raw(client, b'{"events": [{"user_id": "\xff\xfe"}]}')) == ["body"]
    assert _wheres(_post_raw(client, b'{"events": [{"user_id": "u", "item_id": NaN}]}')) == ["body.events.0.item_id"]
    assert _wheres(_post_raw(client, b'{"events": [{"user_id": "u", "ts": 1e999}]}')) == ["body.events.0.ts"]
    assert _wheres(_post_raw(client, b'{"events": [')) == ["body.12"]  # FastAPI's JSON decode error position


def test_url_bytes_that_are_not_utf8_are_a_422_naming_the_parameter(client):
    """The framework would decode %ED%A0%80 (an encoded surrogate) to U+FFFD and serve another user."""
    assert _wheres(client.get("/recommendations/%ED%A0%80")) == ["path.user_id"]
    assert _wheres(client.get("/recommendations/u1%FF")) == ["path.user_id"]
    assert _wheres(client.get("/recommendations/u1?category=%ED%A0%80")) == ["query.category"]
    assert client.get("/recommendations/%C3%A9t%C3%A9").status_code == 200  # valid UTF-8 (été) is fine


@pytest.mark.parametrize(
    ("path", "params", "where"),
    [
        ("/recommendations/" + "x" * 257, {}, "path.user_id"),
        ("/recommendations/u1", {"category": "c" * 257}, "query.category"),
        ("/recommendations/u1", {"k": 101}, "query.k"),
        ("/recommendations/u1", {"k": 0}, "query.k"),
        ("/recommendations/u1", {"k": "1.5"}, "query.k"),
    ],
)
def test_oversized_or_out_of_range_parameters_are_a_422(client, path, params, where):
    assert where in _wheres(client.get(path, params=params))


def test_oversized_events_and_batches_are_a_422_naming_the_field(client):
    event = {"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": "2026-09-20T10:00:00Z"}
    assert _wheres(client.post("/events", json={"events": [event] * 1001})) == ["body.events"]
    assert _wheres(client.post("/events", json={"events": []})) == ["body.events"]
    long_user = {**event, "user_id": "u" * 257}
    response = client.post("/events", json={"events": [long_user]})
    assert _wheres(response) == ["body.events.0.user_id"]
    assert response.json()["problems"][0]["problem"] == "id longer than 256 characters"
    # one valid event beside it: accepted, the long one rejected by index (ingestion's per-event rule)
    response = client.post("/events", json={"events": [event, {**event, "item_id": "i" * 300}]})
    assert response.status_code == 202
    assert response.json()["rejected"] == [
        {"index": 1, "reason": "id longer than 256 characters", "where": "body.events.1.item_id"}
    ]


def test_a_body_over_the_size_limit_is_a_413(client):
    response = _post_raw(client, b'{"events": [' + b" " * (5 * 1024 * 1024) + b"]}")
    assert response.status_code == 413
    assert set(response.json()) == {"detail", "problems"}

    def chunks():  # no Content-Length: counted while read
        yield b'{"events": ['
        for _ in range(5):
            yield b" " * (1024 * 1024)
        yield b"]}"

    response = client.post("/events", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than" in response.json()["detail"]


def test_request_ids_are_echoed_or_generated(client):
    given = client.get("/healthz", headers={"X-Request-ID": "trace-42:abc/DEF"})
    assert given.headers["x-request-id"] == "trace-42:abc/DEF"
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    for bad in ("x" * 129, "has space", "tab\there", ""):
        echoed = client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert echoed != bad and len(echoed) == 32
    # on errors too
    assert client.get("/recommendations/u1?k=0", headers={"X-Request-ID": "r-422"}).headers["x-request-id"] == "r-422"
    assert client.get("/no/such/route", headers={"X-Request-ID": "r-404"}).headers["x-request-id"] == "r-404"


def test_one_json_access_log_line_per_request_without_bodies_or_ids(client, caplog):
    marker = "secret-user-7f3a"
    with caplog.at_level(logging.INFO, logger="recs_pipeline.access"):
        client.get(f"/recommendations/{marker}", params={"k": 3}, headers={"X-Request-ID": "req-1"})
        client.post(
            "/events",
            json={"events": [{"user_id": marker, "item_id": "i1", "event_type": "view", "ts": "nope"}]},
            headers={"X-Request-ID": "req-2"},
        )
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "recs_pipeline.access"]
    assert [(x["request_id"], x["method"], x["route"], x["status"]) for x in lines] == [
        ("req-1", "GET", "/recommendations/{user_id}", 200),
        ("req-2", "POST", "/events", 422),
    ]
    assert all(isinstance(x["duration_ms"], float) and x["duration_ms"] > 0 for x in lines)
    assert marker not in caplog.text  # neither the path's user id nor the body


def test_http_metrics_per_route_template(client):
    client.get("/recommendations/metrics-user-1", params={"k": 2})
    client.get("/recommendations/metrics-user-2", params={"k": 0})
    client.get("/not-a-route/xyz")
    text = client.get("/metrics").text
    assert 'recs_http_requests_total{method="GET",route="/recommendations/{user_id}",status="200"}' in text
    assert 'recs_http_requests_total{method="GET",route="/recommendations/{user_id}",status="422"}' in text
    assert 'recs_http_requests_total{method="GET",route="<unmatched>",status="404"}' in text
    assert 'recs_http_request_seconds_bucket{le="0.5",method="GET",route="/recommendations/{user_id}"}' in text
    assert "metrics-user" not in text and "xyz" not in text
