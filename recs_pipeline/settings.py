"""Paths and knobs of the pipeline, read from the environment in one place, typed.

Everything the pipeline writes lives under ``RECS_HOME`` (default ``./data``): the landing zone,
the DuckDB file, exported feature parquet, Feast's registry and SQLite online store, reports and
the Dagster home. Each setting can be overridden by the environment variable named beside it
(``RECS_`` + the field's name in capitals, unless stated otherwise). Build them with
:meth:`Settings.from_env` and :meth:`ServeSettings.from_env`, which name the variable when a value
is invalid, and hand them down: the rest of the package never reads or writes ``os.environ``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from recs_pipeline.models.candidate_sources import SOURCES as RANKER_SOURCES

REPO_ROOT = Path(__file__).resolve().parents[1]
SQL_DIR = REPO_ROOT / "sql"
FEATURE_REPO_DIR = REPO_ROOT / "feature_repo"

# Pool that every asset writing the DuckDB file joins; its limit is 1 (see dagster.yaml).
DUCKDB_POOL = "duckdb"

# The Dagster instance files shipped in recs_pipeline/ (Settings.dagster_yaml; runner.open_instance copies one).
DagsterInstanceFile = Literal["dagster.yaml", "dagster.production.yaml"]

# Name of the feature snapshots' dynamic day partitions: one key per day the stored events cover,
# added by ingestion (recs_pipeline/defs/partitions.py), whatever the data's era.
DAY_PARTITIONS = "days"

# Candidate sources of the scoring service (RECS_SERVE_LIMITS must name each).
CANDIDATE_SOURCES = frozenset(RANKER_SOURCES)


# The Feast project of the embedded profile when RECS_FEAST_PROJECT is unset (the production profile requires it).
DEFAULT_FEAST_PROJECT = "recs_pipeline"
# A ``${VAR}`` placeholder of a Feast profile (filled from Settings.feast_env; Feast has no defaults).
FEAST_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


class SettingsError(ValueError):
    """An environment variable (or override) holds an invalid value; the message names each one."""


def secret_from(value: SecretStr | None, file: Path | None, *, var: str, file_var: str) -> SecretStr | None:
    """A secret given either as the variable ``var`` (``value``) or as a file named by ``file_var``.

    The file's text, surrounding whitespace stripped, is the secret; a file that others may read
    is used but warned about. Neither set: ``None``.

    Raises
    ------
    SettingsError
        Both are set, or the file cannot be read or is empty (the message names the variables, never the secret).
    """
    if value is not None and file is not None:
        raise SettingsError(f"both {var} and {file_var} are set: set only one (the secret, or the file holding it)")
    if file is None:
        return value
    try:
        text = file.read_text(encoding="utf-8").strip()
        mode = file.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(
            f"{file_var}={str(file)!r} cannot be read: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    if not text:
        raise SettingsError(f"{file_var}={str(file)!r} is empty")
    if mode & 0o077:
        logging.getLogger(__name__).warning("%s %s is accessible to other users; chmod 600 it", file_var, file)
    return SecretStr(text)


class _EnvSettings(BaseSettings):
    """Settings read from ``<env_prefix><FIELD>`` variables; errors name the variable."""

    model_config = SettingsConfigDict(frozen=True, env_ignore_empty=True, validate_by_name=True, extra="ignore")
    # Fields whose invalid value an error message must not repeat (secrets, URLs that may hold one).
    _HIDDEN_INPUTS: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def env_var(cls, field: str) -> str:
        """The environment variable that sets ``field``."""
        alias = cls.model_fields[field].validation_alias
        return alias if isinstance(alias, str) else f"{cls.model_config.get('env_prefix', '')}{field}".upper()

    @classmethod
    def from_env(cls) -> Self:
        """These settings from the environment.

        Raises
        ------
        SettingsError
            When a variable's value is invalid (the message names it).
        """
        return cls._load()

    @classmethod
    def _load(cls, **overrides: Any) -> Self:
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                field = str(error["loc"][0]) if error["loc"] else ""
                name = cls.env_var(field) if field in cls.model_fields else field or cls.__name__
                shown = "<hidden>" if field in cls._HIDDEN_INPUTS else repr(error.get("input"))
                problems.append(f"{name}={shown}: {error['msg']}")
            raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from None


class Settings(_EnvSettings):
    """Resolved, absolute paths and knobs of the pipeline. Build with :meth:`from_env`."""

    model_config = SettingsConfigDict(env_prefix="RECS_")

    home: Path = Field(Path("data"), description="RECS_HOME: the root of everything the pipeline writes.")
    landing_dir: Path = Field(None, validate_default=True, description="RECS_LANDING_DIR (default <home>/landing).")
    duckdb_path: Path = Field(None, validate_default=True, description="RECS_DUCKDB_PATH (default <home>/recs.duckdb).")
    experiments_file: Path = Field(
        None,
        validate_default=True,
        description="RECS_EXPERIMENTS_FILE: the A/B experiments the service runs (default <home>/experiments.json; "
        "absent = none; docs/EXPERIMENTS.md).",
    )
    rules_file: Path = Field(
        None,
        validate_default=True,
        description="RECS_RULES_FILE: the merchandising rules (pin, boost, block) the service applies (default "
        "<home>/rules.json; absent = none; docs/SERVING.md).",
    )
    dagster_home: Path = Field(
        None,
        validate_default=True,
        validation_alias="DAGSTER_HOME",
        description="DAGSTER_HOME (default <home>/dagster).",
    )
    dagster_yaml: DagsterInstanceFile | None = Field(
        None,
        description="RECS_DAGSTER_YAML: the Dagster instance file written into DAGSTER_HOME; "
        "dagster.production.yaml keeps Dagster's runs, event logs and schedules in PostgreSQL "
        "(DAGSTER_POSTGRES_HOST, _PORT, _USER, _PASSWORD, _DB). Unset: dagster.yaml (SQLite) for a new "
        "DAGSTER_HOME, and a shipped file already there stays in its profile.",
    )
    feature_repo: Path = Field(FEATURE_REPO_DIR, description="RECS_FEATURE_REPO: the Feast feature repo.")
    feast_yaml: str = Field(
        "feature_store.yaml",
        min_length=1,
        description="RECS_FEAST_YAML: the Feast profile, relative to the feature repo "
        "(feature_store.production.yaml for Redis and the SQL registry).",
    )
    duckdb_threads: int = Field(2, ge=1, description="RECS_DUCKDB_THREADS of every DuckDB connection.")
    duckdb_memory_limit: str = Field("6GB", min_length=1, description="RECS_DUCKDB_MEMORY_LIMIT, e.g. 6GB.")
    duckdb_lock_wait_seconds: float = Field(
        120.0,
        ge=0,
        description="RECS_DUCKDB_LOCK_WAIT_SECONDS: how long opening the DuckDB file waits while another process "
        "holds its lock (a run started in process and one the daemon launched in the same second), then fails "
        "naming the holder.",
    )
    # The production profile's stores (feature_repo/feature_store.production.yaml; docs in feature_repo/README.md).
    # Addresses and secrets are separate settings: the URLs never hold a password, so settings, their
    # repr and their error messages can be shown; :meth:`feast_env` composes the connection strings.
    feast_project: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_]*$",
        max_length=63,
        description="RECS_FEAST_PROJECT: this deployment's Feast project, which names its registry entries, Redis "
        "keys and SQLite tables (letters, digits, underscores). Default recs_pipeline with the embedded profile; "
        "required with the production profile, whose servers other deployments may share.",
    )
    redis_url: str = Field(
        "127.0.0.1:6379",
        min_length=1,
        description="RECS_REDIS_URL: Feast's Redis connection string without secrets, host:port[,db=N] "
        "(production); the password goes in RECS_REDIS_PASSWORD or RECS_REDIS_PASSWORD_FILE.",
    )
    redis_username: str | None = Field(
        None, min_length=1, description="RECS_REDIS_USERNAME: the Redis ACL user (unset: the default user)."
    )
    redis_password: SecretStr | None = Field(
        None, min_length=1, description="RECS_REDIS_PASSWORD: the Redis password (never logged)."
    )
    redis_password_file: Path | None = Field(
        None, description="RECS_REDIS_PASSWORD_FILE: a file holding the Redis password (instead of the variable)."
    )
    redis_tls: bool = Field(False, description="RECS_REDIS_TLS: connect to Redis over TLS, verifying its certificate.")
    redis_tls_ca_file: Path | None = Field(
        None, description="RECS_REDIS_TLS_CA_FILE: CA bundle that signed Redis's certificate (default: the system's)."
    )
    registry_url: str = Field(
        "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        min_length=1,
        description="RECS_REGISTRY_URL: SQLAlchemy URL of Feast's SQL registry without a password (production); "
        "the password goes in RECS_REGISTRY_PASSWORD or RECS_REGISTRY_PASSWORD_FILE.",
    )
    registry_password: SecretStr | None = Field(
        None, min_length=1, description="RECS_REGISTRY_PASSWORD: the registry database's password (never logged)."
    )
    registry_password_file: Path | None = Field(
        None, description="RECS_REGISTRY_PASSWORD_FILE: a file holding the registry database's password."
    )
    registry_sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = Field(
        None,
        description="RECS_REGISTRY_SSLMODE: PostgreSQL's sslmode for the registry (verify-full checks the server's "
        "certificate and name; unset: libpq's default, prefer).",
    )
    registry_sslrootcert: Path | None = Field(
        None, description="RECS_REGISTRY_SSLROOTCERT: CA bundle that signed PostgreSQL's certificate (verify-*)."
    )
    allow_insecure_stores: bool = Field(
        False,
        description="RECS_ALLOW_INSECURE_STORES: let the production profile connect to Redis or PostgreSQL without "
        "a password (local trials and this repo's tests only; never a deployment).",
    )
    shared_data: Path = Field(
        REPO_ROOT.parent / "shared" / "data", description="RECS_SHARED_DATA: the real public samples."
    )
    eval_bootstrap: int = Field(500, ge=1, description="RECS_EVAL_BOOTSTRAP: bootstrap resamples of the evaluation.")
    # Hyper-parameter search on the validation fold (recs_pipeline/models/tuning.py), for ALS and for
    # the ranker each: at most this many trials and about this many seconds (0 trials: no search).
    tune_trials: int = Field(
        0, ge=0, description="RECS_TUNE_TRIALS: search trials for ALS and for the ranker (0: off)."
    )
    tune_seconds: float = Field(
        120.0, gt=0, description="RECS_TUNE_SECONDS: time budget of each search (ALS, ranker), in seconds."
    )
    # Event-type confidence weights and the recency half-life of interactions, affinities and the
    # profile: one setting for the daily features, the training snapshots and (with no champion yet)
    # the online refresh. A trained bundle records the values it was trained with and serves those.
    weight_view: float = Field(1.0, ge=0, description="RECS_WEIGHT_VIEW: confidence weight of a view.")
    weight_add_to_cart: float = Field(4.0, ge=0, description="RECS_WEIGHT_ADD_TO_CART: weight of an add-to-cart.")
    weight_purchase: float = Field(8.0, ge=0, description="RECS_WEIGHT_PURCHASE: weight of a purchase.")
    weight_favorite: float = Field(3.0, ge=0, description="RECS_WEIGHT_FAVORITE: weight of a favorite.")
    half_life_days: float = Field(14.0, gt=0, description="RECS_HALF_LIFE_DAYS: recency half-life of the weights.")
    # Which items are never recommended again (recs_pipeline/models/consumption.py); recorded in the
    # bundle at training, and the service uses the bundle's.
    consumed: str = Field(
        "auto",
        validation_alias="RECS_CONSUMED_EVENT_TYPES",
        description="RECS_CONSUMED_EVENT_TYPES: event types that consume an item, e.g. purchase or "
        "purchase,add_to_cart; none; or auto (default): chosen from the data at training.",
    )
    consumed_window_days: float | None = Field(
        None, gt=0, description="RECS_CONSUMED_WINDOW_DAYS: how long an item stays consumed (unset: for ever)."
    )

    _HIDDEN_INPUTS: ClassVar[frozenset[str]] = frozenset(
        {"redis_url", "redis_password", "registry_url", "registry_password"}
    )

    _UNDER_HOME: ClassVar[dict[str, str]] = {
        "landing_dir": "landing",
        "duckdb_path": "recs.duckdb",
        "dagster_home": "dagster",
        "experiments_file": "experiments.json",
        "rules_file": "rules.json",
    }

    @field_validator("consumed", mode="after")
    @classmethod
    def _consumed(cls, value: str) -> str:
        from recs_pipeline.models.consumption import parse_event_types

        parse_event_types(value)  # raises with the allowed types
        return value

    @property
    def consumed_event_types(self) -> tuple[str, ...] | None:
        """The configured consuming event types; None = choose from the data."""
        from recs_pipeline.models.consumption import parse_event_types

        return parse_event_types(self.consumed)

    @field_validator("redis_url", mode="after")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if any(p.strip().startswith("password=") for p in value.split(",")):
            raise ValueError("holds a password: set RECS_REDIS_PASSWORD or RECS_REDIS_PASSWORD_FILE instead")
        return value

    @field_validator("registry_url", mode="after")
    @classmethod
    def _registry_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("is not a SQLAlchemy URL, e.g. postgresql+psycopg://USER@HOST:5432/DB") from None
        if url.password is not None:
            raise ValueError("holds a password: set RECS_REGISTRY_PASSWORD or RECS_REGISTRY_PASSWORD_FILE instead")
        return value

    @field_validator(
        "redis_password_file", "redis_tls_ca_file", "registry_password_file", "registry_sslrootcert", mode="after"
    )
    @classmethod
    def _absolute_file(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    @field_validator("home", "feature_repo", "shared_data", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("landing_dir", "duckdb_path", "dagster_home", "experiments_file", "rules_file", mode="before")
    @classmethod
    def _under_home(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            return Path(value).expanduser().resolve()
        if "home" not in info.data:
            raise ValueError(f"its default is under {cls.env_var('home')}, which is invalid")
        return info.data["home"] / cls._UNDER_HOME[str(info.field_name)]

    @classmethod
    def from_env(cls, home: str | Path | None = None) -> Settings:
        """Settings from the environment; ``home`` overrides ``RECS_HOME`` (tests pass a temp dir).

        Raises
        ------
        SettingsError
            When a variable's value is invalid (the message names it).
        """
        return cls._load(home=home)

    @property
    def features_dir(self) -> Path:
        """Exported feature parquet (Feast's offline sources)."""
        return self.home / "features"

    @property
    def feast_dir(self) -> Path:
        """Feast's registry and SQLite online store (referenced by ``feature_store.yaml``)."""
        return self.home / "feast"

    @property
    def training_dir(self) -> Path:
        """Working files of the latest retraining (folds, candidates, rows); the registry keeps versions."""
        return self.home / "training"

    @property
    def models_dir(self) -> Path:
        """The model registry (versions, manifests, champion pointer)."""
        return self.home / "models"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    def feast_env(self) -> dict[str, str]:
        """The variables ``feature_repo/`` reads: the data (absolute paths), the project and the production stores.

        ``feature_repo/data_sources.py`` reads ``RECS_FEATURES_DIR`` when ``feast apply`` imports it;
        the profiles' ``${VAR}`` placeholders are filled from the same mapping, by Feast's CLI from
        its environment (:func:`recs_pipeline.feast.feast_store.feast_cli` passes it) and in process by
        :func:`recs_pipeline.feast.feast_store.repo_config`. ``RECS_REDIS_URL`` and ``RECS_REGISTRY_URL``
        carry the passwords (and TLS options): the values are secrets, never to be logged.

        Raises
        ------
        SettingsError
            When the selected profile would connect to shared servers unsafely
            (:meth:`feast_profile_problems`).
        """
        problems = self.feast_profile_problems()
        if problems:
            raise SettingsError(f"{self.feast_yaml}: unsafe production settings:\n  " + "\n  ".join(problems))
        return {
            "RECS_HOME": str(self.home),
            "RECS_FEATURES_DIR": str(self.features_dir),
            "RECS_FEAST_PROJECT": self.feast_project or DEFAULT_FEAST_PROJECT,
            "RECS_REDIS_URL": self.redis_connection_string(),
            "RECS_REGISTRY_URL": self.registry_connection_url(),
        }

    def feast_placeholders(self) -> frozenset[str]:
        """The ``${VAR}`` names the selected Feast profile uses (none when its file is missing)."""
        path = self.feature_repo / self.feast_yaml
        return frozenset(FEAST_PLACEHOLDER.findall(path.read_text())) if path.is_file() else frozenset()

    def feast_profile_problems(self) -> list[str]:
        """What is unsafe about the selected profile: a profile that uses Redis (``${RECS_REDIS_URL}``)
        or a server registry (``${RECS_REGISTRY_URL}``, not SQLite) must name its project and have
        passwords, unless ``RECS_ALLOW_INSECURE_STORES`` allows the passwords to be missing."""
        used = self.feast_placeholders()
        redis = "RECS_REDIS_URL" in used
        registry = "RECS_REGISTRY_URL" in used and not self.registry_url.startswith("sqlite")
        problems = []
        if (redis or registry) and "RECS_FEAST_PROJECT" in used and self.feast_project is None:
            problems.append(
                "RECS_FEAST_PROJECT is unset: name this deployment's Feast project (e.g. shop_prod); deployments "
                "sharing the Redis server or the registry database must use different names, or they overwrite "
                "each other's registry and keys"
            )
        if self.allow_insecure_stores:
            return problems
        if redis and self.redis_secret() is None:
            problems.append(
                "RECS_REDIS_PASSWORD and RECS_REDIS_PASSWORD_FILE are unset: set one (the Redis server's "
                "requirepass or ACL password), or RECS_ALLOW_INSECURE_STORES=true for a local trial"
            )
        if registry and self.registry_secret() is None:
            problems.append(
                "RECS_REGISTRY_PASSWORD and RECS_REGISTRY_PASSWORD_FILE are unset: set one (the registry "
                "database user's password), or RECS_ALLOW_INSECURE_STORES=true for a local trial"
            )
        return problems

    def redis_secret(self) -> SecretStr | None:
        """The Redis password: ``RECS_REDIS_PASSWORD`` or the content of ``RECS_REDIS_PASSWORD_FILE``."""
        return secret_from(
            self.redis_password,
            self.redis_password_file,
            var="RECS_REDIS_PASSWORD",
            file_var="RECS_REDIS_PASSWORD_FILE",
        )

    def registry_secret(self) -> SecretStr | None:
        """The registry database's password: ``RECS_REGISTRY_PASSWORD`` or ``RECS_REGISTRY_PASSWORD_FILE``."""
        return secret_from(
            self.registry_password,
            self.registry_password_file,
            var="RECS_REGISTRY_PASSWORD",
            file_var="RECS_REGISTRY_PASSWORD_FILE",
        )

    def redis_connection_string(self) -> str:
        """Feast's Redis connection string: ``RECS_REDIS_URL`` plus user, password and TLS options (a secret).

        Feast splits it on commas and JSON-decodes each value, so the password is written as a JSON
        string (kept a string whatever it looks like) and may not hold a comma.
        """
        import json

        parts = [self.redis_url]
        if self.redis_username is not None:
            parts.append(f"username={json.dumps(self.redis_username)}")
        secret = self.redis_secret()
        if secret is not None:
            password = secret.get_secret_value()
            if "," in password:
                raise SettingsError(
                    "the Redis password (RECS_REDIS_PASSWORD or its file) holds a comma, which Feast's connection "
                    "string cannot carry: choose a password without commas"
                )
            parts.append(f"password={json.dumps(password)}")
        if self.redis_tls:
            parts.append("ssl=true")
            if self.redis_tls_ca_file is not None:
                parts.append(f"ssl_ca_certs={json.dumps(str(self.redis_tls_ca_file))}")
        elif self.redis_tls_ca_file is not None:
            raise SettingsError("RECS_REDIS_TLS_CA_FILE is set but RECS_REDIS_TLS is not: set RECS_REDIS_TLS=true")
        return ",".join(parts)

    def registry_connection_url(self) -> str:
        """The registry's SQLAlchemy URL: ``RECS_REGISTRY_URL`` plus password and sslmode (a secret)."""
        from sqlalchemy.engine import make_url

        url = make_url(self.registry_url)
        secret = self.registry_secret()
        if secret is not None:
            url = url.set(password=secret.get_secret_value())
        query: dict[str, str] = {}
        if self.registry_sslmode is not None:
            query["sslmode"] = self.registry_sslmode
        if self.registry_sslrootcert is not None:
            query["sslrootcert"] = str(self.registry_sslrootcert)
        if query:
            if not url.drivername.startswith("postgresql"):
                raise SettingsError(
                    f"RECS_REGISTRY_SSLMODE and RECS_REGISTRY_SSLROOTCERT apply to PostgreSQL, not {url.drivername}"
                )
            url = url.update_query_dict(query)
        return url.render_as_string(hide_password=False)

    def ensure_dirs(self) -> None:
        for d in (self.home, self.landing_dir, self.features_dir, self.feast_dir, self.reports_dir):
            d.mkdir(parents=True, exist_ok=True)


def shared_data_dir() -> Path:
    """The real public samples: ``$RECS_SHARED_DATA`` or ``<repo>/../shared/data``."""
    return Settings.from_env().shared_data


class SigningSettings(_EnvSettings):
    """Where the key that signs model versions comes from (``RECS_MODEL_SIGNING_KEY*``; docs/SECURITY.md).

    Set at most one; with neither, the registry uses ``<home>/secrets/model_signing.key``, generated
    (mode 0600) on first use (``models/registry.SigningKey.for_registry``). Every process that
    registers or serves models (the pipeline, ``recs serve``) must see the same key.
    """

    model_config = SettingsConfigDict(env_prefix="RECS_MODEL_")

    signing_key: SecretStr | None = Field(
        None,
        validation_alias="RECS_MODEL_SIGNING_KEY",
        description="RECS_MODEL_SIGNING_KEY: the HMAC-SHA256 key itself (at least 32 characters, e.g. from a "
        "secret manager); never logged.",
    )
    signing_key_file: Path | None = Field(
        None,
        validation_alias="RECS_MODEL_SIGNING_KEY_FILE",
        description="RECS_MODEL_SIGNING_KEY_FILE: a file holding the key (must exist; mode 0600). Unset with "
        "RECS_MODEL_SIGNING_KEY unset: <home>/secrets/model_signing.key, generated on first use.",
    )

    @field_validator("signing_key_file", mode="after")
    @classmethod
    def _key_file(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()


class PseudonymSettings(_EnvSettings):
    """The key of pseudonymous user ids (``RECS_PSEUDONYM_KEY*``; docs/PRIVACY.md, recs_pipeline/privacy/pseudonyms.py).

    Off (no key) by default in every profile: user ids are stored as sent. With a key, ingestion and the
    scoring service store and look up HMAC-SHA256 pseudonyms instead; every process of a deployment (the
    pipeline, its daemon, ``recs serve``) must see the same key. Set at most one of the two.
    """

    model_config = SettingsConfigDict(env_prefix="RECS_")
    _HIDDEN_INPUTS: ClassVar[frozenset[str]] = frozenset({"pseudonym_key"})

    pseudonym_key: SecretStr | None = Field(
        None,
        validation_alias="RECS_PSEUDONYM_KEY",
        description="RECS_PSEUDONYM_KEY: the HMAC-SHA256 key of pseudonymous user ids (at least 32 characters, e.g. "
        "from a secret manager); never logged. Unset (and no key file): user ids are stored raw.",
    )
    pseudonym_key_file: Path | None = Field(
        None,
        validation_alias="RECS_PSEUDONYM_KEY_FILE",
        description="RECS_PSEUDONYM_KEY_FILE: a file holding the key (must exist; mode 0600). Changing the key "
        "changes every pseudonym (docs/PRIVACY.md, key rotation).",
    )

    @field_validator("pseudonym_key_file", mode="after")
    @classmethod
    def _key_file(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    def secret(self) -> SecretStr | None:
        """The key, from the variable or the file; None when neither is set.

        Raises
        ------
        SettingsError
            Both are set, the file cannot be read or is empty, or the key is shorter than 32 characters.
        """
        secret = secret_from(
            self.pseudonym_key,
            self.pseudonym_key_file,
            var="RECS_PSEUDONYM_KEY",
            file_var="RECS_PSEUDONYM_KEY_FILE",
        )
        if secret is not None and len(secret.get_secret_value().encode("utf-8")) < 32:
            raise SettingsError("the pseudonym key (RECS_PSEUDONYM_KEY or its file) needs at least 32 characters")
        return secret


# The largest strength of the category re-rank (models/diversity.py) a request, variant or setting may ask for.
MAX_DIVERSITY = 10.0


class ServeSettings(_EnvSettings):
    """Knobs of the scoring service (``RECS_SERVE_*``). Build with :meth:`from_env`."""

    model_config = SettingsConfigDict(env_prefix="RECS_SERVE_")

    online_timeout_ms: float = Field(50.0, gt=0, description="Budget of the one online-store read per request.")
    reload_seconds: float = Field(2.0, gt=0, description="How often the champion pointer is checked for a new model.")
    session_wait_ms: float = Field(
        2000.0, gt=0, description="How long POST /events waits for a user's session lock before answering 503."
    )
    exposure_log: bool = Field(
        True, description="Land every answered list as an exposure (landing/exposures) for ingestion and experiments."
    )
    exposure_queue: int = Field(
        10_000, ge=1, description="Exposures a worker queues at most before landing them; more are dropped and counted."
    )
    exposure_flush_seconds: float = Field(2.0, gt=0, description="How often a worker lands its queued exposures.")
    collector_flush_seconds: float = Field(
        2.0,
        ge=0,
        description="How often a worker lands its journal of posted events as one file in landing/events (each post "
        "is fsynced to the journal before its 202); 0 = one file per post.",
    )
    diversity: float = Field(
        0.0,
        ge=0,
        le=MAX_DIVERSITY,
        description="Default strength of the category re-rank of every answer (0 = the ranker's order; a request's "
        "`diversity` or an experiment variant's overrides it; docs/SERVING.md).",
    )
    explore_slots: int = Field(
        0,
        ge=0,
        le=100,
        description="Exploration slots of every answer: its last places go to new items of the user's categories "
        "(the content source; source `explore` in the answer and the exposure log). A request's `explore` or an "
        "experiment variant's overrides it.",
    )
    rotate_after: int = Field(
        0,
        ge=0,
        le=1000,
        description="No-repeat rotation: an item shown to the user this many times in the last 24 hours (the "
        "exposure log, once online) without an event of theirs with it since is left out (reason `shown_recently`); "
        "0 = off. A request's `rotate` overrides it.",
    )
    shadow_queue: int = Field(
        1_000,
        ge=1,
        description="Answered requests a worker queues at most for the experiments file's shadow model; more are "
        "not shadow-scored (counted in recs_shadow_total{outcome=dropped}).",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(
        default_factory=lambda: ServeSettings.cpu_cores(),
        ge=1,
        description="Worker processes of `recs serve` (default: the machine's CPU cores).",
    )
    metrics_dir: Path | None = Field(
        None,
        validation_alias="PROMETHEUS_MULTIPROC_DIR",
        description="prometheus_client's multi-process directory: set by `recs serve` for its workers (a fresh "
        "one per start), so /metrics sums every worker's values; unset = this process's metrics only.",
    )
    candidate_limits: Annotated[dict[str, int] | None, NoDecode] = Field(
        None,
        validation_alias="RECS_SERVE_LIMITS",
        description="Candidates per source before ranking, e.g. als=200,catpop=25,content=10,covis=50,trending=25,popular=25,recent=30,usercf=0; "
        "unset = the limits the ranker was trained with.",
    )

    @staticmethod
    def cpu_cores() -> int:
        """The machine's CPU cores (the default number of workers)."""
        import os

        return os.cpu_count() or 1

    @field_validator("candidate_limits", mode="before")
    @classmethod
    def _limits(cls, value: Any) -> Any:
        return cls.parse_limits(value) if isinstance(value, str) else value

    @staticmethod
    def parse_limits(text: str) -> dict[str, int]:
        """``"als=200,catpop=25,content=10,covis=50,trending=25,popular=25,recent=30,usercf=0"`` -> dict; every source must be named."""
        limits = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, value = part.partition("=")
            if not value.strip().isdigit():
                raise ValueError(f"RECS_SERVE_LIMITS: {part!r} is not source=<count> (0 turns a source off)")
            limits[name.strip()] = int(value)
        if not any(limits.values()):
            raise ValueError("RECS_SERVE_LIMITS turns every source off")
        if set(limits) != CANDIDATE_SOURCES:
            raise ValueError(
                f"RECS_SERVE_LIMITS must name each of {', '.join(sorted(CANDIDATE_SOURCES))}, got {sorted(limits)}"
            )
        return limits


# The Feast profile of the embedded demo: the only one where the service's authentication is off by default.
EMBEDDED_FEAST_YAML = "feature_store.yaml"


class AuthSettings(_EnvSettings):
    """Authentication and write limits of the scoring service (docs/SECURITY.md, docs/SERVING.md).

    ``RECS_AUTH`` = auto (default) | on | off: auto is off with the embedded demo profile
    (``RECS_FEAST_YAML=feature_store.yaml``) and on with any other. Keys live in ``RECS_API_KEYS_FILE``
    (default ``<home>/secrets/api_keys.json``) as SHA-256 hashes with a name and scopes; create one with
    ``python -m recs_pipeline.serving.auth new-key``. Clients of the service (``recs simulate``, the
    benchmarks) send ``RECS_API_KEY``.
    """

    model_config = SettingsConfigDict(env_prefix="RECS_")

    auth: Literal["auto", "on", "off"] = Field(
        "auto", description="RECS_AUTH: auto (off with the embedded profile only), on or off."
    )
    api_keys_file: Path | None = Field(
        None, description="RECS_API_KEYS_FILE: the keys file (default <home>/secrets/api_keys.json)."
    )
    api_key: SecretStr | None = Field(
        None, description="RECS_API_KEY: the key clients of the service send (recs simulate, benchmarks)."
    )
    write_limits: Literal["auto", "on", "off"] = Field(
        "auto",
        validation_alias="RECS_SERVE_WRITE_LIMITS",
        description="RECS_SERVE_WRITE_LIMITS: the per-key and per-user write rate limits: auto (default) = on when "
        "authentication is on, on, or off.",
    )
    write_rate_per_key: float = Field(
        200.0,
        gt=0,
        validation_alias="RECS_SERVE_WRITE_RATE_PER_KEY",
        description="RECS_SERVE_WRITE_RATE_PER_KEY: events (or item updates) per second one API key may write, "
        "shared by every worker of the service (0 < rate).",
    )
    write_burst_per_key: int = Field(
        2000,
        ge=1,
        validation_alias="RECS_SERVE_WRITE_BURST_PER_KEY",
        description="RECS_SERVE_WRITE_BURST_PER_KEY: events one key may write at once (a batch larger than the "
        "burst is refused whole: keep it at least 1000, a full batch).",
    )
    write_rate_per_user: float = Field(
        1.0,
        gt=0,
        validation_alias="RECS_SERVE_WRITE_RATE_PER_USER",
        description="RECS_SERVE_WRITE_RATE_PER_USER: events per second posted for one user_id, whatever the key.",
    )
    write_burst_per_user: int = Field(
        60,
        ge=1,
        validation_alias="RECS_SERVE_WRITE_BURST_PER_USER",
        description="RECS_SERVE_WRITE_BURST_PER_USER: events one user_id may receive at once.",
    )
    write_limits_file: Path | None = Field(
        None,
        validation_alias="RECS_SERVE_WRITE_LIMITS_FILE",
        description="RECS_SERVE_WRITE_LIMITS_FILE: the SQLite file of the rate buckets, shared by the workers "
        "(default <home>/serve/write_limits.sqlite).",
    )
    write_budget_ms: float = Field(
        5000.0,
        gt=0,
        validation_alias="RECS_SERVE_WRITE_BUDGET_MS",
        description="RECS_SERVE_WRITE_BUDGET_MS: the longest POST /events and POST /items take before answering "
        "(503 beyond it, naming what is landed), whatever the online store does.",
    )

    @field_validator("api_keys_file", "write_limits_file", mode="after")
    @classmethod
    def _keys_file(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    def enabled(self, settings: Settings) -> bool:
        """Whether the service requires keys: ``RECS_AUTH``, else on unless the embedded profile is used."""
        if self.auth != "auto":
            return self.auth == "on"
        return settings.feast_yaml != EMBEDDED_FEAST_YAML

    def limits_enabled(self, settings: Settings) -> bool:
        """Whether writes are rate-limited: ``RECS_SERVE_WRITE_LIMITS``, else when authentication is on."""
        if self.write_limits != "auto":
            return self.write_limits == "on"
        return self.enabled(settings)

    def limits_path(self, settings: Settings) -> Path:
        """The rate buckets' file: ``RECS_SERVE_WRITE_LIMITS_FILE`` or ``<home>/serve/write_limits.sqlite``."""
        return self.write_limits_file or settings.home / "serve" / "write_limits.sqlite"

    def keys_path(self, settings: Settings) -> Path:
        """The keys file: ``RECS_API_KEYS_FILE`` or ``<home>/secrets/api_keys.json``."""
        return self.api_keys_file or settings.home / "secrets" / "api_keys.json"

    @classmethod
    def from_env(cls, **overrides: Any) -> AuthSettings:
        """Authentication and write-limit settings from the environment (``overrides`` by field name).

        Raises
        ------
        SettingsError
            When a variable's value is invalid (the message names it).
        """
        return cls._load(**overrides)


class RunStartSettings(_EnvSettings):
    """How the Dagster code server starts a run's process (``RECS_WARM_RUNS``; recs_pipeline/warm_runs.py)."""

    model_config = SettingsConfigDict(env_prefix="RECS_")

    warm_runs: bool = Field(
        True,
        description="RECS_WARM_RUNS: the code server forks each run from a process that has Dagster, Feast, "
        "DuckDB and the numeric libraries imported already (false: Dagster's own fresh interpreter per run, "
        "seconds slower to start).",
    )


class RetentionSettings(_EnvSettings):
    """How long personal data is kept (``RECS_RETENTION_DAYS``, ``RECS_LANDING_RETENTION_DAYS``; docs/PRIVACY.md).

    Both are off (unset) by default: everything is kept. The daily ``retention`` schedule
    (``recs_pipeline/defs/privacy.py``) applies them.
    """

    model_config = SettingsConfigDict(env_prefix="RECS_")

    retention_days: float | None = Field(
        None,
        gt=0,
        description="RECS_RETENTION_DAYS: events and exposures older than this many days are purged from the "
        "warehouse, feature snapshots, parquet, the SQLite online store and landed files (unset: kept for ever).",
    )
    landing_retention_days: float | None = Field(
        None,
        gt=0,
        description="RECS_LANDING_RETENTION_DAYS: landed files ingested and landed more than this many days ago "
        "are deleted (the ingest ledger keeps their sha256 and counts, so a copy is never loaded again); "
        "files not yet ingested are kept (unset: kept for ever).",
    )
