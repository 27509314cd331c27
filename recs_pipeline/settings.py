"""Paths and knobs of the pipeline, read from the environment in one place, typed.

Everything the pipeline writes lives under ``RECS_HOME`` (default ``./data``): the landing zone,
the DuckDB file, exported feature parquet, Feast's registry and SQLite online store, reports and
the Dagster home. Each setting can be overridden by the environment variable named beside it
(``RECS_`` + the field's name in capitals, unless stated otherwise). Build them with
:meth:`Settings.from_env` and :meth:`ServeSettings.from_env`, which name the variable when a value
is invalid, and hand them down: the rest of the package never reads or writes ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Self

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from recs_pipeline.models.candidate_sources import SOURCES as RANKER_SOURCES

REPO_ROOT = Path(__file__).resolve().parents[1]
SQL_DIR = REPO_ROOT / "sql"
FEATURE_REPO_DIR = REPO_ROOT / "feature_repo"

# Pool that every asset writing the DuckDB file joins; its limit is 1 (see dagster.yaml).
DUCKDB_POOL = "duckdb"

# Name of the feature snapshots' dynamic day partitions: one key per day the stored events cover,
# added by ingestion (recs_pipeline/defs/partitions.py), whatever the data's era.
DAY_PARTITIONS = "days"

# Candidate sources of the scoring service (RECS_SERVE_LIMITS must name each).
CANDIDATE_SOURCES = frozenset(RANKER_SOURCES)


class SettingsError(ValueError):
    """An environment variable (or override) holds an invalid value; the message names each one."""


class _EnvSettings(BaseSettings):
    """Settings read from ``<env_prefix><FIELD>`` variables; errors name the variable."""

    model_config = SettingsConfigDict(frozen=True, env_ignore_empty=True, validate_by_name=True, extra="ignore")

    @classmethod
    def env_var(cls, field: str) -> str:
        """The environment variable that sets ``field``."""
        alias = cls.model_fields[field].validation_alias
        return alias if isinstance(alias, str) else f"{cls.model_config.get('env_prefix', '')}{field}".upper()

    @classmethod
    def _load(cls, **overrides: Any) -> Self:
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                field = str(error["loc"][0]) if error["loc"] else ""
                name = cls.env_var(field) if field in cls.model_fields else field or cls.__name__
                problems.append(f"{name}={error.get('input')!r}: {error['msg']}")
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
    redis_url: str = Field(
        "127.0.0.1:6379", min_length=1, description="RECS_REDIS_URL: Feast's Redis connection string (production)."
    )
    registry_url: str = Field(
        "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        min_length=1,
        description="RECS_REGISTRY_URL: SQLAlchemy URL of Feast's SQL registry (production).",
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
        """The variables ``feature_repo/`` reads: the data (absolute paths) and the production stores.

        ``feature_repo/data_sources.py`` reads ``RECS_FEATURES_DIR`` when ``feast apply`` imports it;
        the profiles' ``${VAR}`` placeholders are filled from the same mapping, by Feast's CLI from
        its environment (:func:`recs_pipeline.feast.feast_store.feast_cli` passes it) and in process by
        :func:`recs_pipeline.feast.feast_store.repo_config`.
        """
        return {
            "RECS_HOME": str(self.home),
            "RECS_FEATURES_DIR": str(self.features_dir),
            "RECS_REDIS_URL": self.redis_url,
            "RECS_REGISTRY_URL": self.registry_url,
        }

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

    @classmethod
    def from_env(cls) -> SigningSettings:
        """The signing-key settings from the environment.

        Raises
        ------
        SettingsError
            When a variable's value is invalid (the message names it).
        """
        return cls._load()


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

    @classmethod
    def from_env(cls) -> ServeSettings:
        """Serving knobs from the environment.

        Raises
        ------
        SettingsError
            When a variable's value is invalid (the message names it).
        """
        return cls._load()
