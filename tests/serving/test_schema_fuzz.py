"""A bounded schemathesis run against the service's own OpenAPI document, in process (ASGI) on a copy
of the served home: generated requests (valid and invalid) never get a 5xx, and every response
matches the schema declared for its status code."""

import pytest
import schemathesis
from homes import copy_home
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from recs_pipeline.serving.app import create_app
from recs_pipeline.settings import ServeSettings

pytestmark = pytest.mark.integration

# five operations, two modes: at most ~200 requests, a few seconds
EXAMPLES_PER_OPERATION = 20
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def app(served_home, tmp_path_factory):
    home = copy_home(served_home, tmp_path_factory.mktemp("fuzz") / "home")
    yield create_app(home, ServeSettings(online_timeout_ms=2000, reload_seconds=60, metrics_dir=None))
    # schemathesis runs the app's lifespan and an event-loop thread for the rest of the process; stop
    # both now: left to interpreter exit, the loop's worker threads (which hold DuckDB connections of
    # the collector's checks) are torn down during finalisation and the process aborts
    schemathesis_asgi._shutdown()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_5xx_and_every_response_matches_its_schema(app, mode):
    """Valid requests (positive) and requests that break the schema (negative), per operation."""
    openapi = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in openapi.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "GET /recommendations/{user_id}",
        "POST /events",
        "GET /readyz",
        "GET /metrics",
    }
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not list(operation.iter_parameters()) and not operation.body:
            continue  # nothing to break in a request without parameters or body

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case):
            case.call_and_validate(checks=CHECKS)

        run()
