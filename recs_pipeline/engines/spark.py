"""A Spark session for one machine: ``local[N]`` with the feature SQL's settings (UTC, no UI, few partitions).

On a cluster a user builds the session their platform gives (``spark-submit``, Databricks, EMR) with
the settings of :data:`FEATURE_SQL_CONF`; nothing else here depends on local mode.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

# What the feature SQL needs of any session: its timestamp literals are UTC (recs_pipeline.engines.spark_sql).
FEATURE_SQL_CONF: dict[str, str] = {"spark.sql.session.timeZone": "UTC"}
# For a short-lived local session on small data (the tests): such a JVM spends most of its time compiling,
# so only the quick JIT tier, the serial collector, no whole-stage code generation and no adaptive
# re-planning. Building the feature-SQL parity tests' snapshots on 2 shared cores took 27 s with it (load
# average 7.7 -> 6.8) and 83 s without (load 14.9 -> 9.3): a rough figure on a busy machine.
# Not for real work: a long job wants the full JIT and code generation.
SMALL_DATA_CONF: dict[str, str] = {
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.adaptive.enabled": "false",
}


def local_conf(
    *, scratch_dir: Path, cores: int = 2, driver_memory: str = "1g", shuffle_partitions: int = 4
) -> dict[str, str]:
    """Settings of a local session: ``cores`` threads, a modest JVM heap, scratch files under ``scratch_dir``."""
    if cores < 1 or shuffle_partitions < 1:
        raise ValueError(f"cores and shuffle_partitions must be >= 1, got {cores} and {shuffle_partitions}")
    return {
        **FEATURE_SQL_CONF,
        "spark.master": f"local[{cores}]",
        "spark.driver.memory": driver_memory,
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        "spark.default.parallelism": str(cores),
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.warehouse.dir": str(scratch_dir / "warehouse"),
        "spark.local.dir": str(scratch_dir / "local"),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }


def local_session(
    *,
    scratch_dir: Path,
    cores: int = 2,
    driver_memory: str = "1g",
    shuffle_partitions: int = 4,
    extra: Mapping[str, str] | None = None,
    app_name: str = "recs_pipeline",
) -> SparkSession:
    """Start (or return the running) local Spark session; stop it with ``session.stop()``.

    Sets ``PYSPARK_PYTHON`` to this interpreter unless it is set. The JVM's heap (``driver_memory``) and options (``spark.driver.extraJavaOptions``) are fixed when the
    first session of the process starts.
    """
    from pyspark.sql import SparkSession

    # Python tasks (Feast's writes to the online store) run in PYSPARK_PYTHON, which PySpark reads from
    # the environment only (default: `python3` on PATH, which need not have this project's packages)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    scratch_dir.mkdir(parents=True, exist_ok=True)
    builder = SparkSession.builder.appName(app_name)
    conf = {
        **local_conf(
            scratch_dir=scratch_dir, cores=cores, driver_memory=driver_memory, shuffle_partitions=shuffle_partitions
        ),
        **(extra or {}),
    }
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    log.info("Spark %s session on %s", session.version, conf["spark.master"])
    return session
