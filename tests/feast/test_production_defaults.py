"""Production defaults of the Feast profiles (issue 14 item 7), against real servers.

* A Feast project per deployment: two projects applied through the committed production profile
  (``project: ${RECS_FEAST_PROJECT}``) on the same Redis and PostgreSQL registry keep their own
  registry entries and keys.
* Passwords and TLS reach the stores: a private ``redis-server`` with ``requirepass`` (and one
  with TLS only) answers the connection string the settings compose, and refuses one without;
  ``RECS_REGISTRY_SSLMODE`` reaches libpq (the machine's PostgreSQL has SSL off, so ``require`` fails).
"""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy
from feast.infra.online_stores.redis import RedisOnlineStore
from redis.backoff import NoBackoff
from redis.retry import Retry
from stores import clean_up_production, redis_client, require_servers, write_snapshots

from recs_pipeline.feast import feast_store
from recs_pipeline.settings import Settings

PRODUCTION_YAML = "feature_store.production.yaml"
# A password that Feast's comma-separated, JSON-decoded connection string would mangle unquoted
# (a number) and that needs escaping (a quote, an equals sign, a backslash, URL specials).
PASSWORD = '12345 "p@ss=w/o:rd\\'


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """A clean environment for the production profile: no inherited paths, project or secrets."""
    for var in (
        "RECS_LANDING_DIR",
        "RECS_DUCKDB_PATH",
        "RECS_FEATURE_REPO",
        "DAGSTER_HOME",
        "RECS_FEAST_PROJECT",
        "RECS_REDIS_USERNAME",
        "RECS_REDIS_PASSWORD",
        "RECS_REDIS_PASSWORD_FILE",
        "RECS_REDIS_TLS",
        "RECS_REDIS_TLS_CA_FILE",
        "RECS_REGISTRY_PASSWORD",
        "RECS_REGISTRY_PASSWORD_FILE",
        "RECS_REGISTRY_SSLMODE",
        "RECS_REGISTRY_SSLROOTCERT",
        "RECS_ALLOW_INSECURE_STORES",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RECS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECS_FEAST_YAML", PRODUCTION_YAML)
    return monkeypatch


@pytest.mark.integration  # two `feast apply` processes against Redis and PostgreSQL
def test_two_projects_on_the_same_servers_keep_their_own_registry_and_keys(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env.setenv("RECS_ALLOW_INSECURE_STORES", "true")  # the machine's servers have no passwords
    run = uuid.uuid4().hex[:12]
    as_of = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    opened = {}
    try:
        for name, views in (("a", 3), ("b", 7)):
            project = f"recs_test_{run}_{name}"
            env.setenv("RECS_FEAST_PROJECT", project)
            settings = Settings.from_env(tmp_path / name)
            require_servers(settings)
            settings.ensure_dirs()
            write_snapshots(settings, [("shared-user", views, as_of)])
            feast_store.apply_repo(settings)
            store = feast_store.open_store(settings)
            opened[project] = (settings, store, views)
            assert store.project == project
            feast_store.materialize_snapshot(store, as_of, views=("user_features",))

        def own_value(project: str) -> int:
            _, store, _ = opened[project]
            got = feast_store.online_features(store, "user_features", [{"user_id": "shared-user"}], ["views_30d"])
            return got["views_30d"][0]

        # the same entity key in the same Redis: each project reads its own value
        assert {p: own_value(p) for p in opened} == {p: views for p, (_, _, views) in opened.items()}
        (a, (settings_a, store_a, _)), (b, (_, store_b, _)) = opened.items()
        projects = {p.name for p in store_a.registry.list_projects(allow_cache=False)}
        assert {a, b} <= projects
        for project, (_, store, _) in opened.items():
            views = {v.name for v in store.registry.list_feature_views(project, allow_cache=False)}
            assert "user_features" in views, (project, views)
        client = redis_client(settings_a.redis_url)
        assert all(any(True for _ in client.scan_iter(match=b"*" + p.encode(), count=1000)) for p in opened)
        client.close()

        # removing one deployment's project leaves the other's registry and keys whole
        clean_up_production(settings_a, store_a, a)
        del opened[a]
        assert a not in {p.name for p in store_b.registry.list_projects(allow_cache=False)}
        assert own_value(b) == 7
    finally:
        for project, (settings, store, _) in opened.items():
            clean_up_production(settings, store, project)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_server(*args: str) -> Iterator[int]:
    """A private ``redis-server`` with ``args`` (nothing on disk); yields its port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    args = tuple(a.replace("{port}", str(port)) for a in args)
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not listen within 10 s"
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _feast_redis(settings: Settings) -> redis.Redis:
    """The Redis client Feast itself builds from the production profile filled from ``settings``, without
    redis-py's retries (three, with backoff: seconds before a refused connection fails)."""
    config = feast_store.repo_config(settings)
    client: redis.Redis = RedisOnlineStore()._get_client(config.online_store)
    client.set_retry(Retry(NoBackoff(), 0))
    return client


@pytest.fixture
def password_redis() -> Iterator[int]:
    yield from _redis_server("--port", "{port}", "--requirepass", PASSWORD)


def test_a_redis_password_reaches_feast_and_is_needed(env: pytest.MonkeyPatch, password_redis: int, tmp_path: Path):
    env.setenv("RECS_FEAST_PROJECT", "shop_prod")
    env.setenv("RECS_REDIS_URL", f"127.0.0.1:{password_redis}")
    env.setenv("RECS_ALLOW_INSECURE_STORES", "true")
    with pytest.raises(redis.AuthenticationError):
        _feast_redis(Settings.from_env()).ping()
    secret = tmp_path / "redis.password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    env.setenv("RECS_REDIS_PASSWORD_FILE", str(secret))
    client = _feast_redis(Settings.from_env())
    assert client.ping() is True
    client.close()


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A Redis that speaks TLS only (a certificate for 127.0.0.1 from a throwaway CA) and needs a password."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "redis.pem", tmp_path / "redis.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_key(key, key_file)
    args = ("--port", "0", "--tls-port", "{port}", "--requirepass", PASSWORD, "--tls-auth-clients", "no")
    tls = ("--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file), "--tls-ca-cert-file", str(ca_file))
    for port in _redis_server(*args, *tls):
        yield port, ca_file


def test_redis_over_tls_verifies_the_server(env: pytest.MonkeyPatch, tls_redis: tuple[int, Path]):
    port, ca_file = tls_redis
    env.setenv("RECS_FEAST_PROJECT", "shop_prod")
    env.setenv("RECS_REDIS_URL", f"127.0.0.1:{port}")
    env.setenv("RECS_REDIS_PASSWORD", PASSWORD)
    env.setenv("RECS_ALLOW_INSECURE_STORES", "true")  # the registry (not used here) has no password
    with pytest.raises(redis.ConnectionError):  # plain text to a TLS port
        _feast_redis(Settings.from_env()).ping()
    env.setenv("RECS_REDIS_TLS", "true")
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):  # the system CAs do not know it
        _feast_redis(Settings.from_env()).ping()
    env.setenv("RECS_REDIS_TLS_CA_FILE", str(ca_file))
    client = _feast_redis(Settings.from_env())
    assert client.ping() is True
    client.close()


def test_registry_password_and_sslmode_reach_postgres(env: pytest.MonkeyPatch):
    env.setenv("RECS_FEAST_PROJECT", "shop_prod")
    env.setenv("RECS_REDIS_PASSWORD", "unused-here")
    env.setenv("RECS_REGISTRY_PASSWORD", PASSWORD)
    env.setenv("RECS_REGISTRY_SSLMODE", "disable")
    settings = Settings.from_env()
    require_servers(settings)
    registry = feast_store.repo_config(settings).registry
    url = sqlalchemy.make_url(registry.path)
    assert (url.password, url.query["sslmode"]) == (PASSWORD, "disable")
    engine = sqlalchemy.create_engine(registry.path)  # trust auth: the password is sent and not checked
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
    engine.dispose()

    env.setenv("RECS_REGISTRY_SSLMODE", "require")  # the machine's PostgreSQL has SSL off
    engine = sqlalchemy.create_engine(feast_store.repo_config(Settings.from_env()).registry.path)
    with pytest.raises(sqlalchemy.exc.OperationalError, match="SSL") as failed:
        engine.connect()
    engine.dispose()
    assert PASSWORD not in str(failed.value)
