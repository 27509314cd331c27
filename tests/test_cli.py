"""`recs` end to end: the real samples in ../shared/data through the whole pipeline, and failures exit non-zero."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from recs_pipeline.cli import main
from recs_pipeline.settings import Settings
from recs_pipeline.warehouse import db

# Events in each sample (from ../shared/data/README.md) and whether it carries a catalog.
SAMPLES = {"retailrocket": 9_385, "taobao": 84_475, "otto": 862}


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.delenv("RECS_HOME", raising=False)
    return tmp_path / "home"


@pytest.mark.integration
@pytest.mark.parametrize("source", sorted(SAMPLES))
def test_recs_run_on_each_real_sample(source, shared_data, isolated_env, monkeypatch):
    monkeypatch.setenv("RECS_SHARED_DATA", str(shared_data))
    result = CliRunner().invoke(main, ["--home", str(isolated_env), "run", "--source", source], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert len(summary["snapshot_days"]) == 1
    with db.connect(Settings.from_env(isolated_env).duckdb_path) as con:
        stored, quarantined = con.execute(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM quarantine)"
        ).fetchone()
        users = con.execute("SELECT count(DISTINCT user_id) FROM events").fetchone()[0]
        snapshot_users = con.execute(
            "SELECT count(*) FROM user_features WHERE event_timestamp = (SELECT max(event_timestamp) FROM user_features)"
        ).fetchone()[0]
    assert (stored, quarantined) == (SAMPLES[source], 0)
    assert snapshot_users == users  # the newest snapshot has a row for every user seen before it
    report = json.loads((Settings.from_env(isolated_env).reports_dir / "evaluation.json").read_text())
    assert {"popular", "trending", "covis", "als", "als+lightgbm"} <= set(report) and report["users"] > 0
    assert isinstance(summary["promoted"], bool) and summary["promotion_gate"]
    if source == "taobao":  # the target: ALS + LightGBM above every baseline on the Taobao sample
        assert summary["promoted"] is True, summary["promotion_gate"]


@pytest.mark.integration  # `recs run` in a subprocess
@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_recs_run_exits_non_zero_when_there_is_nothing_to_process(tmp_path, verbose):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster"), "RECS_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-m", "recs_pipeline.cli", *(["-v"] if verbose else []), "run", "--no-land"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "no events were ingested" in proc.stderr
    # The ingest run ran (as pipeline_job): a line per finished step; Dagster's event log only with -v.
    lines = proc.stderr.replace("\r", "\n").splitlines()
    assert any(line.split()[:3] == ["pipeline_job", "events", "succeeded"] for line in lines), proc.stderr[-2000:]
    assert (" - DEBUG - pipeline_job - " in proc.stderr) is verbose


def test_help_lists_the_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "generate", "land", "feast"):
        assert command in result.output
