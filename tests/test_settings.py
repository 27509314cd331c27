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


# -- the production profile's stores: project, passwords, TLS (issue 14 item 7) ---------------------------

_STORE_VARS = (
    "RECS_FEAST_YAML",
    "RECS_FEATURE_REPO",
    "RECS_FEAST_PROJECT",
    "RECS_REDIS_URL",
    "RECS_REDIS_USERNAME",
    "RECS_REDIS_PASSWORD",
    "RECS_REDIS_PASSWORD_FILE",
    "RECS_REDIS_TLS",
    "RECS_REDIS_TLS_CA_FILE",
    "RECS_REGISTRY_URL",
    "RECS_REGISTRY_PASSWORD",
    "RECS_REGISTRY_PASSWORD_FILE",
    "RECS_REGISTRY_SSLMODE",
    "RECS_REGISTRY_SSLROOTCERT",
    "RECS_ALLOW_INSECURE_STORES",
)
REDIS_SECRET = "r3dis-Secret-Value"
REGISTRY_SECRET = "pg p@ss/w:rd?#%"


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The production profile selected, with none of its store settings inherited."""
    for var in _STORE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RECS_FEAST_YAML", "feature_store.production.yaml")
    return monkeypatch


def test_the_production_profile_needs_a_project_and_passwords(production: pytest.MonkeyPatch):
    with pytest.raises(SettingsError) as missing:
        Settings.from_env().feast_env()
    for var in ("RECS_FEAST_PROJECT", "RECS_REDIS_PASSWORD", "RECS_REGISTRY_PASSWORD", "RECS_ALLOW_INSECURE_STORES"):
        assert var in str(missing.value)
    production.setenv("RECS_ALLOW_INSECURE_STORES", "true")  # passwords may be missing, the project may not
    with pytest.raises(SettingsError, match="RECS_FEAST_PROJECT") as unnamed:
        Settings.from_env().feast_env()
    assert "PASSWORD" not in str(unnamed.value)
    production.setenv("RECS_FEAST_PROJECT", "shop_prod")
    assert Settings.from_env().feast_env()["RECS_FEAST_PROJECT"] == "shop_prod"
    production.delenv("RECS_ALLOW_INSECURE_STORES")
    production.setenv("RECS_REDIS_PASSWORD", REDIS_SECRET)
    production.setenv("RECS_REGISTRY_PASSWORD", REGISTRY_SECRET)
    env = Settings.from_env().feast_env()
    assert env["RECS_REDIS_URL"] == f'127.0.0.1:6379,password="{REDIS_SECRET}"'


def test_the_embedded_profile_defaults_the_project(production: pytest.MonkeyPatch):
    production.delenv("RECS_FEAST_YAML")
    assert Settings.from_env().feast_env()["RECS_FEAST_PROJECT"] == "recs_pipeline"  # no password needed
    production.setenv("RECS_FEAST_PROJECT", "shop_b")
    assert Settings.from_env().feast_env()["RECS_FEAST_PROJECT"] == "shop_b"
    production.setenv("RECS_FEAST_PROJECT", "shop-b")  # a hyphen cannot name a SQLite table
    with pytest.raises(SettingsError, match="RECS_FEAST_PROJECT"):
        Settings.from_env()


def test_passwords_and_tls_are_composed_but_never_shown(production: pytest.MonkeyPatch, tmp_path: Path):
    from sqlalchemy import make_url

    production.setenv("RECS_FEAST_PROJECT", "shop_prod")
    production.setenv("RECS_REDIS_URL", "redis.internal:6380,db=2")
    production.setenv("RECS_REDIS_USERNAME", "recs")
    production.setenv("RECS_REDIS_PASSWORD", REDIS_SECRET)
    production.setenv("RECS_REDIS_TLS", "true")
    production.setenv("RECS_REDIS_TLS_CA_FILE", str(tmp_path / "ca.pem"))
    production.setenv("RECS_REGISTRY_URL", "postgresql+psycopg://recs@pg.internal:5432/feast")
    production.setenv("RECS_REGISTRY_PASSWORD", REGISTRY_SECRET)
    production.setenv("RECS_REGISTRY_SSLMODE", "verify-full")
    s = Settings.from_env()
    for shown in (repr(s), str(s), s.model_dump_json()):
        assert REDIS_SECRET not in shown and "p@ss" not in shown
    env = s.feast_env()
    assert env["RECS_REDIS_URL"] == (
        f'redis.internal:6380,db=2,username="recs",password="{REDIS_SECRET}",ssl=true,ssl_ca_certs="{tmp_path}/ca.pem"'
    )
    url = make_url(env["RECS_REGISTRY_URL"])
    assert (url.username, url.password, url.host, url.database) == ("recs", REGISTRY_SECRET, "pg.internal", "feast")
    assert dict(url.query) == {"sslmode": "verify-full"}


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("RECS_REDIS_URL", f"127.0.0.1:6379,password={REDIS_SECRET}"),
        ("RECS_REGISTRY_URL", f"postgresql+psycopg://postgres:{REDIS_SECRET}@127.0.0.1:5432/test"),
        ("RECS_REDIS_PASSWORD", ""),  # ignored as unset (env_ignore_empty), then missing
    ],
)
def test_a_password_in_a_url_is_refused_without_showing_it(production: pytest.MonkeyPatch, var: str, value: str):
    production.setenv("RECS_FEAST_PROJECT", "shop_prod")
    production.setenv(var, value)
    with pytest.raises(SettingsError, match=var) as refused:
        Settings.from_env().feast_env()
    assert REDIS_SECRET not in str(refused.value)


def test_a_password_from_a_file(production: pytest.MonkeyPatch, tmp_path: Path):
    production.setenv("RECS_FEAST_PROJECT", "shop_prod")
    production.setenv("RECS_ALLOW_INSECURE_STORES", "true")
    secret = tmp_path / "redis.password"
    secret.write_text(f"  {REDIS_SECRET}\n")
    secret.chmod(0o600)
    production.setenv("RECS_REDIS_PASSWORD_FILE", str(secret))
    assert Settings.from_env().feast_env()["RECS_REDIS_URL"] == f'127.0.0.1:6379,password="{REDIS_SECRET}"'
    production.setenv("RECS_REDIS_PASSWORD", REDIS_SECRET)
    with pytest.raises(SettingsError, match="both RECS_REDIS_PASSWORD and RECS_REDIS_PASSWORD_FILE"):
        Settings.from_env().feast_env()
    production.delenv("RECS_REDIS_PASSWORD")
    production.setenv("RECS_REDIS_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match="RECS_REDIS_PASSWORD_FILE=.*cannot be read"):
        Settings.from_env().feast_env()
    secret.write_text("a,b\n")  # Feast's connection string splits on commas
    production.setenv("RECS_REDIS_PASSWORD_FILE", str(secret))
    with pytest.raises(SettingsError, match="comma") as comma:
        Settings.from_env().feast_env()
    assert "a,b" not in str(comma.value)
