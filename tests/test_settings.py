"""Settings: one typed schema over the RECS_* variables; an invalid value is reported by its variable's name."""

from pathlib import Path

import pytest

from recs_pipeline.settings import ServeSettings, Settings, SettingsError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RECS_HOME", "RECS_LANDING_DIR", "RECS_DUCKDB_PATH", "RECS_EVAL_BOOTSTRAP", "DAGSTER_HOME"):
        monkeypatch.delenv(var, raising=False)


def test_paths_default_under_home_and_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env("home")
    assert (s.home, s.landing_dir, s.duckdb_path) == (
        tmp_path / "home",
        tmp_path / "home" / "landing",
        tmp_path / "home" / "recs.duckdb",
    )
    assert s.dagster_home == tmp_path / "home" / "dagster" and s.eval_bootstrap == 500
    monkeypatch.setenv("RECS_LANDING_DIR", "elsewhere")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("RECS_EVAL_BOOTSTRAP", "20")
    s = Settings.from_env("home")
    assert (s.landing_dir, s.dagster_home, s.eval_bootstrap) == (tmp_path / "elsewhere", tmp_path / "dagster", 20)


@pytest.mark.parametrize(
    ("var", "value"),
    [("RECS_EVAL_BOOTSTRAP", "0"), ("RECS_DUCKDB_THREADS", "many"), ("RECS_DUCKDB_THREADS", "0")],
)
def test_an_invalid_value_names_its_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=var):
        Settings.from_env()


@pytest.mark.parametrize(
    ("var", "value"),
    [("RECS_SERVE_PORT", "http"), ("RECS_SERVE_LIMITS", "als=10"), ("RECS_SERVE_ONLINE_TIMEOUT_MS", "0")],
)
def test_serve_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=var):
        ServeSettings.from_env()


def test_serve_limits_parse_from_text(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(
        "RECS_SERVE_LIMITS", "als=200,catpop=20,content=10,covis=50,trending=25,popular=25,recent=30,usercf=40"
    )
    limits = {
        "als": 200,
        "catpop": 20,
        "content": 10,
        "covis": 50,
        "trending": 25,
        "popular": 25,
        "recent": 30,
        "usercf": 40,
    }
    assert ServeSettings.from_env().candidate_limits == limits
    monkeypatch.setenv(
        "RECS_SERVE_LIMITS", "als=200,catpop=20,content=10,covis=50,trending=25,popular=25,recent=30,usercf=0"
    )
    assert ServeSettings.from_env().candidate_limits["usercf"] == 0  # a source turned off
    monkeypatch.setenv("RECS_SERVE_LIMITS", "als=0,catpop=0,content=0,covis=0,trending=0,popular=0,recent=0,usercf=0")
    with pytest.raises(SettingsError, match="every source off"):
        ServeSettings.from_env()
