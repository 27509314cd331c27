"""A service (re)started on a tampered champion serves the newest previous champion that verifies,
says so in /readyz and /metrics, and takes the champion back once it verifies again (hot reload)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from homes import copy_home, register_copy_of_champion

from recs_pipeline.models.registry import ModelRegistry, ModelVersion
from recs_pipeline.serving.app import create_app
from recs_pipeline.settings import ServeSettings, Settings

SERVE = ServeSettings(online_timeout_ms=2000, reload_seconds=0.2, metrics_dir=None)


@pytest.fixture(autouse=True)
def _no_configured_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The home's own key file (generated when its first version was registered)."""
    monkeypatch.delenv("RECS_MODEL_SIGNING_KEY", raising=False)
    monkeypatch.delenv("RECS_MODEL_SIGNING_KEY_FILE", raising=False)


def _rewrite_file_and_hash(mv: ModelVersion, name: str = "ranker.txt") -> None:
    """The attack signing stops: a model file rewritten, and its hash in the manifest with it."""
    evil = (mv.path / name).read_bytes() + b"\n# rewritten\n"
    (mv.path / name).write_bytes(evil)
    path = mv.path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"][name] = hashlib.sha256(evil).hexdigest()
    path.write_text(json.dumps(manifest, indent=2))


def _fallback_gauge(client: TestClient) -> float:
    match = re.search(r"^recs_model_fallback (\S+)$", client.get("/metrics").text, re.MULTILINE)
    assert match, "recs_model_fallback is not exported"
    return float(match.group(1))


@pytest.fixture
def home(served_home: Settings, tmp_path: Path) -> tuple[Settings, ModelVersion, ModelVersion]:
    """A copy of the served home whose champion (``new``) was promoted over ``previous``."""
    home = copy_home(served_home, tmp_path / "home")
    registry = ModelRegistry(home.models_dir)
    previous = registry.champion()
    new = register_copy_of_champion(registry, reason="test: the champion that will be tampered with")
    return home, previous, new


def test_a_tampered_champion_at_start_serves_the_previous_one_flagged(home, tmp_path) -> None:
    settings, previous, new = home
    backup = tmp_path / "backup"
    shutil.copytree(new.path, backup)
    _rewrite_file_and_hash(new)

    with TestClient(create_app(settings, SERVE)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert body["model_version"] == previous.version
        fallback = body["fallback"]
        assert (fallback["champion"], fallback["serving"]) == (new.version, previous.version)
        assert "signature" in fallback["reason"] and new.version in body["last_reload_error"]
        assert str(settings.home) not in ready.text  # no path in an HTTP body
        assert _fallback_gauge(client) == 1.0
        answer = client.get("/recommendations/never-seen-anywhere", params={"k": 5})
        assert answer.status_code == 200 and answer.json()["model_version"] == previous.version

        # the champion's folder restored from backup: the watcher takes it and clears the flag
        shutil.rmtree(new.path)
        shutil.copytree(backup, new.path)
        deadline = time.monotonic() + 20
        while client.get("/readyz").json()["model_version"] != new.version and time.monotonic() < deadline:
            time.sleep(0.1)
        body = client.get("/readyz").json()
        assert body["model_version"] == new.version
        assert body["fallback"] is None and body["last_reload_error"] is None
        assert _fallback_gauge(client) == 0.0


def test_nothing_verifies_at_start_is_a_503_that_says_why(home) -> None:
    settings, previous, new = home
    _rewrite_file_and_hash(new)
    unsigned = json.loads((previous.path / "manifest.json").read_text())
    del unsigned["signature"]  # a version from before signing
    (previous.path / "manifest.json").write_text(json.dumps(unsigned))

    with TestClient(create_app(settings, SERVE)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        reason = ready.json()["reason"]
        assert new.version in reason and "no previous champion verifies" in reason
        assert str(settings.home) not in ready.text
        answer = client.get("/recommendations/never-seen-anywhere")
        assert answer.status_code == 503 and str(settings.home) not in answer.text
        assert _fallback_gauge(client) == 0.0
