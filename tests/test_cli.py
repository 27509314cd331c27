"""`recs` end to end: the real samples in ../shared/data through the whole pipeline, and failures exit non-zero."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from homes import check_sample_home

from recs_pipeline.cli import main


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.delenv("RECS_HOME", raising=False)
    return tmp_path / "home"


@pytest.mark.integration
@pytest.mark.parametrize("source", ["retailrocket", "taobao"])  # OTTO's run: tests/test_served_replay.py
def test_recs_run_on_each_real_sample(source, shared_data, isolated_env, monkeypatch):
    monkeypatch.setenv("RECS_SHARED_DATA", str(shared_data))
    result = CliRunner().invoke(main, ["--home", str(isolated_env), "run", "--source", source], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert len(summary["snapshot_days"]) == 1
    check_sample_home(isolated_env, source)
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
    for command in ("run", "generate", "land", "feast", "forget", "sign-models"):
        assert command in result.output


def test_forget_reports_per_store_and_refuses_an_empty_id(tmp_path):
    """The command's wiring (the erasure itself: tests/privacy): a report line per store, exit 0 on a
    home with nothing of the user; an empty id is a usage error naming the argument."""
    result = CliRunner().invoke(main, ["--home", str(tmp_path), "forget", "u-nobody"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "removed 0 rows in all"
    assert {line.split(":")[0] for line in result.output.splitlines()[1:]} >= {"warehouse", "online store"}
    refused = CliRunner().invoke(main, ["--home", str(tmp_path), "forget", ""])
    assert refused.exit_code == 1 and "empty id" in refused.output


def test_api_key_new_prints_the_key_once_and_stores_only_its_hash(tmp_path, monkeypatch):
    monkeypatch.delenv("RECS_API_KEYS_FILE", raising=False)
    result = CliRunner().invoke(
        main, ["--home", str(tmp_path), "api-key", "new", "--name", "shop", "--scopes", "events:write"]
    )
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    stored = (tmp_path / "secrets" / "api_keys.json").read_text()
    assert key and key not in stored and json.loads(stored)["keys"][0]["name"] == "shop"
    again = CliRunner().invoke(main, ["--home", str(tmp_path), "api-key", "new", "--name", "x", "--scopes", "nope"])
    assert again.exit_code == 2 and "nope" in again.output
