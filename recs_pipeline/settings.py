"""Paths and knobs of the pipeline, read from the environment in one place.

Everything the pipeline writes lives under ``RECS_HOME`` (default ``./data``): the landing zone,
the DuckDB file, exported feature parquet, Feast's registry and SQLite online store, reports and
the Dagster home. Each setting can be overridden by the environment variable named beside it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SQL_DIR = REPO_ROOT / "sql"
FEATURE_REPO_DIR = REPO_ROOT / "feature_repo"


def shared_data_dir() -> Path:
    """The real public samples: ``$RECS_SHARED_DATA`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("RECS_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data").resolve()


# Pool that every asset writing the DuckDB file joins; its limit is 1 (see dagster.yaml).
DUCKDB_POOL = "duckdb"

# First day of the daily feature-snapshot partitions (older than every supported data set).
PARTITIONS_START = "2015-01-01"


@dataclass(frozen=True)
class Settings:
    """Resolved, absolute paths and settings. Build with :meth:`from_env`."""

    home: Path
    landing_dir: Path
    duckdb_path: Path
    features_dir: Path
    feature_repo: Path = FEATURE_REPO_DIR
    feast_yaml: str = "feature_store.yaml"
    duckdb_threads: int = field(default=2)
    duckdb_memory_limit: str = "6GB"
    redis_url: str = "127.0.0.1:6379"
    postgres_registry_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

    @classmethod
    def from_env(cls, home: str | Path | None = None) -> Settings:
        """Settings from the environment; ``home`` overrides ``RECS_HOME`` (tests pass a temp dir)."""
        env = os.environ
        root = Path(home or env.get("RECS_HOME") or "data").expanduser().resolve()
        return cls(
            home=root,
            landing_dir=Path(env.get("RECS_LANDING_DIR") or root / "landing").resolve(),
            duckdb_path=Path(env.get("RECS_DUCKDB_PATH") or root / "recs.duckdb").resolve(),
            features_dir=root / "features",
            feature_repo=Path(env.get("RECS_FEATURE_REPO") or FEATURE_REPO_DIR).resolve(),
            feast_yaml=env.get("RECS_FEAST_YAML", "feature_store.yaml"),
            duckdb_threads=int(env.get("RECS_DUCKDB_THREADS", "2")),
            duckdb_memory_limit=env.get("RECS_DUCKDB_MEMORY_LIMIT", "6GB"),
            redis_url=env.get("RECS_REDIS_URL") or cls.redis_url,
            postgres_registry_url=env.get("RECS_REGISTRY_URL") or cls.postgres_registry_url,
        )

    @property
    def feast_dir(self) -> Path:
        """Feast's registry and SQLite online store (referenced by ``feature_store.yaml``)."""
        return self.home / "feast"

    @property
    def dagster_home(self) -> Path:
        """``DAGSTER_HOME`` if set, else ``<home>/dagster``."""
        return Path(os.environ.get("DAGSTER_HOME") or self.home / "dagster").resolve()

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
        """Environment variables ``feature_repo/`` reads: the data (absolute paths) and the production stores.

        ``RECS_REDIS_URL`` and ``RECS_REGISTRY_URL`` are read by ``feature_store.production.yaml``
        (Feast's ``${VAR}`` expansion has no defaults, so the defaults are exported from here).
        """
        return {
            "RECS_HOME": str(self.home),
            "RECS_FEATURES_DIR": str(self.features_dir),
            "RECS_REDIS_URL": self.redis_url,
            "RECS_REGISTRY_URL": self.postgres_registry_url,
        }

    def ensure_dirs(self) -> None:
        for d in (self.home, self.landing_dir, self.features_dir, self.feast_dir, self.reports_dir):
            d.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class ServeSettings:
    """Knobs of the scoring service. Build with :meth:`from_env`."""

    online_timeout_ms: float = 50.0  # budget of the one online-store read per request
    reload_seconds: float = 2.0  # how often the champion pointer is checked for a new model
    purchased_window_days: float = 30.0  # items bought this recently are not recommended again
    host: str = "127.0.0.1"
    port: int = 8000
    # candidates per source before ranking; None = the limits the ranker was trained with
    candidate_limits: dict[str, int] | None = None

    @property
    def purchased_window_s(self) -> float:
        return self.purchased_window_days * 86400.0

    @staticmethod
    def parse_limits(text: str) -> dict[str, int]:
        """``"als=200,covis=50,trending=25,popular=25"`` -> dict; every source must be named."""
        limits = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, value = part.partition("=")
            if not value.strip().isdigit() or int(value) < 1:
                raise ValueError(f"RECS_SERVE_LIMITS: {part!r} is not source=<positive int>")
            limits[name.strip()] = int(value)
        if set(limits) != {"als", "covis", "trending", "popular"}:
            raise ValueError(f"RECS_SERVE_LIMITS must name als, covis, trending and popular, got {sorted(limits)}")
        return limits

    @classmethod
    def from_env(cls) -> ServeSettings:
        env = os.environ
        return cls(
            online_timeout_ms=float(env.get("RECS_SERVE_ONLINE_TIMEOUT_MS", "50")),
            reload_seconds=float(env.get("RECS_SERVE_RELOAD_SECONDS", "2")),
            purchased_window_days=float(env.get("RECS_SERVE_PURCHASED_WINDOW_DAYS", "30")),
            host=env.get("RECS_SERVE_HOST", "127.0.0.1"),
            port=int(env.get("RECS_SERVE_PORT", "8000")),
            candidate_limits=cls.parse_limits(env["RECS_SERVE_LIMITS"]) if env.get("RECS_SERVE_LIMITS") else None,
        )
