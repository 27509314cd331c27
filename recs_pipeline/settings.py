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
        """Environment variables ``feature_repo/`` reads to find the data (absolute paths)."""
        return {"RECS_HOME": str(self.home), "RECS_FEATURES_DIR": str(self.features_dir)}

    def ensure_dirs(self) -> None:
        for d in (self.home, self.landing_dir, self.features_dir, self.feast_dir, self.reports_dir):
            d.mkdir(parents=True, exist_ok=True)
